//! Persistence layout for received messages, over any string key/value store.
//!
//! Per channel, entries live in chunks of at most [`Store::CHUNK`] entries under
//! `<prefix><channel>~<n>`, and a small meta record under `<prefix><channel>` says which chunks
//! exist, how many entries they hold and the last offset. (`~` cannot occur in a channel name,
//! so keys never collide.) Appends are buffered and written by [`Store::flush`]: a flush rewrites
//! only the partly filled tail chunk and the meta record, so persisting N messages writes O(N)
//! bytes in total, whatever the per-channel cap. Whole chunks are dropped from the head once the
//! rest still holds the cap, so storage keeps between `cap` and `cap + CHUNK - 1` entries and
//! [`Store::load`] returns exactly the newest `cap`.
//!
//! The stored log is always contiguous, and what [`Store::load`] returns and the offset a
//! reloaded page resumes after come from the same record:
//! - the meta record is the commit point: chunks are written first, the meta record last, and
//!   entries a chunk holds beyond the meta's last offset (a write cut short, a tab killed between
//!   the two writes) are ignored;
//! - entries that cannot be written (storage full) stay in memory and are retried, in order, on
//!   every flush; nothing after them is stored before they are, so the stored log stops at its
//!   last contiguous entry, and the meta record notes how many entries followed it unstored
//!   (the [`Gap`] a reloaded page's `load` reports; its subscription resumes at the log's end,
//!   so the server replays them);
//! - if more than `cap` entries wait, the oldest waiting ones are given up and the log starts
//!   over with the rest: it loses old history, as the cap does, never a middle.
//!
//! The browser's `localStorage` and an in-memory map both implement [`KeyValue`], so the
//! layout, eviction and error handling are tested natively.

use crate::json::{self, Json};
use crate::keyed::Keyed;
use crate::machine::Publication;
use crate::outbox;
use redistribute_protocol::{Entry, StreamId};
use std::fmt::Write as _;

/// A string key/value store (`localStorage`, or memory in tests).
pub trait KeyValue {
    /// The value under `key`, if any.
    fn get(&self, key: &str) -> Option<String>;
    /// Stores `value` under `key`.
    ///
    /// # Errors
    /// [`StoreError::Quota`] when the store is full.
    fn set(&mut self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Removes `key`.
    fn remove(&mut self, key: &str);
    /// All keys (used only to clean up after corruption).
    fn keys(&self) -> Vec<String>;
}

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The storage quota is exhausted.
    Quota,
    /// Any other failure (storage disabled, security error…), with its description.
    Other(String),
}

/// Something the application should hear about (as an `error` event); the client keeps working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreProblem {
    /// `storage_quota`, `storage_corrupt` or `storage_failed`.
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
}

/// Entries received after the stored log's end but not stored (storage was full): a reloaded
/// page's subscription resumes after `after`, so the server replays them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The last stored offset: the log stops here (`None`: nothing was stored).
    pub after: Option<StreamId>,
    /// How many entries followed it unstored.
    pub count: u64,
}

/// What [`Store::load`] returns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The stored entries (and those still waiting to be written), oldest first, contiguous.
    pub entries: Vec<Entry>,
    /// The newest of them: where a subscription resumes.
    pub last_offset: Option<StreamId>,
    /// Entries that followed `last_offset` but were not stored (a previous session ran out of
    /// storage), if any.
    pub gap: Option<Gap>,
    /// What went wrong reading the store.
    pub problems: Vec<StoreProblem>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Meta {
    /// Layout version.
    v: u32,
    /// Index of the oldest chunk.
    first: u64,
    /// Index of the newest chunk.
    last: u64,
    /// Entries stored over all chunks.
    count: usize,
    /// Offset of the newest stored entry.
    last_offset: Option<StreamId>,
    /// Entries received after `last_offset` that could not be stored.
    unstored: u64,
}

impl Meta {
    fn to_text(&self) -> String {
        let mut out =
            format!("{{\"v\":{},\"first\":{},\"last\":{},\"count\":{}", self.v, self.first, self.last, self.count);
        if let Some(offset) = self.last_offset {
            let _ = write!(out, ",\"lastOffset\":\"{offset}\"");
        }
        if self.unstored > 0 {
            let _ = write!(out, ",\"unstored\":{}", self.unstored);
        }
        out.push('}');
        out
    }

