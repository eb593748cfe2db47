//! The embedded memory engine: Redis Streams semantics in process, so a single server runs with
//! no setup at all.
//!
//! It keeps what the server relies on: IDs `ms-seq` from the wall clock that strictly increase
//! per stream even when the clock stalls or steps back; append with a length cap; reads after an
//! ID; `$` as the last generated ID; the same loss evidence as Redis 7.0 (entries ever added versus
//! kept, and the first kept entry); blocking tail reads that wake on append, without polling;
//! and consumer groups (each consumer's pending entries, claims after an idle time, delivery
//! counts that grow on every delivery, re-reads included, as in Redis).
//!
//! It is bounded. Each channel keeps at most `max_entries_per_channel` entries (or less with
//! `maxlen`), and all channels together at most `max_bytes` (entry fields plus channel names):
//! past that, the oldest entries across all channels (by ID, i.e. by time) are trimmed first. A
//! channel whose last entry is trimmed is forgotten entirely, so channels nobody publishes to any
//! more are the first to go and do not pile up (with its groups: an emptied channel forgets them).
//! Data lives as long as the process: one instance only, no persistence.

mod groups;

pub use self::groups::MemoryMember;

use super::{EngineError, HistoryPage, StreamState};
use redistribute_protocol::{Entry, StreamId};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Bounds of the memory engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Total bytes of entry fields and channel names kept.
    pub max_bytes: usize,
    /// Entries kept per channel when publishes ask for no smaller `maxlen`.
    pub max_entries_per_channel: u64,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits { max_bytes: 256 << 20, max_entries_per_channel: 100_000 }
    }
}

#[derive(Debug, Default)]
struct Stream {
    entries: VecDeque<Entry>,
    bytes: usize,
    last_generated: StreamId,
    entries_added: u64,
    groups: HashMap<String, groups::Group>,
}

impl Stream {
    fn state(&self) -> StreamState {
        StreamState {
            last_generated: self.last_generated,
            max_deleted: StreamId::ZERO, // only XDEL moves it, and there is no XDEL here
            first: self.entries.front().map(|e| e.offset),
            length: self.entries.len() as u64,
            entries_added: self.entries_added,
        }
    }

    fn after(&self, id: StreamId, count: usize) -> Vec<Entry> {
        let start = self.entries.partition_point(|e| e.offset <= id);
        self.entries.range(start..).take(count).cloned().collect()
    }

    fn pop_oldest(&mut self) -> usize {
        let size = self.entries.pop_front().map_or(0, |e| entry_size(&e));
        self.bytes -= size;
        size
    }
}

fn entry_size(entry: &Entry) -> usize {
    entry.fields.iter().map(String::len).sum::<usize>() + 16
}

#[derive(Debug, Default)]
struct Streams {
    map: HashMap<String, Stream>,
    bytes: usize,
}

#[derive(Debug)]
struct Inner {
    streams: Mutex<Streams>,
    /// Woken on every append and by [`MemoryEngine::wake`].
    appended: Notify,
    /// Reads blocked right now (registered with `appended`), so a wake can tell whether it
    /// reached one, like `CLIENT UNBLOCK` does.
    waiting: AtomicUsize,
    limits: MemoryLimits,
}

/// Streams in this process's memory. Cheap to clone; clones share the data.
#[derive(Debug, Clone)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        MemoryEngine::new(MemoryLimits::default())
    }
}

