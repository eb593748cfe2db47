//! One WebSocket connection: requests in, replies and pushes out.
//!
//! The socket is split in two halves, each run by a task of its own: the *handler* reads frames
//! and answers them in order, and the *writer* (`crate::writer`) drains the connection's
//! [`Outbox`], batching frames into as few flushes as possible. What an idle connection holds is
//! kept small on purpose (the handling of a frame is boxed while it runs): it is what 10,000 idle
//! subscribers cost. Publishes that arrive back to back are stored together,
//! in one round trip to Redis that keeps their order (a pipelining client is not held to one
//! publish per round trip). Both halves are generic over `Stream`/`Sink`, so the protocol handling
//! tests without a network.

use crate::access::{Identity, Op as AccessOp, Verdict};
use crate::engine::{Appended, Once, Write};
use crate::error::client_error;
use crate::hooks::{ConnInfo, Decision};
use crate::hub::Watch;
use crate::log_gate::LogEvent;
use crate::membership::ConsumerLease;
use crate::outbox::{Outbox, QueueState};
use crate::progress::Progress;
use crate::rate::Throttle;
use crate::writer::{Writer, close_message};
use crate::{Shared, groups, membership, replay};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use redistribute_protocol::frame::{OkBody, Outcome, Truncation};
use redistribute_protocol::{ErrorCode, Op, ProtocolError, Reply, Request, Start, close};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, info};

/// How long a closing connection keeps reading for the client's close reply, so that requests
/// still in flight do not turn the close into a TCP reset.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Runs a connection to its end: the connect hook, then requests until the socket closes, the
/// client is kicked or the server shuts down; then cleanup and the disconnect hook. `progress`
/// reports when the socket last accepted bytes (see [`crate::progress`]).
///
/// The socket is split before the future is made, so that the future holds the two small halves
/// rather than a copy of the socket's state beside them (every open connection pays for its size).
pub(crate) fn run<S>(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    socket: S,
    progress: Arc<Progress>,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send + 'static,
{
    let (sink, stream) = socket.split();
    serve(shared, conn, sink, stream, progress)
}

async fn serve<W, R>(shared: Arc<Shared>, conn: Arc<ConnInfo>, mut sink: W, mut stream: R, progress: Arc<Progress>)
where
    W: Sink<Message, Error = WsError> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, WsError>> + Unpin + Send,
{
    if let Decision::Deny(reason) = shared.hooks.on_connect(&conn).await {
        debug!(conn = conn.id, %reason, "connection refused by hook");
        let _ = sink.send(close_message(close::POLICY_VIOLATION, &reason)).await;
        return;
    }
    let metrics = &shared.metrics;
    metrics.websockets_open.inc();
    let (outbox, queue) = Outbox::new(shared.config.send_queue_bytes, metrics.send_queue_bytes.clone());
    let state = queue.state().clone();
    // The writer is a task of its own, sized to what it holds; the handler reads on in this one.
    // (Joining the two in one future cost every open connection kilobytes of task state.)
    let writer = shared.tasks.spawn(
        Writer {
            sink,
            queue,
            state: state.clone(),
            progress,
            write_timeout: shared.config.write_timeout,
            ping_interval: shared.config.ping_interval,
            shutdown: shared.shutdown.clone(),
        }
        .run(),
    );
    let mut handler = Handler {
        shared: shared.clone(),
        conn: conn.clone(),
        outbox,
        subscriptions: HashMap::new(),
        groups: HashMap::new(),
        identity: None,
        expiry: None,
        throttle: Throttle::new(shared.config.rate_limits, tokio::time::Instant::now()),
    };
    let ended = handler.read_loop(&mut stream).await;
    // Boxed, like the handling of each frame: room only while it runs.
    Box::pin(handler.cleanup()).await;
    // Dropping the handler (and its outbox) lets the writer finish.
    drop(handler);
    let closed = writer.await.unwrap_or(false);
    record_close(&shared, &conn, &state, ended);
    if closed && ended == Ended::ByServer {
        linger(&mut stream).await;
    }
    metrics.websockets_open.dec();
    shared.hooks.on_disconnect(&conn).await;
}

/// Counts (and logs, within the log gate's allowance) a close the server made.
fn record_close(shared: &Shared, conn: &ConnInfo, state: &QueueState, ended: Ended) {
    let going_away = ended == Ended::ByServer && shared.shutdown.is_cancelled();
    let kick = state.kick().reason().or_else(|| going_away.then(|| (close::GOING_AWAY, String::new())));
    if let Some((code, reason)) = kick {
        shared.metrics.closes.with_label_values(&[&code.to_string()]).inc();
        if code != close::GOING_AWAY && shared.log_gate.allow(LogEvent::Closed) {
            info!(conn = conn.id, peer = %conn.peer, code, %reason, "closed by the server");
        }
    }
}

/// After the server's close frame: reads on until the client answers it (or gives up),
/// discarding what it sends, so that requests still in flight do not turn the close into a reset.
async fn linger<R>(stream: &mut R)
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

fn rate_limited(what: &str, wait: Duration) -> ProtocolError {
    let message = format!("too many {what}: retry after {} ms", wait.as_millis().max(1));
    ProtocolError::new(ErrorCode::RateLimited, message).retry_after(wait)
}

/// Most publishes stored in one round trip.
const MAX_PUBLISH_BATCH: usize = 64;

/// A publish read from the socket, not yet stored.
struct PendingPublish {
    id: u64,
    channel: String,
    fields: Vec<String>,
    maxlen: Option<u64>,
    idempotency_key: Option<String>,
}

impl PendingPublish {
    /// The request as a publish, or the request back when it is another op.
    fn from_request(request: Request) -> Result<PendingPublish, Request> {
        match request {
            Request { id, op: Op::Publish { channel, fields, maxlen, idempotency_key } } => {
                Ok(PendingPublish { id, channel, fields, maxlen, idempotency_key })
            }
            other => Err(other),
        }
    }
}

/// What reading ahead for publishes met, to be handled next.
enum Stashed {
    /// A frame other than a text frame (or the end of the stream).
    Frame(Option<Result<Message, WsError>>),
    /// A text frame that is not a publish, already accepted (or refused).
    Accepted(Result<Request, Reply>),
}

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client closed, left or broke the socket.
    ByClient,
    /// The server closes: a kick, the idle timeout or a shutdown.
    ByServer,
}

