//! `redistribute-load`: a load generator for Redistribute servers, on loopback only.
//!
//! It connects `--subscribers` WebSockets (spread over every `--url`) to `--channels` channels, then
//! `--publishers` connections publish for `--seconds` (each keeping `--window` requests in
//! flight), and reports publishes per second, deliveries per second, delivery latency, and
//! whether every subscriber received every entry exactly once, in order.
//!
//! ```text
//! redistribute-load --url ws://127.0.0.1:8080/ --subscribers 1000 --seconds 10
//! ```
//!
//! Two other scenarios time one thing each: `--catch-up N` (a new subscriber replaying N
//! entries) and `--resume N --redis URI` (the pause after the server's Redis connections are cut
//! while it follows N channels).

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use redistribute::protocol::{Push, SUBPROTOCOL};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Barrier, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Load generator for Redistribute (loopback targets only).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server URL; repeat to spread subscribers and publishers over several instances.
    #[arg(long = "url", default_value = "ws://127.0.0.1:8080/")]
    urls: Vec<String>,
    /// Subscribing connections.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Requests each publisher keeps in flight.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Target publishes per second over all publishers (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long to publish.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes of payload per message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Channel to use (a fresh one per run by default).
    #[arg(long)]
    channel: Option<String>,
    /// Channels: subscribers are spread over them, and publishers publish to each in turn
    /// (`<channel>-0`, `<channel>-1`, …).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// First run the same scenario against a bare fan-out server (`redistribute-baseline`,
    /// started next to this binary), and print every figure also as a ratio to it.
    #[arg(long)]
    baseline: bool,
    /// The server's process ID: its RSS is reported once the subscribers are connected (with
    /// `--baseline`, the baseline's is reported too).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Runs of the scenario (alternating with the baseline's); the summary gives the median of
    /// each figure, since one run on a shared machine is noise-prone.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Instead of the fan-out scenario: store this many entries in a fresh channel, then time a
    /// new subscriber replaying all of them from offset 0 (catch-up replay), once per run.
    #[arg(long)]
    catch_up: Option<u64>,
    /// Instead of the fan-out scenario: follow this many channels (one entry stored in each),
    /// cut every Redis client connection (`CLIENT KILL TYPE normal` on --redis) and time until a
    /// publish made right after reaches its subscriber, once per run: the stream reader's
    /// reconnect and its check of every followed channel for lost entries.
    #[arg(long, requires = "redis")]
    resume: Option<usize>,
    /// The server's Redis (loopback only), for --resume.
    #[arg(long)]
    redis: Option<String>,
    /// Also follow this many channels that get no traffic (250 per extra connection), so the
    /// server's readers follow them too: what followed channels cost the busy ones.
    #[arg(long, default_value_t = 0)]
    idle_channels: usize,
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Report {
    published_per_s: f64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The server's RSS once the subscribers were connected, if its PID is known.
    rss_mib: Option<f64>,
}

/// A process's resident memory, from `/proc`.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url.split("://").nth(1).unwrap_or("").split(['/', ':']).next().unwrap_or("");
    if host == "localhost" || host.starts_with("127.") || host == "[" {
        Ok(())
    } else {
        bail!("refusing to send load to {url}: only loopback targets (127.0.0.0/8, localhost) are allowed")
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request).await.with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// What one subscriber saw.
#[derive(Default)]
struct Tally {
    received: u64,
    out_of_order: u64,
    latencies_us: Vec<u64>,
}

/// How many entries each channel got, once publishing is over.
type Expected = watch::Receiver<Option<Arc<Vec<u64>>>>;

