//! Redistribute's server: browsers speak WebSocket to any instance, every instance reads and
//! writes the same Redis Streams, and together they act as one system.
//!
//! - **Distributed**: a message published through any instance reaches subscribers on all of
//!   them, because every instance follows the streams in Redis rather than its own memory.
//! - **Replayable**: a subscriber starts after any offset (stream ID) and gets every later entry
//!   once, in order, with no gap between replayed history and the live tail; lost history is
//!   reported, never skipped silently.
//! - **Shardable**: consumer groups split a channel's entries among workers; a crashed worker's
//!   unacknowledged entries go to the others.
//!
//! ```no_run
//! use redistribute::{Config, ListenOptions, Server};
//!
//! # async fn run() -> Result<(), redistribute::Error> {
//! let server = Server::builder(Config::with_targets(["redis://127.0.0.1:6379"])).build()?;
//! server.maxlen("chat", 5000);
//! let offset = server.publish("chat", [("TEST_MESSAGE", r#"{"foo":"bar"}"#)]).await?;
//! println!("published at {offset}");
//! server.bind(&ListenOptions::new("127.0.0.1:8080".parse().unwrap())).await?.run().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: settings; [`rate`]: per-connection rate limits. [`access`]: tokens, channel rules, protected mode and origins, checked
//!   before [`hooks`], the application's say (permissions, filtering).
//! - `listener` accepts TCP (and TLS) into `slots`, `http` routes `/healthz`, the WebSocket upgrade and
//!   `static_files` (`--static`); `connection` runs one socket, `replay` brings a new subscriber
//!   from its offset to live.
//! - `hub` holds local subscribers and fans entries out; `reader` follows streams with a fixed
//!   number of blocking reads; [`engine`] talks to Redis, or holds streams in memory when no Redis
//!   target is configured (single instance, zero setup).
//! - [`groups`]: consumer groups (a fleet of workers sharing a channel): the delivery policy;
//!   `membership` runs one connection's membership, beside `replay` for subscriptions.
//! - `outbox` is a connection's send queue, bounded in bytes; `writer` drains it into the socket,
//!   and `progress` tells it whether the socket still accepts bytes.

pub mod access;
pub mod config;
pub mod engine;
pub mod groups;
pub mod hooks;
pub mod rate;

mod connection;
mod error;
mod http;
mod hub;
mod listener;
mod log_gate;
mod membership;
mod metrics;
mod outbox;
mod progress;
mod reader;
mod replay;
mod slots;
mod static_files;
mod tls;
mod writer;

pub use config::Config;
pub use engine::{Engine, MemoryEngine, MemoryLimits, RedisEngine};
pub use error::Error;
pub use hooks::{AllowAll, ConnInfo, Decision, Hooks, StreamEvent};
pub use listener::{ListenOptions, Listener};
pub use redistribute_protocol as protocol;
pub use redistribute_protocol::StreamId;

use access::Access;
use hooks::DynHooks;
use hub::Partition;
use redistribute_protocol::{Push, request::validate_channel};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by every task of one server.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) engine: Engine,
    pub(crate) partitions: Vec<Arc<Partition>>,
    pub(crate) hooks: Arc<dyn DynHooks>,
    pub(crate) access: Access,
    /// Consumer names held by this instance's connections.
    pub(crate) consumers: Arc<membership::ConsumerLeases>,
    /// Connection slots, shared by every listener.
    pub(crate) slots: slots::Slots,
    pub(crate) metrics: metrics::Metrics,
    /// Keeps events clients can cause at will from flooding the log.
    pub(crate) log_gate: log_gate::LogGate,
    maxlen: RwLock<HashMap<String, u64>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    next_conn_id: AtomicU64,
}

impl Shared {
    /// The partition (and so the reader) that follows `channel`: its target's share, then
    /// [`engine::partition_of`] over that target's readers (on a cluster, the partition its key
    /// names).
    pub(crate) fn partition_of(&self, channel: &str) -> &Arc<Partition> {
        let readers = self.partitions.len() / self.engine.target_count();
        let target = self.engine.target_of(channel);
        &self.partitions[target * readers + engine::partition_of(channel, readers)]
    }

    /// The trim of a publish that asks for none: the channel rule's, else the channel's own,
    /// else the default.
    pub(crate) fn maxlen_for(&self, channel: &str) -> Option<u64> {
        self.access.verdict(channel, None).maxlen.or_else(|| self.configured_maxlen(channel))
    }

    /// The channel's own trim (`--maxlen`, [`Server::maxlen`]), else the default: what applies
    /// when no channel rule sets one.
    pub(crate) fn configured_maxlen(&self, channel: &str) -> Option<u64> {
        let per_channel = self.maxlen.read().unwrap_or_else(|p| p.into_inner());
        per_channel.get(channel).copied().or(self.config.default_maxlen)
    }

