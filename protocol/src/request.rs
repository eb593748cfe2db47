//! Client requests: parsing with precise, stable error answers, and serialisation for clients.
//!
//! Parsing goes through `serde_json::Value` rather than a derived `Deserialize` so that every
//! malformed request gets a message naming the offending field, and so that the `id` is recovered
//! whenever the frame is a JSON object with a valid `id`, even if the rest of it is wrong.

use crate::{ErrorCode, ProtocolError, Start, StreamId};
use serde::Serialize;
use serde_json::{Map, Value};

/// Largest `id` a request may carry: 2^53 - 1, the largest integer JavaScript represents exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Largest `maxlen` a publish may carry (Redis reads it as a signed 64-bit integer).
pub const MAX_MAXLEN: u64 = i64::MAX as u64;

/// Limits applied while parsing. The frame size limit is applied by the transport, before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest channel name, in bytes.
    pub max_channel_len: usize,
    /// Most strings in a publish's `fields` (field names and values counted separately).
    pub max_fields: usize,
    /// Most offsets in one `ack` (group pushes never carry more).
    pub max_offsets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_channel_len: 256, max_fields: 256, max_offsets: 1000 }
    }
}

/// A parsed, validated request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Client-chosen identifier echoed in the reply.
    pub id: u64,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations of protocol v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// Follow `channel` from just after `offset`.
    Subscribe {
        /// Channel (stream) name.
        channel: String,
        /// Where to start; `$` when the request omits it.
        #[serde(rename = "offset", serialize_with = "crate::request::display")]
        start: Start,
    },
    /// Join consumer group `group` of `channel` as `consumer`: receive a share of its entries.
    #[serde(rename = "subscribe")]
    GroupSubscribe {
        /// Channel (stream) name.
        channel: String,
        /// Consumer group name (created if missing).
        group: String,
        /// This consumer's name within the group.
        consumer: String,
        /// Where a newly created group starts (`$` when the request omits it).
        #[serde(rename = "offset", serialize_with = "crate::request::display")]
        start: Start,
    },
    /// Stop following `channel`.
    Unsubscribe {
        /// Channel (stream) name.
        channel: String,
    },
    /// Leave consumer group `group` of `channel` (unacknowledged entries stay pending).
    #[serde(rename = "unsubscribe")]
    GroupUnsubscribe {
        /// Channel (stream) name.
        channel: String,
        /// Consumer group name.
        group: String,
    },
    /// Acknowledge entries delivered by consumer group `group` of `channel`.
    Ack {
        /// Channel (stream) name.
        channel: String,
        /// Consumer group name.
        group: String,
        /// Offsets to acknowledge: all or none.
        #[serde(serialize_with = "crate::request::display_all")]
        offsets: Vec<StreamId>,
    },
    /// Append an entry to `channel`.
    Publish {
        /// Channel (stream) name.
        channel: String,
        /// Field/value pairs, flattened: always an even number of strings.
        fields: Vec<String>,
        /// Approximate cap on the stream length (`MAXLEN ~`), overriding the server's default.
        #[serde(skip_serializing_if = "Option::is_none")]
        maxlen: Option<u64>,
        /// A key the client made for this publish: a retry with the same key (within the
        /// server's window) is not stored again and is answered with the first one's offset.
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// Liveness check; answered with an empty `ok`.
    Ping,
    /// Authenticate the connection with a token (again before it expires, to refresh it).
    Auth {
        /// The token (a JWT).
        token: String,
    },
}

impl Op {
    /// The channel the op is about, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Op::Subscribe { channel, .. }
            | Op::GroupSubscribe { channel, .. }
            | Op::Unsubscribe { channel }
            | Op::GroupUnsubscribe { channel, .. }
            | Op::Ack { channel, .. }
            | Op::Publish { channel, .. } => Some(channel),
            Op::Ping | Op::Auth { .. } => None,
        }
    }
}

fn display<S: serde::Serializer, T: std::fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn display_all<S: serde::Serializer, T: std::fmt::Display>(values: &[T], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(values.iter().map(ToString::to_string))
}

