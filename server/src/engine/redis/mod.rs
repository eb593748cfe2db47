//! The Redis engine: streams in one or more Redis servers (channels sharded over them by a
//! stable hash), or in a Redis Cluster.
//!
//! Every Redis command the server sends lives under this module: appends, inspection and
//! history here, blocking tail reads in [`follow`], consumer groups in [`groups`], what differs
//! on a cluster in `cluster`, the decoding of replies in `reply` and the classification of
//! errors in `error`.
//!
//! Each target has one multiplexed command connection (publish, inspect, history, acks,
//! `CLIENT UNBLOCK`) that reconnects by itself; a cluster's routes each command by its key.
//! Blocking reads never run on it: stream readers and consumer group members open dedicated
//! connections (on a cluster, to the master of their partition's slot).
//!
//! Keys: on one server (or several), channel `c` is the key `<prefix>c`. On a cluster it is
//! `<prefix>{<tag>}c`, the tag being its partition's ([`partition_tag`]), so that a partition's
//! keys share one slot.

pub(crate) mod acl;
pub(crate) mod cluster;
pub(crate) mod error;
pub(super) mod follow;
pub(super) mod groups;
pub(crate) mod migrate;
pub(crate) mod reply;
pub(crate) mod tls;

pub use self::acl::acl_rule;
pub use self::cluster::slot_of;
use self::cluster::{Cluster, Commands};
use self::error::{Context, classify, classify_write};
pub use self::migrate::{Migration, migrate_to_cluster};
pub use self::tls::RedisTls;
use super::{Appended, EngineError, HistoryPage, Once, StreamState, Write};
use prometheus::HistogramVec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Value};
use redistribute_protocol::{Entry, StreamId};
use std::sync::Arc;
use std::time::Duration;

/// One Redis server that holds a share of the channels, or a whole Redis Cluster.
#[derive(Clone)]
pub struct Target {
    /// The URI with any password removed, for logs.
    display: String,
    /// Prepended to channel names to make keys (`rd:` by default).
    prefix: Arc<str>,
    backend: Backend,
    timeout: Duration,
    /// Latency of commands by name, shared by every target of the engine.
    latency: HistogramVec,
}

/// What a target is.
#[derive(Clone)]
enum Backend {
    /// One server: its client (for dedicated connections; boxed, it carries the TLS settings)
    /// and its command connection.
    Single { client: Box<Client>, commands: ConnectionManager },
    /// A cluster whose keys carry the hash tag of their channel's partition (`tags[n]` for
    /// partition `n`).
    Cluster { cluster: Cluster, tags: Arc<[String]> },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("uri", &self.display).finish_non_exhaustive()
    }
}

impl Target {
    /// The URI with any password removed.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The key of `channel`: the prefix, then (on a cluster) its partition's hash tag, then the
    /// name.
    pub(crate) fn key(&self, channel: &str) -> String {
        let mut key = String::new();
        self.write_key(&mut key, channel);
        key
    }

    /// Appends the key of `channel` to `out` (see [`Target::key`]), for loops that reuse one
    /// buffer.
    pub(crate) fn write_key(&self, out: &mut String, channel: &str) {
        out.push_str(&self.prefix);
        if let Backend::Cluster { tags, .. } = &self.backend {
            out.push('{');
            out.push_str(&tags[partition_of(channel, tags.len())]);
            out.push('}');
        }
        out.push_str(channel);
    }

    /// A key in partition `within`'s slot (on one server, any key: there is one node).
    pub(crate) fn partition_key(&self, within: usize) -> String {
        match &self.backend {
            Backend::Single { .. } => self.prefix.to_string(),
            Backend::Cluster { tags, .. } => format!("{}{{{}}}", self.prefix, tags[within]),
        }
    }

