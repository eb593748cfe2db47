//! Storage engines: where streams live.
//!
//! The rest of the server talks to streams through [`RedisEngine`]: append, inspect, read a page
//! of history, and (in [`crate::reader`]) follow many streams at once with blocking reads. Entries
//! come back as protocol [`Entry`] values, ready to encode.

mod redis;
mod reply;

pub use self::redis::{RedisEngine, Target};
pub(crate) use self::redis::channel_hash;
pub(crate) use self::reply::streams as decode_streams;

use redistribute_protocol::{Entry, StreamId};

/// What the server needs to know about a stream to resolve `$` and detect lost history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamState {
    /// The stream's last generated ID: what `$` means right now (`0-0` for a missing stream).
    pub last_generated: StreamId,
    /// The largest ID ever removed by `XDEL` (`0-0` if none).
    pub max_deleted: StreamId,
    /// The first entry still in the stream, if any.
    pub first: Option<StreamId>,
    /// Entries in the stream now.
    pub length: u64,
    /// Entries ever added; more than `length` means some were trimmed or deleted.
    pub entries_added: u64,
}

impl StreamState {
    /// Evidence that entries after `offset` were removed before they could be read: the
    /// largest ID known to bound the loss, or `None` if nothing after `offset` was removed.
    ///
    /// `XDEL` is exact (`max-deleted-entry-id`). Trimming removes from the head and leaves no
    /// record of what it removed, so when `offset` lies before the first remaining entry and
    /// anything was ever removed, loss is assumed: this errs towards reporting, never towards
    /// silence (it reports a loss when exactly the entries up to `offset` were trimmed).
    pub fn loss_after(&self, offset: StreamId) -> Option<StreamId> {
        let deleted = (self.max_deleted > offset).then_some(self.max_deleted);
        let removed_any = self.entries_added > self.length;
        let trimmed = match self.first {
            Some(first) if first > offset && removed_any => Some(first),
            None if self.last_generated > offset && removed_any => Some(self.last_generated),
            _ => None,
        };
        deleted.max(trimmed)
    }

    /// True when entries after `offset` were (or, see [`StreamState::loss_after`], may have
    /// been) removed before they could be read.
    pub fn lost_after(&self, offset: StreamId) -> bool {
        self.loss_after(offset).is_some()
    }
}

/// One page of history, read atomically with the stream's state.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// The stream's state just before the page was read.
    pub state: StreamState,
    /// Entries after the requested offset, in order, at most the page size.
    pub entries: Vec<Entry>,
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine cannot be reached (connection refused, dropped or timed out).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The key exists but does not hold a stream.
    #[error("the key for channel {0:?} holds a value that is not a stream")]
    WrongType(String),
    /// The engine answered something unexpected.
    #[error("unexpected storage reply: {0}")]
    Protocol(String),
}
