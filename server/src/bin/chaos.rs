//! `redistribute-chaos`: checks the promises under faults, with real processes on loopback.
//!
//! It starts a Redis (AOF, `appendfsync always`, in a temporary directory) and several
//! `redistribute-server` instances on it, then publishers publish over WebSocket to random
//! instances while subscribers follow every channel from the beginning. Meanwhile, on a seeded
//! schedule, it SIGKILLs and SIGTERMs instances (and restarts them), SIGKILLs and restarts Redis,
//! cuts subscribers' connections and stalls their reading (so servers close them as lagging).
//! Subscribers reconnect to any instance and resume after the last offset they received.
//!
//! At the end every subscriber's list of each channel must equal the channel's `XRANGE` in Redis:
//! it prints the entries lost, duplicated and reordered (all must be 0) and exits non-zero
//! otherwise.
//!
//! ```text
//! cargo build --release -p redistribute --bins
//! target/release/redistribute-chaos --seed 7 --messages 100000
//! ```

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redistribute::StreamId;
use redistribute::protocol::SUBPROTOCOL;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Fault-injection run: every subscriber must end with exactly the channels' contents.
#[derive(Debug, Parser, Clone)]
#[command(version, about)]
struct Args {
    /// Seed of the fault schedule and of the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Publishes to acknowledge before the faults stop.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Server instances.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Channels, all followed by every subscriber.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Subscribing connections.
    #[arg(long, default_value_t = 6)]
    subscribers: usize,
    /// Publishing connections (each one publish in flight).
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Milliseconds between faults (on average).
    #[arg(long, default_value_t = 800)]
    fault_every_ms: u64,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// The server binary (default: `redistribute-server` next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// The Redis server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
}

/// A fault the schedule can inject.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillInstance(usize),
    TermInstance(usize),
    RestartRedis,
    CutSubscriber(usize),
    StallSubscriber(usize, Duration),
}