    /// The channel a key of this target belongs to (`None` for keys outside the prefix).
    pub(crate) fn channel<'k>(&self, key: &'k str) -> Option<&'k str> {
        let name = key.strip_prefix(&*self.prefix)?;
        match self.backend {
            Backend::Single { .. } => Some(name),
            Backend::Cluster { .. } => name.strip_prefix('{')?.split_once('}').map(|(_, channel)| channel),
        }
    }

    /// Writes that may share one pipeline: all of a server's; on a cluster, a partition's.
    fn pipeline_group(&self, channel: &str) -> usize {
        match &self.backend {
            Backend::Single { .. } => 0,
            Backend::Cluster { tags, .. } => partition_of(channel, tags.len()),
        }
    }

    /// After a pipeline was answered `MOVED` or `ASK` on a cluster (a pipeline, unlike a single
    /// command, does not follow redirects): one command on `key` makes the cluster connection
    /// follow it and learn where the slot is now, so that the next try goes there.
    pub(crate) async fn learn_route(&self, key: &str, e: &redis::RedisError) {
        if matches!(self.backend, Backend::Cluster { .. }) && error::redirected(e) {
            let _: redis::RedisResult<Value> = redis::cmd("EXISTS").arg(key).query_async(&mut self.commands()).await;
        }
    }

    /// Whether `a` and `b` are in one slot, so that one transaction may touch both.
    pub(crate) fn same_slot(&self, a: &str, b: &str) -> bool {
        match self.backend {
            Backend::Single { .. } => true,
            Backend::Cluster { .. } => cluster::slot_of(a) == cluster::slot_of(b),
        }
    }

    /// The error context of a command on this target for `channel` (and `group`).
    pub(crate) fn at<'a>(&'a self, channel: &'a str, group: Option<&'a str>) -> Context<'a> {
        Context { target: &self.display, channel, group }
    }

    /// Runs `command` (its future), recording its latency under `name`.
    pub(crate) async fn timed<T>(&self, name: &str, command: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = command.await;
        self.latency.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
        out
    }

    /// The shared command connection (multiplexed: never block on it).
    pub(crate) fn commands(&self) -> Commands {
        match &self.backend {
            Backend::Single { commands, .. } => Commands::Single(commands.clone()),
            Backend::Cluster { cluster, .. } => Commands::Cluster(cluster.clone()),
        }
    }

    /// Opens a dedicated connection for blocking reads of `key` (on a cluster, to the master of
    /// its slot). It has no response timeout of its own: its users bound each blocking read
    /// themselves.
    pub(crate) async fn dedicated_connection(&self, key: &str) -> Result<MultiplexedConnection, EngineError> {
        let connected = match &self.backend {
            Backend::Single { client, .. } => {
                let config =
                    AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout)).set_response_timeout(None);
                client.get_multiplexed_async_connection_with_config(&config).await
            }
            Backend::Cluster { cluster, .. } => cluster.dedicated_connection(key).await,
        };
        connected.map_err(|e| classify(e, &self.at("", None)))
    }

    /// Wakes the connection with this `CLIENT ID`, a dedicated connection for `key`, if it is
    /// blocked. Returns whether it was.
    pub(crate) async fn unblock(&self, key: &str, client_id: i64) -> Result<bool, EngineError> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(client_id);
        let woken = match &self.backend {
            Backend::Single { .. } => cmd.query_async::<Value>(&mut self.commands()).await,
            Backend::Cluster { cluster, .. } => cluster.on_master_of(key, cmd).await,
        };
        let woken = woken.map_err(|e| classify(e, &self.at("", None)))?;
        Ok(woken == Value::Int(1))
    }

    async fn ping(&self) -> Result<(), EngineError> {
        let _: String =
            redis::cmd("PING").query_async(&mut self.commands()).await.map_err(|e| classify(e, &self.at("", None)))?;
        Ok(())
    }
}

/// Streams in Redis, sharded over one or more targets.
#[derive(Clone, Debug)]
pub struct RedisEngine {
    targets: Vec<Target>,
    latency: HistogramVec,
    /// Replicas that must confirm every write before it counts as stored (`WAIT`).
    replicas: Option<Replicas>,
}

