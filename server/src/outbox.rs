//! A connection's send queue, bounded in bytes, shared by its request handler, its replays and
//! the fan-out.
//!
//! Fan-out never waits: when a subscriber's queue is full it is *kicked* (closed with
//! [`close::LAGGING`]) instead of slowing everyone else down. It loses nothing: it reconnects and
//! resumes after the last offset it received. Replies and replays wait for room instead, so they
//! go at the client's pace; a client that reads nothing at all is released by the writer's
//! timeout (see `connection`).
//!
//! A frame shared by many queues (one fan-out batch) is counted in full by each of them: the
//! bound is what one connection may pin, whatever others hold.

use redistribute_protocol::close;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// What a queued frame costs beyond its text: its queue slot and the shared buffer's header,
/// rounded up.
const FRAME_OVERHEAD: usize = 96;

/// Slots a drained queue keeps; a larger buffer (left by a burst) is freed once the queue is
/// empty, so that an idle connection holds none.
const KEEP_SLOTS: usize = 64;

/// The sending half of a connection's queue. Cheap to clone; the queue closes once every clone
/// is gone.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Arc<QueueState>,
}

/// The receiving half, for the connection's writer.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Arc<QueueState>,
}

/// The part of the queue both halves see: the frames, their byte count and the kick signal.
///
/// A plain deque behind a lock, not a channel: a channel allocates a block of slots up front,
/// which every idle connection would pay for.
#[derive(Debug)]
pub(crate) struct QueueState {
    frames: Mutex<VecDeque<Utf8Bytes>>,
    /// Wakes the writer when a frame is queued or the last sender leaves.
    ready: Notify,
    /// Live [`Outbox`] handles.
    senders: AtomicUsize,
    /// The writer stopped taking frames (see [`Queue::discard`]).
    closed: AtomicBool,
    kick: Kick,
    bytes: AtomicUsize,
    limit: usize,
    /// Wakes senders waiting for room once the writer takes frames out.
    room: Notify,
    /// The server-wide total of queued bytes (a metric).
    total: IntGauge,
}

/// The "close this connection" signal, shared by the queue's senders and the connection's writer.
/// The writer holds only this, not a sender, so the queue closes once every sender is gone.
#[derive(Debug, Default)]
pub(crate) struct Kick {
    token: CancellationToken,
    reason: OnceLock<(u16, String)>,
}

impl Kick {
    /// Asks the connection to close with `code`; the first reason wins.
    pub(crate) fn kick(&self, code: u16, reason: &str) {
        let _ = self.reason.set((code, reason.to_owned()));
        self.token.cancel();
    }

    pub(crate) fn is_kicked(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the connection was kicked.
    pub(crate) async fn kicked(&self) {
        self.token.cancelled().await;
    }

    /// Why the connection was kicked, if it was.
    pub(crate) fn reason(&self) -> Option<(u16, String)> {
        self.reason.get().cloned()
    }
}

/// The connection's queue went away (the connection is closing).
#[derive(Debug)]
pub(crate) struct Closed;

fn cost(text: &Utf8Bytes) -> usize {
    text.len() + FRAME_OVERHEAD
}

impl QueueState {
    /// Reserves `cost` bytes if they fit (or if the queue is empty, so that one frame larger than
    /// the whole budget still goes out alone).
    fn reserve(&self, cost: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued + cost <= self.limit).then_some(queued + cost)
            })
            .inspect(|_| self.total.add(cost as i64))
            .is_ok()
    }

    fn release(&self, cost: usize) {
        self.bytes.fetch_sub(cost, Ordering::AcqRel);
        self.total.sub(cost as i64);
        self.room.notify_waiters();
    }

    fn frames(&self) -> MutexGuard<'_, VecDeque<Utf8Bytes>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a frame whose bytes are reserved; gives them back if the writer is gone.
    fn enqueue(&self, text: Utf8Bytes) -> Result<(), Closed> {
        let cost = cost(&text);
        {
            let mut frames = self.frames();
            // Checked under the lock: `discard` empties the deque under it after setting the flag.
            if !self.closed.load(Ordering::Acquire) {
                frames.push_back(text);
                drop(frames);
                self.ready.notify_one();
                return Ok(());
            }
        }
        self.release(cost);
        Err(Closed)
    }

    fn pop(&self) -> Option<Utf8Bytes> {
        let mut frames = self.frames();
        let text = frames.pop_front()?;
        if frames.is_empty() && frames.capacity() > KEEP_SLOTS {
            *frames = VecDeque::new();
        }
        drop(frames);
        self.release(cost(&text));
        Some(text)
    }

    /// Bytes queued now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    pub(crate) fn kick(&self) -> &Kick {
        &self.kick
    }
}

impl Outbox {
    /// A queue holding at most `limit` bytes, and its receiving half (for the connection's
    /// writer). `total` adds up the bytes of every queue (a metric).
    pub(crate) fn new(limit: usize, total: IntGauge) -> (Outbox, Queue) {
        let state = Arc::new(QueueState {
            frames: Mutex::default(),
            ready: Notify::new(),
            senders: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            kick: Kick::default(),
            bytes: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
            total,
        });
        (Outbox { state: state.clone() }, Queue { state })
    }

    /// Queues a text frame, waiting for room (replies and replays: the client sets the pace).
    pub(crate) async fn send(&self, text: Utf8Bytes) -> Result<(), Closed> {
        let cost = cost(&text);
        loop {
            let room = self.state.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.is_kicked() || self.state.closed.load(Ordering::Acquire) {
                return Err(Closed);
            }
            if self.state.reserve(cost) {
                break;
            }
            tokio::select! {
                () = room => {}
                () = self.state.kick.kicked() => return Err(Closed),
            }
        }
        self.state.enqueue(text)
    }

