// The built npm package in Node.js 20, with the `ws` package's WebSocket and no localStorage,
// against the servers that tests/harness.mjs runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import createClient, { Client } from '../../dist/redistribute-client/index.js';

const { RD_SERVER_A, RD_SERVER_B, RD_CONTROL } = process.env;
assert.ok(RD_SERVER_A && RD_CONTROL, 'run through tests/harness.mjs');

const control = async (method, path) => {
  const res = await fetch(RD_CONTROL + path, { method });
  assert.ok(res.ok, `${method} ${path}: ${res.status}`);
  return res.json();
};

async function waitFor(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function recorder(client, channel) {
  const got = [];
  client.on('messages', (ch, messages) => { if (ch === channel) got.push(...messages); });
  return got;
}

const unique = (p) => `${p}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
const http = (url) => url.replace(/^ws/, 'http');

test('round trip with the ws constructor and http(s) targets', async () => {
  const client = createClient({ targets: [http(RD_SERVER_A)], WebSocket, localStorage: false });
  assert.ok(client instanceof Client);
  const channel = unique('node');
  const got = recorder(client, channel);
  const connects = [];
  client.on('connect', (url) => connects.push(url));
  assert.equal(await client.subscribe(channel), true);
  const offset = await client.publish(channel, 'TEST_MESSAGE', { foo: 'bar' }, 'n', 7);
  await waitFor('the message', () => got.length === 1);
  assert.deepEqual(got[0], { offset, TEST_MESSAGE: { foo: 'bar' }, n: 7 });
  assert.deepEqual(connects, [RD_SERVER_A]);
  assert.deepEqual(await client.load(channel), { messages: [], lastOffset: null, gap: null }, 'no storage in Node');
  client.close();
});

test('publish rejects odd arguments with a clear Error', async () => {
  const client = createClient({ targets: RD_SERVER_A, WebSocket, localStorage: false });
  await assert.rejects(client.publish('chat', 'foo'), (err) => err instanceof Error && err.code === 'invalid_argument' && /even number/.test(err.message));
  await assert.rejects(client.subscribe('has space'), { code: 'invalid_argument' });
  client.close();
  await assert.rejects(client.publish('chat', 'a', 'b'), { code: 'closed' });
});

test('every bad argument rejects with invalid_argument naming it; nothing reaches the module unchecked', async () => {
  const client = createClient({ targets: RD_SERVER_A, WebSocket, localStorage: false });
  const circular = {};
  circular.self = circular;
  const cases = [
    [() => client.publish(42, 'k', 'v'), /channel must be a string, got number 42/],
    [() => client.publish(null, 'k', 'v'), /channel must be a string, got null/],
    [() => client.subscribe(42), /channel must be a string/],
    [() => client.load(42), /channel must be a string/],
    [() => client.unsubscribe(undefined), /channel must be a string, got undefined/],
    [() => client.ack('c', 7, ['1-1']), /group must be a string/],
    [() => client.ack('c', 'g', [1]), /offsets\[0\] must be a string/],
    [() => client.subscribe('c', 5), /offset string or \{ group, consumer \}/],
    [() => client.subscribe('c', { group: 'g' }), /consumer must be a string/],
    [() => client.publish('c', 'k', 10n), /field "k" could not be encoded/],
    [() => client.publish('c', 'k', circular), /field "k" could not be encoded/],
    [() => client.publish('c', 'k', undefined), /field "k" encodes to undefined/],
    [() => client.publish('c', 1, 'v'), /field name #1 must be a string/],
    [() => client.publish('c', 'offset', 'v'), /cannot be named "offset"/],
    [() => client.publish('x'.repeat(300), 'k', 'v'), /limit is 256/],
    [() => client.subscribe('bad name!'), /channel name contains/],
  ];
  for (const [call, message] of cases) {
    await assert.rejects(call(), (err) => err.code === 'invalid_argument' && message.test(err.message), String(message));
  }
  const throwing = createClient({ targets: RD_SERVER_A, WebSocket, localStorage: false, encode: () => { throw new Error('nope'); } });
  await assert.rejects(throwing.publish('c', 'k', 'v'), (err) => err.code === 'invalid_argument' && /could not be encoded: nope/.test(err.message));
  throwing.close();
  // The client still works after all of that.
  assert.ok(await client.publish(unique('after'), 'k', 'v'));
  client.close();
});

test('createClient throws at once on missing, empty or unsupported targets and bad options', () => {
  const bad = [
    [undefined, /options object/],
    [{}, /targets is required/],
    [{ targets: [] }, /at least one server/],
    [{ targets: ['ftp://nope'] }, /not a ws:\/\/, wss:\/\/, http:\/\/ or https:\/\/ URL/],
    [{ targets: [42] }, /targets\[0\] must be a URL string/],
    [{ targets: 'ws://h', storageLimit: '10' }, /storageLimit must be a number/],
    [{ targets: 'ws://h', decode: 'JSON' }, /decode must be a function/],
    [{ targets: 'ws://h', token: 't', getToken: () => 't' }, /either option token or option getToken/],
  ];
  for (const [options, message] of bad) {
    assert.throws(() => createClient(options), (err) => err.code === 'invalid_argument' && message.test(err.message), String(message));
  }
});

test('data rules: values round-trip exactly, field names are only data, a throwing decode is reported', async () => {
  const client = createClient({ targets: RD_SERVER_A, WebSocket, localStorage: false });
  const channel = unique('data');
  const got = recorder(client, channel);
  await client.subscribe(channel);
  const offset = await client.publish(channel, 'text', '42', 'n', 42, '__proto__', { isAdmin: true }, 'constructor', 'c', 'nested', { a: [1, null] });
  await waitFor('the message', () => got.length === 1);
  const [m] = got;
  assert.equal(m.text, '42', 'a string stays a string');
  assert.equal(m.n, 42);
  assert.equal(Object.getPrototypeOf(m), Object.prototype, 'the prototype is untouched');
  assert.equal(m.isAdmin, undefined);
  assert.deepEqual(Object.getOwnPropertyDescriptor(m, '__proto__').value, { isAdmin: true });
  assert.equal(m.constructor, 'c');
  assert.deepEqual(m.nested, { a: [1, null] });
  assert.equal(m.offset, offset);

  const strict = createClient({ targets: RD_SERVER_A, WebSocket, localStorage: false, decode: (s) => { if (s.includes('bad')) throw new Error('not mine'); return s; } });
  const errors = [];
  strict.on('error', (e) => errors.push(e));
  const mine = recorder(strict, channel);
  await strict.subscribe(channel, offset);
  const badOffset = await client.publish(channel, 'v', 'bad', 'w', 'good');
  await waitFor('the message and the error', () => mine.length === 1 && errors.length === 1);
  assert.equal(mine[0].v, '"bad"', 'the raw string is delivered');
  assert.equal(mine[0].w, '"good"');
  assert.equal(errors[0].code, 'decode_failed');
  assert.equal(errors[0].channel, channel);
  assert.equal(errors[0].offset, badOffset);
  assert.match(errors[0].message, /not mine/);
  strict.close();
  client.close();
});

test('reconnects after a server restart without loss or repeat, and settles cut-off publishes', async () => {
  const client = createClient({ targets: [RD_SERVER_A, RD_SERVER_B], WebSocket, localStorage: false, reconnectDelay: 50, reconnectDelayMax: 400 });
  const channel = unique('node-restart');
  const got = recorder(client, channel);
  let disconnects = 0;
  client.on('disconnect', () => { disconnects += 1; });
  await client.subscribe(channel, '0');
  await control('POST', `/publisher?channel=${channel}&count=200&interval=10`);
  await waitFor('some messages', () => got.length >= 20);
  await control('POST', '/server/0/stop');
  await waitFor('the disconnect', () => disconnects === 1);
  await control('POST', '/server/0/start');
  await control('GET', '/publisher/wait');
  const stream = (await control('GET', `/xrange?channel=${channel}`)).map(([offset]) => offset);
  assert.equal(stream.length, 200);
  await waitFor('every message', () => got.length >= 200);
  assert.deepEqual(got.map((m) => m.offset), stream);
  assert.deepEqual(got.map((m) => m.n), [...Array(200).keys()]);
  client.close();
});

test('consumer groups: Node clients share the work, and a crashed member\'s entries come back', async () => {
  const channel = unique('jobs');
  const workers = [0, 1, 2].map(() => createClient({ targets: [RD_SERVER_A], WebSocket, localStorage: false }));
  const got = [[], [], []];
  workers.forEach((w, i) => w.on('messages', (ch, messages, info) => {
    if (ch === channel && info?.group === 'g') got[i].push(...messages.map((m) => m.offset));
  }));
  await Promise.all(workers.map((w, i) => w.subscribe(channel, { group: 'g', consumer: `w${i}`, offset: '0', autoAck: true })));
  await control('POST', `/publisher?channel=${channel}&count=300&interval=2`);
  await control('GET', '/publisher/wait');
  const stream = (await control('GET', `/xrange?channel=${channel}`)).map(([offset]) => offset);
  await waitFor('every entry processed', () => got.flat().length >= stream.length);
  assert.deepEqual([...got.flat()].sort(), [...stream].sort(), 'each entry once, across the group');
  assert.ok(got.filter((g) => g.length > 0).length >= 2, `the work is shared: ${got.map((g) => g.length)}`);
  workers.forEach((w) => w.close());

  // A member takes entries and dies without acknowledging them.
  const crasher = createClient({ targets: [RD_SERVER_A], WebSocket, localStorage: false });
  let taken = [];
  crasher.on('messages', (ch, messages) => { if (ch === channel) taken.push(...messages.map((m) => m.offset)); });
  await crasher.subscribe(channel, { group: 'g2', consumer: 'crasher', offset: '0' });
  await waitFor('the crasher to get work', () => taken.length > 0);
  crasher.close();
  taken = [...new Set(taken)];

  const survivor = createClient({ targets: [RD_SERVER_B], WebSocket, localStorage: false });
  const seen = new Map();
  survivor.on('messages', (ch, messages, info) => {
    if (ch === channel && info?.group === 'g2') for (const m of messages) seen.set(m.offset, m.deliveries);
  });
  await survivor.subscribe(channel, { group: 'g2', consumer: 'survivor', autoAck: true });
  await waitFor('the crashed member\'s entries to come back', () => seen.size >= stream.length);
  assert.deepEqual([...seen.keys()].sort(), [...stream].sort(), 'none lost');
  for (const offset of taken) assert.ok(seen.get(offset) >= 2, `${offset} was redelivered and counted`);
  await assert.rejects(survivor.ack(channel, 'g2', ['1-1']), (err) => err.code === 'bad_request' && /not pending/.test(err.message));
  await assert.rejects(survivor.subscribe(channel, { group: 'g3' }), { code: 'invalid_argument' });
  survivor.close();
});

// A fake server speaking the protocol's subprotocol; `onConnection(ws)` decides how it misbehaves.
async function fakeServer(onConnection) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (protocols) => [...protocols][0] });
  wss.on('connection', onConnection);
  await new Promise((resolve) => wss.on('listening', resolve));
  return { url: `ws://127.0.0.1:${wss.address().port}/`, close: () => { for (const ws of wss.clients) ws.terminate(); wss.close(); } };
}

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test('while every target refuses: a connect_error per attempt, states that follow, no silence', async () => {
  const target = `ws://127.0.0.1:${await freePort()}/`;
  const client = createClient({ targets: target, WebSocket, localStorage: false, reconnectDelay: 20, reconnectDelayMax: 40 });
  const states = [];
  const failures = [];
  client.on('state', (state) => states.push(state));
  client.on('connect_error', (attempt) => failures.push(attempt));
  assert.equal(client.state, 'connecting');
  await waitFor('three failed attempts', () => failures.length >= 3);
  assert.deepEqual(Object.keys(failures[0]).sort(), ['code', 'reason', 'target']);
  assert.equal(failures[0].target, target);
  assert.equal(failures[0].code, 1006);
  assert.deepEqual(states.slice(0, 4), ['connecting', 'disconnected', 'connecting', 'disconnected']);
  assert.equal(client.connected, false);
  client.close();
  assert.equal(client.state, 'closed');
  assert.equal(states.at(-1), 'closed');
});

