//! JavaScript values in and out: the options object, publish arguments, messages in the
//! package's shape, and errors with a `code`. Everything here turns bad input into an
//! `invalid_argument` error instead of a trap.

use crate::driver::TokenSource;
use crate::machine::ClientError;
use crate::options::{Options, websocket_url};
use js_sys::{Array, Function, Object, Reflect};
use redistribute_protocol::Entry;
use std::time::Duration;
use wasm_bindgen::prelude::*;

/// A JavaScript `Error` with `code` (and `channel`, when there is one).
pub(crate) fn js_error(error: &ClientError) -> JsValue {
    let e = js_sys::Error::new(&error.message);
    let _ = Reflect::set(&e, &"code".into(), &JsValue::from_str(&error.code));
    if let Some(channel) = &error.channel {
        let _ = Reflect::set(&e, &"channel".into(), &JsValue::from_str(channel));
    }
    e.into()
}

/// An `invalid_argument` error.
pub(crate) fn argument_error(message: impl Into<String>) -> JsValue {
    js_error(&ClientError::new("invalid_argument", message))
}

fn get(options: &JsValue, key: &str) -> JsValue {
    Reflect::get(options, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// An optional function-valued option.
pub(crate) fn function_option(options: &JsValue, key: &str) -> Result<Option<Function>, JsValue> {
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

/// Reads and checks the options object `createClient` was given.
pub(crate) fn parse_options(options: &JsValue) -> Result<Options, JsValue> {
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
    let millis = |key: &str, default: Duration| -> Result<Duration, JsValue> {
        Ok(Duration::from_millis(number_option(options, key, default.as_millis() as u32, 1)?.into()))
    };
    Ok(Options {
        targets,
        local_storage,
        storage_cap: number_option(options, "storageLimit", defaults.storage_cap as u32, 1)? as usize,
        storage_prefix,
        backoff_base: millis("reconnectDelay", defaults.backoff_base)?,
        backoff_max: millis("reconnectDelayMax", defaults.backoff_max)?,
        max_queue: number_option(options, "maxQueue", defaults.max_queue as u32, 0)? as usize,
        flush_interval_ms: number_option(options, "flushInterval", defaults.flush_interval_ms, 0)?,
        connect_timeout: millis("connectTimeout", defaults.connect_timeout)?,
        request_timeout: millis("requestTimeout", defaults.request_timeout)?,
    })
}

/// The `token` (a string) or `getToken` (a function returning a token or a promise of one)
/// option; not both.
pub(crate) fn token_source(options: &JsValue) -> Result<TokenSource, JsValue> {
    let fixed = get(options, "token");
    let fetch = function_option(options, "getToken")?;
    match (fixed.is_undefined() || fixed.is_null(), fetch) {
        (true, None) => Ok(TokenSource::None),
        (true, Some(get_token)) => Ok(TokenSource::Fetch(get_token)),
        (false, None) => match fixed.as_string().filter(|t| !t.is_empty()) {
            Some(token) => Ok(TokenSource::Fixed(token)),
            None => Err(argument_error("option token must be a non-empty string")),
        },
        (false, Some(_)) => Err(argument_error("give either option token or option getToken, not both")),
    }
}

/// `publish`'s `[field, value, …]`, already encoded to strings by the package's JavaScript (which
/// checks them and names the bad argument); checked again here so nothing else reaches the wire.
pub(crate) fn publish_fields(args: &Array) -> Result<Vec<String>, JsValue> {
    let count = args.length();
    if count == 0 || count % 2 != 0 {
        return Err(argument_error(format!("publish needs field/value pairs: got {count} string(s)")));
    }
    args.iter().map(|field| field.as_string().ok_or_else(|| argument_error("publish fields must be strings"))).collect()
}

/// Entries as the package's JavaScript receives them: `{ offset, fields: [name, value, …] }`,
/// plus `deliveries` for a consumer group's. The JavaScript turns them into messages (decoding
/// values with the app's `decode`).
pub(crate) fn entries(entries: &[Entry], deliveries: Option<&[u64]>) -> Array {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let raw = Object::new();
            let _ = Reflect::set(&raw, &"offset".into(), &JsValue::from_str(&entry.offset.to_string()));
            let fields: Array = entry.fields.iter().map(|f| JsValue::from_str(f)).collect();
            let _ = Reflect::set(&raw, &"fields".into(), &fields);
            if let Some(count) = deliveries.and_then(|d| d.get(i)) {
                let _ = Reflect::set(&raw, &"deliveries".into(), &JsValue::from(*count as f64));
            }
            JsValue::from(raw)
        })
        .collect()
}
