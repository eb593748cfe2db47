//! The server on a real Redis Cluster (3 masters, 3 replicas): channels on every master reach
//! every instance, replays and joins stay gap-free, publishes and consumer groups work across
//! slots. Each test has its own key prefix on the shared cluster. (The engine's semantics are
//! checked on the cluster by the conformance suite.)

use crate::support::{Hardened, PATIENCE, PREFIX, Redis, RedisCluster, TestServer, connect};
use redistribute::Config;
use redistribute::engine::{cluster_key, migrate_to_cluster, slot_of};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

/// Settings for a server on `cluster`, with keys under `prefix`.
fn config(cluster: &RedisCluster, prefix: &str) -> Config {
    Config { key_prefix: prefix.to_owned(), ..Config::with_cluster(cluster.seeds()) }
}

/// A server on `cluster`, with keys under `prefix`.
async fn server(cluster: &RedisCluster, prefix: &str) -> TestServer {
    TestServer::start(config(cluster, prefix)).await
}

fn prefix(test: &str) -> String {
    format!("{test}:{}:", std::process::id())
}

/// Channels whose keys land on each master: one per master, in the masters' order.
fn one_channel_per_master(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let slots = cluster.slot_owners();
    let mut found: Vec<Option<String>> = vec![None; cluster.masters().len()];
    for i in 0.. {
        let channel = format!("room-{i}");
        let owner = slots(slot_of(&cluster_key(prefix, &channel, 16)));
        if found[owner].is_none() {
            found[owner] = Some(channel);
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_on_every_master_reach_every_instance() {
    let cluster = RedisCluster::shared();
    let prefix = prefix("every_master");
    let (a, b) = (server(cluster, &prefix).await, server(cluster, &prefix).await);
    let channels = one_channel_per_master(cluster, &prefix);
    assert_eq!(channels.len(), 3);
    let mut on_a = connect(&a.url()).await;
    let mut on_b = connect(&b.url()).await;
    for channel in &channels {
        on_a.subscribe(channel, "$").await;
        on_b.subscribe(channel, "$").await;
    }
    for channel in &channels {
        let from_a = on_a.publish(channel, &["who", "a"]).await;
        let from_b = on_b.publish(channel, &["who", "b"]).await;
        // Written by another program straight into the cluster.
        let direct = cluster.xadd(&cluster_key(&prefix, channel, 16), &[("who", "redis-cli")]);
        let expected: Vec<String> = vec![from_a, from_b, direct];
        for client in [&mut on_a, &mut on_b] {
            let got: Vec<String> = client.entries(channel, 3).await.into_iter().map(|(offset, _)| offset).collect();
            assert_eq!(got, expected, "#{channel}");
        }
        let stored: Vec<String> =
            cluster.xrange(&cluster_key(&prefix, channel, 16)).into_iter().map(|(id, _)| id).collect();
        assert_eq!(stored, expected, "#{channel} in the cluster");
    }
    on_a.assert_quiet().await;
    on_b.assert_quiet().await;
    a.stop().await;
    b.stop().await;
}

/// Subscribers join at staggered points, from varied offsets, while a publisher writes on the
/// other instance: each gets exactly `XRANGE` after its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_under_load_are_gap_free_on_the_cluster() {
    const TOTAL: usize = 2000;
    const JOINERS: usize = 6;
    let cluster = RedisCluster::shared();
    let prefix = prefix("joins");
    let mut config = config(cluster, &prefix);
    config.history_page = 50;
    let a = TestServer::start(config.clone()).await;
    let b = TestServer::start(config).await;
    let key = cluster_key(&prefix, "load", 16);

    let publisher_url = a.url();
    let publisher = tokio::spawn(async move {
        let mut client = connect(&publisher_url).await;
        for i in 0..TOTAL {
            client.publish("load", &["seq", &i.to_string()]).await;
        }
    });
    let mut joiners = Vec::new();
    for j in 0..JOINERS {
        let url = b.url();
        let key = key.clone();
        joiners.push(tokio::spawn(async move {
            // Redis calls of the test are blocking: off the runtime's two workers, which the
            // servers and the publisher need.
            let xrange = |key: String| tokio::task::spawn_blocking(move || RedisCluster::shared().xrange(&key));
            let deadline = std::time::Instant::now() + PATIENCE * 3;
            let existing = loop {
                let existing = xrange(key.clone()).await.unwrap();
                if existing.len() >= TOTAL * j / JOINERS {
                    break existing;
                }
                assert!(std::time::Instant::now() < deadline, "the publisher stalled");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let offset = match j % 3 {
                0 => "$".to_owned(),
                1 => "0".to_owned(),
                _ if existing.is_empty() => "0".to_owned(),
                _ => existing[existing.len() / 2].0.clone(),
            };
            let mut client = connect(&url).await;
            let start = client.subscribe("load", &offset).await["offset"].as_str().unwrap().to_owned();
            let last = (TOTAL - 1).to_string();
            let got = client.entries_until("load", |e| e.last().is_some_and(|(_, f)| f[1] == last)).await;
            (start, got)
        }));
    }
    publisher.await.unwrap();
    let all = cluster.xrange(&key);
    assert_eq!(all.len(), TOTAL);
    for joiner in joiners {
        let (start, got) = joiner.await.unwrap();
        let after = all.iter().position(|(id, _)| *id == start).map_or(0, |i| i + 1);
        assert_eq!(got, all[after..], "subscriber from {start}");
    }
    a.stop().await;
    b.stop().await;
}

/// Pipelined publishes to channels of different slots (one pipeline per partition), with and
/// without idempotency keys: each answered in order, stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_across_slots_are_stored_once_each() {
    let cluster = RedisCluster::shared();
    let prefix = prefix("pipelined");
    let server = server(cluster, &prefix).await;
    let channels = one_channel_per_master(cluster, &prefix);
    let mut client = connect(&server.url()).await;
    let mut sent = 0;
    for round in 0..2 {
        for (i, channel) in channels.iter().enumerate() {
            // The same key in both rounds: the second is a retry.
            let body = json!({"id": 1000 + sent, "op": "publish", "channel": channel, "fields": ["n", round.to_string()], "idempotency_key": format!("k{i}")});
            client.send_text(&body.to_string()).await;
            sent += 1;
        }
    }
    let mut replies = Vec::new();
    for _ in 0..sent {
        replies.push(client.reply().await);
    }
    let ids: Vec<u64> = replies.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1000..1000 + sent as u64).collect::<Vec<_>>(), "answered in order");
    for (i, channel) in channels.iter().enumerate() {
        let (first, retry) = (&replies[i]["ok"], &replies[i + channels.len()]["ok"]);
        assert_eq!(retry, &json!({"offset": first["offset"], "duplicate": true}), "#{channel}");
        let stored = cluster.xrange(&cluster_key(&prefix, channel, 16));
        assert_eq!(stored.len(), 1, "#{channel} once");
    }
    server.stop().await;
}

