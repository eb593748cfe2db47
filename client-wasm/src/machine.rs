//! The client's logic as a pure state machine: no socket, no timers, no JavaScript. What goes
//! over the wire is encoded and decoded in [`crate::wire`].
//!
//! The browser glue feeds it events (`open`, a text frame, `close`, a timer firing, an API call)
//! and carries out the [`Effect`]s it returns (send a frame, settle a promise, emit an event, open
//! a socket, arm the reconnect timer). `R` is whatever settles one API call (a JavaScript
//! promise's resolve/reject pair in the browser, a plain value in tests).
//!
//! Guarantees kept here:
//! - every subscription is re-sent after a reconnect, after the last offset received (or the
//!   start offset the server confirmed), and entries at or below it are dropped: no gap, no
//!   duplicate across reconnects;
//! - publishes made while disconnected wait in a bounded queue and go out in order once
//!   connected; each carries an idempotency key, so a publish cut off mid-flight goes out again
//!   (first, with the same key) and the server stores it once; every call settles (a reply that
//!   does not come within the request timeout rejects it);
//! - every publish the server has not answered is in the outbox: [`Effect::Outboxed`] when it is
//!   made, [`Effect::Settled`] when it is answered, cancelled or abandoned, so the driver can
//!   persist it; publishes persisted by an earlier page come back through [`Machine::restore`]
//!   and go out first, with their keys, their outcome reported by [`Effect::Restored`];
//! - reconnects use exponential backoff with full jitter and rotate through the targets.

use crate::keyed::Keyed;
use crate::wire::{self, Frame, ReplyBody, Request, ServerError};
use redistribute_protocol::{Backoff, Entry, Start, StreamId};
use std::collections::VecDeque;
use std::time::Duration;

/// An error an API call rejects with, or an `error` event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Stable code: the server's codes (`bad_request`, `forbidden`, …) or the client's own
    /// (`disconnected`, `closed`, `queue_full`, `truncated`, `protocol`).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// The channel concerned, when there is one.
    pub channel: Option<String>,
}

impl ClientError {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> Self {
        ClientError { code: code.into(), message: message.into(), channel: None }
    }

    fn on(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_owned());
        self
    }
}

impl From<ServerError> for ClientError {
    fn from(e: ServerError) -> Self {
        ClientError { code: e.code, message: e.message, channel: None }
    }
}

/// What a successful API call resolves with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// `subscribe`: the server confirmed.
    Subscribed,
    /// `unsubscribe`: done.
    Unsubscribed,
    /// `publish`: the new entry's offset.
    Published(StreamId),
    /// `ack`: how many entries were acknowledged.
    Acked(u64),
}

/// Where the connection stands, as the app sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// An attempt to connect (and authenticate) is under way.
    Connecting,
    /// The connection is usable.
    Connected,
    /// No connection: waiting to try again.
    Disconnected,
    /// `close()` was called.
    Closed,
}

impl State {
    /// The name the package uses.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Disconnected => "disconnected",
            State::Closed => "closed",
        }
    }
}

/// A failed attempt to connect: which target, and how it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The URL tried.
    pub target: String,
    /// The close code (1006 when the socket never opened or vanished, 4408 for a handshake that
    /// took too long).
    pub code: u16,
    /// The close reason or what went wrong.
    pub reason: String,
}

/// Close code reported for a handshake that did not complete within the connect timeout
/// (client-side only; never sent).
pub const HANDSHAKE_TIMEOUT: u16 = 4408;

/// How long a connection must stay up, with its subscriptions confirmed, before it counts as
/// healthy and the reconnect backoff starts over.
const HEALTHY_AFTER_MS: f64 = 5_000.0;

/// Something for the glue to do.
#[derive(Debug, PartialEq)]
pub enum Effect<R> {
    /// Open a WebSocket to this URL (closing any previous one).
    Connect(String),
    /// Close the socket for good.
    CloseSocket,
    /// Call [`Machine::reconnect`] after this delay.
    ReconnectAfter(Duration),
    /// Send this text frame.
    Send(String),
    /// Settle an API call successfully.
    Resolve(R, Resolution),
    /// Settle an API call with an error.
    Reject(R, ClientError),
    /// New entries for a channel, in order, never seen before: persist and emit `messages`.
    Messages(String, Vec<Entry>),
    /// Entries a consumer group delivered (with delivery counts): emit `messages` with the group.
    /// Not persisted and not deduplicated: a redelivery is meant to be seen again.
    GroupMessages(String, String, Vec<(Entry, u64)>),
    /// A transient broadcast for a channel (its JSON text): emit `broadcast`.
    Broadcast(String, String),
    /// The connection state changed: emit `state`.
    State(State),
    /// An attempt to connect failed before the connection was usable: emit `connect_error`.
    ConnectFailed(Attempt),
    /// Emit `connect` with the URL.
    Connected(String),
    /// Emit `disconnect` with the close code and reason.
    Disconnected(u16, String),
    /// Emit `error`.
    Error(ClientError),
    /// The stream lost entries this client had (its resume offset was ahead of the stream): the
    /// channel's stored history no longer matches it and is discarded.
    HistoryLost(String),
    /// A publish now waits for the server: persist it until [`Effect::Settled`] names its key.
    Outboxed(Publication),
    /// The publish with this idempotency key left the outbox (answered, cancelled, abandoned).
    Settled(String),
    /// A publish restored from storage (its call belonged to an earlier page) was answered:
    /// its key, channel and outcome.
    Restored(String, String, Result<StreamId, ClientError>),
    /// Get a token (the `token` option, or a call of `getToken`) and pass it to
    /// [`Machine::token`].
    FetchToken,
    /// The server accepted a token valid until this Unix time (seconds): with `getToken`, fetch
    /// a fresh one after [`refresh_delay`] and pass it to [`Machine::token`] again.
    TokenAccepted(u64),
}

/// How long before a token expiring at `expires` (Unix seconds) to refresh it, at `now_ms`
/// (Unix milliseconds): a minute ahead, or halfway through a shorter remaining life.
pub fn refresh_delay(expires: u64, now_ms: f64) -> Duration {
    let left_ms = (expires as f64 * 1000.0 - now_ms).max(0.0);
    let margin_ms = (left_ms / 2.0).min(60_000.0);
    Duration::from_millis((left_ms - margin_ms) as u64)
}

/// Tunables of the state machine.
#[derive(Debug, Clone)]
pub struct Settings {
    /// WebSocket URLs (`ws://` or `wss://`), tried in turn.
    pub targets: Vec<String>,
    /// First reconnect delay ceiling.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Publishes that may wait for a connection.
    pub max_queue: usize,
    /// Whether the client has a token (or a way to get one): then every connection
    /// authenticates before it resubscribes.
    pub authenticate: bool,
    /// Longest an attempt may take to open its socket (and authenticate) before the next target
    /// is tried.
    pub connect_timeout: Duration,
    /// Longest a request waits for its reply before its call fails with `timeout`.
    pub request_timeout: Duration,
    /// Random, unique to this client: its publishes' idempotency keys are `<client_id>-<n>`.
    pub client_id: String,
}

/// A publish, kept with its idempotency key until the server answered: a connection that drops
/// first makes it go out again with the same key, and the server stores it once.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The channel published to.
    pub channel: String,
    /// Field/value pairs, values encoded.
    pub fields: Vec<String>,
    /// The idempotency key: `<client id>-<n>`.
    pub key: String,
    /// When it was made (ms since the epoch, as of the machine's clock).
    pub at: f64,
}

/// A publish waiting in the outbox and the call it settles (`None`: restored from storage).
type Waiting<R> = (Publication, Option<R>);

/// A subscription's identity: the channel, and the consumer group for a group membership.
type SubKey = (String, Option<String>);

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Every entry of the channel, resumed by offset.
    Stream,
    /// A share of the channel's entries, as this consumer of the group (the key's group).
    Group { consumer: String },
}

#[derive(Debug)]
struct Subscription<R> {
    kind: Kind,
    /// Where the user asked to start (for a group: where a newly created group starts).
    start: Start,
    /// Streams only: last offset received, or the start the server confirmed; a resubscribe
    /// resumes after it. (A group's position lives in the server.)
    resume: Option<StreamId>,
    /// Calls waiting for the first confirmation.
    waiters: Vec<R>,
    confirmed: bool,
    /// The stream lost entries this subscription was given (a push said `ahead`): the next
    /// entry is taken even below `resume`.
    rewound: bool,
}

impl<R> Subscription<R> {
    fn new(kind: Kind, start: Start, done: R) -> Self {
        Subscription { kind, start, resume: None, waiters: vec![done], confirmed: false, rewound: false }
    }

