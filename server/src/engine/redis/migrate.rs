//! Moving a single Redis's channels into a Redis Cluster: `redistribute-server migrate`.
//!
//! On one Redis, channel `c` is the key `<prefix>c`; on a cluster it is `<prefix>{<tag>}c` (see
//! [`super::cluster_key`]), so the keys are copied under their new names with `DUMP` and
//! `RESTORE` (a stream keeps its entries, IDs and consumer groups; an idempotency record keeps its
//! expiry). The source is left as it was: stop the servers, migrate, point them at the cluster,
//! check, then delete the old keys.

use super::cluster::Cluster;
use super::error::{Context, classify};
use super::tls::uses_tls;
use super::{RedisTls, cluster_key, escape_glob, redact};
use redis::{AsyncCommands, Value};
use std::time::Duration;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Keys copied into the cluster.
    pub copied: u64,
    /// Source keys whose new key already existed in the cluster: left alone, not overwritten.
    pub existing: Vec<String>,
}

/// Copies every key under `prefix` of the Redis at `source` into the cluster reached through
/// `seeds`, in the cluster layout with `partitions` partitions; `rediss://` URIs use `tls`.
///
/// # Errors
/// [`crate::Error::Config`] for a URI or TLS file that cannot be used; [`crate::Error::Engine`]
/// when either side cannot be reached or answers with an error (keys copied so far stay copied;
/// running it again skips them as existing).
pub async fn migrate_to_cluster(
    source: &str,
    seeds: &[String],
    prefix: &str,
    partitions: usize,
    tls: &RedisTls,
) -> Result<Migration, crate::Error> {
    if seeds.is_empty() {
        return Err(crate::Error::Config("migrating needs the cluster's seed nodes".into()));
    }
    let certificates = tls.load()?;
    let config = |side: &str, e: redis::RedisError| crate::Error::Config(format!("{side}: {e}"));
    let source_name = redact(source);
    // The files serve whichever side is `rediss://`: moving off a plain Redis into a TLS cluster
    // is the usual case.
    let (source_tls, cluster_tls) = match (uses_tls(source), uses_tls(&seeds[0])) {
        (Ok(source_tls), Ok(cluster_tls)) => (source_tls, cluster_tls),
        (Err(e), _) => return Err(config(&source_name, e)),
        (_, Err(e)) => return Err(config("the cluster", e)),
    };
    if certificates.is_some() && !source_tls && !cluster_tls {
        return Err(crate::Error::Config("TLS files are given but neither side is rediss://".into()));
    }
    let only_if = |tls: bool| if tls { certificates.as_ref() } else { None };
    let at_source = |e| crate::Error::Engine(classify(e, &Context::on(&source_name)));
    let at_cluster = |e| crate::Error::Engine(classify(e, &Context::on("the cluster")));
    let mut from = super::tls::open(source, only_if(source_tls))
        .map_err(|e| config(&source_name, e))?
        .get_multiplexed_async_connection()
        .await
        .map_err(at_source)?;
    // A large stream's DUMP and RESTORE take a while: a timeout for them, not for a web request.
    let cluster =
        Cluster::new(seeds, Duration::from_secs(60), only_if(cluster_tls)).map_err(|e| config("the cluster", e))?;
    let mut to = cluster.connection().await.map_err(at_cluster)?;
    let pattern = format!("{}*", escape_glob(prefix));
    let mut migration = Migration::default();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut from)
            .await
            .map_err(at_source)?;
        for key in keys {
            let Some(new_key) = cluster_name(&key, prefix, partitions) else { continue };
            let dump: Value = redis::cmd("DUMP").arg(&key).query_async(&mut from).await.map_err(at_source)?;
            let ttl: i64 = from.pttl(&key).await.map_err(at_source)?;
            let Value::BulkString(payload) = dump else { continue }; // gone meanwhile
            let restored: redis::RedisResult<()> =
                redis::cmd("RESTORE").arg(&new_key).arg(ttl.max(0)).arg(payload).query_async(&mut to).await;
            match restored {
                Ok(()) => migration.copied += 1,
                Err(e) if e.code() == Some("BUSYKEY") => migration.existing.push(new_key),
                Err(e) => return Err(at_cluster(e)),
            }
        }
        if next == 0 {
            return Ok(migration);
        }
        cursor = next;
    }
}

/// The cluster name of a source key: its channel's cluster key, with what followed the channel
/// (`~idempotency~…`; a channel name cannot hold `~`) kept. `None` for a key outside `prefix`.
fn cluster_name(key: &str, prefix: &str, partitions: usize) -> Option<String> {
    let name = key.strip_prefix(prefix)?;
    let (channel, rest) = match name.find('~') {
        Some(at) => name.split_at(at),
        None => (name, ""),
    };
    Some(format!("{}{rest}", cluster_key(prefix, channel, partitions)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_get_their_cluster_names() {
        let chat = cluster_key("rd:", "chat", 16);
        assert_eq!(cluster_name("rd:chat", "rd:", 16), Some(chat.clone()));
        assert_eq!(
            cluster_name("rd:chat~idempotency~3:ann:k-1", "rd:", 16),
            Some(format!("{chat}~idempotency~3:ann:k-1"))
        );
        assert_eq!(cluster_name("rd:chat:dead", "rd:", 16), Some(cluster_key("rd:", "chat:dead", 16)));
        assert_eq!(cluster_name("other:chat", "rd:", 16), None);
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
