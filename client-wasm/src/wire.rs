//! Protocol v1 as the client speaks it: the requests it sends, encoded to text, and every frame
//! the server sends, decoded. Pure functions over strings, so they test without a socket; the
//! tests check both directions against the protocol crate's serde types, which the server uses.

use crate::json::{self, Json};
use redistribute_protocol::{Entry, Start, StreamId};
use std::fmt::Write as _;

/// A request the client sends. Exhaustive: every op the client uses has its own encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Follow a channel from `start`.
    Subscribe {
        /// The channel.
        channel: String,
        /// Where to start.
        start: Start,
    },
    /// Stop following a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// Join consumer group `group` of `channel` as `consumer`.
    JoinGroup {
        /// The channel.
        channel: String,
        /// The group.
        group: String,
        /// This member's name.
        consumer: String,
        /// Where a newly created group starts.
        start: Start,
    },
    /// Leave a consumer group.
    LeaveGroup {
        /// The channel.
        channel: String,
        /// The group.
        group: String,
    },
    /// Acknowledge deliveries of a group.
    Ack {
        /// The channel.
        channel: String,
        /// The group.
        group: String,
        /// The offsets acknowledged.
        offsets: Vec<StreamId>,
    },
    /// Append an entry.
    Publish {
        /// The channel.
        channel: String,
        /// Field/value pairs, flattened.
        fields: Vec<String>,
    },
    /// Authenticate (or refresh) with a token.
    Auth {
        /// The token.
        token: String,
    },
}

/// Encodes `request` with `id` as a protocol v1 text frame.
pub fn encode(id: u64, request: &Request) -> String {
    let mut out = format!("{{\"id\":{id},\"op\":");
    let string = |out: &mut String, key: &str, value: &str| {
        let _ = write!(out, ",\"{key}\":");
        json::write_str(out, value);
    };
    match request {
        Request::Subscribe { channel, start } => {
            out.push_str("\"subscribe\"");
            string(&mut out, "channel", channel);
            let _ = write!(out, ",\"offset\":\"{start}\"");
        }
        Request::Unsubscribe { channel } => {
            out.push_str("\"unsubscribe\"");
            string(&mut out, "channel", channel);
        }
        Request::JoinGroup { channel, group, consumer, start } => {
            out.push_str("\"subscribe\"");
            string(&mut out, "channel", channel);
            string(&mut out, "group", group);
            string(&mut out, "consumer", consumer);
            let _ = write!(out, ",\"offset\":\"{start}\"");
        }
        Request::LeaveGroup { channel, group } => {
            out.push_str("\"unsubscribe\"");
            string(&mut out, "channel", channel);
            string(&mut out, "group", group);
        }
        Request::Ack { channel, group, offsets } => {
            out.push_str("\"ack\"");
            string(&mut out, "channel", channel);
            string(&mut out, "group", group);
            out.push_str(",\"offsets\":[");
            for (i, offset) in offsets.iter().enumerate() {
                let _ = write!(out, "{}\"{offset}\"", if i > 0 { "," } else { "" });
            }
            out.push(']');
        }
        Request::Publish { channel, fields } => {
            out.push_str("\"publish\"");
            string(&mut out, "channel", channel);
            out.push_str(",\"fields\":");
            Json::Array(fields.iter().cloned().map(Json::String).collect()).write(&mut out);
        }
        Request::Auth { token } => {
            out.push_str("\"auth\"");
            string(&mut out, "token", token);
        }
    }
    out.push('}');
    out
}

/// The payload of a successful reply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplyBody {
    /// `subscribe`: the offset the subscription starts after; `publish`: the new entry's.
    pub offset: Option<StreamId>,
    /// `subscribe`: history after the offset was trimmed before it could be read.
    pub truncated: bool,
    /// `ack`: how many entries were acknowledged.
    pub acked: Option<u64>,
    /// `auth`: the token's user.
    pub user: Option<String>,
    /// `auth`: when the token expires, in Unix seconds.
    pub expires: Option<u64>,
}

/// An error reply's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The stable code (`bad_request`, `forbidden`, …).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The answer to request `id` (`None`: the server could not read a request's id).
    Reply {
        /// The request's id.
        id: Option<u64>,
        /// Its outcome.
        outcome: Result<ReplyBody, ServerError>,
    },
    /// Entries of a subscribed channel, a loss report, or a transient broadcast.
    Push {
        /// The channel.
        channel: String,
        /// New entries, in order.
        messages: Vec<Entry>,
        /// Entries after the last delivered one were trimmed before delivery.
        truncated: bool,
        /// A broadcast's value, as JSON text.
        broadcast: Option<String>,
    },
    /// Deliveries of a consumer group, each with how many times it was delivered.
    GroupPush {
        /// The channel.
        channel: String,
        /// The group.
        group: String,
        /// The entries and their delivery counts.
        messages: Vec<(Entry, u64)>,
    },
}