    fn offset(&self) -> Start {
        self.resume.map_or(self.start, Start::After)
    }
}

#[derive(Debug)]
enum InFlight<R> {
    Subscribe(SubKey),
    Unsubscribe(R),
    Publish(Publication, Option<R>),
    Ack(R),
    Auth,
}

#[derive(Debug, PartialEq, Eq)]
enum Link {
    /// Waiting for the reconnect timer.
    Down,
    Connecting,
    /// The socket is open and the client authenticates before anything else.
    Authenticating,
    Open,
    /// `close()` was called.
    Closed,
}

/// The client state machine.
#[derive(Debug)]
pub struct Machine<R> {
    settings: Settings,
    link: Link,
    target: usize,
    backoff: Backoff,
    next_id: u64,
    /// Requests waiting for their reply, with when they were sent.
    in_flight: Keyed<u64, (InFlight<R>, f64)>,
    queue: VecDeque<Waiting<R>>,
    /// Publishes made so far (numbers their idempotency keys).
    published: u64,
    subscriptions: Keyed<SubKey, Subscription<R>>,
    /// The time (ms) as of the last [`Machine::tick`].
    now: f64,
    /// When the current attempt started (set by the first tick after it started).
    attempt_started: Option<f64>,
    /// When the connection became usable.
    opened_at: Option<f64>,
}

impl<R> Machine<R> {
    /// A client that is about to connect: carry out the returned effects.
    pub fn start(settings: Settings) -> (Self, Vec<Effect<R>>) {
        let backoff = Backoff::new(settings.backoff_base, settings.backoff_max);
        let url = settings.targets[0].clone();
        let core = Machine {
            settings,
            link: Link::Connecting,
            target: 0,
            backoff,
            next_id: 0,
            in_flight: Keyed::new(),
            queue: VecDeque::new(),
            published: 0,
            subscriptions: Keyed::new(),
            now: 0.0,
            attempt_started: None,
            opened_at: None,
        };
        (core, vec![Effect::State(State::Connecting), Effect::Connect(url)])
    }

    /// Where the connection stands.
    pub fn state(&self) -> State {
        match self.link {
            Link::Connecting | Link::Authenticating => State::Connecting,
            Link::Open => State::Connected,
            Link::Down => State::Disconnected,
            Link::Closed => State::Closed,
        }
    }