async fn subscriber(
    url: String,
    (index, channel): (usize, String),
    ready: Arc<Barrier>,
    mut expected: Expected,
    sample: bool,
) -> anyhow::Result<Tally> {
    let mut ws = connect(&url).await?;
    let request = format!(r#"{{"id":1,"op":"subscribe","channel":"{channel}","offset":"$"}}"#);
    ws.send(Message::Text(request.into())).await?;
    match ws.next().await {
        Some(Ok(Message::Text(reply))) if reply.contains("\"ok\"") => {}
        other => bail!("subscribe failed: {other:?}"),
    }
    ready.wait().await;
    let mut tally = Tally::default();
    let mut last = redistribute::StreamId::ZERO;
    loop {
        if expected.borrow().as_ref().is_some_and(|goal| tally.received >= goal[index]) {
            return Ok(tally);
        }
        let next = tokio::select! {
            _ = expected.changed() => continue,
            next = tokio::time::timeout(Duration::from_secs(10), ws.next()) => next,
        };
        let frame = match next {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            Ok(other) => bail!("subscriber connection ended: {other:?}"),
            Err(_) => return Ok(tally), // nothing more is coming; the report shows the shortfall
        };
        if sample {
            // A few subscribers parse fully: order and latency.
            let push: Push<'_> = serde_json::from_str(&frame)?;
            let now = now_micros();
            for entry in push.messages.iter() {
                if entry.offset <= last {
                    tally.out_of_order += 1;
                }
                last = entry.offset;
                if let Some(sent) = entry.fields.get(1).and_then(|t| t.parse::<u64>().ok()) {
                    tally.latencies_us.push(now.saturating_sub(sent));
                }
            }
            tally.received += push.messages.len() as u64;
        } else {
            // The rest only count: `"offset":"` cannot occur inside a JSON string unescaped.
            tally.received += frame.matches("\"offset\":\"").count() as u64;
        }
    }
}

/// Publishes to `channels` in turn; returns how many were acknowledged on each.
async fn publisher(
    url: String,
    channels: Arc<Vec<String>>,
    args: Arc<Args>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<u64>> {
    let mut ws = connect(&url).await?;
    let payload = "x".repeat(args.payload);
    let per_publisher_rate = if args.rate == 0 { 0 } else { (args.rate / args.publishers as u64).max(1) };
    let started = Instant::now();
    let mut in_flight = VecDeque::new();
    let (mut sent, mut id) = (0u64, 0u64);
    let mut acked = vec![0u64; channels.len()];
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let paced =
            per_publisher_rate == 0 || sent < (started.elapsed().as_secs_f64() * per_publisher_rate as f64) as u64;
        if !stopping && in_flight.len() < args.window && paced {
            id += 1;
            let index = (id as usize) % channels.len();
            let channel = &channels[index];
            let frame = format!(
                r#"{{"id":{id},"op":"publish","channel":"{channel}","fields":["t","{}","p","{payload}"]}}"#,
                now_micros()
            );
            ws.feed(Message::Text(frame.into())).await?;
            in_flight.push_back(index);
            sent += 1;
            continue;
        }
        ws.flush().await?;
        if in_flight.is_empty() {
            if stopping {
                return Ok(acked);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        match ws.next().await {
            Some(Ok(Message::Text(reply))) => {
                if !reply.contains("\"ok\"") {
                    bail!("publish failed: {reply}");
                }
                let index = in_flight.pop_front().expect("a reply answers a request in flight");
                acked[index] += 1;
            }
            Some(Ok(_)) => {}
            other => bail!("publisher connection ended: {other:?}"),
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    for url in &args.urls {
        check_loopback(url)?;
    }
    if let Some(entries) = args.catch_up {
        return catch_up(&args, entries).await;
    }
    if let (Some(channels), Some(redis)) = (args.resume, &args.redis) {
        check_loopback(redis)?;
        return resume(&args, channels, redis).await;
    }
    let baseline = args.baseline.then(start_baseline).transpose()?;
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for run_number in 1..=args.runs.max(1) {
        if let Some(baseline) = &baseline {
            println!("-- bare fan-out baseline (redistribute-baseline), run {run_number}");
            // Its RSS is measured only when ours is (`--server-pid`).
            let pid = args.server_pid.map(|_| baseline.child.id());
            base.push(run(&args, std::slice::from_ref(&baseline.url), pid).await?);
        }
        println!("-- redistribute, run {run_number}");
        ours.push(run(&args, &args.urls, args.server_pid).await?);
    }
    drop(baseline);
    let ours = Report::median(&ours);
    // Also for one run, so that scripts read the figures in one place.
    println!("-- median of {} runs", args.runs);
    ours.print("");
    if !base.is_empty() {
        let base = Report::median(&base);
        base.print("baseline ");
        println!("-- ratio to the baseline");
        println!("deliveries/s       {:.2}x", ours.deliveries_per_s / base.deliveries_per_s);
        println!("published/s        {:.2}x", ours.published_per_s / base.published_per_s);
        println!("latency p50, p99   {:.2}x, {:.2}x", ours.p50_ms / base.p50_ms, ours.p99_ms / base.p99_ms);
        if let (Some(ours), Some(base)) = (ours.rss_mib, base.rss_mib) {
            println!("server RSS         {:.2}x", ours / base);
        }
    }
    Ok(())
}

impl Report {
    /// Each figure's median over `runs`.
    fn median(runs: &[Report]) -> Report {
        let median = |figure: fn(&Report) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(figure).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        Report {
            published_per_s: median(|r| r.published_per_s),
            deliveries_per_s: median(|r| r.deliveries_per_s),
            p50_ms: median(|r| r.p50_ms),
            p99_ms: median(|r| r.p99_ms),
            rss_mib: runs.iter().all(|r| r.rss_mib.is_some()).then(|| median(|r| r.rss_mib.unwrap_or_default())),
        }
    }

    fn print(&self, who: &str) {
        println!(
            "{who}published/s {:.0}, deliveries/s {:.0}, latency p50 {:.2} ms, p99 {:.2} ms",
            self.published_per_s, self.deliveries_per_s, self.p50_ms, self.p99_ms
        );
        if let Some(rss) = self.rss_mib {
            println!("{who}server RSS {rss:.1} MiB");
        }
    }
}

/// Fills a fresh channel with `entries` entries, then times new subscribers replaying them all.
async fn catch_up(args: &Args, entries: u64) -> anyhow::Result<()> {
    let url = &args.urls[0];
    let channel = args.channel.clone().unwrap_or_else(|| format!("catch-up-{}", now_micros()));
    let filling = Instant::now();
    fill(url, std::slice::from_ref(&channel), entries, &"x".repeat(args.payload), args.window.max(1)).await?;
    println!("stored             {entries} entries in {:.2?}", filling.elapsed());
    let mut times = Vec::new();
    for run_number in 1..=args.runs.max(1) {
        let mut ws = connect(url).await?;
        let started = Instant::now();
        let request = format!(r#"{{"id":1,"op":"subscribe","channel":"{channel}","offset":"0"}}"#);
        ws.send(Message::Text(request.into())).await?;
        let mut received = 0u64;
        while received < entries {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => received += text.matches("\"offset\":\"").count() as u64,
                Ok(Some(Ok(_))) => {}
                other => bail!("replay stopped after {received} of {entries} entries: {other:?}"),
            }
        }
        let took = started.elapsed();
        println!(
            "replay, run {run_number}     {entries} entries in {took:.2?} ({:.0}/s)",
            entries as f64 / took.as_secs_f64()
        );
        times.push(took);
    }
    times.sort();
    println!("replay, median     {:.2?}", times[times.len() / 2]);
    Ok(())
}

/// Channels one connection follows in the --resume scenario and for --idle-channels (the
/// server's default `--max-subscriptions` is 256).
const CHANNELS_PER_CONNECTION: usize = 250;

/// Follows `channels` fresh channels with one entry each, then, once per run, cuts the server's
/// Redis connections and times until a publish made right after reaches its subscriber.
async fn resume(args: &Args, channels: usize, redis_url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(channels > 0, "--resume needs at least one channel");
    let url = &args.urls[0];
    let base = format!("resume-{}", now_micros());
    let names: Vec<String> = (0..channels).map(|i| format!("{base}-{i}")).collect();
    let mut subscribers = follow_many(url, &names).await?;
    let payload = "x".repeat(args.payload);
    let stored = Instant::now();
    fill(url, &names, channels as u64, &payload, args.window.max(1)).await?;
    for (ws, chunk) in subscribers.iter_mut().zip(names.chunks(CHANNELS_PER_CONNECTION)) {
        expect_frames(ws, chunk.len(), "\"messages\"").await.context("receiving the first entries")?;
    }
    println!(
        "following          {channels} channels, one entry each (stored and delivered in {:.2?})",
        stored.elapsed()
    );

    let mut redis = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
    let (probe, listener) = (names.last().expect("a channel"), subscribers.last_mut().expect("a subscriber"));
    let mut times = Vec::new();
    for run_number in 1..=args.runs.max(1) {
        let killed: u64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query_async(&mut redis).await?;
        let started = Instant::now();
        let mut publisher = connect(url).await?;
        loop {
            let frame = format!(r#"{{"id":1,"op":"publish","channel":"{probe}","fields":["probe","{run_number}"]}}"#);
            publisher.send(Message::Text(frame.into())).await?;
            match tokio::time::timeout(Duration::from_secs(30), publisher.next()).await {
                Ok(Some(Ok(Message::Text(reply)))) if reply.contains("\"ok\"") => break,
                Ok(Some(Ok(Message::Text(_)))) => tokio::time::sleep(Duration::from_millis(5)).await,
                other => bail!("publishing the probe: {other:?}"),
            }
        }
        expect_frames(listener, 1, "\"messages\"").await.context("waiting for the probe")?;
        let took = started.elapsed();
        println!("resume, run {run_number}     {took:.2?} ({killed} Redis connections cut)");
        times.push(took);
    }
    times.sort();
    println!("resume, median     {:.2?} with {channels} channels followed", times[times.len() / 2]);
    Ok(())
}

/// Subscribes to `channels` from `$`, 250 per connection; returns the connections.
async fn follow_many(url: &str, channels: &[String]) -> anyhow::Result<Vec<Socket>> {
    let mut connections = Vec::new();
    for chunk in channels.chunks(CHANNELS_PER_CONNECTION) {
        let mut ws = connect(url).await?;
        for (id, channel) in chunk.iter().enumerate() {
            let request = format!(r#"{{"id":{id},"op":"subscribe","channel":"{channel}","offset":"$"}}"#);
            ws.feed(Message::Text(request.into())).await?;
        }
        ws.flush().await?;
        expect_frames(&mut ws, chunk.len(), "\"ok\"").await.context("subscribing")?;
        connections.push(ws);
    }
    Ok(connections)
}

/// Reads text frames until `count` of them contain `marker` (30 s without a frame is an error).
async fn expect_frames(ws: &mut Socket, count: usize, marker: &str) -> anyhow::Result<()> {
    let mut seen = 0;
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains(marker) => seen += 1,
            Ok(Some(Ok(Message::Text(text)))) if text.contains("\"error\"") => bail!("{text}"),
            Ok(Some(Ok(_))) => {}
            other => bail!("{seen} of {count} frames, then: {other:?}"),
        }
    }
    Ok(())
}

/// Publishes `entries` entries over `channels` in turn, `window` in flight at a time.
async fn fill(url: &str, channels: &[String], entries: u64, payload: &str, window: usize) -> anyhow::Result<()> {
    let mut ws = connect(url).await?;
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < entries {
        while sent < entries && sent - acked < window as u64 {
            let channel = &channels[(sent % channels.len() as u64) as usize];
            sent += 1;
            let frame = format!(r#"{{"id":{sent},"op":"publish","channel":"{channel}","fields":["p","{payload}"]}}"#);
            ws.feed(Message::Text(frame.into())).await?;
        }
        ws.flush().await?;
        match ws.next().await {
            Some(Ok(Message::Text(reply))) if reply.contains("\"ok\"") => acked += 1,
            Some(Ok(Message::Text(reply))) => bail!("publish failed: {reply}"),
            Some(Ok(_)) => {}
            other => bail!("publisher connection ended: {other:?}"),
        }
    }
    Ok(())
}

/// The baseline server, killed when dropped.
struct Baseline {
    child: std::process::Child,
    url: String,
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_baseline() -> anyhow::Result<Baseline> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let binary = std::env::current_exe()?.with_file_name("redistribute-baseline");
    let child = std::process::Command::new(&binary)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (build it with --bins)", binary.display()))?;
    let baseline = Baseline { child, url: format!("ws://127.0.0.1:{port}/") };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(baseline);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the baseline server did not start")
}

async fn run(args: &Arc<Args>, urls: &[String], server_pid: Option<u32>) -> anyhow::Result<Report> {
    let base = args.channel.clone().unwrap_or_else(|| format!("load-{}", now_micros()));
    let channels: Vec<String> = match args.channels {
        0 | 1 => vec![base.clone()],
        n => (0..n).map(|k| format!("{base}-{k}")).collect(),
    };
    let channels = Arc::new(channels);
    let idle: Vec<String> = (0..args.idle_channels).map(|k| format!("{base}-idle-{k}")).collect();
    // Held open (and never read: nothing is published to them) until the run ends.
    let _idle = follow_many(&urls[0], &idle).await?;
    let ready = Arc::new(Barrier::new(args.subscribers + 1));
    let (expected, expected_rx) = watch::channel(None);
    let connecting = Instant::now();
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let url = urls[i % urls.len()].clone();
        let channel = (i % channels.len(), channels[i % channels.len()].clone());
        subscribers.push(tokio::spawn(subscriber(url, channel, ready.clone(), expected_rx.clone(), i < 10)));
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    ready.wait().await;
    eprintln!("{} subscribers connected in {:.1?}", args.subscribers, connecting.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = server_pid.and_then(rss_mib);
    if let Some(rss) = rss {
        println!("server RSS         {rss:.1} MiB with {} subscribers connected", args.subscribers);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = Instant::now();
    let publishers: Vec<_> = (0..args.publishers)
        .map(|i| tokio::spawn(publisher(urls[i % urls.len()].clone(), channels.clone(), args.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Release);
    let mut per_channel = vec![0u64; channels.len()];
    for p in publishers {
        for (total, acked) in per_channel.iter_mut().zip(p.await??) {
            *total += acked;
        }
    }
    let published: u64 = per_channel.iter().sum();
    let publish_time = publishing.elapsed();
    let per_channel = Arc::new(per_channel);
    expected.send_replace(Some(per_channel.clone()));

    let mut total = 0u64;
    let mut short = 0usize;
    let mut out_of_order = 0u64;
    let mut latencies = Vec::new();
    for (i, s) in subscribers.into_iter().enumerate() {
        let tally = s.await??;
        total += tally.received;
        short += usize::from(tally.received != per_channel[i % channels.len()]);
        out_of_order += tally.out_of_order;
        latencies.extend(tally.latencies_us);
    }
    let delivery_time = publishing.elapsed();
    latencies.sort_unstable();
    println!("channels           {} ({base}…)", channels.len());
    println!("subscribers        {}", args.subscribers);
    println!(
        "published          {published} in {:.2?} ({:.0}/s)",
        publish_time,
        published as f64 / publish_time.as_secs_f64()
    );
    println!(
        "deliveries         {total} in {:.2?} ({:.0}/s)",
        delivery_time,
        total as f64 / delivery_time.as_secs_f64()
    );
    println!(
        "latency ms         p50 {:.2}  p99 {:.2}  max {:.2}  (sampled on 10 subscribers)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "complete           {} of {} subscribers got all of their channel's entries; {out_of_order} out of order",
        args.subscribers - short,
        args.subscribers
    );
    if short > 0 || out_of_order > 0 {
        bail!("some subscribers missed or reordered entries");
    }
    Ok(Report {
        published_per_s: published as f64 / publish_time.as_secs_f64(),
        deliveries_per_s: total as f64 / delivery_time.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        rss_mib: rss,
    })
}
