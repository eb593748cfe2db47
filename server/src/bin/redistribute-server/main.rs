//! `redistribute-server`: parses options (and the `--config` file), starts the server, and
//! shuts it down gracefully on Ctrl-C or SIGTERM. All behaviour lives in the `redistribute`
//! library.

mod config_file;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use redistribute::access::{AccessConfig, ChannelRule, TokenVerifier};
use redistribute::engine::RedisTls;
use redistribute::rate::{Rate, RateLimits};
use redistribute::{Config, Engine, ListenOptions, Server};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// WebSocket server that bridges browsers to Redis Streams.
///
/// Every option can also be set through the environment variable shown with it; list options
/// take comma-separated values there.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// TOML file with settings (any option below, by its long name) and `[[channels]]` rules;
    /// options on the command line or in the environment override it.
    #[arg(long, env = "REDISTRIBUTE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Shared secret that signs connection tokens (HS256/384/512), at least 32 bytes.
    #[arg(long, env = "REDISTRIBUTE_TOKEN_SECRET", hide_env_values = true, group = "token_key")]
    token_secret: Option<String>,

    /// File holding the token secret (its content, without a trailing newline).
    #[arg(long, env = "REDISTRIBUTE_TOKEN_SECRET_FILE", value_name = "FILE", group = "token_key")]
    token_secret_file: Option<PathBuf>,

    /// PEM public key that verifies connection tokens (RS256/384/512, ES256/384, EdDSA).
    #[arg(long, env = "REDISTRIBUTE_TOKEN_PUBLIC_KEY", value_name = "FILE", group = "token_key")]
    token_public_key: Option<PathBuf>,

    /// Tokens must carry this issuer (`iss`).
    #[arg(long, env = "REDISTRIBUTE_TOKEN_ISSUER")]
    token_issuer: Option<String>,

    /// Tokens must carry this audience (`aud`).
    #[arg(long, env = "REDISTRIBUTE_TOKEN_AUDIENCE")]
    token_audience: Option<String>,

    /// With no token key and no channel rules, serve every peer with every permission (by
    /// default such an open server serves loopback peers only).
    #[arg(long, env = "REDISTRIBUTE_OPEN")]
    open: bool,

    /// Browser origin allowed to connect besides the server's own (`*`: any); repeatable.
    #[arg(long = "allowed-origin", env = "REDISTRIBUTE_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,

    /// Address to listen on for WebSocket upgrades (on `/`) and `GET /healthz`.
    #[arg(long, env = "REDISTRIBUTE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Redis URI; repeat to shard channels over several Redis servers (stable hash of the name).
    /// Without it the server runs on its embedded memory engine: no setup, one instance only,
    /// nothing kept across restarts.
    #[arg(long = "redis", env = "REDISTRIBUTE_REDIS", value_delimiter = ',')]
    redis: Vec<String>,

    /// Seed node of a Redis Cluster to run on (`redis://[user:password@]host:port`); repeat for
    /// more seeds. Channels are spread over the cluster's masters by partition (--partitions).
    #[arg(long = "redis-cluster", env = "REDISTRIBUTE_REDIS_CLUSTER", value_delimiter = ',', conflicts_with = "redis")]
    redis_cluster: Vec<String>,

    /// PEM certificates of the authorities that sign the Redis servers' certificates, for
    /// `rediss://` URIs (default: the system's trust store). Certificates are always verified.
    #[arg(long = "redis-ca", env = "REDISTRIBUTE_REDIS_CA")]
    redis_ca: Option<PathBuf>,

    /// PEM client certificate presented to Redis over TLS (Redis's `tls-auth-clients yes`).
    #[arg(long = "redis-cert", env = "REDISTRIBUTE_REDIS_CERT", requires = "redis_key")]
    redis_cert: Option<PathBuf>,

    /// PEM private key of --redis-cert.
    #[arg(long = "redis-key", env = "REDISTRIBUTE_REDIS_KEY", requires = "redis_cert")]
    redis_key: Option<PathBuf>,

    /// Answer a publish `ok` only once this many Redis replicas confirmed it (`WAIT`, up to 1 s;
    /// else `unknown_outcome`), so acknowledged publishes survive a failover. 0: off.
    #[arg(long, env = "REDISTRIBUTE_PUBLISH_REPLICAS", default_value_t = 0)]
    publish_replicas: usize,

    /// Redis Cluster: partitions of the channels, each with its own hash tag (`{p<n>.<k>}`) in the
    /// keys and one stream reader per instance. Part of every key: fixed for the life of the data.
    #[arg(long, env = "REDISTRIBUTE_PARTITIONS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    partitions: u64,

    /// Memory engine: total bytes of messages kept before the oldest are trimmed.
    #[arg(long, env = "REDISTRIBUTE_MEMORY_MAX_BYTES", default_value_t = 256 << 20)]
    memory_max_bytes: usize,

    /// Memory engine: messages kept per channel.
    #[arg(long, env = "REDISTRIBUTE_MEMORY_MAX_ENTRIES", default_value_t = 100_000)]
    memory_max_entries: u64,

    /// PEM private key; with --tls-cert the server speaks TLS (wss://).
    #[arg(long, env = "REDISTRIBUTE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM certificate chain for --tls-key.
    #[arg(long, env = "REDISTRIBUTE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Per-channel trim, CHANNEL=N (XADD MAXLEN ~ N); repeatable.
    #[arg(long = "maxlen", env = "REDISTRIBUTE_MAXLEN", value_delimiter = ',', value_parser = parse_maxlen)]
    maxlen: Vec<(String, u64)>,

    /// Trim applied to channels with no --maxlen and publishes with no maxlen of their own.
    #[arg(long, env = "REDISTRIBUTE_DEFAULT_MAXLEN", value_parser = clap::value_parser!(u64).range(1..))]
    default_maxlen: Option<u64>,

    /// Largest text frame answered normally, in bytes; larger ones get a `too_large` error, and
    /// frames over twice this (at least 64 KiB more) close the connection with 1009.
    #[arg(long, env = "REDISTRIBUTE_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    max_frame_bytes: usize,

    /// Longest channel name, in bytes.
    #[arg(long, env = "REDISTRIBUTE_MAX_CHANNEL_LEN", default_value_t = 256)]
    max_channel_len: usize,

    /// Most strings in one publish's fields (names and values counted separately; even).
    #[arg(long, env = "REDISTRIBUTE_MAX_FIELDS", default_value_t = 256)]
    max_fields: usize,

    /// Most channels one connection may subscribe to.
    #[arg(long, env = "REDISTRIBUTE_MAX_SUBSCRIPTIONS", default_value_t = 256)]
    max_subscriptions: usize,

    /// Most simultaneous connections; further ones get HTTP 503 with Retry-After at once
    /// (`/healthz` and `/metrics` still answer).
    #[arg(long, env = "REDISTRIBUTE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// Most simultaneous connections from one IP address; further ones get HTTP 429.
    #[arg(long, env = "REDISTRIBUTE_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    max_connections_per_ip: usize,

    /// Bytes queued per connection before a slow client is closed with code 4000.
    #[arg(long, env = "REDISTRIBUTE_SEND_QUEUE_BYTES", default_value_t = 4 << 20)]
    send_queue_bytes: usize,

    /// A client whose socket accepts nothing for this long is closed with code 4000 (e.g. `10s`).
    #[arg(long, env = "REDISTRIBUTE_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    write_timeout: Duration,

    /// How often the server pings each client (e.g. `25s`).
    #[arg(long, env = "REDISTRIBUTE_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    ping_interval: Duration,

    /// A client heard from (frame or pong) less often than this is closed with code 4002; also
    /// the longest one frame may take to arrive (e.g. `60s`).
    #[arg(long, env = "REDISTRIBUTE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Requests (frames of any kind) per second per connection; 0 turns the limit off. Over it,
    /// requests get `rate_limited` with a `retry_after_ms`.
    #[arg(long, env = "REDISTRIBUTE_REQUEST_RATE", default_value_t = 2000.0)]
    request_rate: f64,

    /// Requests a connection may send at once after a pause.
    #[arg(long, env = "REDISTRIBUTE_REQUEST_BURST", default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..))]
    request_burst: u32,

    /// Publishes per second per connection; 0 turns the limit off (channel rules may set their own).
    #[arg(long, env = "REDISTRIBUTE_PUBLISH_RATE", default_value_t = 1000.0)]
    publish_rate: f64,

    /// Publishes a connection may send at once after a pause.
    #[arg(long, env = "REDISTRIBUTE_PUBLISH_BURST", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    publish_burst: u32,

    /// `auth` requests (token checks) per second per connection; 0 turns the limit off.
    #[arg(long, env = "REDISTRIBUTE_AUTH_RATE", default_value_t = 1.0)]
    auth_rate: f64,

    /// `auth` requests a connection may send at once after a pause.
    #[arg(long, env = "REDISTRIBUTE_AUTH_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    auth_burst: u32,

    /// `rate_limited` replies in a row after which a connection is closed with code 4003.
    #[arg(long, env = "REDISTRIBUTE_RATE_LIMIT_STRIKES", default_value_t = 100)]
    rate_limit_strikes: u32,

    /// Replays read history in pages of about this many bytes (at most --batch entries).
    #[arg(long, env = "REDISTRIBUTE_REPLAY_PAGE_BYTES", default_value_t = 256 << 10)]
    replay_page_bytes: usize,

    /// Live entries parked per subscriber during its replay before it is closed with code 4000.
    #[arg(long, env = "REDISTRIBUTE_JOIN_BUFFER", default_value_t = 100_000)]
    join_buffer: usize,

    /// Blocking stream readers (dedicated Redis connections) per Redis target.
    #[arg(long, env = "REDISTRIBUTE_READERS", default_value_t = 1)]
    readers: usize,

    /// Entries per stream per read, and per history page.
    #[arg(long, env = "REDISTRIBUTE_BATCH", default_value_t = 1000)]
    batch: usize,

    /// Timeout of Redis commands, in milliseconds.
    #[arg(long, env = "REDISTRIBUTE_REDIS_TIMEOUT_MS", default_value_t = 5000)]
    redis_timeout_ms: u64,

    /// Serve the files of this directory (GET; `/` serves its index.html) next to the WebSocket.
    #[arg(long = "static", env = "REDISTRIBUTE_STATIC", value_name = "DIR")]
    static_dir: Option<PathBuf>,

    /// Consumer groups: milliseconds an entry may stay unacknowledged before other consumers claim it.
    #[arg(long, env = "REDISTRIBUTE_GROUP_CLAIM_IDLE_MS", default_value_t = 30_000)]
    group_claim_idle_ms: u64,

    /// Consumer groups: deliveries after which an entry moves to the `<channel>:dead` stream.
    #[arg(long, env = "REDISTRIBUTE_GROUP_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    group_max_deliveries: u64,

    /// Consumer groups: most entries kept in each dead-letter stream (`XADD MAXLEN ~`).
    #[arg(long, env = "REDISTRIBUTE_DEAD_LETTER_MAXLEN", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    dead_letter_maxlen: u64,

    /// How long a publish's `idempotency_key` is remembered: a retry within it gets the first
    /// publish's offset (`"duplicate": true`) instead of a second entry (e.g. `10m`).
    #[arg(long, env = "REDISTRIBUTE_IDEMPOTENCY_TTL", default_value = "10m", value_parser = parse_duration)]
    idempotency_ttl: Duration,

    /// Seconds to wait for connections to close on shutdown.
    #[arg(long, env = "REDISTRIBUTE_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,

    /// Prepended to channel names to make Redis keys (channel `chat` is key `rd:chat`); clients
    /// cannot reach keys outside it. `''` makes channel names the keys themselves, which lets
    /// clients read, write and trim any key (other applications' data included).
    #[arg(long, env = "REDISTRIBUTE_KEY_PREFIX", default_value = "rd:")]
    key_prefix: String,

    /// Log filter: a level, and `target=level` pairs, comma-separated (e.g. `info` or
    /// `warn,redistribute=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,

    /// Log lines as human-readable `text`, or `json` (one object per line, for log pipelines).
    #[arg(long, env = "REDISTRIBUTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// What to do instead of serving.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the Redis key that holds CHANNEL (with --key-prefix; with --redis-cluster, the
    /// cluster's key, and its partition and slot on stderr), e.g. for `XADD <key> * f v`.
    Key {
        /// The channel.
        channel: String,
    },
    /// Copy every channel (streams with their consumer groups, dead letters, idempotency
    /// records) of the Redis at FROM into the Redis Cluster of --redis-cluster, under their
    /// cluster keys (--key-prefix, --partitions). The source is left as it was.
    Migrate {
        /// The single Redis holding the channels now (`redis://host:port`).
        #[arg(long)]
        from: String,
    },
    /// Print the Redis ACL rule that allows the server exactly the commands it sends, on the keys
    /// under --key-prefix and no others, e.g. for an ACL file:
    /// `echo "user redistribute on >PASSWORD $(redistribute-server redis-acl)" >> users.acl`.
    RedisAcl,
}

