//! End-to-end tests of the server against a real `redis-server` and real WebSockets on loopback.

mod access;
mod cluster;
mod conformance;
mod fuzz;
mod groups;
mod limits;
mod support;

use redistribute::protocol::{Entry, Start};
use redistribute::{Config, ConnInfo, Decision, Hooks, ListenOptions, Server, StreamEvent};
use serde_json::{Value, json};
use std::time::Duration;
use support::{Hardened, PATIENCE, Redis, TestServer, config, connect, key};

fn strings(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_round_trip_resolves_dollar() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let before = redis.xadd("chat", &[("early", "1")]);

    let mut sub = connect(&server.url()).await;
    let ok = sub.subscribe("chat", "$").await;
    assert_eq!(ok, json!({"offset": before}), "`$` resolves to the last ID at once");

    let mut publisher = connect(&server.url()).await;
    let offset = publisher.publish("chat", &["TEST_MESSAGE", r#"{"foo":"bar"}"#]).await;
    let got = sub.entries("chat", 1).await;
    assert_eq!(got, vec![(offset.clone(), strings(&["TEST_MESSAGE", r#"{"foo":"bar"}"#]))]);
    // What the server published is an ordinary stream entry with exactly those fields.
    assert_eq!(redis.xrange_after("chat", &before), got);

    // Omitting the offset means `$` too.
    let mut late = connect(&server.url()).await;
    let reply = late.request(json!({"op": "subscribe", "channel": "chat"})).await;
    assert_eq!(reply["ok"], json!({"offset": offset}));
    // A missing stream resolves to 0-0.
    assert_eq!(late.subscribe("nothing-here", "$").await, json!({"offset": "0-0"}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_instance_reaches_the_others() {
    let redis = Redis::start();
    let a = TestServer::start(config(&redis)).await;
    let b = TestServer::start(config(&redis)).await;
    let mut on_a = connect(&a.url()).await;
    let mut on_b = connect(&b.url()).await;
    on_a.subscribe("room", "$").await;
    on_b.subscribe("room", "$").await;

    let from_b = on_b.publish("room", &["who", "b"]).await;
    let from_a = on_a.publish("room", &["who", "a"]).await;
    let expected = vec![(from_b, strings(&["who", "b"])), (from_a, strings(&["who", "a"]))];
    assert_eq!(on_a.entries("room", 2).await, expected);
    assert_eq!(on_b.entries("room", 2).await, expected);

    // Entries written by another program straight into Redis reach both.
    let direct = redis.xadd("room", &[("from", "redis-cli")]);
    assert_eq!(on_a.entries("room", 1).await, vec![(direct.clone(), strings(&["from", "redis-cli"]))]);
    assert_eq!(on_b.entries("room", 1).await, vec![(direct, strings(&["from", "redis-cli"]))]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_from_zero_and_from_a_middle_offset() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.history_page = 7; // several pages
    let server = TestServer::start(cfg).await;
    let ids: Vec<String> = (0..40).map(|i| redis.xadd("log", &[("n", &i.to_string())])).collect();

    let mut all = connect(&server.url()).await;
    assert_eq!(all.subscribe("log", "0").await, json!({"offset": "0-0"}));
    assert_eq!(all.entries("log", 40).await, redis.xrange_after("log", "0"));

    let mut middle = connect(&server.url()).await;
    assert_eq!(middle.subscribe("log", &ids[24]).await, json!({"offset": ids[24]}));
    let got = middle.entries("log", 15).await;
    assert_eq!(got, redis.xrange_after("log", &ids[24]));

    // Both continue live after the replay, with nothing repeated.
    let next = redis.xadd("log", &[("n", "40")]);
    assert_eq!(all.entries("log", 1).await[0].0, next);
    assert_eq!(middle.entries("log", 1).await[0].0, next);
    all.assert_quiet().await;
    middle.assert_quiet().await;
    server.stop().await;
}

/// The central promise: subscribers joining at random offsets while a publisher writes at full
/// speed each receive exactly `XRANGE` after their offset, entry by entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_from_replay_to_live_has_no_gap_and_no_duplicate_under_load() {
    const TOTAL: usize = 4000;
    const JOINERS: usize = 12;
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.history_page = 50; // replays span many pages while the publisher runs
    let a = TestServer::start(cfg.clone()).await;
    let b = TestServer::start(cfg).await;
    let urls = [a.url(), b.url()];

    let publisher_url = a.url();
    let publisher = tokio::spawn(async move {
        let mut client = connect(&publisher_url).await;
        let mut ids = Vec::with_capacity(TOTAL);
        for i in 0..TOTAL {
            ids.push(client.publish("load", &["seq", &i.to_string()]).await);
        }
        ids
    });

    let mut joiners = Vec::new();
    for j in 0..JOINERS {
        let url = urls[j % 2].clone();
        let redis_url = redis.url();
        joiners.push(tokio::spawn(async move {
            // Join at staggered points of the run (after j/JOINERS of it), from varied offsets.
            let mut conn = redis::Client::open(redis_url).unwrap().get_connection().unwrap();
            let deadline = std::time::Instant::now() + PATIENCE;
            while redis::cmd("XLEN").arg(key("load")).query::<usize>(&mut conn).unwrap() < TOTAL * j / JOINERS {
                assert!(std::time::Instant::now() < deadline, "the publisher stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let existing: Vec<(String, Vec<String>)> =
                redis::cmd("XRANGE").arg(key("load")).arg("-").arg("+").query(&mut conn).unwrap();
            let offset = match j % 4 {
                0 => "$".to_owned(),
                1 => "0".to_owned(),
                _ if existing.is_empty() => "0".to_owned(),
                _ => existing[(existing.len() * j / JOINERS).min(existing.len() - 1)].0.clone(),
            };
            let mut client = connect(&url).await;
            let ok = client.subscribe("load", &offset).await;
            let start = ok["offset"].as_str().unwrap().to_owned();
            let last = (TOTAL - 1).to_string();
            let got = client.entries_until("load", |e| e.last().is_some_and(|(_, f)| f[1] == last)).await;
            (start, got)
        }));
    }

    let ids = publisher.await.unwrap();
    assert_eq!(ids.len(), TOTAL);
    for joiner in joiners {
        let (start, got) = joiner.await.unwrap();
        let expected = redis.xrange_after("load", &start);
        assert_eq!(
            got.len(),
            expected.len(),
            "subscriber from {start} got {} entries, XRANGE has {}",
            got.len(),
            expected.len()
        );
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "subscriber from {start}: entry {i} differs");
        }
    }
    a.stop().await;
    b.stop().await;
}

/// Subscribes on a fresh connection, retrying while the storage is coming back; the `ok` body.
async fn subscribe_once_storage_answers(
    server: &TestServer,
    channel: &str,
    offset: &str,
) -> (support::PlainClient, Value) {
    for _ in 0..200 {
        let mut client = connect(&server.url()).await;
        let reply = client.request(json!({"op": "subscribe", "channel": channel, "offset": offset})).await;
        if let Some(ok) = reply.get("ok") {
            return (client, ok.clone());
        }
        assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the storage did not come back")
}

/// A resume offset ahead of the stream's last entry is one the stream lost: the subscriber is
/// told (`truncated`, reason `ahead`) and starts at the stream's end, instead of waiting silently
/// for entries after an offset the stream may never reach.
async fn check_ahead_of_the_stream(server: &TestServer, lost: &str) {
    let (mut resumed, ok) = subscribe_once_storage_answers(server, "lost", lost).await;
    assert_eq!(ok["truncated"], json!(true), "{ok}");
    assert_eq!(ok["reason"], json!("ahead"), "{ok}");
    let start = ok["offset"].as_str().unwrap().to_owned();
    assert!(
        start.parse::<redistribute::protocol::StreamId>().unwrap() < lost.parse().unwrap(),
        "starts at the stream's end"
    );
    let mut publisher = connect(&server.url()).await;
    let fresh = publisher.publish("lost", &["n", "after the loss"]).await;
    let got = resumed.entries("lost", 1).await;
    assert_eq!(got[0].0, fresh, "new entries reach the subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_offset_ahead_of_the_stream_after_redis_lost_its_data_is_reported() {
    let mut redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let mut client = connect(&server.url()).await;
    let seen: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(client.publish("lost", &["n", &i.to_string()]).await);
        }
        ids
    };
    // Redis comes back without persistence: the stream the client followed is gone.
    redis.restart_empty();
    check_ahead_of_the_stream(&server, &seen[2]).await;
    server.stop().await;
}

/// A live subscriber whose stream lost what it was given (Redis came back empty) is told when the
/// server's reader reconnects (`truncated`, `"ahead"`), and then gets the entries written since,
/// though their offsets are below the ones it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_is_told_when_redis_lost_what_it_delivered() {
    let mut redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let mut subscriber = connect(&server.url()).await;
    subscriber.subscribe("lost", "$").await;
    // Entries far in the future: whatever Redis stores after the restart has lower IDs.
    for i in 0..3 {
        redis.xadd_with_id("lost", &format!("99999999999999-{i}"), &[("n", &i.to_string())]);
    }
    assert_eq!(subscriber.entries("lost", 3).await.len(), 3);
    redis.restart_empty();
    let report = subscriber.push().await;
    assert_eq!(report, json!({"channel": "lost", "truncated": true, "reason": "ahead"}));
    let fresh = redis.xadd("lost", &[("n", "after the loss")]);
    assert_eq!(subscriber.entries("lost", 1).await, vec![(fresh, strings(&["n", "after the loss"]))]);
    subscriber.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_offset_ahead_of_the_stream_is_reported_on_the_memory_engine() {
    let server = TestServer::start(Config::default()).await;
    let mut client = connect(&server.url()).await;
    client.publish("lost", &["n", "0"]).await;
    // An offset this stream never had (a server restarted, or a client that kept a bad one).
    check_ahead_of_the_stream(&server, "99999999999999-0").await;
    server.stop().await;
}

/// A publish retried with the same `idempotency_key` is stored once and answered with the first
/// one's offset, also when both arrive in one pipelined batch; bad keys are refused.
async fn check_idempotent_publishes(server: &TestServer) {
    let mut client = connect(&server.url()).await;
    let publish = |key: &str, value: &str| json!({"op": "publish", "channel": "once", "fields": ["v", value], "idempotency_key": key});
    let first = client.request(publish("k-1", "a")).await["ok"].clone();
    assert!(first.get("duplicate").is_none(), "{first}");
    let retry = client.request(publish("k-1", "a (retried)")).await["ok"].clone();
    assert_eq!(retry, json!({"offset": first["offset"], "duplicate": true}));
    // Back to back, stored in one round trip: still once.
    client
        .send_text(
            &json!({"id": 901, "op": "publish", "channel": "once", "fields": ["v", "b"], "idempotency_key": "k-2"})
                .to_string(),
        )
        .await;
    client
        .send_text(
            &json!({"id": 902, "op": "publish", "channel": "once", "fields": ["v", "b"], "idempotency_key": "k-2"})
                .to_string(),
        )
        .await;
    let (one, two) = (client.reply().await, client.reply().await);
    assert_eq!(two["ok"], json!({"offset": one["ok"]["offset"], "duplicate": true}), "{one} {two}");
    let without_key = client.publish("once", &["v", "c"]).await;
    for bad in [json!(""), json!("x".repeat(65)), json!("has space"), json!(7)] {
        let error = client
            .expect_error(json!({"op": "publish", "channel": "once", "fields": ["v", "d"], "idempotency_key": bad}))
            .await;
        assert_eq!(error["code"], "bad_request", "{error}");
    }
    let mut reader = connect(&server.url()).await;
    reader.subscribe("once", "0").await;
    let stored: Vec<String> = reader.entries("once", 3).await.into_iter().map(|(offset, _)| offset).collect();
    assert_eq!(
        stored,
        [first["offset"].as_str().unwrap(), one["ok"]["offset"].as_str().unwrap(), without_key.as_str()]
    );
    reader.assert_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publishes_are_stored_once_on_redis() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    check_idempotent_publishes(&server).await;
    assert_eq!(redis.xrange_after("once", "0").len(), 3, "one entry per key in Redis");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publishes_are_stored_once_on_the_memory_engine() {
    let server = TestServer::start(Config::default()).await;
    check_idempotent_publishes(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_is_reported_as_truncated() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let ids: Vec<String> = (0..100).map(|i| redis.xadd("t", &[("n", &i.to_string())])).collect();
    let _: i64 = redis::cmd("XTRIM").arg(key("t")).arg("MAXLEN").arg(10).query(&mut redis.conn()).unwrap();

    let mut client = connect(&server.url()).await;
    let ok = client.subscribe("t", &ids[5]).await;
    assert_eq!(ok, json!({"offset": ids[5], "truncated": true, "reason": "trimmed"}));
    assert_eq!(client.entries("t", 10).await, redis.xrange_after("t", "0"), "what is left is still delivered");

    let mut intact = connect(&server.url()).await;
    assert_eq!(
        intact.subscribe("t", &ids[90]).await,
        json!({"offset": ids[90]}),
        "the offset is still there: nothing lost"
    );
    assert_eq!(intact.entries("t", 9).await, redis.xrange_after("t", &ids[90]));
    // An offset that was itself trimmed away cannot be told apart from one with losses after
    // it, so it is reported: erring towards telling, never towards silence.
    let mut boundary = connect(&server.url()).await;
    assert_eq!(boundary.subscribe("t", &ids[89]).await["truncated"], json!(true));

    let mut everything = connect(&server.url()).await;
    assert_eq!(everything.subscribe("t", "0").await["truncated"], json!(true), "entries after 0 were trimmed");
    let mut latest = connect(&server.url()).await;
    assert!(latest.subscribe("t", "$").await.get("truncated").is_none());

    // XDEL of an entry after the offset counts too.
    let _: i64 = redis::cmd("XDEL").arg(key("t")).arg(&ids[95]).query(&mut redis.conn()).unwrap();
    let mut after_delete = connect(&server.url()).await;
    assert_eq!(after_delete.subscribe("t", &ids[92]).await["truncated"], json!(true));
    server.stop().await;
}

/// Trimming that overtakes a slow replay is reported in the push that follows the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_racing_a_replay_is_reported_in_the_next_push() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.history_page = 5;
    cfg.send_queue_bytes = 100 << 10;
    let server = TestServer::start(cfg).await;
    // 25 MiB of history: more than loopback socket buffers hold, so the replay must wait for
    // the client, which reads nothing until the trim is done.
    let payload = "z".repeat(64 << 10);
    let ids: Vec<String> = (0..400).map(|i| redis.xadd("big", &[("n", &i.to_string()), ("p", &payload)])).collect();
    let mut client = connect(&server.url()).await;
    assert_eq!(client.subscribe("big", "0").await, json!({"offset": "0-0"}));
    let _: i64 = redis::cmd("XTRIM").arg(key("big")).arg("MAXLEN").arg(10).query(&mut redis.conn()).unwrap();

    let mut received = Vec::new();
    let mut flagged = 0;
    while received.last() != ids.last() {
        let push = client.push().await;
        if push["truncated"] == json!(true) {
            flagged += 1;
        }
        received.extend(push["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_str().unwrap().to_owned()));
    }
    assert_eq!(flagged, 1, "the hole is reported once");
    assert!(received.len() < ids.len(), "the trim did remove unsent entries");
    assert!(
        received.windows(2).all(|w| ids.iter().position(|i| *i == w[0]) < ids.iter().position(|i| *i == w[1])),
        "in order, no repeats"
    );
    assert_eq!(received[received.len() - 10..], ids[390..], "everything still retained arrives");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_trimmed_with_maxlen() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.maxlen.insert("configured".into(), 10);
    cfg.default_maxlen = Some(50);
    let server = TestServer::start(cfg).await;
    server.server.maxlen("runtime", 20);
    let mut client = connect(&server.url()).await;
    let xlen = |channel: &str| -> usize { redis::cmd("XLEN").arg(key(channel)).query(&mut redis.conn()).unwrap() };

    for i in 0..1000 {
        let n = i.to_string();
        client.publish("configured", &["n", &n]).await;
        client.publish("runtime", &["n", &n]).await;
        client.publish("defaulted", &["n", &n]).await;
        let reply =
            client.request(json!({"op": "publish", "channel": "per-request", "fields": ["n", n], "maxlen": 5})).await;
        assert!(reply.get("ok").is_some());
    }
    // `MAXLEN ~` trims whole radix-tree nodes (100 entries by default), so lengths sit between
    // the cap and cap + 100; without trimming they would be 1000.
    for (key, cap) in [("configured", 10), ("runtime", 20), ("defaulted", 50), ("per-request", 5)] {
        let len = xlen(key);
        assert!(len >= cap && len <= cap + 100, "{key}: XLEN {len} for MAXLEN ~ {cap}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_connection_keeps_working() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.max_frame_bytes = 4096;
    cfg.max_subscriptions = 2;
    let server = TestServer::start(cfg).await;
    let mut bystander = connect(&server.url()).await;
    bystander.subscribe("calm", "$").await;
    let mut client = connect(&server.url()).await;

    let cases: Vec<(&str, Option<u64>, &str, &str)> = vec![
        ("{not json", None, "bad_request", "not valid JSON"),
        ("[1,2,3]", None, "bad_request", "must be a JSON object"),
        ("\"text\"", None, "bad_request", "must be a JSON object"),
        (r#"{"op":"ping"}"#, None, "bad_request", "missing \"id\""),
        (r#"{"id":"x","op":"ping"}"#, None, "bad_request", "\"id\" must be an integer"),
        (r#"{"id":1,"op":"dance"}"#, Some(1), "unknown_op", "unknown op"),
        (r#"{"id":2}"#, Some(2), "bad_request", "missing \"op\""),
        (r#"{"id":3,"op":"publish","channel":"c"}"#, Some(3), "bad_request", "\"fields\" must be an array"),
        (r#"{"id":4,"op":"publish","channel":"c","fields":["a"]}"#, Some(4), "bad_request", "even number"),
        (
            r#"{"id":5,"op":"publish","channel":"c","fields":["a",1]}"#,
            Some(5),
            "bad_request",
            "fields[1] must be a string",
        ),
        (r#"{"id":6,"op":"publish","channel":"c","fields":["a","b"],"maxlen":-1}"#, Some(6), "bad_request", "maxlen"),
        (r#"{"id":7,"op":"subscribe","channel":""}"#, Some(7), "bad_request", "must not be empty"),
        (r#"{"id":8,"op":"subscribe","channel":"has space"}"#, Some(8), "bad_request", "allowed are"),
        (r#"{"id":9,"op":"subscribe","channel":5}"#, Some(9), "bad_request", "\"channel\" must be a string"),
        (r#"{"id":10,"op":"subscribe","channel":"c","offset":"yesterday"}"#, Some(10), "bad_request", "offset must be"),
        (r#"{"id":11,"op":"subscribe","channel":"c","offset":"1-2-3"}"#, Some(11), "bad_request", "offset must be"),
        (r#"{"id":12,"op":"unsubscribe"}"#, Some(12), "bad_request", "missing \"channel\""),
    ];
    for (frame, id, code, message) in cases {
        client.send_text(frame).await;
        let reply = client.reply().await;
        assert_eq!(reply["id"], json!(id), "{frame} → {reply}");
        assert_eq!(reply["error"]["code"], code, "{frame} → {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(message), "{frame} → {reply}");
    }

    let long = "x".repeat(257);
    let error = client.expect_error(json!({"op": "subscribe", "channel": long})).await;
    assert!(error["message"].as_str().unwrap().contains("limit is 256"), "{error}");
    let error = client.expect_error(json!({"op": "publish", "channel": long, "fields": ["a", "b"]})).await;
    assert_eq!(error["code"], "bad_request");

    // Too many fields, too many subscriptions, subscribing twice.
    let many: Vec<String> = (0..258).map(|i| i.to_string()).collect();
    assert_eq!(
        client.expect_error(json!({"op": "publish", "channel": "c", "fields": many})).await["code"],
        "too_large"
    );
    client.subscribe("one", "$").await;
    assert_eq!(client.expect_error(json!({"op": "subscribe", "channel": "one"})).await["code"], "bad_request");
    client.subscribe("two", "$").await;
    assert_eq!(client.expect_error(json!({"op": "subscribe", "channel": "three"})).await["code"], "limit_exceeded");

    // A binary frame and an oversized frame are answered with id null.
    client.send(tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into())).await;
    let reply = client.reply().await;
    assert_eq!((reply["id"].clone(), reply["error"]["code"].clone()), (Value::Null, json!("bad_request")));
    let big = json!({"id": 99, "op": "publish", "channel": "c", "fields": ["k", "v".repeat(5000)]}).to_string();
    client.send_text(&big).await;
    let reply = client.reply().await;
    assert_eq!((reply["id"].clone(), reply["error"]["code"].clone()), (Value::Null, json!("too_large")));

    // Still usable, and nobody else noticed.
    let offset = client.publish("calm", &["still", "here"]).await;
    assert_eq!(bystander.entries("calm", 1).await[0].0, offset);
    assert_eq!(client.request(json!({"op": "unsubscribe", "channel": "never-subscribed"})).await["ok"], json!({}));
    server.stop().await;
}

/// Inputs a wire-level fuzz run found answered with `internal` or a 1011 close on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_numbers_get_clear_answers_on_redis() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let mut client = connect(&server.url()).await;
    let huge = json!({"op": "publish", "channel": "c", "fields": ["k", "v"], "maxlen": u64::MAX});
    let error = client.expect_error(huge).await;
    assert_eq!(error["code"], "bad_request", "{error}");
    let max = format!("{0}-{0}", u64::MAX);
    let first = client.publish("c", &["k", "v"]).await;
    // The largest offset is past the stream's end: reported, and the subscription starts there.
    let ok = client.subscribe("c", &max).await;
    assert_eq!(ok, json!({"offset": first, "truncated": true, "reason": "ahead"}));
    let next = client.publish("c", &["k", "w"]).await;
    assert_eq!(client.entries("c", 1).await[0].0, next);
    assert_eq!(client.request(json!({"op": "ping"})).await["ok"], json!({}), "still open");
    client.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_hard_limit_closes_with_1009() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.max_frame_bytes = 1024; // hard limit: 1024 + 64 KiB
    let server = TestServer::start(cfg).await;
    let mut client = connect(&server.url()).await;
    client.send_text(&"x".repeat(200_000)).await;
    let (code, reason) = client.closed().await;
    assert_eq!(code, 1009, "{reason}");
    let mut other = connect(&server.url()).await;
    other.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_disconnect_stop_deliveries() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let mut leaving = connect(&server.url()).await;
    let mut staying = connect(&server.url()).await;
    leaving.subscribe("news", "$").await;
    staying.subscribe("news", "$").await;
    assert_eq!(leaving.request(json!({"op": "unsubscribe", "channel": "news"})).await["ok"], json!({}));
    let offset = redis.xadd("news", &[("k", "v")]);
    // Once `staying` has it, the fan-out that would have reached `leaving` is done.
    assert_eq!(staying.entries("news", 1).await[0].0, offset);
    leaving.assert_quiet().await;
    // Subscribing again works, from any offset.
    leaving.subscribe("news", "0").await;
    assert_eq!(leaving.entries("news", 1).await[0].0, offset);
    drop(leaving);
    let offset = redis.xadd("news", &[("k", "w")]);
    assert_eq!(staying.entries("news", 1).await[0].0, offset);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_and_restart_lose_nothing() {
    let mut redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let mut sub = connect(&server.url()).await;
    let mut publisher = connect(&server.url()).await;
    let start = sub.subscribe("steady", "$").await["offset"].as_str().unwrap().to_owned();
    publisher.publish("steady", &["n", "before"]).await;
    assert_eq!(sub.entries("steady", 1).await.len(), 1);
    assert_eq!(health(&server).await, 200);

    redis.stop();
    let error = publisher.expect_error(json!({"op": "publish", "channel": "steady", "fields": ["n", "lost?"]})).await;
    // Sent on the connection Redis dropped (`unknown_outcome`), or refused by a new one.
    assert!(["unavailable", "unknown_outcome"].contains(&error["code"].as_str().unwrap()), "{error}");
    let error = publisher.expect_error(json!({"op": "publish", "channel": "steady", "fields": ["n", "lost"]})).await;
    assert_eq!(error["code"], "unavailable", "nothing listens: not stored, {error}");
    assert_eq!(health(&server).await, 503);

    redis.restart();
    // Entries added while the reader is reconnecting are picked up from its cursor.
    redis.xadd("steady", &[("n", "direct")]);
    let mut offset = None;
    for _ in 0..200 {
        let reply = publisher.request(json!({"op": "publish", "channel": "steady", "fields": ["n", "after"]})).await;
        if let Some(o) = reply["ok"]["offset"].as_str() {
            offset = Some(o.to_owned());
            break;
        }
        assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let offset = offset.expect("publishing works again after Redis returns");
    let got = sub.entries_until("steady", |e| e.last().is_some_and(|(o, _)| *o == offset)).await;
    assert_eq!(
        got,
        redis.xrange_after("steady", &start)[1..].to_vec(),
        "every entry after the restart, once, in order"
    );
    assert_eq!(health(&server).await, 200);
    server.stop().await;
}

async fn health(server: &TestServer) -> u16 {
    let response = server.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    response[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_requests_get_plain_answers() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    for (request, status) in [
        ("GET /healthz HTTP/1.1\r\n\r\n", "200"),
        ("GET / HTTP/1.1\r\n\r\n", "426"),
        ("GET /nope HTTP/1.1\r\n\r\n", "404"),
        ("GARBAGE\r\n\r\n", "400"),
        (
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: other.v9\r\n\r\n",
            "400",
        ),
    ] {
        let response = server.http(request).await;
        assert_eq!(&response[9..12], status, "{request:?} → {response}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_static_files_next_to_the_websocket() {
    let redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("redistribute-static-{}", support::free_port()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>demo</h1>").unwrap();
    std::fs::write(dir.join("assets/app.wasm"), [0u8, 97, 115, 109]).unwrap();
    let mut cfg = config(&redis);
    cfg.static_dir = Some(dir.clone());
    let server = TestServer::start(cfg).await;
    for (path, expected) in [
        ("/", "200 OK|text/html|<h1>demo</h1>"),
        ("/index.html", "200 OK|text/html"),
        ("/assets/app.wasm", "200 OK|application/wasm"),
        ("/assets/missing.js", "404"),
        ("/../etc/passwd", "404"),
        ("/assets/../../x", "404"),
    ] {
        let response = server.http(&format!("GET {path} HTTP/1.1\r\n\r\n")).await;
        for part in expected.split('|') {
            assert!(response.contains(part), "{path}: expected {part:?} in {response}");
        }
    }
    // The WebSocket still lives on `/`.
    let mut client = connect(&server.url()).await;
    client.assert_quiet().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_work_does_not_grow_with_subscribers() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.readers_per_target = 2;
    let server = TestServer::start(cfg).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut c = connect(&server.url()).await;
        c.subscribe(&format!("ch{}", i % 10), "$").await;
        c.subscribe("shared", "$").await;
        clients.push(c);
    }
    let offset = redis.xadd("shared", &[("k", "v")]);
    for c in &mut clients {
        assert_eq!(c.entries("shared", 1).await[0].0, offset);
    }
    // Exactly the two readers block in XREAD, whatever the number of sockets and channels.
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut redis.conn()).unwrap();
    let xreads = list.lines().filter(|l| l.contains("cmd=xread")).count();
    assert_eq!(xreads, 2, "{list}");
    // And every channel is served: the last one added woke its reader.
    let offset = redis.xadd("ch9", &[("k", "v")]);
    for c in clients.iter_mut().skip(9).step_by(10) {
        assert_eq!(c.entries("ch9", 1).await[0].0, offset);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_turned_into_a_non_stream_does_not_stall_other_channels() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await; // one reader follows both channels
    let mut victim = connect(&server.url()).await;
    let mut bystander = connect(&server.url()).await;
    redis.xadd("poison", &[("k", "v")]);
    victim.subscribe("poison", "$").await;
    bystander.subscribe("healthy", "$").await;
    let _: () = redis::cmd("DEL").arg(key("poison")).query(&mut redis.conn()).unwrap();
    let _: () = redis::cmd("SET").arg(key("poison")).arg("not a stream").query(&mut redis.conn()).unwrap();
    for n in 0..3 {
        let offset = redis.xadd("healthy", &[("n", &n.to_string())]);
        assert_eq!(bystander.entries("healthy", 1).await[0].0, offset, "entry {n} still flows");
    }
    let (code, reason) = victim.closed().await;
    assert_eq!(code, 1011);
    assert!(reason.contains("no longer holds a stream"), "{reason}");
    // Subscribing to it now is refused with a clear error.
    let mut again = connect(&server.url()).await;
    let error = again.expect_error(json!({"op": "subscribe", "channel": "poison"})).await;
    assert_eq!(error["code"], "bad_request", "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_sharded_over_several_targets() {
    let one = Redis::start();
    let two = Redis::start();
    let server = TestServer::start(Config::with_targets([one.url(), two.url()])).await;
    let other = TestServer::start(Config::with_targets([one.url(), two.url()])).await;
    let mut sub = connect(&other.url()).await;
    let mut publisher = connect(&server.url()).await;
    let channels: Vec<String> = (0..20).map(|i| format!("shard-{i}")).collect();
    for channel in &channels {
        sub.subscribe(channel, "$").await;
    }
    for channel in &channels {
        let offset = publisher.publish(channel, &["k", channel]).await;
        let got = sub.entries(channel, 1).await;
        assert_eq!(got[0].0, offset);
    }
    let exists = |redis: &Redis, channel: &str| -> bool {
        redis::cmd("EXISTS").arg(key(channel)).query::<i64>(&mut redis.conn()).unwrap() == 1
    };
    let on_one = channels.iter().filter(|c| exists(&one, c)).count();
    let on_two = channels.iter().filter(|c| exists(&two, c)).count();
    assert_eq!(on_one + on_two, channels.len(), "each channel lives on exactly one target");
    assert!(on_one > 0 && on_two > 0, "both targets hold channels ({on_one}/{on_two})");
    server.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_4000_and_others_are_unaffected() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.send_queue_bytes = 256 << 10;
    let server = TestServer::start(cfg).await;
    let mut slow = connect(&server.url()).await;
    let mut fine = connect(&server.url()).await;
    slow.subscribe("firehose", "$").await;
    fine.subscribe("firehose", "$").await;
    let payload = "p".repeat(64 << 10);
    let fine_reader = tokio::spawn(async move {
        let got = fine.entries_until("firehose", |e| e.len() >= 300).await;
        got.len()
    });
    let mut publisher = connect(&server.url()).await;
    for _ in 0..300 {
        publisher.publish("firehose", &["p", &payload]).await;
    }
    assert_eq!(fine_reader.await.unwrap(), 300);
    // The kicked client keeps sending requests it gets no answer to: it still gets its close
    // frame (the server reads on until the close handshake), not a connection reset.
    for _ in 0..200 {
        slow.send_text(r#"{"id":1,"op":"ping"}"#).await;
    }
    let (code, reason) = slow.closed().await;
    assert_eq!(code, 4000, "{reason}");
    server.stop().await;
}

/// Sends a WebSocket upgrade from the loopback address `from`; returns the socket if it was
/// switched (101), `None` if the server answered anything else.
async fn upgraded_from(server: &TestServer, from: [u8; 4], upgrade: &str) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    let mut tcp = socket.connect(server.addr).await.unwrap();
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_exact(&mut head)).await.unwrap().ok()?;
    head.starts_with(b"HTTP/1.1 101").then_some(tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limits_new_sockets_are_answered_at_once_and_health_still_answers() {
    let redis = Redis::start();
    let mut cfg = config(&redis);
    cfg.max_connections = 3;
    cfg.max_connections_per_ip = 2;
    let server = TestServer::start(cfg).await;
    let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let first = connect(&server.url()).await;
    let _second = connect(&server.url()).await;
    let third = server.http(upgrade).await;
    assert!(third.starts_with("HTTP/1.1 429 ") && third.contains("Retry-After: 5\r\n"), "{third}");
    let held = upgraded_from(&server, [127, 0, 0, 2], upgrade).await.expect("another address has room");
    let full = server.http_from([127, 0, 0, 3], upgrade).await;
    assert!(full.starts_with("HTTP/1.1 503 ") && full.contains("Retry-After: 5\r\n"), "{full}");
    let health = server.http_from([127, 0, 0, 3], "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "health answers without a slot: {health}");
    drop(held);
    let mut freed = None;
    for _ in 0..50 {
        freed = upgraded_from(&server, [127, 0, 0, 3], upgrade).await;
        if freed.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(freed.is_some(), "a closed socket gives its slot back");
    drop(first);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_at_once() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let mut client = connect(&server.url()).await;
    client.subscribe("bye", "$").await;
    client.send(tokio_tungstenite::tungstenite::Message::Close(None)).await;
    // The server echoes the close handshake (a client would otherwise wait for its own timeout).
    assert_eq!(client.closed().await.0, 1005, "an empty close is echoed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_going_away() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let mut client = connect(&server.url()).await;
    client.subscribe("x", "$").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(client.closed().await.0, 1001);
    stopping.await.unwrap();
}

/// Permissions and filtering, as an application would install them.
struct Rules;

impl Hooks for Rules {
    async fn on_connect(&self, conn: &ConnInfo) -> Decision {
        match conn.query_param("token") {
            Some("letmein") => Decision::Allow,
            _ => Decision::Deny("a valid token is required".into()),
        }
    }

    async fn on_subscribe(&self, _: &ConnInfo, channel: &str, _: Start) -> Decision {
        if channel.starts_with("private:") {
            Decision::Deny(format!("no access to {channel}"))
        } else {
            Decision::Allow
        }
    }

    async fn on_publish(&self, _: &ConnInfo, channel: &str, fields: &[String]) -> Decision {
        if channel.starts_with("readonly:") || fields.iter().any(|f| f == "forbidden") {
            Decision::Deny("read-only".into())
        } else {
            Decision::Allow
        }
    }

    async fn on_ack(&self, _: &ConnInfo, _: &str, group: &str, _: &[redistribute::StreamId]) -> Decision {
        if group == "auditors" { Decision::Deny("auditors only read".into()) } else { Decision::Allow }
    }

    fn on_stream_event(&self, _: &ConnInfo, _: &str, entry: &Entry) -> StreamEvent {
        match entry.fields.first().map(String::as_str) {
            Some("internal") => StreamEvent::Drop,
            Some("password") => StreamEvent::Rewrite(vec!["password".into(), "***".into()]),
            _ => StreamEvent::Pass,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_deny_and_filter() {
    let redis = Redis::start();
    let server = TestServer::with_hooks(config(&redis), Rules).await;

    let mut refused = connect(&server.url()).await;
    let (code, reason) = refused.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "a valid token is required"));

    let url = format!("{}?token=letmein", server.url());
    let mut client = connect(&url).await;
    let error = client.expect_error(json!({"op": "subscribe", "channel": "private:ops"})).await;
    assert_eq!(error, json!({"code": "forbidden", "message": "no access to private:ops"}));
    let error = client.expect_error(json!({"op": "publish", "channel": "readonly:feed", "fields": ["a", "b"]})).await;
    assert_eq!(error["code"], "forbidden");
    let error =
        client.expect_error(json!({"op": "ack", "channel": "feed", "group": "auditors", "offsets": ["1-1"]})).await;
    assert_eq!(error, json!({"code": "forbidden", "message": "auditors only read"}));

    // Filtering applies to replayed history and to live entries alike.
    let start = redis.xadd("feed", &[("visible", "1")]);
    redis.xadd("feed", &[("internal", "2")]);
    let secret = redis.xadd("feed", &[("password", "hunter2")]);
    client.subscribe("feed", "0").await;
    let got = client.entries("feed", 2).await;
    assert_eq!(got, vec![(start, strings(&["visible", "1"])), (secret, strings(&["password", "***"]))]);
    redis.xadd("feed", &[("internal", "3")]);
    let last = client.publish("feed", &["visible", "4"]).await;
    assert_eq!(client.entries("feed", 1).await, vec![(last, strings(&["visible", "4"]))]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_self_signed_certificate() {
    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let redis = Redis::start();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("redistribute-tls-{}", support::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key_path, cert_path) = (dir.join("key.pem"), dir.join("cert.pem"));
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();

    let built = Server::builder(config(&redis)).build().unwrap();
    let options = ListenOptions::new("127.0.0.1:0".parse().unwrap()).with_tls(&key_path, &cert_path);
    let server = TestServer::start_with(built, options).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{}/", server.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let mut client = support::Client::new(ws);
    client.subscribe("secure", "$").await;
    let offset = client.publish("secure", &["over", "tls"]).await;
    assert_eq!(client.entries("secure", 1).await[0].0, offset);
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Redis as a hardened deployment runs it: TLS only, certificates from a private CA, client
/// certificates required, an ACL user. The server works with the right settings, and each
/// missing or wrong piece is refused rather than worked around.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_client_certificate_and_an_acl_user() {
    let hardened = Hardened::new();
    let mut redis = Redis::start_hardened(&hardened);
    let mut settings = config(&redis);
    settings.redis_tls = hardened.redis_tls();
    settings.redis_timeout = Duration::from_secs(2);
    let server = TestServer::start(settings.clone()).await;
    let mut subscriber = connect(&server.url()).await;
    subscriber.subscribe("vault", "$").await;
    let mut publisher = connect(&server.url()).await;
    publisher.publish("vault", &["over", "tls"]).await;
    let keyed = json!({"op": "publish", "channel": "vault", "fields": ["n", "1"], "idempotency_key": "k-1"});
    let first = publisher.request(keyed.clone()).await["ok"]["offset"].clone();
    let retry = publisher.request(keyed).await;
    assert_eq!(retry["ok"], json!({"offset": first, "duplicate": true}), "{retry}");
    assert_eq!(subscriber.entries("vault", 2).await, redis.xrange_after("vault", "0"));
    // Redis restarts: the stream reader reconnects (and checks for lost entries), publishes work again.
    redis.restart();
    let offset = loop {
        // Keyed: an attempt whose outcome was unknown is not stored twice by the next.
        let publish = json!({"op": "publish", "channel": "vault", "fields": ["n", "2"], "idempotency_key": "k-2"});
        let reply = publisher.request(publish).await;
        if let Some(offset) = reply["ok"]["offset"].as_str() {
            break offset.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(subscriber.entries("vault", 1).await[0].0, offset);
    let mut late = connect(&server.url()).await;
    late.subscribe("vault", "0").await;
    assert_eq!(late.entries("vault", 3).await, redis.xrange_after("vault", "0"), "history");
    assert_eq!(health(&server).await, 200);
    server.stop().await;
    assert_eq!(redis.acl_denials(), Vec::<String>::new(), "the server's ACL rule allows all it sends");

    let refused = |change: fn(&mut Config)| {
        let mut settings = settings.clone();
        change(&mut settings);
        async move {
            let server = Server::builder(settings).build().unwrap();
            let error = server.health().await.expect_err("Redis refuses the connection");
            server.shutdown();
            server.stopped().await;
            redistribute::engine::Chain(&error).to_string()
        }
    };
    let untrusted = refused(|c| c.redis_tls.ca_file = None).await;
    assert!(untrusted.contains("certificate"), "the system trust store does not know the test CA: {untrusted}");
    let anonymous = refused(|c| (c.redis_tls.cert_file, c.redis_tls.key_file) = (None, None)).await;
    assert!(anonymous.contains("CertificateRequired"), "Redis requires a client certificate: {anonymous}");
    let wrong_password = refused(|c| c.targets[0] = c.targets[0].replace(Hardened::PASSWORD, "guess")).await;
    assert!(wrong_password.contains("authentication failed"), "{wrong_password}");
    let mut plain = settings.clone();
    plain.targets[0] = plain.targets[0].replace("rediss://", "redis://");
    let Err(redistribute::Error::Config(message)) = Server::builder(plain).build() else {
        panic!("TLS files with a redis:// URI are a configuration error")
    };
    assert!(message.contains("rediss://"), "{message}");
    let mut insecure = settings.clone();
    insecure.targets[0].push_str("/#insecure");
    insecure.redis_tls = Default::default();
    assert!(matches!(Server::builder(insecure).build(), Err(redistribute::Error::Config(_))), "no unverified TLS");
    let memory = Config { redis_tls: hardened.redis_tls(), ..Config::default() };
    assert!(matches!(Server::builder(memory).build(), Err(redistribute::Error::Config(_))), "files with no Redis");
}

/// The embedded memory engine behind the full protocol: replay, live tail and the handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_engine_serves_gap_free_replay_with_no_redis() {
    let server = TestServer::start(Config::default()).await;
    assert!(matches!(server.server.engine(), redistribute::Engine::Memory(_)));
    let mut publisher = connect(&server.url()).await;
    let mut early = connect(&server.url()).await;
    early.subscribe("mem", "$").await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(publisher.publish("mem", &["n", &i.to_string()]).await);
    }
    let mut late = connect(&server.url()).await;
    assert_eq!(late.subscribe("mem", &ids[99]).await, json!({"offset": ids[99]}));
    let publishing = tokio::spawn(async move {
        for i in 300..600 {
            publisher.publish("mem", &["n", &i.to_string()]).await;
        }
    });
    let everything = |e: &[(String, Vec<String>)]| e.last().is_some_and(|(_, f)| f[1] == "599");
    let early_got = early.entries_until("mem", everything).await;
    let late_got = late.entries_until("mem", everything).await;
    publishing.await.unwrap();
    let stored = server.server.engine().history_page("mem", Default::default(), 10_000).await.unwrap().entries;
    let expected: Vec<(String, Vec<String>)> =
        stored.iter().map(|e| (e.offset.to_string(), e.fields.clone())).collect();
    assert_eq!(early_got, expected);
    assert_eq!(late_got, expected[100..]);
    assert_eq!(health(&server).await, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_publish_and_broadcast() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let mut client = connect(&server.url()).await;
    client.subscribe("lib", "$").await;
    let offset = server.server.publish("lib", [("from", "rust")]).await.unwrap();
    assert_eq!(client.entries("lib", 1).await, vec![(offset.to_string(), strings(&["from", "rust"]))]);
    assert!(server.server.publish("bad channel", [("a", "b")]).await.is_err());
    assert!(server.server.publish("lib", Vec::<(String, String)>::new()).await.is_err());

    assert_eq!(server.server.broadcast("lib", json!({"typing": "ann"})), 1);
    assert_eq!(client.push().await, json!({"channel": "lib", "broadcast": {"typing": "ann"}}));
    assert_eq!(server.server.broadcast("nobody-listens", json!(1)), 0);
    server.stop().await;
}

/// Publishes sent back to back are stored in one round trip: their order, and the order and
/// content of the replies, are those of the requests, refused ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_their_order_and_each_gets_its_reply() {
    let redis = Redis::start();
    let server = TestServer::start(config(&redis)).await;
    let _: () = redis::cmd("SET").arg(key("not-a-stream")).arg("x").query(&mut redis.conn()).unwrap();
    let mut client = connect(&server.url()).await;
    let mut expected = Vec::new();
    for id in 1..=300u64 {
        let frame = match id {
            100 => json!({"id": id, "op": "publish", "channel": "a", "fields": ["odd"]}),
            150 => json!({"id": id, "op": "ping"}),
            200 => json!({"id": id, "op": "publish", "channel": "not-a-stream", "fields": ["k", "v"]}),
            _ => {
                json!({"id": id, "op": "publish", "channel": if id % 2 == 0 { "a" } else { "b" }, "fields": ["n", id.to_string()]})
            }
        };
        expected.push(id);
        client.send_text(&frame.to_string()).await;
    }
    let mut offsets: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for id in expected {
        let reply = client.reply().await;
        assert_eq!(reply["id"], id, "replies in request order");
        match id {
            100 | 200 => assert_eq!(reply["error"]["code"], "bad_request", "{reply}"),
            150 => assert_eq!(reply["ok"], json!({})),
            _ => {
                let channel = if id % 2 == 0 { "a" } else { "b" };
                offsets.entry(channel).or_default().push(reply["ok"]["offset"].as_str().unwrap().to_owned());
            }
        }
    }
    for (channel, mine) in offsets {
        let stored: Vec<(String, Vec<String>)> = redis.xrange_after(channel, "0");
        assert_eq!(stored.iter().map(|(o, _)| o.clone()).collect::<Vec<_>>(), mine, "stored in request order");
        let ns: Vec<u64> = stored.iter().map(|(_, f)| f[1].parse().unwrap()).collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{channel}: {ns:?}");
    }
    server.stop().await;
}
