//! Browser tests: the client in headless Chromium. Most run against real servers and a real Redis,
//! which `tests/harness.mjs` starts and controls (their addresses arrive at compile time); the
//! tests of argument checks and stored history need no server.
//!
//! Run them all with `npm run test:browser` (that is, `node tests/harness.mjs -- wasm-pack test
//! --headless --chrome client-wasm`). Plain `wasm-pack test --headless --chrome client-wasm` runs
//! the serverless tests and fails the others at once, saying how to run them.

#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_client::WasmClient;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// How to get the servers a test needs.
const NEEDS_HARNESS: &str = "this test needs the servers that tests/harness.mjs starts: run `npm run test:browser` \
     (or `node tests/harness.mjs -- wasm-pack test --headless --chrome client-wasm`)";

/// An address the harness passed at compile time, or a failure that says how to get one.
fn harness(address: Option<&'static str>) -> &'static str {
    address.expect(NEEDS_HARNESS)
}

fn server_a() -> &'static str {
    harness(option_env!("RD_SERVER_A"))
}

fn server_b() -> &'static str {
    harness(option_env!("RD_SERVER_B"))
}

fn control_url() -> &'static str {
    harness(option_env!("RD_CONTROL"))
}

/// The harness's server that checks tokens (issued by the control API's `/token`).
fn server_auth() -> &'static str {
    harness(option_env!("RD_SERVER_AUTH"))
}

/// A target nothing listens on (the discard port): for tests that must not reach a server.
const NOWHERE: &str = "ws://127.0.0.1:9/";

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &Function, ms: i32);
}

async fn sleep(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| set_timeout(&resolve, ms));
    JsFuture::from(promise).await.unwrap();
}

/// Polls `ready` until it holds; fails with `what` after 20 s.
async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = js_sys::Date::now() + 20_000.0;
    while !ready() {
        assert!(js_sys::Date::now() < deadline, "timed out waiting for {what}");
        sleep(20).await;
    }
}

async fn control(method: &str, path: &str) -> JsValue {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    let window = web_sys::window().unwrap();
    let response: web_sys::Response =
        JsFuture::from(window.fetch_with_str_and_init(&format!("{}{path}", control_url()), &init))
            .await
            .unwrap()
            .unchecked_into();
    assert!(response.ok(), "control {method} {path} failed: {}", response.status());
    JsFuture::from(response.json().unwrap()).await.unwrap()
}

/// `XRANGE channel - +` as `(offset, value of field n)` pairs.
async fn xrange(channel: &str) -> Vec<String> {
    let entries: Array = control("GET", &format!("/xrange?channel={channel}")).await.unchecked_into();
    entries.iter().map(|e| Array::from(&e).get(0).as_string().unwrap()).collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e12) as u64)
}

/// Records every event a client emits.
struct Events {
    log: Rc<RefCell<Vec<(String, JsValue, JsValue)>>>,
    emit: Closure<dyn FnMut(String, JsValue, JsValue)>,
}

impl Events {
    fn new() -> Self {
        let log: Rc<RefCell<Vec<(String, JsValue, JsValue)>>> = Rc::default();
        let sink = log.clone();
        let emit = Closure::new(move |event: String, a: JsValue, b: JsValue| sink.borrow_mut().push((event, a, b)));
        Events { log, emit }
    }

    fn function(&self) -> Function {
        self.emit.as_ref().unchecked_ref::<Function>().clone()
    }

    /// Messages received on `channel`, in order.
    fn messages(&self, channel: &str) -> Vec<JsValue> {
        self.log
            .borrow()
            .iter()
            .filter(|(e, c, _)| e == "messages" && c.as_string().as_deref() == Some(channel))
            .flat_map(|(_, _, list)| Array::from(list).iter().collect::<Vec<_>>())
            .collect()
    }

    fn offsets(&self, channel: &str) -> Vec<String> {
        self.messages(channel).iter().map(|m| get(m, "offset").as_string().unwrap()).collect()
    }

