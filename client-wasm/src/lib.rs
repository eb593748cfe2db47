//! The Redistribute client, compiled to WebAssembly.
//!
//! This module holds only the `#[wasm_bindgen]` export, [`WasmClient`], which the npm package's
//! JavaScript facade (`pkg-template/index.js`) wraps into the public `Client` API. The logic lives
//! in plain Rust modules that test natively: [`core`] (requests, subscriptions, reconnects),
//! [`store`] (persistence layout), [`options`]; `glue` is the thin `web-sys` layer.
//!
//! Re-entrancy: user code runs inside event emission (a `messages` listener may call `publish`).
//! The dispatcher therefore applies a batch of effects to its own state first, releases its
//! borrow, and only then calls out to JavaScript.

pub mod core;
mod glue;
pub mod json;
pub mod options;
pub mod store;

use crate::core::{ClientError, Core, Effect, Resolution, Settings};
use crate::glue::{BrowserStorage, GlobalListener, Socket, SocketEvent, Timer};
use crate::options::{Options, websocket_url};
use crate::store::{Store, StoreProblem};
use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_protocol::{Entry, Start};
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;
use wasm_bindgen::prelude::*;

/// Settles one API call's promise.
struct Pending {
    resolve: Function,
    reject: Function,
}

/// An event to hand to the JavaScript emitter once the state is released.
enum Outcall {
    Emit(&'static str, Vec<JsValue>),
    Resolve(Pending, JsValue),
    Reject(Pending, JsValue),
}

struct Inner {
    core: Core<Pending>,
    store: Option<Store<BrowserStorage>>,
    socket: Option<Socket>,
    reconnect_timer: Option<Timer>,
    flush_timer: Option<Timer>,
    _pagehide: Option<GlobalListener>,
    ws_ctor: Function,
    encode: Option<Function>,
    decode: Option<Function>,
    flush_interval_ms: u32,
}

type Shared = Rc<RefCell<Inner>>;

/// The state shared by the client and its callbacks, plus the emitter.
struct Client {
    inner: Shared,
    emit: Function,
}

/// The client behind the npm package's `Client` class. Construct it through the package.
#[wasm_bindgen]
pub struct WasmClient {
    client: Rc<Client>,
}

fn js_error(error: &ClientError) -> JsValue {
    let e = js_sys::Error::new(&error.message);
    let _ = Reflect::set(&e, &"code".into(), &JsValue::from_str(&error.code));
    if let Some(channel) = &error.channel {
        let _ = Reflect::set(&e, &"channel".into(), &JsValue::from_str(channel));
    }
    e.into()
}

fn argument_error(message: impl Into<String>) -> JsValue {
    js_error(&ClientError::new("invalid_argument", message))
}

fn get(options: &JsValue, key: &str) -> JsValue {
    Reflect::get(options, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn function_option(options: &JsValue, key: &str) -> Result<Option<Function>, JsValue> {
    let value = get(options, key);
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    value.dyn_into::<Function>().map(Some).map_err(|_| argument_error(format!("option {key} must be a function")))
}

fn number_option(options: &JsValue, key: &str, default: u32, min: u32) -> Result<u32, JsValue> {
    let value = get(options, key);
    if value.is_undefined() {
        return Ok(default);
    }
    match value.as_f64() {
        Some(n) if n.is_finite() && n >= f64::from(min) => Ok(n.min(f64::from(u32::MAX)) as u32),
        _ => Err(argument_error(format!("option {key} must be a number ≥ {min}"))),
    }
}

fn parse_options(options: &JsValue) -> Result<Options, JsValue> {
    let defaults = Options::default();
    let targets = get(options, "targets");
    let targets: Vec<String> = if let Some(single) = targets.as_string() {
        vec![single]
    } else if Array::is_array(&targets) {
        Array::from(&targets)
            .iter()
            .map(|t| t.as_string().ok_or_else(|| argument_error("targets must be URL strings")))
            .collect::<Result<_, _>>()?
    } else {
        return Err(argument_error("option targets is required: a URL or an array of URLs"));
    };
    if targets.is_empty() {
        return Err(argument_error("option targets must name at least one server"));
    }
    let targets = targets.iter().map(|t| websocket_url(t).map_err(argument_error)).collect::<Result<_, _>>()?;
    let local_storage = match get(options, "localStorage").as_bool() {
        Some(b) => b,
        None if get(options, "localStorage").is_undefined() => defaults.local_storage,
        None => return Err(argument_error("option localStorage must be a boolean")),
    };
    let storage_prefix = match get(options, "storagePrefix") {
        v if v.is_undefined() => defaults.storage_prefix,
        v => v.as_string().ok_or_else(|| argument_error("option storagePrefix must be a string"))?,
    };
    Ok(Options {
        targets,
        local_storage,
        storage_cap: number_option(options, "storageLimit", defaults.storage_cap as u32, 1)? as usize,
        storage_prefix,
        backoff_base: Duration::from_millis(
            number_option(options, "reconnectDelay", defaults.backoff_base.as_millis() as u32, 1)?.into(),
        ),
        backoff_max: Duration::from_millis(
            number_option(options, "reconnectDelayMax", defaults.backoff_max.as_millis() as u32, 1)?.into(),
        ),
        max_queue: number_option(options, "maxQueue", defaults.max_queue as u32, 0)? as usize,
        flush_interval_ms: number_option(options, "flushInterval", defaults.flush_interval_ms, 0)?,
    })
}

impl Client {
    /// Applies effects to the state, then calls out to JavaScript with the borrow released.
    fn run(self: &Rc<Self>, effects: Vec<Effect<Pending>>) {
        let mut outcalls = Vec::new();
        {
            let mut inner = self.inner.borrow_mut();
            for effect in effects {
                self.apply(&mut inner, effect, &mut outcalls);
            }
        }
        for outcall in outcalls {
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
            }
        }
    }

    fn apply(self: &Rc<Self>, inner: &mut Inner, effect: Effect<Pending>, out: &mut Vec<Outcall>) {
        match effect {
            Effect::Connect(url) => {
                inner.socket = None;
                let weak = Rc::downgrade(self);
                let handler = move |event: SocketEvent| Client::on_socket(&weak, event);
                match Socket::open(&inner.ws_ctor, &url, handler) {
                    Ok(socket) => inner.socket = Some(socket),
                    Err(e) => {
                        out.push(Outcall::Emit("error", vec![e]));
                        let effects = inner.core.closed(1006, "could not create the WebSocket", js_sys::Math::random());
                        for effect in effects {
                            self.apply(inner, effect, out);
                        }
                    }
                }
            }
            Effect::CloseSocket => {
                inner.socket = None;
                inner.reconnect_timer = None;
                inner.flush_timer = None;
                inner._pagehide = None;
                if let Some(store) = &mut inner.store {
                    for problem in store.flush() {
                        self.apply(inner, problem_effect(&problem), out);
                    }
                }
            }
            Effect::ReconnectAfter(delay) => {
                inner.socket = None;
                let weak = Rc::downgrade(self);
                inner.reconnect_timer = Some(Timer::after(delay.as_millis() as u32, move || {
                    if let Some(client) = weak.upgrade() {
                        let effects = client.inner.borrow_mut().core.reconnect();
                        client.run(effects);
                    }
                }));
            }
            Effect::Send(text) => {
                if let Some(socket) = &inner.socket
                    && let Err(e) = socket.send(&text)
                {
                    out.push(Outcall::Emit("error", vec![e]));
                }
            }
            Effect::Resolve(pending, resolution) => {
                let value = match resolution {
                    Resolution::Subscribed => JsValue::TRUE,
                    Resolution::Unsubscribed => JsValue::TRUE,
                    Resolution::Published(offset) => JsValue::from_str(&offset.to_string()),
                    Resolution::Acked(n) => JsValue::from(n as f64),
                };
                out.push(Outcall::Resolve(pending, value));
            }
            Effect::Reject(pending, error) => out.push(Outcall::Reject(pending, js_error(&error))),
            Effect::Messages(channel, entries) => {
                if let Some(store) = &mut inner.store {
                    for problem in store.append(&channel, &entries) {
                        self.apply(inner, problem_effect(&problem), out);
                    }
                    if inner.flush_timer.is_none() {
                        let weak = Rc::downgrade(self);
                        inner.flush_timer = Some(Timer::after(inner.flush_interval_ms, move || {
                            if let Some(client) = weak.upgrade() {
                                client.flush();
                            }
                        }));
                    }
                }
                let messages = decode_entries(inner, &entries);
                out.push(Outcall::Emit("messages", vec![JsValue::from_str(&channel), messages.into()]));
            }
            Effect::GroupMessages(channel, group, deliveries) => {
                let (entries, counts): (Vec<Entry>, Vec<u64>) = deliveries.into_iter().unzip();
                let messages = decode_entries(inner, &entries);
                for (message, count) in messages.iter().zip(counts) {
                    let _ = Reflect::set(&message, &"deliveries".into(), &JsValue::from(count as f64));
                }
                let meta = Object::new();
                let _ = Reflect::set(&meta, &"group".into(), &JsValue::from_str(&group));
                out.push(Outcall::Emit("messages", vec![JsValue::from_str(&channel), messages.into(), meta.into()]));
            }
            Effect::Broadcast(channel, json) => {
                let value = js_sys::JSON::parse(&json).unwrap_or(JsValue::NULL);
                out.push(Outcall::Emit("broadcast", vec![JsValue::from_str(&channel), value]));
            }
            Effect::Connected(url) => out.push(Outcall::Emit("connect", vec![JsValue::from_str(&url)])),
            Effect::Disconnected(code, reason) => {
                out.push(Outcall::Emit("disconnect", vec![JsValue::from(code), JsValue::from_str(&reason)]));
            }
            Effect::Error(error) => out.push(Outcall::Emit("error", vec![js_error(&error)])),
        }
    }

    fn on_socket(weak: &Weak<Client>, event: SocketEvent) {
        let Some(client) = weak.upgrade() else { return };
        let effects = {
            let mut inner = client.inner.borrow_mut();
            match event {
                SocketEvent::Open => inner.core.opened(),
                SocketEvent::Text(text) => inner.core.received(&text),
                SocketEvent::Close(code, reason) => inner.core.closed(code, &reason, js_sys::Math::random()),
            }
        };
        client.run(effects);
    }

    fn flush(self: &Rc<Self>) {
        let problems = {
            let mut inner = self.inner.borrow_mut();
            inner.flush_timer = None;
            inner.store.as_mut().map(Store::flush).unwrap_or_default()
        };
        self.run(problems.iter().map(problem_effect).collect());
    }

    /// Returns a promise and the handle that settles it.
    fn promise() -> (Promise, Pending) {
        let mut pending = None;
        let promise = Promise::new(&mut |resolve, reject| pending = Some(Pending { resolve, reject }));
        (promise, pending.expect("the executor runs synchronously"))
    }
}

/// A storage problem as the `error` event it becomes.
fn problem_effect(problem: &StoreProblem) -> Effect<Pending> {
    Effect::Error(ClientError::new(problem.code, problem.message.clone()))
}

/// Decodes a value with the user's `decode`, or JSON with a fallback to the raw string.
fn decode_value(decode: Option<&Function>, raw: &str) -> JsValue {
    let text = JsValue::from_str(raw);
    match decode {
        Some(f) => f.call1(&JsValue::NULL, &text).unwrap_or(text),
        None => js_sys::JSON::parse(raw).unwrap_or(text),
    }
}

/// Entries in the package's message shape: `{ offset, field: decode(value), … }`.
fn decode_entries(inner: &Inner, entries: &[Entry]) -> Array {
    entries
        .iter()
        .map(|entry| {
            let message = Object::new();
            for pair in entry.fields.chunks(2) {
                let value = pair.get(1).map_or(JsValue::UNDEFINED, |v| decode_value(inner.decode.as_ref(), v));
                let _ = Reflect::set(&message, &JsValue::from_str(&pair[0]), &value);
            }
            // Set last so a field called "offset" cannot hide it.
            let _ = Reflect::set(&message, &"offset".into(), &JsValue::from_str(&entry.offset.to_string()));
            JsValue::from(message)
        })
        .collect()
}

#[wasm_bindgen]
impl WasmClient {
    /// Creates the client and starts connecting. `emit(event, ...args)` receives every event.
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue, emit: Function) -> Result<WasmClient, JsValue> {
        let parsed = parse_options(&options)?;
        let ws_ctor = match function_option(&options, "WebSocket")? {
            Some(ctor) => ctor,
            None => Reflect::get(&js_sys::global(), &"WebSocket".into())
                .ok()
                .and_then(|c| c.dyn_into::<Function>().ok())
                .ok_or_else(|| {
                    argument_error("no global WebSocket: pass one as option WebSocket (e.g. from the ws package)")
                })?,
        };
        let store = if parsed.local_storage {
            BrowserStorage::open().map(|kv| Store::new(kv, parsed.storage_prefix.clone(), parsed.storage_cap))
        } else {
            None
        };
        let settings = Settings {
            targets: parsed.targets.clone(),
            backoff_base: parsed.backoff_base,
            backoff_max: parsed.backoff_max,
            max_queue: parsed.max_queue,
        };
        let (core, effects) = Core::start(settings);
        let inner = Rc::new(RefCell::new(Inner {
            core,
            store,
            socket: None,
            reconnect_timer: None,
            flush_timer: None,
            _pagehide: None,
            ws_ctor,
            encode: function_option(&options, "encode")?,
            decode: function_option(&options, "decode")?,
            flush_interval_ms: parsed.flush_interval_ms,
        }));
        let client = Rc::new(Client { inner, emit });
        if client.inner.borrow().store.is_some() {
            // Write what is buffered before the page goes away.
            let weak = Rc::downgrade(&client);
            let listener = GlobalListener::add("pagehide", move |_| {
                if let Some(client) = weak.upgrade() {
                    client.flush();
                }
            });
            client.inner.borrow_mut()._pagehide = listener;
        }
        client.run(effects);
        Ok(WasmClient { client })
    }

    /// Subscribes; resolves `true` once the server confirmed. `offset`: `"$"`, `"0"` or an ID;
    /// without it, the client resumes after the last stored offset, else starts at `"$"`.
    pub fn subscribe(&self, channel: String, offset: Option<String>) -> Result<Promise, JsValue> {
        redistribute_protocol::request::validate_channel(&channel, usize::MAX)
            .map_err(|e| argument_error(e.message))?;
        let offset = match offset {
            Some(text) => Some(text.parse::<Start>().map_err(|e| argument_error(e.to_string()))?),
            None => None,
        };
        let (promise, pending) = Client::promise();
        let (effects, problems) = {
            let mut inner = self.client.inner.borrow_mut();
            let (stored, problems) = match (&mut inner.store, offset) {
                (Some(store), None) => store.last_offset(&channel),
                _ => (None, Vec::new()),
            };
            (inner.core.subscribe(&channel, offset, stored, pending), problems)
        };
        self.client.run(problems.iter().map(problem_effect).chain(effects).collect());
        Ok(promise)
    }

    /// Joins consumer group `group` of `channel` as `consumer`; resolves `true` once the server
    /// confirmed. `offset` (`"$"` default, `"0"`, an ID) is where a newly created group starts.
    #[wasm_bindgen(js_name = joinGroup)]
    pub fn join_group(
        &self,
        channel: String,
        group: String,
        consumer: String,
        offset: Option<String>,
    ) -> Result<Promise, JsValue> {
        redistribute_protocol::request::validate_channel(&channel, usize::MAX)
            .map_err(|e| argument_error(e.message))?;
        for (what, name) in [("group", &group), ("consumer", &consumer)] {
            redistribute_protocol::request::validate_name(what, name, usize::MAX)
                .map_err(|e| argument_error(e.message))?;
        }
        let start = match offset {
            Some(text) => text.parse::<Start>().map_err(|e| argument_error(e.to_string()))?,
            None => Start::Latest,
        };
        let (promise, pending) = Client::promise();
        let effects = self.client.inner.borrow_mut().core.join_group(&channel, &group, &consumer, start, pending);
        self.client.run(effects);
        Ok(promise)
    }

    /// Leaves consumer group `group` of `channel`; resolves `true`.
    #[wasm_bindgen(js_name = leaveGroup)]
    pub fn leave_group(&self, channel: String, group: String) -> Promise {
        let (promise, pending) = Client::promise();
        let effects = self.client.inner.borrow_mut().core.leave_group(&channel, &group, pending);
        self.client.run(effects);
        promise
    }

    /// Acknowledges group deliveries (all or none); resolves with the number acknowledged.
    pub fn ack(&self, channel: String, group: String, offsets: Array) -> Result<Promise, JsValue> {
        let offsets = offsets
            .iter()
            .map(|o| {
                o.as_string()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| argument_error("offsets must be offset strings such as \"1518951480106-0\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if offsets.is_empty() {
            return Err(argument_error("ack needs at least one offset"));
        }
        let (promise, pending) = Client::promise();
        let effects = self.client.inner.borrow_mut().core.ack(&channel, &group, offsets, pending);
        self.client.run(effects);
        Ok(promise)
    }

    /// Unsubscribes; resolves `true`.
    pub fn unsubscribe(&self, channel: String) -> Promise {
        let (promise, pending) = Client::promise();
        let effects = self.client.inner.borrow_mut().core.unsubscribe(&channel, pending);
        self.client.run(effects);
        promise
    }

    /// Publishes `args` = `[field, value, …]`; resolves with the new offset. Non-string values
    /// are encoded with `encode` (default `JSON.stringify`).
    pub fn publish(&self, channel: String, args: Array) -> Result<Promise, JsValue> {
        redistribute_protocol::request::validate_channel(&channel, usize::MAX)
            .map_err(|e| argument_error(e.message))?;
        let count = args.length();
        if count == 0 || count % 2 != 0 {
            return Err(argument_error(format!(
                "publish needs field/value pairs: got {count} argument(s) after the channel, an even number is required"
            )));
        }
        let encode = self.client.inner.borrow().encode.clone();
        let mut fields = Vec::with_capacity(count as usize);
        for (i, value) in args.iter().enumerate() {
            let text = if i % 2 == 0 {
                value
                    .as_string()
                    .ok_or_else(|| argument_error(format!("field name #{} must be a string", i / 2 + 1)))?
            } else if let Some(text) = value.as_string() {
                text
            } else {
                let encoded = match &encode {
                    Some(f) => f.call1(&JsValue::NULL, &value)?,
                    None => js_sys::JSON::stringify(&value).map(JsValue::from)?,
                };
                encoded.as_string().ok_or_else(|| {
                    argument_error(format!("the value of field \"{}\" cannot be encoded to a string", fields[i - 1]))
                })?
            };
            fields.push(text);
        }
        let (promise, pending) = Client::promise();
        let effects = self.client.inner.borrow_mut().core.publish(&channel, fields, pending);
        self.client.run(effects);
        Ok(promise)
    }

    /// Stored messages of `channel` and its last offset: `{ messages, lastOffset }`, from
    /// storage only (no network).
    pub fn load(&self, channel: String) -> JsValue {
        let (entries, last, problems) = {
            let mut inner = self.client.inner.borrow_mut();
            match &mut inner.store {
                Some(store) => store.load(&channel),
                None => (Vec::new(), None, Vec::new()),
            }
        };
        self.client.run(problems.iter().map(problem_effect).collect());
        let result = Object::new();
        let messages = decode_entries(&self.client.inner.borrow(), &entries);
        let _ = Reflect::set(&result, &"messages".into(), &messages);
        let last = last.map_or(JsValue::NULL, |o| JsValue::from_str(&o.to_string()));
        let _ = Reflect::set(&result, &"lastOffset".into(), &last);
        result.into()
    }

    /// True while connected.
    #[wasm_bindgen(getter)]
    pub fn connected(&self) -> bool {
        self.client.inner.borrow().core.is_connected()
    }

    /// The URL in use (or being tried).
    #[wasm_bindgen(getter)]
    pub fn target(&self) -> String {
        self.client.inner.borrow().core.target().to_owned()
    }

    /// Closes the socket, stops timers, writes buffered messages, and fails pending calls.
    pub fn close(&self) {
        let effects = self.client.inner.borrow_mut().core.close();
        self.client.run(effects);
    }
}
