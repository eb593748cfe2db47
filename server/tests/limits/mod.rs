//! Limits under abuse and honest answers under faults, against a real Redis: request and
//! publish rates, the close of a client that ignores them, and publishes whose outcome is unknown.

use crate::support::{Redis, TestServer, config, connect};
use redistribute::access::{AccessConfig, ChannelRule, Glob, Ops};
use redistribute::rate::{Rate, RateLimits};
use serde_json::json;
use std::time::Duration;

fn open_rule(pattern: &str, publish_rate: Option<Rate>) -> ChannelRule {
    ChannelRule {
        pattern: Glob::new(pattern).unwrap(),
        anonymous: Ops::ALL,
        authenticated: Ops::NONE,
        maxlen: None,
        client_maxlen: true,
        publish_rate,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_the_rates_get_rate_limited_with_a_retry_time() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.rate_limits =
        RateLimits { requests: None, publishes: Some(Rate::new(10.0, 5).unwrap()), auths: None, strikes: 100 };
    let rules = vec![open_rule("slow:*", Some(Rate::new(0.5, 1).unwrap())), open_rule("*", None)];
    cfg.access = AccessConfig { rules, ..AccessConfig::default() };
    let server = TestServer::start(cfg).await;
    let mut client = connect(&server.url()).await;
    let publish = |channel: &str| json!({"op": "publish", "channel": channel, "fields": ["k", "v"]});
    for _ in 0..5 {
        assert!(client.request(publish("c")).await["ok"]["offset"].is_string(), "the burst");
    }
    let refused = client.request(publish("c")).await;
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    let wait = refused["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=100).contains(&wait), "one token per 100 ms: {wait}");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert!(client.request(publish("c")).await["ok"]["offset"].is_string(), "after the retry time");
    assert_eq!(redis.xrange_after("c", "0").len(), 6, "refused publishes stored nothing");

    // A rule's own rate, per connection: another connection has its own bucket.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(client.request(publish("slow:a")).await["ok"].is_object());
    let refused = client.request(publish("slow:b")).await;
    assert_eq!(refused["error"]["code"], "rate_limited", "the rule's rate covers all its channels");
    assert!(refused["error"]["retry_after_ms"].as_u64().unwrap() > 1000);
    let mut other = connect(&server.url()).await;
    assert!(other.request(publish("slow:a")).await["ok"].is_object());
    assert!(client.request(json!({"op": "ping"})).await["ok"].is_object(), "other requests are not limited");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_rate_limited_is_closed_with_4003() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.rate_limits =
        RateLimits { requests: Some(Rate::new(1.0, 10).unwrap()), publishes: None, auths: None, strikes: 20 };
    let server = TestServer::start(cfg).await;
    let mut client = connect(&server.url()).await;
    let mut bystander = connect(&server.url()).await;
    for id in 0..40 {
        client.send_text(&json!({"id": id, "op": "ping"}).to_string()).await;
    }
    let mut codes = Vec::new();
    for _ in 0..30 {
        let reply = client.reply().await;
        codes.push(reply["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes[..10], vec!["ok"; 10], "the burst");
    assert_eq!(codes[10..], vec!["rate_limited"; 20], "then refusals, each with its id");
    let (code, reason) = client.closed().await;
    assert_eq!(code, 4003, "{reason}");
    assert!(bystander.request(json!({"op": "ping"})).await["ok"].is_object(), "others are unaffected");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_does_not_answer_in_time_is_unknown_outcome_not_unavailable() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.redis_timeout = Duration::from_millis(300);
    let server = TestServer::start(cfg).await;
    let mut client = connect(&server.url()).await;
    client.publish("slow", &["n", "first"]).await;
    let mut admin = redis.conn();
    // Writes wait while Redis is paused; the server gives up after its 300 ms timeout.
    redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("WRITE").exec(&mut admin).unwrap();
    let reply = client.request(json!({"op": "publish", "channel": "slow", "fields": ["n", "second"]})).await;
    assert_eq!(reply["error"]["code"], "unknown_outcome", "{reply}");
    redis::cmd("CLIENT").arg("UNPAUSE").exec(&mut admin).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Redis ran the command once it woke: "unavailable" (not stored) would have been a lie.
    let stored: Vec<String> =
        redis.xrange_after("slow", "0").into_iter().map(|(_, fields)| fields[1].clone()).collect();
    assert_eq!(stored, ["first", "second"]);
    server.stop().await;
}

/// The value of the first `/metrics` sample whose line starts with `name` (labels included).
fn sample(metrics: &str, name: &str) -> f64 {
    let line = metrics.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.rate_limits =
        RateLimits { requests: None, publishes: Some(Rate::new(1.0, 3).unwrap()), auths: None, strikes: 100 };
    cfg.max_frame_bytes = 1024;
    let server = TestServer::start(cfg).await;
    let mut subscriber = connect(&server.url()).await;
    let mut publisher = connect(&server.url()).await;
    subscriber.subscribe("m", "$").await;
    for n in 0..3 {
        publisher.publish("m", &["n", &n.to_string()]).await;
    }
    let refused = publisher.request(json!({"op": "publish", "channel": "m", "fields": ["n", "3"]})).await;
    assert_eq!(refused["error"]["code"], "rate_limited");
    assert_eq!(subscriber.entries("m", 3).await.len(), 3);
    let mut oversized = connect(&server.url()).await;
    oversized.send_text(&"x".repeat(200 << 10)).await;
    assert_eq!(oversized.closed().await.0, 1009);

    let mut metrics = String::new();
    // The 1009 close is counted as its connection ends, just after the client saw the close.
    for _ in 0..50 {
        metrics = server.http("GET /metrics HTTP/1.1\r\n\r\n").await;
        if metrics.contains("redistribute_closes_total{code=\"1009\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"), "{metrics}");
    assert_eq!(sample(&metrics, "redistribute_closes_total{code=\"1009\"}"), 1.0);
    assert_eq!(sample(&metrics, "redistribute_websockets_open "), 2.0);
    assert_eq!(sample(&metrics, "redistribute_subscriptions "), 1.0);
    assert_eq!(sample(&metrics, "redistribute_publishes_total "), 3.0);
    assert_eq!(sample(&metrics, "redistribute_deliveries_total "), 3.0);
    assert_eq!(sample(&metrics, "redistribute_errors_total{code=\"rate_limited\"}"), 1.0);
    assert_eq!(sample(&metrics, "redistribute_redis_command_seconds_count{command=\"XADD\"}"), 3.0);
    let batches = sample(&metrics, "redistribute_reader_lag_seconds_count ");
    assert!((1.0..=3.0).contains(&batches), "one lag sample per batch read: {batches}");
    assert!(sample(&metrics, "redistribute_connections_accepted_total ") >= 4.0, "3 sockets and the scrapes");
    assert_eq!(sample(&metrics, "redistribute_send_queue_bytes "), 0.0, "everything was read");
    server.stop().await;
}
