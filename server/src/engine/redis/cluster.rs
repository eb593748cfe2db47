//! Redis Cluster: where a target's commands go when it is a cluster rather than one server.
//!
//! Ordinary commands go through one cluster connection (the `redis` crate's `cluster-async`),
//! which routes each by its key's slot and follows `MOVED`, `ASK` and failovers by itself. It is
//! made on first use, so a cluster that is down at start-up is not an error. Blocking reads
//! cannot share it: they get dedicated connections to the master of their key's slot, found with
//! `CLUSTER SLOTS` when they connect (again after any error, so a reader follows a failover or a
//! resharding by reconnecting).
//!
//! Channels are grouped in partitions (see [`super::partition_of`]); every key of a partition
//! carries the partition's hash tag (`{p<n>.<k>}`), so all of them live in one slot: one `XREAD` follows every
//! channel of a partition, a consumer group and its dead letters stay in their channel's slot, and
//! multi-key commands (pipelines, `MULTI`, the idempotent append script) never cross slots.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, RedisFuture, TlsCertificates, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// A Redis Cluster, reached through its seed nodes. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub(crate) struct Cluster(Arc<Inner>);

struct Inner {
    client: ClusterClient,
    /// The first seed: its credentials, scheme and certificates are used for the dedicated
    /// connections.
    seed: ConnectionInfo,
    connection: OnceCell<ClusterConnection>,
    timeout: Duration,
}

impl Cluster {
    /// A cluster reached through `seeds` (not connected yet), over TLS with `certificates` when
    /// the seeds are `rediss://`.
    pub(crate) fn new(
        seeds: &[String],
        timeout: Duration,
        certificates: Option<&TlsCertificates>,
    ) -> redis::RedisResult<Cluster> {
        // The first seed's scheme decides for every node: a mix is a mistake, not a fallback.
        let tls = super::tls::uses_tls(&seeds[0])?;
        for seed in &seeds[1..] {
            if super::tls::uses_tls(seed)? != tls {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "the seed nodes mix redis:// and rediss://",
                )));
            }
        }
        // Its credentials, scheme and certificates are those of the dedicated connections.
        let seed = super::tls::open(&seeds[0], certificates)?.get_connection_info().clone();
        let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2);
        if let Some(certificates) = certificates {
            builder = builder.certs(certificates.clone());
        }
        let client = builder.build()?;
        Ok(Cluster(Arc::new(Inner { client, seed, connection: OnceCell::new(), timeout })))
    }

    /// The cluster connection, made now if there is none yet.
    pub(crate) async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        let inner = &self.0;
        inner.connection.get_or_try_init(|| inner.client.get_async_connection()).await.cloned()
    }

    /// Runs `cmd` on the master of `key`'s slot (a command with no key of its own, such as
    /// `CLIENT UNBLOCK`, that must reach the node a dedicated connection of that slot is on).
    pub(crate) async fn on_master_of(&self, key: &str, cmd: Cmd) -> redis::RedisResult<Value> {
        let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        self.connection().await?.route_command(cmd, routing).await
    }

    /// A dedicated connection to the master of `key`'s slot, as the cluster describes it now.
    pub(crate) async fn dedicated_connection(&self, key: &str) -> redis::RedisResult<MultiplexedConnection> {
        let slot = i64::from(slot_of(key));
        let slots =
            self.connection().await?.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), random()).await?;
        let (host, port) = master_of(&slots, slot).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "no master serves the slot", format!("slot {slot}")))
        })?;
        let addr = match self.0.seed.addr() {
            ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
            }
            _ => ConnectionAddr::Tcp(host, port),
        };
        let node = redis::Client::open(self.0.seed.clone().set_addr(addr))?;
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(self.0.timeout)).set_response_timeout(None);
        node.get_multiplexed_async_connection_with_config(&config).await
    }
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the first `{` and
/// the next `}`, if not empty), else of the whole key, modulo 16384, as Redis computes it.
pub fn slot_of(key: &str) -> u16 {
    let key = key.as_bytes();
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &byte in tag.unwrap_or(key) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 { crc << 1 } else { (crc << 1) ^ 0x1021 };
        }
    }
    crc % 16384
}

fn random() -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)
}

/// The master `(host, port)` serving `slot` in a `CLUSTER SLOTS` reply: rows of
/// `[first, last, [host, port, id, …], replicas…]`.
fn master_of(slots: &Value, slot: i64) -> Option<(String, u16)> {
    let Value::Array(rows) = slots else { return None };
    rows.iter().find_map(|row| {
        let Value::Array(row) = row else { return None };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (row.first(), row.get(1), row.get(2))
        else {
            return None;
        };
        if !(*first..=*last).contains(&slot) {
            return None;
        }
        let host = super::reply::text(master.first()?)?;
        let Value::Int(port) = master.get(1)? else { return None };
        Some((host, u16::try_from(*port).ok()?))
    })
}

/// The command connection of a target: one server's, or a cluster's (routing by key).
#[derive(Clone)]
pub(crate) enum Commands {
    /// One server: a multiplexed connection that reconnects by itself.
    Single(redis::aio::ConnectionManager),
    /// A cluster.
    Cluster(Cluster),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(conn) => conn.req_packed_command(cmd),
            Commands::Cluster(cluster) => {
                Box::pin(async move { cluster.connection().await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(cluster) => {
                Box::pin(async move { cluster.connection().await?.req_packed_commands(pipeline, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(conn) => conn.get_db(),
            Commands::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn seeds_agree_on_tls() {
        let seeds = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let timeout = Duration::from_secs(1);
        let mixed = Cluster::new(&seeds(&["redis://127.0.0.1:7000", "rediss://127.0.0.1:7001"]), timeout, None);
        assert!(mixed.err().unwrap().to_string().contains("mix"));
        let certificates = TlsCertificates { client_tls: None, root_cert: None };
        let plain = Cluster::new(&seeds(&["redis://127.0.0.1:7000"]), timeout, Some(&certificates));
        assert!(plain.err().unwrap().to_string().contains("rediss://"));
        assert!(Cluster::new(&seeds(&["rediss://127.0.0.1:7000", "rediss://h:7001"]), timeout, None).is_ok());
    }

    #[test]
    fn slots_are_computed_as_redis_does() {
        // `CLUSTER KEYSLOT` answers, and the crate's own computation.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("a{}b"), slot_of("a{}b"), "an empty tag hashes the whole key");
        for key in ["rd:{p3}chat", "x", "{", "}{a}", "rd:{p15}room-7:dead", "a{}b{c}"] {
            assert_eq!(Slot::new(slot_of(key)), Some(Slot::for_key(key)), "{key}");
        }
    }

    #[test]
    fn finds_the_master_of_a_slot() {
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7000), bulk("id-a")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7003), bulk("id-d")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk("10.0.0.2"), Value::Int(7001), bulk("id-b")]),
            ]),
        ]);
        assert_eq!(master_of(&slots, 0), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(master_of(&slots, 5461), Some(("10.0.0.2".into(), 7001)));
        assert_eq!(master_of(&slots, 16383), Some(("10.0.0.2".into(), 7001)));
        assert_eq!(master_of(&Value::Array(vec![]), 3), None);
    }
}