    /// The clock: call about once a second with the time in ms (`random` uniform in `[0, 1)`
    /// for the jitter). Fails requests that waited longer than the request timeout, gives up on
    /// an attempt that takes longer than the connect timeout, and starts the backoff over once
    /// the connection proved healthy.
    pub fn tick(&mut self, now_ms: f64, random: f64) -> Vec<Effect<R>> {
        self.now = now_ms;
        let mut effects = Vec::new();
        let limit = self.settings.request_timeout.as_millis() as f64;
        // In the order they were sent.
        let expired: Vec<u64> =
            self.in_flight.iter().filter(|(_, (_, sent))| now_ms - sent >= limit).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some((InFlight::Subscribe(key), sent)) = self.in_flight.get_mut(&id) {
                // The callers hear of the timeout, but the request stays in flight: a late
                // confirmation still sets where the subscription resumes.
                *sent = f64::INFINITY;
                let key = key.clone();
                let error = self.timeout_error("").on(&key.0);
                if let Some(subscription) = self.subscriptions.get_mut(&key) {
                    effects.extend(subscription.waiters.drain(..).map(|w| Effect::Reject(w, error.clone())));
                }
                continue;
            }
            let (pending, _) = self.in_flight.remove(&id).expect("listed above");
            effects.extend(self.timed_out(pending));
        }
        match self.link {
            Link::Connecting | Link::Authenticating => {
                let started = *self.attempt_started.get_or_insert(now_ms);
                let timeout = self.settings.connect_timeout;
                if now_ms - started >= timeout.as_millis() as f64 {
                    let reason = format!("the connection was not ready within {} ms", timeout.as_millis() as u64);
                    effects.extend(self.closed(HANDSHAKE_TIMEOUT, &reason, random));
                }
            }
            Link::Open => {
                let healthy = self.opened_at.is_some_and(|at| now_ms - at >= HEALTHY_AFTER_MS)
                    && self.subscriptions.iter().all(|(_, s)| s.confirmed);
                if healthy {
                    self.backoff.reset();
                    self.opened_at = None;
                }
            }
            Link::Down | Link::Closed => {}
        }
        effects
    }

    fn timeout_error(&self, what: &str) -> ClientError {
        let ms = self.settings.request_timeout.as_millis() as u64;
        ClientError::new("timeout", format!("no reply from the server within {ms} ms{what}"))
    }

    /// A request (other than a subscription, which `tick` keeps in flight) got no reply in time:
    /// its call fails with `timeout`.
    fn timed_out(&mut self, pending: InFlight<R>) -> Vec<Effect<R>> {
        let error = |what: &str| self.timeout_error(what);
        match pending {
            InFlight::Publish(publication, done) => {
                settle(publication, done, Err(error(": the message may or may not have been stored")))
            }
            InFlight::Ack(done) => vec![Effect::Reject(done, error(": unacknowledged entries come back"))],
            InFlight::Unsubscribe(done) => vec![Effect::Resolve(done, Resolution::Unsubscribed)],
            // Kept in flight by `tick`, never handed here.
            InFlight::Subscribe(_) => Vec::new(),
            InFlight::Auth => {
                let error = error(" to the token");
                self.auth_failed(error)
            }
        }
    }

    /// The URL currently used (or last tried).
    pub fn target(&self) -> &str {
        &self.settings.targets[self.target]
    }

    /// True while a socket is open.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Open
    }

    /// Channels subscribed (confirmed or not).
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.iter().filter(|((_, group), _)| group.is_none()).map(|((channel, _), _)| channel.as_str())
    }

    fn request(&mut self, request: Request, pending: InFlight<R>) -> Effect<R> {
        self.next_id = (self.next_id + 1) % redistribute_protocol::request::MAX_ID;
        self.in_flight.insert(self.next_id, (pending, self.now));
        Effect::Send(wire::encode(self.next_id, &request))
    }

    fn send_subscribe(&mut self, key: &SubKey) -> Effect<R> {
        let subscription = self.subscriptions.get_mut(key).expect("subscribed before sending");
        let (channel, start) = (key.0.clone(), subscription.offset());
        let request = match (&subscription.kind, &key.1) {
            (Kind::Group { consumer }, Some(group)) => {
                Request::JoinGroup { channel, group: group.clone(), consumer: consumer.clone(), start }
            }
            _ => Request::Subscribe { channel, start },
        };
        self.request(request, InFlight::Subscribe(key.clone()))
    }

    /// Registers a subscription, or waits for (or reports) the existing one with that key.
    fn add(&mut self, key: SubKey, kind: Kind, start: Start, done: R) -> Vec<Effect<R>> {
        if self.link == Link::Closed {
            return vec![Effect::Reject(done, closed())];
        }
        if let Some(existing) = self.subscriptions.get_mut(&key) {
            if existing.confirmed {
                return vec![Effect::Resolve(done, Resolution::Subscribed)];
            }
            existing.waiters.push(done);
            return Vec::new();
        }
        self.subscriptions.insert(key.clone(), Subscription::new(kind, start, done));
        if self.link == Link::Open { vec![self.send_subscribe(&key)] } else { Vec::new() }
    }

    /// `subscribe(channel, offset)`. Without an explicit offset, `stored` (the last offset kept
    /// in storage) is resumed from, else `$`. Subscribing to a channel already subscribed
    /// resolves once it is confirmed and keeps its offset.
    pub fn subscribe(
        &mut self,
        channel: &str,
        offset: Option<Start>,
        stored: Option<StreamId>,
        done: R,
    ) -> Vec<Effect<R>> {
        let start = offset.or(stored.map(Start::After)).unwrap_or(Start::Latest);
        self.add((channel.to_owned(), None), Kind::Stream, start, done)
    }

    /// `subscribe(channel, { group, consumer })`: join a consumer group and receive a share of
    /// its entries. Rejoined after every reconnect (the server then redelivers what this consumer
    /// had not acknowledged).
    pub fn join_group(&mut self, channel: &str, group: &str, consumer: &str, start: Start, done: R) -> Vec<Effect<R>> {
        let kind = Kind::Group { consumer: consumer.to_owned() };
        self.add((channel.to_owned(), Some(group.to_owned())), kind, start, done)
    }

    /// Ends a subscription: deliveries stop; calls still waiting for it fail.
    fn remove(&mut self, key: SubKey, done: R) -> Vec<Effect<R>> {
        let Some(subscription) = self.subscriptions.remove(&key) else {
            return vec![Effect::Resolve(done, Resolution::Unsubscribed)];
        };
        let mut effects: Vec<Effect<R>> = subscription
            .waiters
            .into_iter()
            .map(|w| {
                Effect::Reject(
                    w,
                    ClientError::new("unsubscribed", "unsubscribed before the server confirmed").on(&key.0),
                )
            })
            .collect();
        if self.link == Link::Open {
            let request = match key {
                (channel, None) => Request::Unsubscribe { channel },
                (channel, Some(group)) => Request::LeaveGroup { channel, group },
            };
            effects.push(self.request(request, InFlight::Unsubscribe(done)));
        } else {
            effects.push(Effect::Resolve(done, Resolution::Unsubscribed));
        }
        effects
    }

    /// `unsubscribe(channel)`.
    pub fn unsubscribe(&mut self, channel: &str, done: R) -> Vec<Effect<R>> {
        self.remove((channel.to_owned(), None), done)
    }

    /// `unsubscribe(channel, { group })`: leave the group (unacknowledged entries stay pending).
    pub fn leave_group(&mut self, channel: &str, group: &str, done: R) -> Vec<Effect<R>> {
        self.remove((channel.to_owned(), Some(group.to_owned())), done)
    }

    /// `publish(channel, fields)`, with `fields` already validated and encoded.
    pub fn publish(&mut self, channel: &str, fields: Vec<String>, done: R) -> Vec<Effect<R>> {
        self.publish_keyed(channel, fields, None, done)
    }

    /// `publish` with the caller's idempotency key (a tab relaying its publish to the leading
    /// tab, see the package's tab sharing). When a publish with that key already waits with no
    /// call to settle (restored from storage, where the previous leading tab saved it), the call
    /// settles with it instead of publishing again.
    pub fn publish_as(&mut self, key: String, channel: &str, fields: Vec<String>, done: R) -> Vec<Effect<R>> {
        let queued = self.queue.iter_mut().map(|(p, d)| (&*p, d));
        let sent = self.in_flight.values_mut().filter_map(|(pending, _)| match pending {
            InFlight::Publish(p, d) => Some((&*p, d)),
            _ => None,
        });
        if let Some((_, waiting)) = queued.chain(sent).find(|(p, d)| p.key == key && d.is_none()) {
            *waiting = Some(done);
            return Vec::new();
        }
        self.publish_keyed(channel, fields, Some(key), done)
    }

    fn publish_keyed(&mut self, channel: &str, fields: Vec<String>, key: Option<String>, done: R) -> Vec<Effect<R>> {
        match self.link {
            Link::Closed => vec![Effect::Reject(done, closed())],
            Link::Open => {
                let publication = self.publication(channel, fields, key);
                vec![Effect::Outboxed(publication.clone()), self.send_publish(publication, Some(done))]
            }
            Link::Down | Link::Connecting | Link::Authenticating if self.queue.len() >= self.settings.max_queue => {
                let max = self.settings.max_queue;
                vec![Effect::Reject(
                    done,
                    ClientError::new("queue_full", format!("{max} publishes already wait for a connection"))
                        .on(channel),
                )]
            }
            Link::Down | Link::Connecting | Link::Authenticating => {
                let publication = self.publication(channel, fields, key);
                self.queue.push_back((publication.clone(), Some(done)));
                vec![Effect::Outboxed(publication)]
            }
        }
    }

    /// Publishes an earlier page persisted and never had answered: they go out first, in the
    /// order given, with their keys (so one the server already stored is not stored again), and
    /// their outcomes are reported by [`Effect::Restored`]. Call before anything is published.
    pub fn restore(&mut self, publications: Vec<Publication>) -> Vec<Effect<R>> {
        let mut effects = Vec::new();
        for publication in publications {
            if self.link == Link::Open {
                effects.push(self.send_publish(publication, None));
            } else {
                self.queue.push_back((publication, None));
            }
        }
        effects
    }

    /// Publishes the server has not answered, oldest first, each with whether it was sent (a
    /// sent one can no longer be cancelled).
    pub fn outbox(&self) -> Vec<(&Publication, bool)> {
        let sent = self.in_flight.iter().filter_map(|(_, (pending, _))| match pending {
            InFlight::Publish(publication, _) => Some((publication, true)),
            _ => None,
        });
        sent.chain(self.queue.iter().map(|(publication, _)| (publication, false))).collect()
    }

    /// How many publishes the server has not answered.
    pub fn outbox_len(&self) -> usize {
        self.queue.len() + self.in_flight.iter().filter(|(_, (p, _))| matches!(p, InFlight::Publish(..))).count()
    }

    /// `cancel(id)`: takes a publish that was not sent yet out of the outbox; its call fails
    /// with `cancelled`. `None` when no unsent publish has that key.
    pub fn cancel(&mut self, key: &str) -> Option<Vec<Effect<R>>> {
        let index = self.queue.iter().position(|(p, _)| p.key == key)?;
        let (publication, done) = self.queue.remove(index).expect("found above");
        let error = ClientError::new("cancelled", "the publish was cancelled before it was sent");
        Some(settle(publication, done, Err(error)))
    }

    fn publication(&mut self, channel: &str, fields: Vec<String>, key: Option<String>) -> Publication {
        let key = key.unwrap_or_else(|| {
            self.published += 1;
            format!("{}-{}", self.settings.client_id, self.published)
        });
        Publication { channel: channel.to_owned(), fields, key, at: self.now }
    }

    fn send_publish(&mut self, publication: Publication, done: Option<R>) -> Effect<R> {
        let request = Request::Publish {
            channel: publication.channel.clone(),
            fields: publication.fields.clone(),
            idempotency_key: publication.key.clone(),
        };
        self.request(request, InFlight::Publish(publication, done))
    }

    /// `ack(channel, group, offsets)`: acknowledge deliveries. Needs a connection: while
    /// disconnected it rejects with `disconnected` (the entries stay pending and come back).
    pub fn ack(&mut self, channel: &str, group: &str, offsets: Vec<StreamId>, done: R) -> Vec<Effect<R>> {
        match self.link {
            Link::Closed => vec![Effect::Reject(done, closed())],
            Link::Open => {
                let request = Request::Ack { channel: channel.to_owned(), group: group.to_owned(), offsets };
                vec![self.request(request, InFlight::Ack(done))]
            }
            Link::Down | Link::Connecting | Link::Authenticating => vec![Effect::Reject(
                done,
                ClientError::new("disconnected", "not connected: the entries stay pending and will be delivered again")
                    .on(channel),
            )],
        }
    }

    /// The socket opened: authenticate first if the client has a token, then resubscribe
    /// everything and send queued publishes in order.
    pub fn opened(&mut self) -> Vec<Effect<R>> {
        if self.link == Link::Closed {
            return Vec::new();
        }
        // The backoff starts over only once the connection proved healthy (see `tick`): a
        // server that accepts and closes at once is not retried at full speed.
        if self.settings.authenticate {
            self.link = Link::Authenticating;
            return vec![Effect::FetchToken];
        }
        self.ready()
    }

    /// The connection is usable: tell the app, resubscribe, send what waited.
    fn ready(&mut self) -> Vec<Effect<R>> {
        self.link = Link::Open;
        self.attempt_started = None;
        self.opened_at = Some(self.now);
        let mut effects = vec![Effect::State(State::Connected), Effect::Connected(self.target().to_owned())];
        for key in self.subscriptions.keys() {
            effects.push(self.send_subscribe(&key));
        }
        while let Some((publication, done)) = self.queue.pop_front() {
            effects.push(self.send_publish(publication, done));
        }
        effects
    }

    /// A token to authenticate the connection with, or why none could be had. Also refreshes
    /// an open connection's token (after [`Effect::TokenAccepted`]).
    pub fn token(&mut self, token: Result<String, ClientError>) -> Vec<Effect<R>> {
        if !matches!(self.link, Link::Authenticating | Link::Open) {
            return Vec::new(); // the socket went away meanwhile; the next one fetches again
        }
        match token {
            Ok(token) => vec![self.request(Request::Auth { token }, InFlight::Auth)],
            Err(error) => self.auth_failed(error),
        }
    }

    /// Time to refresh the token: fetch a fresh one if the connection is open.
    pub fn refresh(&mut self) -> Vec<Effect<R>> {
        if self.link == Link::Open && self.settings.authenticate { vec![Effect::FetchToken] } else { Vec::new() }
    }

    /// Authentication failed: calls that waited for this connection fail with the reason, and
    /// the connection goes on without a token (confirmed subscriptions are re-sent; the server
    /// refuses what needs one).
    fn auth_failed(&mut self, error: ClientError) -> Vec<Effect<R>> {
        let mut effects = vec![Effect::Error(error.clone())];
        if self.link != Link::Authenticating {
            return effects; // a refresh failed: the server closes with 4001 at expiry
        }
        for (publication, done) in std::mem::take(&mut self.queue) {
            let error = error.clone().on(&publication.channel);
            effects.extend(settle(publication, done, Err(error)));
        }
        for (key, subscription) in self.subscriptions.take() {
            if subscription.confirmed {
                self.subscriptions.insert(key, subscription);
            } else {
                let error = error.clone().on(&key.0);
                effects.extend(subscription.waiters.into_iter().map(|w| Effect::Reject(w, error.clone())));
            }
        }
        effects.extend(self.ready());
        effects
    }

    /// A text frame arrived.
    pub fn received(&mut self, text: &str) -> Vec<Effect<R>> {
        match wire::decode(text) {
            Ok(Frame::Reply { id, outcome }) => self.on_reply(id, outcome.map_err(ClientError::from)),
            Ok(Frame::Push { channel, messages, truncated, ahead, broadcast, rejected }) => {
                let mut effects = rejected_entries(&channel, rejected);
                effects.extend(self.on_push(channel, messages, truncated, ahead, broadcast));
                effects
            }
            Ok(Frame::GroupPush { channel, group, messages, rejected }) => {
                let mut effects = rejected_entries(&channel, rejected);
                effects.extend(self.on_group_push(channel, group, messages));
                effects
            }
            Err(e) => {
                let error = ClientError::new(
                    "protocol",
                    format!("unreadable frame from the server ({}): {}", e.reason, clip(text)),
                );
                match e.id {
                    // The call it answers is settled with the error, not left waiting.
                    Some(id) if self.in_flight.contains(&id) => self.on_reply(Some(id), Err(error)),
                    _ => vec![Effect::Error(error)],
                }
            }
        }
    }

    fn on_reply(&mut self, id: Option<u64>, outcome: Result<ReplyBody, ClientError>) -> Vec<Effect<R>> {
        let pending = id.and_then(|id| self.in_flight.remove(&id)).map(|(pending, _)| pending);
        let Some(pending) = pending else {
            // `id: null` (the server could not read a frame) or a reply to nothing we sent.
            return outcome.err().map(Effect::Error).into_iter().collect();
        };
        match (pending, outcome) {
            (InFlight::Publish(publication, done), Ok(body)) => {
                let outcome =
                    body.offset.ok_or_else(|| ClientError::new("protocol", "publish reply without an offset"));
                settle(publication, done, outcome)
            }
            (InFlight::Publish(publication, done), Err(e)) => {
                let error = e.on(&publication.channel);
                settle(publication, done, Err(error))
            }
            (InFlight::Unsubscribe(done), _) => vec![Effect::Resolve(done, Resolution::Unsubscribed)],
            (InFlight::Ack(done), Ok(body)) => vec![Effect::Resolve(done, Resolution::Acked(body.acked.unwrap_or(0)))],
            (InFlight::Ack(done), Err(e)) => vec![Effect::Reject(done, e)],
            (InFlight::Auth, Ok(body)) => {
                let mut effects: Vec<Effect<R>> = body.expires.map(Effect::TokenAccepted).into_iter().collect();
                if self.link == Link::Authenticating {
                    effects.extend(self.ready());
                }
                effects
            }
            (InFlight::Auth, Err(e)) => self.auth_failed(e),
            (InFlight::Subscribe(key), outcome) => {
                let Some(subscription) = self.subscriptions.get_mut(&key) else { return Vec::new() };
                // A stream subscription is confirmed with the offset it starts after: without one
                // the client would not know where to resume.
                let outcome = match outcome {
                    Ok(body) if subscription.kind == Kind::Stream && body.offset.is_none() => {
                        Err(ClientError::new("protocol", "the server confirmed a subscription without its offset"))
                    }
                    other => other,
                };
                match outcome {
                    Ok(body) => {
                        subscription.confirmed = true;
                        // Where the server starts: the requested offset, or the stream's end when
                        // the stream lost what this client had (`ahead`).
                        let lost = subscription.kind == Kind::Stream && body.ahead;
                        if subscription.kind == Kind::Stream && (subscription.resume.is_none() || lost) {
                            subscription.resume = body.offset;
                        }
                        let mut effects: Vec<Effect<R>> = subscription
                            .waiters
                            .drain(..)
                            .map(|w| Effect::Resolve(w, Resolution::Subscribed))
                            .collect();
                        if lost {
                            effects.push(Effect::HistoryLost(key.0.clone()));
                            effects.push(Effect::Error(history_lost(&key.0)));
                        } else if body.truncated {
                            effects.push(Effect::Error(truncated(&key.0)));
                        }
                        effects
                    }
                    Err(e) => {
                        let subscription = self.subscriptions.remove(&key).expect("looked up above");
                        let error = e.on(&key.0);
                        let mut effects: Vec<Effect<R>> =
                            subscription.waiters.into_iter().map(|w| Effect::Reject(w, error.clone())).collect();
                        if subscription.confirmed {
                            // A resubscribe failed after a reconnect: nobody waits, so tell everyone.
                            effects.push(Effect::Error(error));
                        }
                        effects
                    }
                }
            }
        }
    }

    fn on_group_push(&mut self, channel: String, group: String, messages: Vec<(Entry, u64)>) -> Vec<Effect<R>> {
        if !self.subscriptions.contains(&(channel.clone(), Some(group.clone()))) || messages.is_empty() {
            return Vec::new();
        }
        vec![Effect::GroupMessages(channel, group, messages)]
    }

    fn on_push(
        &mut self,
        channel: String,
        messages: Vec<Entry>,
        lost: bool,
        ahead: bool,
        broadcast: Option<String>,
    ) -> Vec<Effect<R>> {
        let Some(subscription) = self.subscriptions.get_mut(&(channel.clone(), None)) else { return Vec::new() };
        let mut effects = Vec::new();
        if lost && ahead {
            // The stream lost entries this client has: its stored history no longer matches, and
            // what follows may come below the offsets it had.
            subscription.rewound = true;
            effects.push(Effect::HistoryLost(channel.clone()));
            effects.push(Effect::Error(history_lost(&channel)));
        } else if lost {
            effects.push(Effect::Error(truncated(&channel)));
        }
        if let Some(message) = broadcast {
            effects.push(Effect::Broadcast(channel.clone(), message));
        }
        // Each entry must follow the last one delivered: a repeat or a step back is the server's
        // error, reported and left out (never delivered nor stored), without losing the rest.
        let mut last = if subscription.rewound { None } else { subscription.resume };
        let mut out_of_order = Vec::new();
        let mut fresh = Vec::with_capacity(messages.len());
        for entry in messages {
            match last {
                Some(previous) if entry.offset <= previous => {
                    out_of_order.push(format!("{} is not after {previous}", entry.offset));
                }
                _ => {
                    last = Some(entry.offset);
                    fresh.push(entry);
                }
            }
        }
        effects.extend(rejected_entries(&channel, out_of_order));
        if let Some(last) = fresh.last() {
            subscription.resume = Some(last.offset);
            subscription.rewound = false;
            effects.push(Effect::Messages(channel, fresh));
        }
        effects
    }

    /// The socket closed (or failed to open). `random` is uniform in `[0, 1)` for the jitter.
    pub fn closed(&mut self, code: u16, reason: &str, random: f64) -> Vec<Effect<R>> {
        if matches!(self.link, Link::Closed | Link::Down) {
            return Vec::new();
        }
        let was_open = self.link == Link::Open;
        self.link = Link::Down;
        self.attempt_started = None;
        self.opened_at = None;
        let mut effects = vec![Effect::State(State::Disconnected)];
        if was_open {
            effects.push(Effect::Disconnected(code, reason.to_owned()));
        } else {
            let attempt = Attempt { target: self.target().to_owned(), code, reason: reason.to_owned() };
            effects.push(Effect::ConnectFailed(attempt));
        }
        // Publishes cut off go out again first, in the order they were sent, with their keys:
        // the server stores each once whether or not it got them before the drop.
        let mut resend = Vec::new();
        for (_, (pending, _)) in self.in_flight.take() {
            match pending {
                // Resent by `opened`.
                InFlight::Subscribe(_) | InFlight::Auth => {}
                InFlight::Publish(publication, done) => resend.push((publication, done)),
                InFlight::Ack(done) => effects.push(Effect::Reject(
                    done,
                    ClientError::new(
                        "disconnected",
                        "the connection dropped before the server answered; unacknowledged entries come back",
                    ),
                )),
                // The server forgets subscriptions with the connection.
                InFlight::Unsubscribe(done) => effects.push(Effect::Resolve(done, Resolution::Unsubscribed)),
            }
        }
        for publication in resend.into_iter().rev() {
            self.queue.push_front(publication);
        }
        if code == redistribute_protocol::close::POLICY_VIOLATION {
            effects.push(Effect::Error(ClientError::new(
                "forbidden",
                format!("the server refused the connection: {reason}"),
            )));
        }
        self.target = (self.target + 1) % self.settings.targets.len();
        effects.push(Effect::ReconnectAfter(self.backoff.next_delay(random)));
        effects
    }

    /// The reconnect timer fired.
    pub fn reconnect(&mut self) -> Vec<Effect<R>> {
        if self.link != Link::Down {
            return Vec::new();
        }
        self.link = Link::Connecting;
        vec![Effect::State(State::Connecting), Effect::Connect(self.target().to_owned())]
    }

    /// `close()`: everything pending fails with `closed`, the outbox is abandoned; nothing
    /// reconnects.
    pub fn close(&mut self) -> Vec<Effect<R>> {
        self.shut(false)
    }

    /// Like [`Machine::close`], but the outbox stays in storage for whoever takes over (the
    /// next leading tab): the calls fail with `closed`, their publishes are not abandoned.
    pub fn hand_over(&mut self) -> Vec<Effect<R>> {
        self.shut(true)
    }

    fn shut(&mut self, keep_outbox: bool) -> Vec<Effect<R>> {
        if self.link == Link::Closed {
            return Vec::new();
        }
        let leave = |publication, done: Option<R>| match keep_outbox {
            true => done.map(|done| Effect::Reject(done, closed())).into_iter().collect(),
            false => settle(publication, done, Err(closed())),
        };
        self.link = Link::Closed;
        let mut effects = vec![Effect::CloseSocket, Effect::State(State::Closed)];
        for (_, (pending, _)) in self.in_flight.take() {
            match pending {
                InFlight::Subscribe(_) | InFlight::Auth => {}
                InFlight::Unsubscribe(done) => effects.push(Effect::Resolve(done, Resolution::Unsubscribed)),
                InFlight::Publish(publication, done) => effects.extend(leave(publication, done)),
                InFlight::Ack(done) => effects.push(Effect::Reject(done, closed())),
            }
        }
        // A page that is closed (not `close()`d) keeps its outbox for the next one.
        for (publication, done) in std::mem::take(&mut self.queue) {
            effects.extend(leave(publication, done));
        }
        for (_, subscription) in self.subscriptions.take() {
            effects.extend(subscription.waiters.into_iter().map(|w| Effect::Reject(w, closed())));
        }
        effects
    }
}

