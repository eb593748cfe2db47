//! Following many streams at once on Redis: one dedicated connection blocking in `XREAD`, woken
//! early by `CLIENT UNBLOCK` when its channel set changes.

use super::Target;
use super::error::{Context, classify, timed_out};
use super::reply;
use crate::engine::EngineError;
use redis::Value;
use redis::aio::MultiplexedConnection;
use redistribute_protocol::{Entry, StreamId};
use std::fmt::Write as _;
use std::time::Duration;

/// A dedicated connection blocking in `XREAD` over many stream keys.
#[derive(Debug)]
pub struct RedisFollower {
    conn: MultiplexedConnection,
    /// Its `CLIENT ID`, for `CLIENT UNBLOCK`.
    client_id: i64,
    target: Target,
}

impl RedisFollower {
    /// Opens the connection (on a cluster, to the master of partition `within`'s slot) and
    /// learns its `CLIENT ID`.
    pub(crate) async fn connect(target: &Target, within: usize) -> Result<RedisFollower, EngineError> {
        let mut conn = target.dedicated_connection(&target.partition_key(within)).await?;
        let client_id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(e, &target.at("", None)))?;
        Ok(RedisFollower { conn, client_id, target: target.clone() })
    }

    /// The connection's `CLIENT ID` (never 0).
    pub fn client_id(&self) -> i64 {
        self.client_id
    }

    /// `XREAD COUNT count BLOCK block STREAMS k1…kN id1…idN` over the channels' keys, bounded by
    /// `block + timeout`; entries come back by channel.
    pub(crate) async fn read(
        &mut self,
        streams: &[(String, StreamId)],
        count: usize,
        block: Duration,
        timeout: Duration,
    ) -> Result<Vec<(String, Vec<Entry>)>, EngineError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count).arg("BLOCK").arg(block.as_millis() as u64).arg("STREAMS");
        // One buffer for every argument: this runs for each read, over every followed channel.
        let mut arg = String::new();
        for (channel, _) in streams {
            arg.clear();
            self.target.write_key(&mut arg, channel);
            cmd.arg(arg.as_str());
        }
        for (_, id) in streams {
            arg.clear();
            write!(arg, "{id}").expect("writing to a String");
            cmd.arg(arg.as_str());
        }
        let deadline = block + timeout;
        let value = match tokio::time::timeout(deadline, cmd.query_async::<Value>(&mut self.conn)).await {
            Ok(Ok(value)) => value,
            // Which key is not a stream is found out with `non_streams`.
            Ok(Err(e)) => return Err(classify(e, &Context::on(self.target.display()))),
            Err(_) => {
                return Err(timed_out(self.target.display(), format!("XREAD did not return within {deadline:?}")));
            }
        };
        let by_key = reply::streams(value)?;
        Ok(by_key
            .into_iter()
            .filter_map(|(key, entries)| Some((self.target.channel(&key)?.to_owned(), entries)))
            .collect())
    }

    /// The channels among `channels` whose keys hold something other than a stream, with what
    /// they hold.
    pub(crate) async fn non_streams(&mut self, channels: &[&str]) -> Result<Vec<(String, String)>, EngineError> {
        let mut pipe = redis::pipe();
        for channel in channels {
            pipe.cmd("TYPE").arg(self.target.key(channel));
        }
        let types: Vec<String> =
            pipe.query_async(&mut self.conn).await.map_err(|e| classify(e, &Context::on(self.target.display())))?;
        Ok(channels
            .iter()
            .zip(types)
            .filter(|(_, t)| t != "stream" && t != "none")
            .map(|(k, t)| ((*k).to_owned(), t))
            .collect())
    }
}
