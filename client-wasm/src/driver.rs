//! Carries out the state machine's effects in the browser: opens sockets, arms timers, writes
//! storage, settles promises and emits events.
//!
//! Re-entrancy: user code runs inside event emission (a `messages` listener may call `publish`).
//! [`Client::run`] therefore applies a batch of effects to the client's own state first, releases
//! its borrow, and only then calls out to JavaScript.

use crate::convert::{entries, js_error};
use crate::glue::{BrowserStorage, GlobalListener, Socket, SocketEvent, Timer};
use crate::machine::{ClientError, Effect, Machine, Resolution, refresh_delay};
use crate::store::{Store, StoreProblem};
use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_protocol::Entry;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// Settles one API call's promise.
pub(crate) struct Pending {
    resolve: Function,
    reject: Function,
}

/// A call out to JavaScript, made once the state is released.
enum Outcall {
    Emit(&'static str, Vec<JsValue>),
    Resolve(Pending, JsValue),
    Reject(Pending, JsValue),
    /// Call `getToken` and pass what it resolves to on to the machine.
    FetchToken(Function),
}

/// Where tokens come from.
pub(crate) enum TokenSource {
    /// No token: the connection stays anonymous.
    None,
    /// The `token` option, used for every connection (it cannot be refreshed).
    Fixed(String),
    /// The `getToken` option, called on every connection and ahead of every expiry.
    Fetch(Function),
}

/// The client's state: the machine and what carries out its effects.
pub(crate) struct Inner {
    pub(crate) machine: Machine<Pending>,
    pub(crate) store: Option<Store<BrowserStorage>>,
    socket: Option<Socket>,
    reconnect_timer: Option<Timer>,
    /// Ticks the machine's clock every second (timeouts, backoff) until `close()`.
    clock: Option<Timer>,
    flush_timer: Option<Timer>,
    refresh_timer: Option<Timer>,
    pagehide: Option<GlobalListener>,
    ws_ctor: Function,
    tokens: TokenSource,
    flush_interval_ms: u32,
    /// The outbox size last reported by an `outbox` event.
    outbox_reported: usize,
}

impl Inner {
    /// A client's state before anything ran.
    pub(crate) fn new(
        machine: Machine<Pending>,
        store: Option<Store<BrowserStorage>>,
        ws_ctor: Function,
        tokens: TokenSource,
        flush_interval_ms: u32,
    ) -> Inner {
        Inner {
            machine,
            store,
            socket: None,
            reconnect_timer: None,
            clock: None,
            flush_timer: None,
            refresh_timer: None,
            pagehide: None,
            ws_ctor,
            tokens,
            flush_interval_ms,
            outbox_reported: 0,
        }
    }
}

/// The state shared by the client and its callbacks, plus the emitter.
pub(crate) struct Client {
    pub(crate) inner: RefCell<Inner>,
    emit: Function,
}

/// What one batch of effects leaves to do once the state is released.
type Outcalls = Vec<Outcall>;

impl Client {
    /// A client around `inner`; `emit(event, ...args)` receives every event. Writes buffered
    /// messages before the page goes away when it stores any. Carry out `effects` (the
    /// machine's first ones) with [`Client::run`].
    pub(crate) fn new(inner: Inner, emit: Function) -> Rc<Client> {
        let client = Rc::new(Client { inner: RefCell::new(inner), emit });
        if client.inner.borrow().store.is_some() {
            let weak = Rc::downgrade(&client);
            let listener = GlobalListener::add("pagehide", move |_| {
                if let Some(client) = weak.upgrade() {
                    client.flush();
                }
            });
            client.inner.borrow_mut().pagehide = listener;
        }
        client
    }

