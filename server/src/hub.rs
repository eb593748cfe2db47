//! The in-process registry of local subscribers and the fan-out of stream entries to them.
//!
//! Channels are split into partitions, one per stream reader (see [`crate::reader`]). A partition
//! records, per channel, the reader's cursor (the last ID it fanned out) and the local subscribers.
//! A batch of entries is encoded to JSON once and the same bytes are queued to every subscriber;
//! a subscriber only gets its own encoding when a hook rewrites or drops entries for it, or when it
//! overlaps the batch at the handover from replay to live.
//!
//! A new subscriber starts *joining*: live batches are parked in its buffer (as shared references)
//! while its replay reads history, then [`Partition::take_buffer`] hands them over and it turns
//! live. Every subscriber remembers the last ID it was sent and skips anything at or below it, so
//! the handover has neither gap nor duplicate.

use crate::hooks::{ConnInfo, DynHooks, StreamEvent};
use crate::outbox::Outbox;
use redistribute_protocol::frame::Truncation;
use redistribute_protocol::{Entry, Push, StreamId, close};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Entries read together for one channel, with their encoding shared by all subscribers (made
/// when the first needs it: a channel followed only for group members is never encoded).
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) entries: Vec<Entry>,
    frame: OnceLock<Utf8Bytes>,
}

impl Batch {
    pub(crate) fn new(entries: Vec<Entry>) -> Batch {
        Batch { entries, frame: OnceLock::new() }
    }

    /// The push of all the entries, encoded once.
    pub(crate) fn frame(&self, channel: &str) -> &Utf8Bytes {
        self.frame.get_or_init(|| Push::messages(channel, &self.entries).to_json().into())
    }

    fn last(&self) -> StreamId {
        self.entries.last().map_or(StreamId::ZERO, |e| e.offset)
    }
}

/// Encodes what `conn` should receive of `entries` (sorted), given it was last sent `after`:
/// entries at or below `after` are skipped and hooks applied. `shared` is the encoding of the
/// whole slice, reused when nothing changes. `None` when nothing is left to send.
pub(crate) fn render(
    hooks: &dyn DynHooks,
    conn: &ConnInfo,
    channel: &str,
    entries: &[Entry],
    after: StreamId,
    truncated: bool,
    shared: Option<&Utf8Bytes>,
) -> Option<Utf8Bytes> {
    let fresh = &entries[entries.partition_point(|e| e.offset <= after)..];
    let mut out: Option<Vec<Entry>> = None; // built only once an entry differs
    for (i, entry) in fresh.iter().enumerate() {
        match hooks.on_stream_event(conn, channel, entry) {
            StreamEvent::Pass => {
                if let Some(out) = &mut out {
                    out.push(entry.clone());
                }
            }
            StreamEvent::Drop => {
                out.get_or_insert_with(|| fresh[..i].to_vec());
            }
            StreamEvent::Rewrite(fields) => {
                out.get_or_insert_with(|| fresh[..i].to_vec()).push(Entry { offset: entry.offset, fields });
            }
        }
    }
    match out {
        Some(changed) => encode(channel, Cow::Owned(changed), truncated),
        None => match shared {
            // Untouched and complete: the shared encoding is exactly this push.
            Some(frame) if !truncated && !fresh.is_empty() && fresh.len() == entries.len() => Some(frame.clone()),
            _ => encode(channel, Cow::Borrowed(fresh), truncated),
        },
    }
}

fn encode(channel: &str, messages: Cow<'_, [Entry]>, truncated: bool) -> Option<Utf8Bytes> {
    if messages.is_empty() && !truncated {
        return None;
    }
    let reason = truncated.then_some(Truncation::Trimmed);
    let push = Push { channel: Cow::Borrowed(channel), messages, truncated, reason, broadcast: None };
    Some(push.to_json().into())
}

/// A consumer group member's interest in a channel's new entries; dropping it ends the watch.
#[derive(Debug)]
pub(crate) struct Watch {
    partition: Arc<Partition>,
    channel: String,
    id: u64,
    signal: Arc<Notify>,
}

