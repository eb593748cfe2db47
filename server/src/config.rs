//! Server settings: Redis targets, limits, queue sizes, trimming defaults.

use redistribute_protocol::Limits;
use std::collections::HashMap;
use std::time::Duration;

/// Everything a [`crate::Server`] can be tuned with. [`Config::default`] gives the documented
/// defaults on the embedded memory engine; [`Config::with_targets`] names Redis servers.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis URIs; channels are sharded over them by a stable hash of the channel name. Empty:
    /// the embedded memory engine (one instance only).
    pub targets: Vec<String>,
    /// Seed nodes of a Redis Cluster to run on, instead of `targets` (give one or the other).
    pub cluster: Vec<String>,
    /// Certificates for `rediss://` targets and cluster seeds.
    pub redis_tls: crate::engine::RedisTls,
    /// The cluster's partitions: each has one stream reader per instance and its own hash tag
    /// in the keys of its channels, so the number is fixed for the life of the data.
    pub partitions: usize,
    /// Redis replicas that must confirm a publish (`WAIT`) before it is answered `ok`; without
    /// their confirmation within `replica_wait` it is answered `unknown_outcome`. 0: off.
    pub publish_replicas: usize,
    /// How long a publish waits for `publish_replicas` confirmations.
    pub replica_wait: Duration,
    /// Bounds of the memory engine (used when `targets` is empty).
    pub memory: crate::engine::MemoryLimits,
    /// Largest text frame answered normally; larger ones get a `too_large` error reply.
    pub max_frame_bytes: usize,
    /// Channel name length and publish field count limits.
    pub limits: Limits,
    /// Most channels one connection may subscribe to at once.
    pub max_subscriptions: usize,
    /// Most simultaneous connections (WebSocket or HTTP); further ones are answered at once with
    /// HTTP 503 and `Retry-After` (`/healthz` and `/metrics` still answer).
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address; further ones get HTTP 429.
    pub max_connections_per_ip: usize,
    /// Bytes a connection may have queued for sending before it is closed as lagging (close
    /// code 4000). A frame shared by many subscribers counts in full for each.
    pub send_queue_bytes: usize,
    /// A connection whose socket accepts no bytes for this long is closed as lagging (4000) and
    /// its memory released, whether or not it ever reads again.
    pub write_timeout: Duration,
    /// How often the server pings each client (WebSocket ping frames; browsers answer them).
    pub ping_interval: Duration,
    /// A client from which no complete frame (pongs included) arrives for this long is closed
    /// with 4002. This also bounds how long one frame may take to arrive.
    pub idle_timeout: Duration,
    /// Per-connection request and publish rates (channel rules may add their own).
    pub rate_limits: crate::rate::RateLimits,
    /// Replay pages are sized to hold about this many bytes (at most `history_page` entries).
    pub replay_page_bytes: usize,
    /// Live entries parked for one subscriber while its replay runs, before it is closed as
    /// lagging.
    pub join_buffer: usize,
    /// Entries per history read (`XRANGE … COUNT`).
    pub history_page: usize,
    /// Entries per stream per blocking read (`XREAD COUNT`).
    pub read_count: usize,
    /// Stream readers (dedicated Redis connections) per target; channels are hashed over them.
    pub readers_per_target: usize,
    /// How long one `XREAD BLOCK` waits before it is reissued.
    pub block: Duration,
    /// Timeout of Redis commands and connection attempts.
    pub redis_timeout: Duration,
    /// `MAXLEN ~` applied to publishes with no per-request or per-channel cap.
    pub default_maxlen: Option<u64>,
    /// Per-channel `MAXLEN ~`, by channel name.
    pub maxlen: HashMap<String, u64>,
    /// WebSocket read buffer per connection. Small on purpose: tungstenite zero-fills it before
    /// each read, which costs real CPU with many connections at 128 KiB.
    pub read_buffer_bytes: usize,
    /// Serve the files of this directory over plain HTTP GET (a web app next to its socket).
    pub static_dir: Option<std::path::PathBuf>,
    /// Consumer groups: how long an entry may stay unacknowledged before others claim it.
    pub group_claim_idle: Duration,
    /// Consumer groups: deliveries after which an entry goes to `<channel>:dead`.
    pub group_max_deliveries: u64,
    /// Consumer groups: `MAXLEN ~` of the dead-letter streams.
    pub dead_letter_maxlen: u64,
    /// How long a publish's `idempotency_key` is remembered: a retry within it is answered with
    /// the first publish's offset (`duplicate`), not stored again.
    pub idempotency_ttl: Duration,
    /// Prepended to channel names to make Redis keys: channel `chat` is key `rd:chat` by default,
    /// so clients can only reach keys under it. Empty: channel names are keys (any key a client
    /// names, including other applications' data, can then be read, written and trimmed).
    pub key_prefix: String,
    /// Tokens, channel rules, protected mode and allowed origins. The default is open mode for
    /// loopback peers only.
    pub access: crate::access::AccessConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            targets: Vec::new(),
            memory: crate::engine::MemoryLimits::default(),
            max_frame_bytes: 1 << 20,
            limits: Limits::default(),
            max_subscriptions: 256,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            send_queue_bytes: 4 << 20,
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            replay_page_bytes: 256 << 10,
            rate_limits: crate::rate::RateLimits::default(),
            join_buffer: 100_000,
            history_page: 1000,
            read_count: 1000,
            readers_per_target: 1,
            cluster: Vec::new(),
            redis_tls: crate::engine::RedisTls::default(),
            partitions: 16,
            publish_replicas: 0,
            replica_wait: Duration::from_secs(1),
            block: Duration::from_secs(5),
            redis_timeout: Duration::from_secs(5),
            default_maxlen: None,
            maxlen: HashMap::new(),
            read_buffer_bytes: 4 << 10,
            static_dir: None,
            group_claim_idle: Duration::from_secs(30),
            group_max_deliveries: 5,
            dead_letter_maxlen: 10_000,
            idempotency_ttl: Duration::from_secs(600),
            key_prefix: "rd:".to_owned(),
            access: crate::access::AccessConfig::default(),
        }
    }
}

