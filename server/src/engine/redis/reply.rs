//! Decoding Redis stream replies (`XRANGE`, `XREAD`, `XINFO STREAM`) from [`redis::Value`].
//!
//! Both RESP2 (flat arrays) and RESP3 (maps) shapes are accepted. Field names and values are
//! binary-safe in Redis but text on the wire, so invalid UTF-8 is replaced with U+FFFD.

use crate::engine::{EngineError, StreamState};
use redis::Value;
use redistribute_protocol::{Entry, StreamId};

fn unexpected(what: &str, value: &Value) -> EngineError {
    EngineError::Reply(format!("{what}: {value:?}"))
}

/// Text of a bulk or simple string.
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// Text of a bulk or simple string, taken over without a copy when it is valid UTF-8 (every
/// field of every entry passes through here); the value back if it is not a string.
fn into_text(value: Value) -> Result<String, Value> {
    match value {
        Value::BulkString(bytes) => {
            Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
        }
        Value::SimpleString(s) => Ok(s),
        Value::VerbatimString { text, .. } => Ok(text),
        other => Err(other),
    }
}

pub(crate) fn stream_id(value: &Value) -> Result<StreamId, EngineError> {
    let parsed = match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => s.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| unexpected("expected a stream ID", value))
}

/// Key/value pairs of a RESP3 map or a RESP2 flat array.
fn pairs(value: &Value) -> Result<Vec<(&Value, &Value)>, EngineError> {
    match value {
        Value::Map(map) => Ok(map.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) if items.len() % 2 == 0 => Ok(items.chunks(2).map(|kv| (&kv[0], &kv[1])).collect()),
        other => Err(unexpected("expected a map", other)),
    }
}

/// The two parts of a `[a, b]` array.
fn two(value: Value, what: &str) -> Result<(Value, Value), EngineError> {
    match value {
        Value::Array(parts) if parts.len() == 2 => {
            let mut parts = parts.into_iter();
            Ok((parts.next().unwrap_or(Value::Nil), parts.next().unwrap_or(Value::Nil)))
        }
        other => Err(unexpected(what, &other)),
    }
}

/// One `[id, [field, value, …]]` entry.
fn entry(value: Value) -> Result<Entry, EngineError> {
    let (id, fields) = two(value, "expected an entry")?;
    let field = |f: Value| into_text(f).map_err(|f| unexpected("expected a field", &f));
    let fields = match fields {
        Value::Array(items) => items.into_iter().map(field).collect::<Result<_, _>>()?,
        Value::Map(map) => map.into_iter().flat_map(|(k, v)| [k, v]).map(field).collect::<Result<_, _>>()?,
        Value::Nil => Vec::new(),
        other => return Err(unexpected("expected entry fields", &other)),
    };
    Ok(Entry { offset: stream_id(&id)?, fields })
}

/// An `XRANGE` reply: a list of entries.
pub(crate) fn entries(value: Value) -> Result<Vec<Entry>, EngineError> {
    match value {
        Value::Array(items) => items.into_iter().map(entry).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected("expected a list of entries", &other)),
    }
}

/// An `XREAD` reply: entries per stream key. `Nil` (timeout or `CLIENT UNBLOCK`) is empty.
pub(crate) fn streams(value: Value) -> Result<Vec<(String, Vec<Entry>)>, EngineError> {
    let per_key: Vec<(Value, Value)> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(map) => map,
        Value::Array(items) => {
            items.into_iter().map(|item| two(item, "expected [key, entries]")).collect::<Result<_, _>>()?
        }
        other => return Err(unexpected("expected an XREAD reply", &other)),
    };
    per_key
        .into_iter()
        .map(|(key, list)| Ok((into_text(key).map_err(|k| unexpected("expected a key", &k))?, entries(list)?)))
        .collect()
}