    fn parse(text: &str) -> Result<Meta, &'static str> {
        let value = json::parse(text).map_err(|e| e.0)?;
        let number = |key| value.get(key).and_then(Json::as_u64).ok_or("meta field missing");
        Ok(Meta {
            v: u32::try_from(number("v")?).map_err(|_| "bad layout version")?,
            first: number("first")?,
            last: number("last")?,
            count: usize::try_from(number("count")?).map_err(|_| "bad count")?,
            last_offset: match value.get("lastOffset") {
                Some(offset) => Some(offset.as_str().and_then(|s| s.parse().ok()).ok_or("bad lastOffset")?),
                None => None,
            },
            unstored: match value.get("unstored") {
                Some(n) => n.as_u64().ok_or("bad unstored count")?,
                None => 0,
            },
        })
    }
}

fn chunk_text(chunk: &[Entry]) -> String {
    let mut out = String::from("[");
    for (i, entry) in chunk.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::write_entry(&mut out, entry);
    }
    out.push(']');
    out
}

fn parse_chunk(text: &str) -> Result<Vec<Entry>, &'static str> {
    let value = json::parse(text).map_err(|e| e.0)?;
    value
        .as_array()
        .ok_or("chunk is not an array")?
        .iter()
        .map(json::entry)
        .collect::<Option<_>>()
        .ok_or("bad entry in chunk")
}

const LAYOUT: u32 = 1;

/// What the store knows about one channel while the client runs.
#[derive(Debug, Default)]
struct Channel {
    meta: Meta,
    /// The entries of chunk `meta.last` (kept so a flush need not read it back).
    tail: Vec<Entry>,
    /// Entries received but not written yet (buffered, or waiting for storage to have room).
    pending: Vec<Entry>,
    /// Waiting entries given up since the last successful write (more than `cap` waited): the
    /// next write starts the log over instead of appending to it.
    given_up: u64,
}

/// Per-channel message persistence with batching and a cap.
pub struct Store<K> {
    kv: K,
    prefix: String,
    cap: usize,
    channels: Keyed<String, Channel>,
}

impl<K: KeyValue> Store<K> {
    /// Entries per chunk: the most a flush rewrites besides the new entries.
    pub const CHUNK: usize = 32;

    /// A store keeping at most `cap` entries per channel under keys starting with `prefix`.
    pub fn new(kv: K, prefix: impl Into<String>, cap: usize) -> Self {
        Store { kv, prefix: prefix.into(), cap: cap.max(1), channels: Keyed::new() }
    }

    /// The key/value backend (for tests and diagnostics).
    pub fn backend(&self) -> &K {
        &self.kv
    }

    /// Persists a publish the server has not answered (the durable outbox, [`crate::outbox`]).
    ///
    /// # Errors
    /// What the application should hear when it cannot be saved.
    pub fn save_publish(&mut self, publication: &Publication) -> Result<(), StoreProblem> {
        outbox::save(&mut self.kv, &self.prefix, publication)
    }

    /// Forgets a saved publish by its idempotency key.
    pub fn forget_publish(&mut self, key: &str) {
        outbox::remove(&mut self.kv, &self.prefix, key);
    }

    /// The publishes saved and never answered (by this or an earlier page), oldest first.
    pub fn saved_publishes(&mut self) -> (Vec<Publication>, Vec<StoreProblem>) {
        outbox::load(&mut self.kv, &self.prefix)
    }

    fn meta_key(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }

    fn chunk_key(&self, channel: &str, n: u64) -> String {
        format!("{}{channel}~{n}", self.prefix)
    }

    fn read_chunk(&self, channel: &str, n: u64) -> Result<Vec<Entry>, String> {
        match self.kv.get(&self.chunk_key(channel, n)) {
            Some(text) => parse_chunk(&text).map_err(|e| format!("chunk {n}: {e}")),
            None => Err(format!("chunk {n} is missing")),
        }
    }

