//! One conformance suite, run against both engines: the same code checks Redis (a real
//! `redis-server`) and the embedded memory engine for the semantics the server relies on.

use redistribute::engine::{Engine, EngineError, MemoryEngine, partition_of};
use redistribute::groups::{self, Consumer, GroupOptions};
use redistribute::protocol::{Start, StreamId};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Generates `redis_engine::<case>` and `memory_engine::<case>` tests for each case.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod redis_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let redis = crate::support::Redis::start();
                    let engine = redistribute::engine::Engine::Redis(
                        redistribute::engine::RedisEngine::new(&[redis.url()], std::time::Duration::from_secs(5), crate::support::PREFIX, &Default::default())
                            .unwrap(),
                    );
                    super::$case(&engine).await;
                }
            )*
        }
        mod cluster_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    // One cluster for all cases; each has its own keys.
                    let cluster = crate::support::RedisCluster::shared();
                    let prefix = format!("{}:{}:", stringify!($case), std::process::id());
                    let engine = redistribute::engine::Engine::Redis(
                        redistribute::engine::RedisEngine::cluster(&cluster.seeds(), std::time::Duration::from_secs(5), &prefix, 16, &Default::default())
                            .unwrap(),
                    );
                    super::$case(&engine).await;
                }
            )*
        }
        mod memory_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::memory()).await;
                }
            )*
        }
    };
}

conformance!(
    ids_are_time_based_and_strictly_increasing,
    ranges_read_strictly_after_an_id,
    missing_streams_are_empty,
    trimming_keeps_the_newest_and_reports_the_loss,
    tail_reads_wake_on_append_and_on_wake,
    concurrent_publishers_lose_nothing,
    groups_split_the_entries_exactly_once,
    groups_give_a_crashed_workers_entries_to_the_others,
    groups_reread_a_restarted_consumers_own_pending_entries,
    groups_dead_letter_entries_delivered_too_often,
    groups_acknowledge_all_or_nothing,
);

fn memory() -> Engine {
    Engine::Memory(MemoryEngine::default())
}

fn fields(n: usize) -> Vec<String> {
    vec!["n".into(), n.to_string()]
}

async fn publish_many(engine: &Engine, channel: &str, count: usize, maxlen: Option<u64>) -> Vec<StreamId> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        ids.push(engine.publish(channel, &fields(n), maxlen).await.unwrap());
    }
    ids
}

async fn all(engine: &Engine, channel: &str) -> Vec<(StreamId, Vec<String>)> {
    let page = engine.history_page(channel, StreamId::ZERO, 100_000).await.unwrap();
    page.entries.into_iter().map(|e| (e.offset, e.fields)).collect()
}

async fn ids_are_time_based_and_strictly_increasing(engine: &Engine) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let ids = publish_many(engine, "ids", 2000, None).await;
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    assert!(ids[0].ms + 60_000 > now && ids[0].ms < now + 60_000, "milliseconds of the wall clock: {}", ids[0]);
    assert!(ids.iter().any(|id| id.seq > 0), "several entries per millisecond get sequence numbers");
    let state = engine.state("ids").await.unwrap();
    assert_eq!(state.last_generated, *ids.last().unwrap(), "`$` is the last generated ID");
    assert_eq!((state.length, state.entries_added), (2000, 2000));
    assert_eq!(state.first, Some(ids[0]));
}