/// What the chaos task tells a subscriber.
#[derive(Debug)]
enum Order {
    Cut,
    Stall(Duration),
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The processes under test: one Redis, several servers. Kills what it started when dropped.
struct Fleet {
    dir: PathBuf,
    redis_bin: String,
    redis_port: u16,
    redis: Option<Child>,
    server_bin: PathBuf,
    ports: Vec<u16>,
    servers: Vec<Option<Child>>,
    /// Keep the directory (logs, AOF) for a look after a failed run.
    keep: bool,
}

impl Fleet {
    fn start(args: &Args) -> anyhow::Result<Fleet> {
        let dir = std::env::temp_dir().join(format!("redistribute-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let server_bin = match &args.server {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("redistribute-server"),
        };
        if !server_bin.exists() {
            bail!("{} not found: build it first (cargo build -p redistribute --bins)", server_bin.display());
        }
        let mut fleet = Fleet {
            dir,
            redis_bin: args.redis_server.clone(),
            redis_port: free_port(),
            redis: None,
            server_bin,
            ports: (0..args.instances).map(|_| free_port()).collect(),
            servers: (0..args.instances).map(|_| None).collect(),
            keep: false,
        };
        fleet.start_redis()?;
        for i in 0..args.instances {
            fleet.start_server(i)?;
        }
        Ok(fleet)
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    fn start_redis(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.redis_bin)
            .args(["--bind", "127.0.0.1", "--port", &self.redis_port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.redis_bin))?;
        self.redis = Some(child);
        let client = redis::Client::open(self.redis_url())?;
        let started = Instant::now();
        loop {
            // Answers PING once the AOF is loaded.
            if let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("Redis did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_server(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("server-{i}.log")))?;
        let child = Command::new(&self.server_bin)
            .args(["--listen", &format!("127.0.0.1:{}", self.ports[i]), "--redis", &self.redis_url()])
            // Small queues and a short write timeout: stalled readers get closed as lagging.
            .args(["--send-queue-bytes", "131072", "--write-timeout", "1s", "--redis-timeout-ms", "1000"])
            .args(["--shutdown-grace", "2", "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting redistribute-server")?;
        self.servers[i] = Some(child);
        Ok(())
    }

    fn stop_server(&mut self, i: usize, graceful: bool) {
        if let Some(mut child) = self.servers[i].take() {
            if graceful {
                signal(&child, rustix::process::Signal::TERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn kill_redis(&mut self) {
        if let Some(mut child) = self.redis.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.stop_server(i, false);
        }
        self.kill_redis();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16) -> Option<Socket> {
    let mut request = format!("ws://127.0.0.1:{port}/").into_client_request().ok()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().ok()?);
    let connecting = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(Duration::from_secs(2), connecting).await {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

/// What one subscriber received, per channel, in arrival order.
#[derive(Debug, Default)]
struct Received {
    per_channel: HashMap<String, Vec<StreamId>>,
    truncated: u64,
    reconnects: u64,
}

impl Received {
    fn resume_point(&self, channel: &str) -> String {
        self.per_channel.get(channel).and_then(|ids| ids.last()).map_or_else(|| "0".to_owned(), ToString::to_string)
    }
}

async fn subscriber(
    ports: Vec<u16>,
    channels: Vec<String>,
    seed: u64,
    received: Arc<Mutex<Received>>,
    mut orders: mpsc::UnboundedReceiver<Order>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Acquire) {
        let port = ports[rng.random_range(0..ports.len())];
        let Some(mut ws) = connect(port).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut subscribed = true;
        for (id, channel) in channels.iter().enumerate() {
            let offset = received.lock().unwrap().resume_point(channel);
            let request = json!({"id": id, "op": "subscribe", "channel": channel, "offset": offset});
            if ws.send(Message::Text(request.to_string().into())).await.is_err() {
                subscribed = false;
                break;
            }
        }
        while subscribed && !stop.load(Ordering::Acquire) {
            let next = tokio::select! {
                order = orders.recv() => match order {
                    Some(Order::Cut) | None => break,
                    Some(Order::Stall(pause)) => {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                },
                next = tokio::time::timeout(Duration::from_millis(500), ws.next()) => next,
            };
            let text = match next {
                Err(_) => continue, // quiet; look at orders and the stop flag again
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break, // closed (lagging, shutdown, a killed server): resume elsewhere
            };
            let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if frame.get("error").is_some() {
                break; // a subscribe failed (Redis down): start over
            }
            let Some(channel) = frame.get("channel").and_then(Value::as_str) else { continue };
            let mut received = received.lock().unwrap();
            if frame["truncated"] == json!(true) {
                received.truncated += 1;
            }
            let ids = received.per_channel.entry(channel.to_owned()).or_default();
            for message in frame["messages"].as_array().into_iter().flatten() {
                if let Some(id) = message["offset"].as_str().and_then(|o| o.parse().ok()) {
                    ids.push(id);
                }
            }
        }
        received.lock().unwrap().reconnects += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
    }
}

async fn publisher(
    ports: Vec<u16>,
    channels: Vec<String>,
    seed: u64,
    target: u64,
    acknowledged: Arc<AtomicU64>,
    outcomes: Arc<Mutex<HashMap<String, u64>>>,
    not_stored: Arc<Mutex<HashSet<String>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sequence = 0u64;
    while acknowledged.load(Ordering::Acquire) < target {
        let port = ports[rng.random_range(0..ports.len())];
        let Some(mut ws) = connect(port).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while acknowledged.load(Ordering::Acquire) < target {
            sequence += 1;
            let channel = &channels[rng.random_range(0..channels.len())];
            let tag = format!("{seed}-{sequence}");
            let fields = ["from", &tag];
            let request = json!({"id": sequence, "op": "publish", "channel": channel, "fields": fields});
            if ws.send(Message::Text(request.to_string().into())).await.is_err() {
                break;
            }
            let reply = loop {
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => break serde_json::from_str::<Value>(&text).ok(),
                    Ok(Some(Ok(_))) => continue,
                    _ => break None,
                }
            };
            let Some(reply) = reply else { break };
            let outcome = match reply["error"]["code"].as_str() {
                None => {
                    acknowledged.fetch_add(1, Ordering::AcqRel);
                    "ok"
                }
                Some(code) => {
                    if code == "unavailable" {
                        // The server says it was not stored: the end checks that.
                        not_stored.lock().unwrap().insert(tag);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    code
                }
            };
            *outcomes.lock().unwrap().entry(outcome.to_owned()).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
    }
}

fn schedule(rng: &mut StdRng, args: &Args) -> Fault {
    match rng.random_range(0..10) {
        0..=2 => Fault::KillInstance(rng.random_range(0..args.instances)),
        3..=4 => Fault::TermInstance(rng.random_range(0..args.instances)),
        5 => Fault::RestartRedis,
        6..=7 => Fault::CutSubscriber(rng.random_range(0..args.subscribers)),
        _ => Fault::StallSubscriber(
            rng.random_range(0..args.subscribers),
            Duration::from_millis(rng.random_range(500..3000)),
        ),
    }
}

/// Lost, duplicated and reordered entries of one subscriber's `got` against the channel's `truth`.
fn compare(truth: &[StreamId], got: &[StreamId]) -> (u64, u64, u64, u64) {
    let truth_set: HashSet<&StreamId> = truth.iter().collect();
    let got_set: HashSet<&StreamId> = got.iter().collect();
    let lost = truth.iter().filter(|id| !got_set.contains(id)).count() as u64;
    let duplicated = (got.len() - got_set.len()) as u64;
    let reordered = got.windows(2).filter(|w| w[1] < w[0]).count() as u64;
    let phantom = got.iter().filter(|id| !truth_set.contains(id)).count() as u64;
    (lost, duplicated, reordered, phantom)
}

/// The channel's entries in Redis: IDs, and the publishers' tags.
fn xrange(redis_url: &str, channel: &str) -> anyhow::Result<(Vec<StreamId>, Vec<String>)> {
    let mut conn = redis::Client::open(redis_url)?.get_connection()?;
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(format!("rd:{channel}")).arg("-").arg("+").query(&mut conn)?;
    let ids = entries.iter().map(|(id, _)| id.parse().map_err(|e| anyhow::anyhow!("{e}"))).collect::<Result<_, _>>()?;
    let tags = entries.into_iter().filter_map(|(_, fields)| fields.into_iter().nth(1)).collect();
    Ok((ids, tags))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("redistribute-chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let fleet = Arc::new(Mutex::new(Fleet::start(&args)?));
    let (ports, redis_url, dir) = {
        let fleet = fleet.lock().unwrap();
        (fleet.ports.clone(), fleet.redis_url(), fleet.dir.clone())
    };
    let channels: Vec<String> = (0..args.channels).map(|c| format!("chaos-{}-{c}", args.seed)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut subscribers = Vec::new();
    let mut orders = Vec::new();
    for s in 0..args.subscribers {
        let received = Arc::new(Mutex::new(Received::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        orders.push(tx);
        let task = subscriber(
            ports.clone(),
            channels.clone(),
            args.seed * 1000 + s as u64,
            received.clone(),
            rx,
            stop.clone(),
        );
        subscribers.push((received, tokio::spawn(task)));
    }
    let acknowledged = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Mutex::new(HashMap::new()));
    let not_stored = Arc::new(Mutex::new(HashSet::new()));
    let publishers: Vec<_> = (0..args.publishers)
        .map(|p| {
            let task = publisher(
                ports.clone(),
                channels.clone(),
                args.seed * 1000 + 500 + p as u64,
                args.messages,
                acknowledged.clone(),
                outcomes.clone(),
                not_stored.clone(),
            );
            tokio::spawn(task)
        })
        .collect();

    // Faults until the publishers are done.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut faults: HashMap<&'static str, u64> = HashMap::new();
    let deadline = started + Duration::from_secs(args.timeout);
    while acknowledged.load(Ordering::Acquire) < args.messages {
        if Instant::now() > deadline {
            bail!(
                "timed out with {} of {} publishes acknowledged",
                acknowledged.load(Ordering::Acquire),
                args.messages
            );
        }
        let pause = rng.random_range(args.fault_every_ms / 2..=args.fault_every_ms * 3 / 2);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let fault = schedule(&mut rng, &args);
        let down_for = Duration::from_millis(rng.random_range(200..1000));
        let name = match fault {
            Fault::KillInstance(i) | Fault::TermInstance(i) => {
                let graceful = matches!(fault, Fault::TermInstance(_));
                let stopping = fleet.clone();
                tokio::task::spawn_blocking(move || stopping.lock().unwrap().stop_server(i, graceful)).await?;
                tokio::time::sleep(down_for).await;
                fleet.lock().unwrap().start_server(i)?;
                if graceful { "server SIGTERM" } else { "server SIGKILL" }
            }
            Fault::RestartRedis => {
                fleet.lock().unwrap().kill_redis();
                tokio::time::sleep(down_for).await;
                let starting = fleet.clone();
                tokio::task::spawn_blocking(move || starting.lock().unwrap().start_redis()).await??;
                "redis SIGKILL"
            }
            Fault::CutSubscriber(s) => {
                let _ = orders[s].send(Order::Cut);
                "connection cut"
            }
            Fault::StallSubscriber(s, pause) => {
                let _ = orders[s].send(Order::Stall(pause));
                "reader stalled"
            }
        };
        *faults.entry(name).or_default() += 1;
    }
    for publisher in publishers {
        publisher.await?;
    }
    let faults_done = started.elapsed();

    // Every subscriber catches up with what Redis holds.
    let mut truth: HashMap<String, Vec<StreamId>> = HashMap::new();
    let mut lied = 0u64;
    for channel in &channels {
        let (ids, tags) = xrange(&redis_url, channel)?;
        let not_stored = not_stored.lock().unwrap();
        lied += tags.iter().filter(|tag| not_stored.contains(*tag)).count() as u64;
        truth.insert(channel.clone(), ids);
    }
    let caught_up = |received: &Received| {
        channels.iter().all(|c| received.per_channel.get(c).and_then(|ids| ids.last()) == truth[c].last())
    };
    while !subscribers.iter().all(|(received, _)| caught_up(&received.lock().unwrap())) {
        if Instant::now() > deadline {
            eprintln!("timed out waiting for subscribers to catch up");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Release);
    for (_, task) in &subscribers {
        task.abort();
    }

    let stored: usize = truth.values().map(Vec::len).sum();
    let (mut lost, mut duplicated, mut reordered, mut phantom, mut truncated, mut reconnects) = (0, 0, 0, 0, 0, 0);
    for (received, _) in &subscribers {
        let received = received.lock().unwrap();
        truncated += received.truncated;
        reconnects += received.reconnects;
        for channel in &channels {
            let got = received.per_channel.get(channel).map(Vec::as_slice).unwrap_or_default();
            let (l, d, r, p) = compare(&truth[channel], got);
            (lost, duplicated, reordered, phantom) = (lost + l, duplicated + d, reordered + r, phantom + p);
        }
    }
    let mut faults: Vec<_> = faults.into_iter().collect();
    faults.sort();
    let mut outcomes: Vec<_> = outcomes.lock().unwrap().clone().into_iter().collect();
    outcomes.sort();
    println!(
        "seed {}: {} instances, {} subscribers × {} channels, {} publishers",
        args.seed, args.instances, args.subscribers, args.channels, args.publishers
    );
    println!(
        "publishes acknowledged {} (replies: {outcomes:?}); entries in Redis {stored}; answered unavailable yet stored {lied}",
        acknowledged.load(Ordering::Acquire)
    );
    println!("faults in {:.1} s: {faults:?}; subscriber reconnects {reconnects}", faults_done.as_secs_f64());
    println!(
        "checked {} deliveries: lost {lost}, duplicated {duplicated}, reordered {reordered}, unknown {phantom}, truncated reports {truncated}",
        stored * args.subscribers
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    let clean = lost + duplicated + reordered + phantom + truncated + lied == 0;
    if !clean {
        eprintln!("logs kept in {}", dir.display());
        fleet.lock().unwrap().keep = true;
    }
    Ok(clean && stored as u64 >= args.messages)
}