struct Subscription {
    replay: JoinHandle<()>,
}

/// One consumer group membership of this connection.
struct Member {
    task: JoinHandle<()>,
    /// The consumer name in storage (scoped to the connection's user under access control).
    consumer: String,
    /// Holds the consumer name on this instance until the membership ends.
    _lease: ConsumerLease,
    /// Keeps the stream reader signalling the member about new entries.
    _watch: Watch,
}

struct Handler {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    outbox: Outbox,
    subscriptions: HashMap<String, Subscription>,
    /// Consumer group memberships by (channel, group), each pulling in its own task.
    groups: HashMap<(String, String), Member>,
    /// Who the connection authenticated as, if it did.
    identity: Option<Identity>,
    /// When its token expires: the connection closes with 4001 unless it authenticates again.
    expiry: Option<tokio::time::Instant>,
    /// Its request and publish rates.
    throttle: Throttle,
}

impl Handler {
    async fn read_loop<R>(&mut self, stream: &mut R) -> Ended
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let idle_timeout = self.shared.config.idle_timeout;
        // Every frame counts as a sign of life, pongs included; a frame still arriving does not.
        let mut heard = tokio::time::Instant::now();
        let mut stashed: Option<Stashed> = None;
        loop {
            let stashed_frame = match stashed.take() {
                Some(Stashed::Accepted(Ok(request))) => {
                    Box::pin(self.on_request(request)).await;
                    continue;
                }
                Some(Stashed::Accepted(Err(reply))) => {
                    Box::pin(self.reply(reply)).await;
                    continue;
                }
                Some(Stashed::Frame(frame)) => Some(frame),
                None => None,
            };
            let expiry = self.expiry;
            let expired = async move {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next = if let Some(frame) = stashed_frame {
                frame
            } else {
                tokio::select! {
                    biased;
                    () = self.outbox.kicked() => return Ended::ByServer,
                    () = self.shared.shutdown.cancelled() => return Ended::ByServer,
                    () = expired => {
                        self.outbox.kick(close::TOKEN_EXPIRED, "token expired: authenticate again with a fresh token");
                        return Ended::ByServer;
                    }
                    () = tokio::time::sleep_until(heard + idle_timeout) => {
                        debug!(conn = self.conn.id, "idle timeout");
                        let reason = format!("nothing received for {idle_timeout:?}");
                        self.outbox.kick(close::IDLE_TIMEOUT, &reason);
                        return Ended::ByServer;
                    }
                    next = stream.next() => next,
                }
            };
            heard = tokio::time::Instant::now();
            match next {
                // Boxed: the handling of a frame takes room only while it runs, not in every idle
                // connection's task.
                Some(Ok(Message::Text(text))) => stashed = Box::pin(self.on_text(&text, stream)).await,
                Some(Ok(Message::Binary(_))) => {
                    let error = self.admit_request().err().unwrap_or_else(|| {
                        ProtocolError::bad_request("binary frames are not supported: send JSON text frames")
                    });
                    Box::pin(self.reply(Reply::error(None, error))).await;
                }
                Some(Ok(Message::Close(_))) | None => return Ended::ByClient,
                Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                Some(Err(WsError::Capacity(e))) => {
                    debug!(conn = self.conn.id, error = %e, "frame over the hard limit");
                    let limit = self.shared.config.hard_frame_limit();
                    self.outbox.kick(close::MESSAGE_TOO_BIG, &format!("frame exceeds {limit} bytes"));
                    return Ended::ByServer;
                }
                Some(Err(WsError::Protocol(e))) => {
                    debug!(conn = self.conn.id, error = %e, "WebSocket protocol violation");
                    self.outbox.kick(close::PROTOCOL_ERROR, &format!("WebSocket protocol violation: {e}"));
                    return Ended::ByServer;
                }
                Some(Err(WsError::Utf8(e))) => {
                    debug!(conn = self.conn.id, error = %e, "text frame is not UTF-8");
                    self.outbox.kick(close::INVALID_DATA, "a text frame was not valid UTF-8");
                    return Ended::ByServer;
                }
                Some(Err(e)) => {
                    if !matches!(e, WsError::ConnectionClosed | WsError::AlreadyClosed) {
                        debug!(conn = self.conn.id, error = %e, "socket error");
                    }
                    return Ended::ByClient;
                }
            }
        }
    }