/// A request that could not be accepted, with the `id` to answer (`None` if it was not found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The request's `id`, when the frame was parsed far enough to find a valid one.
    pub id: Option<u64>,
    /// What was wrong.
    pub error: ProtocolError,
}

impl Request {
    /// Serialises the request to its JSON text (used by clients).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("requests always serialise")
    }

    /// Parses and validates one text frame.
    ///
    /// # Errors
    /// Returns the stable error to reply with, and the request's `id` when it could be read.
    pub fn parse(text: &str, limits: &Limits) -> Result<Request, RequestError> {
        let value: Value = serde_json::from_str(text).map_err(|e| RequestError {
            id: None,
            error: ProtocolError::bad_request(format!("frame is not valid JSON: {e}")),
        })?;
        let Value::Object(object) = value else {
            return Err(RequestError { id: None, error: ProtocolError::bad_request("frame must be a JSON object") });
        };
        let id = parse_id(&object).map_err(|error| RequestError { id: None, error })?;
        let op = parse_op(&object, limits).map_err(|error| RequestError { id: Some(id), error })?;
        Ok(Request { id, op })
    }
}

fn parse_id(object: &Map<String, Value>) -> Result<u64, ProtocolError> {
    match object.get("id") {
        None => Err(ProtocolError::bad_request("missing \"id\": every request needs an integer id")),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|id| *id <= MAX_ID)
            .ok_or_else(|| ProtocolError::bad_request("\"id\" must be an integer from 0 to 2^53-1")),
        Some(_) => Err(ProtocolError::bad_request("\"id\" must be an integer from 0 to 2^53-1")),
    }
}

fn parse_op(object: &Map<String, Value>, limits: &Limits) -> Result<Op, ProtocolError> {
    let op = match object.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(ProtocolError::bad_request("\"op\" must be a string")),
        None => return Err(ProtocolError::bad_request("missing \"op\"")),
    };
    match op {
        "subscribe" => {
            let channel = channel(object, limits)?;
            let start = match object.get("offset") {
                None | Some(Value::Null) => Start::Latest,
                Some(Value::String(s)) => s.parse().map_err(|e| ProtocolError::bad_request(format!("{e}")))?,
                Some(_) => {
                    return Err(ProtocolError::bad_request(
                        "\"offset\" must be a string such as \"$\", \"0\" or \"1518951480106-0\"",
                    ));
                }
            };
            match (optional_name(object, "group", limits)?, optional_name(object, "consumer", limits)?) {
                (None, None) => Ok(Op::Subscribe { channel, start }),
                (Some(group), Some(consumer)) => Ok(Op::GroupSubscribe { channel, group, consumer, start }),
                _ => Err(ProtocolError::bad_request("a group subscription needs both \"group\" and \"consumer\"")),
            }
        }
        "unsubscribe" => {
            let channel = channel(object, limits)?;
            match optional_name(object, "group", limits)? {
                None => Ok(Op::Unsubscribe { channel }),
                Some(group) => Ok(Op::GroupUnsubscribe { channel, group }),
            }
        }
        "ack" => {
            let channel = channel(object, limits)?;
            let group = optional_name(object, "group", limits)?
                .ok_or_else(|| ProtocolError::bad_request("missing \"group\""))?;
            let Some(Value::Array(items)) = object.get("offsets") else {
                return Err(ProtocolError::bad_request("\"offsets\" must be an array of offsets"));
            };
            if items.is_empty() || items.len() > limits.max_offsets {
                return Err(ProtocolError::bad_request(format!(
                    "\"offsets\" must hold 1 to {} offsets",
                    limits.max_offsets
                )));
            }
            let offsets = items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.parse::<StreamId>().map_err(|e| ProtocolError::bad_request(format!("{e}"))),
                    _ => Err(ProtocolError::bad_request("offsets must be strings such as \"1518951480106-0\"")),
                })
                .collect::<Result<_, _>>()?;
            Ok(Op::Ack { channel, group, offsets })
        }
        "publish" => {
            let channel = channel(object, limits)?;
            let fields = fields(object, limits)?;
            // Redis reads MAXLEN as a signed 64-bit integer.
            let out_of_range =
                || ProtocolError::bad_request(format!("\"maxlen\" must be an integer from 1 to {MAX_MAXLEN}"));
            let maxlen = match object.get("maxlen") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(m) if (1..=MAX_MAXLEN).contains(&m) => Some(m),
                    _ => return Err(out_of_range()),
                },
                Some(_) => return Err(out_of_range()),
            };
            let idempotency_key = match object.get("idempotency_key") {
                None | Some(Value::Null) => None,
                Some(Value::String(key)) if is_idempotency_key(key) => Some(key.clone()),
                Some(_) => {
                    return Err(ProtocolError::bad_request(format!(
                        "\"idempotency_key\" must be a string of 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
                    )));
                }
            };
            Ok(Op::Publish { channel, fields, maxlen, idempotency_key })
        }
        "ping" => Ok(Op::Ping),
        "auth" => match object.get("token") {
            Some(Value::String(token)) if !token.is_empty() => Ok(Op::Auth { token: token.clone() }),
            _ => Err(ProtocolError::bad_request("\"token\" must be a non-empty string")),
        },
        other => Err(ProtocolError::new(ErrorCode::UnknownOp, format!("unknown op {other:?}"))),
    }
}