async fn ranges_read_strictly_after_an_id(engine: &Engine) {
    let ids = publish_many(engine, "range", 25, None).await;
    let page = engine.history_page("range", StreamId::ZERO, 10).await.unwrap();
    assert_eq!(page.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), ids[..10]);
    assert_eq!(page.entries[3].fields, fields(3), "fields exactly as published");
    let page = engine.history_page("range", ids[9], 10).await.unwrap();
    assert_eq!(page.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), ids[10..20]);
    let page = engine.history_page("range", ids[19], 10).await.unwrap();
    assert_eq!(page.entries.len(), 5);
    assert!(engine.history_page("range", ids[24], 10).await.unwrap().entries.is_empty());
    // IDs that are not entries: before the first reads from it, past the last reads nothing.
    let before = StreamId::new(ids[0].ms - 1, 7);
    assert_eq!(engine.history_page("range", before, 1).await.unwrap().entries[0].offset, ids[0]);
    let past = ids[24].successor().unwrap();
    assert!(engine.history_page("range", past, 10).await.unwrap().entries.is_empty());
    assert_eq!(page.state.last_generated, ids[24], "pages carry the state read with them");
    assert!(engine.has_entry("range", ids[0]).await.unwrap() && engine.has_entry("range", ids[24]).await.unwrap());
    assert!(!engine.has_entry("range", before).await.unwrap(), "an ID that is no entry");
    assert!(!engine.has_entry("range", past).await.unwrap());
}

async fn missing_streams_are_empty(engine: &Engine) {
    let state = engine.state("nothing").await.unwrap();
    assert_eq!(state.last_generated, StreamId::ZERO);
    assert!(!state.lost_after(StreamId::ZERO));
    let page = engine.history_page("nothing", StreamId::ZERO, 10).await.unwrap();
    assert!(page.entries.is_empty());
    assert!(!engine.has_entry("nothing", StreamId::new(1, 0)).await.unwrap());
    assert!(!page.state.lost_after(StreamId::ZERO));
}

async fn trimming_keeps_the_newest_and_reports_the_loss(engine: &Engine) {
    let ids = publish_many(engine, "trim", 1000, Some(10)).await;
    let kept = all(engine, "trim").await;
    // `MAXLEN ~` may keep up to a radix-tree node more than asked (Redis); never fewer.
    assert!(kept.len() >= 10 && kept.len() <= 110, "kept {}", kept.len());
    let kept_ids: Vec<StreamId> = kept.iter().map(|(id, _)| *id).collect();
    assert_eq!(kept_ids, ids[ids.len() - kept.len()..], "the newest entries, in order");
    let state = engine.state("trim").await.unwrap();
    assert!(state.lost_after(ids[0]), "entries after the first were trimmed");
    assert!(state.lost_after(StreamId::ZERO));
    assert!(!state.lost_after(kept_ids[0]), "nothing after a kept entry was lost");
    assert!(!state.lost_after(*ids.last().unwrap()));
    assert_eq!(state.entries_added, 1000);
}

async fn tail_reads_wake_on_append_and_on_wake(engine: &Engine) {
    let last = engine.publish("tail", &fields(0), None).await.unwrap();
    // A follower reads one partition (on a cluster, one slot): "tail" and another of its channels.
    let partition = partition_of("tail", 16);
    let other = (0..).map(|i| format!("other-{i}")).find(|c| partition_of(c, 16) == partition).unwrap();
    let mut follower = engine.follower(0, partition).await.unwrap();
    let block = Duration::from_secs(60); // longer than the test's patience: only a wake or data ends it
    let streams = vec![("tail".to_owned(), last), (other, StreamId::ZERO)];
    let reading = tokio::spawn(async move {
        let got = follower.read(&streams, 100, block, Duration::from_secs(5)).await.unwrap();
        (follower, got)
    });
    let added = engine.publish("tail", &fields(1), None).await.unwrap();
    let (mut follower, got) =
        tokio::time::timeout(Duration::from_secs(20), reading).await.expect("the append woke the read").unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "tail");
    assert_eq!(got[0].1.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![added]);

    // A wake ends a read that has nothing to return.
    let wake_id = follower.wake_id();
    let streams = vec![("tail".to_owned(), added)];
    let reading =
        tokio::spawn(async move { follower.read(&streams, 100, block, Duration::from_secs(5)).await.unwrap() });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !engine.wake(0, partition, wake_id).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the read never blocked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = tokio::time::timeout(Duration::from_secs(20), reading).await.expect("the wake ended the read").unwrap();
    assert!(got.is_empty());
}