    /// Loads a channel's meta and tail chunk (once per channel per session).
    fn open(&mut self, channel: &str, problems: &mut Vec<StoreProblem>) {
        if self.channels.contains(channel) {
            return;
        }
        let loaded = match self.kv.get(&self.meta_key(channel)) {
            None => Ok(Channel::default()),
            Some(text) => Meta::parse(&text)
                .map_err(|e| format!("meta: {e}"))
                .and_then(|meta| if meta.v == LAYOUT { Ok(meta) } else { Err(format!("unknown layout {}", meta.v)) })
                .and_then(|meta| {
                    let mut tail = if meta.count == 0 { Vec::new() } else { self.read_chunk(channel, meta.last)? };
                    // The meta record is the commit point: what a chunk holds beyond it was
                    // never committed.
                    tail.retain(|e| meta.last_offset.is_some_and(|last| e.offset <= last));
                    Ok(Channel { meta, tail, pending: Vec::new(), given_up: 0 })
                }),
        };
        let state = loaded.unwrap_or_else(|reason| {
            problems.push(StoreProblem {
                code: "storage_corrupt",
                message: format!("stored messages of \"{channel}\" were unreadable ({reason}) and were discarded"),
            });
            self.wipe(channel);
            Channel::default()
        });
        self.channels.insert(channel.to_owned(), state);
    }

    /// Removes every key of `channel`.
    fn wipe(&mut self, channel: &str) {
        let meta = self.meta_key(channel);
        let chunks = format!("{meta}~");
        for key in self.kv.keys() {
            if key == meta || key.starts_with(&chunks) {
                self.kv.remove(&key);
            }
        }
    }

    /// Discards everything stored for `channel` (its stream lost what was stored: the history no
    /// longer matches it).
    pub fn forget(&mut self, channel: &str) {
        self.wipe(channel);
        self.channels.remove(channel);
    }

    /// Queues entries for the next flush. Entries at or below the stored last offset are ignored.
    pub fn append(&mut self, channel: &str, entries: &[Entry]) -> Vec<StoreProblem> {
        let mut problems = Vec::new();
        self.open(channel, &mut problems);
        let state = self.channels.get_mut(channel).expect("opened above");
        let newest = state.pending.last().map(|e| e.offset).or(state.meta.last_offset);
        state.pending.extend(entries.iter().filter(|e| newest.is_none_or(|n| e.offset > n)).cloned());
        problems
    }

    /// True when appended entries wait to be written.
    pub fn is_dirty(&self) -> bool {
        self.channels.iter().any(|(_, c)| !c.pending.is_empty())
    }

    /// Writes everything appended since the last flush.
    pub fn flush(&mut self) -> Vec<StoreProblem> {
        let dirty: Vec<String> =
            self.channels.iter().filter(|(_, c)| !c.pending.is_empty()).map(|(k, _)| k.clone()).collect();
        let mut problems = Vec::new();
        for channel in dirty {
            if let Err(problem) = self.flush_channel(&channel) {
                problems.push(problem);
            }
        }
        problems
    }

    fn flush_channel(&mut self, channel: &str) -> Result<(), StoreProblem> {
        let mut state = self.channels.remove(channel).expect("dirty channels are open");
        let mut result = self.write(channel, &mut state);
        let evicted = result == Err(StoreError::Quota);
        if evicted {
            // Make room by dropping this channel's oldest half, then try once more.
            self.evict_half(channel, &mut state);
            result = self.write(channel, &mut state);
        }
        let outcome = match result {
            Ok(()) => {
                state.pending.clear();
                state.given_up = 0;
                if evicted {
                    Err(StoreProblem {
                        code: "storage_quota",
                        message: format!(
                            "storage is full: dropped older stored messages of \"{channel}\" to keep new ones"
                        ),
                    })
                } else {
                    Ok(())
                }
            }
            Err(error) => Err(self.keep_unwritten(channel, &mut state, error)),
        };
        self.channels.insert(channel.to_owned(), state);
        outcome
    }

    /// After a failed write: the entries stay in memory (at most `cap` of them) to be written
    /// on the next flush, and the meta record notes how many follow the stored log unstored, so
    /// that a reloaded page knows where its stored history stops.
    fn keep_unwritten(&mut self, channel: &str, state: &mut Channel, error: StoreError) -> StoreProblem {
        let overflow = state.pending.len().saturating_sub(self.cap);
        state.pending.drain(..overflow);
        state.given_up += overflow as u64;
        let waiting = state.pending.len();
        let mut meta = state.meta.clone();
        meta.unstored = state.given_up + waiting as u64;
        // Best effort: with storage full even this small record may not fit.
        if self.kv.set(&self.meta_key(channel), &meta.to_text()).is_ok() {
            state.meta = meta;
        }
        let stops = state
            .meta
            .last_offset
            .map_or_else(|| "nothing is stored".to_owned(), |o| format!("stored history stops at {o}"));
        match error {
            StoreError::Quota => StoreProblem {
                code: "storage_quota",
                message: format!(
                    "storage is full: {waiting} messages of \"{channel}\" are not stored yet ({stops}); they are kept in memory and written once there is room"
                ),
            },
            StoreError::Other(e) => StoreProblem {
                code: "storage_failed",
                message: format!("persisting \"{channel}\": {e} ({stops}; {waiting} messages wait in memory)"),
            },
        }
    }

