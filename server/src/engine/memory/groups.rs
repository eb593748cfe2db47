//! Consumer groups in the memory engine, kept the way Redis keeps them: per group the last
//! entry handed out and the pending entries list (consumer, delivery time, delivery count).

use super::{MemoryEngine, Stream, alloc};
use crate::engine::EngineError;
use redistribute_protocol::{Entry, Start, StreamId};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// A consumer group, as Redis keeps it: the last entry handed out, and the pending entries list.
#[derive(Debug, Default)]
pub(super) struct Group {
    last_delivered: StreamId,
    pending: BTreeMap<StreamId, Pending>,
}

#[derive(Debug)]
struct Pending {
    consumer: String,
    delivered: Instant,
    count: u64,
}

/// What a group costs: its record (twice, for the map's spare room) and name.
fn group_cost(name: &str) -> usize {
    2 * size_of::<(String, Group)>() + alloc(name.len())
}

/// What a pending entry costs: its node share in the list and its consumer's name.
fn pending_cost(consumer: &str) -> usize {
    2 * size_of::<(StreamId, Pending)>() + alloc(consumer.len())
}

/// One group member of the memory engine (the counterpart of a Redis member's connection).
#[derive(Debug)]
pub struct MemoryMember {
    engine: MemoryEngine,
    channel: String,
    group: String,
    consumer: String,
}

impl MemoryMember {
    /// Creates the group at `start` if needed (and the channel) and returns the member.
    pub(crate) fn join(
        engine: &MemoryEngine,
        channel: &str,
        group: &str,
        consumer: &str,
        start: Start,
    ) -> MemoryMember {
        engine.group_join(channel, group, start);
        MemoryMember {
            engine: engine.clone(),
            channel: channel.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        }
    }

    /// Own pending entries after `after`, or new ones (waiting up to `block`) when `None`.
    pub(crate) async fn read(
        &mut self,
        after: Option<StreamId>,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<(Entry, u64)>, EngineError> {
        self.engine.group_read(&self.channel, &self.group, &self.consumer, after, count, block).await
    }

    /// Claims entries pending longer than `min_idle`, from `cursor`.
    pub(crate) fn claim_idle(
        &mut self,
        min_idle: Duration,
        cursor: StreamId,
        count: usize,
    ) -> Result<(StreamId, Vec<(Entry, u64)>), EngineError> {
        self.engine.group_autoclaim(&self.channel, &self.group, &self.consumer, min_idle, cursor, count)
    }

    /// Appends `fields` to the dead-letter `stream`, then acknowledges `offset`.
    pub(crate) async fn dead_letter(
        &mut self,
        stream: &str,
        fields: &[String],
        offset: StreamId,
        maxlen: Option<u64>,
    ) -> Result<(), EngineError> {
        self.engine.publish(stream, fields, maxlen).await?;
        self.engine.group_ack(&self.channel, &self.group, &[offset])?;
        Ok(())
    }

    /// Acknowledges `offsets`; returns how many were pending.
    pub(crate) fn ack(&mut self, offsets: &[StreamId]) -> Result<u64, EngineError> {
        self.engine.group_ack(&self.channel, &self.group, offsets)
    }
}

impl Drop for MemoryMember {
    /// The member left. Its group stays, as in Redis, but once the channel holds no entries and
    /// no member it may be trimmed (as of its last ID) when the budget needs room.
    fn drop(&mut self) {
        self.engine.lock().change(&self.channel, |stream| {
            stream.members -= 1;
            ((), 0, 0)
        });
    }
}

impl MemoryEngine {
    /// Creates consumer group `group` at `start` (`$`: the last generated ID), creating the
    /// channel if needed; an existing group is left as it is (like `XGROUP CREATE … MKSTREAM`
    /// answering `BUSYGROUP`). Counts a member in, which keeps the channel until it leaves.
    fn group_join(&self, channel: &str, group: &str, start: Start) {
        let mut streams = self.lock();
        streams.open(channel);
        streams.change(channel, |stream| {
            stream.members += 1;
            if stream.groups.contains_key(group) {
                return ((), 0, 0);
            }
            let last_delivered = match start {
                Start::Latest => stream.last_generated,
                Start::After(id) => id,
            };
            stream.groups.insert(group.to_owned(), Group { last_delivered, pending: BTreeMap::new() });
            stream.group_bytes += group_cost(group);
            ((), group_cost(group), 0)
        });
        let limits = self.inner.limits;
        streams.trim_to(limits.max_bytes);
    }

    fn with_group<T>(
        &self,
        channel: &str,
        group: &str,
        f: impl FnOnce(&mut Stream, &str) -> T,
    ) -> Result<T, EngineError> {
        let no_group = || EngineError::NoGroup { channel: channel.to_owned(), group: group.to_owned() };
        let mut streams = self.lock();
        if !streams.map.get(channel).is_some_and(|s| s.groups.contains_key(group)) {
            return Err(no_group());
        }
        // The pending lists change size: the difference goes to the budget.
        let out = streams
            .change(channel, |stream| {
                let before = stream.group_bytes;
                let out = f(stream, group);
                let after = stream.group_bytes;
                (out, after.saturating_sub(before), before.saturating_sub(after))
            })
            .ok_or_else(no_group)?;
        let limits = self.inner.limits;
        streams.trim_to(limits.max_bytes);
        Ok(out)
    }