fn parse_maxlen(text: &str) -> Result<(String, u64), String> {
    let (channel, n) = text.rsplit_once('=').ok_or("expected CHANNEL=N")?;
    let n: u64 = n.parse().map_err(|_| format!("{n:?} is not a positive integer"))?;
    if channel.is_empty() || n == 0 {
        return Err("expected CHANNEL=N with a non-empty channel and N ≥ 1".into());
    }
    Ok((channel.to_owned(), n))
}

/// A duration such as `250ms`, `10s` or `5m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or("add a unit: ms, s or m (e.g. 10s)")?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

impl Args {
    /// Parses the command line and environment, then the `--config` file for what they left
    /// unset. Exits with usage on bad arguments.
    fn load() -> anyhow::Result<(Args, Vec<ChannelRule>)> {
        let argv: Vec<OsString> = std::env::args_os().collect();
        let matches = Args::command().get_matches_from(&argv);
        let args = Args::from_arg_matches(&matches)?;
        let Some(path) = &args.config else { return Ok((args, Vec::new())) };
        let file = config_file::load(path, &Args::command(), &matches)?;
        let matches = Args::command().get_matches_from(argv.into_iter().chain(file.args));
        Ok((Args::from_arg_matches(&matches)?, file.channels))
    }

    fn tokens(&self) -> anyhow::Result<Option<TokenVerifier>> {
        let verifier = if let Some(secret) = &self.token_secret {
            TokenVerifier::from_secret(secret.as_bytes())
        } else if let Some(path) = &self.token_secret_file {
            let secret = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
            TokenVerifier::from_secret(secret)
        } else if let Some(path) = &self.token_public_key {
            TokenVerifier::from_public_key_file(path)
        } else {
            return Ok(None);
        };
        let mut verifier = verifier.map_err(|e| anyhow::anyhow!("token key: {e}"))?;
        if let Some(issuer) = &self.token_issuer {
            verifier = verifier.issuer(issuer);
        }
        if let Some(audience) = &self.token_audience {
            verifier = verifier.audience(audience);
        }
        Ok(Some(verifier))
    }

