//! Consumer groups on Redis: `XGROUP CREATE`, `XREADGROUP`, `XAUTOCLAIM`, `XPENDING`, `XACK` and
//! the dead-letter `XADD`. The policy (which of these a member asks for, and when) lives in
//! [`crate::groups`]; this module only speaks Redis.

use super::error::{Context, classify};
use super::{RedisEngine, Target, reply, xadd};
use crate::engine::EngineError;
use redis::Value;
use redis::aio::MultiplexedConnection;
use redistribute_protocol::{Entry, Start, StreamId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// One group member. Its commands go over the target's shared connection. To wait for new
/// entries it either waits on a wake signal (the server's stream reader signals it: no Redis
/// connection of its own) or, without one, blocks in `XREADGROUP … BLOCK` on a dedicated
/// connection opened for that (a blocking read would stall the shared one).
#[derive(Debug)]
pub struct RedisMember {
    /// Opened on the first blocking read, when the member has no wake signal.
    blocking: Option<MultiplexedConnection>,
    wake: Option<Arc<Notify>>,
    target: Target,
    channel: String,
    /// The channel's key.
    key: String,
    group: String,
    consumer: String,
}

/// An `XPENDING` extended reply row: ID, consumer, idle milliseconds, deliveries.
type PendingRow = (String, String, u64, u64);

impl RedisMember {
    /// Creates the group at `start` if needed (and the stream: `MKSTREAM`) and opens the member's
    /// connection.
    pub(crate) async fn join(
        target: &Target,
        channel: &str,
        group: &str,
        consumer: &str,
        start: Start,
    ) -> Result<RedisMember, EngineError> {
        let created: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(target.key(channel))
            .arg(group)
            .arg(start.to_string())
            .arg("MKSTREAM")
            .query_async(&mut target.commands())
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(classify(e, &target.at(channel, Some(group)))),
        }
        Ok(RedisMember {
            blocking: None,
            wake: None,
            target: target.clone(),
            channel: channel.to_owned(),
            key: target.key(channel),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        })
    }

    fn at(&self) -> Context<'_> {
        self.target.at(&self.channel, Some(&self.group))
    }

    /// Waits on `signal` for new entries instead of a blocking read (see [`RedisMember`]).
    pub(crate) fn wake_on(&mut self, signal: Arc<Notify>) {
        self.wake = Some(signal);
    }

    /// `XREADGROUP`: this consumer's own pending entries after `after`, or new entries (`>`,
    /// waiting up to `block`) when `after` is `None`. Entries come with their delivery counts.
    pub(crate) async fn read(
        &mut self,
        after: Option<StreamId>,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<(Entry, u64)>, EngineError> {
        let (Some(block), None) = (block, after) else { return self.read_now(after, count).await };
        let Some(wake) = self.wake.clone() else { return self.read_blocking(count, block).await };
        let fresh = self.read_now(None, count).await?;
        if !fresh.is_empty() {
            return Ok(fresh);
        }
        // Entries that came since the read left a permit: no wake is missed.
        let _ = tokio::time::timeout(block, wake.notified()).await;
        self.read_now(None, count).await
    }

    /// One `XREADGROUP` without blocking, on the shared connection.
    async fn read_now(&mut self, after: Option<StreamId>, count: usize) -> Result<Vec<(Entry, u64)>, EngineError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.group).arg(&self.consumer).arg("COUNT").arg(count);
        cmd.arg("STREAMS").arg(&self.key).arg(after.map_or_else(|| ">".to_owned(), |id| id.to_string()));
        let value: Value = self
            .target
            .timed("XREADGROUP", cmd.query_async(&mut self.target.commands()))
            .await
            .map_err(|e| classify(e, &self.at()))?;
        let entries: Vec<Entry> = reply::streams(value)?.into_iter().flat_map(|(_, entries)| entries).collect();
        match after {
            None => Ok(entries.into_iter().map(|e| (e, 1)).collect()),
            Some(_) => {
                let entries = self.drop_trimmed(entries).await?;
                self.counted(entries).await
            }
        }
    }

    /// `XREADGROUP … BLOCK` on the member's own connection (opened now if needed).
    async fn read_blocking(&mut self, count: usize, block: Duration) -> Result<Vec<(Entry, u64)>, EngineError> {
        if self.blocking.is_none() {
            self.blocking = Some(self.target.dedicated_connection(&self.key).await?);
        }
        let conn = self.blocking.as_mut().expect("just opened");
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.group).arg(&self.consumer).arg("COUNT").arg(count);
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
        cmd.arg("STREAMS").arg(&self.key).arg(">");
        let value: Value = cmd.query_async(conn).await.map_err(|e| classify(e, &self.at()))?;
        let entries: Vec<Entry> = reply::streams(value)?.into_iter().flat_map(|(_, entries)| entries).collect();
        Ok(entries.into_iter().map(|e| (e, 1)).collect())
    }

    /// Pending entries whose data was trimmed (or deleted) come back without fields: they are
    /// acknowledged (there is no work left to do) and logged, never handed out as empty work.
    async fn drop_trimmed(&mut self, entries: Vec<Entry>) -> Result<Vec<Entry>, EngineError> {
        let (gone, entries): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| e.fields.is_empty());
        if !gone.is_empty() {
            let offsets: Vec<StreamId> = gone.iter().map(|e| e.offset).collect();
            self.ack(&offsets).await?;
            tracing::warn!(
                channel = self.channel,
                group = self.group,
                trimmed = offsets.len(),
                first = %offsets[0],
                "pending entries were trimmed before they were acknowledged: acknowledged without delivery"
            );
        }
        Ok(entries)
    }

    /// `XAUTOCLAIM`: entries pending longer than `min_idle`, from `cursor`; returns where to go
    /// on (`0-0` after the end) and the claimed entries with their delivery counts.
    pub(crate) async fn claim_idle(
        &mut self,
        min_idle: Duration,
        cursor: StreamId,
        count: usize,
    ) -> Result<(StreamId, Vec<(Entry, u64)>), EngineError> {
        let value: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(cursor.to_string())
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.target.commands())
            .await
            .map_err(|e| classify(e, &self.at()))?;
        let Value::Array(parts) = value else { return Err(EngineError::Reply(format!("XAUTOCLAIM: {value:?}"))) };
        let next = parts.first().map(reply::stream_id).transpose()?.unwrap_or(StreamId::ZERO);
        // Redis 7 leaves trimmed entries out (and drops them from the pending list); 6.2 returns
        // them without fields.
        let entries = parts.into_iter().nth(1).map(reply::entries).transpose()?.unwrap_or_default();
        let entries = self.drop_trimmed(entries).await?;
        Ok((next, self.counted(entries).await?))
    }

    /// Delivery counts of this consumer's `entries`, from `XPENDING`.
    async fn counted(&mut self, entries: Vec<Entry>) -> Result<Vec<(Entry, u64)>, EngineError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(Vec::new()) };
        let pending: Vec<PendingRow> = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .arg(first.offset.to_string())
            .arg(last.offset.to_string())
            .arg(entries.len())
            .arg(&self.consumer)
            .query_async(&mut self.target.commands())
            .await
            .map_err(|e| classify(e, &self.at()))?;
        let counts: HashMap<String, u64> = pending.into_iter().map(|(id, _, _, count)| (id, count)).collect();
        Ok(entries
            .into_iter()
            .map(|e| {
                let count = counts.get(&e.offset.to_string()).copied().unwrap_or(1);
                (e, count)
            })
            .collect())
    }

    /// Appends `fields` to the dead-letter channel `stream` and acknowledges `offset`, atomically.
    pub(crate) async fn dead_letter(
        &mut self,
        stream: &str,
        fields: &[String],
        offset: StreamId,
        maxlen: Option<u64>,
    ) -> Result<(), EngineError> {
        let dead = self.target.key(stream);
        let mut ack = redis::cmd("XACK");
        ack.arg(&self.key).arg(&self.group).arg(offset.to_string());
        if !self.target.same_slot(&dead, &self.key) {
            // A dead-letter stream in another slot of a cluster (a custom name; the default
            // `<channel>:dead` shares its channel's): no transaction can span both, so the entry
            // is acknowledged once it is dead-lettered, and a failure in between dead-letters it
            // again (at least once).
            let mut commands = self.target.commands();
            let at = self.at();
            xadd(dead, fields, maxlen).query_async::<()>(&mut commands).await.map_err(|e| classify(e, &at))?;
            return ack.query_async::<()>(&mut commands).await.map_err(|e| classify(e, &at));
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.add_command(xadd(dead, fields, maxlen)).ignore();
        pipe.add_command(ack).ignore();
        match pipe.query_async::<()>(&mut self.target.commands()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.target.learn_route(&self.key, &e).await;
                Err(classify(e, &self.at()))
            }
        }
    }

    /// `XACK`: returns how many of `offsets` were pending.
    pub(crate) async fn ack(&mut self, offsets: &[StreamId]) -> Result<u64, EngineError> {
        let ids: Vec<String> = offsets.iter().map(ToString::to_string).collect();
        redis::cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&ids)
            .query_async(&mut self.target.commands())
            .await
            .map_err(|e| classify(e, &self.at()))
    }
}