/// Decodes a server frame; the error says what is wrong with it.
pub fn decode(text: &str) -> Result<Frame, &'static str> {
    let value = json::parse(text).map_err(|e| e.0)?;
    if !matches!(value, Json::Object(_)) {
        return Err("not an object");
    }
    match (value.get("ok"), value.get("error"), value.get("channel")) {
        (_, Some(error), _) => Ok(Frame::Reply { id: id(&value)?, outcome: Err(server_error(error)?) }),
        (Some(ok), None, _) => Ok(Frame::Reply { id: id(&value)?, outcome: Ok(reply_body(ok)?) }),
        (None, None, Some(channel)) => push(&value, channel.as_str().ok_or("channel is not a string")?),
        (None, None, None) => Err("neither a reply nor a push"),
    }
}

fn id(value: &Json) -> Result<Option<u64>, &'static str> {
    match value.get("id") {
        None | Some(Json::Null) => Ok(None),
        Some(id) => id.as_u64().map(Some).ok_or("id is not a number"),
    }
}

fn server_error(error: &Json) -> Result<ServerError, &'static str> {
    Ok(ServerError {
        code: error.get("code").and_then(Json::as_str).ok_or("error without a code")?.to_owned(),
        message: error.get("message").and_then(Json::as_str).unwrap_or_default().to_owned(),
    })
}

fn reply_body(ok: &Json) -> Result<ReplyBody, &'static str> {
    Ok(ReplyBody {
        offset: match ok.get("offset").and_then(Json::as_str) {
            Some(text) => Some(text.parse().map_err(|_| "bad offset in a reply")?),
            None => None,
        },
        truncated: ok.get("truncated").and_then(Json::as_bool).unwrap_or(false),
        acked: ok.get("acked").and_then(Json::as_u64),
        user: ok.get("user").and_then(Json::as_str).map(str::to_owned),
        expires: ok.get("expires").and_then(Json::as_u64),
    })
}

