//! A seeded wire fuzzer: concurrent connections send grammar-made and mutated frames to a real
//! server (on Redis and on the memory engine). Every text frame must get exactly one reply, no
//! reply may be `internal`, no connection may be closed by the server, and the server must serve
//! a well-behaved client normally afterwards.
//!
//! The short run is part of `cargo test`; a long one:
//!
//! ```text
//! RD_FUZZ_SEED=42 RD_FUZZ_FRAMES=20000 cargo test --release -p redistribute --test integration fuzz
//! ```

use crate::support::{Redis, TestServer, config, connect};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redistribute::Config;
use redistribute::rate::RateLimits;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Connections fuzzing at once.
const CONNECTIONS: u64 = 8;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A value of any JSON type, small, with the numbers that break parsers.
fn any_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(*pick(rng, &[0i64, -1, 1, i64::MAX, i64::MIN, 9_007_199_254_740_993])),
        3 => json!(*pick(rng, &[u64::MAX, 1 << 53, 18_446_744_073_709_551_615])),
        4 => json!(*pick(rng, &[0.5f64, -0.0, 1e308, 3.0])),
        5 => json!(weird_string(rng)),
        6 => Value::Array((0..rng.random_range(0..5)).map(|_| any_value(rng, depth + 1)).collect()),
        _ => Value::Object((0..rng.random_range(0..4)).map(|i| (format!("k{i}"), any_value(rng, depth + 1))).collect()),
    }
}

fn weird_string(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0 => String::new(),
        1 => "x".repeat(rng.random_range(200..400)),
        2 => "é✓🦀\u{0}\u{7f}\u{202e}".to_owned(),
        3 => "$".to_owned(),
        4 => "0".to_owned(),
        5 => "18446744073709551615-18446744073709551615".to_owned(),
        6 => format!("{}-{}", rng.random::<u64>(), rng.random::<u64>()),
        7 => "-1-1".to_owned(),
        8 => "*".to_owned(),
        _ => format!("c{}", rng.random_range(0..4)),
    }
}

fn channel(rng: &mut StdRng) -> Value {
    if rng.random_bool(0.8) { json!(format!("fz{}", rng.random_range(0..4))) } else { any_value(rng, 0) }
}

fn offset(rng: &mut StdRng) -> Value {
    if rng.random_bool(0.5) { json!(*pick(rng, &["$", "0", "0-0", "1-1"])) } else { any_value(rng, 0) }
}

/// A request from the protocol's grammar, with arguments anywhere from valid to hostile.
fn request(rng: &mut StdRng, id: u64) -> Value {
    let id = if rng.random_bool(0.9) { json!(id) } else { any_value(rng, 0) };
    let mut frame = match rng.random_range(0..9) {
        0 => json!({"op": "subscribe", "channel": channel(rng), "offset": offset(rng)}),
        1 => json!({"op": "unsubscribe", "channel": channel(rng)}),
        2 => {
            let fields = if rng.random_bool(0.7) {
                json!(["k", format!("v{}", rng.random::<u32>())])
            } else {
                any_value(rng, 0)
            };
            json!({"op": "publish", "channel": channel(rng), "fields": fields})
        }
        3 => json!({"op": "publish", "channel": channel(rng), "fields": ["k", "v"], "maxlen": any_value(rng, 0)}),
        4 => json!({"op": "ping"}),
        5 => {
            json!({"op": "subscribe", "channel": channel(rng), "group": any_value(rng, 0), "consumer": any_value(rng, 0), "offset": offset(rng)})
        }
        6 => json!({"op": "ack", "channel": channel(rng), "group": "g", "offsets": any_value(rng, 0)}),
        7 => json!({"op": "auth", "token": any_value(rng, 0)}),
        _ => json!({"op": any_value(rng, 0)}),
    };
    frame["id"] = id;
    if rng.random_bool(0.1) {
        frame[weird_string(rng)] = any_value(rng, 0);
    }
    frame
}

/// A frame's text, sometimes mutated: characters replaced, inserted or removed, or cut short.
fn mutate(rng: &mut StdRng, text: String) -> String {
    if rng.random_bool(0.7) {
        return text;
    }
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..=chars.len());
        match rng.random_range(0..4) {
            0 if at < chars.len() => {
                chars[at] = *pick(rng, &['"', '{', '}', '[', ']', ',', ':', '\\', '0', 'x', '\u{0}'])
            }
            1 => chars.insert(at, *pick(rng, &['"', '{', '\\', '-', '9', 'é'])),
            2 if at < chars.len() => {
                chars.remove(at);
            }
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

/// One fuzzing connection: sends frames one at a time and checks the reply to each.
async fn fuzz_connection(url: String, seed: u64, frames: u64) -> Result<u64, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = connect(&url).await;
    let mut replies = 0;
    for n in 0..frames {
        let frame = request(&mut rng, n).to_string();
        let text = mutate(&mut rng, frame);
        let message = if rng.random_bool(0.02) {
            Message::Binary(text.clone().into_bytes().into())
        } else {
            Message::Text(text.clone().into())
        };
        client.send(message).await;
        // Exactly one reply per frame; pushes may come first.
        loop {
            let frame =
                client.recv_frame_or_close().await.map_err(|close| format!("seed {seed}: after {text:?}: {close}"))?;
            if frame.get("id").is_none() {
                continue;
            }
            if frame["error"]["code"] == "internal" {
                return Err(format!("seed {seed}: {text:?} got {frame}"));
            }
            replies += 1;
            break;
        }
    }
    Ok(replies)
}

async fn fuzz(cfg: Config) {
    let seed = env_number("RD_FUZZ_SEED", 1);
    let frames = env_number("RD_FUZZ_FRAMES", 300);
    let mut cfg = cfg;
    cfg.rate_limits = RateLimits { requests: None, publishes: None, auths: None, strikes: u32::MAX };
    cfg.max_frame_bytes = 4096;
    let server = TestServer::start(cfg).await;
    let tasks: Vec<_> =
        (0..CONNECTIONS).map(|c| tokio::spawn(fuzz_connection(server.url(), seed * 100 + c, frames))).collect();
    for task in tasks {
        let replies = tokio::time::timeout(Duration::from_secs(60 + frames / 10), task)
            .await
            .expect("the fuzzers finish")
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replies, frames, "one reply per frame");
    }
    // The server still serves a well-behaved client.
    let mut client = connect(&server.url()).await;
    client.subscribe("after-fuzz", "0").await;
    let offset = client.publish("after-fuzz", &["k", "v"]).await;
    assert_eq!(client.entries("after-fuzz", 1).await[0].0, offset);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_frames_get_clear_answers_on_redis() {
    let redis = Redis::start();
    fuzz(config(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_frames_get_clear_answers_on_the_memory_engine() {
    fuzz(Config::default()).await;
}