test('a target that accepts TCP but never completes the handshake is abandoned for the next', async () => {
  const held = [];
  const hanging = net.createServer((socket) => held.push(socket));
  await new Promise((resolve) => hanging.listen(0, '127.0.0.1', resolve));
  const silent = `ws://127.0.0.1:${hanging.address().port}/`;
  const client = createClient({ targets: [silent, RD_SERVER_A], WebSocket, localStorage: false, connectTimeout: 1000 });
  const failures = [];
  client.on('connect_error', (attempt) => failures.push(attempt));
  await waitFor('a connection to the next target', () => client.connected, 15000);
  assert.equal(client.target, RD_SERVER_A);
  assert.equal(failures[0].target, silent);
  assert.equal(failures[0].code, 4408);
  assert.match(failures[0].reason, /not ready within 1000 ms/);
  client.close();
  for (const socket of held) socket.destroy();
  hanging.close();
});

test('a server that accepts and closes at once is retried with a growing delay', async () => {
  let opened = 0;
  const server = await fakeServer((ws) => { opened += 1; ws.close(1008, 'go away'); });
  const client = createClient({ targets: server.url, WebSocket, localStorage: false, reconnectDelay: 250 });
  const failures = [];
  client.on('connect_error', (attempt) => failures.push(attempt));
  client.on('error', () => {}); // each refusal is also reported as `forbidden`
  await sleep(3500);
  client.close();
  server.close();
  // Restarting the backoff after every handshake made this 20 or more.
  assert.ok(opened >= 2 && opened <= 10, `${opened} connections in 3.5 s`);
  assert.ok(failures.every((f) => f.code === 1008 && f.reason === 'go away'));
});