/// `WAIT <count> <timeout>` after every write.
#[derive(Clone, Copy, Debug)]
struct Replicas {
    count: usize,
    timeout: Duration,
}

impl RedisEngine {
    /// A Redis Cluster reached through `seeds`, its channels in `partitions` partitions (channel
    /// `c` at key `<key_prefix>{<tag>}c`, see [`cluster_key`]). Connects lazily, as
    /// [`RedisEngine::new`] does; `rediss://` seeds use `tls`.
    ///
    /// # Errors
    /// When there is no seed, a URI cannot be parsed, the seeds mix `redis://` and `rediss://`,
    /// a TLS file cannot be read or parsed, or `partitions` is 0.
    pub fn cluster(
        seeds: &[String],
        timeout: Duration,
        key_prefix: &str,
        partitions: usize,
        tls: &RedisTls,
    ) -> Result<Self, crate::Error> {
        if seeds.is_empty() || partitions == 0 {
            return Err(crate::Error::Config("a cluster needs seed nodes and at least one partition".into()));
        }
        let certificates = tls.load()?;
        let cluster = Cluster::new(seeds, timeout, certificates.as_ref()).map_err(|e| {
            let seeds = seeds.iter().map(|s| redact(s)).collect::<Vec<_>>().join(", ");
            crate::Error::Config(format!("Redis Cluster {seeds}: {e}"))
        })?;
        let latency = crate::metrics::command_latency();
        let display = format!("cluster {}", redact(&seeds[0]));
        let tags = (0..partitions).map(|n| partition_tag(n, partitions)).collect();
        let backend = Backend::Cluster { cluster, tags };
        let target = Target { display, prefix: Arc::from(key_prefix), backend, timeout, latency: latency.clone() };
        Ok(RedisEngine { targets: vec![target], latency, replicas: None })
    }

    /// Prepares connections to every target, with channel `c` stored at key `<key_prefix>c`;
    /// `rediss://` URIs use `tls`. Connections are made lazily, so a Redis that is down at
    /// start-up is not an error: the server starts, reports unhealthy, and retries.
    ///
    /// # Errors
    /// When the list is empty, a URI cannot be parsed, or a TLS file cannot be read or parsed
    /// (or is given for a `redis://` URI).
    pub fn new(uris: &[String], timeout: Duration, key_prefix: &str, tls: &RedisTls) -> Result<Self, crate::Error> {
        let prefix: Arc<str> = Arc::from(key_prefix);
        let latency = crate::metrics::command_latency();
        if uris.is_empty() {
            return Err(crate::Error::Config("at least one Redis target is required".into()));
        }
        let certificates = tls.load()?;
        let targets = uris
            .iter()
            .map(|uri| {
                let client = tls::open(uri, certificates.as_ref())
                    .map_err(|e| crate::Error::Config(format!("invalid Redis URI {:?}: {e}", redact(uri))))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(|e| crate::Error::Config(format!("Redis target {:?}: {e}", redact(uri))))?;
                let latency = latency.clone();
                let backend = Backend::Single { client: Box::new(client), commands };
                Ok(Target { display: redact(uri), prefix: prefix.clone(), backend, timeout, latency })
            })
            .collect::<Result<_, crate::Error>>()?;
        Ok(RedisEngine { targets, latency, replicas: None })
    }

    /// Makes every write wait until `count` replicas confirmed it (`WAIT count timeout` on the
    /// connection that wrote it, so on the master that holds it): a write they do not confirm
    /// within `timeout` fails with [`EngineError::UnknownOutcome`], since it is on the master but
    /// may not survive its failover. 0 turns it off.
    #[must_use]
    pub fn confirm_writes(mut self, count: usize, timeout: Duration) -> Self {
        self.replicas = (count > 0).then_some(Replicas { count, timeout });
        self
    }