    /// Applies effects to the state, then calls out to JavaScript with the borrow released.
    pub(crate) fn run(self: &Rc<Self>, effects: Vec<Effect<Pending>>) {
        let mut out = Outcalls::new();
        {
            let mut inner = self.inner.borrow_mut();
            for effect in effects {
                self.apply(&mut inner, effect, &mut out);
            }
            let waiting = inner.machine.outbox_len();
            if waiting != inner.outbox_reported {
                inner.outbox_reported = waiting;
                out.push(Outcall::Emit("outbox", vec![JsValue::from(waiting as f64)]));
            }
        }
        for outcall in out {
            match outcall {
                Outcall::Emit(event, args) => {
                    let all = Array::of1(&JsValue::from_str(event));
                    for arg in args {
                        all.push(&arg);
                    }
                    // A throwing listener must not break the client; the facade isolates them.
                    let _ = self.emit.apply(&JsValue::NULL, &all);
                }
                Outcall::Resolve(p, value) => drop(p.resolve.call1(&JsValue::NULL, &value)),
                Outcall::Reject(p, error) => drop(p.reject.call1(&JsValue::NULL, &error)),
                Outcall::FetchToken(get_token) => self.fetch_token(&get_token),
            }
        }
    }

    /// Runs the machine's effects of `step` (an API call or an event) with the state borrowed.
    pub(crate) fn step(self: &Rc<Self>, step: impl FnOnce(&mut Inner) -> Vec<Effect<Pending>>) {
        let effects = step(&mut self.inner.borrow_mut());
        self.run(effects);
    }

    fn apply(self: &Rc<Self>, inner: &mut Inner, effect: Effect<Pending>, out: &mut Outcalls) {
        match effect {
            Effect::Connect(url) => self.connect(inner, &url, out),
            Effect::CloseSocket => self.shut_down(inner, out),
            Effect::ReconnectAfter(delay) => self.reconnect_after(inner, delay),
            Effect::Send(text) => {
                if let Some(socket) = &inner.socket
                    && let Err(e) = socket.send(&text)
                {
                    out.push(Outcall::Emit("error", vec![e]));
                }
            }
            Effect::Resolve(pending, resolution) => out.push(Outcall::Resolve(pending, resolved(resolution))),
            Effect::Reject(pending, error) => out.push(Outcall::Reject(pending, js_error(&error))),
            Effect::Messages(channel, received) => {
                self.store(inner, &channel, &received, out);
                out.push(Outcall::Emit("messages", vec![JsValue::from_str(&channel), entries(&received, None).into()]));
            }
            Effect::GroupMessages(channel, group, deliveries) => out.push(group_messages(&channel, &group, deliveries)),
            Effect::Broadcast(channel, json) => {
                let value = js_sys::JSON::parse(&json).unwrap_or(JsValue::NULL);
                out.push(Outcall::Emit("broadcast", vec![JsValue::from_str(&channel), value]));
            }
            Effect::State(state) => out.push(Outcall::Emit("state", vec![JsValue::from_str(state.as_str())])),
            Effect::ConnectFailed(attempt) => {
                let info = Object::new();
                let _ = Reflect::set(&info, &"target".into(), &JsValue::from_str(&attempt.target));
                let _ = Reflect::set(&info, &"code".into(), &JsValue::from(attempt.code));
                let _ = Reflect::set(&info, &"reason".into(), &JsValue::from_str(&attempt.reason));
                out.push(Outcall::Emit("connect_error", vec![info.into()]));
            }
            Effect::Connected(url) => out.push(Outcall::Emit("connect", vec![JsValue::from_str(&url)])),
            Effect::Disconnected(code, reason) => {
                out.push(Outcall::Emit("disconnect", vec![JsValue::from(code), JsValue::from_str(&reason)]));
            }
            Effect::Error(error) => out.push(Outcall::Emit("error", vec![js_error(&error)])),
            Effect::Outboxed(publication) => {
                if let Some(Err(problem)) = inner.store.as_mut().map(|store| store.save_publish(&publication)) {
                    self.apply(inner, problem_effect(&problem), out);
                }
            }
            Effect::Settled(key) => {
                if let Some(store) = &mut inner.store {
                    store.forget_publish(&key);
                }
            }
            Effect::Restored(key, channel, Ok(offset)) => {
                let args = [channel.as_str(), &offset.to_string(), &key].map(JsValue::from_str).to_vec();
                out.push(Outcall::Emit("published", args));
            }
            Effect::Restored(key, _, Err(error)) => {
                let error = js_error(&error);
                let _ = Reflect::set(&error, &"id".into(), &JsValue::from_str(&key));
                out.push(Outcall::Emit("error", vec![error]));
            }
            Effect::HistoryLost(channel) => {
                if let Some(store) = &mut inner.store {
                    store.forget(&channel);
                }
            }
            Effect::FetchToken => match &inner.tokens {
                TokenSource::Fixed(token) => {
                    let effects = inner.machine.token(Ok(token.clone()));
                    for effect in effects {
                        self.apply(inner, effect, out);
                    }
                }
                TokenSource::Fetch(get_token) => out.push(Outcall::FetchToken(get_token.clone())),
                TokenSource::None => {}
            },
            Effect::TokenAccepted(expires) => {
                if matches!(inner.tokens, TokenSource::Fetch(_)) {
                    let delay = refresh_delay(expires, js_sys::Date::now()).as_millis().min(u128::from(u32::MAX));
                    let weak = Rc::downgrade(self);
                    inner.refresh_timer = Some(Timer::after(delay as u32, move || {
                        if let Some(client) = weak.upgrade() {
                            client.step(|inner| inner.machine.refresh());
                        }
                    }));
                }
            }
        }
    }

