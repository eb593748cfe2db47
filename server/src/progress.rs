//! Watching a socket's progress: an I/O wrapper that records when the peer last accepted bytes,
//! so that a writer blocked on a full socket can tell a slow reader (still accepting, however
//! little) from one that accepts nothing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When the socket last accepted bytes, shared by the wrapper and the connection's writer.
#[derive(Debug)]
pub(crate) struct Progress {
    start: Instant,
    /// Milliseconds after `start` of the last write that moved bytes.
    last_write_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { start: Instant::now(), last_write_ms: AtomicU64::new(0) }
    }
}

impl Progress {
    fn wrote(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_write_ms.store(ms, Ordering::Relaxed);
    }

    fn last_write(&self) -> Instant {
        self.start + Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed))
    }

    /// Resolves once the socket has accepted nothing for `timeout`, counted from `since` (the
    /// start of the write being watched) or the last accepted bytes, whichever is later.
    pub(crate) async fn stalled(&self, since: Instant, timeout: Duration) {
        loop {
            let deadline = self.last_write().max(since) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// An I/O object that reports written bytes to a [`Progress`].
#[derive(Debug)]
pub(crate) struct Tracked<IO> {
    io: IO,
    progress: Arc<Progress>,
}

impl<IO> Tracked<IO> {
    pub(crate) fn new(io: IO) -> (Tracked<IO>, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        (Tracked { io, progress: progress.clone() }, progress)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.progress.wrote();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_on_a_full_pipe_stalls_and_a_draining_peer_does_not() {
        let (mut peer, io) = duplex(16);
        let (mut tracked, progress) = Tracked::new(io);
        let since = Instant::now();
        let timeout = Duration::from_secs(10);
        // The peer reads 16 bytes every 5 s: slow, but never 10 s without progress.
        let write = tracked.write_all(&[0; 64]);
        let reader = async {
            let mut buf = [0; 16];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                peer.read_exact(&mut buf).await.unwrap();
            }
        };
        tokio::select! {
            (written, ()) = async { tokio::join!(write, reader) } => written.unwrap(),
            () = progress.stalled(since, timeout) => panic!("a slow reader is not a stalled one"),
        }
        // Now the peer reads nothing: the next write stalls after exactly the timeout.
        let since = Instant::now();
        let blocked = tracked.write_all(&[0; 64]);
        tokio::select! {
            _ = blocked => panic!("nothing reads the pipe"),
            () = progress.stalled(since, timeout) => assert_eq!(since.elapsed(), timeout),
        }
    }
}
