//! The Redistribute client, compiled to WebAssembly.
//!
//! This module holds only the `#[wasm_bindgen]` export, [`WasmClient`], which the npm package's
//! JavaScript facade (`pkg-template/index.js`) wraps into the public `Client` API. The logic lives
//! in plain Rust modules that test natively: [`machine`] (requests, subscriptions, reconnects),
//! [`wire`] (the protocol's frames), [`store`] (persistence layout), [`outbox`] (publishes kept
//! until answered), [`options`], [`json`].
//! The browser side is `driver` (carries out the machine's effects), `convert` (JavaScript values
//! in and out) and `glue` (the thin `web-sys` layer).

mod convert;
mod driver;
mod glue;
pub mod json;
mod keyed;
pub mod machine;
pub mod options;
pub mod outbox;
pub mod store;
pub mod wire;

use crate::convert::{argument_error, entries, function_option, parse_options, publish_fields, token_source};
use crate::driver::{Client, Inner, TokenSource, problem_effect};
use crate::glue::BrowserStorage;
use crate::machine::{Machine, Settings};
use crate::store::{Loaded, Store};
use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_protocol::{Start, StreamId};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// The client behind the npm package's `Client` class. Construct it through the package.
#[wasm_bindgen]
pub struct WasmClient {
    client: Rc<Client>,
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
        let tokens = token_source(&options)?;
        let settings = Settings {
            targets: parsed.targets.clone(),
            backoff_base: parsed.backoff_base,
            backoff_max: parsed.backoff_max,
            max_queue: parsed.max_queue,
            authenticate: !matches!(tokens, TokenSource::None),
            connect_timeout: parsed.connect_timeout,
            request_timeout: parsed.request_timeout,
            client_id: client_id(),
        };
        let (mut machine, mut effects) = Machine::start(settings);
        // The clock starts now (nothing is due yet); the driver ticks it every second.
        let _ = machine.tick(js_sys::Date::now(), 0.5);
        let mut store = store;
        if let Some(store) = &mut store {
            // What earlier pages published and never had answered goes out first.
            let (saved, problems) = store.saved_publishes();
            effects.extend(problems.iter().map(problem_effect));
            effects.extend(machine.restore(saved));
        }
        let inner = Inner::new(machine, store, ws_ctor, tokens, parsed.flush_interval_ms);
        let client = Client::new(inner, emit);
        client.run(effects);
        client.start_clock();
        Ok(WasmClient { client })
    }

    /// Subscribes; resolves `true` once the server confirmed. `offset`: `"$"`, `"0"` or an ID;
    /// without it, the client resumes after the last stored offset, else starts at `"$"`.
    /// `seen`: the last offset the tabs sharing this client were given (a tab that takes over
    /// the connection): without `offset`, the client resumes after it if that is earlier.
    pub fn subscribe(&self, channel: String, offset: Option<String>, seen: Option<String>) -> Result<Promise, JsValue> {
        check_channel(&channel)?;
        let offset = match offset {
            Some(text) => Some(text.parse::<Start>().map_err(|e| argument_error(e.to_string()))?),
            None => None,
        };
        let seen = match seen {
            Some(text) => Some(text.parse::<StreamId>().map_err(|e| argument_error(e.to_string()))?),
            None => None,
        };
        let (promise, pending) = Client::promise();
        self.client.step(|inner| {
            let (stored, problems) = match (&mut inner.store, offset) {
                (Some(store), None) => store.last_offset(&channel),
                _ => (None, Vec::new()),
            };
            let stored = match (stored, seen) {
                (Some(stored), Some(seen)) => Some(stored.min(seen)),
                (stored, seen) => stored.or(seen),
            };
            let effects = inner.machine.subscribe(&channel, offset, stored, pending);
            problems.iter().map(problem_effect).chain(effects).collect()
        });
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
        check_channel(&channel)?;
        check_name("group", &group)?;
        check_name("consumer", &consumer)?;
        let start = match offset {
            Some(text) => text.parse::<Start>().map_err(|e| argument_error(e.to_string()))?,
            None => Start::Latest,
        };
        let (promise, pending) = Client::promise();
        self.client.step(|inner| inner.machine.join_group(&channel, &group, &consumer, start, pending));
        Ok(promise)
    }

    /// Leaves consumer group `group` of `channel`; resolves `true`.
    #[wasm_bindgen(js_name = leaveGroup)]
    pub fn leave_group(&self, channel: String, group: String) -> Result<Promise, JsValue> {
        check_channel(&channel)?;
        check_name("group", &group)?;
        let (promise, pending) = Client::promise();
        self.client.step(|inner| inner.machine.leave_group(&channel, &group, pending));
        Ok(promise)
    }

    /// Acknowledges group deliveries (all or none); resolves with the number acknowledged.
    pub fn ack(&self, channel: String, group: String, offsets: Array) -> Result<Promise, JsValue> {
        check_channel(&channel)?;
        check_name("group", &group)?;
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
        self.client.step(|inner| inner.machine.ack(&channel, &group, offsets, pending));
        Ok(promise)
    }

    /// Unsubscribes; resolves `true`.
    pub fn unsubscribe(&self, channel: String) -> Result<Promise, JsValue> {
        check_channel(&channel)?;
        let (promise, pending) = Client::promise();
        self.client.step(|inner| inner.machine.unsubscribe(&channel, pending));
        Ok(promise)
    }

    /// Publishes `fields` = `[field, value, …]`, strings (the package's JavaScript encodes the
    /// values); resolves with the new offset. `key`: the idempotency key, when the caller made
    /// one (a tab relaying its publish); else the client makes one.
    pub fn publish(&self, channel: String, fields: Array, key: Option<String>) -> Result<Promise, JsValue> {
        check_channel(&channel)?;
        let fields = publish_fields(&fields)?;
        if key.as_deref().is_some_and(|key| !redistribute_protocol::request::is_idempotency_key(key)) {
            return Err(argument_error("an idempotency key is 1 to 64 printable ASCII characters"));
        }
        let (promise, pending) = Client::promise();
        self.client.step(|inner| match key {
            Some(key) => inner.machine.publish_as(key, &channel, fields, pending),
            None => inner.machine.publish(&channel, fields, pending),
        });
        Ok(promise)
    }

    /// Stored entries of `channel` (`{ offset, fields }`, as `messages` events carry them), its
    /// last offset, and the gap an earlier session left: `{ entries, lastOffset, gap }` (`gap`
    /// is `{ after, count }` or `null`), from storage only (no network).
    pub fn load(&self, channel: String) -> Result<JsValue, JsValue> {
        check_channel(&channel)?;
        let loaded = match &mut self.client.inner.borrow_mut().store {
            Some(store) => store.load(&channel),
            None => Loaded::default(),
        };
        self.client.run(loaded.problems.iter().map(problem_effect).collect());
        let offset = |o: Option<StreamId>| o.map_or(JsValue::NULL, |o| JsValue::from_str(&o.to_string()));
        let result = Object::new();
        let _ = Reflect::set(&result, &"entries".into(), &entries(&loaded.entries, None));
        let _ = Reflect::set(&result, &"lastOffset".into(), &offset(loaded.last_offset));
        let gap = match loaded.gap {
            Some(gap) => {
                let value = Object::new();
                let _ = Reflect::set(&value, &"after".into(), &offset(gap.after));
                let _ = Reflect::set(&value, &"count".into(), &JsValue::from(gap.count as f64));
                value.into()
            }
            None => JsValue::NULL,
        };
        let _ = Reflect::set(&result, &"gap".into(), &gap);
        Ok(result.into())
    }

    /// The publishes the server has not answered, oldest first:
    /// `[{ id, channel, fields, sent, at }]` (`fields` as `[field, value, …]`, values encoded;
    /// `sent`: on the wire, no longer cancellable; `at`: when it was made, ms since the epoch).
    pub fn outbox(&self) -> Array {
        let inner = self.client.inner.borrow();
        inner
            .machine
            .outbox()
            .into_iter()
            .map(|(publication, sent)| {
                let item = Object::new();
                let fields: Array = publication.fields.iter().map(|f| JsValue::from_str(f)).collect();
                let _ = Reflect::set(&item, &"id".into(), &JsValue::from_str(&publication.key));
                let _ = Reflect::set(&item, &"channel".into(), &JsValue::from_str(&publication.channel));
                let _ = Reflect::set(&item, &"fields".into(), &fields);
                let _ = Reflect::set(&item, &"sent".into(), &JsValue::from_bool(sent));
                let _ = Reflect::set(&item, &"at".into(), &JsValue::from_f64(publication.at));
                JsValue::from(item)
            })
            .collect()
    }

    /// Takes the unsent publish `id` out of the outbox (its call rejects with `cancelled`);
    /// false when no unsent publish has that id.
    pub fn cancel(&self, id: String) -> bool {
        let mut cancelled = false;
        self.client.step(|inner| {
            let effects = inner.machine.cancel(&id);
            cancelled = effects.is_some();
            effects.unwrap_or_default()
        });
        cancelled
    }

    /// True while connected.
    #[wasm_bindgen(getter)]
    pub fn connected(&self) -> bool {
        self.client.inner.borrow().machine.is_connected()
    }

    /// `connecting`, `connected`, `disconnected` or `closed`.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> String {
        self.client.inner.borrow().machine.state().as_str().to_owned()
    }

    /// The URL in use (or being tried).
    #[wasm_bindgen(getter)]
    pub fn target(&self) -> String {
        self.client.inner.borrow().machine.target().to_owned()
    }

    /// Closes the socket, stops timers, writes buffered messages, and fails pending calls; the
    /// outbox is abandoned.
    pub fn close(&self) {
        self.client.step(|inner| inner.machine.close());
    }

    /// Like `close`, but the outbox stays in storage for the tab that takes over.
    #[wasm_bindgen(js_name = handOver)]
    pub fn hand_over(&self) {
        self.client.step(|inner| inner.machine.hand_over());
    }
}