/// An `XINFO STREAM` reply, reduced to what the server uses.
pub(crate) fn stream_state(value: &Value) -> Result<StreamState, EngineError> {
    let mut state = StreamState::default();
    let mut saw_last = false;
    let mut saw_added = false;
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| unexpected("expected a count", v)),
        other => Err(unexpected("expected a count", other)),
    };
    for (key, val) in pairs(value)? {
        match text(key).as_deref() {
            Some("last-generated-id") => {
                state.last_generated = stream_id(val)?;
                saw_last = true;
            }
            Some("max-deleted-entry-id") => state.max_deleted = stream_id(val)?,
            Some("length") => state.length = int(val)?,
            Some("entries-added") => {
                state.entries_added = int(val)?;
                saw_added = true;
            }
            Some("first-entry") => {
                state.first = match val {
                    Value::Nil => None,
                    Value::Array(parts) if parts.len() == 2 => Some(stream_id(&parts[0])?),
                    other => return Err(unexpected("expected an entry", other)),
                }
            }
            _ => {}
        }
    }
    if !saw_added {
        // Before Redis 7.0 there is no count of removals: assume some, to report rather than hide.
        state.entries_added = u64::MAX;
    }
    if saw_last { Ok(state) } else { Err(unexpected("XINFO STREAM without last-generated-id", value)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn decodes_resp2_xread() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("chat"),
            Value::Array(vec![Value::Array(vec![
                bulk("5-1"),
                Value::Array(vec![bulk("k"), Value::BulkString(vec![b'v', 0xff])]),
            ])]),
        ])]);
        let decoded = streams(reply).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].0, "chat");
        assert_eq!(
            decoded[0].1,
            vec![Entry { offset: StreamId::new(5, 1), fields: vec!["k".into(), "v\u{fffd}".into()] }]
        );
        assert!(streams(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn decodes_resp3_xread_and_xinfo() {
        let reply = Value::Map(vec![(
            bulk("a"),
            Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("x"), bulk("y")])])]),
        )]);
        assert_eq!(streams(reply).unwrap()[0].1[0].offset, StreamId::new(1, 0));
        let info = Value::Map(vec![
            (bulk("length"), Value::Int(3)),
            (bulk("last-generated-id"), bulk("9-2")),
            (bulk("max-deleted-entry-id"), bulk("4-0")),
            (bulk("entries-added"), Value::Int(3)),
            (bulk("first-entry"), Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("a"), bulk("b")])])),
        ]);
        let state = stream_state(&info).unwrap();
        let expected = StreamState {
            last_generated: StreamId::new(9, 2),
            max_deleted: StreamId::new(4, 0),
            first: Some(StreamId::new(2, 0)),
            length: 3,
            entries_added: 3,
        };
        assert_eq!(state, expected);
        assert!(state.lost_after(StreamId::new(3, 9)), "an XDEL after the offset");
        assert!(!state.lost_after(StreamId::new(4, 0)));
    }

    #[test]
    fn trimming_is_detected_from_the_first_entry() {
        let trimmed = StreamState {
            last_generated: StreamId::new(100, 0),
            max_deleted: StreamId::ZERO,
            first: Some(StreamId::new(90, 0)),
            length: 10,
            entries_added: 100,
        };
        assert_eq!(trimmed.loss_after(StreamId::new(5, 0)), Some(StreamId::new(90, 0)));
        assert_eq!(trimmed.loss_after(StreamId::new(90, 0)), None);
        assert_eq!(trimmed.loss_after(StreamId::new(100, 0)), None);
        let emptied = StreamState { first: None, length: 0, ..trimmed };
        assert!(emptied.lost_after(StreamId::new(99, 0)));
        assert!(!emptied.lost_after(StreamId::new(100, 0)));
        assert!(!StreamState::default().lost_after(StreamId::ZERO), "a missing stream lost nothing");
        let untouched = StreamState { entries_added: 10, ..trimmed };
        assert!(
            !untouched.lost_after(StreamId::ZERO),
            "nothing removed: starting before the first entry loses nothing"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(entries(Value::Int(1)).is_err());
        assert!(stream_state(&Value::Array(vec![bulk("length"), Value::Int(1)])).is_err());
        assert!(entries(Value::Array(vec![Value::Array(vec![bulk("nope"), Value::Array(vec![])])])).is_err());
    }
}
