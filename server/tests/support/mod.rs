//! Test fixtures: a real `redis-server` process per test (killed on drop), servers on port 0,
//! and a small WebSocket client that speaks protocol v1.

#![allow(dead_code, unreachable_pub, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use redistribute::{Config, Hooks, ListenOptions, Server};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How long any single wait in a test may take before it fails with a message. Generous: these
/// bound hangs, they do not measure speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The servers' default key prefix: channel `c` is the Redis key `rd:c`.
pub const PREFIX: &str = "rd:";

/// The Redis key of `channel`.
pub fn key(channel: &str) -> String {
    format!("{PREFIX}{channel}")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` child process on a free loopback port.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// A cluster node (`--cluster-enabled yes`).
    cluster: bool,
    /// TLS only, with client certificates and an ACL user (else plain TCP, no password).
    hardened: Option<Arc<Hardened>>,
}

/// What a hardened Redis deployment looks like: TLS only (`--port 0`), certificates signed by a
/// private CA (for 127.0.0.1), client certificates required, and ACL users: the servers' (`app`,
/// with just the rule `redistribute-server redis-acl` prints) and the tests' own (`admin`); the
/// `default` user is off. The PEM files live in a temporary directory, removed on drop.
pub struct Hardened {
    dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    acl: PathBuf,
}

impl Hardened {
    pub const USER: &str = "app";
    pub const PASSWORD: &str = "s3cret-app";
    const ADMIN: &str = "admin";
    const ADMIN_PASSWORD: &str = "s3cret-admin";

    pub fn new() -> Arc<Hardened> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!("redistribute-pki-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        // Every certificate needs its own subject: OpenSSL takes one named as its issuer for
        // self-signed.
        let params = |name: &str, alt_names: Vec<String>| {
            let mut params = CertificateParams::new(alt_names).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params
        };
        let mut ca_params = params("redistribute test CA", Vec::new());
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let issue = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = params(name, vec!["127.0.0.1".to_owned()]).signed_by(&key, &ca).unwrap();
            (write(&format!("{name}.pem"), cert.pem()), write(&format!("{name}.key"), key.serialize_pem()))
        };
        let (server_cert, server_key) = issue("server");
        let (client_cert, client_key) = issue("client");
        let ca_path = write("ca.pem", ca.pem());
        // The default user is off (nobody logs in as it) but keeps its permissions: Redis 7.0
        // replays transactions from the append-only file as that user, and drops what it may not
        // run.
        let acl = write(
            "users.acl",
            format!(
                "user default off ~* &* +@all\nuser {} on >{} {}\nuser {} on >{} ~* &* +@all\n",
                Self::USER,
                Self::PASSWORD,
                redistribute::engine::acl_rule(PREFIX),
                Self::ADMIN,
                Self::ADMIN_PASSWORD
            ),
        );
        Arc::new(Hardened { dir, ca: ca_path, server_cert, server_key, client_cert, client_key, acl })
    }

    /// The server's settings for this deployment: the CA and the client certificate.
    pub fn redis_tls(&self) -> redistribute::engine::RedisTls {
        redistribute::engine::RedisTls {
            ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client_cert.clone()),
            key_file: Some(self.client_key.clone()),
        }
    }

    /// The same, for the `redis` crate's clients of the test.
    fn certificates(&self) -> redis::TlsCertificates {
        let read = |path: &PathBuf| std::fs::read(path).unwrap();
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(&self.client_cert),
                client_key: read(&self.client_key),
            }),
            root_cert: Some(read(&self.ca)),
        }
    }

    /// The servers' URI of the node on `port`.
    fn url(&self, port: u16) -> String {
        format!("rediss://{}:{}@127.0.0.1:{port}", Self::USER, Self::PASSWORD)
    }

    /// The tests' own URI of the node on `port` (every command).
    fn admin_url(&self, port: u16) -> String {
        format!("rediss://{}:{}@127.0.0.1:{port}", Self::ADMIN, Self::ADMIN_PASSWORD)
    }

    /// `redis-server` arguments: TLS on `port` only, for clients, replication and the cluster bus.
    fn server_args(&self, port: u16) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&self.server_cert),
            "--tls-key-file",
            &path(&self.server_key),
            "--tls-ca-cert-file",
            &path(&self.ca),
            "--tls-auth-clients",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cluster",
            "yes",
            "--aclfile",
            &path(&self.acl),
            "--masteruser",
            Self::ADMIN,
            "--masterauth",
            Self::ADMIN_PASSWORD,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `redis-cli` arguments to reach a node.
    fn cli_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        [
            "--tls",
            "--cacert",
            &path(&self.ca),
            "--cert",
            &path(&self.client_cert),
            "--key",
            &path(&self.client_key),
            "--user",
            Self::ADMIN,
            "--pass",
            Self::ADMIN_PASSWORD,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for Hardened {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Redis {
    /// Starts a Redis with append-only persistence in a fresh directory, so a restart keeps data.
    pub fn start() -> Redis {
        Redis::start_with(free_port(), false, None)
    }

    /// Starts a hardened Redis (see [`Hardened`]).
    pub fn start_hardened(hardened: &Arc<Hardened>) -> Redis {
        Redis::start_with(free_port(), false, Some(hardened.clone()))
    }

    /// Starts a cluster node (not joined yet) on `port`.
    fn start_node(port: u16, hardened: Option<Arc<Hardened>>) -> Redis {
        Redis::start_with(port, true, hardened)
    }

    fn start_with(port: u16, cluster: bool, hardened: Option<Arc<Hardened>>) -> Redis {
        let dir = std::env::temp_dir().join(format!("redistribute-test-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis { child: None, port, dir, cluster, hardened };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new(&binary);
        if self.cluster {
            // A replica may take over however long ago it last heard from its master (the default
            // validity factor refuses after ~10 node timeouts of silence, which a 1 s timeout
            // reaches within seconds of an idle test cluster).
            command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"]);
            command.args(["--cluster-replica-validity-factor", "0", "--repl-ping-replica-period", "1"]);
            // Replicas sync at once (not after the default 5 s wait for more of them).
            command.args(["--repl-diskless-sync-delay", "0"]);
            command.args(["--cluster-config-file", &format!("nodes-{}.conf", self.port)]);
        }
        match &self.hardened {
            Some(hardened) => command.args(hardened.server_args(self.port)),
            None => command.args(["--port", &self.port.to_string()]),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (install redis-server or set REDIS_SERVER): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        let mut last = None;
        while Instant::now() < deadline {
            match self.client().get_connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)) {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not become ready: {last:?}", self.port);
    }

    /// The URI servers are given.
    pub fn url(&self) -> String {
        match &self.hardened {
            Some(hardened) => hardened.url(self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// A URI allowed every command (on a hardened Redis, the tests' own user).
    pub fn admin_url(&self) -> String {
        match &self.hardened {
            Some(hardened) => hardened.admin_url(self.port),
            None => self.url(),
        }
    }

    /// A client for the tests' own checks, allowed every command.
    pub fn client(&self) -> redis::Client {
        match &self.hardened {
            Some(hardened) => redis::Client::build_with_tls(self.admin_url(), hardened.certificates()).unwrap(),
            None => redis::Client::open(self.url()).unwrap(),
        }
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts again on the same port; appended data survives.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops and starts again on the same port with no data, as a Redis without persistence
    /// comes back.
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).unwrap();
        self.spawn();
    }

    /// What Redis refused for lack of permission (`ACL LOG`): `"<context> <command or key>"`.
    pub fn acl_denials(&self) -> Vec<String> {
        let log: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::cmd("ACL").arg("LOG").query(&mut self.conn()).unwrap();
        let text = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        };
        log.iter()
            .map(|entry| format!("{} {}", text(entry.get("context")), text(entry.get("object"))))
            // Redis 7.2+: the `redis` crate announces itself on connecting and ignores a refusal.
            .filter(|denial| !denial.ends_with(" client|setinfo"))
            .collect()
    }

    /// `XADD <key of channel> * fields…` straight into Redis, as another program would.
    pub fn xadd(&self, channel: &str, fields: &[(&str, &str)]) -> String {
        self.xadd_with_id(channel, "*", fields)
    }

    /// `XADD <key of channel> <id> fields…` with an explicit ID.
    pub fn xadd_with_id(&self, channel: &str, id: &str, fields: &[(&str, &str)]) -> String {
        xadd(&key(channel), id, fields).query(&mut self.conn()).unwrap()
    }

    /// `XRANGE <key of channel> (after +` as `(id, fields)` pairs.
    pub fn xrange_after(&self, channel: &str, after: &str) -> Vec<(String, Vec<String>)> {
        let start = if after == "0" || after == "0-0" { "-".to_owned() } else { format!("({after}") };
        let reply: Vec<(String, Vec<String>)> =
            redis::cmd("XRANGE").arg(key(channel)).arg(start).arg("+").query(&mut self.conn()).unwrap();
        reply
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real Redis Cluster of 3 masters and 3 replicas (`redis-server --cluster-enabled yes`,
/// joined by `redis-cli --cluster create … --cluster-replicas 1`), on free loopback ports, with a
/// short node timeout so a failover takes a few seconds. Killed on drop.
pub struct RedisCluster {
    nodes: Vec<Redis>,
    hardened: Option<Arc<Hardened>>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(6, 1, None)
    }

    /// A hardened cluster (see [`Hardened`]) of 3 masters and no replicas.
    pub fn start_hardened(hardened: &Arc<Hardened>) -> RedisCluster {
        RedisCluster::start_with(3, 0, Some(hardened.clone()))
    }

    fn start_with(count: usize, replicas: usize, hardened: Option<Arc<Hardened>>) -> RedisCluster {
        let nodes: Vec<Redis> = (0..count).map(|_| Redis::start_node(cluster_port(), hardened.clone())).collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(hardened.as_ref().map(|h| h.cli_args()).unwrap_or_default())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli is needed to create the test cluster");
        assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stderr));
        let cluster = RedisCluster { nodes, hardened };
        cluster.wait_until_ok();
        if replicas > 0 {
            cluster.wait_for_replicas();
        }
        cluster
    }

    /// Waits until every master has a replica in sync (`WAIT` can be satisfied).
    fn wait_for_replicas(&self) {
        let deadline = Instant::now() + PATIENCE;
        for port in self.masters() {
            let node = self.nodes.iter().find(|n| n.port == port).unwrap();
            loop {
                let info: String = redis::cmd("INFO").arg("replication").query(&mut node.conn()).unwrap_or_default();
                if info.contains("state=online") {
                    break;
                }
                assert!(Instant::now() < deadline, "the replica of {port} did not sync: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// One cluster for every test of this process that only reads and writes (tests that kill
    /// nodes start their own): started on first use, and stopped by a watchdog process once
    /// this process is gone (a static is never dropped).
    pub fn shared() -> &'static RedisCluster {
        static SHARED: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = RedisCluster::start();
            let pids: Vec<String> =
                cluster.nodes.iter().filter_map(|n| n.child.as_ref()).map(|c| c.id().to_string()).collect();
            let dirs: Vec<String> = cluster.nodes.iter().map(|n| n.dir.display().to_string()).collect();
            let watchdog = format!(
                "while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill {} 2>/dev/null; rm -rf {}",
                std::process::id(),
                pids.join(" "),
                dirs.join(" ")
            );
            // It outlives this process by design (it is what stops the cluster afterwards), so it
            // is never waited for.
            #[allow(clippy::zombie_processes)]
            Command::new("sh").arg("-c").arg(watchdog).stdin(Stdio::null()).spawn().expect("sh for the watchdog");
            cluster
        })
    }

    /// Waits until every live node says the cluster is `ok` and agrees on the masters.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let states: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut n.conn()).unwrap_or_default())
                .collect();
            if states.iter().all(|s| s.contains("cluster_state:ok") && s.contains("cluster_slots_ok:16384")) {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok: {states:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the master on `port` (stopped) was replaced by its replica and the cluster is
    /// `ok` again.
    pub fn wait_for_failover(&self, port: u16) {
        let deadline = Instant::now() + PATIENCE;
        while self.masters().contains(&port) {
            assert!(Instant::now() < deadline, "no replica took over from the master on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_until_ok();
    }

    /// What the nodes refused for lack of permission (see [`Redis::acl_denials`]).
    pub fn acl_denials(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.child.is_some()).flat_map(Redis::acl_denials).collect()
    }

    /// Seed URIs (every node), as servers are given them.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// Seed URIs allowed every command.
    pub fn admin_seeds(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::admin_url).collect()
    }

    /// A client that follows the cluster, for checks straight in Redis.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        let mut builder = redis::cluster::ClusterClient::builder(self.admin_seeds());
        if let Some(hardened) = &self.hardened {
            builder = builder.certs(hardened.certificates());
        }
        builder.build().unwrap()
    }

    /// `XRANGE key - +` of a key, through the cluster, as `(id, fields)` pairs.
    pub fn xrange(&self, key: &str) -> Vec<(String, Vec<String>)> {
        let mut conn = self.client().get_connection().unwrap();
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(&mut conn).unwrap()
    }

    /// `XADD key * fields…` through the cluster, as another program would; returns the ID.
    pub fn xadd(&self, key: &str, fields: &[(&str, &str)]) -> String {
        xadd(key, "*", fields).query(&mut self.client().get_connection().unwrap()).unwrap()
    }

    /// `(first slot, last slot, master port)` of every slot range, in slot order.
    fn slot_ranges(&self) -> Vec<(i64, i64, u16)> {
        let node = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        let value: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut node.conn()).unwrap();
        let int = |v: &redis::Value| if let redis::Value::Int(i) = v { *i } else { panic!("CLUSTER SLOTS: {v:?}") };
        let redis::Value::Array(rows) = value else { panic!("CLUSTER SLOTS: {value:?}") };
        let mut ranges: Vec<(i64, i64, u16)> = rows
            .iter()
            .map(|row| {
                let redis::Value::Array(row) = row else { panic!("CLUSTER SLOTS row: {row:?}") };
                let redis::Value::Array(master) = &row[2] else { panic!("CLUSTER SLOTS master: {row:?}") };
                (int(&row[0]), int(&row[1]), int(&master[1]) as u16)
            })
            .collect();
        ranges.sort_unstable();
        ranges
    }

    /// The ports of the masters now, in the order of the first slot they serve.
    pub fn masters(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = Vec::new();
        for (_, _, port) in self.slot_ranges() {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }

    /// Which master (an index into [`RedisCluster::masters`]) serves a slot, now.
    pub fn slot_owners(&self) -> impl Fn(u16) -> usize + use<> {
        let ranges = self.slot_ranges();
        let masters = self.masters();
        move |slot| {
            let (_, _, port) = ranges
                .iter()
                .find(|(first, last, _)| (*first..=*last).contains(&i64::from(slot)))
                .expect("every slot is served");
            masters.iter().position(|p| p == port).unwrap()
        }
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut Redis {
        self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster")
    }
}

/// `XADD key id field value …`.
fn xadd(key: &str, id: &str, fields: &[(&str, &str)]) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg(id);
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A server listening on a free loopback port.
pub struct TestServer {
    pub server: Server,
    pub addr: SocketAddr,
    serving: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        Self::start_with(Server::builder(config).build().unwrap(), ListenOptions::new("127.0.0.1:0".parse().unwrap()))
            .await
    }

    pub async fn with_hooks<H: Hooks>(config: Config, hooks: H) -> TestServer {
        Self::start_with(
            Server::builder(config).hooks(hooks).build().unwrap(),
            ListenOptions::new("127.0.0.1:0".parse().unwrap()),
        )
        .await
    }

    pub async fn start_with(server: Server, options: ListenOptions) -> TestServer {
        let listener = server.bind(&options).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move { listener.run().await.unwrap() });
        TestServer { server, addr, serving }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Sends a raw HTTP request and returns the whole response (the server closes after it).
    pub async fn http(&self, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut response)).await.expect("no HTTP response").unwrap();
        String::from_utf8_lossy(&response).into_owned()
    }

    /// Like [`TestServer::http`], from the loopback address `from` (e.g. `127.0.0.2`).
    pub async fn http_from(&self, from: [u8; 4], request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        let mut tcp = socket.connect(self.addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut response)).await.expect("no HTTP response").unwrap();
        String::from_utf8_lossy(&response).into_owned()
    }

    pub async fn stop(self) {
        self.server.shutdown();
        tokio::time::timeout(PATIENCE, self.server.stopped()).await.expect("server did not stop");
        let _ = self.serving.await;
    }
}

pub fn config(redis: &Redis) -> Config {
    Config::with_targets([redis.url()])
}

/// A protocol v1 client over any stream (plain or TLS).
pub struct Client<S> {
    ws: WebSocketStream<S>,
    next_id: u64,
    /// Pushes received while waiting for a reply.
    pushes: VecDeque<Value>,
}

pub type PlainClient = Client<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(url: &str) -> PlainClient {
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "redistribute.v1".parse().unwrap());
    let (ws, response) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .unwrap();
    assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "redistribute.v1");
    Client::new(ws)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Client { ws, next_id: 1, pushes: VecDeque::new() }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// The next frame of any kind, parsed; panics on close or timeout.
    pub async fn recv_frame(&mut self) -> Value {
        loop {
            let next =
                tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("no frame within the test's patience");
            match next {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame, parsed, or what ended the connection instead.
    pub async fn recv_frame_or_close(&mut self) -> Result<Value, String> {
        loop {
            let next =
                tokio::time::timeout(PATIENCE, self.ws.next()).await.map_err(|_| "no frame in time".to_owned())?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).map_err(|e| format!("unparseable frame {text:?}: {e}"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return Err(format!("{other:?}")),
            }
        }
    }

    /// Waits for the close frame; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let next =
                tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("no close within the test's patience");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error instead of a close frame: {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    }

    /// The next reply (a frame with an `id` key), stashing pushes that come first.
    pub async fn reply(&mut self) -> Value {
        loop {
            let frame = self.recv_frame().await;
            if frame.get("id").is_some() {
                return frame;
            }
            self.pushes.push_back(frame);
        }
    }

    /// Sends `body` with a fresh id and returns the reply to it.
    pub async fn request(&mut self, mut body: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        body["id"] = json!(id);
        self.send_text(&body.to_string()).await;
        let reply = self.reply().await;
        assert_eq!(reply["id"], json!(id), "reply to another request: {reply}");
        reply
    }

    /// Subscribes and returns the `ok` body; panics on an error reply.
    pub async fn subscribe(&mut self, channel: &str, offset: &str) -> Value {
        let reply = self.request(json!({"op": "subscribe", "channel": channel, "offset": offset})).await;
        reply.get("ok").unwrap_or_else(|| panic!("subscribe failed: {reply}")).clone()
    }

    /// Publishes and returns the new offset; panics on an error reply.
    pub async fn publish(&mut self, channel: &str, fields: &[&str]) -> String {
        let reply = self.request(json!({"op": "publish", "channel": channel, "fields": fields})).await;
        reply["ok"]["offset"].as_str().unwrap_or_else(|| panic!("publish failed: {reply}")).to_owned()
    }

    /// The error body of a request expected to fail.
    pub async fn expect_error(&mut self, body: Value) -> Value {
        let reply = self.request(body.clone()).await;
        reply.get("error").unwrap_or_else(|| panic!("{body} should fail, got {reply}")).clone()
    }

    /// The next push, from the stash or the socket.
    pub async fn push(&mut self) -> Value {
        if let Some(push) = self.pushes.pop_front() {
            return push;
        }
        let frame = self.recv_frame().await;
        assert!(frame.get("id").is_none(), "expected a push, got reply {frame}");
        frame
    }

    /// Collects `(offset, fields)` of `channel` until `done` says the list is complete.
    pub async fn entries_until(
        &mut self,
        channel: &str,
        mut done: impl FnMut(&[(String, Vec<String>)]) -> bool,
    ) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        while !done(&out) {
            let push = self.push().await;
            if push["channel"] != channel {
                continue;
            }
            for m in push["messages"].as_array().into_iter().flatten() {
                let fields = m["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
                out.push((m["offset"].as_str().unwrap().to_owned(), fields));
            }
        }
        out
    }

    /// Collects exactly `n` entries of `channel`.
    pub async fn entries(&mut self, channel: &str, n: usize) -> Vec<(String, Vec<String>)> {
        let got = self.entries_until(channel, |e| e.len() >= n).await;
        assert_eq!(got.len(), n, "more entries than expected: {got:?}");
        got
    }

    /// Asserts that no frame arrives before a ping round trip completes.
    pub async fn assert_quiet(&mut self) {
        let reply = self.request(json!({"op": "ping"})).await;
        assert!(reply.get("ok").is_some());
        assert!(self.pushes.is_empty(), "unexpected pushes: {:?}", self.pushes);
    }
}