/// A publish leaves the outbox with `outcome`: its call settles, or, for one restored from
/// storage, [`Effect::Restored`] reports it.
fn settle<R>(publication: Publication, done: Option<R>, outcome: Result<StreamId, ClientError>) -> Vec<Effect<R>> {
    let Publication { channel, key, .. } = publication;
    let told = match (done, outcome) {
        (Some(done), Ok(offset)) => Effect::Resolve(done, Resolution::Published(offset)),
        (Some(done), Err(error)) => Effect::Reject(done, error),
        (None, outcome) => Effect::Restored(key.clone(), channel, outcome),
    };
    vec![Effect::Settled(key), told]
}

/// One `protocol` error for the entries of a push that were left out, if any.
fn rejected_entries<R>(channel: &str, reasons: Vec<String>) -> Vec<Effect<R>> {
    if reasons.is_empty() {
        return Vec::new();
    }
    let message = format!(
        "the server sent {} unusable entr{} of \"{channel}\", left out: {}",
        reasons.len(),
        if reasons.len() == 1 { "y" } else { "ies" },
        reasons.join("; ")
    );
    vec![Effect::Error(ClientError::new("protocol", message).on(channel))]
}

/// The first 200 characters of a frame, for error messages.
fn clip(text: &str) -> &str {
    text.char_indices().nth(200).map_or(text, |(i, _)| &text[..i])
}