    /// Calls `getToken` (with the state released) and hands the machine what it resolves to.
    fn fetch_token(self: &Rc<Self>, get_token: &Function) {
        let called = get_token.call0(&JsValue::NULL);
        let client = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let token = match called {
                Ok(value) => JsFuture::from(Promise::resolve(&value)).await,
                Err(thrown) => Err(thrown),
            };
            let token = match token {
                Ok(value) => value.as_string().filter(|t| !t.is_empty()).ok_or_else(|| {
                    ClientError::new("unauthorized", "getToken must return (or resolve to) a non-empty token string")
                }),
                Err(thrown) => Err(ClientError::new("unauthorized", format!("getToken failed: {}", describe(&thrown)))),
            };
            client.step(|inner| inner.machine.token(token));
        });
    }

    /// Opens a socket to `url`; a constructor that throws counts as a failed connection.
    fn connect(self: &Rc<Self>, inner: &mut Inner, url: &str, out: &mut Outcalls) {
        inner.socket = None;
        let weak = Rc::downgrade(self);
        let handler = move |event: SocketEvent| Client::on_socket(&weak, event);
        match Socket::open(&inner.ws_ctor, url, handler) {
            Ok(socket) => inner.socket = Some(socket),
            Err(e) => {
                out.push(Outcall::Emit("error", vec![e]));
                let effects = inner.machine.closed(1006, "could not create the WebSocket", js_sys::Math::random());
                for effect in effects {
                    self.apply(inner, effect, out);
                }
            }
        }
    }

    /// `close()`: drops the socket and every timer and listener, and writes what is buffered.
    fn shut_down(self: &Rc<Self>, inner: &mut Inner, out: &mut Outcalls) {
        inner.socket = None;
        inner.reconnect_timer = None;
        inner.clock = None;
        inner.flush_timer = None;
        inner.refresh_timer = None;
        inner.pagehide = None;
        let problems = inner.store.as_mut().map(Store::flush).unwrap_or_default();
        self.report(inner, &problems, out);
    }

    fn reconnect_after(self: &Rc<Self>, inner: &mut Inner, delay: Duration) {
        inner.socket = None;
        let weak = Rc::downgrade(self);
        inner.reconnect_timer = Some(Timer::after(delay.as_millis() as u32, move || {
            if let Some(client) = weak.upgrade() {
                client.step(|inner| inner.machine.reconnect());
            }
        }));
    }

    /// Buffers received entries for storage and arms the flush timer.
    fn store(self: &Rc<Self>, inner: &mut Inner, channel: &str, entries: &[Entry], out: &mut Outcalls) {
        let Some(store) = &mut inner.store else { return };
        let problems = store.append(channel, entries);
        self.report(inner, &problems, out);
        if inner.flush_timer.is_none() {
            let weak = Rc::downgrade(self);
            inner.flush_timer = Some(Timer::after(inner.flush_interval_ms, move || {
                if let Some(client) = weak.upgrade() {
                    client.flush();
                }
            }));
        }
    }

    /// Storage problems become `error` events.
    fn report(self: &Rc<Self>, inner: &mut Inner, problems: &[StoreProblem], out: &mut Outcalls) {
        for problem in problems {
            self.apply(inner, problem_effect(problem), out);
        }
    }

    fn on_socket(weak: &Weak<Client>, event: SocketEvent) {
        let Some(client) = weak.upgrade() else { return };
        client.step(|inner| match event {
            SocketEvent::Open => inner.machine.opened(),
            SocketEvent::Text(text) => inner.machine.received(&text),
            SocketEvent::Close(code, reason) => inner.machine.closed(code, &reason, js_sys::Math::random()),
        });
    }

    /// Ticks the machine's clock every second until the client is closed.
    pub(crate) fn start_clock(self: &Rc<Self>) {
        let weak = Rc::downgrade(self);
        self.inner.borrow_mut().clock = Some(Timer::after(1000, move || {
            let Some(client) = weak.upgrade() else { return };
            client.step(|inner| inner.machine.tick(js_sys::Date::now(), js_sys::Math::random()));
            if client.inner.borrow().machine.state() != crate::machine::State::Closed {
                client.start_clock();
            }
        }));
    }

    /// Writes buffered messages to storage now.
    pub(crate) fn flush(self: &Rc<Self>) {
        let problems = {
            let mut inner = self.inner.borrow_mut();
            inner.flush_timer = None;
            inner.store.as_mut().map(Store::flush).unwrap_or_default()
        };
        self.run(problems.iter().map(problem_effect).collect());
    }

    /// Returns a promise and the handle that settles it.
    pub(crate) fn promise() -> (Promise, Pending) {
        let mut pending = None;
        let promise = Promise::new(&mut |resolve, reject| pending = Some(Pending { resolve, reject }));
        (promise, pending.expect("the executor runs synchronously"))
    }
}

