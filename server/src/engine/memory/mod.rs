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
//! `maxlen`), and everything together at most `max_bytes`, counted as the allocator really hands
//! it out: entries with their field strings and queue slots, channel names and records, consumer
//! groups and their pending entries. Past the budget, the oldest entries across all channels (by
//! ID, i.e. by time) are trimmed first, found through an index of each channel's oldest entry
//! (`O(log n)` per entry). A channel whose last entry is trimmed is forgotten, with its groups,
//! unless a group member is connected. A channel holding only groups nobody is connected to is
//! kept (as Redis keeps a group), but trimmed by the same rule, as of its last ID, when the budget
//! needs room. Offsets stay unique forever: a channel
//! created, or created again after being forgotten, starts above every ID the engine generated.
//! Data lives as long as the process: one instance only, no persistence.

mod groups;

pub use self::groups::MemoryMember;

use super::{Appended, EngineError, HistoryPage, StreamState, Write};
use redistribute_protocol::{Entry, StreamId};
use std::collections::{BTreeSet, HashMap, VecDeque};
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
    last_generated: StreamId,
    entries_added: u64,
    groups: HashMap<String, groups::Group>,
    /// Bytes of the groups' bookkeeping (groups and pending entries), part of the budget.
    group_bytes: usize,
    /// Group members connected now: a channel they use is never forgotten.
    members: usize,
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

    /// Where the channel stands in the trimming order: its oldest entry, or for an empty
    /// channel its last ID; `None` while it is empty and in use (never trimmed then).
    fn trim_key(&self) -> Option<StreamId> {
        match self.entries.front() {
            Some(entry) => Some(entry.offset),
            None if self.members == 0 => Some(self.last_generated),
            None => None,
        }
    }
}

/// What the allocator hands out for a request of `n` bytes (glibc: an 8-byte header, 16-byte
/// steps, 32 bytes at least); nothing for none.
pub(super) fn alloc(n: usize) -> usize {
    if n == 0 { 0 } else { (n + 8).div_ceil(16).max(2) * 16 }
}

/// What an entry costs: its queue slot (twice, as the queue grows by doubling), its field list
/// and each field's string.
fn entry_cost(entry: &Entry) -> usize {
    2 * size_of::<Entry>()
        + alloc(size_of::<String>() * entry.fields.len())
        + entry.fields.iter().map(|f| alloc(f.len())).sum::<usize>()
}

/// What a channel costs beyond its entries: its record in the map (twice, for the map's spare
/// room), its name there and in the trimming index, and the index's node.
fn channel_cost(name: &str) -> usize {
    2 * size_of::<(String, Stream)>() + 2 * alloc(name.len()) + 2 * size_of::<(StreamId, String)>()
}

#[derive(Debug, Default)]
struct Streams {
    map: HashMap<String, Stream>,
    /// Every trimmable channel by [`Stream::trim_key`], oldest first.
    trim_order: BTreeSet<(StreamId, String)>,
    bytes: usize,
    entries: usize,
    /// The largest ID generated so far, on any channel.
    high_water: StreamId,
    /// Idempotency keys of recent writes (under the same lock as the appends they guard).
    seen: SeenKeys,
}

/// Most idempotency keys the memory engine remembers; beyond it the oldest are forgotten first
/// (their window shrinks under a flood of unique keys, memory does not grow).
const MAX_SEEN_KEYS: usize = 100_000;

/// Idempotency keys with the offset of the write that first used each, until they expire.
#[derive(Debug, Default)]
struct SeenKeys {
    /// `channel \0 key` → (offset, expiry in ms).
    offsets: HashMap<String, (StreamId, u64)>,
    /// The same keys in the order they were recorded, with their expiry.
    order: VecDeque<(u64, String)>,
}

impl SeenKeys {
    fn id(channel: &str, key: &str) -> String {
        format!("{channel}\0{key}")
    }

