//! Hooks: the application's say over who connects, subscribes and publishes, and what reaches
//! each socket.
//!
//! Implement [`Hooks`] and pass it to [`crate::ServerBuilder::hooks`]. Every method has an
//! allow-all default, so an implementation overrides only what it needs. Async hooks run on the
//! connection's task (a slow hook delays only that connection); [`Hooks::on_stream_event`] is
//! synchronous because it runs in the fan-out path for every subscriber: keep it fast.

use redistribute_protocol::{Entry, Start, StreamId};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;

/// What the server knows about a connection, shown to every hook.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique within this server process.
    pub id: u64,
    /// The peer's address (the proxy's, behind a reverse proxy: see the headers).
    pub peer: SocketAddr,
    /// The request target of the upgrade request, with its query string (`/?token=…`).
    pub target: String,
    /// The upgrade request's headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The user a token authenticated, once one did (a connection never changes user).
    user: OnceLock<String>,
}

impl ConnInfo {
    /// What the server knows about a new connection.
    pub fn new(id: u64, peer: SocketAddr, target: String, headers: Vec<(String, String)>) -> ConnInfo {
        ConnInfo { id, peer, target, headers, user: OnceLock::new() }
    }

    /// The user the connection authenticated as with a token (`auth`), if it did.
    pub fn user(&self) -> Option<&str> {
        self.user.get().map(String::as_str)
    }

    /// Records the authenticated user; a connection keeps its first one.
    pub(crate) fn set_user(&self, user: &str) {
        let _ = self.user.set(user.to_owned());
    }

    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The first query-string parameter with this name, undecoded (`/?token=abc` → `abc`).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
    }
}

/// A hook's verdict on a connection, subscription or publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refuse; the reason is sent to the client (error code `forbidden`, or close code 1008 for
    /// a refused connection).
    Deny(String),
}

/// A hook's verdict on one stream entry on its way to one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Deliver the entry as it is.
    Pass,
    /// Do not deliver the entry to this socket (its offset is still passed over on resume).
    Drop,
    /// Deliver these fields instead (same offset).
    Rewrite(Vec<String>),
}

/// Application hooks. All methods default to allowing everything.
pub trait Hooks: Send + Sync + 'static {
    /// A WebSocket connection was upgraded. Deny closes it with code 1008.
    fn on_connect(&self, conn: &ConnInfo) -> impl Future<Output = Decision> + Send {
        let _ = conn;
        async { Decision::Allow }
    }

    /// A socket asks to subscribe to `channel` from `start` (also when joining a consumer group).
    fn on_subscribe(&self, conn: &ConnInfo, channel: &str, start: Start) -> impl Future<Output = Decision> + Send {
        let _ = (conn, channel, start);
        async { Decision::Allow }
    }

    /// A socket asks to publish `fields` to `channel`.
    fn on_publish(&self, conn: &ConnInfo, channel: &str, fields: &[String]) -> impl Future<Output = Decision> + Send {
        let _ = (conn, channel, fields);
        async { Decision::Allow }
    }

    /// A socket asks to acknowledge `offsets` delivered by consumer group `group` of `channel`.
    fn on_ack(
        &self,
        conn: &ConnInfo,
        channel: &str,
        group: &str,
        offsets: &[StreamId],
    ) -> impl Future<Output = Decision> + Send {
        let _ = (conn, channel, group, offsets);
        async { Decision::Allow }
    }

    /// An entry of `channel` is about to be sent to `conn` (live or replayed). Consumer group
    /// deliveries do not pass through here: they are work items, and hiding one would leave it
    /// pending until it is dead-lettered. Guard groups with [`Hooks::on_subscribe`].
    fn on_stream_event(&self, conn: &ConnInfo, channel: &str, entry: &Entry) -> StreamEvent {
        let _ = (conn, channel, entry);
        StreamEvent::Pass
    }

    /// The connection ended (after its subscriptions were removed).
    fn on_disconnect(&self, conn: &ConnInfo) -> impl Future<Output = ()> + Send {
        let _ = conn;
        async {}
    }
}

/// The hooks of a server that installs none.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Hooks for AllowAll {}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe twin of [`Hooks`], so the server stores `Arc<dyn DynHooks>` and stays non-generic.
pub(crate) trait DynHooks: Send + Sync + 'static {
    fn on_connect<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, Decision>;
    fn on_subscribe<'a>(&'a self, conn: &'a ConnInfo, channel: &'a str, start: Start) -> BoxFuture<'a, Decision>;
    fn on_publish<'a>(&'a self, conn: &'a ConnInfo, channel: &'a str, fields: &'a [String]) -> BoxFuture<'a, Decision>;
    fn on_ack<'a>(
        &'a self,
        conn: &'a ConnInfo,
        channel: &'a str,
        group: &'a str,
        offsets: &'a [StreamId],
    ) -> BoxFuture<'a, Decision>;
    fn on_stream_event(&self, conn: &ConnInfo, channel: &str, entry: &Entry) -> StreamEvent;
    fn on_disconnect<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, ()>;
}

impl<H: Hooks> DynHooks for H {
    fn on_connect<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, Decision> {
        Box::pin(Hooks::on_connect(self, conn))
    }
    fn on_subscribe<'a>(&'a self, conn: &'a ConnInfo, channel: &'a str, start: Start) -> BoxFuture<'a, Decision> {
        Box::pin(Hooks::on_subscribe(self, conn, channel, start))
    }
    fn on_publish<'a>(&'a self, conn: &'a ConnInfo, channel: &'a str, fields: &'a [String]) -> BoxFuture<'a, Decision> {
        Box::pin(Hooks::on_publish(self, conn, channel, fields))
    }
    fn on_ack<'a>(
        &'a self,
        conn: &'a ConnInfo,
        channel: &'a str,
        group: &'a str,
        offsets: &'a [StreamId],
    ) -> BoxFuture<'a, Decision> {
        Box::pin(Hooks::on_ack(self, conn, channel, group, offsets))
    }
    fn on_stream_event(&self, conn: &ConnInfo, channel: &str, entry: &Entry) -> StreamEvent {
        Hooks::on_stream_event(self, conn, channel, entry)
    }
    fn on_disconnect<'a>(&'a self, conn: &'a ConnInfo) -> BoxFuture<'a, ()> {
        Box::pin(Hooks::on_disconnect(self, conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers_and_query() {
        let conn = ConnInfo::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            "/?room=a&token=xyz&flag".into(),
            vec![("origin".into(), "https://app".into())],
        );
        assert_eq!(conn.query_param("token"), Some("xyz"));
        assert_eq!(conn.query_param("flag"), Some(""));
        assert_eq!(conn.query_param("nope"), None);
        assert_eq!(conn.header("Origin"), Some("https://app"));
    }
}
