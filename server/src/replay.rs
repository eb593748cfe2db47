//! Bringing a new subscriber from its offset to the live tail with no gap and no duplicate.
//!
//! The subscriber was registered as *joining* before its reply went out, so every live batch the
//! reader fans out from then on is parked for it. The replay reads history after the offset in
//! pages (each read atomically with the stream's state, to notice trimming that races it), sends
//! it, then hands over the parked batches, skipping what history already covered. Sends wait
//! for room in the client's queue, so a replay goes at the client's pace.

use crate::Shared;
use crate::engine::{Chain, HistoryPage};
use crate::error::client_error;
use crate::hooks::ConnInfo;
use crate::hub::render;
use crate::outbox::Outbox;
use redistribute_protocol::{Backoff, StreamId, close};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Entries in a replay's first page, before the entries' size is known.
const FIRST_PAGE: usize = 16;

/// A replay waiting to run once the subscribe reply is queued.
pub(crate) struct Replay {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Arc<ConnInfo>,
    pub(crate) outbox: Outbox,
    pub(crate) channel: String,
    /// The offset the subscription starts after.
    pub(crate) after: StreamId,
    /// Loss already reported by the subscribe reply (see [`crate::engine::StreamState::loss_after`]);
    /// pages report only newer losses.
    pub(crate) reported_loss: Option<StreamId>,
}

impl Replay {
    pub(crate) async fn run(self) {
        let Some(sent) = self.history().await else { return };
        self.hand_over(sent).await;
    }

    /// Sends history after `self.after`; returns the last offset sent (`None` if the connection
    /// went away). The next page is read while the current one is being sent, so Redis and the
    /// client's socket work at the same time (at most two pages are held).
    async fn history(&self) -> Option<StreamId> {
        let Replay { shared, conn, outbox, channel, .. } = self;
        // The first page is a probe: entry sizes are unknown until one page is read.
        let mut page_size = shared.config.history_page.min(FIRST_PAGE);
        let mut sent = self.after;
        let mut reported = self.reported_loss;
        let mut page = self.fetch(sent, page_size).await?;
        loop {
            let loss = page.state.loss_after(sent);
            let lost = loss > reported;
            reported = reported.max(loss);
            let frame = render(&*shared.hooks, conn, channel, &page.entries, sent, lost, None);
            let send = async {
                if let Some(frame) = frame {
                    outbox.send(frame).await.ok()?;
                    shared.metrics.replay_pages.inc();
                }
                Some(())
            };
            let last = page.entries.last().map_or(sent, |e| e.offset);
            if page.entries.len() < page_size {
                send.await?;
                return Some(last);
            }
            page_size = next_page_size(&page.entries, shared.config.replay_page_bytes, shared.config.history_page);
            let (delivered, next) = tokio::join!(send, self.fetch(last, page_size));
            delivered?;
            (page, sent) = (next?, last);
        }
    }

    /// Reads up to `count` entries after `after`, waiting out storage outages; `None` (and the
    /// connection kicked) on any other error.
    async fn fetch(&self, after: StreamId, count: usize) -> Option<HistoryPage> {
        let Replay { shared, outbox, channel, .. } = self;
        let mut retry = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match shared.engine.history_page(channel, after, count).await {
                Ok(page) => return Some(page),
                Err(e) if e.is_unavailable() => {
                    // Live batches keep being parked meanwhile (up to the join buffer limit).
                    warn!(channel, error = %Chain(&e), "replay paused: storage unavailable");
                    tokio::time::sleep(retry.next_delay(rand::random())).await;
                }
                Err(e) => {
                    outbox.kick(close::INTERNAL_ERROR, &client_error(&e).message);
                    return None;
                }
            }
        }
    }

    /// Sends the live batches parked during the replay, until none are left and the subscriber
    /// turns live.
    async fn hand_over(&self, mut sent: StreamId) {
        let Replay { shared, conn, outbox, channel, .. } = self;
        let partition = shared.partition_of(channel);
        while let Some(batches) = partition.take_buffer(channel, conn.id, sent) {
            for batch in batches {
                if let Some(frame) =
                    render(&*shared.hooks, conn, channel, &batch.entries, sent, false, Some(batch.frame(channel)))
                    && outbox.send(frame).await.is_err()
                {
                    return;
                }
                sent = sent.max(batch.entries.last().map_or(sent, |e| e.offset));
            }
        }
    }
}

/// Entries to ask for next so that a page holds about `budget` bytes, judged by the page just
/// read: between 1 and `max`.
fn next_page_size(entries: &[redistribute_protocol::Entry], budget: usize, max: usize) -> usize {
    let bytes: usize = entries.iter().map(|e| e.fields.iter().map(|f| f.len() + 3).sum::<usize>() + 48).sum();
    let per_entry = bytes.div_ceil(entries.len().max(1)).max(1);
    (budget / per_entry).clamp(1, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redistribute_protocol::Entry;

    fn entries(n: usize, value_len: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry { offset: StreamId::new(i as u64, 0), fields: vec!["k".into(), "v".repeat(value_len)] })
            .collect()
    }

    #[test]
    fn pages_shrink_for_large_entries_and_grow_back_for_small_ones() {
        assert_eq!(next_page_size(&entries(1000, 10), 1 << 20, 1000), 1000, "small entries: the entry cap");
        let big = next_page_size(&entries(1000, 100_000), 1 << 20, 1000);
        assert!((9..=11).contains(&big), "about 1 MiB of 100 kB entries: {big}");
        assert_eq!(next_page_size(&entries(1, 5 << 20), 1 << 20, 1000), 1, "never below one entry");
        assert_eq!(next_page_size(&[], 1 << 20, 1000), 1000);
    }
}