    /// The metrics in Prometheus text, with the gauges that describe state brought up to date.
    pub(crate) fn render_metrics(&self) -> String {
        let metrics = &self.metrics;
        metrics.connections_open.set(self.slots.held() as i64);
        if let Engine::Memory(memory) = &self.engine {
            metrics.memory_bytes.set(memory.bytes() as i64);
            metrics.memory_entries.set(memory.entries() as i64);
        }
        metrics.render()
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Builds a [`Server`].
pub struct ServerBuilder {
    config: Config,
    hooks: Arc<dyn DynHooks>,
}

impl ServerBuilder {
    /// Installs application hooks (permissions, filtering). The default allows everything.
    pub fn hooks<H: Hooks>(mut self, hooks: H) -> Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// Starts the stream readers and returns the server. Must run inside a Tokio runtime.
    /// Redis need not be up yet: the readers retry until it is.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings or Redis URIs.
    pub fn build(self) -> Result<Server, Error> {
        let config = self.config;
        config.validate()?;
        let confirm = |redis: RedisEngine| redis.confirm_writes(config.publish_replicas, config.replica_wait);
        let (engine, readers) = if !config.cluster.is_empty() {
            let cluster = RedisEngine::cluster(
                &config.cluster,
                config.redis_timeout,
                &config.key_prefix,
                config.partitions,
                &config.redis_tls,
            )?;
            (Engine::Redis(confirm(cluster)), config.partitions)
        } else if config.targets.is_empty() {
            (Engine::Memory(MemoryEngine::new(config.memory)), config.readers_per_target)
        } else {
            let redis = RedisEngine::new(&config.targets, config.redis_timeout, &config.key_prefix, &config.redis_tls)?;
            (Engine::Redis(confirm(redis)), config.readers_per_target)
        };
        let partitions = (0..engine.target_count())
            .flat_map(|target| (0..readers).map(move |within| (target, within)))
            .map(|(target, within)| Arc::new(Partition::new(target, within, self.hooks.clone(), config.join_buffer)))
            .collect::<Vec<_>>();
        let access = Access::new(&config.access);
        let slots = slots::Slots::new(config.max_connections, config.max_connections_per_ip);
        let metrics = metrics::Metrics::new(match &engine {
            Engine::Redis(redis) => vec![Box::new(redis.command_latency().clone())],
            Engine::Memory(_) => Vec::new(),
        });
        let shared = Arc::new(Shared {
            maxlen: RwLock::new(config.maxlen.clone()),
            config,
            engine,
            partitions,
            hooks: self.hooks,
            access,
            consumers: Arc::default(),
            slots,
            metrics,
            log_gate: log_gate::LogGate::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_conn_id: AtomicU64::new(0),
        });
        for index in 0..shared.partitions.len() {
            shared.tasks.spawn(reader::run_reader(shared.clone(), index));
            shared.tasks.spawn(reader::run_waker(shared.clone(), index));
        }
        Ok(Server { shared })
    }
}

/// A running server: stream readers, and any listeners bound with [`Server::bind`]. Cheap to
/// clone; all clones control the same server.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("engine", &self.shared.engine).finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with this configuration.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder { config, hooks: Arc::new(AllowAll) }
    }

    /// The server's configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The storage engine: Redis, or the embedded memory engine when no target is configured.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Binds a listener; call [`Listener::run`] to serve it.
    ///
    /// # Errors
    /// When the address cannot be bound or the TLS files cannot be loaded.
    pub async fn bind(&self, options: &ListenOptions) -> Result<Listener, Error> {
        Listener::bind(self.shared.clone(), options).await
    }

    /// Appends an entry to `channel` (XADD) with the channel's default `MAXLEN ~`, and returns
    /// its offset. Subscribers on every instance receive it.
    ///
    /// # Errors
    /// [`Error::Protocol`] for an invalid channel name or no fields; [`Error::Engine`] when
    /// Redis fails.
    pub async fn publish<I, K, V>(&self, channel: &str, fields: I) -> Result<StreamId, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.publish_with_maxlen(channel, self.shared.maxlen_for(channel), fields).await
    }

    /// Like [`Server::publish`] with an explicit `MAXLEN ~` (or none).
    ///
    /// # Errors
    /// As for [`Server::publish`].
    pub async fn publish_with_maxlen<I, K, V>(
        &self,
        channel: &str,
        maxlen: Option<u64>,
        fields: I,
    ) -> Result<StreamId, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        validate_channel(channel, self.shared.config.limits.max_channel_len)?;
        let flat: Vec<String> = fields.into_iter().flat_map(|(k, v)| [k.into(), v.into()]).collect();
        if flat.is_empty() {
            return Err(protocol::ProtocolError::bad_request("publish needs at least one field/value pair").into());
        }
        let offset = self.shared.engine.publish(channel, &flat, maxlen).await?;
        self.shared.metrics.publishes.inc();
        Ok(offset)
    }

    /// Sets the default `MAXLEN ~` of `channel` for later publishes. It applies to this
    /// instance only.
    pub fn maxlen(&self, channel: &str, n: u64) {
        self.shared.maxlen.write().unwrap_or_else(|p| p.into_inner()).insert(channel.to_owned(), n);
    }

    /// Sends a transient message to this instance's live subscribers of `channel`, without
    /// storing it (so it has no offset and is not replayed). Returns how many sockets got it.
    pub fn broadcast(&self, channel: &str, message: serde_json::Value) -> usize {
        let push = Push {
            channel: Cow::Borrowed(channel),
            messages: Cow::Borrowed(&[]),
            truncated: false,
            reason: None,
            broadcast: Some(message),
        };
        self.shared.partition_of(channel).broadcast(channel, &push.to_json().into())
    }

    /// Checks that every Redis target answers.
    ///
    /// # Errors
    /// [`Error::Engine`] naming the first target that does not.
    pub async fn health(&self) -> Result<(), Error> {
        Ok(self.shared.engine.ping().await?)
    }

    /// Starts a graceful shutdown: listeners stop accepting, sockets close with code 1001.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Waits until every task of the server has finished after [`Server::shutdown`].
    pub async fn stopped(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}