impl Watch {
    /// What the reader signals: holds a permit when entries came while nobody waited.
    pub(crate) fn signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.partition.depart(&self.channel, |entry| {
            entry.watchers.remove(&self.id);
        });
    }
}

#[derive(Debug)]
enum SubState {
    /// Replaying history; live batches wait here.
    Joining { buffer: Vec<Arc<Batch>>, buffered: usize },
    /// Receiving live batches; everything up to `last_sent` was delivered.
    Live { last_sent: StreamId },
    /// Kicked for lagging; ignored until the connection removes it.
    Dead,
}

#[derive(Debug)]
struct Subscriber {
    outbox: Outbox,
    conn: Arc<ConnInfo>,
    state: SubState,
}

#[derive(Debug)]
struct Channel {
    /// Last ID the reader fanned out for this channel; the next read starts after it.
    cursor: StreamId,
    subscribers: HashMap<u64, Subscriber>,
    /// Consumer group members waiting for new entries, by watch id: each is signalled (with a
    /// permit that waits for it) when the reader sees entries.
    watchers: HashMap<u64, Arc<Notify>>,
}

impl Channel {
    fn new(cursor: StreamId) -> Channel {
        Channel { cursor, subscribers: HashMap::new(), watchers: HashMap::new() }
    }

    fn unused(&self) -> bool {
        self.subscribers.is_empty() && self.watchers.is_empty()
    }
}

/// How a partition and its reader and waker tasks signal each other, so that a channel added
/// while the reader blocks is followed at once.
///
/// Joins bump `generation`; the reader records in `seen` the generation of the channel set it
/// reads with. The waker ends the reader's blocked read (by its wake id) until `seen` catches up,
/// since a wake can race the reader between two reads.
#[derive(Debug, Default)]
struct ReaderSignal {
    generation: AtomicU64,
    seen: AtomicU64,
    /// The reader's wake id (its Redis `CLIENT ID`); 0 while it has no connection.
    reader_id: AtomicI64,
    /// Wakes the reader when it idles with no channels.
    idle: Notify,
    /// Wakes the waker task.
    wake: Notify,
}