/// Three members of a group, on two instances, share a channel's entries exactly once and
/// acknowledge them; the group lives in the channel's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_share_the_work_on_the_cluster() {
    const TOTAL: usize = 300;
    let cluster = RedisCluster::shared();
    let prefix = prefix("groups");
    let (a, b) = (server(cluster, &prefix).await, server(cluster, &prefix).await);
    let mut members = Vec::new();
    for (w, url) in [a.url(), b.url(), a.url()].into_iter().enumerate() {
        let mut client = connect(&url).await;
        let joined = client
            .request(
                json!({"op": "subscribe", "channel": "jobs", "group": "g", "consumer": format!("w{w}"), "offset": "0"}),
            )
            .await;
        assert_eq!(joined["ok"], json!({}), "{joined}");
        members.push(client);
    }
    let mut publisher = connect(&a.url()).await;
    for i in 0..TOTAL {
        publisher.publish("jobs", &["n", &i.to_string()]).await;
    }
    let mut seen = HashSet::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while seen.len() < TOTAL {
        assert!(std::time::Instant::now() < deadline, "{} of {TOTAL} delivered", seen.len());
        for member in &mut members {
            let Ok(push) = tokio::time::timeout(Duration::from_millis(50), member.push()).await else { continue };
            let offsets: Vec<String> =
                push["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_str().unwrap().to_owned()).collect();
            for offset in &offsets {
                assert!(seen.insert(offset.clone()), "{offset} delivered twice");
            }
            let acked = member.request(json!({"op": "ack", "channel": "jobs", "group": "g", "offsets": offsets})).await;
            assert_eq!(acked["ok"]["acked"], json!(offsets.len()), "{acked}");
        }
    }
    a.stop().await;
    b.stop().await;
}

