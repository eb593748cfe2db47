//! Consumer groups: a fleet of workers shares a channel's entries (the shardable promise).
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
//! This module holds only the policy; the storage primitives are [`crate::engine::Member`]'s. On
//! Redis, members use the target's shared connection; to wait for new entries, a member of the
//! server waits on a signal from the stream reader ([`Consumer::wake_on`]), so Redis sees no more
//! connections however many members join. A member with no signal (library use) blocks on a
//! connection of its own. The embedded memory engine keeps groups the same way in process.

use crate::engine::{Engine, EngineError, Member};
use redistribute_protocol::{Entry, Start, StreamId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
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
    /// `MAXLEN ~` of the dead-letter stream.
    pub dead_letter_maxlen: Option<u64>,
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
            dead_letter_maxlen: Some(10_000),
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

/// A member of a consumer group.
#[derive(Debug)]
pub struct Consumer {
    member: Member,
    channel: String,
    group: String,
    name: String,
    options: GroupOptions,
    /// What wakes the member for new entries, kept across rejoins.
    wake: Option<Arc<Notify>>,
    phase: Phase,
    next_claim: Instant,
    claim_cursor: StreamId,
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
        let member = engine.join_group(channel, group, name, options.start).await?;
        Ok(Consumer {
            member,
            channel: channel.to_owned(),
            group: group.to_owned(),
            name: name.to_owned(),
            phase: Phase::OwnPending(StreamId::ZERO),
            next_claim: Instant::now(),
            claim_cursor: StreamId::ZERO,
            options,
            wake: None,
        })
    }

    /// Waits on `signal` for new entries instead of a blocking read on a connection of its own
    /// (on Redis, each blocking member would otherwise hold one). Whoever follows the channel
    /// (the server's stream reader) signals it whenever entries arrive.
    pub fn wake_on(&mut self, signal: Arc<Notify>) {
        self.member.wake_on(signal.clone());
        self.wake = Some(signal);
    }

    /// Joins again on a fresh connection (after a connection failure, or if the group was
    /// destroyed), starting over with this consumer's own pending entries.
    ///
    /// # Errors
    /// As for [`Consumer::join`].
    pub async fn rejoin(&mut self, engine: &Engine) -> Result<(), EngineError> {
        let wake = self.wake.take();
        *self = Consumer::join(engine, &self.channel, &self.group, &self.name, self.options.clone()).await?;
        if let Some(signal) = wake {
            self.wake_on(signal);
        }
        Ok(())
    }

    /// The next deliveries: own pending first, then claimed, then new. Waits up to the block
    /// time; returns an empty batch when nothing came.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the connection fails; [`EngineError::NoGroup`] when the
    /// group was destroyed meanwhile.
    pub async fn next(&mut self) -> Result<Vec<Delivery>, EngineError> {
        let batch = self.options.batch;
        if let Phase::OwnPending(after) = self.phase {
            let own = self.member.read_own_pending(after, batch).await?;
            self.phase = match own.last() {
                Some((last, _)) => Phase::OwnPending(last.offset),
                None => Phase::Live,
            };
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
        let fresh = self.member.read_new(batch, wait).await?;
        self.limit(fresh).await
    }

    /// One step of the scan over the group's pending list for entries idle too long.
    async fn claim(&mut self) -> Result<Vec<(Entry, u64)>, EngineError> {
        let (cursor, claimed) =
            self.member.claim_idle(self.options.claim_idle, self.claim_cursor, self.options.batch).await?;
        self.claim_cursor = cursor;
        if cursor == StreamId::ZERO {
            // Scanned the whole pending list: look again after a while.
            self.next_claim = Instant::now() + self.options.claim_idle / 2;
        }
        Ok(claimed)
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

    /// Moves `entry` to the dead-letter stream with where it came from, and acknowledges it.
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
        self.member.dead_letter(&stream, &fields, entry.offset, self.options.dead_letter_maxlen).await
    }

    /// Acknowledges entries of this consumer's group. Returns how many were pending.
    ///
    /// # Errors
    /// As for [`Consumer::next`].
    pub async fn ack(&mut self, offsets: &[StreamId]) -> Result<u64, EngineError> {
        self.member.ack(offsets).await
    }
}

/// Acknowledges `offsets` in `group` of `channel`, whichever consumer they are pending for, all
/// or nothing: if any is not pending in the group, nothing is acknowledged and the error names
/// them.
///
/// # Errors
/// [`EngineError::NoGroup`] for a missing group; [`EngineError::NotPending`] listing offsets that
/// are not pending.
pub async fn ack(engine: &Engine, channel: &str, group: &str, offsets: &[StreamId]) -> Result<u64, EngineError> {
    ack_checked(engine, channel, group, None, offsets).await
}

/// Like [`ack`], for consumer `consumer` only: offsets pending for another consumer of the group
/// are refused too (all or nothing).
///
/// # Errors
/// As for [`ack`], and [`EngineError::HeldByOthers`] listing offsets pending for others.
pub async fn ack_as(
    engine: &Engine,
    channel: &str,
    group: &str,
    consumer: &str,
    offsets: &[StreamId],
) -> Result<u64, EngineError> {
    ack_checked(engine, channel, group, Some(consumer), offsets).await
}

async fn ack_checked(
    engine: &Engine,
    channel: &str,
    group: &str,
    consumer: Option<&str>,
    offsets: &[StreamId],
) -> Result<u64, EngineError> {
    let holders = engine.group_pending(channel, group, offsets).await?;
    let offending = |keep: &dyn Fn(&Option<String>) -> bool| -> Vec<StreamId> {
        offsets.iter().zip(&holders).filter(|(_, holder)| keep(holder)).map(|(offset, _)| *offset).collect()
    };
    let missing = offending(&|holder| holder.is_none());
    if !missing.is_empty() {
        return Err(EngineError::NotPending(missing));
    }
    if let Some(consumer) = consumer {
        let others = offending(&|holder| holder.as_deref() != Some(consumer));
        if !others.is_empty() {
            return Err(EngineError::HeldByOthers(others));
        }
    }
    engine.group_ack(channel, group, offsets).await
}

/// How many entries of `group` are delivered but not yet acknowledged.
///
/// # Errors
/// [`EngineError::NoGroup`] for a missing group; [`EngineError::Unavailable`] when Redis fails.
pub async fn pending_count(engine: &Engine, channel: &str, group: &str) -> Result<u64, EngineError> {
    engine.group_pending_count(channel, group).await
}