    fn redis_tls(&self) -> RedisTls {
        RedisTls {
            ca_file: self.redis_ca.clone(),
            cert_file: self.redis_cert.clone(),
            key_file: self.redis_key.clone(),
        }
    }

    fn config(&self, channels: Vec<ChannelRule>) -> anyhow::Result<Config> {
        let mut config = Config::with_targets(self.redis.iter().cloned());
        config.cluster = self.redis_cluster.clone();
        config.redis_tls = self.redis_tls();
        config.partitions = self.partitions as usize;
        config.publish_replicas = self.publish_replicas;
        config.memory.max_bytes = self.memory_max_bytes;
        config.memory.max_entries_per_channel = self.memory_max_entries;
        config.max_frame_bytes = self.max_frame_bytes;
        config.limits.max_channel_len = self.max_channel_len;
        config.limits.max_fields = self.max_fields;
        config.max_subscriptions = self.max_subscriptions;
        config.max_connections = self.max_connections;
        config.max_connections_per_ip = self.max_connections_per_ip;
        config.send_queue_bytes = self.send_queue_bytes;
        config.write_timeout = self.write_timeout;
        config.ping_interval = self.ping_interval;
        config.idle_timeout = self.idle_timeout;
        config.replay_page_bytes = self.replay_page_bytes;
        let rate = |per_second: f64, burst: u32| -> anyhow::Result<Option<Rate>> {
            if per_second == 0.0 {
                return Ok(None);
            }
            Rate::new(per_second, burst).map(Some).map_err(|e| anyhow::anyhow!(e))
        };
        config.rate_limits = RateLimits {
            requests: rate(self.request_rate, self.request_burst).context("--request-rate")?,
            publishes: rate(self.publish_rate, self.publish_burst).context("--publish-rate")?,
            auths: rate(self.auth_rate, self.auth_burst).context("--auth-rate")?,
            strikes: self.rate_limit_strikes,
        };
        config.join_buffer = self.join_buffer;
        config.readers_per_target = self.readers;
        config.read_count = self.batch;
        config.history_page = self.batch;
        config.redis_timeout = Duration::from_millis(self.redis_timeout_ms);
        config.default_maxlen = self.default_maxlen;
        config.maxlen = self.maxlen.iter().cloned().collect();
        config.static_dir = self.static_dir.clone();
        config.group_claim_idle = Duration::from_millis(self.group_claim_idle_ms);
        config.group_max_deliveries = self.group_max_deliveries;
        config.dead_letter_maxlen = self.dead_letter_maxlen;
        config.idempotency_ttl = self.idempotency_ttl;
        config.key_prefix = self.key_prefix.clone();
        config.access = AccessConfig {
            tokens: self.tokens()?,
            rules: channels,
            open: self.open,
            allowed_origins: self.allowed_origins.clone(),
        };
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redistribute-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let (args, channels) = Args::load()?;
    if let Some(Command::Key { channel }) = &args.command {
        redistribute::protocol::request::validate_channel(channel, args.max_channel_len)?;
        if args.redis_cluster.is_empty() {
            println!("{}{channel}", args.key_prefix);
        } else {
            let partitions = args.partitions as usize;
            let key = redistribute::engine::cluster_key(&args.key_prefix, channel, partitions);
            println!("{key}");
            let partition = redistribute::engine::partition_of(channel, partitions);
            let slot = redistribute::engine::slot_of(&key);
            eprintln!("channel {channel}: partition {partition} of {partitions}, slot {slot} (Redis Cluster)");
        }
        return Ok(());
    }
    if let Some(Command::RedisAcl) = &args.command {
        println!("{}", redistribute::engine::acl_rule(&args.key_prefix));
        return Ok(());
    }
    if let Some(Command::Migrate { from }) = &args.command {
        anyhow::ensure!(!args.redis_cluster.is_empty(), "migrate needs the cluster's seed nodes: --redis-cluster URI");
        let partitions = args.partitions as usize;
        let done = redistribute::engine::migrate_to_cluster(
            from,
            &args.redis_cluster,
            &args.key_prefix,
            partitions,
            &args.redis_tls(),
        )
        .await
        .context("migration stopped")?;
        println!("copied {} keys under {:?} into the cluster ({partitions} partitions)", done.copied, args.key_prefix);
        if !done.existing.is_empty() {
            println!("{} keys already existed in the cluster and were left alone:", done.existing.len());
            for key in &done.existing {
                println!("  {key}");
            }
        }
        return Ok(());
    }
    let filter: Targets = args.log.parse().context("invalid --log filter")?;
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).init(),
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true)).init(),
    }

    let config = args.config(channels)?;
    log_access(&config.access);
    raise_open_file_limit(config.max_connections);
    let server = Server::builder(config).build()?;
    let mut options = ListenOptions::new(args.listen);
    if let (Some(key), Some(cert)) = (&args.tls_key, &args.tls_cert) {
        options = options.with_tls(key, cert);
    }
    let listener = server.bind(&options).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let scheme = if options.tls_key.is_some() { "wss" } else { "ws" };
    tracing::info!(url = %format!("{scheme}://{}/", listener.local_addr()?), "redistribute-server ready");
    match server.engine() {
        Engine::Memory(_) => tracing::warn!(
            "no --redis given: running on the embedded memory engine (single instance only, messages are lost on restart); \
             pass --redis redis://HOST:PORT to share streams between instances"
        ),
        _ if !args.redis_cluster.is_empty() => tracing::info!(partitions = args.partitions, "using a Redis Cluster"),
        engine => tracing::info!(targets = engine.target_count(), "using Redis"),
    }
    if let Err(e) = server.health().await {
        tracing::warn!(error = %e, "Redis is not reachable yet; retrying in the background");
    }

    let serving = tokio::spawn(listener.run());
    shutdown_signal().await;
    tracing::info!("shutting down: closing sockets with 1001");
    server.shutdown();
    if tokio::time::timeout(Duration::from_secs(args.shutdown_grace), server.stopped()).await.is_err() {
        tracing::warn!("some connections did not close within the grace period");
    }
    serving.await??;
    Ok(())
}