    /// The offset recorded for `key` on `channel`, if it has not expired at `now`.
    fn get(&mut self, channel: &str, key: &str, now: u64) -> Option<StreamId> {
        self.expire(now);
        self.offsets.get(&Self::id(channel, key)).map(|(offset, _)| *offset)
    }

    fn record(&mut self, channel: &str, key: &str, offset: StreamId, expires: u64) {
        let id = Self::id(channel, key);
        self.offsets.insert(id.clone(), (offset, expires));
        self.order.push_back((expires, id));
        while self.order.len() > MAX_SEEN_KEYS {
            let (_, id) = self.order.pop_front().expect("over the cap");
            self.offsets.remove(&id);
        }
    }

    /// Forgets expired keys (a key recorded again keeps its latest expiry).
    fn expire(&mut self, now: u64) {
        while let Some((expires, _)) = self.order.front()
            && *expires <= now
        {
            let (_, id) = self.order.pop_front().expect("looked at");
            if self.offsets.get(&id).is_some_and(|(_, at)| *at <= now) {
                self.offsets.remove(&id);
            }
        }
    }
}

impl Streams {
    /// The channel, created if needed (charged, and starting above every ID generated so far).
    fn open(&mut self, channel: &str) -> &mut Stream {
        if !self.map.contains_key(channel) {
            self.bytes += channel_cost(channel);
            let stream = Stream { last_generated: self.high_water, ..Stream::default() };
            self.trim_order.insert((stream.last_generated, channel.to_owned()));
            self.map.insert(channel.to_owned(), stream);
        }
        self.map.get_mut(channel).expect("just inserted")
    }

    /// Runs `change` on an existing channel, keeping the trimming index and the byte count
    /// right (`change` returns the bytes it added and removed).
    fn change<T>(&mut self, channel: &str, change: impl FnOnce(&mut Stream) -> (T, usize, usize)) -> Option<T> {
        let stream = self.map.get_mut(channel)?;
        let before = stream.trim_key();
        let (out, added, removed) = change(stream);
        let after = stream.trim_key();
        self.bytes = self.bytes + added - removed;
        if before != after {
            if let Some(key) = before {
                self.trim_order.remove(&(key, channel.to_owned()));
            }
            if let Some(key) = after {
                self.trim_order.insert((key, channel.to_owned()));
            }
        }
        Some(out)
    }

    fn append(&mut self, channel: &str, fields: Vec<String>, cap: u64, now: u64) -> StreamId {
        self.open(channel);
        let high_water = self.high_water;
        let (id, trimmed) = self
            .change(channel, |stream| {
                let id = next_id(stream.last_generated.max(high_water), now);
                let entry = Entry { offset: id, fields };
                let added = entry_cost(&entry);
                stream.entries.push_back(entry);
                stream.last_generated = id;
                stream.entries_added += 1;
                let (mut trimmed, mut removed) = (0, 0);
                while stream.entries.len() as u64 > cap {
                    removed += stream.entries.pop_front().map_or(0, |e| entry_cost(&e));
                    trimmed += 1;
                }
                ((id, trimmed), added, removed)
            })
            .expect("just opened");
        self.entries = self.entries + 1 - trimmed;
        self.high_water = id;
        id
    }