fn closed() -> ClientError {
    ClientError::new("closed", "the client was closed")
}

fn truncated(channel: &str) -> ClientError {
    ClientError::new(
        "truncated",
        format!("messages of \"{channel}\" after the resume point were trimmed before delivery"),
    )
    .on(channel)
}

fn history_lost(channel: &str) -> ClientError {
    ClientError::new(
        "truncated",
        format!(
            "the server no longer has the messages of \"{channel}\" this client had (its storage lost them): the subscription starts again at the stream's end, and the stored messages were discarded"
        ),
    )
    .on(channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stream_that_lost_what_the_client_had_restarts_the_subscription_at_its_end() {
        let mut core = open();
        core.subscribe("chat", None, Some(StreamId::new(900, 0)), 1);
        let effects = core.received(r#"{"id":1,"ok":{"offset":"0-0","truncated":true,"reason":"ahead"}}"#);
        assert!(effects.contains(&Effect::HistoryLost("chat".into())), "{effects:?}");
        assert!(effects.iter().any(|e| matches!(e, Effect::Error(e) if e.code == "truncated")));
        // New entries, below the old resume point, are delivered.
        let effects = core.received(r#"{"channel":"chat","messages":[{"offset":"5-0","fields":["k","v"]}]}"#);
        assert!(matches!(&effects[..], [Effect::Messages(_, e)] if e[0].offset == StreamId::new(5, 0)), "{effects:?}");
    }

    #[test]
    fn a_live_subscription_whose_stream_lost_delivered_entries_goes_on_below_them() {
        let mut core = open();
        core.subscribe("chat", Some(Start::Latest), None, 1);
        core.received(r#"{"id":1,"ok":{"offset":"10-0"}}"#);
        core.received(r#"{"channel":"chat","messages":[{"offset":"20-0","fields":["k","v"]}]}"#);
        // A failover lost 20-0: the server says so, and continues after the stream's new end.
        let effects = core.received(r#"{"channel":"chat","truncated":true,"reason":"ahead"}"#);
        assert!(effects.contains(&Effect::HistoryLost("chat".into())), "{effects:?}");
        let effects = core.received(r#"{"channel":"chat","messages":[{"offset":"15-0","fields":["k","w"]}]}"#);
        assert!(matches!(&effects[..], [Effect::Messages(_, e)] if e[0].offset == StreamId::new(15, 0)), "{effects:?}");
        // Order is checked again from there.
        let effects = core.received(r#"{"channel":"chat","messages":[{"offset":"15-0","fields":["k","w"]}]}"#);
        assert!(matches!(&effects[..], [Effect::Error(e)] if e.code == "protocol"), "{effects:?}");
    }

    fn settings() -> Settings {
        Settings {
            targets: vec!["ws://a/".into(), "ws://b/".into()],
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_queue: 2,
            authenticate: false,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            client_id: "c1".into(),
        }
    }

    fn sent(effects: &[Effect<u32>]) -> Vec<serde_json::Value> {
        effects
            .iter()
            .filter_map(|e| if let Effect::Send(t) = e { Some(serde_json::from_str(t).unwrap()) } else { None })
            .collect()
    }

    /// What the app hears: the effects without the outbox's bookkeeping.
    fn heard(effects: Vec<Effect<u32>>) -> Vec<Effect<u32>> {
        effects.into_iter().filter(|e| !matches!(e, Effect::Outboxed(_) | Effect::Settled(_))).collect()
    }

    fn queued(effects: &[Effect<u32>]) -> bool {
        matches!(effects, [Effect::Outboxed(_)])
    }

    fn open() -> Machine<u32> {
        let (mut core, effects) = Machine::start(settings());
        assert_eq!(effects, vec![Effect::State(State::Connecting), Effect::Connect("ws://a/".into())]);
        core.opened();
        core
    }

    #[test]
    fn subscribe_waits_for_confirmation_and_records_the_start() {
        let mut core = open();
        let effects = core.subscribe("chat", None, None, 1);
        assert_eq!(sent(&effects), vec![json!({"id": 1, "op": "subscribe", "channel": "chat", "offset": "$"})]);
        let effects = core.received(r#"{"id":1,"ok":{"offset":"5-0"}}"#);
        assert_eq!(effects, vec![Effect::Resolve(1, Resolution::Subscribed)]);
        // Subscribing again resolves at once.
        assert_eq!(core.subscribe("chat", None, None, 2), vec![Effect::Resolve(2, Resolution::Subscribed)]);
    }

    #[test]
    fn stored_offset_is_resumed_unless_an_offset_is_given() {
        let mut core = open();
        let effects = core.subscribe("a", None, Some(StreamId::new(7, 1)), 1);
        assert_eq!(sent(&effects)[0]["offset"], "7-1");
        let effects = core.subscribe("b", Some(Start::After(StreamId::ZERO)), Some(StreamId::new(7, 1)), 2);
        assert_eq!(sent(&effects)[0]["offset"], "0-0");
    }

    #[test]
    fn reconnect_resubscribes_after_the_last_offset_and_drops_duplicates() {
        let mut core = open();
        core.subscribe("chat", None, None, 1);
        core.received(r#"{"id":1,"ok":{"offset":"5-0"}}"#);
        let effects = core.received(r#"{"channel":"chat","messages":[{"offset":"6-0","fields":["k","v"]}]}"#);
        assert!(matches!(&effects[0], Effect::Messages(c, e) if c == "chat" && e.len() == 1));

        let effects = core.closed(1006, "", 0.5);
        assert_eq!(effects[..2], [Effect::State(State::Disconnected), Effect::Disconnected(1006, String::new())]);
        assert_eq!(effects.last(), Some(&Effect::ReconnectAfter(Duration::from_millis(50))));
        let effects = core.reconnect();
        assert_eq!(effects, [Effect::State(State::Connecting), Effect::Connect("ws://b/".into())], "the next target");
        let effects = core.opened();
        assert_eq!(effects[..2], [Effect::State(State::Connected), Effect::Connected("ws://b/".into())]);
        assert_eq!(sent(&effects), vec![json!({"id": 2, "op": "subscribe", "channel": "chat", "offset": "6-0"})]);
        core.received(r#"{"id":2,"ok":{"offset":"6-0"}}"#);
        let effects = core.received(r#"{"channel":"chat","messages":[{"offset":"6-0","fields":["k","v"]},{"offset":"7-0","fields":["k","w"]}]}"#);
        let [Effect::Error(error), Effect::Messages(_, entries)] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!(entries.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![StreamId::new(7, 0)]);
        assert_eq!(error.code, "protocol", "a repeat is the server's error: reported, left out");
    }

    #[test]
    fn entries_out_of_order_or_repeated_are_reported_and_left_out_but_their_neighbours_delivered() {
        let mut core = open();
        core.subscribe("chat", None, None, 1);
        core.received(r#"{"id":1,"ok":{"offset":"5-0"}}"#);
        let push = r#"{"channel":"chat","messages":[
            {"offset":"8-0","fields":["k","a"]},{"offset":"7-0","fields":["k","b"]},{"offset":"9-0","fields":["k","c"]},
            {"offset":"9-0","fields":["k","d"]},{"offset":"x","fields":["k","e"]},{"offset":"10-0","fields":["k"]},
            {"offset":"11-0","fields":["k","f"]}]}"#;
        let effects = core.received(push);
        let delivered: Vec<StreamId> = effects
            .iter()
            .filter_map(|e| if let Effect::Messages(_, entries) = e { Some(entries) } else { None })
            .flatten()
            .map(|e| e.offset)
            .collect();
        assert_eq!(delivered, [StreamId::new(8, 0), StreamId::new(9, 0), StreamId::new(11, 0)]);
        let errors: Vec<&ClientError> =
            effects.iter().filter_map(|e| if let Effect::Error(e) = e { Some(e) } else { None }).collect();
        assert_eq!(errors.len(), 2, "malformed entries, then out-of-order ones: {errors:?}");
        assert!(errors.iter().all(|e| e.code == "protocol" && e.channel.as_deref() == Some("chat")));
        assert!(
            errors[1].message.contains("7-0 is not after 8-0") && errors[1].message.contains("9-0 is not after 9-0")
        );
        // The resume point is the last good entry.
        core.closed(1006, "", 0.0);
        core.reconnect();
        assert_eq!(sent(&core.opened())[0]["offset"], "11-0");
    }

    #[test]
    fn a_reply_the_client_cannot_read_settles_its_call() {
        let mut core = open();
        core.publish("chat", vec!["k".into(), "v".into()], 1);
        let effects = heard(core.received(r#"{"id":1,"ok":{"offset":"not an offset"}}"#));
        assert!(matches!(&effects[..], [Effect::Reject(1, e)] if e.code == "protocol"), "{effects:?}");
        // A subscription confirmed without its offset is refused rather than resumed from "$" later.
        core.subscribe("chat", None, None, 2);
        let effects = core.received(r#"{"id":2,"ok":{}}"#);
        assert!(matches!(&effects[..], [Effect::Reject(2, e)] if e.code == "protocol"), "{effects:?}");
        assert!(core.channels().next().is_none());
    }

    #[test]
    fn never_confirmed_subscriptions_resume_from_their_start() {
        let (mut core, _) = Machine::start(settings());
        core.subscribe("chat", Some(Start::After(StreamId::new(3, 0))), None, 1);
        core.closed(1006, "", 0.0);
        core.reconnect();
        assert_eq!(sent(&core.opened())[0]["offset"], "3-0");
    }

    #[test]
    fn publishes_queue_while_disconnected_and_cut_off_ones_go_out_again_with_their_keys() {
        let (mut core, _) = Machine::start(settings());
        assert!(queued(&core.publish("c", vec!["a".into(), "1".into()], 1)));
        assert!(queued(&core.publish("c", vec!["a".into(), "2".into()], 2)));
        let full = core.publish("c", vec!["a".into(), "3".into()], 3);
        assert!(matches!(&full[0], Effect::Reject(3, e) if e.code == "queue_full"));
        let effects = core.opened();
        let frames = sent(&effects);
        assert_eq!(
            frames.iter().map(|f| f["fields"][1].clone()).collect::<Vec<_>>(),
            vec![json!("1"), json!("2")],
            "in order"
        );
        assert_eq!(
            core.received(r#"{"id":1,"ok":{"offset":"9-0"}}"#),
            vec![Effect::Settled("c1-1".into()), Effect::Resolve(1, Resolution::Published(StreamId::new(9, 0)))]
        );
        // #2 is cut off by the drop: it goes out again, first, with its key, and settles once.
        let effects = core.closed(1001, "restart", 0.0);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Reject(..))), "{effects:?}");
        assert!(queued(&core.publish("c", vec!["a".into(), "4".into()], 4)));
        core.reconnect();
        let resent = sent(&core.opened());
        assert_eq!(resent.iter().map(|f| f["fields"][1].clone()).collect::<Vec<_>>(), vec![json!("2"), json!("4")]);
        assert_eq!(resent[0]["idempotency_key"], frames[1]["idempotency_key"], "the same key");
        assert_ne!(resent[1]["idempotency_key"], frames[1]["idempotency_key"]);
        let id = resent[0]["id"].as_u64().unwrap();
        assert_eq!(
            heard(core.received(&format!(r#"{{"id":{id},"ok":{{"offset":"9-1","duplicate":true}}}}"#))),
            vec![Effect::Resolve(2, Resolution::Published(StreamId::new(9, 1)))]
        );
    }

    fn publication(key: &str, value: &str) -> Publication {
        Publication { channel: "c".into(), fields: vec!["a".into(), value.into()], key: key.into(), at: 5.0 }
    }

    #[test]
    fn every_publish_is_in_the_outbox_until_answered_and_unsent_ones_can_be_cancelled() {
        let (mut core, _) = Machine::start(settings());
        core.tick(1_000.0, 0.0);
        let effects = core.publish("c", vec!["a".into(), "1".into()], 1);
        assert_eq!(effects, vec![Effect::Outboxed(Publication { at: 1_000.0, ..publication("c1-1", "1") })]);
        core.publish("c", vec!["a".into(), "2".into()], 2);
        let listed =
            |core: &Machine<u32>| core.outbox().iter().map(|(p, sent)| (p.key.clone(), *sent)).collect::<Vec<_>>();
        assert_eq!(listed(&core), [("c1-1".into(), false), ("c1-2".into(), false)]);
        // Cancelling an unsent publish fails its call and takes it out; a second time finds nothing.
        let effects = core.cancel("c1-1").expect("unsent");
        assert!(
            matches!(&effects[..], [Effect::Settled(k), Effect::Reject(1, e)] if k == "c1-1" && e.code == "cancelled")
        );
        assert!(core.cancel("c1-1").is_none());
        // Once sent it cannot be cancelled; its answer takes it out.
        core.opened();
        assert_eq!(listed(&core), [("c1-2".into(), true)]);
        assert!(core.cancel("c1-2").is_none());
        let effects = core.received(r#"{"id":1,"ok":{"offset":"9-0"}}"#);
        assert_eq!(effects[0], Effect::Settled("c1-2".into()));
        assert_eq!(core.outbox_len(), 0);
        // Online, a publish is in the outbox while it waits for its reply.
        let effects = core.publish("c", vec!["a".into(), "3".into()], 3);
        assert!(matches!(&effects[..], [Effect::Outboxed(p), Effect::Send(_)] if p.key == "c1-3"));
        assert_eq!(core.outbox_len(), 1);
    }

    #[test]
    fn restored_publishes_go_out_first_with_their_keys_and_report_their_outcome() {
        let (mut core, _) = Machine::start(Settings { max_queue: 3, ..settings() });
        assert!(core.restore(vec![publication("old-7", "x"), publication("old-8", "y")]).is_empty());
        core.publish("c", vec!["a".into(), "new".into()], 1);
        // They count toward `max_queue`.
        assert!(matches!(&core.publish("c", vec![], 0)[..], [Effect::Reject(0, e)] if e.code == "queue_full"));
        let frames = sent(&core.opened());
        let keys: Vec<_> = frames.iter().map(|f| f["idempotency_key"].clone()).collect();
        assert_eq!(keys, [json!("old-7"), json!("old-8"), json!("c1-1")], "restored first, keys kept");
        assert_eq!(
            core.received(r#"{"id":1,"ok":{"offset":"9-0","duplicate":true}}"#),
            vec![
                Effect::Settled("old-7".into()),
                Effect::Restored("old-7".into(), "c".into(), Ok(StreamId::new(9, 0)))
            ]
        );
        let effects = core.received(r#"{"id":2,"error":{"code":"forbidden","message":"no"}}"#);
        assert!(
            matches!(&effects[..], [Effect::Settled(_), Effect::Restored(k, c, Err(e))] if k == "old-8" && c == "c" && e.code == "forbidden"),
            "{effects:?}"
        );
        // Restored while connected: sent at once.
        let effects = core.restore(vec![publication("late-1", "z")]);
        assert_eq!(sent(&effects)[0]["idempotency_key"], "late-1");
    }

    #[test]
    fn a_relayed_publish_with_the_key_of_a_restored_one_settles_with_it() {
        let (mut core, _) = Machine::start(settings());
        core.restore(vec![publication("tab-3", "x")]);
        assert!(core.publish_as("tab-3".into(), "c", vec!["a".into(), "x".into()], 1).is_empty(), "joined");
        let frames = sent(&core.opened());
        assert_eq!(frames.len(), 1, "sent once: {frames:?}");
        let effects = heard(core.received(r#"{"id":1,"ok":{"offset":"4-0"}}"#));
        assert_eq!(effects, vec![Effect::Resolve(1, Resolution::Published(StreamId::new(4, 0)))]);
        // Another key is a new publish, sent with that key.
        let effects = core.publish_as("tab-4".into(), "c", vec!["a".into(), "y".into()], 2);
        assert_eq!(sent(&effects)[0]["idempotency_key"], "tab-4");
    }

    #[test]
    fn handing_over_keeps_the_outbox_for_the_next_leader() {
        let (mut core, _) = Machine::start(settings());
        core.restore(vec![publication("old-1", "x")]);
        core.publish("c", vec!["a".into(), "1".into()], 1);
        let effects = core.hand_over();
        assert!(!effects.iter().any(|e| matches!(e, Effect::Settled(_) | Effect::Restored(..))), "{effects:?}");
        assert!(effects.iter().any(|e| matches!(e, Effect::Reject(1, e) if e.code == "closed")));
    }

    #[test]
    fn close_abandons_the_outbox() {
        let (mut core, _) = Machine::start(settings());
        core.restore(vec![publication("old-1", "x")]);
        core.publish("c", vec!["a".into(), "1".into()], 1);
        let settled: Vec<_> =
            core.close().into_iter().filter_map(|e| if let Effect::Settled(k) = e { Some(k) } else { None }).collect();
        assert_eq!(settled, ["old-1", "c1-1"]);
        assert_eq!(core.outbox_len(), 0);
    }

    #[test]
    fn server_errors_reject_the_call() {
        let mut core = open();
        core.publish("c", vec!["a".into(), "b".into()], 1);
        let effects = heard(core.received(r#"{"id":1,"error":{"code":"forbidden","message":"no"}}"#));
        assert!(matches!(&effects[0], Effect::Reject(1, e) if e.code == "forbidden" && e.message == "no"));
        core.subscribe("x", None, None, 2);
        let effects = core.received(r#"{"id":2,"error":{"code":"bad_request","message":"bad"}}"#);
        assert!(matches!(&effects[0], Effect::Reject(2, e) if e.code == "bad_request"));
        assert_eq!(core.channels().count(), 0);
        let effects = core.received(r#"{"id":null,"error":{"code":"too_large","message":"big"}}"#);
        assert!(matches!(&effects[0], Effect::Error(e) if e.code == "too_large"));
    }

    #[test]
    fn truncation_is_reported() {
        let mut core = open();
        core.subscribe("c", Some(Start::After(StreamId::ZERO)), None, 1);
        let effects = core.received(r#"{"id":1,"ok":{"offset":"0-0","truncated":true}}"#);
        assert!(matches!(&effects[1], Effect::Error(e) if e.code == "truncated"));
        let effects = core.received(r#"{"channel":"c","truncated":true}"#);
        assert!(matches!(&effects[0], Effect::Error(e) if e.code == "truncated"));
    }

    #[test]
    fn unsubscribe_stops_deliveries_and_close_settles_everything() {
        let mut core = open();
        core.subscribe("c", None, None, 1);
        core.received(r#"{"id":1,"ok":{"offset":"1-0"}}"#);
        let effects = core.unsubscribe("c", 2);
        assert_eq!(sent(&effects), vec![json!({"id": 2, "op": "unsubscribe", "channel": "c"})]);
        assert!(core.received(r#"{"channel":"c","messages":[{"offset":"2-0","fields":["k","v"]}]}"#).is_empty());
        core.publish("c", vec!["a".into(), "b".into()], 3);
        let effects = core.close();
        assert_eq!(effects[0], Effect::CloseSocket);
        assert!(effects.iter().any(|e| matches!(e, Effect::Reject(3, err) if err.code == "closed")));
        assert!(effects.iter().any(|e| matches!(e, Effect::Resolve(2, Resolution::Unsubscribed))));
        assert!(core.closed(1000, "", 0.0).is_empty(), "no reconnect after close");
        assert!(matches!(&core.publish("c", vec![], 4)[0], Effect::Reject(4, e) if e.code == "closed"));
    }

    #[test]
    fn group_memberships_deliver_with_counts_and_rejoin_after_reconnects() {
        let mut core = open();
        let effects = core.join_group("jobs", "g", "w1", Start::After(StreamId::ZERO), 1);
        assert_eq!(
            sent(&effects)[0],
            json!({"id": 1, "op": "subscribe", "channel": "jobs", "group": "g", "consumer": "w1", "offset": "0-0"})
        );
        assert_eq!(core.received(r#"{"id":1,"ok":{}}"#), vec![Effect::Resolve(1, Resolution::Subscribed)]);
        let effects = core.received(
            r#"{"channel":"jobs","group":"g","messages":[{"offset":"5-0","fields":["k","v"],"deliveries":2}]}"#,
        );
        let Effect::GroupMessages(channel, group, entries) = &effects[0] else { panic!("{effects:?}") };
        assert_eq!((channel.as_str(), group.as_str(), entries[0].1), ("jobs", "g", 2));
        let effects = core.ack("jobs", "g", vec![StreamId::new(5, 0)], 2);
        assert_eq!(sent(&effects)[0]["op"], "ack");
        assert_eq!(core.received(r#"{"id":2,"ok":{"acked":1}}"#), vec![Effect::Resolve(2, Resolution::Acked(1))]);
        core.closed(1006, "", 0.0);
        assert!(
            matches!(&core.ack("jobs", "g", vec![StreamId::new(6, 0)], 3)[0], Effect::Reject(3, e) if e.code == "disconnected")
        );
        core.reconnect();
        let effects = core.opened();
        assert_eq!(sent(&effects)[0]["group"], "g", "rejoined after the reconnect");
        let effects = core.leave_group("jobs", "g", 4);
        assert_eq!(sent(&effects)[0], json!({"id": 4, "op": "unsubscribe", "channel": "jobs", "group": "g"}));
        assert!(
            core.received(
                r#"{"channel":"jobs","group":"g","messages":[{"offset":"7-0","fields":["k","v"],"deliveries":1}]}"#
            )
            .is_empty()
        );
    }

    #[test]
    fn broadcasts_carry_their_json() {
        let mut core = open();
        core.subscribe("c", None, None, 1);
        core.received(r#"{"id":1,"ok":{"offset":"1-0"}}"#);
        let effects = core.received(r#"{"channel":"c","broadcast":{"typing":["ann"]}}"#);
        assert_eq!(effects, vec![Effect::Broadcast("c".into(), r#"{"typing":["ann"]}"#.into())]);
        let effects = core.received(r#"{"channel":"c","messages":[{"offset":"x","fields":[]}]}"#);
        assert!(matches!(&effects[0], Effect::Error(e) if e.code == "protocol"));
    }

    #[test]
    fn backoff_grows_while_failing_to_connect() {
        let (mut core, _) = Machine::<u32>::start(settings());
        let mut delays = Vec::new();
        for _ in 0..4 {
            let effects = core.closed(1006, "", 1.0);
            let Some(Effect::ReconnectAfter(d)) = effects.last() else { panic!() };
            delays.push(d.as_millis());
            core.reconnect();
        }
        assert_eq!(delays, vec![100, 200, 400, 800]);
        // A connection that opens and closes at once does not start the backoff over...
        core.opened();
        core.tick(1_000.0, 0.0);
        let effects = core.closed(1008, "go away", 1.0);
        assert_eq!(effects.last(), Some(&Effect::ReconnectAfter(Duration::from_millis(1600))), "still growing");
        // ...one that stayed up with its subscriptions confirmed does.
        core.reconnect();
        core.opened();
        core.subscribe("c", None, None, 1);
        core.received(r#"{"id":1,"ok":{"offset":"1-0"}}"#);
        core.tick(3_000.0, 0.0);
        core.tick(8_000.0, 0.0);
        let effects = core.closed(1006, "", 1.0);
        assert_eq!(
            effects.last(),
            Some(&Effect::ReconnectAfter(Duration::from_millis(100))),
            "reset after a healthy one"
        );
    }

    #[test]
    fn every_failed_attempt_is_reported_with_its_target_and_reason_and_states_follow() {
        let (mut core, effects) = Machine::<u32>::start(settings());
        assert_eq!(core.state(), State::Connecting);
        assert_eq!(effects[0], Effect::State(State::Connecting));
        let effects = core.closed(1006, "refused", 0.0);
        assert_eq!(core.state(), State::Disconnected);
        assert_eq!(
            effects[..2],
            [
                Effect::State(State::Disconnected),
                Effect::ConnectFailed(Attempt { target: "ws://a/".into(), code: 1006, reason: "refused".into() })
            ]
        );
        core.reconnect();
        core.opened();
        assert_eq!(core.state(), State::Connected);
        let effects = core.closed(1001, "bye", 0.0);
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::ConnectFailed(_))),
            "a drop after connecting is a disconnect"
        );
        assert!(effects.contains(&Effect::Disconnected(1001, "bye".into())));
        let effects = core.close();
        assert!(effects.contains(&Effect::State(State::Closed)));
        assert_eq!(core.state(), State::Closed);
    }

    #[test]
    fn an_attempt_that_does_not_open_in_time_moves_on_to_the_next_target() {
        let (mut core, _) = Machine::<u32>::start(settings());
        core.tick(0.0, 0.0);
        assert!(core.tick(9_000.0, 0.0).is_empty());
        let effects = core.tick(10_000.0, 0.0);
        assert!(
            matches!(&effects[1], Effect::ConnectFailed(a) if a.code == HANDSHAKE_TIMEOUT && a.target == "ws://a/"),
            "{effects:?}"
        );
        assert!(matches!(effects.last(), Some(Effect::ReconnectAfter(_))));
        assert_eq!(core.reconnect()[1], Effect::Connect("ws://b/".into()));
    }

    #[test]
    fn every_call_settles_a_request_unanswered_fails_with_timeout() {
        let mut core = open();
        core.tick(0.0, 0.0);
        core.publish("c", vec!["k".into(), "v".into()], 1);
        core.subscribe("c", None, None, 2);
        assert!(core.tick(14_000.0, 0.0).is_empty());
        let effects = heard(core.tick(15_000.0, 0.0));
        assert!(
            matches!(&effects[..], [Effect::Reject(1, a), Effect::Reject(2, b)] if a.code == "timeout" && b.code == "timeout"),
            "{effects:?}"
        );
        assert!(core.tick(30_000.0, 0.0).is_empty(), "once");
        // The subscription stays: a late confirmation still sets where it resumes.
        assert!(core.received(r#"{"id":2,"ok":{"offset":"3-0"}}"#).is_empty());
        core.closed(1006, "", 0.0);
        core.reconnect();
        assert_eq!(sent(&core.opened())[0]["offset"], "3-0");
    }

    fn authenticating() -> Machine<u32> {
        let (mut machine, _) = Machine::start(Settings { authenticate: true, ..settings() });
        assert_eq!(machine.opened(), vec![Effect::FetchToken], "a token first");
        machine
    }

    #[test]
    fn authenticates_before_resubscribing_and_publishing() {
        let mut machine = authenticating();
        assert!(machine.subscribe("c", None, None, 1).is_empty(), "waits for the token");
        assert!(queued(&machine.publish("c", vec!["k".into(), "v".into()], 2)));
        assert!(!machine.is_connected());
        let effects = machine.token(Ok("t0k3n".into()));
        assert_eq!(sent(&effects), vec![json!({"id": 1, "op": "auth", "token": "t0k3n"})]);
        let effects = machine.received(r#"{"id":1,"ok":{"user":"ann","expires":1800000000}}"#);
        assert_eq!(effects[0], Effect::TokenAccepted(1_800_000_000));
        assert_eq!(effects[1..3], [Effect::State(State::Connected), Effect::Connected("ws://a/".into())]);
        let ops: Vec<_> = sent(&effects).iter().map(|r| r["op"].clone()).collect();
        assert_eq!(ops, [json!("subscribe"), json!("publish")]);
        assert!(machine.is_connected());
        // A refresh on the open connection does not resubscribe.
        assert_eq!(machine.refresh(), vec![Effect::FetchToken]);
        let effects = machine.token(Ok("fresh".into()));
        assert_eq!(sent(&effects)[0]["op"], "auth");
        let effects = machine.received(r#"{"id":4,"ok":{"user":"ann","expires":1800000600}}"#);
        assert_eq!(effects, vec![Effect::TokenAccepted(1_800_000_600)]);
    }

    #[test]
    fn a_refused_token_fails_the_waiting_calls_and_goes_on_without() {
        let mut machine = authenticating();
        machine.subscribe("c", None, None, 1);
        machine.publish("c", vec!["k".into(), "v".into()], 2);
        machine.token(Ok("bad".into()));
        let effects = machine.received(r#"{"id":1,"error":{"code":"unauthorized","message":"the token has expired"}}"#);
        assert!(matches!(&effects[0], Effect::Error(e) if e.code == "unauthorized"));
        assert!(effects.iter().any(|e| matches!(e, Effect::Reject(2, e) if e.code == "unauthorized")));
        assert!(effects.iter().any(|e| matches!(e, Effect::Reject(1, e) if e.code == "unauthorized")));
        assert!(effects.contains(&Effect::Connected("ws://a/".into())), "usable without a token");
        assert!(sent(&effects).is_empty(), "nothing left to send");
        // No token could be had at all (getToken threw): the same.
        let mut machine = authenticating();
        machine.publish("c", vec!["k".into(), "v".into()], 3);
        let effects = machine.token(Err(ClientError::new("unauthorized", "getToken failed")));
        assert!(effects.iter().any(|e| matches!(e, Effect::Reject(3, e) if e.code == "unauthorized")));
        // A token arriving after its socket closed is dropped.
        let mut machine = authenticating();
        machine.closed(1006, "", 0.0);
        assert!(machine.token(Ok("late".into())).is_empty());
    }

    #[test]
    fn tokens_refresh_ahead_of_expiry() {
        let now = 1_000_000.0 * 1000.0;
        assert_eq!(refresh_delay(1_000_600, now), Duration::from_secs(540), "a minute ahead");
        assert_eq!(refresh_delay(1_000_010, now), Duration::from_secs(5), "halfway when short");
        assert_eq!(refresh_delay(999_000, now), Duration::ZERO, "already expired");
    }
}