fn push(value: &Json, channel: &str) -> Result<Frame, &'static str> {
    let list = match value.get("messages") {
        Some(list) => list.as_array().ok_or("messages is not an array")?,
        None => &[],
    };
    let messages: Vec<Entry> = list.iter().map(json::entry).collect::<Option<_>>().ok_or("bad message entry")?;
    if let Some(group) = value.get("group") {
        let group = group.as_str().ok_or("group is not a string")?.to_owned();
        let counts = list.iter().map(|m| m.get("deliveries").and_then(Json::as_u64).unwrap_or(1));
        let messages = messages.into_iter().zip(counts).collect();
        return Ok(Frame::GroupPush { channel: channel.to_owned(), group, messages });
    }
    Ok(Frame::Push {
        channel: channel.to_owned(),
        messages,
        truncated: value.get("truncated").and_then(Json::as_bool).unwrap_or(false),
        broadcast: value.get("broadcast").map(Json::to_text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redistribute_protocol::frame::{GroupEntry, GroupPush, OkBody, Push, Reply};
    use redistribute_protocol::{ErrorCode, Op, ProtocolError};
    use std::borrow::Cow;

    /// The protocol crate's op for a client request: what the server will parse it as.
    fn op(request: &Request) -> Op {
        match request.clone() {
            Request::Subscribe { channel, start } => Op::Subscribe { channel, start },
            Request::Unsubscribe { channel } => Op::Unsubscribe { channel },
            Request::JoinGroup { channel, group, consumer, start } => {
                Op::GroupSubscribe { channel, group, consumer, start }
            }
            Request::LeaveGroup { channel, group } => Op::GroupUnsubscribe { channel, group },
            Request::Ack { channel, group, offsets } => Op::Ack { channel, group, offsets },
            Request::Publish { channel, fields } => Op::Publish { channel, fields, maxlen: None },
            Request::Auth { token } => Op::Auth { token },
        }
    }

    #[test]
    fn requests_match_the_protocol_crate() {
        let requests = [
            Request::Subscribe { channel: "a:b".into(), start: Start::Latest },
            Request::Subscribe { channel: "c".into(), start: Start::After(StreamId::new(5, 1)) },
            Request::Unsubscribe { channel: "c".into() },
            Request::Publish { channel: "c".into(), fields: vec!["k\"\n".into(), "{\"x\":1} é".into()] },
            Request::Publish { channel: "c".into(), fields: vec!["k".into(), "v".into()] },
            Request::JoinGroup {
                channel: "c".into(),
                group: "g".into(),
                consumer: "w\"1".into(),
                start: Start::Latest,
            },
            Request::LeaveGroup { channel: "c".into(), group: "g".into() },
            Request::Ack {
                channel: "c".into(),
                group: "g".into(),
                offsets: vec![StreamId::new(1, 2), StreamId::new(3, 0)],
            },
            Request::Auth { token: "eyJ.a\"b.c".into() },
        ];
        for request in &requests {
            let expected = redistribute_protocol::Request { id: 42, op: op(request) }.to_json();
            assert_eq!(encode(42, request), expected);
        }
    }

    #[test]
    fn decodes_every_reply_the_server_writes() {
        let offset = StreamId::new(1518951480106, 0);
        let cases = [
            (
                Reply::ok(Some(1), OkBody { offset: Some(offset), ..OkBody::default() }),
                Ok(ReplyBody { offset: Some(offset), ..ReplyBody::default() }),
            ),
            (
                Reply::ok(Some(1), OkBody { offset: Some(offset), truncated: true, ..OkBody::default() }),
                Ok(ReplyBody { offset: Some(offset), truncated: true, ..ReplyBody::default() }),
            ),
            (
                Reply::ok(Some(1), OkBody { acked: Some(3), ..OkBody::default() }),
                Ok(ReplyBody { acked: Some(3), ..ReplyBody::default() }),
            ),
            (Reply::ok(Some(1), OkBody::default()), Ok(ReplyBody::default())),
            (
                Reply::ok(
                    Some(1),
                    OkBody { user: Some("ann".into()), expires: Some(1_800_000_000), ..OkBody::default() },
                ),
                Ok(ReplyBody { user: Some("ann".into()), expires: Some(1_800_000_000), ..ReplyBody::default() }),
            ),
            (
                Reply::ok(
                    Some(1),
                    OkBody { user: Some("ann".into()), expires: Some(1_800_000_000), ..OkBody::default() },
                ),
                Ok(ReplyBody { user: Some("ann".into()), expires: Some(1_800_000_000), ..ReplyBody::default() }),
            ),
            (
                Reply::error(Some(1), ProtocolError::new(ErrorCode::Forbidden, "no")),
                Err(ServerError { code: "forbidden".into(), message: "no".into() }),
            ),
        ];
        for (reply, outcome) in cases {
            assert_eq!(decode(&reply.to_json()), Ok(Frame::Reply { id: Some(1), outcome }));
        }
        let unreadable = Reply::error(None, ProtocolError::bad_request("bad JSON"));
        assert!(matches!(decode(&unreadable.to_json()), Ok(Frame::Reply { id: None, outcome: Err(_) })));
    }

    #[test]
    fn decodes_every_push_the_server_writes() {
        let entries = [Entry { offset: StreamId::new(7, 1), fields: vec!["k".into(), "{\"a\":1}".into()] }];
        let push = |frame: Push<'_>| decode(&frame.to_json());
        assert_eq!(
            push(Push::messages("chat", &entries)),
            Ok(Frame::Push { channel: "chat".into(), messages: entries.to_vec(), truncated: false, broadcast: None })
        );
        let lost =
            Push { channel: Cow::Borrowed("chat"), messages: Cow::Borrowed(&[]), truncated: true, broadcast: None };
        assert_eq!(
            push(lost),
            Ok(Frame::Push { channel: "chat".into(), messages: vec![], truncated: true, broadcast: None })
        );
        let broadcast = Push {
            channel: Cow::Borrowed("chat"),
            messages: Cow::Borrowed(&[]),
            truncated: false,
            broadcast: Some(serde_json::json!({"typing": "ann"})),
        };
        assert_eq!(
            push(broadcast),
            Ok(Frame::Push {
                channel: "chat".into(),
                messages: vec![],
                truncated: false,
                broadcast: Some(r#"{"typing":"ann"}"#.into())
            })
        );
        let group = GroupPush {
            channel: Cow::Borrowed("jobs"),
            group: Cow::Borrowed("workers"),
            messages: vec![GroupEntry {
                offset: StreamId::new(9, 0),
                fields: vec!["k".into(), "v".into()],
                deliveries: 2,
            }],
        };
        let expected = Entry { offset: StreamId::new(9, 0), fields: vec!["k".into(), "v".into()] };
        assert_eq!(
            decode(&serde_json::to_string(&group).unwrap()),
            Ok(Frame::GroupPush { channel: "jobs".into(), group: "workers".into(), messages: vec![(expected, 2)] })
        );
    }

    #[test]
    fn rejects_what_is_not_a_frame() {
        for bad in ["", "[]", "{}", r#"{"id":"x","ok":{}}"#, r#"{"channel":5}"#, r#"{"channel":"c","messages":{}}"#] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}