/// `redistribute-server migrate`: a single Redis's channels (a stream with a consumer group
/// that has pending entries, its dead letters, an idempotency record) move into the cluster under
/// their cluster keys, and a server on the cluster carries on with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_redis_migrates_into_the_cluster() {
    let single = Redis::start();
    let prefix = prefix("migrate");
    let before = TestServer::start({
        let mut config = redistribute::Config::with_targets([single.url()]);
        config.key_prefix = prefix.clone();
        config
    })
    .await;
    let mut client = connect(&before.url()).await;
    let keyed = client
        .request(json!({"op": "publish", "channel": "orders", "fields": ["n", "0"], "idempotency_key": "k-0"}))
        .await["ok"]["offset"]
        .clone();
    for n in 1..5 {
        client.publish("orders", &["n", &n.to_string()]).await;
    }
    let joined = client
        .request(json!({"op": "subscribe", "channel": "orders", "group": "g", "consumer": "w", "offset": "0"}))
        .await;
    assert_eq!(joined["ok"], json!({}), "{joined}");
    // Delivered to the group, not acknowledged: pending.
    let push = client.push().await;
    assert_eq!(push["messages"].as_array().unwrap().len(), 5, "{push}");
    drop(client);
    before.stop().await;
    let source: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(format!("{prefix}orders")).arg("-").arg("+").query(&mut single.conn()).unwrap();

    let cluster = RedisCluster::shared();
    let done = migrate_to_cluster(&single.url(), &cluster.seeds(), &prefix, 16, &Default::default()).await.unwrap();
    assert_eq!(done.copied, 2, "the stream and its idempotency record: {done:?}");
    let again = migrate_to_cluster(&single.url(), &cluster.seeds(), &prefix, 16, &Default::default()).await.unwrap();
    assert_eq!((again.copied, again.existing.len()), (0, 2), "a second run overwrites nothing");
    assert_eq!(cluster.xrange(&cluster_key(&prefix, "orders", 16)), source, "entries and IDs kept");

    let after = server(cluster, &prefix).await;
    let mut client = connect(&after.url()).await;
    let retry = client
        .request(json!({"op": "publish", "channel": "orders", "fields": ["n", "0"], "idempotency_key": "k-0"}))
        .await["ok"]
        .clone();
    assert_eq!(retry, json!({"offset": keyed, "duplicate": true}), "the idempotency record came along");
    // The group came along with its pending entries: the consumer rejoining gets them again.
    let joined = client.request(json!({"op": "subscribe", "channel": "orders", "group": "g", "consumer": "w"})).await;
    assert_eq!(joined["ok"], json!({}), "{joined}");
    let push = client.push().await;
    let offsets: Vec<&str> =
        push["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_str().unwrap()).collect();
    assert_eq!(offsets, source.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), "{push}");
    after.stop().await;
}

/// A hardened cluster (TLS only, client certificates required, an ACL user; see [`Hardened`]):
/// a hardened single Redis migrates into it, and two instances on it carry channels on every
/// master (the stream readers' dedicated connections find their masters over TLS) and a
/// consumer group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_client_certificates_and_an_acl_user() {
    let hardened = Hardened::new();
    let cluster = RedisCluster::start_hardened(&hardened);
    let single = Redis::start_hardened(&hardened);
    let moved = single.xadd("moved", &[("n", "0")]);
    // An operator's task, with a user allowed SCAN, DUMP and RESTORE (the servers' is not).
    let done = migrate_to_cluster(&single.admin_url(), &cluster.admin_seeds(), PREFIX, 16, &hardened.redis_tls())
        .await
        .unwrap();
    assert_eq!(done.copied, 1, "{done:?}");
    // The usual move: off a plain Redis into the TLS cluster (the files serve the TLS side).
    let plain = Redis::start();
    let old = plain.xadd("old", &[("n", "0")]);
    let done =
        migrate_to_cluster(&plain.url(), &cluster.admin_seeds(), PREFIX, 16, &hardened.redis_tls()).await.unwrap();
    assert_eq!(done.copied, 1, "{done:?}");

    let mut config = config(&cluster, PREFIX);
    config.redis_tls = hardened.redis_tls();
    let (a, b) = (TestServer::start(config.clone()).await, TestServer::start(config).await);
    let (mut on_a, mut on_b) = (connect(&a.url()).await, connect(&b.url()).await);
    on_b.subscribe("moved", "0").await;
    assert_eq!(on_b.entries("moved", 1).await[0].0, moved, "the migrated stream");
    on_b.subscribe("old", "0").await;
    assert_eq!(on_b.entries("old", 1).await[0].0, old, "the stream from the plain Redis");
    let channels = one_channel_per_master(&cluster, PREFIX);
    for channel in &channels {
        on_b.subscribe(channel, "$").await;
    }
    for channel in &channels {
        let offset = on_a.publish(channel, &["over", "tls"]).await;
        assert_eq!(on_b.entries(channel, 1).await[0].0, offset, "#{channel}");
    }
    let joined =
        on_b.request(json!({"op": "subscribe", "channel": "jobs", "group": "g", "consumer": "w", "offset": "0"})).await;
    assert_eq!(joined["ok"], json!({}), "{joined}");
    let offset = on_a.publish("jobs", &["n", "1"]).await;
    let push = on_b.push().await;
    assert_eq!(push["messages"][0]["offset"], json!(offset), "{push}");
    let acked = on_b.request(json!({"op": "ack", "channel": "jobs", "group": "g", "offsets": [offset]})).await;
    assert_eq!(acked["ok"]["acked"], json!(1), "{acked}");
    on_b.assert_quiet().await;
    a.stop().await;
    b.stop().await;
    assert_eq!(cluster.acl_denials(), Vec::<String>::new(), "the servers' ACL rule allows all they send");
}

