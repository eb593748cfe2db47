//! Storage engines: where streams live.
//!
//! The rest of the server talks to streams only through [`Engine`]: append, inspect, read a page
//! of history, follow many streams at once with blocking reads ([`Follower`]), and the
//! consumer-group primitives a group member needs ([`Member`]: read its own pending entries,
//! read new ones, claim idle ones, dead-letter, acknowledge; each with delivery counts). Two
//! engines implement them with the same semantics, checked by one conformance suite
//! (`server/tests/conformance`): [`RedisEngine`] (every Redis command lives under
//! `engine/redis/`) for production and for more than one instance, and [`MemoryEngine`]
//! (`engine/memory/`), the embedded default for a single instance with no setup. Entries come
//! back as protocol [`Entry`] values, ready to encode.

mod error;
mod memory;
mod redis;

pub(crate) use self::error::list as offset_list;
pub use self::error::{Chain, EngineError};

pub use self::memory::{MemoryEngine, MemoryLimits, MemoryMember};
pub use self::redis::follow::RedisFollower;
pub use self::redis::groups::RedisMember;
pub use self::redis::{Migration, acl_rule, cluster_key, migrate_to_cluster, partition_of, partition_tag, slot_of};
pub use self::redis::{RedisEngine, RedisTls, Target};