    /// Appends `state.pending` into chunks, trims to the cap, writes the meta record. On error
    /// the in-memory state is left as it was before the call (pending entries kept).
    fn write(&mut self, channel: &str, state: &mut Channel) -> Result<(), StoreError> {
        let mut meta = Meta { unstored: 0, ..state.meta.clone() };
        let mut tail = state.tail.clone();
        // Chunks of the old log, removed once the new meta record is written.
        let mut removed = Vec::new();
        if state.given_up > 0 && meta.count > 0 {
            // Entries between the stored log and the waiting ones were given up: the log starts
            // over with the waiting ones rather than keep a hole.
            removed.extend(meta.first..=meta.last);
            meta = Meta { v: LAYOUT, first: meta.last + 1, last: meta.last + 1, count: 0, ..meta };
            tail.clear();
        } else if meta.count == 0 {
            meta = Meta { v: LAYOUT, first: meta.last, last: meta.last, count: 0, ..meta };
            tail.clear();
        }
        let mut written = Vec::new();
        for entry in &state.pending {
            if tail.len() == Self::CHUNK {
                written.push((meta.last, std::mem::take(&mut tail)));
                meta.last += 1;
            }
            tail.push(entry.clone());
            meta.count += 1;
            meta.last_offset = Some(entry.offset);
        }
        written.push((meta.last, tail.clone()));
        // Drop whole chunks from the head while that keeps at least `cap` entries.
        while meta.count > self.cap && meta.first < meta.last {
            let len = written.iter().find(|(n, _)| *n == meta.first).map(|(_, c)| c.len());
            let len = match len {
                Some(len) => len,
                None => self.read_chunk(channel, meta.first).map_err(StoreError::Other)?.len(),
            };
            if meta.count - len < self.cap {
                break;
            }
            meta.count -= len;
            removed.push(meta.first);
            meta.first += 1;
        }
        written.retain(|(n, _)| *n >= meta.first);
        for (n, chunk) in &written {
            self.kv.set(&self.chunk_key(channel, *n), &chunk_text(chunk))?;
        }
        self.kv.set(&self.meta_key(channel), &meta.to_text())?;
        for n in removed {
            self.kv.remove(&self.chunk_key(channel, n));
        }
        state.meta = meta;
        state.tail = tail;
        Ok(())
    }

    /// Drops the oldest half of a channel's stored chunks (quota relief).
    fn evict_half(&mut self, channel: &str, state: &mut Channel) {
        let chunks = state.meta.last - state.meta.first;
        for _ in 0..chunks.div_ceil(2) {
            if let Ok(chunk) = self.read_chunk(channel, state.meta.first) {
                state.meta.count -= chunk.len().min(state.meta.count);
            }
            self.kv.remove(&self.chunk_key(channel, state.meta.first));
            state.meta.first += 1;
        }
        // Keep the stored meta consistent with the removed chunks even if the retry fails.
        let _ = self.kv.set(&self.meta_key(channel), &state.meta.to_text());
    }

    /// Everything stored for `channel` (oldest first, at most the cap, contiguous), including
    /// entries not written yet, its last offset, and the [`Gap`] a previous session left.
    pub fn load(&mut self, channel: &str) -> Loaded {
        let mut problems = Vec::new();
        self.open(channel, &mut problems);
        let state = self.channels.get(channel).expect("opened above");
        let meta = state.meta.clone();
        let mut entries = Vec::with_capacity(meta.count + state.pending.len());
        // With entries given up, the waiting ones start a new log (see `write`): the stored one
        // is not read.
        if meta.count > 0 && state.given_up == 0 {
            for n in meta.first..meta.last {
                match self.read_chunk(channel, n) {
                    Ok(chunk) => entries.extend(chunk),
                    Err(reason) => {
                        problems.push(StoreProblem {
                            code: "storage_corrupt",
                            message: format!(
                                "stored messages of \"{channel}\" were unreadable ({reason}) and were discarded"
                            ),
                        });
                        self.wipe(channel);
                        self.channels.remove(channel);
                        return Loaded { problems, ..Loaded::default() };
                    }
                }
            }
            entries.extend(state.tail.iter().cloned());
        }
        let waiting = !state.pending.is_empty();
        entries.extend(state.pending.iter().cloned());
        let last_offset = entries.last().map(|e| e.offset).or(meta.last_offset);
        let skip = entries.len().saturating_sub(self.cap);
        entries.drain(..skip);
        // In memory nothing is missing; a gap is what an earlier session could not store.
        let gap = (!waiting && meta.unstored > 0).then_some(Gap { after: meta.last_offset, count: meta.unstored });
        Loaded { entries, last_offset, gap, problems }
    }

