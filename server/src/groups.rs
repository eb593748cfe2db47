//! Consumer groups: a fleet of workers shares a channel's entries (the seed's third promise).
//!
//! A [`Consumer`] joins group `G` of channel `C` as consumer `N` (creating the group, and the
//! stream, if needed) and pulls [`Delivery`]s: first the entries it was given before and never
//! acknowledged (its own pending list, so a restarted worker resumes its work), then entries that
//! other consumers left pending longer than `claim_idle` (`XAUTOCLAIM`: a crashed worker's work
//! moves to the living), then new entries (`XREADGROUP … >`). Each delivery carries how many times
//! the entry was delivered; one delivered more than `max_deliveries` times is moved to a
//! dead-letter stream and acknowledged instead of looping forever.
//!
//! Guarantees: at-least-once within a group (an entry is acknowledged once, but may be delivered
//! again if its consumer does not acknowledge it within `claim_idle`); each consumer sees its
//! deliveries in stream order within one batch, but across consumers and redeliveries there is no
//! global order; an entry is delivered at most `max_deliveries` times, then dead-lettered.
//!
//! On Redis each consumer holds one dedicated connection (its blocking reads would stall a shared
//! one). The embedded memory engine keeps groups the same way in process.

use crate::engine::{Engine, EngineError, MemoryEngine, reply};
use redis::Value;
use redis::aio::MultiplexedConnection;
use redistribute_protocol::{Entry, Start, StreamId};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Tunables of a consumer.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Where the group starts if this consumer creates it: `$` (new entries only) or after an
    /// offset (`0`: everything the stream holds).
    pub start: Start,
    /// How long an entry may stay unacknowledged before other consumers claim it.
    pub claim_idle: Duration,
    /// Deliveries after which an entry goes to the dead-letter stream.
    pub max_deliveries: u64,
    /// Dead-letter stream; `None` means `<channel>:dead`.
    pub dead_letter: Option<String>,
    /// Entries per read.
    pub batch: usize,
    /// Longest blocking read.
    pub block: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            start: Start::Latest,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            dead_letter: None,
            batch: 100,
            block: Duration::from_secs(5),
        }
    }
}

/// One entry handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The entry.
    pub entry: Entry,
    /// How many times it was delivered, this time included.
    pub deliveries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Re-reading this consumer's own pending entries after this ID.
    OwnPending(StreamId),
    Live,
}

/// Where a consumer's group lives.
#[derive(Debug)]
enum Backend {
    /// A dedicated Redis connection.
    Redis(MultiplexedConnection),
    Memory(MemoryEngine),
}

/// A member of a consumer group.
#[derive(Debug)]
pub struct Consumer {
    backend: Backend,
    channel: String,
    group: String,
    name: String,
    options: GroupOptions,
    phase: Phase,
    next_claim: Instant,
    claim_cursor: StreamId,
}

fn failed(e: redis::RedisError) -> EngineError {
    // Inside a pipeline the code is only in the text.
    if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") {
        EngineError::NoGroup("no such consumer group for this channel".to_owned())
    } else {
        EngineError::Unavailable(e.to_string())
    }
}

