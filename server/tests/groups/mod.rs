//! Consumer groups through the Rust API, against a real Redis.

use crate::support::Redis;
use redistribute::engine::{Engine, EngineError, MemoryEngine, RedisEngine};
use redistribute::groups::{self, Consumer, GroupOptions};
use redistribute::protocol::{Start, StreamId};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn engine(redis: &Redis) -> Engine {
    Engine::Redis(RedisEngine::new(&[redis.url()], Duration::from_secs(5)).unwrap())
}

fn fill(redis: &Redis, channel: &str, count: usize) -> Vec<String> {
    let mut conn = redis.conn();
    let mut ids = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for n in chunk {
            pipe.cmd("XADD").arg(channel).arg("*").arg("n").arg(n);
        }
        let chunk_ids: Vec<String> = pipe.query(&mut conn).unwrap();
        ids.extend(chunk_ids);
    }
    ids
}

fn pending(redis: &Redis, channel: &str, group: &str) -> u64 {
    // XPENDING's summary form starts with the number of pending entries.
    let summary: Vec<redis::Value> = redis::cmd("XPENDING").arg(channel).arg(group).query(&mut redis.conn()).unwrap();
    redis::from_redis_value(summary[0].clone()).unwrap()
}

fn options(start: Start) -> GroupOptions {
    GroupOptions { start, block: Duration::from_millis(200), ..GroupOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_split_the_entries_exactly_once() {
    const TOTAL: usize = 10_000;
    let redis = Redis::start();
    let engine = engine(&redis);
    let all: HashSet<String> = fill(&redis, "jobs", TOTAL).into_iter().collect();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (engine, done) = (engine.clone(), done.clone());
            tokio::spawn(async move {
                let mut consumer = Consumer::join(&engine, "jobs", "workers", &format!("w{w}"), options(Start::After(StreamId::ZERO))).await.unwrap();
                let mut mine = Vec::new();
                while done.load(Ordering::Acquire) < TOTAL {
                    let batch = consumer.next().await.unwrap();
                    let offsets: Vec<StreamId> = batch.iter().map(|d| d.entry.offset).collect();
                    assert!(batch.iter().all(|d| d.deliveries == 1), "nobody crashed: first deliveries only");
                    if !offsets.is_empty() {
                        assert_eq!(consumer.ack(&offsets).await.unwrap(), offsets.len() as u64);
                        done.fetch_add(offsets.len(), Ordering::AcqRel);
                        mine.extend(offsets.iter().map(ToString::to_string));
                    }
                }
                mine
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for worker in workers {
        let mine = worker.await.unwrap();
        assert!(mine.len() > TOTAL / 10, "each worker gets a real share ({} of {TOTAL})", mine.len());
        for id in mine {
            assert!(seen.insert(id), "an entry processed twice");
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(seen, all, "every entry processed");
    assert_eq!(pending(&redis, "jobs", "workers"), 0);
    println!("3 workers acknowledged {TOTAL} entries in {elapsed:?} ({:.0}/s)", TOTAL as f64 / elapsed.as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_entries_are_claimed_by_the_others() {
    let redis = Redis::start();
    let engine = engine(&redis);
    let all: HashSet<String> = fill(&redis, "tasks", 500).into_iter().collect();
    let quick = GroupOptions { claim_idle: Duration::from_millis(300), batch: 50, ..options(Start::After(StreamId::ZERO)) };

    // This worker takes a batch and dies without acknowledging it.
    let mut doomed = Consumer::join(&engine, "tasks", "g", "doomed", quick.clone()).await.unwrap();
    let taken: Vec<String> = doomed.next().await.unwrap().iter().map(|d| d.entry.offset.to_string()).collect();
    assert_eq!(taken.len(), 50);
    drop(doomed);

    let mut survivors = Vec::new();
    for name in ["a", "b"] {
        survivors.push(Consumer::join(&engine, "tasks", "g", name, quick.clone()).await.unwrap());
    }
    let mut acked = HashSet::new();
    let mut redelivered = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.len() < all.len() {
        assert!(Instant::now() < deadline, "only {} of {} acknowledged", acked.len(), all.len());
        for consumer in &mut survivors {
            let batch = consumer.next().await.unwrap();
            for d in &batch {
                if d.deliveries > 1 {
                    redelivered.insert(d.entry.offset.to_string());
                }
                acked.insert(d.entry.offset.to_string());
            }
            let offsets: Vec<StreamId> = batch.iter().map(|d| d.entry.offset).collect();
            if !offsets.is_empty() {
                consumer.ack(&offsets).await.unwrap();
            }
        }
    }
    assert_eq!(acked, all, "none lost");
    assert_eq!(redelivered, taken.into_iter().collect::<HashSet<_>>(), "exactly the dead worker's entries came back, counted");
    assert_eq!(pending(&redis, "tasks", "g"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarting_under_its_name_rereads_its_own_pending_entries() {
    let redis = Redis::start();
    let engine = engine(&redis);
    fill(&redis, "own", 20);
    let opts = GroupOptions { batch: 5, ..options(Start::After(StreamId::ZERO)) };
    let mut first = Consumer::join(&engine, "own", "g", "w", opts.clone()).await.unwrap();
    let taken: Vec<StreamId> = first.next().await.unwrap().iter().map(|d| d.entry.offset).collect();
    drop(first);
    let mut again = Consumer::join(&engine, "own", "g", "w", opts).await.unwrap();
    let batch = again.next().await.unwrap();
    assert_eq!(batch.iter().map(|d| d.entry.offset).collect::<Vec<_>>(), taken, "its own pending entries first");
    assert!(batch.iter().all(|d| d.deliveries >= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_delivered_too_often_go_to_the_dead_letter_stream() {
    let redis = Redis::start();
    let engine = engine(&redis);
    let poison = redis.xadd("work", &[("job", "explodes")]);
    let opts = GroupOptions { claim_idle: Duration::from_millis(50), max_deliveries: 3, ..options(Start::After(StreamId::ZERO)) };
    let mut worker = Consumer::join(&engine, "work", "g", "w", opts).await.unwrap();
    let mut counts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending(&redis, "work", "g") > 0 || counts.is_empty() {
        assert!(Instant::now() < deadline, "never dead-lettered; deliveries so far {counts:?}");
        for d in worker.next().await.unwrap() {
            counts.push(d.deliveries); // never acknowledged: it "crashes" every time
        }
    }
    assert_eq!(counts, vec![1, 2, 3], "delivered up to the limit, counted");
    let dead: Vec<(String, Vec<String>)> = redis::cmd("XRANGE").arg("work:dead").arg("-").arg("+").query(&mut redis.conn()).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].1,
        vec!["job", "explodes", "dead-letter-offset", &poison, "dead-letter-group", "g", "dead-letter-deliveries", "4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_acks_change_nothing_and_say_why() {
    let redis = Redis::start();
    let engine = engine(&redis);
    fill(&redis, "acks", 3);
    let mut worker = Consumer::join(&engine, "acks", "g", "w", options(Start::After(StreamId::ZERO))).await.unwrap();
    let batch = worker.next().await.unwrap();
    let real = batch[0].entry.offset;
    let unknown = StreamId::new(1, 1);
    match groups::ack(&engine, "acks", "g", &[real, unknown]).await {
        Err(EngineError::NotPending(list)) => assert_eq!(list, "1-1"),
        other => panic!("expected NotPending, got {other:?}"),
    }
    assert_eq!(pending(&redis, "acks", "g"), 3, "all or nothing");
    assert!(matches!(groups::ack(&engine, "acks", "nope", &[real]).await, Err(EngineError::NoGroup(_))));
    assert_eq!(groups::ack(&engine, "acks", "g", &[real]).await.unwrap(), 1);
    let memory = Engine::Memory(MemoryEngine::default());
    assert!(matches!(Consumer::join(&memory, "c", "g", "w", GroupOptions::default()).await, Err(EngineError::Unsupported(_))));
}

mod over_the_wire {
    use super::{fill, pending};
    use crate::support::{Redis, TestServer, config, connect};
    use redistribute::Config;
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
        doomed.request(json!({"op": "subscribe", "channel": "q2", "group": "g", "consumer": "doomed", "offset": "0"})).await;
        let taken = doomed.push().await["messages"].as_array().unwrap().len();
        assert!(taken > 0);
        drop(doomed); // dies without acknowledging

        let mut survivor = connect(&server.url()).await;
        survivor.request(json!({"op": "subscribe", "channel": "q2", "group": "g", "consumer": "survivor"})).await;
        let mut seen = HashSet::new();
        let mut redelivered = 0;
        while seen.len() < all.len() {
            let push = survivor.push().await;
            let offsets: Vec<String> = push["messages"].as_array().unwrap().iter().map(|m| {
                if m["deliveries"].as_u64().unwrap() > 1 {
                    redelivered += 1;
                }
                m["offset"].as_str().unwrap().to_owned()
            }).collect();
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
        let error = client.expect_error(json!({"op": "ack", "channel": "q3", "group": "g", "offsets": [real, "1-1"]})).await;
        assert_eq!(error["code"], "bad_request");
        assert!(error["message"].as_str().unwrap().contains("not pending in the group, nothing acknowledged: 1-1"), "{error}");
        let error = client.expect_error(json!({"op": "ack", "channel": "q3", "group": "nope", "offsets": [real]})).await;
        assert!(error["message"].as_str().unwrap().contains("no such consumer group"), "{error}");
        let long = "w".repeat(300);
        let error = client.expect_error(json!({"op": "subscribe", "channel": "q3", "group": "g", "consumer": long})).await;
        assert!(error["message"].as_str().unwrap().contains("consumer name is 300 bytes"), "{error}");
        let error = client.expect_error(json!({"op": "subscribe", "channel": "q3", "group": "g", "consumer": "w"})).await;
        assert!(error["message"].as_str().unwrap().contains("already in group"), "{error}");
        assert_eq!(client.request(json!({"op": "ack", "channel": "q3", "group": "g", "offsets": [real]})).await["ok"], json!({"acked": 1}));
        assert_eq!(client.request(json!({"op": "unsubscribe", "channel": "q3", "group": "g"})).await["ok"], json!({}));

        let memory = TestServer::start(Config::default()).await;
        let mut on_memory = connect(&memory.url()).await;
        let error = on_memory.expect_error(json!({"op": "subscribe", "channel": "c", "group": "g", "consumer": "w"})).await;
        assert!(error["message"].as_str().unwrap().contains("need the Redis engine"), "{error}");
        memory.stop().await;
        server.stop().await;
    }
}
