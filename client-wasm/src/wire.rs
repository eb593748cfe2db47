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
        /// Makes a retry safe: the server stores one entry per key.
        idempotency_key: String,
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
        Request::Publish { channel, fields, idempotency_key } => {
            out.push_str("\"publish\"");
            string(&mut out, "channel", channel);
            out.push_str(",\"fields\":");
            Json::Array(fields.iter().cloned().map(Json::String).collect()).write(&mut out);
            string(&mut out, "idempotency_key", idempotency_key);
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
    /// `subscribe`: history after the offset was trimmed before it could be read, or the offset
    /// is ahead of the stream.
    pub truncated: bool,
    /// `subscribe` with `truncated`: `"ahead"` when the stream lost what the client had.
    pub ahead: bool,
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
        /// The well-formed entries, in the order received.
        messages: Vec<Entry>,
        /// Entries after the last delivered one were trimmed before delivery, or (`ahead`) the
        /// stream lost entries already delivered.
        truncated: bool,
        /// With `truncated`: the stream lost entries already delivered; what follows continues
        /// after its new end, maybe below offsets given before.
        ahead: bool,
        /// A broadcast's value, as JSON text.
        broadcast: Option<String>,
        /// Why each malformed entry was left out (its neighbours are kept).
        rejected: Vec<String>,
    },
    /// Deliveries of a consumer group, each with how many times it was delivered.
    GroupPush {
        /// The channel.
        channel: String,
        /// The group.
        group: String,
        /// The well-formed entries and their delivery counts.
        messages: Vec<(Entry, u64)>,
        /// Why each malformed entry was left out.
        rejected: Vec<String>,
    },
}

/// A frame that could not be read, and the id of the request it answers when that much was
/// readable (so that the call can be settled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The request id, if the frame had a readable one.
    pub id: Option<u64>,
    /// What is wrong with the frame.
    pub reason: &'static str,
}

/// Decodes a server frame.
///
/// # Errors
/// What is wrong with the frame, with its request id if that was readable.
pub fn decode(text: &str) -> Result<Frame, Unreadable> {
    let unreadable = |reason| Unreadable { id: None, reason };
    let value = json::parse(text).map_err(|e| unreadable(e.0))?;
    if !matches!(value, Json::Object(_)) {
        return Err(unreadable("not an object"));
    }
    let with_id = |reason| Unreadable { id: id(&value).ok().flatten(), reason };
    match (value.get("ok"), value.get("error"), value.get("channel")) {
        (_, Some(error), _) => Ok(Frame::Reply {
            id: id(&value).map_err(unreadable)?,
            outcome: Err(server_error(error).map_err(with_id)?),
        }),
        (Some(ok), None, _) => {
            Ok(Frame::Reply { id: id(&value).map_err(unreadable)?, outcome: Ok(reply_body(ok).map_err(with_id)?) })
        }
        (None, None, Some(channel)) => {
            push(&value, channel.as_str().ok_or("channel is not a string").map_err(unreadable)?).map_err(unreadable)
        }
        (None, None, None) => Err(unreadable("neither a reply nor a push")),
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
        ahead: ok.get("reason").and_then(Json::as_str) == Some("ahead"),
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
    let mut rejected = Vec::new();
    let mut good = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        match checked_entry(item) {
            Ok(entry) => good.push((entry, item)),
            Err(reason) => rejected.push(format!("entry #{} of the push: {reason}", i + 1)),
        }
    }
    if let Some(group) = value.get("group") {
        let group = group.as_str().ok_or("group is not a string")?.to_owned();
        let messages = good
            .into_iter()
            .map(|(entry, item)| (entry, item.get("deliveries").and_then(Json::as_u64).unwrap_or(1)))
            .collect();
        return Ok(Frame::GroupPush { channel: channel.to_owned(), group, messages, rejected });
    }
    Ok(Frame::Push {
        channel: channel.to_owned(),
        messages: good.into_iter().map(|(entry, _)| entry).collect(),
        truncated: value.get("truncated").and_then(Json::as_bool).unwrap_or(false),
        ahead: value.get("reason").and_then(Json::as_str) == Some("ahead"),
        broadcast: value.get("broadcast").map(Json::to_text),
        rejected,
    })
}