    /// `XREADGROUP`: with `after`, this consumer's own pending entries after it (delivered again,
    /// so counted again); without, new entries (waiting up to `block` for some). Returns the
    /// entries with their delivery counts.
    ///
    /// # Errors
    /// [`EngineError::NoGroup`] when the group does not exist.
    pub(crate) async fn group_read(
        &self,
        channel: &str,
        group: &str,
        consumer: &str,
        after: Option<StreamId>,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<(Entry, u64)>, EngineError> {
        let now = Instant::now();
        if let Some(after) = after {
            return self.with_group(channel, group, |stream, group| {
                let Stream { entries, groups, .. } = stream;
                let state = groups.get_mut(group).expect("checked by with_group");
                let mut out = Vec::new();
                for (id, pending) in
                    state.pending.range_mut((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                {
                    if out.len() == count {
                        break;
                    }
                    if pending.consumer != consumer {
                        continue;
                    }
                    let at = entries.partition_point(|e| e.offset < *id);
                    if let Some(entry) = entries.get(at).filter(|e| e.offset == *id) {
                        pending.count += 1;
                        pending.delivered = now;
                        out.push((entry.clone(), pending.count));
                    }
                }
                out
            });
        }
        let appended = self.inner.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let fresh = self.take_new(channel, group, consumer, count)?;
        if !fresh.is_empty() || block.is_none() {
            return Ok(fresh);
        }
        self.inner.waiting.fetch_add(1, Ordering::AcqRel);
        let _ = tokio::time::timeout(block.unwrap_or_default(), appended).await;
        self.inner.waiting.fetch_sub(1, Ordering::AcqRel);
        self.take_new(channel, group, consumer, count)
    }

    fn take_new(
        &self,
        channel: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<(Entry, u64)>, EngineError> {
        self.with_group(channel, group, |stream, group| {
            let fresh = stream.after(stream.groups[group].last_delivered, count);
            let state = stream.groups.get_mut(group).expect("checked by with_group");
            let now = Instant::now();
            for entry in &fresh {
                state.last_delivered = entry.offset;
                let pending = Pending { consumer: consumer.to_owned(), delivered: now, count: 1 };
                if state.pending.insert(entry.offset, pending).is_none() {
                    stream.group_bytes += pending_cost(consumer);
                }
            }
            fresh.into_iter().map(|e| (e, 1)).collect()
        })
    }

    /// `XAUTOCLAIM`: gives `consumer` the entries pending longer than `min_idle`, scanning from
    /// `cursor`; returns where to continue (`0-0` after the end) and the entries with their new
    /// delivery counts. Pending entries whose data was trimmed are dropped from the list.
    ///
    /// # Errors
    /// [`EngineError::NoGroup`] when the group does not exist.
    pub(crate) fn group_autoclaim(
        &self,
        channel: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        cursor: StreamId,
        count: usize,
    ) -> Result<(StreamId, Vec<(Entry, u64)>), EngineError> {
        let now = Instant::now();
        self.with_group(channel, group, |stream, group| {
            let Stream { entries, groups, group_bytes, .. } = stream;
            let state = groups.get_mut(group).expect("checked by with_group");
            let mut out = Vec::new();
            let mut gone = Vec::new();
            let mut next = StreamId::ZERO;
            for (id, pending) in state.pending.range_mut(cursor..) {
                if out.len() == count {
                    next = *id;
                    break;
                }
                if now.duration_since(pending.delivered) < min_idle {
                    continue;
                }
                let at = entries.partition_point(|e| e.offset < *id);
                match entries.get(at).filter(|e| e.offset == *id) {
                    Some(entry) => {
                        *group_bytes = *group_bytes + pending_cost(consumer) - pending_cost(&pending.consumer);
                        pending.consumer = consumer.to_owned();
                        pending.delivered = now;
                        pending.count += 1;
                        out.push((entry.clone(), pending.count));
                    }
                    None => gone.push(*id),
                }
            }
            for id in gone {
                if let Some(pending) = state.pending.remove(&id) {
                    *group_bytes -= pending_cost(&pending.consumer);
                }
            }
            (next, out)
        })
    }

    /// Number of entries pending in the group.
    ///
    /// # Errors
    /// [`EngineError::NoGroup`] when the group does not exist.
    pub(crate) fn group_pending_count(&self, channel: &str, group: &str) -> Result<u64, EngineError> {
        self.with_group(channel, group, |stream, group| stream.groups[group].pending.len() as u64)
    }

    /// Which consumer each of `offsets` is pending for, if any (for all-or-nothing acks).
    ///
    /// # Errors
    /// [`EngineError::NoGroup`] when the group does not exist.
    pub(crate) fn group_pending(
        &self,
        channel: &str,
        group: &str,
        offsets: &[StreamId],
    ) -> Result<Vec<Option<String>>, EngineError> {
        self.with_group(channel, group, |stream, group| {
            offsets.iter().map(|id| stream.groups[group].pending.get(id).map(|p| p.consumer.clone())).collect()
        })
    }

    /// `XACK`: removes `offsets` from the pending list; returns how many were there.
    ///
    /// # Errors
    /// [`EngineError::NoGroup`] when the group does not exist.
    pub(crate) fn group_ack(&self, channel: &str, group: &str, offsets: &[StreamId]) -> Result<u64, EngineError> {
        self.with_group(channel, group, |stream, group| {
            let state = stream.groups.get_mut(group).expect("checked by with_group");
            let acked: Vec<Pending> = offsets.iter().filter_map(|id| state.pending.remove(id)).collect();
            stream.group_bytes -= acked.iter().map(|p| pending_cost(&p.consumer)).sum::<usize>();
            acked.len() as u64
        })
    }
}