/// What a settled call resolves with in JavaScript.
fn resolved(resolution: Resolution) -> JsValue {
    match resolution {
        Resolution::Subscribed | Resolution::Unsubscribed => JsValue::TRUE,
        Resolution::Published(offset) => JsValue::from_str(&offset.to_string()),
        Resolution::Acked(n) => JsValue::from(n as f64),
    }
}

/// A consumer group's deliveries as a `messages` event: each entry with its delivery count, and
/// `{ group }` as the third argument.
fn group_messages(channel: &str, group: &str, deliveries: Vec<(Entry, u64)>) -> Outcall {
    let (received, counts): (Vec<Entry>, Vec<u64>) = deliveries.into_iter().unzip();
    let meta = Object::new();
    let _ = Reflect::set(&meta, &"group".into(), &JsValue::from_str(group));
    Outcall::Emit("messages", vec![JsValue::from_str(channel), entries(&received, Some(&counts)).into(), meta.into()])
}

/// What a thrown JavaScript value says.
fn describe(thrown: &JsValue) -> String {
    thrown
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| thrown.as_string())
        .unwrap_or_else(|| "a non-Error value was thrown".to_owned())
}

/// A storage problem as the `error` event it becomes.
pub(crate) fn problem_effect(problem: &StoreProblem) -> Effect<Pending> {
    Effect::Error(ClientError::new(problem.code, problem.message.clone()))
}
