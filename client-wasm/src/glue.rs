//! Thin browser (and Node.js) glue: WebSocket, timers and localStorage through `web-sys`.
//!
//! Every JavaScript callback is a `Closure` owned by a struct whose `Drop` unregisters it
//! ([`Socket`], [`Timer`]), so replacing a socket or cancelling a timer leaks nothing. Callbacks
//! do no work themselves: they hand the event to the client's dispatcher.

use crate::store::{KeyValue, StoreError};
use js_sys::{Array, Function, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
}

/// A one-shot timer (`setTimeout`), cancelled when dropped. Works in browsers and Node.js.
pub(crate) struct Timer {
    id: JsValue,
    _callback: Closure<dyn FnMut()>,
}

impl Timer {
    pub(crate) fn after(ms: u32, callback: impl FnOnce() + 'static) -> Timer {
        let callback = Closure::once(callback);
        let id = set_timeout(callback.as_ref().unchecked_ref(), ms.min(i32::MAX as u32) as i32);
        Timer { id, _callback: callback }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timeout(&self.id);
    }
}

/// What a socket reports.
pub(crate) enum SocketEvent {
    Open,
    Text(String),
    Close(u16, String),
}

/// An event name and the closure listening to it.
type Listener = (&'static str, Closure<dyn FnMut(JsValue)>);

/// An open or opening WebSocket and its listeners; dropping it removes them and closes it.
pub(crate) struct Socket {
    ws: WebSocket,
    listeners: Vec<Listener>,
}

impl Socket {
    /// Opens `url` with the given constructor (the global `WebSocket` or the `ws` package's).
    pub(crate) fn open(
        ctor: &Function,
        url: &str,
        on_event: impl Fn(SocketEvent) + Clone + 'static,
    ) -> Result<Socket, JsValue> {
        let args = Array::of2(&JsValue::from_str(url), &JsValue::from_str(redistribute_protocol::SUBPROTOCOL));
        let ws: WebSocket = Reflect::construct(ctor, &args)?.unchecked_into();
        let mut listeners: Vec<Listener> = Vec::new();
        let handler = on_event.clone();
        listeners.push(("open", Closure::new(move |_: JsValue| handler(SocketEvent::Open))));
        let handler = on_event.clone();
        listeners.push((
            "message",
            Closure::new(move |event: JsValue| {
                let data = event.unchecked_into::<MessageEvent>().data();
                if let Some(text) = data.as_string() {
                    handler(SocketEvent::Text(text));
                }
            }),
        ));
        let handler = on_event;
        listeners.push((
            "close",
            Closure::new(move |event: JsValue| {
                let event = event.unchecked_into::<CloseEvent>();
                handler(SocketEvent::Close(event.code(), event.reason()));
            }),
        ));
        // `error` is always followed by `close`, which carries what matters; listen anyway so
        // Node's `ws` does not treat the error as unhandled.
        listeners.push(("error", Closure::new(|_: JsValue| {})));
        for (name, listener) in &listeners {
            ws.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref())?;
        }
        Ok(Socket { ws, listeners })
    }

    pub(crate) fn send(&self, text: &str) -> Result<(), JsValue> {
        self.ws.send_with_str(text)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        for (name, listener) in &self.listeners {
            let _ = self.ws.remove_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
        }
        // Node's `ws` reports closing a connecting socket as an `error` event after this returns;
        // an unheard error would crash the process. A plain JS no-op (no Rust closure to leak)
        // stays attached for that.
        self.ws.set_onerror(Some(&Function::new_no_args("")));
        if self.ws.ready_state() <= WebSocket::OPEN {
            let _ = self.ws.close_with_code(1000);
        }
    }
}

/// A page-lifetime listener on `globalThis` (e.g. `pagehide`), removed on drop.
pub(crate) struct GlobalListener {
    name: &'static str,
    listener: Closure<dyn FnMut(Event)>,
}

impl GlobalListener {
    /// Listens when `globalThis` is an event target (browsers); `None` in Node.js.
    pub(crate) fn add(name: &'static str, callback: impl FnMut(Event) + 'static) -> Option<GlobalListener> {
        let target = js_sys::global().dyn_into::<web_sys::EventTarget>().ok()?;
        let listener = Closure::<dyn FnMut(Event)>::new(callback);
        target.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref()).ok()?;
        Some(GlobalListener { name, listener })
    }
}

impl Drop for GlobalListener {
    fn drop(&mut self) {
        if let Ok(target) = js_sys::global().dyn_into::<web_sys::EventTarget>() {
            let _ = target.remove_event_listener_with_callback(self.name, self.listener.as_ref().unchecked_ref());
        }
    }
}

/// `localStorage` as a [`KeyValue`].
pub(crate) struct BrowserStorage(web_sys::Storage);

impl BrowserStorage {
    /// `localStorage`, if this environment has a usable one (not Node.js, not a sandbox that
    /// forbids it).
    pub(crate) fn open() -> Option<BrowserStorage> {
        let present = Reflect::get(&js_sys::global(), &JsValue::from_str("localStorage")).ok()?;
        if present.is_undefined() || present.is_null() {
            return None;
        }
        present.dyn_into::<web_sys::Storage>().ok().map(BrowserStorage)
    }
}

impl KeyValue for BrowserStorage {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get_item(key).ok().flatten()
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.0.set_item(key, value).map_err(|e| {
            let name =
                Reflect::get(&e, &JsValue::from_str("name")).ok().and_then(|n| n.as_string()).unwrap_or_default();
            if name == "QuotaExceededError" || name == "NS_ERROR_DOM_QUOTA_REACHED" {
                StoreError::Quota
            } else {
                StoreError::Other(format!("{name}: {}", js_sys::Error::from(e).message()))
            }
        })
    }

    fn remove(&mut self, key: &str) {
        let _ = self.0.remove_item(key);
    }

    fn keys(&self) -> Vec<String> {
        let len = self.0.length().unwrap_or(0);
        (0..len).filter_map(|i| self.0.key(i).ok().flatten()).collect()
    }
}