    /// The newest stored (or pending) offset of `channel`, without reading its chunks.
    pub fn last_offset(&mut self, channel: &str) -> (Option<StreamId>, Vec<StoreProblem>) {
        let mut problems = Vec::new();
        self.open(channel, &mut problems);
        let state = self.channels.get(channel).expect("opened above");
        (state.pending.last().map(|e| e.offset).or(state.meta.last_offset), problems)
    }
}

/// An in-memory [`KeyValue`] that counts bytes written and can simulate a quota.
#[derive(Debug, Default, Clone)]
pub struct MemoryKeyValue {
    /// The stored data.
    pub data: std::collections::BTreeMap<String, String>,
    /// Total bytes (keys and values) written so far.
    pub bytes_written: usize,
    /// When set, writes that would grow the total size past this many bytes fail with `Quota`.
    pub quota: Option<usize>,
    /// When set, every write from the one with this index on (counting from 0) fails, as if
    /// the tab had been killed there.
    pub fail_from_write: Option<usize>,
    /// Writes attempted so far.
    pub writes: usize,
}

impl MemoryKeyValue {
    fn size(&self) -> usize {
        self.data.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl KeyValue for MemoryKeyValue {
    fn get(&self, key: &str) -> Option<String> {
        self.data.get(key).cloned()
    }
    fn set(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.writes += 1;
        if self.fail_from_write.is_some_and(|n| self.writes > n) {
            return Err(StoreError::Other("the tab is gone".into()));
        }
        if let Some(quota) = self.quota {
            let old = self.data.get(key).map_or(0, |v| key.len() + v.len());
            if self.size() - old + key.len() + value.len() > quota {
                return Err(StoreError::Quota);
            }
        }
        self.bytes_written += key.len() + value.len();
        self.data.insert(key.to_owned(), value.to_owned());
        Ok(())
    }
    fn remove(&mut self, key: &str) {
        self.data.remove(key);
    }
    fn keys(&self) -> Vec<String> {
        self.data.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry { offset: StreamId::new(1000 + n, 0), fields: vec!["n".into(), n.to_string()] }
    }

    fn offsets(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.offset.ms - 1000).collect()
    }

    #[test]
    fn stores_loads_and_survives_a_new_instance() {
        let mut store = Store::new(MemoryKeyValue::default(), "rd:v1:", 100);
        store.append("chat", &(0..70).map(entry).collect::<Vec<_>>());
        assert!(store.is_dirty());
        assert!(store.flush().is_empty());
        let Loaded { entries: loaded, last_offset: last, problems, .. } = store.load("chat");
        assert_eq!(offsets(&loaded), (0..70).collect::<Vec<_>>());
        assert_eq!(last, Some(entry(69).offset));
        assert!(problems.is_empty());

        let mut again = Store::new(store.backend().clone(), "rd:v1:", 100);
        assert_eq!(again.last_offset("chat").0, Some(entry(69).offset));
        again.append("chat", &[entry(69), entry(70)]);
        again.flush();
        let loaded = again.load("chat").entries;
        assert_eq!(offsets(&loaded), (0..71).collect::<Vec<_>>(), "no duplicate of 69");
    }

    #[test]
    fn cap_is_exact_and_drops_the_oldest() {
        for cap in [1, 5, 32, 33, 100] {
            let mut store = Store::new(MemoryKeyValue::default(), "p:", cap);
            for n in 0..250 {
                store.append("c", &[entry(n)]);
                if n % 7 == 0 {
                    store.flush();
                }
            }
            store.flush();
            let Loaded { entries: loaded, last_offset: last, .. } = store.load("c");
            assert_eq!(offsets(&loaded), (250 - cap as u64..250).collect::<Vec<_>>(), "cap {cap}");
            assert_eq!(last, Some(entry(249).offset));
            let reopened = Store::new(store.backend().clone(), "p:", cap).load("c").entries;
            assert_eq!(offsets(&reopened), offsets(&loaded), "cap {cap} after reopening");
            let chunks = store.backend().data.keys().filter(|k| k.contains('~')).count();
            assert!(chunks <= cap.div_ceil(Store::<MemoryKeyValue>::CHUNK) + 1, "cap {cap}: {chunks} chunks left");
            let stored: usize = store
                .backend()
                .data
                .iter()
                .filter(|(k, _)| k.contains('~'))
                .map(|(_, v)| parse_chunk(v).unwrap().len())
                .sum();
            assert!(stored < cap + Store::<MemoryKeyValue>::CHUNK, "cap {cap}: {stored} stored");
        }
    }

    #[test]
    fn persisting_n_messages_writes_linear_bytes() {
        let written = |n: u64, per_flush: u64| {
            let mut store = Store::new(MemoryKeyValue::default(), "p:", 1000);
            for i in 0..n {
                store.append("c", &[entry(i)]);
                if (i + 1) % per_flush == 0 {
                    store.flush();
                }
            }
            store.flush();
            store.backend().bytes_written
        };
        let raw = chunk_text(&[entry(1234)]).len();
        // Worst case, one message per flush: bounded by the chunk size, not by the cap.
        let one_by_one = written(4000, 1);
        assert!(one_by_one < 4000 * raw * 24, "{one_by_one} bytes for 4000 messages");
        assert!(written(8000, 1) < one_by_one * 21 / 10, "linear in N");
        // Batched flushes write each message about once.
        let batched = written(4000, 100);
        assert!(batched < 4000 * raw * 2, "{batched} bytes for 4000 messages");
    }

    #[test]
    fn corrupted_values_are_reported_and_discarded() {
        let mut kv = MemoryKeyValue::default();
        kv.data.insert("p:c".into(), "{not json".into());
        kv.data.insert("p:c~0".into(), "[]".into());
        kv.data.insert("p:other".into(), "kept".into());
        let mut store = Store::new(kv, "p:", 10);
        let Loaded { entries: loaded, last_offset: last, problems, .. } = store.load("c");
        assert!(loaded.is_empty() && last.is_none());
        assert_eq!(problems[0].code, "storage_corrupt");
        assert!(!store.backend().data.contains_key("p:c~0"));
        assert!(store.backend().data.contains_key("p:other"));
        store.append("c", &[entry(1)]);
        assert!(store.flush().is_empty());
        assert_eq!(offsets(&store.load("c").entries), vec![1]);

        // A chunk broken behind a valid meta record.
        let mut kv = store.backend().clone();
        kv.data.insert("p:c~0".into(), "[{\"offset\":\"bad\"}]".into());
        let mut store = Store::new(kv, "p:", 10);
        let problems = store.load("c").problems;
        assert_eq!(problems[0].code, "storage_corrupt");
    }

    #[test]
    fn quota_exhaustion_is_reported_and_the_store_keeps_working() {
        let kv = MemoryKeyValue { quota: Some(6_000), ..Default::default() };
        let mut store = Store::new(kv, "p:", 1000);
        let mut problems = Vec::new();
        for n in 0..400 {
            store.append("c", &[entry(n)]);
            problems.extend(store.flush());
        }
        assert!(problems.iter().all(|p| p.code == "storage_quota"), "{problems:?}");
        assert!(!problems.is_empty());
        let Loaded { entries: loaded, last_offset: last, .. } = store.load("c");
        assert_eq!(last, Some(entry(399).offset), "the newest messages are kept");
        assert!(!loaded.is_empty());
        assert!(loaded.windows(2).all(|w| w[0].offset < w[1].offset));
    }

    fn append_and_flush(store: &mut Store<MemoryKeyValue>, range: std::ops::Range<u64>) -> Vec<StoreProblem> {
        store.append("c", &range.map(entry).collect::<Vec<_>>());
        store.flush()
    }

    #[test]
    fn entries_that_could_not_be_stored_are_written_in_order_once_there_is_room_never_after_a_hole() {
        let mut store = Store::new(MemoryKeyValue::default(), "p:", 1000);
        assert!(append_and_flush(&mut store, 0..5).is_empty());
        // Storage fills up: the next 10 cannot be written (room for the meta record's gap note
        // only; with none at all, the reloaded page below still resumes right, without the note).
        let used = store.backend().data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        store.kv.quota = Some(used + 20);
        for n in 5..15 {
            let problems = append_and_flush(&mut store, n..n + 1);
            assert_eq!(problems[0].code, "storage_quota", "{problems:?}");
        }
        // A page reloaded now sees the stored log end at #4, and the gap after it.
        let reloaded = Store::new(store.backend().clone(), "p:", 1000).load("c");
        assert_eq!(offsets(&reloaded.entries), (0..5).collect::<Vec<_>>());
        assert_eq!(reloaded.last_offset, Some(entry(4).offset), "it resumes after #4: the server replays the rest");
        assert_eq!(reloaded.gap, Some(Gap { after: Some(entry(4).offset), count: 10 }));
        // This page still has them all, in memory.
        assert_eq!(offsets(&store.load("c").entries), (0..15).collect::<Vec<_>>());
        // Room again: #15 arrives and everything waiting is written first, in order.
        store.kv.quota = None;
        assert!(append_and_flush(&mut store, 15..16).is_empty());
        let reloaded = Store::new(store.backend().clone(), "p:", 1000).load("c");
        assert_eq!(offsets(&reloaded.entries), (0..16).collect::<Vec<_>>(), "no hole");
        assert_eq!(reloaded.gap, None);
    }

    #[test]
    fn a_tab_killed_between_the_chunk_and_meta_writes_loads_what_it_resumes_from() {
        let mut store = Store::new(MemoryKeyValue::default(), "p:", 1000);
        assert!(append_and_flush(&mut store, 0..120).is_empty());
        // The next flush writes the tail chunk, then dies before the meta record.
        let writes = store.backend().writes;
        store.kv.fail_from_write = Some(writes + 1);
        assert!(!append_and_flush(&mut store, 120..128).is_empty());
        let tail = store.backend().data.get("p:c~3").cloned().unwrap_or_default();
        assert!(tail.contains(&entry(127).offset.to_string()), "the chunk holds #127: {tail}");
        let reloaded = Store::new(store.backend().clone(), "p:", 1000).load("c");
        assert_eq!(reloaded.entries.last().map(|e| e.offset), Some(entry(119).offset), "not past the meta record");
        assert_eq!(reloaded.last_offset, Some(entry(119).offset), "load and resume agree: no message twice");
        // Writing goes on from there: the uncommitted entries are not kept twice.
        let mut reloaded = Store::new(store.backend().clone(), "p:", 1000);
        reloaded.kv.fail_from_write = None;
        reloaded.append("c", &(120..130).map(entry).collect::<Vec<_>>());
        assert!(reloaded.flush().is_empty());
        assert_eq!(
            offsets(&Store::new(reloaded.backend().clone(), "p:", 1000).load("c").entries),
            (0..130).collect::<Vec<_>>()
        );
    }

    #[test]
    fn when_more_than_the_cap_waits_the_log_starts_over_with_the_newest() {
        let mut store = Store::new(MemoryKeyValue::default(), "p:", 50);
        assert!(append_and_flush(&mut store, 0..40).is_empty());
        // Storage fails for a long while.
        store.kv.fail_from_write = Some(0);
        for n in 40..120 {
            assert_eq!(append_and_flush(&mut store, n..n + 1)[0].code, "storage_failed");
        }
        let in_memory = store.load("c");
        assert_eq!(offsets(&in_memory.entries), (70..120).collect::<Vec<_>>(), "the newest 50, contiguous");
        store.kv.fail_from_write = None;
        assert!(append_and_flush(&mut store, 120..121).is_empty());
        let reloaded = Store::new(store.backend().clone(), "p:", 50).load("c");
        let loaded = offsets(&reloaded.entries);
        assert_eq!(loaded.last(), Some(&120));
        assert!(loaded.windows(2).all(|w| w[1] == w[0] + 1), "contiguous: {loaded:?}");
        assert!(loaded.len() >= 50 && loaded[0] >= 70, "older history is gone, not a middle: {loaded:?}");
        assert_eq!(reloaded.gap, None);
        assert!(!store.backend().data.contains_key("p:c~0"), "the old log's chunks are removed");
    }
}