    /// The histogram of command latencies (`redistribute_redis_command_seconds`).
    pub(crate) fn command_latency(&self) -> &HistogramVec {
        &self.latency
    }

    /// All targets, in configuration order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Which target holds `channel`: FNV-1a of the name modulo the number of targets. Stable
    /// across processes and restarts, so every instance agrees (as long as the list is the same).
    pub fn target_of(&self, channel: &str) -> usize {
        (channel_hash(channel) % self.targets.len() as u64) as usize
    }

    /// The target holding `channel`.
    pub(crate) fn target(&self, channel: &str) -> &Target {
        &self.targets[self.target_of(channel)]
    }

    /// Appends an entry; returns its ID. `maxlen` trims approximately (`MAXLEN ~`).
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when Redis is down (not stored);
    /// [`EngineError::UnknownOutcome`] when the command was sent but not answered in time;
    /// [`EngineError::WrongType`] when the key is not a stream.
    pub async fn publish(
        &self,
        channel: &str,
        fields: &[String],
        maxlen: Option<u64>,
    ) -> Result<StreamId, EngineError> {
        if self.replicas.is_some() {
            let write = Write { channel, fields, maxlen, once: None };
            return self.publish_many(&[write]).await.remove(0).map(|appended| appended.offset);
        }
        self.append(channel, fields, maxlen).await
    }

    /// One `XADD`, unconfirmed.
    async fn append(&self, channel: &str, fields: &[String], maxlen: Option<u64>) -> Result<StreamId, EngineError> {
        let target = self.target(channel);
        let id: Value = target
            .timed("XADD", xadd(target.key(channel), fields, maxlen).query_async(&mut target.commands()))
            .await
            .map_err(|e| classify_write(e, &target.at(channel, None)))?;
        reply::stream_id(&id)
    }

