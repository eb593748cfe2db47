//! Stream readers: a fixed number of blocking followers (for Redis, dedicated connections) that
//! follow every locally subscribed channel, so storage work does not grow with the number of
//! subscribers.
//!
//! Each [`Partition`] has one reader. It loops on a blocking read of all the partition's channels
//! from their cursors (`XREAD COUNT c BLOCK t STREAMS ch1…chN id1…idN` on Redis) and hands what it
//! reads to the partition's fan-out. When a channel is added, the partition's *waker* ends the
//! blocked read ([`Engine::wake`]: `CLIENT UNBLOCK <reader id>` on Redis), so the reader reissues
//! it with the new channel at once. Because the wake can race the reader between two reads, the
//! waker repeats it until the reader has acted on the change (it records the partition generation
//! it last read with).
//!
//! On any storage error the reader reconnects with backoff and resumes from the same cursors, so
//! a Redis restart loses nothing that Redis kept. What Redis did not keep is reported: after a
//! reconnect, a channel whose cursor (the last entry fanned out) is no longer in its stream, and
//! was neither deleted nor trimmed, lost entries the reader had already fanned out (a failover
//! that lost writes, a restart without persistence); its subscribers are told (`truncated`,
//! `"ahead"`) and the reader continues from there (or from the stream's end, if that is earlier).
//!
//! [`Engine::wake`]: crate::engine::Engine::wake

use crate::Shared;
use crate::engine::{Chain, EngineError, Follower};
use crate::hub::Partition;
use redistribute_protocol::{Backoff, StreamId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Runs partition `index`'s reader until shutdown.
pub(crate) async fn run_reader(shared: Arc<Shared>, index: usize) {
    let partition = &shared.partitions[index];
    let target = shared.engine.describe(partition.target);
    // Up to 2 s between attempts: a failover is over in seconds, and the reader should be back
    // soon after.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut failing = false;
    loop {
        let result = tokio::select! {
            result = connect_and_follow(&shared, partition, &mut backoff, &mut failing) => result,
            () = shared.shutdown.cancelled() => return,
        };
        partition.reader_disconnected();
        if let Err(e) = result {
            if !failing {
                warn!(target, reader = index, error = %Chain(&e), "stream reader lost its storage; reconnecting");
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
    backoff: &mut Backoff,
    failing: &mut bool,
) -> Result<(), EngineError> {
    let mut follower = shared.engine.follower(partition.target, partition.within).await?;
    partition.reader_connected(follower.wake_id());
    backoff.reset();
    if std::mem::take(failing) {
        info!(
            target = shared.engine.describe(partition.target),
            "stream reader reconnected; resuming from its cursors"
        );
        report_lost_entries(shared, partition).await?;
    }
    let config = &shared.config;
    loop {
        let (streams, generation) = partition.snapshot();
        if streams.is_empty() {
            partition.channels_added_since(generation).await;
            continue;
        }
        let batches = match follower.read(&streams, config.read_count, config.block, config.redis_timeout).await {
            Err(EngineError::WrongType { .. }) => {
                // Some key was replaced by a non-stream value: drop those channels (their
                // subscribers are told) instead of stalling every channel of this reader.
                evict_non_streams(partition, &mut follower, &streams).await?;
                continue;
            }
            other => other?,
        };
        let cursors: HashMap<&str, StreamId> = streams.iter().map(|(k, id)| (k.as_str(), *id)).collect();
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        for (key, entries) in batches {
            if let Some(from) = cursors.get(key.as_str()) {
                if let Some(first) = entries.first() {
                    // The ID's time is when Redis (or the memory engine) stored the entry.
                    let lag = now_ms.saturating_sub(std::time::Duration::from_millis(first.offset.ms));
                    shared.metrics.reader_lag.observe(lag.as_secs_f64());
                }
                let queued = partition.deliver(&key, *from, entries);
                shared.metrics.deliveries.inc_by(queued as u64);
            }
        }
    }
}

/// Checks every followed channel for entries the stream lost after the reader fanned them out
/// and rewinds those channels, telling their subscribers. 512 checks at a time, pipelined on the
/// command connection: the reader resumes 0.14 s after a cut with 10,000 channels, 0.7 s with
/// 50,000 (`redistribute-load --resume`, docs/BENCHMARKS.md).
async fn report_lost_entries(shared: &Shared, partition: &Partition) -> Result<(), EngineError> {
    let (streams, _) = partition.snapshot();
    for chunk in streams.chunks(512) {
        let checks = chunk.iter().map(|(channel, cursor)| lost_after(shared, channel, *cursor));
        for ((channel, cursor), lost) in chunk.iter().zip(futures_util::future::join_all(checks).await) {
            if let Some(resume) = lost? {
                let told = partition.rewind(channel, *cursor, resume);
                warn!(
                    channel,
                    delivered_up_to = %cursor,
                    resuming_after = %resume,
                    subscribers_told = told,
                    "the stream lost entries already delivered (a failover or restart that lost writes)"
                );
            }
        }
    }
    Ok(())
}

/// Whether `channel`'s stream lost the entry at `cursor` (the last one fanned out): it is gone,
/// though nothing deleted it (`XDEL`) nor trimmed past it. Then where to go on: the cursor, or the
/// stream's end if that is earlier (what the stream holds now may all be older). New entries
/// written since carry later IDs than the lost ones (IDs follow the clock), so none is skipped.
async fn lost_after(shared: &Shared, channel: &str, cursor: StreamId) -> Result<Option<StreamId>, EngineError> {
    let Some(before) = cursor.predecessor() else { return Ok(None) };
    // Nearly always the entry is there: one command says so, the full check is for when not.
    if shared.engine.has_entry(channel, cursor).await? {
        return Ok(None);
    }
    let page = shared.engine.history_page(channel, before, 1).await?;
    let state = page.state;
    let present = page.entries.first().is_some_and(|e| e.offset == cursor);
    let trimmed = state.first.is_some_and(|first| first > cursor) && state.entries_added > state.length;
    let removed = state.max_deleted >= cursor || trimmed;
    Ok((!present && !removed).then(|| cursor.min(state.last_generated)))
}

/// Finds the followed keys that no longer hold streams and evicts their channels.
async fn evict_non_streams(
    partition: &Partition,
    follower: &mut Follower,
    streams: &[(String, StreamId)],
) -> Result<(), EngineError> {
    let keys: Vec<&str> = streams.iter().map(|(k, _)| k.as_str()).collect();
    for (key, kind) in follower.non_streams(&keys).await? {
        warn!(channel = key, kind, "channel key no longer holds a stream; closing its subscribers");
        partition.evict(&key, &format!("channel {key:?} no longer holds a stream (its key is a {kind})"));
    }
    Ok(())
}

/// Runs partition `index`'s waker until shutdown: ends the reader's blocked read when channels
/// are added.
pub(crate) async fn run_waker(shared: Arc<Shared>, index: usize) {
    let partition = &shared.partitions[index];
    loop {
        tokio::select! {
            () = partition.wake_requested() => {}
            () = shared.shutdown.cancelled() => return,
        }
        // No reader connection (None): it snapshots the channels when it connects.
        while let Some(wake_id) = partition.reader_to_wake() {
            if shared.shutdown.is_cancelled() {
                return;
            }
            match shared.engine.wake(partition.target, partition.within, wake_id).await {
                Ok(true) => break,
                // Not blocked yet: the read is in flight; try again in a moment.
                Ok(false) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => {
                    debug!(error = %Chain(&e), "waking the reader failed; it will reconnect");
                    break;
                }
            }
        }
    }
}