/// Longest `idempotency_key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 64;

/// 1 to [`MAX_IDEMPOTENCY_KEY`] printable ASCII characters (no spaces).
pub fn is_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn channel(object: &Map<String, Value>, limits: &Limits) -> Result<String, ProtocolError> {
    match object.get("channel") {
        Some(Value::String(name)) => {
            validate_channel(name, limits.max_channel_len)?;
            Ok(name.clone())
        }
        Some(_) => Err(ProtocolError::bad_request("\"channel\" must be a string")),
        None => Err(ProtocolError::bad_request("missing \"channel\"")),
    }
}

/// A group or consumer name, if present: the same rules as channel names.
fn optional_name(object: &Map<String, Value>, key: &str, limits: &Limits) -> Result<Option<String>, ProtocolError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => {
            validate_name(key, name, limits.max_channel_len)?;
            Ok(Some(name.clone()))
        }
        Some(_) => Err(ProtocolError::bad_request(format!("\"{key}\" must be a string"))),
    }
}

/// True for the characters a channel name may contain besides ASCII letters and digits.
const CHANNEL_PUNCTUATION: &str = "-_.:/@#{}+=";

/// Checks a channel name: 1 to `max_len` bytes of ASCII letters, digits and `-_.:/@#{}+=`.
///
/// # Errors
/// A `bad_request` error saying which rule the name breaks.
pub fn validate_channel(name: &str, max_len: usize) -> Result<(), ProtocolError> {
    validate_name("channel", name, max_len)
}

/// Checks a channel, group or consumer name (`what`) against the channel name rules.
///
/// # Errors
/// A `bad_request` error saying which rule the name breaks.
pub fn validate_name(what: &str, name: &str, max_len: usize) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(ProtocolError::bad_request(format!("{what} name must not be empty")));
    }
    if name.len() > max_len {
        return Err(ProtocolError::bad_request(format!(
            "{what} name is {} bytes long, the limit is {max_len}",
            name.len()
        )));
    }
    if let Some(bad) = name.chars().find(|c| !c.is_ascii_alphanumeric() && !CHANNEL_PUNCTUATION.contains(*c)) {
        return Err(ProtocolError::bad_request(format!(
            "{what} name contains '{}' (U+{:04X}); allowed are ASCII letters, digits and {CHANNEL_PUNCTUATION}",
            bad.escape_default(),
            u32::from(bad)
        )));
    }
    Ok(())
}

