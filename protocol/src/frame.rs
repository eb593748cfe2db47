//! Frames the server sends: [`Reply`] (answers a request, carries its `id`) and [`Push`] (stream
//! entries for a subscribed channel, no `id`).

use crate::{ErrorCode, ProtocolError, StreamId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

/// One stream entry as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's stream ID: its position, usable as a resume point.
    pub offset: StreamId,
    /// The field/value list in stored order: `[field1, value1, field2, value2, …]`.
    pub fields: Vec<String>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's `id`; `None` (JSON `null`) when the frame could not be parsed far enough.
    pub id: Option<u64>,
    /// Success payload or error.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Either `"ok": {…}` or `"error": {…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request succeeded.
    Ok(OkBody),
    /// The request failed; nothing was changed.
    Error(ErrorBody),
}

/// The payload of a successful reply. Which fields are present depends on the op.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkBody {
    /// `subscribe`: the concrete ID the subscription starts after (`$` resolved).
    /// `publish`: the new entry's ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<StreamId>,
    /// `subscribe`: entries after the requested offset were trimmed or deleted before delivery,
    /// or the offset is ahead of the stream (see `reason`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// `subscribe` with `truncated`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Truncation>,
    /// `publish` with an `idempotency_key` seen before: nothing was stored, `offset` is the
    /// first publish's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
    /// `ack`: how many entries were acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    /// `auth`: the user the token names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `auth`: when the token expires, in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// Why a subscription is `truncated` (its `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Entries after the offset were trimmed or deleted before they could be delivered.
    Trimmed,
    /// The offset is ahead of the stream's last entry, so the stream lost entries the client had
    /// (storage restarted without persistence, a failover that lost writes, or an offset the
    /// stream never had); the subscription starts at the stream's end.
    Ahead,
}

/// The payload of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// `rate_limited`: milliseconds after which a retry can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Reply {
    /// A success reply.
    pub fn ok(id: Option<u64>, body: OkBody) -> Self {
        Reply { id, outcome: Outcome::Ok(body) }
    }

    /// An error reply.
    pub fn error(id: Option<u64>, error: ProtocolError) -> Self {
        Reply {
            id,
            outcome: Outcome::Error(ErrorBody {
                code: error.code,
                message: error.message,
                retry_after_ms: error.retry_after_ms,
            }),
        }
    }

    /// Serialises the reply to its JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("replies always serialise")
    }
}

/// A push: stream entries (or a broadcast) for one subscribed channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push<'a> {
    /// The channel the entries belong to.
    pub channel: Cow<'a, str>,
    /// Entries in stream order, each after the previous push's last entry.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub messages: Cow<'a, [Entry]>,
    /// Entries between the previous push (or the subscribe reply) and this one were trimmed or
    /// deleted before they could be delivered, or (`reason: "ahead"`) the stream lost entries
    /// already delivered.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// With `truncated`: `"trimmed"`, or `"ahead"` when the stream lost entries this subscription
    /// was already given (a failover that lost writes, a storage restarted without persistence):
    /// what follows continues after the stream's new end, whose offsets may be below ones given
    /// before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Truncation>,
    /// A transient message sent with `broadcast` by a server: not stored, no offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<serde_json::Value>,
}

impl<'a> Push<'a> {
    /// A push of stream entries.
    pub fn messages(channel: &'a str, messages: &'a [Entry]) -> Self {
        Push {
            channel: Cow::Borrowed(channel),
            messages: Cow::Borrowed(messages),
            truncated: false,
            reason: None,
            broadcast: None,
        }
    }

    /// Serialises the push to its JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("pushes always serialise")
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::ptr_arg)] // serde's skip_serializing_if passes the field as it is
fn is_empty(entries: &Cow<'_, [Entry]>) -> bool {
    entries.is_empty()
}

/// An entry delivered to a consumer group member, with its delivery count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The entry's stream ID.
    pub offset: StreamId,
    /// The field/value list.
    pub fields: Vec<String>,
    /// How many times the group delivered it, this time included.
    pub deliveries: u64,
}

/// A push of entries for a consumer group subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPush<'a> {
    /// The channel.
    pub channel: Cow<'a, str>,
    /// The consumer group the entries were delivered through.
    pub group: Cow<'a, str>,
    /// The entries; acknowledge them with the `ack` op.
    pub messages: Vec<GroupEntry>,
}

impl Serialize for StreamId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_match_the_documented_shapes() {
        let ok = Reply::ok(Some(1), OkBody { offset: Some(StreamId::new(1518951480106, 0)), ..OkBody::default() });
        assert_eq!(ok.to_json(), r#"{"id":1,"ok":{"offset":"1518951480106-0"}}"#);
        let truncated =
            Reply::ok(Some(1), OkBody { offset: Some(StreamId::new(5, 0)), truncated: true, ..OkBody::default() });
        assert_eq!(truncated.to_json(), r#"{"id":1,"ok":{"offset":"5-0","truncated":true}}"#);
        assert_eq!(Reply::ok(Some(3), OkBody::default()).to_json(), r#"{"id":3,"ok":{}}"#);
        let err = Reply::error(None, ProtocolError::bad_request("nope"));
        assert_eq!(err.to_json(), r#"{"id":null,"error":{"code":"bad_request","message":"nope"}}"#);
        let back: Reply = serde_json::from_str(&err.to_json()).unwrap();
        assert_eq!(back, err);
    }

    #[test]
    fn pushes_match_the_documented_shape() {
        let entries = [Entry { offset: StreamId::new(7, 1), fields: vec!["k".into(), "{\"a\":1}".into()] }];
        let json = Push::messages("chat", &entries).to_json();
        assert_eq!(json, r#"{"channel":"chat","messages":[{"offset":"7-1","fields":["k","{\"a\":1}"]}]}"#);
        let back: Push<'_> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.messages.as_ref(), &entries);
    }
}
