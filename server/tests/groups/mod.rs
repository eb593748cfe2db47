//! Consumer groups over the wire, against a real Redis. (The group semantics themselves are
//! checked on both engines by the conformance suite.)

use crate::support::Redis;

fn fill(redis: &Redis, channel: &str, count: usize) -> Vec<String> {
    let mut conn = redis.conn();
    let mut ids = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for n in chunk {
            pipe.cmd("XADD").arg(crate::support::key(channel)).arg("*").arg("n").arg(n);
        }
        let chunk_ids: Vec<String> = pipe.query(&mut conn).unwrap();
        ids.extend(chunk_ids);
    }
    ids
}

fn pending(redis: &Redis, channel: &str, group: &str) -> u64 {
    // XPENDING's summary form starts with the number of pending entries.
    let summary: Vec<redis::Value> =
        redis::cmd("XPENDING").arg(crate::support::key(channel)).arg(group).query(&mut redis.conn()).unwrap();
    redis::from_redis_value(summary[0].clone()).unwrap()
}

mod over_the_wire {
    use super::{fill, pending};
    use crate::support::{Redis, TestServer, config, connect};
    use serde_json::json;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_share_the_entries_and_acknowledge_them() {
        const TOTAL: usize = 3000;
        let redis = Redis::start();
        let mut cfg = config(&redis);
        cfg.read_count = 50; // pushes of at most 50: the work spreads in many pieces
        let server = TestServer::start(cfg).await;
        let done = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(Notify::new());
        let joined = Arc::new(tokio::sync::Barrier::new(4));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let (url, done, finished, joined) = (server.url(), done.clone(), finished.clone(), joined.clone());
                tokio::spawn(async move {
                    let mut client = connect(&url).await;
                    let ok = client.request(json!({"op": "subscribe", "channel": "queue", "group": "g", "consumer": format!("w{w}"), "offset": "0"})).await;
                    assert_eq!(ok["ok"], json!({}), "{ok}");
                    joined.wait().await;
                    let mut mine = Vec::new();
                    while done.load(Ordering::Acquire) < TOTAL {
                        let push = tokio::select! {
                            push = client.push() => push,
                            () = finished.notified() => break,
                        };
                        assert_eq!((push["channel"].as_str(), push["group"].as_str()), (Some("queue"), Some("g")));
                        let offsets: Vec<String> = push["messages"].as_array().unwrap().iter().map(|m| {
                            assert_eq!(m["deliveries"], 1);
                            m["offset"].as_str().unwrap().to_owned()
                        }).collect();
                        let reply = client.request(json!({"op": "ack", "channel": "queue", "group": "g", "offsets": offsets})).await;
                        assert_eq!(reply["ok"]["acked"], json!(offsets.len()), "{reply}");
                        let n = offsets.len();
                        mine.extend(offsets);
                        if done.fetch_add(n, Ordering::AcqRel) + n >= TOTAL {
                            finished.notify_waiters();
                        }
                    }
                    mine
                })
            })
            .collect();
        joined.wait().await;
        let all: HashSet<String> = fill(&redis, "queue", TOTAL).into_iter().collect();
        let mut seen = HashSet::new();
        for worker in workers {
            let mine = worker.await.unwrap();
            assert!(mine.len() > TOTAL / 10, "each member gets a real share ({})", mine.len());
            for id in mine {
                assert!(seen.insert(id), "delivered to two members");
            }
        }
        assert_eq!(seen, all);
        assert_eq!(pending(&redis, "queue", "g"), 0);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_members_entries_are_redelivered_to_another() {
        let redis = Redis::start();
        let mut cfg = config(&redis);
        cfg.group_claim_idle = Duration::from_millis(300);
        let server = TestServer::start(cfg).await;
        let all: HashSet<String> = fill(&redis, "q2", 200).into_iter().collect();
        let mut doomed = connect(&server.url()).await;
        doomed
            .request(json!({"op": "subscribe", "channel": "q2", "group": "g", "consumer": "doomed", "offset": "0"}))
            .await;
        let taken = doomed.push().await["messages"].as_array().unwrap().len();
        assert!(taken > 0);
        drop(doomed); // dies without acknowledging

        let mut survivor = connect(&server.url()).await;
        survivor.request(json!({"op": "subscribe", "channel": "q2", "group": "g", "consumer": "survivor"})).await;
        let mut seen = HashSet::new();
        let mut redelivered = 0;
        while seen.len() < all.len() {
            let push = survivor.push().await;
            let offsets: Vec<String> = push["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    if m["deliveries"].as_u64().unwrap() > 1 {
                        redelivered += 1;
                    }
                    m["offset"].as_str().unwrap().to_owned()
                })
                .collect();
            survivor.request(json!({"op": "ack", "channel": "q2", "group": "g", "offsets": offsets})).await;
            seen.extend(offsets);
        }
        assert_eq!(seen, all, "nothing lost");
        assert_eq!(redelivered, taken, "the dropped member's entries came back with their count");
        assert_eq!(pending(&redis, "q2", "g"), 0);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_group_requests_get_clear_errors() {
        let redis = Redis::start();
        let server = TestServer::start(config(&redis)).await;
        fill(&redis, "q3", 2);
        let mut client = connect(&server.url()).await;
        client.request(json!({"op": "subscribe", "channel": "q3", "group": "g", "consumer": "w", "offset": "0"})).await;
        let real = client.push().await["messages"][0]["offset"].as_str().unwrap().to_owned();
        let error =
            client.expect_error(json!({"op": "ack", "channel": "q3", "group": "g", "offsets": [real, "1-1"]})).await;
        assert_eq!(error["code"], "bad_request");
        assert!(
            error["message"].as_str().unwrap().contains("not pending in the group, nothing acknowledged: 1-1"),
            "{error}"
        );
        let error =
            client.expect_error(json!({"op": "ack", "channel": "q3", "group": "nope", "offsets": [real]})).await;
        assert!(error["message"].as_str().unwrap().contains("not a member of group \"nope\""), "{error}");
        let long = "w".repeat(300);
        let error =
            client.expect_error(json!({"op": "subscribe", "channel": "q3", "group": "g", "consumer": long})).await;
        assert!(error["message"].as_str().unwrap().contains("consumer name is 300 bytes"), "{error}");
        let error =
            client.expect_error(json!({"op": "subscribe", "channel": "q3", "group": "g", "consumer": "w"})).await;
        assert!(error["message"].as_str().unwrap().contains("already in group"), "{error}");
        assert_eq!(
            client.request(json!({"op": "ack", "channel": "q3", "group": "g", "offsets": [real]})).await["ok"],
            json!({"acked": 1})
        );
        assert_eq!(client.request(json!({"op": "unsubscribe", "channel": "q3", "group": "g"})).await["ok"], json!({}));

        server.stop().await;
    }

    fn redis_clients(redis: &Redis) -> u64 {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut redis.conn()).unwrap();
        let line = info.lines().find(|l| l.starts_with("connected_clients:")).unwrap();
        line["connected_clients:".len()..].trim().parse().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_share_redis_connections_and_still_get_work_at_once() {
        let redis = Redis::start();
        let server = TestServer::start(config(&redis)).await;
        // Warm up: the reader, the shared command connection and the test's own connection.
        let mut first = connect(&server.url()).await;
        first
            .request(json!({"op": "subscribe", "channel": "jobs-0", "group": "g", "consumer": "w", "offset": "$"}))
            .await;
        let before = redis_clients(&redis);
        let mut clients = Vec::new();
        for c in 0..50 {
            let mut client = connect(&server.url()).await;
            for g in 0..10 {
                let channel = format!("jobs-{}", 1 + c * 10 + g);
                let ok = client
                    .request(
                        json!({"op": "subscribe", "channel": channel, "group": "g", "consumer": "w", "offset": "$"}),
                    )
                    .await;
                assert_eq!(ok["ok"], json!({}), "{ok}");
            }
            clients.push(client);
        }
        let after = redis_clients(&redis);
        eprintln!("Redis connected_clients: {before} before 500 group members joined, {after} after");
        assert!(after <= before + 1, "500 members: Redis clients went from {before} to {after}");
        // The members wait without blocking reads, and the stream reader wakes them.
        let mut publisher = connect(&server.url()).await;
        let offset = publisher.publish("jobs-137", &["task", "x"]).await;
        let push = clients[13].push().await;
        assert_eq!(push["channel"], "jobs-137");
        assert_eq!(push["messages"][0]["offset"], json!(offset));
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_entries_trimmed_away_are_acknowledged_never_handed_out_empty() {
        let redis = Redis::start();
        let server = TestServer::start(config(&redis)).await;
        fill(&redis, "trimmed", 5);
        let mut worker = connect(&server.url()).await;
        worker
            .request(json!({"op": "subscribe", "channel": "trimmed", "group": "g", "consumer": "w", "offset": "0"}))
            .await;
        assert_eq!(worker.push().await["messages"].as_array().unwrap().len(), 5, "delivered, never acknowledged");
        drop(worker);
        let _: () = redis::cmd("XTRIM")
            .arg(crate::support::key("trimmed"))
            .arg("MAXLEN")
            .arg(0)
            .query(&mut redis.conn())
            .unwrap();
        let fresh = redis.xadd("trimmed", &[("n", "fresh")]);
        // The same consumer comes back: its own pending entries are re-read first.
        let mut again = connect(&server.url()).await;
        again
            .request(json!({"op": "subscribe", "channel": "trimmed", "group": "g", "consumer": "w", "offset": "0"}))
            .await;
        let push = again.push().await;
        let messages = push["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1, "only real work: {push}");
        assert_eq!(
            (messages[0]["offset"].as_str().unwrap(), &messages[0]["fields"]),
            (fresh.as_str(), &json!(["n", "fresh"]))
        );
        assert_eq!(pending(&redis, "trimmed", "g"), 1, "the trimmed five were acknowledged");
        server.stop().await;
    }
}
