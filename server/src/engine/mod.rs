//! Storage engines: where streams live.
//!
//! The rest of the server talks to streams through [`Engine`]: append, inspect, read a page of
//! history, and follow many streams at once with blocking reads ([`Follower`]). Two engines
//! implement it with the same semantics, checked by one conformance suite
//! (`server/tests/conformance.rs`): [`RedisEngine`] for production and for more than one instance,
//! and [`MemoryEngine`], the embedded default for a single instance with no setup. Entries come
//! back as protocol [`Entry`] values, ready to encode.

mod memory;
mod redis;
pub(crate) mod reply;

pub use self::memory::{MemoryEngine, MemoryLimits};
pub(crate) use self::redis::channel_hash;
pub use self::redis::{RedisEngine, Target};

use ::redis::Value;
use ::redis::aio::MultiplexedConnection;
use redistribute_protocol::{Entry, StreamId};
use std::time::Duration;

/// The engine a server runs on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Engine {
    /// Redis (one or more targets).
    Redis(RedisEngine),
    /// In-process memory: one instance only.
    Memory(MemoryEngine),
}

impl Engine {
    /// Number of targets channels are spread over (1 for memory).
    pub fn target_count(&self) -> usize {
        match self {
            Engine::Redis(redis) => redis.targets().len(),
            Engine::Memory(_) => 1,
        }
    }

    /// The target that holds `channel`.
    pub fn target_of(&self, channel: &str) -> usize {
        match self {
            Engine::Redis(redis) => redis.target_of(channel),
            Engine::Memory(_) => 0,
        }
    }

    /// A printable name of target `index`, for logs.
    pub fn describe(&self, index: usize) -> String {
        match self {
            Engine::Redis(redis) => redis.targets()[index].display().to_owned(),
            Engine::Memory(_) => "embedded memory engine".to_owned(),
        }
    }

    /// Appends an entry; returns its ID.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the storage is unreachable; [`EngineError::WrongType`]
    /// when the key holds something else.
    pub async fn publish(
        &self,
        channel: &str,
        fields: &[String],
        maxlen: Option<u64>,
    ) -> Result<StreamId, EngineError> {
        match self {
            Engine::Redis(redis) => redis.publish(channel, fields, maxlen).await,
            Engine::Memory(memory) => memory.publish(channel, fields, maxlen).await,
        }
    }

    /// The stream's state; a missing stream is empty.
    ///
    /// # Errors
    /// As for [`Engine::publish`].
    pub async fn state(&self, channel: &str) -> Result<StreamState, EngineError> {
        match self {
            Engine::Redis(redis) => redis.state(channel).await,
            Engine::Memory(memory) => memory.state(channel).await,
        }
    }

    /// Up to `count` entries after `after`, read atomically with the stream's state.
    ///
    /// # Errors
    /// As for [`Engine::publish`].
    pub async fn history_page(&self, channel: &str, after: StreamId, count: usize) -> Result<HistoryPage, EngineError> {
        match self {
            Engine::Redis(redis) => redis.history_page(channel, after, count).await,
            Engine::Memory(memory) => memory.history_page(channel, after, count).await,
        }
    }

    /// Checks that every target answers.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] naming the first that does not.
    pub async fn ping(&self) -> Result<(), EngineError> {
        match self {
            Engine::Redis(redis) => redis.ping().await,
            Engine::Memory(_) => Ok(()),
        }
    }

    /// A blocking reader for the channels of target `index` (for Redis, a dedicated connection).
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the target cannot be reached.
    pub async fn follower(&self, index: usize) -> Result<Follower, EngineError> {
        match self {
            Engine::Redis(redis) => {
                let mut conn = redis.targets()[index].reader_connection().await?;
                let client_id: i64 = ::redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| EngineError::Unavailable(e.to_string()))?;
                Ok(Follower::Redis { conn, client_id })
            }
            Engine::Memory(memory) => Ok(Follower::Memory(memory.clone())),
        }
    }

    /// Ends the blocked read of the follower with `wake_id` on target `index` early. Returns
    /// whether it was blocked; if not, the caller tries again (the read may be about to block).
    ///
    /// # Errors
    /// When the command connection fails.
    pub async fn wake(&self, index: usize, wake_id: i64) -> Result<bool, EngineError> {
        match self {
            Engine::Redis(redis) => redis.targets()[index].unblock(wake_id).await,
            Engine::Memory(memory) => Ok(memory.wake()),
        }
    }
}

/// Follows many streams at once: each [`Follower::read`] blocks until entries arrive after the
/// given cursors, the block time passes, or [`Engine::wake`] ends it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Follower {
    /// A dedicated Redis connection blocking in `XREAD`.
    Redis {
        /// The connection.
        conn: MultiplexedConnection,
        /// Its `CLIENT ID`, for `CLIENT UNBLOCK`.
        client_id: i64,
    },
    /// The memory engine's append notifications.
    Memory(MemoryEngine),
}

impl Follower {
    /// The identity [`Engine::wake`] needs (never 0).
    pub fn wake_id(&self) -> i64 {
        match self {
            Follower::Redis { client_id, .. } => *client_id,
            Follower::Memory(_) => 1,
        }
    }

    /// Entries after each `(channel, cursor)`, up to `count` per channel; empty after `block`
    /// or a wake.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the connection fails; [`EngineError::WrongType`] when
    /// some key is not a stream.
    pub async fn read(
        &mut self,
        streams: &[(String, StreamId)],
        count: usize,
        block: Duration,
        timeout: Duration,
    ) -> Result<Vec<(String, Vec<Entry>)>, EngineError> {
        match self {
            Follower::Redis { conn, .. } => {
                let mut cmd = ::redis::cmd("XREAD");
                cmd.arg("COUNT").arg(count).arg("BLOCK").arg(block.as_millis() as u64).arg("STREAMS");
                for (key, _) in streams {
                    cmd.arg(key);
                }
                for (_, id) in streams {
                    cmd.arg(id.to_string());
                }
                let deadline = block + timeout;
                let value = match tokio::time::timeout(deadline, cmd.query_async::<Value>(conn)).await {
                    Ok(Ok(value)) => value,
                    Ok(Err(e)) if e.code() == Some("WRONGTYPE") => return Err(EngineError::WrongType(String::new())),
                    Ok(Err(e)) => return Err(EngineError::Unavailable(e.to_string())),
                    Err(_) => {
                        return Err(EngineError::Unavailable(format!("XREAD did not return within {deadline:?}")));
                    }
                };
                reply::streams(&value)
            }
            Follower::Memory(memory) => Ok(memory.read(streams, count, block).await),
        }
    }

    /// The channels among `keys` whose keys hold something other than a stream.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the connection fails.
    pub async fn non_streams(&mut self, keys: &[&str]) -> Result<Vec<(String, String)>, EngineError> {
        match self {
            Follower::Redis { conn, .. } => {
                let mut pipe = ::redis::pipe();
                for key in keys {
                    pipe.cmd("TYPE").arg(*key);
                }
                let types: Vec<String> =
                    pipe.query_async(conn).await.map_err(|e| EngineError::Unavailable(e.to_string()))?;
                Ok(keys
                    .iter()
                    .zip(types)
                    .filter(|(_, t)| t != "stream" && t != "none")
                    .map(|(k, t)| ((*k).to_owned(), t))
                    .collect())
            }
            Follower::Memory(_) => Ok(Vec::new()),
        }
    }
}

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
    /// The consumer group does not exist.
    #[error("{0}")]
    NoGroup(String),
    /// Offsets that are not pending in the group (listed).
    #[error("not pending in the group: {0}")]
    NotPending(String),
}