/// What a subscriber saw of a channel: the offsets delivered, and which of them came before a
/// report that the stream lost entries (`truncated`, `"ahead"`).
#[derive(Debug, Default)]
struct Seen {
    offsets: Vec<String>,
    /// When each offset arrived.
    arrived: Vec<std::time::Instant>,
    lost_reports: Vec<usize>,
}

/// Follows `channel` from `$` until it received the offset `last` says (once it says one).
async fn follow(url: String, channel: String, mut last: tokio::sync::watch::Receiver<Option<String>>) -> Seen {
    let mut client = connect(&url).await;
    client.subscribe(&channel, "$").await;
    let mut seen = Seen::default();
    loop {
        if let Some(last) = &*last.borrow_and_update()
            && seen.offsets.contains(last)
        {
            return seen;
        }
        tokio::select! {
            push = client.push() => {
                if push["truncated"] == json!(true) {
                    assert_eq!(push["reason"], "ahead", "{push}");
                    seen.lost_reports.push(seen.offsets.len());
                }
                for message in push["messages"].as_array().into_iter().flatten() {
                    seen.offsets.push(message["offset"].as_str().unwrap().to_owned());
                    seen.arrived.push(std::time::Instant::now());
                }
            }
            _ = last.changed() => {}
        }
    }
}