    /// Appends several entries in order: one pipeline per target (a round trip for all of them;
    /// Redis runs one connection's commands in order). Returns each one's outcome. A write with
    /// a key goes through [`APPEND_ONCE`], which checks and records the key atomically with the
    /// `XADD`.
    pub(crate) async fn publish_many(&self, writes: &[Write<'_>]) -> Vec<Result<Appended, EngineError>> {
        if let ([Write { channel, fields, maxlen, once: None }], None) = (writes, self.replicas) {
            let appended = self.append(channel, fields, *maxlen).await;
            return vec![appended.map(|offset| Appended { offset, duplicate: false })];
        }
        // One pipeline per target, and on a cluster per partition (a pipeline stays in one slot),
        // all sent at once; each keeps its writes in order.
        let mut groups: Vec<((usize, usize), Vec<usize>)> = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            let target = self.target_of(write.channel);
            let group = (target, self.targets[target].pipeline_group(write.channel));
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, mine)) => mine.push(i),
                None => groups.push((group, vec![i])),
            }
        }
        let pipelines = groups.into_iter().map(|((index, _), mine)| async move {
            let target = &self.targets[index];
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &mine {
                let Write { channel, fields, maxlen, once } = writes[i];
                let key = target.key(channel);
                pipe.add_command(match once {
                    None => xadd(key, fields, maxlen),
                    Some(once) => append_once(&key, fields, maxlen, once),
                });
            }
            if let Some(Replicas { count, timeout }) = self.replicas {
                // On the same connection (on a cluster, routed with the writes to their master):
                // waits for everything written before it.
                pipe.cmd("WAIT").arg(count).arg(timeout.as_millis() as u64);
            }
            let mut replies: Result<Vec<Value>, _> =
                target.timed("XADD", pipe.query_async(&mut target.commands())).await;
            let moved = match &replies {
                Ok(replies) => replies.iter().find_map(|r| match r {
                    Value::ServerError(e) => Some(redis::RedisError::from(e.clone())),
                    _ => None,
                }),
                Err(e) => Some(e.clone()),
            };
            if let Some(e) = moved {
                target.learn_route(&target.key(writes[mine[0]].channel), &e).await;
            }
            // With `WAIT`, its reply (how many replicas confirmed) comes last.
            let unconfirmed = match (&mut replies, self.replicas) {
                (Ok(replies), Some(Replicas { count, .. })) => match replies.pop() {
                    Some(Value::Int(n)) if usize::try_from(n).is_ok_and(|n| n >= count) => None,
                    Some(Value::Int(n)) => Some(format!("{n} of {count} replicas confirmed the write in time")),
                    other => Some(format!("WAIT answered {other:?}")),
                },
                _ => None,
            };
            (target, mine, replies, unconfirmed)
        });
        let mut outcomes: Vec<Option<Result<Appended, EngineError>>> = writes.iter().map(|_| None).collect();
        for (target, mine, replies, unconfirmed) in futures_util::future::join_all(pipelines).await {
            match replies {
                Ok(replies) if replies.len() == mine.len() => {
                    for (&i, reply) in mine.iter().zip(replies) {
                        outcomes[i] = Some(match (reply, &unconfirmed) {
                            (Value::ServerError(e), _) => {
                                Err(classify_write(e.into(), &target.at(writes[i].channel, None)))
                            }
                            // On the master, but maybe not on enough replicas to survive a failover.
                            (_, Some(why)) => Err(EngineError::UnknownOutcome {
                                target: target.display().to_owned(),
                                source: redis::RedisError::from((redis::ErrorKind::Io, "not replicated", why.clone())),
                            }),
                            (reply, None) => appended(&reply),
                        });
                    }
                }
                Ok(replies) => {
                    let message = format!("{} replies to {} XADDs", replies.len(), mine.len());
                    for &i in &mine {
                        outcomes[i] = Some(Err(EngineError::Reply(message.clone())));
                    }
                }
                Err(e) => {
                    for &i in &mine {
                        outcomes[i] = Some(Err(classify_write(e.clone(), &target.at(writes[i].channel, None))));
                    }
                }
            }
        }
        outcomes.into_iter().map(|o| o.expect("every write belongs to a target")).collect()
    }

    /// The stream's current state; a missing stream is empty (`0-0`, nothing deleted).
    ///
    /// # Errors
    /// As for [`RedisEngine::publish`].
    pub async fn state(&self, channel: &str) -> Result<StreamState, EngineError> {
        let target = self.target(channel);
        let mut info = redis::cmd("XINFO");
        info.arg("STREAM").arg(target.key(channel));
        let info = target.timed("XINFO", info.query_async::<Value>(&mut target.commands())).await;
        match info {
            Ok(value) => reply::stream_state(&value),
            Err(e) if e.detail().is_some_and(is_no_such_key) => Ok(StreamState::default()),
            Err(e) => Err(classify(e, &target.at(channel, None))),
        }
    }

    /// Whether `channel`'s stream holds the entry `id` (`XRANGE key id id`): one command, for
    /// checks where the answer is nearly always yes.
    ///
    /// # Errors
    /// As for [`RedisEngine::publish`].
    pub async fn has_entry(&self, channel: &str, id: StreamId) -> Result<bool, EngineError> {
        let target = self.target(channel);
        let mut range = redis::cmd("XRANGE");
        range.arg(target.key(channel)).arg(id.to_string()).arg(id.to_string());
        match target.timed("XRANGE", range.query_async::<Value>(&mut target.commands())).await {
            Ok(Value::Array(entries)) => Ok(!entries.is_empty()),
            Ok(other) => Err(EngineError::Reply(format!("XRANGE answered {other:?}"))),
            Err(e) => Err(classify(e, &target.at(channel, None))),
        }
    }

    /// Reads up to `count` entries after `after`, atomically (MULTI) with the stream's state, so
    /// that a trim racing the read cannot go unnoticed.
    ///
    /// # Errors
    /// As for [`RedisEngine::publish`].
    pub async fn history_page(&self, channel: &str, after: StreamId, count: usize) -> Result<HistoryPage, EngineError> {
        if after.successor().is_none() {
            // Nothing can follow the largest ID (and Redis refuses an exclusive range after it).
            return Ok(HistoryPage { state: self.state(channel).await?, entries: Vec::new() });
        }
        let target = self.target(channel);
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        let key = target.key(channel);
        pipe.cmd("XINFO").arg("STREAM").arg(&key);
        pipe.cmd("XRANGE").arg(&key).arg(format!("({after}")).arg("+").arg("COUNT").arg(count);
        let results: Vec<Value> = match target.timed("XRANGE", pipe.query_async(&mut target.commands())).await {
            Ok(results) => results,
            Err(e) => {
                target.learn_route(&key, &e).await;
                return Err(classify(e, &target.at(channel, None)));
            }
        };
        let Ok([info, range]) = <[Value; 2]>::try_from(results) else {
            return Err(EngineError::Reply("MULTI did not return two results".into()));
        };
        let wrong_type = || EngineError::WrongType { channel: channel.to_owned() };
        let state = match info {
            Value::ServerError(e) if e.details().is_some_and(is_no_such_key) => StreamState::default(),
            Value::ServerError(e) if e.code() == "WRONGTYPE" => return Err(wrong_type()),
            other => reply::stream_state(&other)?,
        };
        let entries: Vec<Entry> = match range {
            Value::ServerError(e) if e.code() == "WRONGTYPE" => return Err(wrong_type()),
            other => reply::entries(other)?,
        };
        Ok(HistoryPage { state, entries })
    }

    /// Pings every target; `Ok` only if all answer.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] for the first target that does not answer.
    pub async fn ping(&self) -> Result<(), EngineError> {
        for target in &self.targets {
            target.ping().await?;
        }
        Ok(())
    }
}