async fn concurrent_publishers_lose_nothing(engine: &Engine) {
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..250 {
                    ids.push(engine.publish("busy", &[format!("t{t}"), n.to_string()], None).await.unwrap());
                }
                ids
            })
        })
        .collect();
    let mut published = Vec::new();
    for task in tasks {
        let ids = task.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "each publisher's entries keep its order");
        published.extend(ids);
    }
    let stored = all(engine, "busy").await;
    assert_eq!(stored.len(), 1000);
    assert!(stored.windows(2).all(|w| w[0].0 < w[1].0));
    published.sort();
    assert_eq!(stored.iter().map(|(id, _)| *id).collect::<Vec<_>>(), published, "every publish stored once");
    for t in 0..4 {
        let mine: Vec<&String> = stored.iter().filter(|(_, f)| f[0] == format!("t{t}")).map(|(_, f)| &f[1]).collect();
        assert_eq!(mine, (0..250).map(|n| n.to_string()).collect::<Vec<_>>().iter().collect::<Vec<_>>());
    }
}

fn group_options() -> GroupOptions {
    GroupOptions { start: Start::After(StreamId::ZERO), block: Duration::from_millis(200), ..GroupOptions::default() }
}

async fn pending(engine: &Engine, channel: &str, group: &str) -> u64 {
    groups::pending_count(engine, channel, group).await.unwrap()
}