/// The promise of a failover: a master of the cluster is killed while publishes to a channel on
/// it go on; its replica takes over. Every publish answered `ok` (confirmed by a replica:
/// `--publish-replicas 1`) is in the stream afterwards; subscribers on both instances keep
/// receiving after a pause, with no duplicate and no reordering, and end with exactly the
/// stream, except entries the failover lost after they were delivered, which are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_while_publishing_loses_no_acknowledged_publish() {
    let mut cluster = RedisCluster::start();
    let prefix = prefix("failover");
    let mut config = config(&cluster, &prefix);
    config.publish_replicas = 1;
    let a = TestServer::start(config.clone()).await;
    let b = TestServer::start(config).await;
    let channels = one_channel_per_master(&cluster, &prefix);
    let victim = cluster.masters()[0];
    let channel = channels[0].clone();
    let key = cluster_key(&prefix, &channel, 16);

    let (last_offset, last) = tokio::sync::watch::channel(None);
    let followers: Vec<_> =
        [a.url(), b.url()].into_iter().map(|url| tokio::spawn(follow(url, channel.clone(), last.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (url, channel, stop) = (a.url(), channel.clone(), stop.clone());
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let reply =
                    client.request(json!({"op": "publish", "channel": channel, "fields": ["n", n.to_string()]})).await;
                match reply["ok"]["offset"].as_str() {
                    Some(offset) => acknowledged.push((std::time::Instant::now(), offset.to_owned())),
                    None => {
                        failed.push((std::time::Instant::now(), reply["error"]["code"].as_str().unwrap().to_owned()))
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acknowledged, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = std::time::Instant::now();
    cluster.node(victim).stop();
    // The replica is promoted once the others see the master fail (node timeout 1 s).
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_for_failover(victim);
        cluster
    })
    .await
    .unwrap();
    let recovered_at = std::time::Instant::now();
    // Publishing goes on a while on the new master.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (acknowledged, failed) = publisher.await.unwrap();

    let stream: Vec<String> = cluster.xrange(&key).into_iter().map(|(id, _)| id).collect();
    for (_, offset) in &acknowledged {
        assert!(stream.contains(offset), "acknowledged publish {offset} lost in the failover");
    }
    let last = stream.last().cloned().expect("entries");
    // Every subscriber receives up to the stream's last entry (its reader may still be waiting
    // to reconnect to the promoted replica).
    last_offset.send(Some(last.clone())).unwrap();
    let mut pauses = Vec::new();
    for follower in followers {
        let seen = tokio::time::timeout(PATIENCE, follower).await.expect("kept receiving after the failover").unwrap();
        // The subscriber's pause: from the kill to the first entry it got from the new master.
        let before = seen.arrived.iter().filter(|at| **at < killed_at).count();
        pauses.push(seen.arrived.get(before).map(|at| *at - killed_at));
        assert_eq!(seen.offsets.last(), Some(&last), "nothing after the stream's end: {seen:?}");
        let mut unique = seen.offsets.clone();
        unique.dedup();
        assert_eq!(unique.len(), seen.offsets.len(), "no duplicate");
        let in_stream: Vec<&String> = seen.offsets.iter().filter(|o| stream.contains(o)).collect();
        let expected: Vec<&String> = stream.iter().skip_while(|o| !seen.offsets.contains(o)).collect();
        assert_eq!(in_stream, expected, "exactly the stream from its first entry on, in order");
        let lost: Vec<&String> = seen.offsets.iter().filter(|o| !stream.contains(o)).collect();
        assert!(lost.is_empty() || !seen.lost_reports.is_empty(), "entries lost after delivery are reported: {lost:?}");
    }
    // The figures of docs/DEPLOYMENT.md (`cargo test … a_master_killed -- --nocapture`).
    eprintln!(
        "failover: cluster ok again after {:?}; subscribers' pause {pauses:?}; {} publishes acknowledged, {} not ({:?})",
        recovered_at - killed_at,
        acknowledged.len(),
        failed.len(),
        failed.iter().map(|(_, code)| code.as_str()).collect::<std::collections::BTreeSet<_>>(),
    );
    a.stop().await;
    b.stop().await;
}

/// A consumer group through a failover: two members on two instances work through a channel
/// whose master is killed halfway. At least once still holds: every entry the stream holds after
/// the failover is delivered to a member in the end. What the failover redelivered is printed
/// (acknowledgements the replica never got make entries pending again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_keeps_at_least_once_through_a_failover() {
    let mut cluster = RedisCluster::start();
    let prefix = prefix("group_failover");
    let mut config = config(&cluster, &prefix);
    config.group_claim_idle = Duration::from_secs(1);
    let a = TestServer::start(config.clone()).await;
    let b = TestServer::start(config).await;
    let channel = one_channel_per_master(&cluster, &prefix).remove(0);
    let victim = cluster.masters()[0];

    let delivered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut members = Vec::new();
    for (w, url) in [a.url(), b.url()].into_iter().enumerate() {
        let (channel, delivered, stop) = (channel.clone(), delivered.clone(), stop.clone());
        members.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            let joined = client
                .request(json!({"op": "subscribe", "channel": channel, "group": "g", "consumer": format!("w{w}"), "offset": "0"}))
                .await;
            assert_eq!(joined["ok"], json!({}), "{joined}");
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let Ok(push) = tokio::time::timeout(Duration::from_millis(100), client.push()).await else { continue };
                let offsets: Vec<String> = push["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m["offset"].as_str().unwrap().to_owned())
                    .collect();
                if offsets.is_empty() {
                    continue;
                }
                delivered.lock().unwrap().extend(offsets.iter().cloned());
                // An ack the failover interrupts is not retried: the entry comes back instead.
                let _ = client.request(json!({"op": "ack", "channel": channel, "group": "g", "offsets": offsets})).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut publisher = connect(&a.url()).await;
    let mut acknowledged = 0;
    for n in 0..400 {
        if n == 150 {
            cluster.node(victim).stop();
        }
        let reply =
            publisher.request(json!({"op": "publish", "channel": channel, "fields": ["n", n.to_string()]})).await;
        acknowledged += usize::from(reply.get("ok").is_some());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_for_failover(victim);
        cluster
    })
    .await
    .unwrap();
    let stream: Vec<String> =
        cluster.xrange(&cluster_key(&prefix, &channel, 16)).into_iter().map(|(offset, _)| offset).collect();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let missing: Vec<String> = {
            let delivered = delivered.lock().unwrap();
            stream.iter().filter(|o| !delivered.contains(o)).cloned().collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "entries of the stream never delivered: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for member in members {
        member.await.unwrap();
    }
    let delivered = delivered.lock().unwrap().clone();
    let unique: std::collections::HashSet<&String> = delivered.iter().collect();
    eprintln!(
        "group failover: {acknowledged} of 400 publishes acknowledged, {} entries in the stream, {} deliveries of {} entries ({} redelivered)",
        stream.len(),
        delivered.len(),
        unique.len(),
        delivered.len() - unique.len(),
    );
    a.stop().await;
    b.stop().await;
}