/// The channels one stream reader follows, and the signals that let joins wake it.
pub(crate) struct Partition {
    /// Index of the Redis target these channels live on.
    pub(crate) target: usize,
    /// Its index among the target's partitions (on a cluster, the `{p<n>}` of its keys).
    pub(crate) within: usize,
    channels: Mutex<HashMap<String, Channel>>,
    hooks: Arc<dyn DynHooks>,
    join_buffer_limit: usize,
    signal: ReaderSignal,
    next_watch: AtomicU64,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Partition {
    pub(crate) fn new(target: usize, within: usize, hooks: Arc<dyn DynHooks>, join_buffer_limit: usize) -> Self {
        Partition {
            target,
            within,
            channels: Mutex::default(),
            hooks,
            join_buffer_limit,
            signal: ReaderSignal::default(),
            next_watch: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        // A panic while holding the lock leaves consistent data (every update is one step).
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bumped on every channel added.
    fn generation(&self) -> u64 {
        self.signal.generation.load(Ordering::Acquire)
    }

    /// The reader is connected; `wake_id` ends its blocked reads ([`crate::engine::Engine::wake`]).
    /// Changes made while it was disconnected went unannounced, so the waker runs once.
    pub(crate) fn reader_connected(&self, wake_id: i64) {
        self.signal.reader_id.store(wake_id, Ordering::Release);
        self.signal.wake.notify_one();
    }

    /// The reader lost its connection: there is nothing to wake until it reconnects.
    pub(crate) fn reader_disconnected(&self) {
        self.signal.reader_id.store(0, Ordering::Release);
    }

    /// Waits until a channel is added after the snapshot of generation `seen`.
    pub(crate) async fn channels_added_since(&self, seen: u64) {
        loop {
            let idle = self.signal.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.generation() > seen {
                return;
            }
            idle.await;
        }
    }

    /// Waits until the waker has work: a channel was added (or the reader reconnected).
    pub(crate) async fn wake_requested(&self) {
        self.signal.wake.notified().await;
    }

    /// The wake id of a reader that has not yet read with the newest channel set, if one is
    /// connected: the waker ends its blocked read.
    pub(crate) fn reader_to_wake(&self) -> Option<i64> {
        if self.signal.seen.load(Ordering::Acquire) >= self.generation() {
            return None;
        }
        let id = self.signal.reader_id.load(Ordering::Acquire);
        (id != 0).then_some(id)
    }

    /// Adds a joining subscriber. A channel new to this partition starts its cursor at
    /// `stream_last` (the stream's last generated ID, read before this call), and the reader is
    /// woken to follow it. Returns false if the connection already subscribes to the channel.
    pub(crate) fn join(&self, channel: &str, conn: &Arc<ConnInfo>, outbox: &Outbox, stream_last: StreamId) -> bool {
        let mut channels = self.lock();
        let added = !channels.contains_key(channel);
        let entry = channels.entry(channel.to_owned()).or_insert_with(|| Channel::new(stream_last));
        if entry.subscribers.contains_key(&conn.id) {
            return false;
        }
        let state = SubState::Joining { buffer: Vec::new(), buffered: 0 };
        entry.subscribers.insert(conn.id, Subscriber { outbox: outbox.clone(), conn: conn.clone(), state });
        drop(channels);
        if added {
            self.channel_added();
        }
        true
    }

    /// Wakes the reader to follow a channel added to the set.
    fn channel_added(&self) {
        self.signal.generation.fetch_add(1, Ordering::AcqRel);
        self.signal.idle.notify_one();
        self.signal.wake.notify_one();
    }

    /// Signals the returned [`Watch`] whenever the reader sees entries of `channel` (a channel
    /// new to the partition starts at `stream_last`, as in [`Partition::join`]). Consumer group
    /// members wait on it instead of holding a blocking Redis connection each.
    pub(crate) fn watch(self: &Arc<Self>, channel: &str, stream_last: StreamId) -> Watch {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Notify::new());
        let mut channels = self.lock();
        let added = !channels.contains_key(channel);
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel::new(stream_last))
            .watchers
            .insert(id, signal.clone());
        drop(channels);
        if added {
            self.channel_added();
        }
        Watch { partition: self.clone(), channel: channel.to_owned(), id, signal }
    }

    /// Ends a subscriber's replay. If live batches were parked meanwhile, returns them (to be sent
    /// by the caller, who then calls again); otherwise the subscriber turns live with `last_sent`
    /// and `None` is returned. `None` also when the subscriber is gone.
    pub(crate) fn take_buffer(&self, channel: &str, conn_id: u64, last_sent: StreamId) -> Option<Vec<Arc<Batch>>> {
        let mut channels = self.lock();
        let subscriber = channels.get_mut(channel)?.subscribers.get_mut(&conn_id)?;
        match &mut subscriber.state {
            SubState::Joining { buffer, buffered } if !buffer.is_empty() => {
                *buffered = 0;
                Some(std::mem::take(buffer))
            }
            SubState::Joining { .. } => {
                subscriber.state = SubState::Live { last_sent };
                None
            }
            SubState::Live { .. } | SubState::Dead => None,
        }
    }

    /// Removes a subscriber; forgets the channel when nobody is left on it.
    pub(crate) fn leave(&self, channel: &str, conn_id: u64) {
        self.depart(channel, |entry| {
            entry.subscribers.remove(&conn_id);
        });
    }

    /// Removes someone from `channel` (`remove` does it); forgets the channel once neither
    /// subscribers nor watchers are left.
    fn depart(&self, channel: &str, remove: impl FnOnce(&mut Channel)) {
        let mut channels = self.lock();
        if let Some(entry) = channels.get_mut(channel) {
            remove(entry);
            if entry.unused() {
                channels.remove(channel);
            }
        }
    }

    /// The channels to follow and where to continue each, and the generation of that set
    /// (recorded as acted on).
    pub(crate) fn snapshot(&self) -> (Vec<(String, StreamId)>, u64) {
        let channels = self.lock();
        let generation = self.generation();
        self.signal.seen.store(generation, Ordering::Release);
        (channels.iter().map(|(name, c)| (name.clone(), c.cursor)).collect(), generation)
    }

    /// Fans out entries the reader read for `channel` after `from`. Ignored if the channel's
    /// cursor moved meanwhile (it was dropped and re-added), since then they are stale.
    ///
    /// Who gets what is decided under the lock; the hooks run and the frames are queued after
    /// it is released, so a slow [`crate::Hooks::on_stream_event`] never stalls joins, leaves or
    /// the reader's bookkeeping. Only the partition's reader calls this, so batches of one
    /// channel still reach each subscriber in order.
    /// Returns how many entries were queued, counting one per subscriber.
    pub(crate) fn deliver(&self, channel: &str, from: StreamId, entries: Vec<Entry>) -> usize {
        if entries.is_empty() {
            return 0;
        }
        let batch = Arc::new(Batch::new(entries));
        let mut live = Vec::new();
        {
            let mut channels = self.lock();
            let Some(entry) = channels.get_mut(channel) else { return 0 };
            if entry.cursor != from {
                return 0;
            }
            entry.cursor = batch.last();
            for watcher in entry.watchers.values() {
                watcher.notify_one();
            }
            for subscriber in entry.subscribers.values_mut() {
                if subscriber.outbox.is_kicked() {
                    subscriber.state = SubState::Dead;
                }
                match &mut subscriber.state {
                    SubState::Joining { buffer, buffered } => {
                        *buffered += batch.entries.len();
                        buffer.push(batch.clone());
                        if *buffered > self.join_buffer_limit {
                            subscriber
                                .outbox
                                .kick(close::LAGGING, "too far behind while replaying: resume from your last offset");
                            subscriber.state = SubState::Dead;
                        }
                    }
                    SubState::Live { last_sent } => {
                        live.push((subscriber.outbox.clone(), subscriber.conn.clone(), *last_sent));
                        *last_sent = (*last_sent).max(batch.last());
                    }
                    SubState::Dead => {}
                }
            }
        }
        let mut queued = 0;
        for (outbox, conn, after) in live {
            // A full queue kicks the subscriber; it is marked dead on the next delivery.
            if let Some(frame) =
                render(&*self.hooks, &conn, channel, &batch.entries, after, false, Some(batch.frame(channel)))
                && outbox.push(frame)
            {
                queued += batch.entries.len() - batch.entries.partition_point(|e| e.offset <= after);
            }
        }
        queued
    }

    /// The stream of `channel` lost entries the reader had already fanned out (its cursor `from`
    /// is ahead of the stream's last ID `to`: a failover that lost writes, a storage restarted
    /// without persistence). The reader continues after `to`; live subscribers are told
    /// (`truncated`, `reason: "ahead"`) and take what follows even below what they were given;
    /// subscribers still joining are closed with 4000 to resubscribe (their resume is then
    /// reported the same way). Ignored if the cursor moved meanwhile. Returns how many were told.
    pub(crate) fn rewind(&self, channel: &str, from: StreamId, to: StreamId) -> usize {
        let mut told = Vec::new();
        {
            let mut channels = self.lock();
            let Some(entry) = channels.get_mut(channel) else { return 0 };
            if entry.cursor != from {
                return 0;
            }
            entry.cursor = to;
            for subscriber in entry.subscribers.values_mut() {
                match &mut subscriber.state {
                    SubState::Live { last_sent } => {
                        *last_sent = to;
                        told.push(subscriber.outbox.clone());
                    }
                    SubState::Joining { .. } => {
                        subscriber.outbox.kick(close::LAGGING, "the stream lost entries while you joined: resubscribe");
                        subscriber.state = SubState::Dead;
                    }
                    SubState::Dead => {}
                }
            }
        }
        let push = Push {
            channel: Cow::Borrowed(channel),
            messages: Cow::Borrowed(&[]),
            truncated: true,
            reason: Some(Truncation::Ahead),
            broadcast: None,
        };
        let frame: Utf8Bytes = push.to_json().into();
        told.into_iter().filter(|outbox| outbox.push(frame.clone())).count()
    }

    /// Forgets a channel that can no longer be followed, closing its subscribers' connections
    /// with 1011 and `reason` (they may resubscribe once the channel is fixed).
    pub(crate) fn evict(&self, channel: &str, reason: &str) {
        let removed = self.lock().remove(channel);
        for subscriber in removed.into_iter().flat_map(|c| c.subscribers.into_values()) {
            subscriber.outbox.kick(close::INTERNAL_ERROR, reason);
        }
    }

    /// Queues a transient message to the channel's live local subscribers; returns how many.
    pub(crate) fn broadcast(&self, channel: &str, frame: &Utf8Bytes) -> usize {
        let channels = self.lock();
        let Some(entry) = channels.get(channel) else { return 0 };
        entry
            .subscribers
            .values()
            .filter(|s| matches!(s.state, SubState::Live { .. }))
            .filter(|s| s.outbox.push(frame.clone()))
            .count()
    }

    /// Number of channels followed (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn channel_count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{AllowAll, Hooks};
    use crate::outbox::Queue;
    use tokio_tungstenite::tungstenite::Message;

    fn entry(ms: u64, value: &str) -> Entry {
        Entry { offset: StreamId::new(ms, 0), fields: vec!["k".into(), value.into()] }
    }

    fn conn(id: u64) -> Arc<ConnInfo> {
        Arc::new(ConnInfo::new(id, "127.0.0.1:1".parse().unwrap(), "/".into(), vec![]))
    }

    fn offsets(rx: &mut Queue) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(Message::Text(text)) = rx.try_recv() {
            let push: Push<'_> = serde_json::from_str(&text).unwrap();
            out.extend(push.messages.iter().map(|e| e.offset.ms));
        }
        out
    }