test('entries from a misbehaving server are checked one by one: bad ones reported, good ones kept', async () => {
  const server = await fakeServer((ws) => {
    ws.on('message', (data) => {
      const request = JSON.parse(data);
      if (request.op !== 'subscribe') return;
      ws.send(JSON.stringify({ id: request.id, ok: { offset: '5-0' } }));
      const entry = (offset, ...fields) => ({ offset, fields });
      ws.send(JSON.stringify({ channel: request.channel, messages: [
        entry('8-0', 'k', '"a"'), entry('7-0', 'k', '"b"'), entry('9-0', 'k', '"c"'), entry('9-0', 'k', '"d"'),
        entry('x', 'k', '"e"'), entry('10-0', 'k'), { offset: '11-0', fields: [] }, entry('12-0', '__proto__', '{"isAdmin":true}'),
      ] }));
    });
  });
  const client = createClient({ targets: server.url, WebSocket, localStorage: false });
  const got = recorder(client, 'fake');
  const errors = [];
  client.on('error', (e) => errors.push(e));
  await client.subscribe('fake');
  await waitFor('the good entries', () => got.length === 3);
  assert.deepEqual(got.map((m) => m.offset), ['8-0', '9-0', '12-0']);
  assert.equal(got[2].isAdmin, undefined, 'a __proto__ field from the server is only data');
  assert.equal(Object.getPrototypeOf(got[2]), Object.prototype);
  await waitFor('the reports', () => errors.length === 2);
  assert.ok(errors.every((e) => e.code === 'protocol' && e.channel === 'fake'));
  client.close();
  server.close();
});

