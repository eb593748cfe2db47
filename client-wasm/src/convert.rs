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

/// `publish`'s `[field, value, …]` as strings: names must be strings, string values are sent as
/// they are, anything else goes through `encode` (default `JSON.stringify`).
pub(crate) fn publish_fields(args: &Array, encode: Option<&Function>) -> Result<Vec<String>, JsValue> {
    let count = args.length();
    if count == 0 || count % 2 != 0 {
        return Err(argument_error(format!(
            "publish needs field/value pairs: got {count} argument(s) after the channel, an even number is required"
        )));
    }
    let mut fields = Vec::with_capacity(count as usize);
    for (i, value) in args.iter().enumerate() {
        let text = if i % 2 == 0 {
            value.as_string().ok_or_else(|| argument_error(format!("field name #{} must be a string", i / 2 + 1)))?
        } else if let Some(text) = value.as_string() {
            text
        } else {
            let encoded = match encode {
                Some(f) => f.call1(&JsValue::NULL, &value)?,
                None => js_sys::JSON::stringify(&value).map(JsValue::from)?,
            };
            encoded.as_string().ok_or_else(|| {
                argument_error(format!("the value of field \"{}\" cannot be encoded to a string", fields[i - 1]))
            })?
        };
        fields.push(text);
    }
    Ok(fields)
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
pub(crate) fn messages(decode: Option<&Function>, entries: &[Entry]) -> Array {
    entries
        .iter()
        .map(|entry| {
            let message = Object::new();
            for pair in entry.fields.chunks(2) {
                let value = pair.get(1).map_or(JsValue::UNDEFINED, |v| decode_value(decode, v));
                let _ = Reflect::set(&message, &JsValue::from_str(&pair[0]), &value);
            }
            // Set last so a field called "offset" cannot hide it.
            let _ = Reflect::set(&message, &"offset".into(), &JsValue::from_str(&entry.offset.to_string()));
            JsValue::from(message)
        })
        .collect()
}