impl RedisEngine {
    /// Which consumer of `group` of `channel` each of `offsets` is pending for, if any.
    pub(crate) async fn group_pending(
        &self,
        channel: &str,
        group: &str,
        offsets: &[StreamId],
    ) -> Result<Vec<Option<String>>, EngineError> {
        let target = self.target(channel);
        let mut pipe = redis::pipe();
        for offset in offsets {
            let id = offset.to_string();
            pipe.cmd("XPENDING").arg(target.key(channel)).arg(group).arg(&id).arg(&id).arg(1);
        }
        let found: Vec<Vec<PendingRow>> = pipe
            .query_async(&mut target.commands())
            .await
            .map_err(|e| classify(e, &target.at(channel, Some(group))))?;
        Ok(found.into_iter().map(|rows| rows.into_iter().next().map(|(_, consumer, _, _)| consumer)).collect())
    }

    /// `XACK` on the shared connection: returns how many of `offsets` were pending.
    pub(crate) async fn group_ack(&self, channel: &str, group: &str, offsets: &[StreamId]) -> Result<u64, EngineError> {
        let target = self.target(channel);
        let ids: Vec<String> = offsets.iter().map(ToString::to_string).collect();
        redis::cmd("XACK")
            .arg(target.key(channel))
            .arg(group)
            .arg(&ids)
            .query_async(&mut target.commands())
            .await
            .map_err(|e| classify(e, &target.at(channel, Some(group))))
    }

    /// The number of entries pending in the group (`XPENDING` summary).
    pub(crate) async fn group_pending_count(&self, channel: &str, group: &str) -> Result<u64, EngineError> {
        let target = self.target(channel);
        let summary: Vec<Value> = redis::cmd("XPENDING")
            .arg(target.key(channel))
            .arg(group)
            .query_async(&mut target.commands())
            .await
            .map_err(|e| classify(e, &target.at(channel, Some(group))))?;
        summary
            .first()
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .ok_or_else(|| EngineError::Reply("XPENDING summary without a count".into()))
    }
}