test('a reply the client cannot read settles its call with protocol; a silent server with timeout', async () => {
  const server = await fakeServer((ws) => {
    ws.on('message', (data) => {
      const request = JSON.parse(data);
      if (request.op === 'publish' && request.fields[1] === '"garbled"') ws.send(JSON.stringify({ id: request.id, ok: { offset: 'soon' } }));
      // Anything else goes unanswered.
    });
  });
  const client = createClient({ targets: server.url, WebSocket, localStorage: false, requestTimeout: 1500 });
  await assert.rejects(client.publish('c', 'k', 'garbled'), (err) => err.code === 'protocol' && /bad offset/.test(err.message));
  await assert.rejects(client.publish('c', 'k', 'ignored'), (err) => err.code === 'timeout' && /may or may not have been stored/.test(err.message));
  client.close();
  server.close();
});

test('a publish cut off by a dropped connection goes out again with its key and settles once', async () => {
  const keys = [];
  let connections = 0;
  const server = await fakeServer((ws) => {
    connections += 1;
    const first = connections === 1;
    ws.on('message', (data) => {
      const request = JSON.parse(data);
      if (request.op !== 'publish') return;
      keys.push(request.idempotency_key);
      // The first connection drops before answering; the second answers as a server that
      // already stored the entry under that key.
      if (first) ws.terminate();
      else ws.send(JSON.stringify({ id: request.id, ok: { offset: '7-0', duplicate: true } }));
    });
  });
  const client = createClient({ targets: server.url, WebSocket, localStorage: false, reconnectDelay: 20 });
  client.on('error', () => {});
  assert.equal(await client.publish('c', 'k', 'v'), '7-0');
  assert.equal(keys.length, 2);
  assert.equal(keys[0], keys[1], 'the same key both times');
  assert.match(keys[0], /^[0-9a-f]{16}-\d+$/);
  const other = createClient({ targets: server.url, WebSocket, localStorage: false });
  await other.publish('c', 'k', 'v');
  assert.notEqual(keys[2].split('-')[0], keys[0].split('-')[0], 'each client has its own key prefix');
  client.close();
  other.close();
  server.close();
});

