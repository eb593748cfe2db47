//! A connection's membership in a consumer group: pulls deliveries for it and pushes them.
//!
//! Deliveries are pulled only as fast as the client takes them (sends wait for room in its
//! queue), so a slow member simply gets less of the work. Unacknowledged entries stay pending in
//! Redis when the connection ends, to be claimed by the other members after the idle time.

use crate::Shared;
use crate::engine::Chain;
use crate::engine::EngineError;
use crate::error::client_error;
use crate::groups::Consumer;
use crate::outbox::Outbox;
use redistribute_protocol::frame::{GroupEntry, GroupPush};
use redistribute_protocol::{Backoff, close};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// The consumer names held by this instance's live connections, so that a second connection
/// cannot join as a consumer another one holds (it would take over its deliveries).
#[derive(Debug, Default)]
pub(crate) struct ConsumerLeases {
    held: Mutex<HashSet<(String, String, String)>>,
}

impl ConsumerLeases {
    /// Holds consumer `consumer` of `group` of `channel`; `None` if a live connection holds it.
    pub(crate) fn lease(self: &Arc<Self>, channel: &str, group: &str, consumer: &str) -> Option<ConsumerLease> {
        let key = (channel.to_owned(), group.to_owned(), consumer.to_owned());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(key.clone()).then(|| ConsumerLease { leases: self.clone(), key })
    }
}

/// A held consumer name; dropping it lets the name go.
#[derive(Debug)]
pub(crate) struct ConsumerLease {
    leases: Arc<ConsumerLeases>,
    key: (String, String, String),
}

impl ConsumerLease {
    /// The consumer name.
    pub(crate) fn consumer(&self) -> &str {
        &self.key.2
    }
}

impl Drop for ConsumerLease {
    fn drop(&mut self) {
        self.leases.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// A joined member, ready to run.
pub(crate) struct Membership {
    pub(crate) shared: Arc<Shared>,
    pub(crate) outbox: Outbox,
    pub(crate) channel: String,
    pub(crate) group: String,
}

impl Membership {
    pub(crate) async fn run(self, mut consumer: Consumer) {
        let mut retry = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let batch = tokio::select! {
                batch = consumer.next() => batch,
                () = self.outbox.kicked() => return,
            };
            let error = match batch {
                Ok(batch) if batch.is_empty() => continue,
                Ok(batch) => {
                    retry.reset();
                    let messages = batch
                        .into_iter()
                        .map(|d| GroupEntry {
                            offset: d.entry.offset,
                            fields: d.entry.fields,
                            deliveries: d.deliveries,
                        })
                        .collect();
                    let push = GroupPush {
                        channel: Cow::Borrowed(&self.channel),
                        group: Cow::Borrowed(&self.group),
                        messages,
                    };
                    let text = serde_json::to_string(&push).expect("pushes serialise");
                    if self.outbox.send(text.into()).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => e,
            };
            match error {
                EngineError::Unavailable { .. } | EngineError::NoGroup { .. } => {
                    warn!(channel = self.channel, group = self.group, error = %Chain(&error), "group member rejoining");
                    loop {
                        tokio::time::sleep(retry.next_delay(rand::random())).await;
                        match consumer.rejoin(&self.shared.engine).await {
                            Ok(()) => break,
                            Err(e) if e.is_unavailable() => continue,
                            Err(e) => return self.outbox.kick(close::INTERNAL_ERROR, &client_error(&e).message),
                        }
                    }
                }
                other => return self.outbox.kick(close::INTERNAL_ERROR, &client_error(&other).message),
            }
        }
    }
}
