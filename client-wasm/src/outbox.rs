//! The durable outbox: publishes the server has not answered, persisted beside the message log
//! so that a page closed or reloaded before it was answered does not lose them.
//!
//! One record per publish, under `<prefix>~out~<idempotency key>` (a channel name cannot hold
//! `~`, so no channel's keys collide with it): `{"c": channel, "f": [field, value, …], "t": ms}`.
//! A publish costs one write when it is made and one removal when it is answered, whatever the
//! number waiting. The next page reads every record, oldest first, and sends them again with
//! their keys: the server stores each once even if an earlier page's attempt reached it (within
//! its idempotency window).

use crate::json::{self, Json};
use crate::machine::Publication;
use crate::store::{KeyValue, StoreError, StoreProblem};
use std::fmt::Write as _;

const MARK: &str = "~out~";

fn record_key(prefix: &str, key: &str) -> String {
    format!("{prefix}{MARK}{key}")
}

fn to_text(publication: &Publication) -> String {
    let mut out = String::from("{\"c\":");
    json::write_str(&mut out, &publication.channel);
    out.push_str(",\"f\":[");
    for (i, field) in publication.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::write_str(&mut out, field);
    }
    let _ = write!(out, "],\"t\":{}}}", publication.at.max(0.0) as u64);
    out
}

fn parse(key: &str, text: &str) -> Option<Publication> {
    let value = json::parse(text).ok()?;
    let fields: Vec<String> =
        value.get("f")?.as_array()?.iter().map(|f| f.as_str().map(str::to_owned)).collect::<Option<_>>()?;
    if fields.is_empty() || !fields.len().is_multiple_of(2) {
        return None;
    }
    Some(Publication {
        channel: value.get("c").and_then(Json::as_str)?.to_owned(),
        fields,
        key: key.to_owned(),
        at: value.get("t").and_then(Json::as_u64)? as f64,
    })
}

/// Persists a publish until [`remove`]. A failure is reported; the publish still goes out, it
/// only does not survive the page.
pub fn save<K: KeyValue>(kv: &mut K, prefix: &str, publication: &Publication) -> Result<(), StoreProblem> {
    kv.set(&record_key(prefix, &publication.key), &to_text(publication)).map_err(|error| {
        let (code, why) = match error {
            StoreError::Quota => ("storage_quota", "storage is full".to_owned()),
            StoreError::Other(reason) => ("storage_failed", reason),
        };
        StoreProblem {
            code,
            message: format!(
                "a publish to \"{}\" could not be saved ({why}): it is sent, but lost if the page closes first",
                publication.channel
            ),
        }
    })
}

/// Forgets the publish with idempotency key `key`.
pub fn remove<K: KeyValue>(kv: &mut K, prefix: &str, key: &str) {
    kv.remove(&record_key(prefix, key));
}

/// Every persisted publish, oldest first (by time, then by the number ending the key); records
/// that cannot be read are removed and reported.
pub fn load<K: KeyValue>(kv: &mut K, prefix: &str) -> (Vec<Publication>, Vec<StoreProblem>) {
    let start = record_key(prefix, "");
    let number = |p: &Publication| p.key.rfind('-').and_then(|i| p.key[i + 1..].parse::<u64>().ok()).unwrap_or(0);
    let mut found: Vec<Publication> = Vec::new();
    let mut problems = Vec::new();
    for stored_key in kv.keys() {
        let Some(key) = stored_key.strip_prefix(&start) else { continue };
        match kv.get(&stored_key).and_then(|text| parse(key, &text)) {
            Some(publication) => {
                // Insertion keeps them ordered (few records; a sort would cost the module kilobytes).
                let place = (publication.at, number(&publication));
                let index = found.partition_point(|p| (p.at, number(p)) <= place);
                found.insert(index, publication);
            }
            None => {
                kv.remove(&stored_key);
                problems.push(StoreProblem {
                    code: "storage_corrupt",
                    message: format!("a saved publish ({key}) was unreadable and was discarded"),
                });
            }
        }
    }
    (found, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryKeyValue;

    fn publication(key: &str, at: f64, value: &str) -> Publication {
        Publication { channel: "chat".into(), fields: vec!["text".into(), value.into()], key: key.into(), at }
    }

    #[test]
    fn records_survive_until_removed_and_load_oldest_first() {
        let mut kv = MemoryKeyValue::default();
        let records = [
            publication("b-10", 2_000.0, "third"),
            publication("a-2", 1_000.0, "second"),
            publication("a-1", 1_000.0, "first \"quoted\" \u{1F600}"),
        ];
        for record in &records {
            save(&mut kv, "p:", record).unwrap();
        }
        kv.set("p:chat", "{}").unwrap(); // a channel's meta record is not a publish
        let (loaded, problems) = load(&mut kv, "p:");
        assert!(problems.is_empty());
        assert_eq!(loaded, [records[2].clone(), records[1].clone(), records[0].clone()]);
        remove(&mut kv, "p:", "a-1");
        assert_eq!(load(&mut kv, "p:").0.len(), 2);
        assert!(load(&mut kv, "other:").0.is_empty(), "another prefix is another outbox");
    }

    #[test]
    fn unreadable_records_are_reported_and_removed() {
        let mut kv = MemoryKeyValue::default();
        save(&mut kv, "p:", &publication("a-1", 1.0, "ok")).unwrap();
        kv.set("p:~out~a-2", "{\"c\":\"chat\",\"f\":[\"odd\"],\"t\":1}").unwrap();
        kv.set("p:~out~a-3", "not json").unwrap();
        let (loaded, problems) = load(&mut kv, "p:");
        assert_eq!(loaded.len(), 1);
        assert_eq!(problems.len(), 2);
        assert!(problems.iter().all(|p| p.code == "storage_corrupt"));
        assert_eq!(kv.keys().len(), 1, "the bad records are gone");
    }

    #[test]
    fn a_full_store_is_reported() {
        let mut kv = MemoryKeyValue { quota: Some(10), ..MemoryKeyValue::default() };
        let problem = save(&mut kv, "p:", &publication("a-1", 1.0, "too long for ten bytes")).unwrap_err();
        assert_eq!(problem.code, "storage_quota");
        assert!(problem.message.contains("\"chat\""), "{}", problem.message);
    }
}