    fn count(&self, event: &str) -> usize {
        self.log.borrow().iter().filter(|(e, _, _)| e == event).count()
    }

    fn error_codes(&self) -> Vec<String> {
        self.log
            .borrow()
            .iter()
            .filter(|(e, _, _)| e == "error")
            .map(|(_, err, _)| get(err, "code").as_string().unwrap_or_default())
            .collect()
    }
}

fn get(value: &JsValue, key: &str) -> JsValue {
    Reflect::get(value, &key.into()).unwrap()
}

/// The value of field `name` of an entry in the shape the module emits (`{ offset, fields }`).
fn field(entry: &JsValue, name: &str) -> Option<String> {
    let fields: Vec<JsValue> = Array::from(&get(entry, "fields")).iter().collect();
    fields.chunks(2).find(|pair| pair[0].as_string().as_deref() == Some(name)).and_then(|pair| pair[1].as_string())
}

fn options(targets: &[&str], extra: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    let list: Array = targets.iter().map(|t| JsValue::from_str(t)).collect();
    Reflect::set(&o, &"targets".into(), &list).unwrap();
    Reflect::set(&o, &"reconnectDelay".into(), &50.into()).unwrap();
    Reflect::set(&o, &"reconnectDelayMax".into(), &500.into()).unwrap();
    for (k, v) in extra {
        Reflect::set(&o, &(*k).into(), v).unwrap();
    }
    o.into()
}

async fn connected(client: &WasmClient) {
    wait_for("the client to connect", || client.connected()).await;
}

async fn call(promise: Result<Promise, JsValue>) -> Result<JsValue, JsValue> {
    JsFuture::from(promise?).await
}

fn args(values: &[JsValue]) -> Array {
    values.iter().collect()
}

fn object(json: &str) -> JsValue {
    js_sys::JSON::parse(json).unwrap()
}