/// One pushed entry: an offset and a non-empty, even list of string fields.
fn checked_entry(value: &Json) -> Result<Entry, String> {
    let offset = match value.get("offset").and_then(Json::as_str) {
        Some(text) => text.parse::<StreamId>().map_err(|_| format!("offset \"{text}\" is not an offset"))?,
        None => return Err("no offset".into()),
    };
    let list = value.get("fields").and_then(Json::as_array).ok_or_else(|| format!("{offset}: no fields list"))?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(format!("{offset}: {} fields, not field/value pairs", list.len()));
    }
    let fields = list
        .iter()
        .map(|f| f.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{offset}: a field is not a string"))?;
    Ok(Entry { offset, fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redistribute_protocol::frame::{GroupEntry, GroupPush, OkBody, Push, Reply, Truncation};
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
            Request::Publish { channel, fields, idempotency_key } => {
                Op::Publish { channel, fields, maxlen: None, idempotency_key: Some(idempotency_key) }
            }
            Request::Auth { token } => Op::Auth { token },
        }
    }

    #[test]
    fn requests_match_the_protocol_crate() {
        let requests = [
            Request::Subscribe { channel: "a:b".into(), start: Start::Latest },
            Request::Subscribe { channel: "c".into(), start: Start::After(StreamId::new(5, 1)) },
            Request::Unsubscribe { channel: "c".into() },
            Request::Publish {
                channel: "c".into(),
                fields: vec!["k\"\n".into(), "{\"x\":1} é".into()],
                idempotency_key: "a1-1".into(),
            },
            Request::Publish {
                channel: "c".into(),
                fields: vec!["k".into(), "v".into()],
                idempotency_key: "a1-2".into(),
            },
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
                    OkBody {
                        offset: Some(offset),
                        truncated: true,
                        reason: Some(redistribute_protocol::frame::Truncation::Ahead),
                        ..OkBody::default()
                    },
                ),
                Ok(ReplyBody { offset: Some(offset), truncated: true, ahead: true, ..ReplyBody::default() }),
            ),
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
            Ok(Frame::Push {
                channel: "chat".into(),
                messages: entries.to_vec(),
                truncated: false,
                ahead: false,
                broadcast: None,
                rejected: vec![]
            })
        );
        for (reason, ahead) in [(Truncation::Trimmed, false), (Truncation::Ahead, true)] {
            let lost = Push {
                channel: Cow::Borrowed("chat"),
                messages: Cow::Borrowed(&[]),
                truncated: true,
                reason: Some(reason),
                broadcast: None,
            };
            assert_eq!(
                push(lost),
                Ok(Frame::Push {
                    channel: "chat".into(),
                    messages: vec![],
                    truncated: true,
                    ahead,
                    broadcast: None,
                    rejected: vec![]
                })
            );
        }
        let broadcast = Push {
            channel: Cow::Borrowed("chat"),
            messages: Cow::Borrowed(&[]),
            truncated: false,
            reason: None,
            broadcast: Some(serde_json::json!({"typing": "ann"})),
        };
        assert_eq!(
            push(broadcast),
            Ok(Frame::Push {
                channel: "chat".into(),
                messages: vec![],
                truncated: false,
                ahead: false,
                broadcast: Some(r#"{"typing":"ann"}"#.into()),
                rejected: vec![]
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
            Ok(Frame::GroupPush {
                channel: "jobs".into(),
                group: "workers".into(),
                messages: vec![(expected, 2)],
                rejected: vec![]
            })
        );
    }

    #[test]
    fn a_malformed_entry_is_left_out_and_its_neighbours_kept() {
        let text = r#"{"channel":"c","messages":[
            {"offset":"1-0","fields":["a","1"]},
            {"offset":"nope","fields":["a","1"]},
            {"offset":"2-0","fields":["a"]},
            {"offset":"3-0","fields":[]},
            {"offset":"4-0","fields":["a",5]},
            {"offset":"5-0"},
            {"offset":"6-0","fields":["a","6"]}]}"#;
        let Ok(Frame::Push { messages, rejected, .. }) = decode(text) else { panic!("a push") };
        let offsets: Vec<StreamId> = messages.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [StreamId::new(1, 0), StreamId::new(6, 0)]);
        assert_eq!(rejected.len(), 5, "{rejected:?}");
        assert!(rejected[0].contains("\"nope\" is not an offset"));
        assert!(rejected[1].contains("not field/value pairs"));
    }

    #[test]
    fn an_unreadable_reply_still_names_its_request() {
        assert_eq!(
            decode(r#"{"id":7,"ok":{"offset":"far"}}"#),
            Err(Unreadable { id: Some(7), reason: "bad offset in a reply" })
        );
        assert_eq!(decode(r#"{"id":7,"error":{}}"#).unwrap_err().id, Some(7));
        assert_eq!(decode("{").unwrap_err().id, None);
    }

    #[test]
    fn rejects_what_is_not_a_frame() {
        for bad in ["", "[]", "{}", r#"{"id":"x","ok":{}}"#, r#"{"channel":5}"#, r#"{"channel":"c","messages":{}}"#] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }
}