/// Says at start who may connect and do what.
fn log_access(access: &AccessConfig) {
    match (&access.tokens, access.rules.len()) {
        (None, 0) if access.open => tracing::warn!(
            "OPEN to every peer (--open): anyone who reaches this port may read, write and trim every channel"
        ),
        (None, 0) => {
            tracing::warn!("open mode for loopback peers only (no token key, no channel rules); others are refused")
        }
        (tokens, rules) => tracing::info!(
            tokens = tokens.as_ref().map_or("none", TokenVerifier::kind),
            channel_rules = rules,
            "access control on"
        ),
    }
    if !access.allowed_origins.is_empty() {
        tracing::info!(origins = ?access.allowed_origins, "browser origins allowed besides the server's own");
    }
}

/// Raises the soft limit on open files to the hard limit (each connection holds one), and warns
/// when even that is too low for `max_connections`.
fn raise_open_file_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        let current = match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit.maximum,
            Err(e) => {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
                limit.current
            }
        };
        // Redis connections, listeners, log files and the like need a few more.
        const SPARE: u64 = 64;
        if let Some(current) = current
            && current < max_connections as u64 + SPARE
        {
            tracing::warn!(
                open_files = current,
                max_connections,
                "the open-file limit is below --max-connections: accepts will fail before the limit (raise `ulimit -n`)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