async fn groups_split_the_entries_exactly_once(engine: &Engine) {
    const TOTAL: usize = 10_000;
    const BATCH: usize = 100;
    let all: HashSet<StreamId> = publish_many(engine, "jobs", TOTAL, None).await.into_iter().collect();
    // Workers ask in rounds, as independent machines would keep asking; the engine must hand
    // each request different entries.
    let rounds = TOTAL.div_ceil(3 * BATCH);
    let round = Arc::new(tokio::sync::Barrier::new(3));
    let started = Instant::now();
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (engine, round) = (engine.clone(), round.clone());
            tokio::spawn(async move {
                let options = GroupOptions { batch: BATCH, ..group_options() };
                let mut consumer = Consumer::join(&engine, "jobs", "workers", &format!("w{w}"), options).await.unwrap();
                let mut mine = Vec::new();
                for _ in 0..rounds {
                    round.wait().await;
                    let batch = consumer.next().await.unwrap();
                    assert!(batch.iter().all(|d| d.deliveries == 1), "nobody crashed: first deliveries only");
                    let offsets: Vec<StreamId> = batch.iter().map(|d| d.entry.offset).collect();
                    if !offsets.is_empty() {
                        assert_eq!(consumer.ack(&offsets).await.unwrap(), offsets.len() as u64);
                        mine.extend(offsets);
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
    assert_eq!(pending(engine, "jobs", "workers").await, 0);
    println!("3 workers acknowledged {TOTAL} entries in {elapsed:?} ({:.0}/s)", TOTAL as f64 / elapsed.as_secs_f64());
}

async fn groups_give_a_crashed_workers_entries_to_the_others(engine: &Engine) {
    let all: HashSet<StreamId> = publish_many(engine, "tasks", 500, None).await.into_iter().collect();
    let quick = GroupOptions { claim_idle: Duration::from_millis(300), batch: 50, ..group_options() };
    // This worker takes a batch and dies without acknowledging it.
    let mut doomed = Consumer::join(engine, "tasks", "g", "doomed", quick.clone()).await.unwrap();
    let taken: HashSet<StreamId> = doomed.next().await.unwrap().iter().map(|d| d.entry.offset).collect();
    assert_eq!(taken.len(), 50);
    drop(doomed);

    let mut survivors = Vec::new();
    for name in ["a", "b"] {
        survivors.push(Consumer::join(engine, "tasks", "g", name, quick.clone()).await.unwrap());
    }
    let (mut acked, mut redelivered) = (HashSet::new(), HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.len() < all.len() {
        assert!(Instant::now() < deadline, "only {} of {} acknowledged", acked.len(), all.len());
        for consumer in &mut survivors {
            let batch = consumer.next().await.unwrap();
            for d in &batch {
                if d.deliveries > 1 {
                    redelivered.insert(d.entry.offset);
                }
                acked.insert(d.entry.offset);
            }
            let offsets: Vec<StreamId> = batch.iter().map(|d| d.entry.offset).collect();
            if !offsets.is_empty() {
                consumer.ack(&offsets).await.unwrap();
            }
        }
    }
    assert_eq!(acked, all, "none lost");
    assert_eq!(redelivered, taken, "exactly the dead worker's entries came back, counted");
    assert_eq!(pending(engine, "tasks", "g").await, 0);
}

async fn groups_reread_a_restarted_consumers_own_pending_entries(engine: &Engine) {
    publish_many(engine, "own", 20, None).await;
    let opts = GroupOptions { batch: 5, ..group_options() };
    let mut first = Consumer::join(engine, "own", "g", "w", opts.clone()).await.unwrap();
    let taken: Vec<StreamId> = first.next().await.unwrap().iter().map(|d| d.entry.offset).collect();
    drop(first);
    let mut again = Consumer::join(engine, "own", "g", "w", opts).await.unwrap();
    let batch = again.next().await.unwrap();
    assert_eq!(batch.iter().map(|d| d.entry.offset).collect::<Vec<_>>(), taken, "its own pending entries first");
    assert!(batch.iter().all(|d| d.deliveries == 2), "re-reading counts as a delivery, as in Redis");
}

async fn groups_dead_letter_entries_delivered_too_often(engine: &Engine) {
    let poison = engine.publish("work", &["job".into(), "explodes".into()], None).await.unwrap();
    let opts = GroupOptions { claim_idle: Duration::from_millis(50), max_deliveries: 3, ..group_options() };
    let mut worker = Consumer::join(engine, "work", "g", "w", opts).await.unwrap();
    let mut counts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending(engine, "work", "g").await > 0 || counts.is_empty() {
        assert!(Instant::now() < deadline, "never dead-lettered; deliveries so far {counts:?}");
        for d in worker.next().await.unwrap() {
            counts.push(d.deliveries); // never acknowledged: it "crashes" every time
        }
    }
    assert_eq!(counts, vec![1, 2, 3], "delivered up to the limit, counted");
    let dead = all(engine, "work:dead").await;
    assert_eq!(dead.len(), 1);
    let poison = poison.to_string();
    assert_eq!(
        dead[0].1,
        vec![
            "job",
            "explodes",
            "dead-letter-offset",
            poison.as_str(),
            "dead-letter-group",
            "g",
            "dead-letter-deliveries",
            "4"
        ]
    );
}

async fn groups_acknowledge_all_or_nothing(engine: &Engine) {
    publish_many(engine, "acks", 3, None).await;
    let mut worker = Consumer::join(engine, "acks", "g", "w", group_options()).await.unwrap();
    let batch = worker.next().await.unwrap();
    let real = batch[0].entry.offset;
    let unknown = StreamId::new(1, 1);
    match groups::ack(engine, "acks", "g", &[real, unknown]).await {
        Err(EngineError::NotPending(list)) => assert_eq!(list, [unknown]),
        other => panic!("expected NotPending, got {other:?}"),
    }
    assert_eq!(pending(engine, "acks", "g").await, 3, "all or nothing");
    assert!(matches!(groups::ack(engine, "acks", "nope", &[real]).await, Err(EngineError::NoGroup { .. })));
    assert!(matches!(groups::pending_count(engine, "acks", "nope").await, Err(EngineError::NoGroup { .. })));
    // As one consumer: entries pending for another are refused, all or nothing.
    let mine = batch[1].entry.offset;
    match groups::ack_as(engine, "acks", "g", "someone-else", &[mine]).await {
        Err(EngineError::HeldByOthers(list)) => assert_eq!(list, [mine]),
        other => panic!("expected HeldByOthers, got {other:?}"),
    }
    assert_eq!(groups::ack_as(engine, "acks", "g", "w", &[mine]).await.unwrap(), 1);
    assert_eq!(groups::ack(engine, "acks", "g", &[real]).await.unwrap(), 1);
    assert_eq!(pending(engine, "acks", "g").await, 1);
}