/// Most partitions a cluster may have: each is a stream reader (a Redis connection) per instance.
pub const MAX_PARTITIONS: usize = 1024;

impl Config {
    /// Defaults with the given Redis targets.
    pub fn with_targets<I, S>(targets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config { targets: targets.into_iter().map(Into::into).collect(), ..Config::default() }
    }

    /// Defaults on the Redis Cluster reached through these seed nodes.
    pub fn with_cluster<I, S>(seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config { cluster: seeds.into_iter().map(Into::into).collect(), ..Config::default() }
    }

    /// Frames above this are not even read: the connection closes with 1009. Between
    /// `max_frame_bytes` and this, the client gets a `too_large` reply and stays connected.
    pub fn hard_frame_limit(&self) -> usize {
        self.max_frame_bytes.saturating_mul(2).max(self.max_frame_bytes + (64 << 10))
    }

    /// Checks that the numbers make sense.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_channel_len", self.limits.max_channel_len),
            ("max_fields", self.limits.max_fields),
            ("max_offsets", self.limits.max_offsets),
            ("max_subscriptions", self.max_subscriptions),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("send_queue_bytes", self.send_queue_bytes),
            ("replay_page_bytes", self.replay_page_bytes),
            ("join_buffer", self.join_buffer),
            ("history_page", self.history_page),
            ("read_count", self.read_count),
            ("readers_per_target", self.readers_per_target),
            ("partitions", self.partitions),
            ("read_buffer_bytes", self.read_buffer_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(crate::Error::Config(format!("{name} must be at least 1")));
        }
        if !self.limits.max_fields.is_multiple_of(2) {
            return Err(crate::Error::Config("max_fields must be even (fields come in pairs)".into()));
        }
        let durations = [
            ("write_timeout", self.write_timeout),
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("idempotency_ttl", self.idempotency_ttl),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(crate::Error::Config(format!("{name} must be longer than zero")));
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(crate::Error::Config(
                "idle_timeout must be longer than ping_interval (a live client answers each ping)".into(),
            ));
        }
        let rates = [self.rate_limits.requests, self.rate_limits.publishes, self.rate_limits.auths]
            .into_iter()
            .chain(self.access.rules.iter().map(|r| r.publish_rate))
            .flatten();
        for rate in rates {
            crate::rate::Rate::new(rate.per_second, rate.burst).map_err(crate::Error::Config)?;
        }
        let max = redistribute_protocol::request::MAX_MAXLEN;
        let maxlens = self
            .maxlen
            .values()
            .copied()
            .chain(self.default_maxlen)
            .chain([self.dead_letter_maxlen])
            .chain(self.access.rules.iter().filter_map(|r| r.maxlen));
        if let Some(n) = maxlens.into_iter().find(|n| *n == 0 || *n > max) {
            return Err(crate::Error::Config(format!("maxlen {n} is out of range: 1 to {max}")));
        }
        if !self.targets.is_empty() && !self.cluster.is_empty() {
            return Err(crate::Error::Config("give Redis targets or a Redis Cluster, not both".into()));
        }
        if self.publish_replicas > 0 && self.targets.is_empty() && self.cluster.is_empty() {
            return Err(crate::Error::Config(
                "publish_replicas needs Redis (the memory engine has no replicas)".into(),
            ));
        }
        if self.redis_tls != crate::engine::RedisTls::default() && self.targets.is_empty() && self.cluster.is_empty() {
            return Err(crate::Error::Config(
                "Redis TLS files are given but no Redis (the memory engine would ignore them)".into(),
            ));
        }
        if self.partitions > MAX_PARTITIONS {
            return Err(crate::Error::Config(format!("at most {MAX_PARTITIONS} partitions")));
        }
        if self.targets.is_empty()
            && self.cluster.is_empty()
            && (self.memory.max_bytes == 0 || self.memory.max_entries_per_channel == 0)
        {
            return Err(crate::Error::Config("memory engine limits must be at least 1".into()));
        }
        Ok(())
    }
}