#[wasm_bindgen_test]
async fn round_trip_in_the_entry_shape() {
    let events = Events::new();
    let client = WasmClient::new(options(&[server_a()], &[("localStorage", false.into())]), events.function()).unwrap();
    let channel = unique("rt");
    assert_eq!(call(client.subscribe(channel.clone(), None, None)).await.unwrap(), JsValue::TRUE);
    let offset = call(client.publish(
        channel.clone(),
        args(&["TEST_MESSAGE".into(), r#"{"foo":"bar"}"#.into(), "__proto__".into(), "x".into()]),
        None,
    ))
    .await
    .unwrap()
    .as_string()
    .unwrap();
    wait_for("the message", || events.messages(&channel).len() == 1).await;
    let entry = &events.messages(&channel)[0];
    assert_eq!(get(entry, "offset").as_string().unwrap(), offset);
    assert_eq!(field(entry, "TEST_MESSAGE").as_deref(), Some(r#"{"foo":"bar"}"#), "values arrive as sent");
    assert_eq!(field(entry, "__proto__").as_deref(), Some("x"), "any field name is just data");
    assert_eq!(events.count("connect"), 1);
    client.close();
}

#[wasm_bindgen_test]
async fn argument_errors_reject_clearly_without_a_server() {
    let events = Events::new();
    let client = WasmClient::new(options(&[NOWHERE], &[("localStorage", false.into())]), events.function()).unwrap();
    let channel = unique("args");
    for (bad, expect) in [
        (args(&["foo".into()]), "field/value pairs"),
        (args(&[]), "field/value pairs"),
        (args(&[1.into(), "v".into()]), "must be strings"),
        (args(&["k".into(), JsValue::UNDEFINED]), "must be strings"),
        (args(&["k".into(), object(r#"{"a":1}"#)]), "must be strings"),
    ] {
        let error = call(client.publish(channel.clone(), bad, None)).await.unwrap_err();
        assert_eq!(get(&error, "code").as_string().unwrap(), "invalid_argument");
        assert!(get(&error, "message").as_string().unwrap().contains(expect), "{expect}");
    }
    let error = call(client.publish("bad channel".into(), args(&["k".into(), "v".into()]), None)).await.unwrap_err();
    assert_eq!(get(&error, "code").as_string().unwrap(), "invalid_argument");
    let error = call(client.subscribe(channel.clone(), Some("yesterday".into()), None)).await.unwrap_err();
    assert_eq!(get(&error, "code").as_string().unwrap(), "invalid_argument");
    // The server's channel rules, checked before anything is sent (a name over 256 bytes).
    let long = "x".repeat(300);
    let error = call(client.publish(long.clone(), args(&["k".into(), "v".into()]), None)).await.unwrap_err();
    assert!(get(&error, "message").as_string().unwrap().contains("limit is 256"));
    for error in [client.load(long.clone()).unwrap_err(), client.unsubscribe(long).unwrap_err()] {
        assert_eq!(get(&error, "code").as_string().unwrap(), "invalid_argument");
    }
    client.close();
}

#[wasm_bindgen_test]
async fn server_errors_reach_the_caller_and_the_client_goes_on() {
    let events = Events::new();
    let client = WasmClient::new(options(&[server_a()], &[("localStorage", false.into())]), events.function()).unwrap();
    let channel = unique("args");
    connected(&client).await;
    // A group operation on a channel this connection is not a member of: the server refuses.
    let error = call(client.ack(channel.clone(), "g".into(), args(&["1-1".into()]))).await.unwrap_err();
    assert_eq!(get(&error, "code").as_string().unwrap(), "bad_request");
    assert!(call(client.publish(channel, args(&["k".into(), "v".into()]), None)).await.is_ok());
    client.close();
}

#[wasm_bindgen_test]
async fn persistence_survives_a_new_client_and_resumes_without_gap_or_repeat() {
    let prefix = unique("rdtest") + ":";
    let channel = unique("persist");
    let first_events = Events::new();
    let opts = || options(&[server_a()], &[("storagePrefix", JsValue::from_str(&prefix)), ("flushInterval", 0.into())]);
    let first = WasmClient::new(opts(), first_events.function()).unwrap();
    call(first.subscribe(channel.clone(), None, None)).await.unwrap();
    for i in 0..3 {
        call(first.publish(channel.clone(), args(&["n".into(), JsValue::from_str(&i.to_string())]), None))
            .await
            .unwrap();
    }
    wait_for("3 messages", || first_events.messages(&channel).len() == 3).await;
    first.close();
    // Published while no client of this page runs.
    control("POST", &format!("/xadd?channel={channel}&field=n&value=3")).await;

    let events = Events::new();
    let second = WasmClient::new(opts(), events.function()).unwrap();
    let loaded = second.load(channel.clone()).unwrap();
    let stored: Vec<String> =
        Array::from(&get(&loaded, "entries")).iter().map(|m| get(&m, "offset").as_string().unwrap()).collect();
    assert_eq!(stored, first_events.offsets(&channel), "load returns what the first client received");
    assert_eq!(get(&loaded, "lastOffset").as_string(), stored.last().cloned());
    // No explicit offset: resumes after the stored last offset.
    call(second.subscribe(channel.clone(), None, None)).await.unwrap();
    wait_for("the missed message", || events.messages(&channel).len() == 1).await;
    let all = xrange(&channel).await;
    assert_eq!(events.offsets(&channel), vec![all[3].clone()], "exactly the message published meanwhile");
    assert_eq!(field(&events.messages(&channel)[0], "n").as_deref(), Some("3"));
    second.close();
    clear_storage(&prefix);
}

/// The ids of what `outbox()` lists, with whether each was sent.
fn outbox(client: &WasmClient) -> Vec<(String, bool)> {
    client.outbox().iter().map(|item| (get(&item, "id").as_string().unwrap(), get(&item, "sent").is_truthy())).collect()
}

#[wasm_bindgen_test]
async fn publishes_made_offline_survive_the_page_and_are_stored_once_in_order() {
    let prefix = unique("rdtest") + ":";
    let channel = unique("outbox");
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    let opts = |target: &str| options(&[target], &[("storagePrefix", JsValue::from_str(&prefix))]);

    // A page online publishes; its tab dies after the server stored the message but before the
    // reply removed it from the outbox (simulated by putting the record back).
    let online = WasmClient::new(opts(server_a()), Events::new().function()).unwrap();
    connected(&online).await;
    let publish = online.publish(channel.clone(), args(&["n".into(), "0".into()]), None);
    let [(stored_id, true)] = &outbox(&online)[..] else { panic!("sent and waiting: {:?}", outbox(&online)) };
    let record_key = format!("{prefix}~out~{stored_id}");
    let record = storage.get_item(&record_key).unwrap().expect("saved before it was sent");
    let first_offset = call(publish).await.unwrap().as_string().unwrap();
    assert_eq!(storage.get_item(&record_key).unwrap(), None, "answered: out of the outbox");
    online.close();
    storage.set_item(&record_key, &record).unwrap();

    // A page with no server publishes three, cancels one, and is closed without close().
    let offline = WasmClient::new(opts(NOWHERE), Events::new().function()).unwrap();
    let mut pending = Vec::new();
    for n in 1..=3 {
        pending.push(offline.publish(channel.clone(), args(&["n".into(), JsValue::from_str(&n.to_string())]), None));
    }
    let listed = outbox(&offline);
    assert_eq!(listed.len(), 4, "the dead tab's publish and three new ones: {listed:?}");
    assert_eq!(listed[0].0, *stored_id, "oldest first");
    assert!(listed.iter().all(|(_, sent)| !sent));
    assert!(offline.cancel(listed[2].0.clone()), "n=2 was not sent: it can be cancelled");
    assert!(!offline.cancel(listed[2].0.clone()));
    let error = call(pending.remove(1)).await.unwrap_err();
    assert_eq!(get(&error, "code").as_string().unwrap(), "cancelled");
    drop(offline);

    // The next page, online, sends what waited, first, each stored once.
    let events = Events::new();
    let next = WasmClient::new(opts(server_a()), events.function()).unwrap();
    assert_eq!(outbox(&next).len(), 3, "restored");
    call(next.subscribe(channel.clone(), Some("0".into()), None)).await.unwrap();
    wait_for("the restored publishes", || events.count("published") == 3 && outbox(&next).is_empty()).await;
    wait_for("their messages", || events.messages(&channel).len() == 3).await;
    let values: Vec<_> = events.messages(&channel).iter().map(|m| field(m, "n").unwrap()).collect();
    assert_eq!(values, ["0", "1", "3"], "once each, in order, the cancelled one never");
    let stream = xrange(&channel).await;
    assert_eq!(stream.len(), 3);
    assert_eq!(stream[0], first_offset, "the retry of a stored publish was recognised");
    let published: Vec<(String, String)> = events
        .log
        .borrow()
        .iter()
        .filter(|(e, _, _)| e == "published")
        .map(|(_, c, offset)| (c.as_string().unwrap(), offset.as_string().unwrap()))
        .collect();
    assert_eq!(published, stream.iter().map(|o| (channel.clone(), o.clone())).collect::<Vec<_>>());
    let keys: Vec<String> = (0..storage.length().unwrap()).filter_map(|i| storage.key(i).unwrap()).collect();
    assert!(!keys.iter().any(|k| k.starts_with(&format!("{prefix}~out~"))), "nothing left: {keys:?}");
    next.close();
    clear_storage(&prefix);
}

fn clear_storage(prefix: &str) {
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    let keys: Vec<String> = (0..storage.length().unwrap()).filter_map(|i| storage.key(i).unwrap()).collect();
    for key in keys.iter().filter(|k| k.starts_with(prefix)) {
        storage.remove_item(key).unwrap();
    }
}

#[wasm_bindgen_test]
async fn resumes_after_a_server_restart_while_another_process_publishes() {
    let events = Events::new();
    let client = WasmClient::new(options(&[server_a()], &[("localStorage", false.into())]), events.function()).unwrap();
    let channel = unique("restart");
    call(client.subscribe(channel.clone(), Some("0".into()), None)).await.unwrap();
    control("POST", &format!("/publisher?channel={channel}&count=300&interval=10")).await;
    wait_for("the first messages", || events.messages(&channel).len() >= 20).await;
    control("POST", "/server/0/stop").await;
    wait_for("the disconnect", || events.count("disconnect") == 1).await;
    // Let the publisher add a good number of entries while the server is down.
    let at_stop = xrange(&channel).await.len();
    let deadline = js_sys::Date::now() + 20_000.0;
    while xrange(&channel).await.len() < (at_stop + 20).min(300) {
        assert!(js_sys::Date::now() < deadline, "the publisher stalled");
        sleep(20).await;
    }
    assert_eq!(events.count("connect"), 1, "still down while those were published");
    control("POST", "/server/0/start").await;
    control("GET", "/publisher/wait").await;
    let all = xrange(&channel).await;
    assert_eq!(all.len(), 300);
    wait_for("every message", || events.offsets(&channel).len() >= 300).await;
    assert_eq!(events.offsets(&channel), all, "the received list equals the stream, entry by entry");
    assert!(events.count("connect") >= 2);
    client.close();
}

#[wasm_bindgen_test]
async fn fails_over_to_the_second_target() {
    let events = Events::new();
    let client =
        WasmClient::new(options(&[server_b(), server_a()], &[("localStorage", false.into())]), events.function())
            .unwrap();
    connected(&client).await;
    assert_eq!(client.target(), server_b());
    let channel = unique("failover");
    call(client.subscribe(channel.clone(), None, None)).await.unwrap();
    control("POST", &format!("/xadd?channel={channel}&field=n&value=0")).await;
    wait_for("the first message", || events.messages(&channel).len() == 1).await;
    control("POST", "/server/1/stop").await;
    // Published while the client moves: it must still arrive, once.
    control("POST", &format!("/xadd?channel={channel}&field=n&value=1")).await;
    // A publish made while disconnected waits and goes out after reconnecting.
    let queued = client.publish(channel.clone(), args(&["n".into(), "2".into()]), None);
    wait_for("a connection to the other target", || client.connected() && client.target() == server_a()).await;
    call(queued).await.unwrap();
    wait_for("all three messages", || events.messages(&channel).len() == 3).await;
    assert_eq!(events.offsets(&channel), xrange(&channel).await);
    control("POST", "/server/1/start").await;
    client.close();
}

/// The offsets of what `load` returns, and its `lastOffset` and `gap`.
fn loaded(client: &WasmClient, channel: &str) -> (Vec<String>, Option<String>, JsValue) {
    let loaded = client.load(channel.to_owned()).unwrap();
    let offsets =
        Array::from(&get(&loaded, "entries")).iter().map(|e| get(&e, "offset").as_string().unwrap()).collect();
    (offsets, get(&loaded, "lastOffset").as_string(), get(&loaded, "gap"))
}

#[wasm_bindgen_test]
async fn with_storage_full_the_stored_log_stops_contiguous_and_catches_up_once_there_is_room() {
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    let prefix = unique("quota") + ":";
    let channel = unique("quota");
    let opts = || options(&[server_a()], &[("storagePrefix", JsValue::from_str(&prefix)), ("flushInterval", 0.into())]);
    let events = Events::new();
    let client = WasmClient::new(opts(), events.function()).unwrap();
    call(client.subscribe(channel.clone(), None, None)).await.unwrap();
    let publish =
        |i: u32| call(client.publish(channel.clone(), args(&["n".into(), JsValue::from_str(&i.to_string())]), None));
    // A fresh client on the same storage (aimed nowhere: it only reads) sees what is stored.
    let probe_events = Events::new();
    let stored_now = || {
        let probe = WasmClient::new(
            options(&[NOWHERE], &[("storagePrefix", JsValue::from_str(&prefix))]),
            probe_events.function(),
        )
        .unwrap();
        let stored = loaded(&probe, &channel).0;
        probe.close();
        stored
    };
    for i in 0..5 {
        publish(i).await.unwrap();
    }
    wait_for("5 stored", || stored_now().len() == 5).await;

    // Fill localStorage so that not even a small write fits: ever smaller pieces until none fits.
    let mut fillers = Vec::new();
    for size in [256 * 1024, 1024, 64, 1] {
        let piece = "f".repeat(size);
        loop {
            let key = format!("filler:{}", fillers.len());
            if storage.set_item(&key, &piece).is_err() {
                break;
            }
            fillers.push(key);
            assert!(fillers.len() < 2000, "localStorage never filled up");
        }
    }
    for i in 5..15 {
        publish(i).await.unwrap();
    }
    wait_for("all messages despite the full storage", || events.messages(&channel).len() == 15).await;
    wait_for("a storage_quota error event", || events.error_codes().iter().any(|c| c == "storage_quota")).await;
    let all = xrange(&channel).await;
    assert_eq!(loaded(&client, &channel).0, all, "this page still has every message, in memory");

    // A reloaded page: its stored history stops at #4, and it resumes from there.
    let reloaded_events = Events::new();
    let reloaded = WasmClient::new(opts(), reloaded_events.function()).unwrap();
    let (stored, last, gap) = loaded(&reloaded, &channel);
    assert_eq!(stored, all[..5].to_vec(), "contiguous: no message after a hole");
    assert_eq!(last.as_deref(), Some(all[4].as_str()));
    if !gap.is_null() {
        // Noted when even the full storage had room for the small record.
        assert_eq!(get(&gap, "after").as_string().as_deref(), Some(all[4].as_str()));
    }
    call(reloaded.subscribe(channel.clone(), None, None)).await.unwrap();
    wait_for("the replayed rest", || reloaded_events.messages(&channel).len() == 10).await;
    assert_eq!(reloaded_events.offsets(&channel), all[5..].to_vec(), "exactly the unstored ones, once");
    reloaded.close();

    // Room again: the next message makes the first page write everything waiting, in order.
    for key in &fillers {
        storage.remove_item(key).unwrap();
    }
    publish(15).await.unwrap();
    let all = {
        wait_for("the 16th message", || events.messages(&channel).len() == 16).await;
        xrange(&channel).await
    };
    wait_for("all 16 stored, in order", || stored_now() == all).await;
    client.close();
    clear_storage(&prefix);
}

#[wasm_bindgen_test]
async fn a_corrupted_stored_value_is_reported_and_discarded() {
    let prefix = unique("corrupt") + ":";
    let channel = unique("corrupt");
    let storage = web_sys::window().unwrap().local_storage().unwrap().unwrap();
    storage.set_item(&format!("{prefix}{channel}"), "{this is not json").unwrap();
    let events = Events::new();
    let opts = options(&[server_a()], &[("storagePrefix", JsValue::from_str(&prefix)), ("flushInterval", 0.into())]);
    let client = WasmClient::new(opts, events.function()).unwrap();
    let loaded = client.load(channel.clone()).unwrap();
    assert_eq!(Array::from(&get(&loaded, "entries")).length(), 0);
    assert!(get(&loaded, "lastOffset").is_null());
    assert_eq!(events.error_codes(), vec!["storage_corrupt".to_owned()]);
    assert!(storage.get_item(&format!("{prefix}{channel}")).unwrap().is_none(), "the bad value is gone");
    // The client works normally afterwards, and stores again.
    call(client.subscribe(channel.clone(), None, None)).await.unwrap();
    call(client.publish(channel.clone(), args(&["n".into(), "1".into()]), None)).await.unwrap();
    wait_for("the message", || events.messages(&channel).len() == 1).await;
    wait_for("it to be stored", || Array::from(&get(&client.load(channel.clone()).unwrap(), "entries")).length() == 1)
        .await;
    client.close();
    clear_storage(&prefix);
}

/// `getToken` for the harness's issuer: a token for `user` living `ttl` seconds.
fn token_getter(user: &str, ttl: u32) -> Function {
    let url = format!("{}/token?sub={user}&ttl={ttl}", control_url());
    Function::new_no_args(&format!("return fetch({url:?}).then((r) => r.json()).then((body) => body.token)"))
}

async fn tokens_issued() -> u32 {
    get(&control("GET", "/token/count").await, "issued").as_f64().unwrap() as u32
}

#[wasm_bindgen_test]
async fn get_token_authenticates_every_connection_and_refreshes_before_expiry() {
    let events = Events::new();
    let opts =
        options(&[server_auth()], &[("localStorage", false.into()), ("getToken", token_getter("ann", 3).into())]);
    let before = tokens_issued().await;
    let client = WasmClient::new(opts, events.function()).unwrap();
    let mine = "user:ann";
    assert_eq!(call(client.subscribe(mine.into(), None, None)).await.unwrap(), JsValue::TRUE);
    let offset = call(client.publish(mine.into(), args(&["k".into(), "v".into()]), None)).await.unwrap();
    wait_for("the message", || events.offsets(mine).contains(&offset.as_string().unwrap())).await;
    // Someone else's channel stays closed.
    let error = call(client.subscribe("user:bob".into(), None, None)).await.unwrap_err();
    assert_eq!(get(&error, "code").as_string().unwrap(), "forbidden");
    // A 3-second token is refreshed on the same connection (after about 1.5 s), not reconnected.
    sleep(4000).await;
    assert!(tokens_issued().await >= before + 2, "a fresh token was fetched");
    assert_eq!(events.count("connect"), 1, "the connection lived past the first token's expiry");
    assert_eq!(events.count("disconnect"), 0);
    let again = call(client.publish(mine.into(), args(&["k".into(), "w".into()]), None)).await;
    assert!(again.is_ok(), "still authenticated: {again:?}");
    client.close();
}

#[wasm_bindgen_test]
async fn a_refused_token_rejects_the_waiting_calls_and_says_why() {
    let events = Events::new();
    let opts = options(&[server_auth()], &[("localStorage", false.into()), ("token", "not.a.token".into())]);
    let client = WasmClient::new(opts, events.function()).unwrap();
    let error = call(client.subscribe("user:ann".into(), None, None)).await.unwrap_err();
    assert_eq!(get(&error, "code").as_string().unwrap(), "unauthorized");
    assert!(events.error_codes().contains(&"unauthorized".to_owned()));
    wait_for("the connection to go on without a token", || client.connected()).await;
    client.close();
    // A getToken that throws is reported the same way.
    let events = Events::new();
    let throws = Function::new_no_args("throw new Error('auth service down')");
    let opts = options(&[server_auth()], &[("localStorage", false.into()), ("getToken", throws.into())]);
    let client = WasmClient::new(opts, events.function()).unwrap();
    let error = call(client.publish("user:ann".into(), args(&["k".into(), "v".into()]), None)).await.unwrap_err();
    assert_eq!(get(&error, "code").as_string().unwrap(), "unauthorized");
    assert!(get(&error, "message").as_string().unwrap().contains("auth service down"));
    client.close();
}

#[wasm_bindgen_test]
async fn token_options_are_checked() {
    let get_token = Function::new_no_args("return 't'");
    let both = options(&[NOWHERE], &[("token", "t".into()), ("getToken", get_token.into())]);
    let error = WasmClient::new(both, Events::new().function()).err().unwrap();
    assert_eq!(get(&error, "code").as_string().unwrap(), "invalid_argument");
    let empty = options(&[NOWHERE], &[("token", "".into())]);
    assert!(WasmClient::new(empty, Events::new().function()).is_err());
}