impl Consumer {
    /// Joins `group` of `channel` as consumer `name`, creating the group (and the stream) if
    /// needed, starting where `options.start` says.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when Redis cannot be reached; [`EngineError::WrongType`] when
    /// the channel's key is not a stream.
    pub async fn join(
        engine: &Engine,
        channel: &str,
        group: &str,
        name: &str,
        options: GroupOptions,
    ) -> Result<Consumer, EngineError> {
        let backend = match engine {
            Engine::Redis(redis) => {
                let mut conn = redis.targets()[redis.target_of(channel)].reader_connection().await?;
                let created: Result<(), _> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(channel)
                    .arg(group)
                    .arg(options.start.to_string())
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match created {
                    Ok(()) => {}
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) if e.code() == Some("WRONGTYPE") => return Err(EngineError::WrongType(channel.to_owned())),
                    Err(e) => return Err(failed(e)),
                }
                Backend::Redis(conn)
            }
            Engine::Memory(memory) => {
                memory.group_create(channel, group, options.start);
                Backend::Memory(memory.clone())
            }
        };
        Ok(Consumer {
            backend,
            channel: channel.to_owned(),
            group: group.to_owned(),
            name: name.to_owned(),
            phase: Phase::OwnPending(StreamId::ZERO),
            next_claim: Instant::now(),
            claim_cursor: StreamId::ZERO,
            options,
        })
    }

    /// Joins again on a fresh connection (after a connection failure, or if the group was
    /// destroyed), starting over with this consumer's own pending entries.
    ///
    /// # Errors
    /// As for [`Consumer::join`].
    pub async fn rejoin(&mut self, engine: &Engine) -> Result<(), EngineError> {
        *self = Consumer::join(engine, &self.channel, &self.group, &self.name, self.options.clone()).await?;
        Ok(())
    }

    /// The next deliveries: own pending first, then claimed, then new. Waits up to the block
    /// time; returns an empty batch when nothing came.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the connection fails; [`EngineError::NoGroup`] when the
    /// group was destroyed meanwhile.
    pub async fn next(&mut self) -> Result<Vec<Delivery>, EngineError> {
        if let Phase::OwnPending(after) = self.phase {
            let own = self.read(Some(after), None).await?;
            match own.last() {
                Some((last, _)) => self.phase = Phase::OwnPending(last.offset),
                None => self.phase = Phase::Live,
            }
            if !own.is_empty() {
                return self.limit(own).await;
            }
        }
        if Instant::now() >= self.next_claim {
            let claimed = self.claim().await?;
            if !claimed.is_empty() {
                return self.limit(claimed).await;
            }
        }
        let wait = self
            .options
            .block
            .min(self.next_claim.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let fresh = self.read(None, Some(wait)).await?;
        self.limit(fresh).await
    }

    /// `XREADGROUP`: own pending after `after`, or new entries (`>`) when `after` is `None`;
    /// entries come with their delivery counts.
    async fn read(
        &mut self,
        after: Option<StreamId>,
        block: Option<Duration>,
    ) -> Result<Vec<(Entry, u64)>, EngineError> {
        let count = self.options.batch;
        let conn = match &mut self.backend {
            Backend::Memory(memory) => {
                return memory.group_read(&self.channel, &self.group, &self.name, after, count, block).await;
            }
            Backend::Redis(conn) => conn,
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&self.group).arg(&self.name).arg("COUNT").arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.channel).arg(after.map_or_else(|| ">".to_owned(), |id| id.to_string()));
        let value: Value = cmd.query_async(conn).await.map_err(failed)?;
        let entries: Vec<Entry> = reply::streams(&value)?.into_iter().flat_map(|(_, entries)| entries).collect();
        match after {
            None => Ok(entries.into_iter().map(|e| (e, 1)).collect()),
            Some(_) => self.counted(entries).await,
        }
    }

    /// One `XAUTOCLAIM` step over the group's pending list.
    async fn claim(&mut self) -> Result<Vec<(Entry, u64)>, EngineError> {
        let (cursor, claimed) = match &mut self.backend {
            Backend::Memory(memory) => memory.group_autoclaim(
                &self.channel,
                &self.group,
                &self.name,
                self.options.claim_idle,
                self.claim_cursor,
                self.options.batch,
            )?,
            Backend::Redis(conn) => {
                let value: Value = redis::cmd("XAUTOCLAIM")
                    .arg(&self.channel)
                    .arg(&self.group)
                    .arg(&self.name)
                    .arg(self.options.claim_idle.as_millis() as u64)
                    .arg(self.claim_cursor.to_string())
                    .arg("COUNT")
                    .arg(self.options.batch)
                    .query_async(conn)
                    .await
                    .map_err(failed)?;
                let Value::Array(parts) = &value else {
                    return Err(EngineError::Protocol(format!("XAUTOCLAIM: {value:?}")));
                };
                let cursor = parts.first().map(reply::stream_id).transpose()?.unwrap_or(StreamId::ZERO);
                let entries = parts.get(1).map(reply::entries).transpose()?.unwrap_or_default();
                (cursor, self.counted(entries).await?)
            }
        };
        self.claim_cursor = cursor;
        if cursor == StreamId::ZERO {
            // Scanned the whole pending list: look again after a while.
            self.next_claim = Instant::now() + self.options.claim_idle / 2;
        }
        Ok(claimed)
    }

    /// Redis only: delivery counts of this consumer's `entries`, from `XPENDING`.
    async fn counted(&mut self, entries: Vec<Entry>) -> Result<Vec<(Entry, u64)>, EngineError> {
        let (Backend::Redis(conn), Some(first), Some(last)) = (&mut self.backend, entries.first(), entries.last())
        else {
            return Ok(entries.into_iter().map(|e| (e, 1)).collect());
        };
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.channel)
            .arg(&self.group)
            .arg(first.offset.to_string())
            .arg(last.offset.to_string())
            .arg(entries.len())
            .arg(&self.name)
            .query_async(conn)
            .await
            .map_err(failed)?;
        let counts: HashMap<String, u64> = pending.into_iter().map(|(id, _, _, count)| (id, count)).collect();
        Ok(entries
            .into_iter()
            .map(|e| {
                let count = counts.get(&e.offset.to_string()).copied().unwrap_or(1);
                (e, count)
            })
            .collect())
    }

    /// Dead-letters entries delivered more often than allowed; returns the rest.
    async fn limit(&mut self, batch: Vec<(Entry, u64)>) -> Result<Vec<Delivery>, EngineError> {
        let mut out = Vec::with_capacity(batch.len());
        for (entry, deliveries) in batch {
            if deliveries > self.options.max_deliveries {
                self.dead_letter(&entry, deliveries).await?;
            } else {
                out.push(Delivery { entry, deliveries });
            }
        }
        Ok(out)
    }

    async fn dead_letter(&mut self, entry: &Entry, deliveries: u64) -> Result<(), EngineError> {
        let stream = self.options.dead_letter.clone().unwrap_or_else(|| format!("{}:dead", self.channel));
        let mut fields = entry.fields.clone();
        fields.extend([
            "dead-letter-offset".to_owned(),
            entry.offset.to_string(),
            "dead-letter-group".to_owned(),
            self.group.clone(),
            "dead-letter-deliveries".to_owned(),
            deliveries.to_string(),
        ]);
        match &mut self.backend {
            Backend::Memory(memory) => {
                memory.publish(&stream, &fields, None).await?;
                memory.group_ack(&self.channel, &self.group, &[entry.offset])?;
                Ok(())
            }
            Backend::Redis(conn) => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                pipe.cmd("XADD").arg(&stream).arg("*").arg(&fields).ignore();
                pipe.cmd("XACK").arg(&self.channel).arg(&self.group).arg(entry.offset.to_string()).ignore();
                pipe.query_async::<()>(conn).await.map_err(failed)
            }
        }
    }

    /// Acknowledges entries of this consumer's group. Returns how many were pending.
    ///
    /// # Errors
    /// As for [`Consumer::next`].
    pub async fn ack(&mut self, offsets: &[StreamId]) -> Result<u64, EngineError> {
        match &mut self.backend {
            Backend::Memory(memory) => memory.group_ack(&self.channel, &self.group, offsets),
            Backend::Redis(conn) => {
                let ids: Vec<String> = offsets.iter().map(ToString::to_string).collect();
                redis::cmd("XACK").arg(&self.channel).arg(&self.group).arg(&ids).query_async(conn).await.map_err(failed)
            }
        }
    }
}