    #[test]
    fn shares_one_encoding_among_live_subscribers() {
        let part = Partition::new(0, 0, Arc::new(AllowAll), 100);
        let (a, mut rx_a) = Outbox::new(1 << 20, crate::outbox::tests::total());
        let (b, mut rx_b) = Outbox::new(1 << 20, crate::outbox::tests::total());
        assert!(part.join("c", &conn(1), &a, StreamId::ZERO));
        assert!(part.join("c", &conn(2), &b, StreamId::ZERO));
        assert!(!part.join("c", &conn(2), &b, StreamId::ZERO), "second subscribe of one connection");
        assert!(part.take_buffer("c", 1, StreamId::ZERO).is_none());
        assert!(part.take_buffer("c", 2, StreamId::ZERO).is_none());
        part.deliver("c", StreamId::ZERO, vec![entry(1, "x"), entry(2, "y")]);
        let (Some(Message::Text(fa)), Some(Message::Text(fb))) = (rx_a.try_recv(), rx_b.try_recv()) else { panic!() };
        assert_eq!(fa.as_str(), fb.as_str());
        assert_eq!(fa.as_str().as_ptr(), fb.as_str().as_ptr(), "same bytes, not a copy");
    }

    #[test]
    fn joining_parks_batches_then_hands_over_without_duplicates() {
        let part = Partition::new(0, 0, Arc::new(AllowAll), 100);
        let (a, mut rx) = Outbox::new(1 << 20, crate::outbox::tests::total());
        part.join("c", &conn(1), &a, StreamId::ZERO);
        part.deliver("c", StreamId::ZERO, vec![entry(1, "a"), entry(2, "b")]);
        part.deliver("c", StreamId::new(2, 0), vec![entry(3, "c")]);
        assert!(rx.try_recv().is_none(), "nothing sent while joining");
        // The replay already sent up to 2-0 from history.
        let parked = part.take_buffer("c", 1, StreamId::new(2, 0)).unwrap();
        assert_eq!(parked.len(), 2);
        let mut last = StreamId::new(2, 0);
        for batch in &parked {
            if let Some(frame) = render(&AllowAll, &conn(1), "c", &batch.entries, last, false, Some(batch.frame("c"))) {
                a.push(frame);
            }
            last = last.max(batch.last());
        }
        assert!(part.take_buffer("c", 1, last).is_none());
        part.deliver("c", StreamId::new(3, 0), vec![entry(4, "d")]);
        assert_eq!(offsets(&mut rx), vec![3, 4]);
    }