/// `XADD key [MAXLEN ~ n] * field value …`: every append of the engine.
pub(crate) fn xadd(key: String, fields: &[String], maxlen: Option<u64>) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key);
    if let Some(n) = maxlen {
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*").arg(fields);
    cmd
}

/// Appends an entry unless its idempotency key was recorded: `KEYS[1]` the stream, `KEYS[2]` the
/// key's record (the stream's key with a suffix no channel can have), `ARGV[1]` how long to keep
/// the record (ms), `ARGV[2]` the `MAXLEN ~` or `""`, then the fields. Returns `{id, 0}` for a
/// new entry, `{first id, 1}` for a duplicate. One script, so no other client's command runs
/// between the check and the append.
pub(crate) const APPEND_ONCE: &str = r"
local seen = redis.call('GET', KEYS[2])
if seen then return {seen, 1} end
local args = {KEYS[1]}
if ARGV[2] ~= '' then
  args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = ARGV[2]
end
args[#args + 1] = '*'
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call('XADD', unpack(args))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {id, 0}
";

/// `EVAL` of [`APPEND_ONCE`] (Redis caches the compiled script by its hash).
fn append_once(key: &str, fields: &[String], maxlen: Option<u64>, once: Once<'_>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(APPEND_ONCE).arg(2).arg(key).arg(format!("{key}~idempotency~{}", once.key));
    cmd.arg(once.ttl.as_millis().max(1) as u64).arg(maxlen.map_or_else(String::new, |n| n.to_string()));
    cmd.arg(fields);
    cmd
}

/// The reply of an `XADD` (an ID) or of [`APPEND_ONCE`] (`[id, duplicate]`).
fn appended(reply: &Value) -> Result<Appended, EngineError> {
    match reply {
        Value::Array(parts) if parts.len() == 2 => {
            Ok(Appended { offset: reply::stream_id(&parts[0])?, duplicate: parts[1] == Value::Int(1) })
        }
        id => Ok(Appended { offset: reply::stream_id(id)?, duplicate: false }),
    }
}

fn is_no_such_key(detail: &str) -> bool {
    detail.contains("no such key")
}

/// The key of `channel` on a Redis Cluster with `partitions` partitions: `<prefix>{<tag>}<channel>`,
/// the tag being its partition's ([`partition_of`], [`partition_tag`]); all keys of a partition
/// share the tag, so they live in one slot.
pub fn cluster_key(prefix: &str, channel: &str, partitions: usize) -> String {
    format!("{prefix}{{{}}}{channel}", partition_tag(partition_of(channel, partitions), partitions))
}

/// The hash tag of partition `n` of `count`: `p<n>.<k>` with the smallest `k` whose slot falls in
/// the `n`-th of `count` equal shares of the 16384 slots. Tags spread evenly over the slots, so a
/// cluster whose masters serve equal slot ranges serves equal numbers of partitions (plain
/// `p<n>` tags land where CRC16 puts them: 4, 5 and 7 of 16 partitions on 3 masters).
pub fn partition_tag(n: usize, count: usize) -> String {
    let share = n * 16384 / count..(n + 1) * 16384 / count;
    (0..)
        .map(|k| format!("p{n}.{k}"))
        .find(|tag| share.contains(&usize::from(slot_of(tag))))
        .expect("some suffix lands in every share of the slots")
}

/// The partition of `channel` among `count`: FNV-1a (64 bits) of its name, mixed by MurmurHash3's
/// 64-bit finalizer (FNV alone barely spreads names that differ in their last characters over
/// few partitions), modulo `count`. A dead-letter stream `<channel>:dead` counts as its channel,
/// so it shares its partition (and, on a cluster, its slot). On a cluster the partition is part
/// of the key: the function and the count are fixed for the life of the data.
pub fn partition_of(channel: &str, count: usize) -> usize {
    let base = channel.strip_suffix(":dead").unwrap_or(channel);
    let mut h = channel_hash(base);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % count as u64) as usize
}