/// Acknowledges `offsets` in `group` of `channel`, all or nothing: if any is not pending in the
/// group, nothing is acknowledged and the error names them.
///
/// # Errors
/// [`EngineError::NoGroup`] for a missing group; [`EngineError::NotPending`] listing offsets that
/// are not pending.
pub async fn ack(engine: &Engine, channel: &str, group: &str, offsets: &[StreamId]) -> Result<u64, EngineError> {
    let pending: Vec<bool> = match engine {
        Engine::Memory(memory) => memory.group_pending(channel, group, offsets)?,
        Engine::Redis(redis) => {
            let mut pipe = redis::pipe();
            for offset in offsets {
                let id = offset.to_string();
                pipe.cmd("XPENDING").arg(channel).arg(group).arg(&id).arg(&id).arg(1);
            }
            let found: Vec<Vec<(String, String, u64, u64)>> =
                pipe.query_async(&mut redis.commands(channel)).await.map_err(failed)?;
            found.iter().map(|f| !f.is_empty()).collect()
        }
    };
    let missing: Vec<String> = offsets.iter().zip(&pending).filter(|(_, p)| !**p).map(|(o, _)| o.to_string()).collect();
    if !missing.is_empty() {
        return Err(EngineError::NotPending(missing.join(", ")));
    }
    match engine {
        Engine::Memory(memory) => memory.group_ack(channel, group, offsets),
        Engine::Redis(redis) => {
            let ids: Vec<String> = offsets.iter().map(ToString::to_string).collect();
            redis::cmd("XACK")
                .arg(channel)
                .arg(group)
                .arg(&ids)
                .query_async(&mut redis.commands(channel))
                .await
                .map_err(failed)
        }
    }
}

/// How many entries of `group` are delivered but not yet acknowledged.
///
/// # Errors
/// [`EngineError::NoGroup`] for a missing group; [`EngineError::Unavailable`] when Redis fails.
pub async fn pending_count(engine: &Engine, channel: &str, group: &str) -> Result<u64, EngineError> {
    match engine {
        Engine::Memory(memory) => memory.group_pending_count(channel, group),
        Engine::Redis(redis) => {
            let summary: Vec<Value> = redis::cmd("XPENDING")
                .arg(channel)
                .arg(group)
                .query_async(&mut redis.commands(channel))
                .await
                .map_err(failed)?;
            summary
                .first()
                .and_then(|v| redis::from_redis_value(v.clone()).ok())
                .ok_or_else(|| EngineError::Protocol("XPENDING summary".into()))
        }
    }
}