    #[test]
    fn stale_reads_are_ignored_and_live_skips_what_was_sent() {
        let part = Partition::new(0, 0, Arc::new(AllowAll), 100);
        let (a, mut rx) = Outbox::new(1 << 20, crate::outbox::tests::total());
        part.join("c", &conn(1), &a, StreamId::new(5, 0));
        part.take_buffer("c", 1, StreamId::new(6, 0));
        part.deliver("c", StreamId::new(1, 0), vec![entry(9, "stale")]);
        part.deliver("c", StreamId::new(5, 0), vec![entry(6, "dup"), entry(7, "new")]);
        assert_eq!(offsets(&mut rx), vec![7]);
    }

    #[test]
    fn overflowing_join_buffer_kicks() {
        let part = Partition::new(0, 0, Arc::new(AllowAll), 2);
        let (a, rx) = Outbox::new(1 << 20, crate::outbox::tests::total());
        part.join("c", &conn(1), &a, StreamId::ZERO);
        part.deliver("c", StreamId::ZERO, vec![entry(1, "a"), entry(2, "b"), entry(3, "c")]);
        assert_eq!(rx.state().kick().reason().unwrap().0, close::LAGGING);
    }

    #[test]
    fn leaving_forgets_empty_channels() {
        let part = Partition::new(0, 0, Arc::new(AllowAll), 2);
        let (a, _rx) = Outbox::new(1 << 20, crate::outbox::tests::total());
        let g = part.generation();
        part.join("c", &conn(1), &a, StreamId::ZERO);
        assert_eq!(part.generation(), g + 1);
        part.reader_connected(7);
        assert_eq!(part.reader_to_wake(), Some(7), "the reader has not read with the new channel yet");
        let (_, seen) = part.snapshot();
        assert_eq!(part.reader_to_wake(), None);
        assert_eq!(seen, g + 1);
        assert_eq!(part.channel_count(), 1);
        part.leave("c", 1);
        assert_eq!(part.channel_count(), 0);
    }