fn fields(object: &Map<String, Value>, limits: &Limits) -> Result<Vec<String>, ProtocolError> {
    let Some(Value::Array(items)) = object.get("fields") else {
        return Err(ProtocolError::bad_request("\"fields\" must be an array of strings [field, value, …]"));
    };
    if items.is_empty() {
        return Err(ProtocolError::bad_request("\"fields\" must hold at least one field/value pair"));
    }
    if items.len() % 2 != 0 {
        return Err(ProtocolError::bad_request("fields must hold an even number of strings"));
    }
    if items.len() > limits.max_fields {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!("fields holds {} strings, the limit is {}", items.len(), limits.max_fields),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            _ => Err(ProtocolError::bad_request(format!("fields[{i}] must be a string (encode objects first)"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamId;

    fn parse(text: &str) -> Result<Request, RequestError> {
        Request::parse(text, &Limits::default())
    }

    fn error(text: &str) -> (Option<u64>, ErrorCode, String) {
        let e = parse(text).expect_err(text);
        (e.id, e.error.code, e.error.message)
    }

    #[test]
    fn parses_the_documented_requests() {
        let sub = parse(r#"{"id":1,"op":"subscribe","channel":"chat","offset":"$"}"#).unwrap();
        assert_eq!(sub.op, Op::Subscribe { channel: "chat".into(), start: Start::Latest });
        let sub = parse(r#"{"id":1,"op":"subscribe","channel":"chat","offset":"5-1"}"#).unwrap();
        assert_eq!(sub.op, Op::Subscribe { channel: "chat".into(), start: Start::After(StreamId::new(5, 1)) });
        let pubr = parse(r#"{"id":2,"op":"publish","channel":"chat","fields":["a","b"],"maxlen":5000}"#).unwrap();
        assert_eq!(
            pubr.op,
            Op::Publish {
                channel: "chat".into(),
                fields: vec!["a".into(), "b".into()],
                maxlen: Some(5000),
                idempotency_key: None
            }
        );
        assert_eq!(
            parse(r#"{"id":3,"op":"unsubscribe","channel":"chat"}"#).unwrap().op,
            Op::Unsubscribe { channel: "chat".into() }
        );
        assert_eq!(parse(r#"{"id":4,"op":"ping"}"#).unwrap().op, Op::Ping);
    }

    #[test]
    fn offset_defaults_to_latest() {
        let sub = parse(r#"{"id":1,"op":"subscribe","channel":"c"}"#).unwrap();
        assert_eq!(sub.op, Op::Subscribe { channel: "c".into(), start: Start::Latest });
    }

    #[test]
    fn requests_round_trip_through_json() {
        for text in [
            r#"{"id":1,"op":"subscribe","channel":"chat","offset":"0-0"}"#,
            r#"{"id":2,"op":"publish","channel":"chat","fields":["a","b"]}"#,
            r#"{"id":2,"op":"publish","channel":"chat","fields":["a","b"],"maxlen":3}"#,
            r#"{"id":3,"op":"unsubscribe","channel":"chat"}"#,
        ] {
            let request = parse(text).unwrap();
            assert_eq!(request.to_json(), text);
        }
    }

    #[test]
    fn unparseable_frames_answer_with_null_id() {
        assert_eq!(error("{nope").0, None);
        assert_eq!(error("[1,2]").2, "frame must be a JSON object");
        assert_eq!(error(r#"{"op":"ping"}"#).0, None);
        assert_eq!(error(r#"{"id":"7","op":"ping"}"#).0, None);
        assert_eq!(error(r#"{"id":-1,"op":"ping"}"#).0, None);
        assert_eq!(error(r#"{"id":9007199254740992,"op":"ping"}"#).0, None);
    }

    #[test]
    fn bad_fields_keep_the_id() {
        assert_eq!(error(r#"{"id":5,"op":"fly"}"#), (Some(5), ErrorCode::UnknownOp, "unknown op \"fly\"".into()));
        assert_eq!(error(r#"{"id":5}"#).1, ErrorCode::BadRequest);
        assert_eq!(error(r#"{"id":5,"op":7}"#).1, ErrorCode::BadRequest);
        let odd = error(r#"{"id":6,"op":"publish","channel":"c","fields":["a"]}"#);
        assert_eq!(odd, (Some(6), ErrorCode::BadRequest, "fields must hold an even number of strings".into()));
        assert_eq!(error(r#"{"id":6,"op":"publish","channel":"c","fields":[]}"#).1, ErrorCode::BadRequest);
        assert_eq!(error(r#"{"id":6,"op":"publish","channel":"c","fields":"a"}"#).1, ErrorCode::BadRequest);
        assert!(error(r#"{"id":6,"op":"publish","channel":"c","fields":["a",{"x":1}]}"#).2.contains("fields[1]"));
        assert_eq!(
            error(r#"{"id":6,"op":"publish","channel":"c","fields":["a","b"],"maxlen":0}"#).1,
            ErrorCode::BadRequest
        );
        assert_eq!(
            error(r#"{"id":6,"op":"publish","channel":"c","fields":["a","b"],"maxlen":1.5}"#).1,
            ErrorCode::BadRequest
        );
        let huge = error(r#"{"id":6,"op":"publish","channel":"c","fields":["a","b"],"maxlen":18446744073709551615}"#);
        assert_eq!(huge.1, ErrorCode::BadRequest);
        assert!(huge.2.contains("from 1 to 9223372036854775807"), "{}", huge.2);
        assert!(error(r#"{"id":7,"op":"subscribe","channel":"c","offset":"x-1"}"#).2.contains("offset must be"));
        assert_eq!(error(r#"{"id":7,"op":"subscribe","channel":"c","offset":5}"#).1, ErrorCode::BadRequest);
        assert_eq!(error(r#"{"id":7,"op":"subscribe"}"#).2, "missing \"channel\"");
    }

    #[test]
    fn group_requests() {
        let sub = parse(r#"{"id":1,"op":"subscribe","channel":"c","group":"g","consumer":"w1","offset":"0"}"#).unwrap();
        assert_eq!(
            sub.op,
            Op::GroupSubscribe {
                channel: "c".into(),
                group: "g".into(),
                consumer: "w1".into(),
                start: Start::After(StreamId::ZERO)
            }
        );
        assert_eq!(
            sub.to_json(),
            r#"{"id":1,"op":"subscribe","channel":"c","group":"g","consumer":"w1","offset":"0-0"}"#
        );
        let ack = parse(r#"{"id":2,"op":"ack","channel":"c","group":"g","offsets":["1-1","2"]}"#).unwrap();
        assert_eq!(
            ack.op,
            Op::Ack { channel: "c".into(), group: "g".into(), offsets: vec![StreamId::new(1, 1), StreamId::new(2, 0)] }
        );
        assert_eq!(ack.to_json(), r#"{"id":2,"op":"ack","channel":"c","group":"g","offsets":["1-1","2-0"]}"#);
        let unsub = parse(r#"{"id":3,"op":"unsubscribe","channel":"c","group":"g"}"#).unwrap();
        assert_eq!(unsub.to_json(), r#"{"id":3,"op":"unsubscribe","channel":"c","group":"g"}"#);
        assert!(error(r#"{"id":4,"op":"subscribe","channel":"c","group":"g"}"#).2.contains("both"));
        assert!(
            error(&format!(
                r#"{{"id":4,"op":"subscribe","channel":"c","group":"g","consumer":"{}"}}"#,
                "w".repeat(300)
            ))
            .2
            .contains("consumer name is 300 bytes")
        );
        assert!(error(r#"{"id":5,"op":"ack","channel":"c","group":"g","offsets":[]}"#).2.contains("1 to"));
        assert!(error(r#"{"id":5,"op":"ack","channel":"c","group":"g","offsets":["x"]}"#).2.contains("offset must be"));
        assert!(error(r#"{"id":5,"op":"ack","channel":"c","offsets":["1-1"]}"#).2.contains("missing \"group\""));
    }

    #[test]
    fn too_many_fields_is_too_large() {
        let many: Vec<String> = (0..258).map(|i| format!("\"{i}\"")).collect();
        let text = format!(r#"{{"id":1,"op":"publish","channel":"c","fields":[{}]}}"#, many.join(","));
        assert_eq!(error(&text).1, ErrorCode::TooLarge);
    }

    #[test]
    fn channel_names_are_checked() {
        assert!(validate_channel("room:1/a-b_c.d@e#{tag}+=", 256).is_ok());
        assert!(validate_channel("", 256).unwrap_err().message.contains("empty"));
        assert!(validate_channel(&"x".repeat(257), 256).unwrap_err().message.contains("limit is 256"));
        assert!(validate_channel(&"x".repeat(256), 256).is_ok());
        for bad in ["a b", "a\nb", "café", "a*b", "a\"b"] {
            assert!(validate_channel(bad, 256).is_err(), "{bad:?}");
        }
    }
}