use redistribute_protocol::{Entry, Start, StreamId};
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
    /// [`EngineError::Unavailable`] when the storage is unreachable (not stored);
    /// [`EngineError::UnknownOutcome`] when Redis got the command but did not answer in time;
    /// [`EngineError::WrongType`] when the key holds something else.
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

    /// Appends several entries, in order, in one round trip per Redis target; returns each one's
    /// outcome, as [`Engine::publish`] would. A write with a key ([`Write::once`]) seen within
    /// its window is not appended again: its outcome is the first write's offset, marked
    /// `duplicate` (checked and recorded atomically with the append).
    pub async fn publish_many(&self, writes: &[Write<'_>]) -> Vec<Result<Appended, EngineError>> {
        match self {
            Engine::Redis(redis) => redis.publish_many(writes).await,
            Engine::Memory(memory) => memory.publish_many(writes),
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

    /// Whether `channel`'s stream holds the entry `id`.
    ///
    /// # Errors
    /// As for [`Engine::publish`].
    pub async fn has_entry(&self, channel: &str, id: StreamId) -> Result<bool, EngineError> {
        match self {
            Engine::Redis(redis) => redis.has_entry(channel, id).await,
            Engine::Memory(memory) => Ok(memory.has_entry(channel, id)),
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

    /// A blocking reader for the channels of partition `within` of target `target` (for Redis,
    /// a dedicated connection; on a cluster, to the master of the partition's slot).
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the target cannot be reached.
    pub async fn follower(&self, target: usize, within: usize) -> Result<Follower, EngineError> {
        match self {
            Engine::Redis(redis) => {
                Ok(Follower::Redis(Box::new(RedisFollower::connect(&redis.targets()[target], within).await?)))
            }
            Engine::Memory(memory) => Ok(Follower::Memory(memory.clone())),
        }
    }

    /// Ends the blocked read of the follower with `wake_id` (of partition `within` of target
    /// `target`) early. Returns whether it was blocked; if not, the caller tries again (the read
    /// may be about to block).
    ///
    /// # Errors
    /// When the command connection fails.
    pub async fn wake(&self, target: usize, within: usize, wake_id: i64) -> Result<bool, EngineError> {
        match self {
            Engine::Redis(redis) => {
                let target = &redis.targets()[target];
                target.unblock(&target.partition_key(within), wake_id).await
            }
            Engine::Memory(memory) => Ok(memory.wake()),
        }
    }

    /// Joins consumer group `group` of `channel` as `consumer`, creating the group (and the
    /// stream) at `start` if needed; an existing group keeps its position.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the storage cannot be reached; [`EngineError::WrongType`]
    /// when the channel's key is not a stream.
    pub async fn join_group(
        &self,
        channel: &str,
        group: &str,
        consumer: &str,
        start: Start,
    ) -> Result<Member, EngineError> {
        match self {
            Engine::Redis(redis) => Ok(Member::Redis(Box::new(
                RedisMember::join(redis.target(channel), channel, group, consumer, start).await?,
            ))),
            Engine::Memory(memory) => Ok(Member::Memory(MemoryMember::join(memory, channel, group, consumer, start))),
        }
    }

    /// Which consumer of `group` of `channel` each of `offsets` is pending for (`None`: not
    /// pending).
    ///
    /// # Errors
    /// [`EngineError::NoGroup`] for a missing group; [`EngineError::Unavailable`].
    pub async fn group_pending(
        &self,
        channel: &str,
        group: &str,
        offsets: &[StreamId],
    ) -> Result<Vec<Option<String>>, EngineError> {
        match self {
            Engine::Redis(redis) => redis.group_pending(channel, group, offsets).await,
            Engine::Memory(memory) => memory.group_pending(channel, group, offsets),
        }
    }

    /// Acknowledges `offsets` in `group` of `channel`; returns how many were pending.
    ///
    /// # Errors
    /// As for [`Engine::group_pending`].
    pub async fn group_ack(&self, channel: &str, group: &str, offsets: &[StreamId]) -> Result<u64, EngineError> {
        match self {
            Engine::Redis(redis) => redis.group_ack(channel, group, offsets).await,
            Engine::Memory(memory) => memory.group_ack(channel, group, offsets),
        }
    }

    /// How many entries of `group` are delivered but not yet acknowledged.
    ///
    /// # Errors
    /// As for [`Engine::group_pending`].
    pub async fn group_pending_count(&self, channel: &str, group: &str) -> Result<u64, EngineError> {
        match self {
            Engine::Redis(redis) => redis.group_pending_count(channel, group).await,
            Engine::Memory(memory) => memory.group_pending_count(channel, group),
        }
    }
}

/// Follows many streams at once: each [`Follower::read`] blocks until entries arrive after the
/// given cursors, the block time passes, or [`Engine::wake`] ends it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Follower {
    /// A dedicated Redis connection blocking in `XREAD`.
    Redis(Box<RedisFollower>),
    /// The memory engine's append notifications.
    Memory(MemoryEngine),
}

impl Follower {
    /// The identity [`Engine::wake`] needs (never 0).
    pub fn wake_id(&self) -> i64 {
        match self {
            Follower::Redis(redis) => redis.client_id(),
            Follower::Memory(_) => 1,
        }
    }

    /// Entries after each `(channel, cursor)`, up to `count` per channel; empty after `block`
    /// or a wake. `timeout` bounds how much longer than `block` the storage may take.
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
            Follower::Redis(redis) => redis.read(streams, count, block, timeout).await,
            Follower::Memory(memory) => Ok(memory.read(streams, count, block).await),
        }
    }

    /// The channels among `keys` whose keys hold something other than a stream.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the connection fails.
    pub async fn non_streams(&mut self, keys: &[&str]) -> Result<Vec<(String, String)>, EngineError> {
        match self {
            Follower::Redis(redis) => redis.non_streams(keys).await,
            Follower::Memory(_) => Ok(Vec::new()),
        }
    }
}

/// One member of a consumer group: the storage side of [`crate::groups::Consumer`]. On Redis it
/// holds a dedicated connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Member {
    /// On Redis.
    Redis(Box<RedisMember>),
    /// In the memory engine.
    Memory(MemoryMember),
}