    async fn reply(&mut self, reply: Reply) {
        if let Outcome::Error(e) = &reply.outcome {
            self.shared.metrics.errors.with_label_values(&[e.code.as_str()]).inc();
        }
        let limited = matches!(&reply.outcome, Outcome::Error(e) if e.code == ErrorCode::RateLimited);
        let ignored_limits = if limited {
            self.throttle.strike()
        } else {
            self.throttle.forgive();
            false
        };
        // A closed outbox means the connection is ending; there is no one left to tell.
        let _ = self.outbox.send(reply.to_json().into()).await;
        if ignored_limits {
            self.outbox.kick(close::RATE_LIMITED, "too many requests after rate_limited replies: slow down");
        }
    }

    /// Takes a request token; the error to answer with when there is none.
    fn admit_request(&mut self) -> Result<(), ProtocolError> {
        self.throttle.request(tokio::time::Instant::now()).map_err(|wait| rate_limited("requests", wait))
    }

    /// A text frame as a request, or the error reply it gets (too large, malformed, over the
    /// request rate).
    fn accept(&mut self, text: &str) -> Result<Request, Reply> {
        let max = self.shared.config.max_frame_bytes;
        let parsed = if text.len() > max {
            let error =
                ProtocolError::new(ErrorCode::TooLarge, format!("frame is {} bytes, the limit is {max}", text.len()));
            Err((None, error))
        } else {
            Request::parse(text, &self.shared.config.limits).map_err(|e| (e.id, e.error))
        };
        if let Err(error) = self.admit_request() {
            let id = parsed.as_ref().map_or_else(|(id, _)| *id, |request| Some(request.id));
            return Err(Reply::error(id, error));
        }
        parsed.map_err(|(id, error)| Reply::error(id, error))
    }