    struct Redact;
    impl Hooks for Redact {
        fn on_stream_event(&self, _: &ConnInfo, _: &str, entry: &Entry) -> StreamEvent {
            match entry.fields[1].as_str() {
                "secret" => StreamEvent::Drop,
                "shout" => StreamEvent::Rewrite(vec!["k".into(), "SHOUT".into()]),
                _ => StreamEvent::Pass,
            }
        }
    }

    #[test]
    fn hooks_drop_and_rewrite_per_subscriber() {
        let entries = vec![entry(1, "a"), entry(2, "secret"), entry(3, "shout")];
        let frame = render(&Redact, &conn(1), "c", &entries, StreamId::ZERO, false, None).unwrap();
        let push: Push<'_> = serde_json::from_str(&frame).unwrap();
        let values: Vec<&str> = push.messages.iter().map(|e| e.fields[1].as_str()).collect();
        assert_eq!(values, ["a", "SHOUT"]);
        assert!(render(&Redact, &conn(1), "c", &entries[1..2], StreamId::ZERO, false, None).is_none());
        let gap = render(&Redact, &conn(1), "c", &entries[1..2], StreamId::ZERO, true, None).unwrap();
        assert_eq!(gap.as_str(), r#"{"channel":"c","truncated":true,"reason":"trimmed"}"#);
    }
}