/// The next ID after `last` at wall-clock time `now_ms`: strictly greater than `last` whatever
/// the clock does.
pub(crate) fn next_id(last: StreamId, now_ms: u64) -> StreamId {
    if now_ms > last.ms { StreamId::new(now_ms, 0) } else { last.successor().unwrap_or(last) }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl MemoryEngine {
    /// An empty engine with these bounds.
    pub fn new(limits: MemoryLimits) -> Self {
        MemoryEngine {
            inner: Arc::new(Inner {
                streams: Mutex::default(),
                appended: Notify::new(),
                waiting: AtomicUsize::new(0),
                limits,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.inner.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an entry; `maxlen` caps the channel (exactly, which `MAXLEN ~` allows).
    ///
    /// # Errors
    /// Never: the signature matches the Redis engine's.
    pub async fn publish(
        &self,
        channel: &str,
        fields: &[String],
        maxlen: Option<u64>,
    ) -> Result<StreamId, EngineError> {
        let id = self.append(channel, fields.to_vec(), maxlen, now_ms());
        self.inner.appended.notify_waiters();
        Ok(id)
    }

    fn append(&self, channel: &str, fields: Vec<String>, maxlen: Option<u64>, now: u64) -> StreamId {
        let limits = self.inner.limits;
        let mut streams = self.lock();
        let streams = &mut *streams;
        if !streams.map.contains_key(channel) {
            streams.bytes += channel.len();
        }
        let stream = streams.map.entry(channel.to_owned()).or_default();
        let id = next_id(stream.last_generated, now);
        let entry = Entry { offset: id, fields };
        let size = entry_size(&entry);
        stream.entries.push_back(entry);
        stream.bytes += size;
        stream.last_generated = id;
        stream.entries_added += 1;
        streams.bytes += size;
        let cap = maxlen.unwrap_or(u64::MAX).min(limits.max_entries_per_channel).max(1);
        while stream.entries.len() as u64 > cap {
            streams.bytes -= stream.pop_oldest();
        }
        // Over the global budget: trim the oldest entries of all channels first.
        while streams.bytes > limits.max_bytes {
            let oldest = streams
                .map
                .iter()
                .filter_map(|(k, s)| Some((s.entries.front()?.offset, k)))
                .min()
                .map(|(_, k)| k.clone());
            let Some(oldest) = oldest else { break };
            let stream = streams.map.get_mut(&oldest).expect("just found");
            streams.bytes -= stream.pop_oldest();
            if stream.entries.is_empty() {
                streams.map.remove(&oldest);
                streams.bytes -= oldest.len();
            }
        }
        id
    }

    /// The channel's state; a missing channel is empty.
    ///
    /// # Errors
    /// Never.
    pub async fn state(&self, channel: &str) -> Result<StreamState, EngineError> {
        Ok(self.lock().map.get(channel).map(Stream::state).unwrap_or_default())
    }

    /// Up to `count` entries after `after`, with the state at the same instant.
    ///
    /// # Errors
    /// Never.
    pub async fn history_page(&self, channel: &str, after: StreamId, count: usize) -> Result<HistoryPage, EngineError> {
        let streams = self.lock();
        Ok(match streams.map.get(channel) {
            Some(stream) => HistoryPage { state: stream.state(), entries: stream.after(after, count) },
            None => HistoryPage::default(),
        })
    }

    /// Waits up to `block` for entries after any of the cursors; returns up to `count` per
    /// channel (nothing on timeout or [`MemoryEngine::wake`]).
    pub async fn read(
        &self,
        streams: &[(String, StreamId)],
        count: usize,
        block: Duration,
    ) -> Vec<(String, Vec<Entry>)> {
        let appended = self.inner.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let found = self.collect(streams, count);
        if !found.is_empty() {
            return found;
        }
        self.inner.waiting.fetch_add(1, Ordering::AcqRel);
        let _ = tokio::time::timeout(block, appended).await;
        self.inner.waiting.fetch_sub(1, Ordering::AcqRel);
        self.collect(streams, count)
    }

    fn collect(&self, cursors: &[(String, StreamId)], count: usize) -> Vec<(String, Vec<Entry>)> {
        let streams = self.lock();
        cursors
            .iter()
            .filter_map(|(key, after)| {
                let entries = streams.map.get(key)?.after(*after, count);
                (!entries.is_empty()).then(|| (key.clone(), entries))
            })
            .collect()
    }

    /// Ends every blocked [`MemoryEngine::read`] early (the channel set changed). Returns
    /// whether one was blocked; callers retry otherwise, as with `CLIENT UNBLOCK`.
    pub fn wake(&self) -> bool {
        let blocked = self.inner.waiting.load(Ordering::Acquire) > 0;
        if blocked {
            self.inner.appended.notify_waiters();
        }
        blocked
    }

    /// Bytes currently accounted (entry fields and channel names).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Number of entries held, all channels together.
    pub fn entries(&self) -> usize {
        self.lock().map.values().map(|stream| stream.entries.len()).sum()
    }

    /// Number of channels held.
    pub fn channels(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_strictly_whatever_the_clock_does() {
        let a = next_id(StreamId::ZERO, 1000);
        let b = next_id(a, 1000);
        let c = next_id(b, 990); // the clock stepped back
        let d = next_id(c, 1001);
        assert_eq!(
            [a, b, c, d],
            [StreamId::new(1000, 0), StreamId::new(1000, 1), StreamId::new(1000, 2), StreamId::new(1001, 0)]
        );
        assert_eq!(next_id(StreamId::new(5, u64::MAX), 1), StreamId::new(6, 0));
    }

    #[test]
    fn the_budget_trims_the_oldest_entries_and_forgets_emptied_channels() {
        let engine = MemoryEngine::new(MemoryLimits { max_bytes: 2_000, max_entries_per_channel: 1_000 });
        for i in 0..100 {
            engine.append(&format!("once-{i}"), vec!["k".into(), "v".repeat(10)], None, 1);
        }
        for i in 0..200 {
            engine.append("busy", vec!["k".into(), "v".repeat(20)], None, 10 + i);
        }
        assert!(engine.bytes() <= 2_000, "{} bytes", engine.bytes());
        let busy = engine.lock().map["busy"].entries.len();
        assert!(busy > 30, "the active channel keeps its newest entries ({busy})");
        assert_eq!(engine.channels(), 1, "stale channels went first and were forgotten");
        // Trimmed channels report the loss like Redis 7.0 does.
        let state = engine.lock().map["busy"].state();
        assert!(state.lost_after(StreamId::ZERO));
    }
}
