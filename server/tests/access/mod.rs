//! Access control over the wire, against a real Redis: tokens signed here with the JWT crate
//! (HS, RS, ES and EdDSA keys), channel rules, origins, consumer-group permissions.

use crate::support::{Redis, TestServer, config, connect};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use redistribute::access::{AccessConfig, ChannelRule, Glob, Op, Ops, TokenVerifier};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn claims(user: &str, channels: Value) -> Value {
    json!({"sub": user, "exp": now() + 600, "channels": channels})
}

fn ops(list: &[Op]) -> Ops {
    list.iter().copied().collect()
}

fn rule(pattern: &str, anonymous: &[Op], authenticated: &[Op]) -> ChannelRule {
    ChannelRule {
        pattern: Glob::new(pattern).unwrap(),
        anonymous: ops(anonymous),
        authenticated: ops(authenticated),
        maxlen: None,
        client_maxlen: false,
        publish_rate: None,
    }
}

async fn guarded(redis: &Redis, rules: Vec<ChannelRule>) -> TestServer {
    let mut cfg = config(redis);
    cfg.access =
        AccessConfig { tokens: Some(TokenVerifier::from_secret(SECRET).unwrap()), rules, ..AccessConfig::default() };
    TestServer::start(cfg).await
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("<ok>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grant_channels_and_bad_tokens_are_refused() {
    let redis = Redis::start();
    let server = guarded(&redis, vec![]).await;
    let mut client = connect(&server.url()).await;
    // Without a token nothing is allowed.
    assert_eq!(code(&client.request(json!({"op": "subscribe", "channel": "user:ann"})).await), "forbidden");
    let refused = [
        ("garbage", "not.a.jwt".to_owned()),
        ("two parts", "abc.def".to_owned()),
        ("expired", hs256(&json!({"sub": "ann", "exp": now() - 60}))),
        ("expired within the clock-skew leeway", hs256(&json!({"sub": "ann", "exp": now() - 2}))),
        ("not yet valid", hs256(&json!({"sub": "ann", "exp": now() + 600, "nbf": now() + 300}))),
        ("no sub", hs256(&json!({"exp": now() + 600}))),
        ("no exp", hs256(&json!({"sub": "ann"}))),
        ("a star in sub", hs256(&json!({"sub": "*", "exp": now() + 600}))),
        ("unknown op", hs256(&claims("ann", json!([{"match": "x", "allow": ["delete"]}])))),
        ("too many grants", hs256(&claims("ann", json!(vec![json!({"match": "x", "allow": []}); 65])))),
        (
            "wrong secret",
            encode(&Header::default(), &claims("ann", json!([])), &EncodingKey::from_secret(&[1; 32])).unwrap(),
        ),
        ("alg none", format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", b64(&claims("ann", json!([]))))),
        ("huge", "a".repeat(9000)),
    ];
    for (what, token) in refused {
        // A connection each: one connection's token checks are rate limited (a burst of 10).
        let mut probe = connect(&server.url()).await;
        let reply = probe.request(json!({"op": "auth", "token": token})).await;
        assert_eq!(code(&reply), "unauthorized", "{what}: {reply}");
    }
    // A good token: personal channels by `{sub}`, and nothing beyond the grants.
    let token = hs256(&claims("ann", json!([{"match": "user:{sub}", "allow": ["subscribe", "history", "publish"]}])));
    let reply = client.request(json!({"op": "auth", "token": token})).await;
    assert_eq!(reply["ok"]["user"], "ann", "{reply}");
    assert!(reply["ok"]["expires"].as_u64().unwrap() > now());
    assert_eq!(client.subscribe("user:ann", "0").await["offset"], "0-0");
    client.publish("user:ann", &["k", "v"]).await;
    assert_eq!(client.entries("user:ann", 1).await.len(), 1);
    assert_eq!(code(&client.request(json!({"op": "subscribe", "channel": "user:bob"})).await), "forbidden");
    // An expiry too far to represent is accepted and never fires.
    let forever = hs256(&json!({"sub": "ann", "exp": u64::MAX}));
    assert_eq!(client.request(json!({"op": "auth", "token": forever})).await["ok"]["user"], "ann");
    assert!(client.request(json!({"op": "ping"})).await["ok"].is_object());
    let bob = hs256(&claims("bob", json!([])));
    assert_eq!(code(&client.request(json!({"op": "auth", "token": bob})).await), "unauthorized", "no user switch");
    server.stop().await;
}

fn b64(value: &Value) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = value.to_string().into_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_verify_rsa_ec_and_ed25519_tokens() {
    let redis = Redis::start();
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    for (kind, algorithm, private) in [
        ("rsa", Algorithm::RS256, EncodingKey::from_rsa_pem as fn(&[u8]) -> _),
        ("ec", Algorithm::ES256, EncodingKey::from_ec_pem),
        ("ed", Algorithm::EdDSA, EncodingKey::from_ed_pem),
    ] {
        let verifier = TokenVerifier::from_public_key_file(&keys.join(format!("{kind}-public.pem"))).unwrap();
        let mut cfg = config(&redis);
        cfg.access = AccessConfig { tokens: Some(verifier.issuer("auth.example")), ..AccessConfig::default() };
        let server = TestServer::start(cfg).await;
        let key = private(&std::fs::read(keys.join(format!("{kind}-private.pem"))).unwrap()).unwrap();
        let mut good = claims("ann", json!([{"match": "*", "allow": ["subscribe"]}]));
        good["iss"] = "auth.example".into();
        let token = encode(&Header::new(algorithm), &good, &key).unwrap();
        let mut client = connect(&server.url()).await;
        let reply = client.request(json!({"op": "auth", "token": token})).await;
        assert_eq!(reply["ok"]["user"], "ann", "{kind}: {reply}");
        assert!(client.request(json!({"op": "subscribe", "channel": "any"})).await["ok"].is_object());
        // Wrong issuer; and an HS256 token whose "secret" is the public key (algorithm confusion).
        good["iss"] = "evil.example".into();
        let token = encode(&Header::new(algorithm), &good, &key).unwrap();
        assert_eq!(code(&client.request(json!({"op": "auth", "token": token})).await), "unauthorized");
        let public = std::fs::read(keys.join(format!("{kind}-public.pem"))).unwrap();
        let confused = encode(&Header::new(Algorithm::HS256), &good, &EncodingKey::from_secret(&public)).unwrap();
        assert_eq!(code(&client.request(json!({"op": "auth", "token": confused})).await), "unauthorized");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_with_4001_unless_refreshed() {
    let redis = Redis::start();
    let server = guarded(&redis, vec![]).await;
    let mut client = connect(&server.url()).await;
    let short = |secs: u64| {
        hs256(&json!({"sub": "ann", "exp": now() + secs, "channels": [{"match": "*", "allow": ["subscribe"]}]}))
    };
    assert_eq!(client.request(json!({"op": "auth", "token": short(2)})).await["ok"]["user"], "ann");
    // A fresh token before expiry keeps the connection.
    assert_eq!(client.request(json!({"op": "auth", "token": short(600)})).await["ok"]["user"], "ann");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(client.request(json!({"op": "ping"})).await["ok"].is_object(), "still open after the first exp");
    let mut other = connect(&server.url()).await;
    assert_eq!(other.request(json!({"op": "auth", "token": short(1)})).await["ok"]["user"], "ann");
    let (code, reason) = other.closed().await;
    assert_eq!(code, 4001, "{reason}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_rules_decide_for_anonymous_and_authenticated_connections() {
    let redis = Redis::start();
    let mut public = rule("public:*", &[Op::Subscribe, Op::History], &[Op::Publish]);
    public.maxlen = Some(5);
    let mut scratch = rule("scratch:*", &[Op::Subscribe, Op::Publish], &[]);
    scratch.client_maxlen = true;
    let server = guarded(&redis, vec![public, scratch]).await;
    for n in 0..3 {
        redis.xadd("public:news", &[("n", &n.to_string())]);
    }
    let mut stranger = connect(&server.url()).await;
    assert_eq!(stranger.subscribe("public:news", "0").await["offset"], "0-0");
    assert_eq!(stranger.entries("public:news", 3).await.len(), 3);
    assert_eq!(
        code(&stranger.request(json!({"op": "publish", "channel": "public:news", "fields": ["k", "v"]})).await),
        "forbidden"
    );
    assert_eq!(
        code(&stranger.request(json!({"op": "subscribe", "channel": "private"})).await),
        "forbidden",
        "no rule: nothing"
    );
    // A stranger's maxlen cannot erase the history of a channel whose length the server sets.
    let mut ann = connect(&server.url()).await;
    ann.request(json!({"op": "auth", "token": hs256(&claims("ann", json!([])))})).await;
    let erase = json!({"op": "publish", "channel": "public:news", "fields": ["k", "v"], "maxlen": 1});
    assert_eq!(code(&ann.request(erase).await), "forbidden");
    assert_eq!(redis.xrange_after("public:news", "0").len(), 3, "the stream is intact");
    // `MAXLEN ~` trims whole nodes of 100 entries: after 250 publishes the rule leaves 5 to 105.
    for _ in 0..250 {
        ann.publish("public:news", &["k", "v"]).await;
    }
    let kept = redis.xrange_after("public:news", "0").len();
    assert!((5..=105).contains(&kept), "the rule's maxlen trims: {kept} of 253 kept");
    // Where the rule lets clients trim, they may trim harder.
    let reply =
        stranger.request(json!({"op": "publish", "channel": "scratch:1", "fields": ["k", "v"], "maxlen": 3})).await;
    assert!(reply["ok"]["offset"].is_string(), "{reply}");
    // `history` is needed to start from a past offset; `subscribe` alone means from now on.
    let live_only = hs256(&claims("rd", json!([{"match": "public:*", "allow": ["subscribe"]}])));
    let strict = guarded(&redis, vec![rule("*", &[], &[])]).await;
    let mut reader = connect(&strict.url()).await;
    reader.request(json!({"op": "auth", "token": live_only})).await;
    assert!(reader.request(json!({"op": "subscribe", "channel": "public:news"})).await["ok"].is_object());
    let past = json!({"op": "subscribe", "channel": "public:feed", "offset": "0"});
    assert_eq!(code(&reader.request(past).await), "forbidden");
    server.stop().await;
    strict.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_need_consume() {
    let redis = Redis::start();
    let server = guarded(&redis, vec![rule("jobs", &[Op::Subscribe], &[])]).await;
    redis.xadd("jobs", &[("job", "1")]);
    let join = json!({"op": "subscribe", "channel": "jobs", "group": "g", "consumer": "w1", "offset": "0"});
    let mut stranger = connect(&server.url()).await;
    assert_eq!(code(&stranger.request(join.clone()).await), "forbidden");
    let ack = json!({"op": "ack", "channel": "jobs", "group": "g", "offsets": ["1-1"]});
    assert_eq!(code(&stranger.request(ack).await), "forbidden");
    let mut worker = connect(&server.url()).await;
    let token = hs256(&claims("w", json!([{"match": "jobs", "allow": ["consume"]}])));
    worker.request(json!({"op": "auth", "token": token.clone()})).await;
    assert!(worker.request(join.clone()).await["ok"].is_object());
    let job = worker.push().await["messages"][0]["offset"].as_str().unwrap().to_owned();
    // The same user's second connection cannot take over the live consumer.
    let mut twin = connect(&server.url()).await;
    twin.request(json!({"op": "auth", "token": token})).await;
    assert_eq!(code(&twin.request(join.clone()).await), "conflict");
    // Another user's `w1` is another consumer: it neither steals the job nor acknowledges it.
    let mut mallory = connect(&server.url()).await;
    let theirs = hs256(&claims("mallory", json!([{"match": "jobs", "allow": ["consume"]}])));
    mallory.request(json!({"op": "auth", "token": theirs})).await;
    assert!(mallory.request(join).await["ok"].is_object());
    let ack = json!({"op": "ack", "channel": "jobs", "group": "g", "offsets": [job]});
    let refused = mallory.request(ack.clone()).await;
    assert_eq!(code(&refused), "forbidden", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("another consumer"));
    let holders: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(crate::support::key("jobs"))
        .arg("g")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(holders.len(), 1, "still pending: {holders:?}");
    assert_eq!(holders[0].1, "1:w:w1", "scoped to its user");
    assert_eq!(worker.request(ack).await["ok"]["acked"], 1, "the owner acknowledges it");
    server.stop().await;
}

/// Sends a raw request and returns the response head (an upgraded socket stays open, so this
/// does not wait for the end).
async fn response_head(server: &TestServer, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        if tcp.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_from_other_origins_are_refused_before_the_upgrade() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let upgrade = |server: &TestServer, origin: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n",
            server.addr
        )
    };
    let evil = server.http(&upgrade(&server, "https://evil.example")).await;
    assert!(evil.starts_with("HTTP/1.1 403 ") && evil.contains("--allowed-origin"), "{evil}");
    let own = response_head(&server, &upgrade(&server, &format!("http://{}", server.addr))).await;
    assert!(own.starts_with("HTTP/1.1 101 "), "{own}");
    server.stop().await;
    let mut cfg = config(&redis);
    cfg.access.allowed_origins = vec!["https://app.example".into()];
    let server = TestServer::start(cfg).await;
    assert!(response_head(&server, &upgrade(&server, "https://app.example")).await.starts_with("HTTP/1.1 101 "));
    assert!(response_head(&server, &upgrade(&server, "https://evil.example")).await.starts_with("HTTP/1.1 403 "));
    server.stop().await;
}

/// A private network namespace with an address of its own on its loopback interface, so that a
/// server and its client talk over a non-loopback address without touching the machine's
/// network. Removed on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(address: &str) -> Namespace {
        let name = format!("rd-access-{}", std::process::id());
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip").args(args).status().expect("the ip command (iproute2)");
            assert!(status.success(), "ip {args:?} failed: network namespaces need root");
        };
        ip(&["netns", "add", &name]);
        let namespace = Namespace { name };
        ip(&["netns", "exec", &namespace.name, "ip", "link", "set", "lo", "up"]);
        ip(&["netns", "exec", &namespace.name, "ip", "addr", "add", &format!("{address}/32"), "dev", "lo"]);
        namespace
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Sends `request` to `addr` from inside the namespace; returns the first response line
    /// (empty when nothing answered).
    fn first_line(&self, addr: &str, request: &str) -> String {
        let (host, port) = addr.split_once(':').unwrap();
        let script = format!(
            "exec 3<>/dev/tcp/{host}/{port} || exit 1; printf '{}' >&3; timeout 2 head -n 1 <&3",
            request.replace("\r\n", "\\r\\n")
        );
        let output = self.command("bash").args(["-c", &script]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim_end().to_owned()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[test]
fn open_mode_serves_loopback_peers_only_unless_told() {
    let address = "10.203.0.1";
    let namespace = Namespace::create(address);
    let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    for (extra, expected) in [(None, "HTTP/1.1 403 Forbidden"), (Some("--open"), "HTTP/1.1 101 Switching Protocols")] {
        let listen = format!("{address}:8123");
        let mut server = namespace.command(env!("CARGO_BIN_EXE_redistribute-server"));
        server.args(["--listen", &listen, "--log", "warn"]).args(extra);
        let mut child = server.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while namespace.first_line(&listen, "GET /healthz HTTP/1.1\r\n\r\n") != "HTTP/1.1 200 OK" {
            assert!(std::time::Instant::now() < deadline, "the server in the namespace did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let answer = namespace.first_line(&listen, upgrade);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(answer, expected, "a peer at {address} with {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_live_under_the_key_prefix_and_other_keys_are_out_of_reach() {
    let redis = Redis::start();
    let mut conn = redis.conn();
    // Another application's data on the same Redis.
    let _: () = redis::cmd("HSET").arg("session:42").arg("user").arg("ann").query(&mut conn).unwrap();
    for n in 0..11 {
        let _: String = redis::cmd("XADD").arg("events").arg("*").arg("n").arg(n).query(&mut conn).unwrap();
    }
    let server = TestServer::start(config(&redis)).await;
    let mut client = connect(&server.url()).await;
    let offset = client.publish("chat", &["k", "v"]).await;
    let raw: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg("rd:chat").arg("-").arg("+").query(&mut conn).unwrap();
    assert_eq!(raw, vec![(offset, vec!["k".to_owned(), "v".to_owned()])], "channel chat is the key rd:chat");
    assert_eq!(redis::cmd("EXISTS").arg("chat").query::<i64>(&mut conn).unwrap(), 0);
    // Naming another application's keys reaches only keys under the prefix.
    assert_eq!(client.subscribe("session:42", "0").await["offset"], "0-0");
    let trim = json!({"op": "publish", "channel": "events", "fields": ["k", "v"], "maxlen": 1});
    assert!(client.request(trim).await["ok"].is_object());
    assert_eq!(redis::cmd("XLEN").arg("events").query::<i64>(&mut conn).unwrap(), 11, "untouched");
    assert_eq!(redis::cmd("TYPE").arg("session:42").query::<String>(&mut conn).unwrap(), "hash", "untouched");
    server.stop().await;
    // An empty prefix makes channel names the keys (documented as unsafe for shared Redis).
    let mut raw_names = config(&redis);
    raw_names.key_prefix = String::new();
    let server = TestServer::start(raw_names).await;
    let mut client = connect(&server.url()).await;
    assert_eq!(client.subscribe("events", "0").await["offset"], "0-0");
    assert_eq!(client.entries("events", 11).await.len(), 11);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_are_rate_limited_per_connection() {
    let redis = Redis::start();
    let server = guarded(&redis, vec![]).await;
    let mut client = connect(&server.url()).await;
    let token = hs256(&claims("ann", json!([])));
    // The default allows a burst of 10, then one a second: refreshing is rare, guessing is not.
    for _ in 0..10 {
        let reply = client.request(json!({"op": "auth", "token": token})).await;
        assert_eq!(reply["ok"]["user"], "ann", "{reply}");
    }
    let refused = client.request(json!({"op": "auth", "token": token})).await;
    assert_eq!(code(&refused), "rate_limited");
    assert!(refused["error"]["retry_after_ms"].as_u64().unwrap() <= 1000);
    assert_eq!(client.request(json!({"op": "ping"})).await["ok"], json!({}), "other requests still pass");
    server.stop().await;
}