test('the outbox lists what waits for the server, decoded; an unsent publish can be cancelled', async () => {
  const target = `ws://127.0.0.1:${await freePort()}/`;
  const client = createClient({ targets: target, WebSocket, localStorage: false, reconnectDelay: 20 });
  const counts = [];
  client.on('outbox', (n) => counts.push(n));
  client.on('connect_error', () => {});
  const first = client.publish('chat', 'text', 'hello', 'n', 1);
  const second = client.publish('chat', 'text', 'bye');
  const waiting = await client.outbox();
  assert.deepEqual(waiting.map(({ channel, message, sent }) => ({ channel, message, sent })), [
    { channel: 'chat', message: { text: 'hello', n: 1 }, sent: false },
    { channel: 'chat', message: { text: 'bye' }, sent: false },
  ]);
  assert.match(waiting[0].id, /^[0-9a-f]{16}-1$/);
  assert.ok(Math.abs(waiting[0].at - Date.now()) < 5000);
  assert.equal(await client.cancel(waiting[1].id), true);
  await assert.rejects(second, { code: 'cancelled' });
  assert.equal(await client.cancel(waiting[1].id), false, 'only once');
  await assert.rejects(client.cancel(7), { code: 'invalid_argument' });
  assert.deepEqual(counts, [1, 2, 1]);
  client.close();
  await assert.rejects(first, { code: 'closed' });
  assert.deepEqual(await client.outbox().catch((e) => e.code), 'closed');
});
