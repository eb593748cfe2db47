//! Stream readers: a fixed number of dedicated Redis connections that follow every locally
//! subscribed channel, so Redis work does not grow with the number of subscribers.
//!
//! Each [`Partition`] has one reader. It loops on `XREAD COUNT c BLOCK t STREAMS ch1…chN
//! id1…idN` with the partition's cursors and hands what it reads to the partition's fan-out.
//! When a channel is added, the partition's *waker* sends `CLIENT UNBLOCK <reader id>` on the
//! command connection, so the reader reissues its read with the new channel at once. Because the
//! unblock can race the reader between two reads, the waker repeats it until the reader has acted
//! on the change (it records the partition generation it last read with).
//!
//! On any Redis error the reader reconnects with backoff and resumes from the same cursors, so
//! a Redis restart loses nothing that Redis kept.

use crate::Shared;
use crate::engine::{EngineError, Target};
use crate::hub::Partition;
use redis::Value;
use redis::aio::MultiplexedConnection;
use redistribute_protocol::{Backoff, StreamId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Runs partition `index`'s reader until shutdown.
pub(crate) async fn run_reader(shared: Arc<Shared>, index: usize) {
    let partition = &shared.partitions[index];
    let target = &shared.engine.targets()[partition.target];
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut failing = false;
    loop {
        let result = tokio::select! {
            result = connect_and_follow(&shared, partition, target, &mut backoff, &mut failing) => result,
            () = shared.shutdown.cancelled() => return,
        };
        partition.reader_client_id.store(0, Ordering::Release);
        if let Err(e) = result {
            if !failing {
                warn!(target = target.display(), reader = index, error = %e, "stream reader lost Redis; reconnecting");
                failing = true;
            }
            let delay = backoff.next_delay(rand::random());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.shutdown.cancelled() => return,
            }
        }
    }
}

async fn connect_and_follow(
    shared: &Shared,
    partition: &Partition,
    target: &Target,
    backoff: &mut Backoff,
    failing: &mut bool,
) -> Result<(), EngineError> {
    let mut conn = target.reader_connection().await?;
    let client_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await
        .map_err(|e| EngineError::Unavailable(e.to_string()))?;
    partition.reader_client_id.store(client_id, Ordering::Release);
    backoff.reset();
    if std::mem::take(failing) {
        info!(target = target.display(), "stream reader reconnected; resuming from its cursors");
    }
    // Changes made while disconnected went unannounced: re-read the channel set now.
    partition.wake.notify_one();
    loop {
        let idle = partition.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        let streams = partition.snapshot();
        if streams.is_empty() {
            idle.await;
            continue;
        }
        let value = match read(shared, &mut conn, &streams).await {
            Err(EngineError::WrongType(_)) => {
                // Some key was replaced by a non-stream value: drop those channels (their
                // subscribers are told) instead of stalling every channel of this reader.
                evict_non_streams(partition, &mut conn, &streams).await?;
                continue;
            }
            other => other?,
        };
        let cursors: HashMap<&str, StreamId> = streams.iter().map(|(k, id)| (k.as_str(), *id)).collect();
        for (key, entries) in crate::engine::decode_streams(&value)? {
            if let Some(from) = cursors.get(key.as_str()) {
                partition.deliver(&key, *from, entries);
            }
        }
    }
}

async fn read(shared: &Shared, conn: &mut MultiplexedConnection, streams: &[(String, StreamId)]) -> Result<Value, EngineError> {
    let config = &shared.config;
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(config.read_count).arg("BLOCK").arg(config.block.as_millis() as u64).arg("STREAMS");
    for (key, _) in streams {
        cmd.arg(key);
    }
    for (_, id) in streams {
        cmd.arg(id.to_string());
    }
    let deadline = config.block + config.redis_timeout;
    match tokio::time::timeout(deadline, cmd.query_async::<Value>(conn)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if e.code() == Some("WRONGTYPE") => Err(EngineError::WrongType(String::new())),
        Ok(Err(e)) => Err(EngineError::Unavailable(e.to_string())),
        Err(_) => Err(EngineError::Unavailable(format!("XREAD did not return within {deadline:?}"))),
    }
}

/// Finds the followed keys that no longer hold streams and evicts their channels.
async fn evict_non_streams(partition: &Partition, conn: &mut MultiplexedConnection, streams: &[(String, StreamId)]) -> Result<(), EngineError> {
    let mut pipe = redis::pipe();
    for (key, _) in streams {
        pipe.cmd("TYPE").arg(key);
    }
    let types: Vec<String> = pipe.query_async(conn).await.map_err(|e| EngineError::Unavailable(e.to_string()))?;
    for ((key, _), kind) in streams.iter().zip(types) {
        if kind != "stream" && kind != "none" {
            warn!(channel = key, kind, "channel key no longer holds a stream; closing its subscribers");
            partition.evict(key, &format!("channel {key:?} no longer holds a stream (its key is a {kind})"));
        }
    }
    Ok(())
}

/// Runs partition `index`'s waker until shutdown: unblocks the reader when channels are added.
pub(crate) async fn run_waker(shared: Arc<Shared>, index: usize) {
    let partition = &shared.partitions[index];
    let target = &shared.engine.targets()[partition.target];
    loop {
        tokio::select! {
            () = partition.wake.notified() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let wanted = partition.generation();
        while partition.seen.load(Ordering::Acquire) < wanted && !shared.shutdown.is_cancelled() {
            let client_id = partition.reader_client_id.load(Ordering::Acquire);
            if client_id == 0 {
                // No reader connection: it snapshots the channels when it connects.
                break;
            }
            match target.unblock(client_id).await {
                Ok(true) => break,
                // Not blocked yet: the read is in flight; try again in a moment.
                Ok(false) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => {
                    debug!(error = %e, "CLIENT UNBLOCK failed; the reader will reconnect");
                    break;
                }
            }
        }
    }
}