/// FNV-1a, 64 bits: tiny, stable, and good enough to spread channel names.
pub(crate) fn channel_hash(channel: &str) -> u64 {
    channel.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// `prefix` with the glob characters of `SCAN MATCH` and ACL key patterns escaped.
fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Removes the password from `redis://user:password@host` for logging.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &uri[scheme + 3..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{}{}:***{}", &uri[..scheme + 3], user, &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:secret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("rediss://u:p@h"), "rediss://u:***@h");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn partitions_are_stable_and_dead_letters_share_their_channels() {
        // Fixed values: on a cluster the partition is part of the key.
        assert_eq!(partition_of("chat", 16), partition_of("chat:dead", 16));
        assert_eq!([partition_of("chat", 16), partition_of("", 16), partition_of("room-1", 1024)], [6, 6, 63]);
        let mut counts = [0usize; 16];
        for i in 0..1600 {
            counts[partition_of(&format!("room-{i}"), 16)] += 1;
        }
        assert!(counts.iter().all(|&n| (60..=140).contains(&n)), "names spread evenly: {counts:?}");
    }

    #[test]
    fn partition_tags_spread_evenly_over_the_slots() {
        let tags: Vec<String> = (0..16).map(|n| partition_tag(n, 16)).collect();
        for (n, tag) in tags.iter().enumerate() {
            assert_eq!(usize::from(slot_of(tag)) / 1024, n, "{tag}");
        }
        // Three masters with equal slot ranges (as `redis-cli --cluster create` makes them).
        let master = |slot: u16| usize::from(slot) * 3 / 16384;
        let mut per_master = [0; 3];
        for tag in &tags {
            per_master[master(slot_of(tag))] += 1;
        }
        assert_eq!(per_master, [5, 5, 6]);
        assert_eq!(cluster_key("rd:", "chat", 16), format!("rd:{{{}}}chat", tags[partition_of("chat", 16)]));
        assert!(partition_tag(1023, 1024).starts_with("p1023."));
    }

    #[test]
    fn hash_is_stable() {
        // Fixed values: changing them would move channels between targets in running fleets.
        assert_eq!(channel_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(channel_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