impl Member {
    /// This consumer's own pending entries after `after` (delivered again, so counted again),
    /// up to `count`, with their delivery counts.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`]; [`EngineError::NoGroup`] when the group was destroyed.
    pub async fn read_own_pending(&mut self, after: StreamId, count: usize) -> Result<Vec<(Entry, u64)>, EngineError> {
        match self {
            Member::Redis(redis) => redis.read(Some(after), count, None).await,
            Member::Memory(memory) => memory.read(Some(after), count, None).await,
        }
    }

    /// Entries never delivered to the group, up to `count`, waiting up to `block` for some.
    ///
    /// # Errors
    /// As for [`Member::read_own_pending`].
    pub async fn read_new(&mut self, count: usize, block: Duration) -> Result<Vec<(Entry, u64)>, EngineError> {
        match self {
            Member::Redis(redis) => redis.read(None, count, Some(block)).await,
            Member::Memory(memory) => memory.read(None, count, Some(block)).await,
        }
    }

    /// Takes over entries other consumers left pending longer than `min_idle`, scanning the
    /// pending list from `cursor`; returns where to go on (`0-0` after the end) and the entries
    /// with their delivery counts. Pending entries whose data was trimmed are dropped.
    ///
    /// # Errors
    /// As for [`Member::read_own_pending`].
    pub async fn claim_idle(
        &mut self,
        min_idle: Duration,
        cursor: StreamId,
        count: usize,
    ) -> Result<(StreamId, Vec<(Entry, u64)>), EngineError> {
        match self {
            Member::Redis(redis) => redis.claim_idle(min_idle, cursor, count).await,
            Member::Memory(memory) => memory.claim_idle(min_idle, cursor, count),
        }
    }

    /// Appends `fields` to the dead-letter `stream` (trimmed to `maxlen`, approximately) and
    /// acknowledges `offset` in the group.
    ///
    /// # Errors
    /// As for [`Member::read_own_pending`].
    pub async fn dead_letter(
        &mut self,
        stream: &str,
        fields: &[String],
        offset: StreamId,
        maxlen: Option<u64>,
    ) -> Result<(), EngineError> {
        match self {
            Member::Redis(redis) => redis.dead_letter(stream, fields, offset, maxlen).await,
            Member::Memory(memory) => memory.dead_letter(stream, fields, offset, maxlen).await,
        }
    }

    /// Waits on `signal` for new entries rather than holding a blocking connection (Redis; the
    /// memory engine needs no connection either way). The server's stream reader signals it.
    pub fn wake_on(&mut self, signal: std::sync::Arc<tokio::sync::Notify>) {
        if let Member::Redis(redis) = self {
            redis.wake_on(signal);
        }
    }

    /// Acknowledges `offsets`; returns how many were pending.
    ///
    /// # Errors
    /// As for [`Member::read_own_pending`].
    pub async fn ack(&mut self, offsets: &[StreamId]) -> Result<u64, EngineError> {
        match self {
            Member::Redis(redis) => redis.ack(offsets).await,
            Member::Memory(memory) => memory.ack(offsets),
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

/// One entry to append, for [`Engine::publish_many`].
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// The channel.
    pub channel: &'a str,
    /// Field/value pairs, flattened.
    pub fields: &'a [String],
    /// Approximate cap on the stream length.
    pub maxlen: Option<u64>,
    /// Store it at most once per key.
    pub once: Option<Once<'a>>,
}

/// An idempotency key and how long it is remembered.
#[derive(Debug, Clone, Copy)]
pub struct Once<'a> {
    /// Unique per logical publish (scoped by the caller, e.g. to the user).
    pub key: &'a str,
    /// How long a retry with the same key is recognised.
    pub ttl: std::time::Duration,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The entry's offset (the first write's, for a duplicate).
    pub offset: StreamId,
    /// The key was seen before: nothing was appended.
    pub duplicate: bool,
}

/// One page of history, read atomically with the stream's state.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// The stream's state just before the page was read.
    pub state: StreamState,
    /// Entries after the requested offset, in order, at most the page size.
    pub entries: Vec<Entry>,
}