    /// Trims the oldest entries (and forgets emptied, unused channels) until the budget holds.
    fn trim_to(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((_, channel)) = self.trim_order.first().cloned() else { break };
            let popped = self
                .change(&channel, |stream| match stream.entries.pop_front() {
                    Some(entry) => (true, 0, entry_cost(&entry)),
                    None => (false, 0, 0),
                })
                .expect("indexed channels exist");
            self.entries -= usize::from(popped);
            self.forget_if_unused(&channel);
        }
    }

    /// Forgets an empty channel no member is connected to, with its groups.
    fn forget_if_unused(&mut self, channel: &str) {
        let Some(stream) = self.map.get(channel) else { return };
        if !stream.entries.is_empty() || stream.members > 0 {
            return;
        }
        let stream = self.map.remove(channel).expect("just found");
        self.trim_order.remove(&(stream.last_generated, channel.to_owned()));
        self.bytes -= channel_cost(channel) + stream.group_bytes;
    }
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
        let write = Write { channel, fields, maxlen, once: None };
        let appended = self.append_all(&[write], now_ms())[0];
        self.inner.appended.notify_waiters();
        Ok(appended.offset)
    }

    /// Appends several entries, in order, under one lock (keys are checked under it too).
    pub(crate) fn publish_many(&self, writes: &[Write<'_>]) -> Vec<Result<Appended, EngineError>> {
        let appended = self.append_all(writes, now_ms());
        if appended.iter().any(|a| !a.duplicate) {
            self.inner.appended.notify_waiters();
        }
        appended.into_iter().map(Ok).collect()
    }

    /// Appends `(channel, fields, maxlen)` entries at wall-clock time `now`, each channel capped
    /// at its `maxlen` (exactly, which `MAXLEN ~` allows) and the whole at the byte budget.
    fn append_all(&self, writes: &[Write<'_>], now: u64) -> Vec<Appended> {
        let limits = self.inner.limits;
        let mut streams = self.lock();
        let appended = writes
            .iter()
            .map(|&Write { channel, fields, maxlen, once }| {
                if let Some(once) = once
                    && let Some(offset) = streams.seen.get(channel, once.key, now)
                {
                    return Appended { offset, duplicate: true };
                }
                let cap = maxlen.unwrap_or(u64::MAX).min(limits.max_entries_per_channel).max(1);
                let offset = streams.append(channel, fields.to_vec(), cap, now);
                if let Some(once) = once {
                    let expires = now.saturating_add(once.ttl.as_millis() as u64);
                    streams.seen.record(channel, once.key, offset, expires);
                }
                Appended { offset, duplicate: false }
            })
            .collect();
        streams.trim_to(limits.max_bytes);
        appended
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

    /// Whether `channel` holds the entry `id`.
    pub fn has_entry(&self, channel: &str, id: StreamId) -> bool {
        let Some(before) = id.predecessor() else { return false };
        let streams = self.lock();
        streams.map.get(channel).is_some_and(|stream| stream.after(before, 1).first().is_some_and(|e| e.offset == id))
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

    /// Bytes currently accounted against the budget.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Number of entries held, all channels together.
    pub fn entries(&self) -> usize {
        self.lock().entries
    }

    /// Number of channels held.
    pub fn channels(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl MemoryEngine {
        /// One entry at wall-clock time `now`.
        fn append(&self, channel: &str, fields: Vec<String>, maxlen: Option<u64>, now: u64) -> StreamId {
            self.append_all(&[Write { channel, fields: &fields, maxlen, once: None }], now)[0].offset
        }
    }

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
        let engine = MemoryEngine::new(MemoryLimits { max_bytes: 40_000, max_entries_per_channel: 1_000 });
        for i in 0..100 {
            engine.append(&format!("once-{i}"), vec!["k".into(), "v".repeat(10)], None, 1);
        }
        for i in 0..400 {
            engine.append("busy", vec!["k".into(), "v".repeat(20)], None, 10 + i);
        }
        assert!(engine.bytes() <= 40_000, "{} bytes", engine.bytes());
        let busy = engine.lock().map["busy"].entries.len();
        assert!(busy > 100, "the active channel keeps its newest entries ({busy})");
        assert_eq!(engine.channels(), 1, "stale channels went first and were forgotten");
        assert_eq!(engine.entries(), busy);
        // Trimmed channels report the loss like Redis 7.0 does.
        let state = engine.lock().map["busy"].state();
        assert!(state.lost_after(StreamId::ZERO));
        // The books balance: forgetting everything leaves nothing charged.
        engine.lock().trim_to(0);
        assert_eq!((engine.bytes(), engine.entries(), engine.channels()), (0, 0, 0));
        assert!(engine.lock().trim_order.is_empty());
    }

    #[test]
    fn publish_many_appends_in_order() {
        let engine = MemoryEngine::default();
        let fields = |n: &str| vec!["n".to_owned(), n.to_owned()];
        let (one, two, three) = (fields("1"), fields("2"), fields("3"));
        let write = |channel, fields, maxlen| Write { channel, fields, maxlen, once: None };
        let writes = [write("a", &one, None), write("b", &two, None), write("a", &three, Some(1))];
        let ids: Vec<StreamId> = engine.publish_many(&writes).into_iter().map(|a| a.unwrap().offset).collect();
        assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
        let a = engine.lock().map["a"].entries.iter().map(|e| e.fields[1].clone()).collect::<Vec<_>>();
        assert_eq!(a, ["3"], "each write keeps its own maxlen");
    }

    #[test]
    fn an_idempotency_key_is_remembered_for_its_window_only() {
        let engine = MemoryEngine::default();
        let fields = vec!["k".to_owned(), "v".to_owned()];
        let once = Some(super::super::Once { key: "a", ttl: Duration::from_millis(1_000) });
        let write = Write { channel: "c", fields: &fields, maxlen: None, once };
        let first = engine.append_all(&[write], 10_000)[0];
        assert!(!first.duplicate);
        assert_eq!(engine.append_all(&[write], 10_999)[0], Appended { offset: first.offset, duplicate: true });
        let later = engine.append_all(&[write], 11_000)[0];
        assert!(!later.duplicate && later.offset > first.offset, "expired: stored again");
        let other_channel = Write { channel: "d", ..write };
        assert!(!engine.append_all(&[other_channel], 11_001)[0].duplicate, "keys are per channel");
    }

    #[test]
    fn offsets_stay_unique_after_a_channel_is_forgotten() {
        let engine = MemoryEngine::new(MemoryLimits { max_bytes: 1 << 20, max_entries_per_channel: 1_000 });
        let first = engine.append("a", vec!["k".into(), "1".into()], None, 5);
        engine.lock().trim_to(0);
        assert_eq!(engine.channels(), 0, "forgotten");
        // The same millisecond again: a restarted sequence would hand out 5-0 a second time.
        let again = engine.append("a", vec!["k".into(), "2".into()], None, 5);
        assert!(again > first, "{again} after {first}");
        assert!(engine.append("b", vec!["k".into(), "3".into()], None, 1) > again, "even with a clock behind");
    }

    #[tokio::test]
    async fn groups_joined_and_left_on_new_names_do_not_pile_up() {
        let budget = 1 << 20;
        let engine = MemoryEngine::new(MemoryLimits { max_bytes: budget, max_entries_per_channel: 1_000 });
        let start = redistribute_protocol::Start::Latest;
        for i in 0..20_000 {
            drop(MemoryMember::join(&engine, &format!("c{i}"), "g", "worker", start));
        }
        assert!(engine.bytes() <= budget, "charged and bounded: {}", engine.bytes());
        assert!(engine.channels() < 10_000, "the oldest left-behind groups were trimmed: {}", engine.channels());
        // Room is made from the stale groups, not from what is published now.
        engine.publish("news", &["k".into(), "v".into()], None).await.unwrap();
        assert_eq!(engine.history_page("news", StreamId::ZERO, 10).await.unwrap().entries.len(), 1);
        // A member that stays keeps its (empty) channel and group.
        let member = MemoryMember::join(&engine, "jobs", "g", "w", start);
        engine.lock().trim_to(0);
        assert_eq!(engine.channels(), 1, "in use: kept");
        drop(member);
        engine.lock().trim_to(0);
        assert_eq!((engine.channels(), engine.bytes()), (0, 0));
    }
}
