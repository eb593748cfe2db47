//! A connection's bounded send queue, shared by its request handler, its replays and the fan-out.
//!
//! Fan-out never waits: when a subscriber's queue is full it is *kicked* (closed with
//! [`close::LAGGING`]) instead of slowing everyone else down. It loses nothing: it reconnects and
//! resumes after the last offset it received.

use redistribute_protocol::close;
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// The sending half of a connection's queue. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Message>,
    kick: Arc<Kick>,
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

impl Outbox {
    /// A queue of `capacity` frames and its receiving half (for the connection's writer).
    pub(crate) fn new(capacity: usize) -> (Outbox, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Outbox { tx, kick: Arc::default() }, rx)
    }

    /// Queues a text frame, waiting for room (replies and replays: the client sets the pace).
    pub(crate) async fn send(&self, text: Utf8Bytes) -> Result<(), Closed> {
        if self.is_kicked() {
            return Err(Closed);
        }
        self.tx.send(Message::Text(text)).await.map_err(|_| Closed)
    }

    /// Queues a text frame without waiting; a full queue kicks the connection. Returns whether
    /// the frame was queued.
    pub(crate) fn push(&self, text: Utf8Bytes) -> bool {
        match self.tx.try_send(Message::Text(text)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.kick(close::LAGGING, "send queue full: resume from your last offset");
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the connection to close with `code`; the first reason wins.
    pub(crate) fn kick(&self, code: u16, reason: &str) {
        self.kick.kick(code, reason);
    }

    pub(crate) fn is_kicked(&self) -> bool {
        self.kick.is_kicked()
    }

    /// Resolves once the connection was kicked.
    pub(crate) async fn kicked(&self) {
        self.kick.kicked().await;
    }

    /// The kick signal alone, for the writer.
    pub(crate) fn kick_signal(&self) -> Arc<Kick> {
        self.kick.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_kicks_with_lagging() {
        let (outbox, mut rx) = Outbox::new(1);
        assert!(outbox.push("a".into()));
        assert!(!outbox.push("b".into()));
        assert!(outbox.is_kicked());
        assert_eq!(outbox.kick_signal().reason().unwrap().0, close::LAGGING);
        assert!(outbox.send("c".into()).await.is_err());
        assert_eq!(rx.recv().await, Some(Message::Text("a".into())));
    }

    #[tokio::test]
    async fn the_queue_closes_when_the_senders_are_gone_even_if_the_kick_signal_lives() {
        let (outbox, mut rx) = Outbox::new(1);
        let kick = outbox.kick_signal();
        drop(outbox);
        assert_eq!(rx.recv().await, None);
        assert!(!kick.is_kicked());
    }
}
