//! The writing half of a connection: drains its [`Queue`] into the socket, pings the client,
//! and ends with a close frame when the connection is kicked or the server shuts down. Every
//! write is watched: a socket that accepts nothing for the write timeout gets the connection
//! kicked as lagging, so a client that never reads holds nothing for long.

use crate::outbox::{Queue, QueueState};
use crate::progress::Progress;
use futures_util::{Sink, SinkExt};
use redistribute_protocol::close;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

pub(crate) fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(reason) }))
}

/// The writing half of one connection.
pub(crate) struct Writer<W> {
    pub(crate) sink: W,
    pub(crate) queue: Queue,
    /// The queue's byte count and kick signal (outlive the queue's senders).
    pub(crate) state: Arc<QueueState>,
    /// When the socket last accepted bytes.
    pub(crate) progress: Arc<Progress>,
    pub(crate) write_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) shutdown: CancellationToken,
}

/// How one socket write went.
enum Write {
    Done,
    /// The socket failed; nothing more can be written.
    Failed,
    /// The connection was kicked while the write waited.
    Kicked,
}

impl<W: Sink<Message, Error = WsError> + Unpin> Writer<W> {
    /// Runs until the connection closes; returns whether a close frame went out.
    pub(crate) async fn run(mut self) -> bool {
        // Frames already queued are written in one go, then flushed once.
        const MAX_BURST: usize = 256;
        let state = self.state.clone();
        let kick = state.kick();
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await; // the first tick is immediate
        // A kick that cut a frame's write short dropped that frame: then nothing queued after it
        // may go out, or the client would resume past entries it never got.
        let mut frame_dropped = false;
        let closing = 'frames: loop {
            let first = tokio::select! {
                biased;
                () = kick.kicked() => break kick.reason().map(|(code, reason)| close_message(code, &reason)),
                () = self.shutdown.cancelled() => break Some(close_message(close::GOING_AWAY, "server shutting down")),
                next = self.queue.recv() => match next {
                    Some(message) => message,
                    None => break None,
                },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            // Frames are taken out of the queue one at a time, as the socket accepts them, so
            // that the queue's byte bound covers all but the one being written.
            let mut next = Some(first);
            let mut written = 0;
            while let Some(message) = next.take() {
                match self.watched(|sink| sink.feed(message)).await {
                    Write::Done => {}
                    Write::Failed => return false,
                    Write::Kicked => {
                        frame_dropped = true;
                        continue 'frames;
                    }
                }
                written += 1;
                if written < MAX_BURST {
                    next = self.queue.try_recv();
                }
            }
            match self.watched(|sink| sink.flush()).await {
                Write::Done => {}
                Write::Failed => return false,
                Write::Kicked => continue 'frames,
            }
        };
        // Frames queued before the close go out first (the replies a client is owed), unless the
        // backlog itself is the reason (then it is freed now, not after the close) or a frame was
        // dropped (see above).
        let owed = kick.reason().is_some_and(|(code, _)| code != close::LAGGING) || self.shutdown.is_cancelled();
        if owed && !frame_dropped {
            while let Some(message) = self.queue.try_recv() {
                if !matches!(self.watched(|sink| sink.feed(message)).await, Write::Done) {
                    return false;
                }
            }
        }
        self.queue.discard();
        let Some(message) = closing else {
            let _ = self.sink.close().await;
            return false;
        };
        // A client that reads nothing cannot take the close frame either: bounded like any write.
        let sent = matches!(self.watched(|sink| sink.send(message)).await, Write::Done);
        let _ = tokio::time::timeout(Duration::from_millis(100), self.sink.close()).await;
        sent
    }

    /// Runs one write on the socket, giving up when the socket accepts nothing for the write
    /// timeout (the client is then kicked as lagging: its memory is released whether or not it
    /// ever reads again) or, before the close frame, when the connection is kicked.
    async fn watched<'s, F, Fut>(&'s mut self, write: F) -> Write
    where
        F: FnOnce(&'s mut W) -> Fut,
        Fut: std::future::Future<Output = Result<(), WsError>> + 's,
    {
        let timeout = self.write_timeout;
        let kick = self.state.kick();
        let already_kicked = kick.is_kicked();
        let since = tokio::time::Instant::now();
        tokio::select! {
            biased;
            written = write(&mut self.sink) => if written.is_ok() { Write::Done } else { Write::Failed },
            () = kick.kicked(), if !already_kicked => Write::Kicked,
            () = self.progress.stalled(since, timeout) => {
                kick.kick(close::LAGGING, &format!("the socket accepted nothing for {timeout:?}"));
                Write::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use crate::progress::Tracked;
    use futures_util::StreamExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[tokio::test]
    async fn a_frame_cut_short_by_a_kick_is_not_followed_by_later_ones() {
        let (client, served) = tokio::io::duplex(16 << 10);
        let (served, progress) = Tracked::new(served);
        let server = WebSocketStream::from_raw_socket(served, Role::Server, None).await;
        let (outbox, queue) = Outbox::new(16 << 20, crate::outbox::tests::total());
        let writer = Writer {
            sink: server,
            state: queue.state().clone(),
            queue,
            progress,
            write_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(60),
            shutdown: CancellationToken::new(),
        };
        // The first frame fills the pipe and tungstenite's buffer, so the second one's write
        // waits; the kick cuts it short.
        let big = |c: &str| Utf8Bytes::from(c.repeat(300 << 10));
        for frame in ["a", "b", "c"] {
            assert!(outbox.push(big(frame)));
        }
        let running = tokio::spawn(writer.run());
        tokio::time::sleep(Duration::from_millis(100)).await;
        outbox.kick(close::IDLE_TIMEOUT, "idle");
        // The client reads only now: "a", then the close, never "c" after a missing "b".
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut got = Vec::new();
        while let Some(Ok(message)) = client.next().await {
            match message {
                Message::Text(text) => got.push(text.as_str()[..1].to_owned()),
                Message::Close(frame) => {
                    got.push(format!("close {}", frame.map_or(0, |f| u16::from(f.code))));
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(got, ["a", "close 4002"]);
        assert!(running.await.unwrap(), "the close went out");
    }
}