/// The server's channel rules, with its default length limit (shared from the protocol crate).
fn check_channel(channel: &str) -> Result<(), JsValue> {
    check_name("channel", channel)
}

fn check_name(what: &str, name: &str) -> Result<(), JsValue> {
    let max_len = redistribute_protocol::request::Limits::default().max_channel_len;
    redistribute_protocol::request::validate_name(what, name, max_len).map_err(|e| argument_error(e.message))
}

/// 64 random bits in hex, from the browser's (or Node's) CSPRNG when there is one: the prefix of
/// this client's idempotency keys, so no two clients' keys meet.
fn client_id() -> String {
    let mut bytes = [0u8; 8];
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).ok().filter(|c| c.is_object());
    let filled = crypto.is_some_and(|crypto| {
        let array = js_sys::Uint8Array::new_with_length(8);
        let fill = Reflect::get(&crypto, &"getRandomValues".into()).ok().and_then(|f| f.dyn_into::<Function>().ok());
        fill.is_some_and(|fill| fill.call1(&crypto, &array).is_ok()) && {
            array.copy_to(&mut bytes);
            true
        }
    });
    if !filled {
        for byte in &mut bytes {
            *byte = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    bytes.iter().fold(String::with_capacity(16), |mut hex, b| {
        let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
        hex
    })
}