    /// Queues a text frame without waiting; a full queue kicks the connection. Returns whether
    /// the frame was queued.
    pub(crate) fn push(&self, text: Utf8Bytes) -> bool {
        if self.is_kicked() {
            return false;
        }
        if !self.state.reserve(cost(&text)) {
            let limit = self.state.limit;
            self.kick(close::LAGGING, &format!("send queue over {limit} bytes: resume from your last offset"));
            return false;
        }
        self.state.enqueue(text).is_ok()
    }

    /// Asks the connection to close with `code`; the first reason wins.
    pub(crate) fn kick(&self, code: u16, reason: &str) {
        self.state.kick.kick(code, reason);
    }

    pub(crate) fn is_kicked(&self) -> bool {
        self.state.kick.is_kicked()
    }

    /// Resolves once the connection was kicked.
    pub(crate) async fn kicked(&self) {
        self.state.kick.kicked().await;
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        self.state.senders.fetch_add(1, Ordering::AcqRel);
        Outbox { state: self.state.clone() }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.state.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: the writer sees the queue end once it is drained.
            self.state.ready.notify_one();
        }
    }
}

impl Queue {
    /// The next frame, once one is queued; `None` when every sender is gone and the queue is
    /// drained.
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(message) = self.try_recv() {
                return Some(message);
            }
            if self.state.senders.load(Ordering::Acquire) == 0 {
                // A frame queued just before the last sender left is still taken.
                return self.try_recv();
            }
            // `notify_one` keeps a permit when nobody waits, so a frame queued since the check
            // above wakes this at once.
            self.state.ready.notified().await;
        }
    }

    /// The next frame if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Option<Message> {
        self.state.pop().map(Message::Text)
    }

    /// Stops taking frames and frees what is queued (a closing client's backlog); waiting
    /// senders fail.
    pub(crate) fn discard(&mut self) {
        let dropped = {
            let mut frames = self.state.frames();
            self.state.closed.store(true, Ordering::Release);
            std::mem::take(&mut *frames)
        };
        for text in dropped {
            self.state.release(cost(&text));
        }
        self.state.room.notify_waiters();
    }

    /// The byte count and kick signal, which outlive the senders.
    pub(crate) fn state(&self) -> &Arc<QueueState> {
        &self.state
    }
}

impl Drop for Queue {
    /// Frees what is still queued at once (a kicked client's backlog) and fails waiting senders.
    fn drop(&mut self) {
        self.discard();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn text(len: usize) -> Utf8Bytes {
        "x".repeat(len).into()
    }

    pub(crate) fn total() -> IntGauge {
        IntGauge::new("queued", "bytes").unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_kicks_with_lagging_and_counts_bytes() {
        let total = total();
        let (outbox, mut queue) = Outbox::new(1000, total.clone());
        assert!(outbox.push(text(500)));
        assert_eq!(queue.state().bytes(), 500 + FRAME_OVERHEAD);
        assert_eq!(total.get(), (500 + FRAME_OVERHEAD) as i64, "the server-wide total follows");
        assert!(!outbox.push(text(500)), "500 more bytes do not fit in 1000");
        assert!(outbox.is_kicked());
        assert_eq!(queue.state().kick().reason().unwrap().0, close::LAGGING);
        assert!(outbox.send("c".into()).await.is_err());
        assert_eq!(queue.recv().await.map(|m| m.len()), Some(500));
        assert_eq!(queue.state().bytes(), 0);
        assert_eq!(total.get(), 0);
    }

    #[tokio::test]
    async fn one_frame_larger_than_the_budget_goes_out_alone() {
        let (outbox, mut queue) = Outbox::new(100, total());
        assert!(outbox.push(text(5000)));
        assert!(!outbox.push(text(1)));
        assert_eq!(queue.try_recv().map(|m| m.len()), Some(5000));
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_when_the_writer_is_gone() {
        let (outbox, mut queue) = Outbox::new(1000, total());
        outbox.send(text(800)).await.unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(text(800)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room until the writer takes the first frame");
        assert_eq!(queue.recv().await.map(|m| m.len()), Some(800));
        waiting.await.unwrap().unwrap();
        let blocked = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(text(800)).await }
        });
        tokio::task::yield_now().await;
        drop(queue);
        assert!(blocked.await.unwrap().is_err(), "a dropped writer releases waiting senders");
    }

    #[tokio::test]
    async fn frames_queued_before_the_last_sender_left_still_go_out_then_the_queue_ends() {
        let (outbox, mut queue) = Outbox::new(1 << 20, total());
        let other = outbox.clone();
        assert!(outbox.push(text(1)));
        drop(outbox);
        assert!(other.push(text(2)));
        drop(other);
        assert_eq!(queue.recv().await.map(|m| m.len()), Some(1));
        assert_eq!(queue.recv().await.map(|m| m.len()), Some(2));
        assert!(queue.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_drained_queue_gives_back_the_buffer_a_burst_left() {
        let (outbox, mut queue) = Outbox::new(1 << 20, total());
        assert_eq!(queue.state().frames().capacity(), 0, "an idle connection holds no buffer");
        for _ in 0..1000 {
            assert!(outbox.push(text(1)));
        }
        while queue.try_recv().is_some() {}
        assert!(queue.state().frames().capacity() <= KEEP_SLOTS);
    }

    #[tokio::test]
    async fn the_queue_closes_when_the_senders_are_gone_even_if_the_state_lives() {
        let (outbox, mut queue) = Outbox::new(1000, total());
        let state = queue.state().clone();
        drop(outbox);
        assert!(queue.recv().await.is_none());
        assert!(!state.kick().is_kicked());
    }
}