    /// Answers a text frame. Publishes already waiting behind it on the socket are taken along
    /// and stored in one round trip (see [`Handler::publish_batch`]); the first other frame met
    /// is returned, to be handled next.
    async fn on_text<R>(&mut self, text: &str, stream: &mut R) -> Option<Stashed>
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let first = match self.accept(text) {
            Ok(request) => request,
            Err(reply) => {
                self.reply(reply).await;
                return None;
            }
        };
        let first = match PendingPublish::from_request(first) {
            Ok(publish) => publish,
            Err(other) => {
                self.on_request(other).await;
                return None;
            }
        };
        let mut batch = vec![first];
        let mut stashed = None;
        while batch.len() < MAX_PUBLISH_BATCH {
            // Only what has arrived already: waiting here would delay the publishes in hand.
            let Some(next) = stream.next().now_or_never() else { break };
            let Some(Ok(Message::Text(text))) = next else {
                stashed = Some(Stashed::Frame(next));
                break;
            };
            match self.accept(&text).map(PendingPublish::from_request) {
                Ok(Ok(publish)) => batch.push(publish),
                Ok(Err(other)) => {
                    stashed = Some(Stashed::Accepted(Ok(other)));
                    break;
                }
                Err(reply) => {
                    stashed = Some(Stashed::Accepted(Err(reply)));
                    break;
                }
            }
        }
        self.publish_batch(batch).await;
        stashed
    }

    async fn on_request(&mut self, request: Request) {
        let request = match PendingPublish::from_request(request) {
            Ok(publish) => return self.publish_batch(vec![publish]).await,
            Err(other) => other,
        };
        let id = Some(request.id);
        match request.op {
            Op::Subscribe { channel, start } => match self.subscribe(&channel, start).await {
                Ok((body, plan)) => {
                    // The reply is queued before the replay can queue any push.
                    self.reply(Reply::ok(id, body)).await;
                    // Boxed: the task outlives the replay (its handle is kept to stop it), and
                    // then holds only the box's pointer, not the replay's state.
                    let replay = self.shared.tasks.spawn(async move { Box::pin(plan.run()).await });
                    self.subscriptions.insert(channel, Subscription { replay });
                    self.shared.metrics.subscriptions.inc();
                }
                Err(error) => self.reply(Reply::error(id, error)).await,
            },
            Op::Unsubscribe { channel } => {
                self.unsubscribe(&channel).await;
                self.reply(Reply::ok(id, OkBody::default())).await;
            }
            Op::GroupSubscribe { channel, group, consumer, start } => {
                match self.join_group(&channel, &group, &consumer, start).await {
                    Ok((member, lease, watch)) => {
                        self.reply(Reply::ok(id, OkBody::default())).await;
                        let task = membership::Membership {
                            shared: self.shared.clone(),
                            outbox: self.outbox.clone(),
                            channel: channel.clone(),
                            group: group.clone(),
                        };
                        let consumer = lease.consumer().to_owned();
                        let task = self.shared.tasks.spawn(task.run(member));
                        self.groups.insert((channel, group), Member { task, consumer, _lease: lease, _watch: watch });
                        self.shared.metrics.group_members.inc();
                    }
                    Err(error) => self.reply(Reply::error(id, error)).await,
                }
            }
            Op::GroupUnsubscribe { channel, group } => {
                if let Some(member) = self.groups.remove(&(channel, group)) {
                    member.task.abort();
                    let _ = member.task.await;
                    self.shared.metrics.group_members.dec();
                }
                self.reply(Reply::ok(id, OkBody::default())).await;
            }
            Op::Ack { channel, group, offsets } => {
                if let Err(error) = self.permit(&channel, AccessOp::Consume) {
                    return self.reply(Reply::error(id, error)).await;
                }
                if let Decision::Deny(reason) = self.shared.hooks.on_ack(&self.conn, &channel, &group, &offsets).await {
                    return self.reply(Reply::error(id, ProtocolError::new(ErrorCode::Forbidden, reason))).await;
                }
                // Only what was delivered to this connection's own consumer can be acknowledged.
                let Some(consumer) = self.groups.get(&(channel.clone(), group.clone())).map(|m| m.consumer.clone())
                else {
                    let message = format!(
                        "not a member of group {group:?} of {channel:?} on this connection: join it first (nothing acknowledged)"
                    );
                    return self.reply(Reply::error(id, ProtocolError::bad_request(message))).await;
                };
                let reply = match groups::ack_as(&self.shared.engine, &channel, &group, &consumer, &offsets).await {
                    Ok(acked) => Reply::ok(id, OkBody { acked: Some(acked), ..OkBody::default() }),
                    Err(e) => Reply::error(id, client_error(&e)),
                };
                self.reply(reply).await;
            }
            Op::Ping => self.reply(Reply::ok(id, OkBody::default())).await,
            Op::Auth { token } => {
                let checked = self
                    .throttle
                    .auth(tokio::time::Instant::now())
                    .map_err(|wait| rate_limited("token checks", wait))
                    .and_then(|()| self.authenticate(&token));
                let reply = match checked {
                    Ok(body) => Reply::ok(id, body),
                    Err(error) => Reply::error(id, error),
                };
                self.reply(reply).await;
            }
            _ => {
                self.reply(Reply::error(
                    id,
                    ProtocolError::new(ErrorCode::UnknownOp, "op not supported by this server"),
                ))
                .await
            }
        }
    }

    async fn subscribe(&mut self, channel: &str, start: Start) -> Result<(OkBody, replay::Replay), ProtocolError> {
        if self.subscriptions.contains_key(channel) {
            return Err(ProtocolError::bad_request(format!(
                "already subscribed to {channel:?}; unsubscribe first to change the offset"
            )));
        }
        let needed = match start {
            Start::Latest => AccessOp::Subscribe,
            Start::After(_) => AccessOp::History,
        };
        self.permit(channel, needed)?;
        self.admit(channel, start).await?;
        let state = self.shared.engine.state(channel).await.map_err(|e| client_error(&e))?;
        // An offset ahead of the stream's last entry is one the stream lost (or never had):
        // waiting for entries after it could wait forever, so the subscription starts at the
        // stream's end and the client is told.
        let ahead = matches!(start, Start::After(id) if id > state.last_generated);
        let after = match start {
            Start::After(id) if !ahead => id,
            _ => state.last_generated,
        };
        let partition = self.shared.partition_of(channel);
        partition.join(channel, &self.conn, &self.outbox, state.last_generated);
        let loss = state.loss_after(after);
        let reason = if ahead { Some(Truncation::Ahead) } else { loss.map(|_| Truncation::Trimmed) };
        let body = OkBody { offset: Some(after), truncated: reason.is_some(), reason, ..OkBody::default() };
        let plan = replay::Replay {
            shared: self.shared.clone(),
            conn: self.conn.clone(),
            outbox: self.outbox.clone(),
            channel: channel.to_owned(),
            after,
            reported_loss: loss,
        };
        Ok((body, plan))
    }

    /// The checks every new subscription or group membership passes: the per-connection limit
    /// (both kinds count) and the application's subscribe hook.
    async fn admit(&self, channel: &str, start: Start) -> Result<(), ProtocolError> {
        let max = self.shared.config.max_subscriptions;
        if self.subscriptions.len() + self.groups.len() >= max {
            return Err(ProtocolError::new(
                ErrorCode::LimitExceeded,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        match self.shared.hooks.on_subscribe(&self.conn, channel, start).await {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(ProtocolError::new(ErrorCode::Forbidden, reason)),
        }
    }

    async fn join_group(
        &mut self,
        channel: &str,
        group: &str,
        consumer: &str,
        start: Start,
    ) -> Result<(groups::Consumer, ConsumerLease, Watch), ProtocolError> {
        if self.groups.contains_key(&(channel.to_owned(), group.to_owned())) {
            return Err(ProtocolError::bad_request(format!(
                "already in group {group:?} of {channel:?} on this connection"
            )));
        }
        self.permit(channel, AccessOp::Consume)?;
        self.admit(channel, start).await?;
        let consumer = self.shared.access.consumer_name(self.identity.as_ref(), consumer);
        let lease = self.shared.consumers.lease(channel, group, &consumer).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::Conflict,
                format!("consumer {consumer:?} of group {group:?} is held by another live connection"),
            )
        })?;
        let config = &self.shared.config;
        let options = groups::GroupOptions {
            start,
            claim_idle: config.group_claim_idle,
            max_deliveries: config.group_max_deliveries,
            dead_letter: None,
            dead_letter_maxlen: Some(config.dead_letter_maxlen),
            batch: config.read_count.min(config.limits.max_offsets),
            block: config.block,
        };
        let engine = &self.shared.engine;
        let mut member = groups::Consumer::join(engine, channel, group, lease.consumer(), options)
            .await
            .map_err(|e| client_error(&e))?;
        // The stream reader signals the member about new entries: no blocking connection each.
        let state = engine.state(channel).await.map_err(|e| client_error(&e))?;
        let watch = self.shared.partition_of(channel).watch(channel, state.last_generated);
        member.wake_on(watch.signal());
        Ok((member, lease, watch))
    }

    async fn unsubscribe(&mut self, channel: &str) {
        if let Some(subscription) = self.subscriptions.remove(channel) {
            self.shared.metrics.subscriptions.dec();
            subscription.replay.abort();
            let _ = subscription.replay.await;
            self.shared.partition_of(channel).leave(channel, self.conn.id);
        }
    }

    /// Stores publishes in one round trip (consecutive publishes of one connection, in order)
    /// and answers each, in request order. Each is checked first (permissions, rates, hook);
    /// refused ones are answered without being stored.
    async fn publish_batch(&mut self, batch: Vec<PendingPublish>) {
        let mut checked = Vec::with_capacity(batch.len());
        for publish in &batch {
            checked.push(self.check_publish(&publish.channel, &publish.fields, publish.maxlen).await);
        }
        // Keys are the user's own: another user cannot match (and so suppress) someone's publish.
        let user = self.identity.as_ref().map_or("", |identity| identity.user.as_str());
        let keys: Vec<Option<String>> = batch
            .iter()
            .map(|p| p.idempotency_key.as_ref().map(|key| format!("{}:{user}:{key}", user.len())))
            .collect();
        let ttl = self.shared.config.idempotency_ttl;
        let writes: Vec<Write<'_>> = batch
            .iter()
            .zip(&checked)
            .zip(&keys)
            .filter_map(|((p, check), key)| {
                check.as_ref().ok().map(|maxlen| Write {
                    channel: &p.channel,
                    fields: &p.fields,
                    maxlen: *maxlen,
                    once: key.as_deref().map(|key| Once { key, ttl }),
                })
            })
            .collect();
        let mut stored = self.shared.engine.publish_many(&writes).await.into_iter();
        for (publish, check) in batch.iter().zip(checked) {
            let id = Some(publish.id);
            let reply = match check {
                Err(error) => Reply::error(id, error),
                Ok(_) => match stored.next().expect("one outcome per write") {
                    Ok(Appended { offset, duplicate }) => {
                        if !duplicate {
                            self.shared.metrics.publishes.inc();
                        }
                        Reply::ok(id, OkBody { offset: Some(offset), duplicate, ..OkBody::default() })
                    }
                    Err(e) => Reply::error(id, client_error(&e)),
                },
            };
            self.reply(reply).await;
        }
    }

    /// Whether the connection may publish to `channel` now; the trim to store it with.
    async fn check_publish(
        &mut self,
        channel: &str,
        fields: &[String],
        maxlen: Option<u64>,
    ) -> Result<Option<u64>, ProtocolError> {
        let verdict = self.permit(channel, AccessOp::Publish)?;
        self.throttle
            .publish(verdict.publish_rate, tokio::time::Instant::now())
            .map_err(|wait| rate_limited("publishes", wait))?;
        let maxlen = match (maxlen, verdict.maxlen) {
            (Some(_), _) if !verdict.client_maxlen => {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!("the length of {channel:?} is set by the server: publish without maxlen"),
                ));
            }
            // A client may trim harder than the channel's rule, never less.
            (Some(asked), Some(rule)) => Some(asked.min(rule)),
            (Some(asked), None) => Some(asked),
            // The verdict already holds the rule's trim: no second policy lookup.
            (None, rule) => rule.or_else(|| self.shared.configured_maxlen(channel)),
        };
        if let Decision::Deny(reason) = self.shared.hooks.on_publish(&self.conn, channel, fields).await {
            return Err(ProtocolError::new(ErrorCode::Forbidden, reason));
        }
        Ok(maxlen)
    }

    /// Checks that the connection may do `op` on `channel`; returns the channel's rule.
    fn permit(&self, channel: &str, op: AccessOp) -> Result<Verdict, ProtocolError> {
        let verdict = self.shared.access.verdict(channel, self.identity.as_ref());
        if verdict.ops.allows(op) {
            return Ok(verdict);
        }
        let who = match &self.identity {
            Some(identity) => format!("user {:?}", identity.user),
            None => "a connection without a token".to_owned(),
        };
        Err(ProtocolError::new(ErrorCode::Forbidden, format!("{who} may not {} on {channel:?}", op.as_str())))
    }

    /// `auth`: verifies a token and makes it the connection's identity until it expires.
    fn authenticate(&mut self, token: &str) -> Result<OkBody, ProtocolError> {
        let identity = self.shared.access.verify(token).map_err(|e| {
            debug!(conn = self.conn.id, error = %e, "token refused");
            ProtocolError::new(ErrorCode::Unauthorized, e.0)
        })?;
        if let Some(current) = &self.identity
            && current.user != identity.user
        {
            return Err(ProtocolError::new(
                ErrorCode::Unauthorized,
                format!("this connection is authenticated as {:?}; reconnect to change user", current.user),
            ));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let left = std::time::Duration::from_secs(identity.expires).saturating_sub(now);
        if left.is_zero() {
            // Within the verifier's clock-skew leeway, but the connection would close at once.
            return Err(ProtocolError::new(ErrorCode::Unauthorized, "the token has expired"));
        }
        // An expiry too far to represent never comes.
        self.expiry = tokio::time::Instant::now().checked_add(left);
        let body = OkBody { user: Some(identity.user.clone()), expires: Some(identity.expires), ..OkBody::default() };
        self.conn.set_user(&identity.user);
        self.identity = Some(identity);
        Ok(body)
    }

    async fn cleanup(&mut self) {
        let channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe(&channel).await;
        }
        for (_, member) in self.groups.drain() {
            // Unacknowledged entries stay pending: claimed by others after the idle time.
            self.shared.metrics.group_members.dec();
            member.task.abort();
            let _ = member.task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Tracked;
    use crate::{Config, Server};
    use serde_json::{Value, json};
    use tokio::io::{DuplexStream, duplex};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    type Client = WebSocketStream<DuplexStream>;

    /// Runs a connection of `server` over an in-memory pipe; returns the client's socket.
    async fn connect(server: &Server) -> Client {
        let (client, served) = duplex(256 << 10);
        let shared = server.shared.clone();
        let conn = Arc::new(ConnInfo::new(shared.next_conn_id(), "127.0.0.1:9".parse().unwrap(), "/".into(), vec![]));
        let config = shared.config.clone();
        tokio::spawn(async move {
            let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(Some(config.hard_frame_limit()))
                .max_frame_size(Some(config.hard_frame_limit()));
            let (served, progress) = Tracked::new(served);
            let socket = WebSocketStream::from_raw_socket(served, Role::Server, Some(ws_config)).await;
            run(shared, conn, socket, progress).await;
        });
        WebSocketStream::from_raw_socket(client, Role::Client, None).await
    }

    async fn next(client: &mut Client) -> Message {
        tokio::time::timeout(std::time::Duration::from_secs(5), client.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("a valid frame")
    }

    async fn next_json(client: &mut Client) -> Value {
        loop {
            match next(client).await {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn ask(client: &mut Client, request: Value) -> Value {
        client.send(Message::text(request.to_string())).await.unwrap();
        next_json(client).await
    }

    fn memory_server() -> Server {
        Server::builder(Config { max_frame_bytes: 1024, ..Config::default() }).build().unwrap()
    }

    fn quick_liveness() -> Config {
        Config {
            ping_interval: std::time::Duration::from_millis(100),
            idle_timeout: std::time::Duration::from_millis(300),
            write_timeout: std::time::Duration::from_millis(300),
            ..Config::default()
        }
    }

    async fn close_code(client: &mut Client) -> u16 {
        loop {
            match next(client).await {
                Message::Close(Some(frame)) => return u16::from(frame.code),
                Message::Close(None) => panic!("a close without a code"),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn a_silent_peer_is_closed_with_4002_and_one_that_answers_pings_stays() {
        let server = Server::builder(quick_liveness()).build().unwrap();
        let mut silent = connect(&server).await;
        let mut alive = connect(&server).await;
        // `alive` is polled, so its WebSocket answers the server's pings; `silent` is not.
        let answering = tokio::time::timeout(std::time::Duration::from_millis(800), async {
            while let Some(Ok(message)) = alive.next().await {
                assert!(message.is_ping(), "only pings arrive: {message:?}");
            }
        });
        assert!(answering.await.is_err(), "the answering peer is still connected");
        assert_eq!(close_code(&mut silent).await, close::IDLE_TIMEOUT);
        assert_eq!(ask(&mut alive, json!({"id": 1, "op": "ping"})).await["ok"], json!({}));
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_is_released_after_the_write_timeout() {
        let server = Server::builder(Config { send_queue_bytes: 64 << 10, ..quick_liveness() }).build().unwrap();
        let (mut client, served) = duplex(16 << 10);
        let shared = server.shared.clone();
        let conn = Arc::new(ConnInfo::new(shared.next_conn_id(), "127.0.0.1:9".parse().unwrap(), "/".into(), vec![]));
        let (served, progress) = Tracked::new(served);
        let socket = WebSocketStream::from_raw_socket(served, Role::Server, None).await;
        let running = tokio::spawn(run(shared, conn, socket, progress));
        // Requests keep the connection from idling, but their replies fill the pipe and queue:
        // nothing reads them.
        use tokio::io::AsyncWriteExt;
        let request = br#"{"id":1,"op":"ping","pad":"................................................"}"#;
        let frame = [&[0x81, 0x80 | request.len() as u8, 0, 0, 0, 0][..], request].concat();
        // Writing fails once the server dropped its end of the pipe.
        let writing = async { while client.write_all(&frame).await.is_ok() {} };
        tokio::time::timeout(std::time::Duration::from_secs(3), writing)
            .await
            .expect("released after the write timeout");
        tokio::time::timeout(std::time::Duration::from_secs(1), running).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bad_requests_get_structured_errors_and_the_connection_stays_usable() {
        let server = memory_server();
        let mut client = connect(&server).await;
        let reply = ask(&mut client, json!({"id": 1, "op": "teleport"})).await;
        assert_eq!(reply["id"], 1);
        assert_eq!(reply["error"]["code"], "unknown_op");
        client.send(Message::text("{not json")).await.unwrap();
        let reply = next_json(&mut client).await;
        assert_eq!((reply["id"].clone(), reply["error"]["code"].clone()), (Value::Null, json!("bad_request")));
        client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(next_json(&mut client).await["error"]["code"], "bad_request");
        let big = json!({"id": 2, "op": "publish", "channel": "c", "fields": ["k", "v".repeat(2000)]});
        assert_eq!(ask(&mut client, big).await["error"]["code"], "too_large");
        let reply = ask(&mut client, json!({"id": 3, "op": "subscribe", "channel": "c", "offset": "tomorrow"})).await;
        assert_eq!(reply["error"]["code"], "bad_request");
        assert_eq!(ask(&mut client, json!({"id": 4, "op": "ping"})).await, json!({"id": 4, "ok": {}}));
    }

    #[tokio::test]
    async fn publishes_reach_subscribers_after_the_subscribe_reply() {
        let server = memory_server();
        let mut subscriber = connect(&server).await;
        let mut publisher = connect(&server).await;
        let first = ask(&mut publisher, json!({"id": 1, "op": "publish", "channel": "c", "fields": ["n", "0"]})).await;
        let first = first["ok"]["offset"].as_str().unwrap().to_owned();
        let reply = ask(&mut subscriber, json!({"id": 1, "op": "subscribe", "channel": "c", "offset": "0"})).await;
        assert_eq!(reply["ok"]["offset"], "0-0");
        let second = ask(&mut publisher, json!({"id": 2, "op": "publish", "channel": "c", "fields": ["n", "1"]})).await;
        let second = second["ok"]["offset"].as_str().unwrap().to_owned();
        let mut offsets = Vec::new();
        while offsets.len() < 2 {
            let push = next_json(&mut subscriber).await;
            assert_eq!(push["channel"], "c");
            offsets
                .extend(push["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_str().unwrap().to_owned()));
        }
        assert_eq!(offsets, [first, second], "history then live, once each, in order");
        let again = ask(&mut subscriber, json!({"id": 2, "op": "subscribe", "channel": "c"})).await;
        assert_eq!(again["error"]["code"], "bad_request", "already subscribed");
    }

    /// Writes raw bytes (hand-made frames) to a new connection; returns the close code it gets.
    async fn close_code_after(server: &Server, bytes: &[u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, served) = duplex(64 << 10);
        let shared = server.shared.clone();
        let conn = Arc::new(ConnInfo::new(shared.next_conn_id(), "127.0.0.1:9".parse().unwrap(), "/".into(), vec![]));
        tokio::spawn(async move {
            let (served, progress) = Tracked::new(served);
            let socket = WebSocketStream::from_raw_socket(served, Role::Server, None).await;
            run(shared, conn, socket, progress).await;
        });
        client.write_all(bytes).await.unwrap();
        // The server's close frame: 0x88, a length, then the code (servers do not mask).
        let mut head = [0u8; 4];
        tokio::time::timeout(std::time::Duration::from_secs(5), client.read_exact(&mut head))
            .await
            .expect("a close frame within 5 s")
            .unwrap();
        assert_eq!(head[0], 0x88, "a close frame: {head:?}");
        u16::from_be_bytes([head[2], head[3]])
    }

    #[tokio::test]
    async fn protocol_violations_close_with_1002_and_bad_utf8_with_1007() {
        let server = memory_server();
        // A client frame without a mask (clients must mask).
        assert_eq!(close_code_after(&server, &[0x81, 0x02, b'h', b'i']).await, close::PROTOCOL_ERROR);
        // A reserved opcode, masked.
        assert_eq!(close_code_after(&server, &[0x83, 0x80, 0, 0, 0, 0]).await, close::PROTOCOL_ERROR);
        // A text frame holding invalid UTF-8 (masked with a zero key).
        assert_eq!(close_code_after(&server, &[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]).await, close::INVALID_DATA);
    }

    #[tokio::test]
    async fn frames_over_the_hard_limit_close_with_1009_and_shutdown_with_1001() {
        let server = memory_server();
        let mut client = connect(&server).await;
        client.send(Message::text("x".repeat(server.config().hard_frame_limit() + 1))).await.unwrap();
        match next(&mut client).await {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), close::MESSAGE_TOO_BIG),
            other => panic!("expected a close frame, got {other:?}"),
        }
        let mut client = connect(&server).await;
        assert_eq!(ask(&mut client, json!({"id": 1, "op": "ping"})).await["ok"], json!({}));
        server.shutdown();
        match next(&mut client).await {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), close::GOING_AWAY),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
