// End-to-end: the demo app (www-demo, built on the packed npm package) in Debian's headless
// Chromium, against a real Redis and two real server instances that tests/harness.mjs starts.
// Every wait is on the page's own signals (body data-state / data-target, rendered offsets).
import net from 'node:net';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

const { RD_SERVER_A, RD_SERVER_B, RD_CONTROL, RD_APP, RD_LB } = process.env;
assert.ok(RD_SERVER_A && RD_APP && RD_LB, 'run through tests/harness.mjs with RD_STATIC=www-demo/dist RD_CLUSTER=1');
const httpA = RD_SERVER_A.replace(/^ws/, 'http');
const httpB = RD_SERVER_B.replace(/^ws/, 'http');
const PATIENCE = 20000;

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
});
after(async () => { await browser?.close(); });

const control = async (method, path) => {
  const res = await fetch(RD_CONTROL + path, { method });
  assert.ok(res.ok, `${method} ${path}: ${res.status}`);
  return res.json();
};
const xrange = async (channel) => (await control('GET', `/xrange?channel=${channel}`)).map(([offset]) => offset);
const unique = (p) => `${p}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;

/** Opens the demo at `base` (a server's origin or the harness's /app/) on `channel`. */
async function open(context, base, targets, channel) {
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error('page error:', err));
  await page.goto(`${base}?targets=${targets.join(',')}&channels=${channel}`);
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: PATIENCE });
  return page;
}

const connectedTo = (page, url) =>
  page.waitForFunction((u) => document.body.dataset.state === 'connected' && document.body.dataset.target === u, url, { timeout: PATIENCE });

const received = (page, channel) => page.evaluate((c) => window.demo.received(c), channel);

async function waitForMessages(page, channel, count, what) {
  try {
    await page.waitForFunction(([c, n]) => window.demo.received(c).length >= n, [channel, count], { timeout: PATIENCE });
  } catch {
    const got = await received(page, channel);
    const stream = await xrange(channel);
    const missing = stream.filter((offset) => !got.includes(offset));
    const duplicates = await page.evaluate(() => window.demo.duplicates());
    assert.fail(`${what}: expected ${count} messages on #${channel}, the page shows ${got.length}; ` +
      `the stream holds ${stream.length}, missing ${JSON.stringify(missing.slice(0, 10))}, duplicates ${JSON.stringify(duplicates)}; ` +
      `page log: ${await page.textContent('#log')}`);
  }
  assert.deepEqual(await page.evaluate(() => window.demo.duplicates()), [], `${what}: no message twice`);
}

async function say(page, author, text) {
  await page.fill('#author', author);
  await page.fill('#text', text);
  await page.click('#publish button');
}

test('two browsers on different instances talk both ways', async () => {
  const channel = unique('room');
  const ann = await browser.newContext();
  const bob = await browser.newContext();
  const onA = await open(ann, httpA, [RD_SERVER_A, RD_SERVER_B], channel);
  const onB = await open(bob, httpB, [RD_SERVER_B], channel);
  await connectedTo(onA, RD_SERVER_A);
  await connectedTo(onB, RD_SERVER_B);
  await say(onA, 'ann', 'hello from instance A');
  await waitForMessages(onB, channel, 1, 'A → B');
  await say(onB, 'bob', 'hi from instance B');
  await waitForMessages(onA, channel, 2, 'B → A');
  await waitForMessages(onB, channel, 2, 'B sees its own');
  assert.deepEqual(await received(onA, channel), await xrange(channel));
  assert.deepEqual(await received(onB, channel), await xrange(channel));
  assert.match(await onB.textContent('#messages'), /hello from instance A/);
  // The picture in the README: a conversation, the connection badge and the server list.
  await say(onA, 'ann', 'Redistribute keeps every message in Redis Streams');
  await say(onB, 'bob', 'and my page resumes right where it left off');
  await waitForMessages(onA, channel, 4, 'screenshot conversation');
  await onA.setViewportSize({ width: 1100, height: 560 });
  // Written under target/ so a test run leaves the tree clean; refresh the README's picture with
  // RD_SCREENSHOT=docs/screenshot.png npm test.
  const shot = process.env.RD_SCREENSHOT ?? 'target/e2e/screenshot.png';
  mkdirSync(dirname(shot), { recursive: true });
  await onA.screenshot({ path: shot });
  await ann.close();
  await bob.close();
});

test('a reload shows stored history at once, even with both servers down, then catches up', async () => {
  const channel = unique('history');
  const context = await browser.newContext();
  let page = await open(context, RD_APP, [RD_SERVER_A, RD_SERVER_B], channel);
  await connectedTo(page, RD_SERVER_A);
  for (const text of ['one', 'two', 'three']) await say(page, 'ann', text);
  await waitForMessages(page, channel, 3, 'before the reload');
  // Give the batched localStorage write its moment, then take both servers away.
  await page.waitForFunction((c) => Object.keys(localStorage).some((k) => k.endsWith(`${c}~0`)), channel, { timeout: PATIENCE });
  await control('POST', '/server/0/stop');
  await control('POST', '/server/1/stop');
  try {
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: PATIENCE });
    const stored = await page.$$eval('#messages li[data-source="storage"]', (items) => items.map((li) => li.dataset.offset));
    assert.equal(stored.length, 3, 'history rendered from storage with no server up');
    assert.notEqual(await page.getAttribute('body', 'data-state'), 'connected');
    // Written while the page is offline.
    await control('POST', `/xadd?channel=${channel}&field=text&value=while-you-were-away`);
    await control('POST', `/xadd?channel=${channel}&field=text&value=and-this-too`);
  } finally {
    await control('POST', '/server/1/start');
    await control('POST', '/server/0/start');
  }
  await waitForMessages(page, channel, 5, 'catching up after the servers return');
  const shown = await page.$$eval('#messages li', (items) => items.map((li) => li.dataset.offset));
  assert.deepEqual(shown, await xrange(channel), 'every message once, in order');
  await context.close();
});

test('messages sent offline wait in the outbox across a reload and are stored once each, in order', async () => {
  const channel = unique('outbox');
  const context = await browser.newContext();
  let page = await open(context, RD_APP, [RD_SERVER_A, RD_SERVER_B], channel);
  await connectedTo(page, RD_SERVER_A);
  await say(page, 'ann', 'before');
  await waitForMessages(page, channel, 1, 'online');
  const outbox = (n) => page.waitForFunction((count) => document.body.dataset.outbox === String(count), n, { timeout: PATIENCE });
  await control('POST', '/server/0/stop');
  await control('POST', '/server/1/stop');
  try {
    await page.waitForFunction(() => document.body.dataset.state !== 'connected', null, { timeout: PATIENCE });
    for (const text of ['one', 'two', 'three']) await say(page, 'ann', text);
    await outbox(3);
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: PATIENCE });
    await outbox(3);
    assert.deepEqual(await page.$$eval('#outbox-items li span', (items) => items.map((li) => li.textContent)),
      [`#${channel} · ann: one`, `#${channel} · ann: two`, `#${channel} · ann: three`], 'restored, in order');
    // Changed my mind about "two".
    await page.click('#outbox-items li:nth-child(2) button');
    await outbox(2);
  } finally {
    await control('POST', '/server/1/start');
    await control('POST', '/server/0/start');
  }
  await waitForMessages(page, channel, 3, 'the outbox sent once a server is back');
  await outbox(0);
  const stream = await control('GET', `/xrange?channel=${channel}`);
  const texts = stream.map(([, fields]) => JSON.parse(fields[fields.indexOf('text') + 1]));
  assert.deepEqual(texts, ['before', 'one', 'three'], 'each once, in order, the cancelled one never');
  assert.deepEqual(await received(page, channel), stream.map(([offset]) => offset));
  assert.match(await page.textContent('#log'), /sent a message an earlier page left/);
  await context.close();
});

/** WebSocket connections open on the two servers now, from their /metrics. */
async function websockets() {
  let total = 0;
  for (const server of [httpA, httpB]) {
    const text = await (await fetch(new URL('/metrics', server))).text();
    total += Number(/^redistribute_websockets_open (\d+)$/m.exec(text)[1]);
  }
  return total;
}

/** Waits until `count()` returns `expected` (connections close asynchronously). */
async function until(what, count, expected) {
  const deadline = Date.now() + PATIENCE;
  let last;
  while ((last = await count()) !== expected) {
    if (Date.now() > deadline) assert.fail(`${what}: ${last}, expected ${expected}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('three tabs share one connection; when the leading tab closes another takes over and misses nothing', async () => {
  const channel = unique('tabs');
  await until('no connection left from earlier tests', websockets, 0);
  const context = await browser.newContext();
  const tabs = [];
  for (let i = 0; i < 3; i += 1) {
    tabs.push(await open(context, RD_APP, [RD_SERVER_A, RD_SERVER_B], channel));
    await connectedTo(tabs[i], RD_SERVER_A);
  }
  await until('connections for three tabs', websockets, 1);
  // A follower publishes through the leader; every tab shows it.
  await say(tabs[2], 'carol', 'from the third tab');
  for (const tab of tabs) await waitForMessages(tab, channel, 1, 'a follower\'s publish');

  await control('POST', `/publisher?channel=${channel}&count=300&interval=10`);
  for (const tab of tabs) await waitForMessages(tab, channel, 30, 'before the leader goes');
  await tabs[0].close();
  await control('GET', '/publisher/wait');
  const stream = await xrange(channel);
  assert.equal(stream.length, 301);
  for (const tab of tabs.slice(1)) {
    await waitForMessages(tab, channel, 301, 'after the handover');
    assert.deepEqual(await received(tab, channel), stream, 'exactly the stream, in order');
  }
  await until('connections for the two tabs left', websockets, 1);
  await context.close();
});

test('shared tabs: each tab gets what it follows; publishes waiting at a handover are stored once', async () => {
  const [main, side] = [unique('main'), unique('side')];
  const context = await browser.newContext();
  const leader = await open(context, RD_APP, [RD_SERVER_A, RD_SERVER_B], main);
  await connectedTo(leader, RD_SERVER_A);
  const follower = await open(context, RD_APP, [RD_SERVER_A, RD_SERVER_B], main);
  await connectedTo(follower, RD_SERVER_A);
  // Only the follower follows `side`.
  await follower.evaluate((c) => window.demo.client.subscribe(c), side);
  await control('POST', `/xadd?channel=${side}&field=text&value=only-for-the-follower`);
  await waitForMessages(follower, side, 1, 'the follower\'s own channel');
  // The follower leaves `main`; the leader still gets it.
  await follower.evaluate((c) => window.demo.client.unsubscribe(c), main);
  await control('POST', `/xadd?channel=${main}&field=text&value=still-followed`);
  await waitForMessages(leader, main, 1, 'the leader still follows main');
  assert.deepEqual(await received(leader, side), [], 'the leader never asked for side');

  // No server: the follower's publishes wait in the leader's outbox; then the leader goes.
  await control('POST', '/server/0/stop');
  await control('POST', '/server/1/stop');
  try {
    await follower.waitForFunction(() => document.body.dataset.state !== 'connected', null, { timeout: PATIENCE });
    await follower.evaluate((c) => {
      window.sent = [1, 2].map((n) => window.demo.client.publish(c, 'n', n));
    }, side);
    await follower.waitForFunction(() => document.body.dataset.outbox === '2', null, { timeout: PATIENCE });
    await leader.close();
  } finally {
    await control('POST', '/server/1/start');
    await control('POST', '/server/0/start');
  }
  const offsets = await follower.evaluate(() => Promise.all(window.sent));
  const stream = await xrange(side);
  assert.deepEqual(stream.slice(1), offsets, 'each publish stored once, its call resolved with its offset');
  await waitForMessages(follower, side, 3, 'its publishes');
  assert.deepEqual(await received(follower, side), stream);
  await context.close();
});

test('behind HAProxy on a Redis Cluster: the instance the page is on goes away, and it misses nothing', async () => {
  const channel = unique('lb');
  const target = RD_LB.replace(/^http/, 'ws');
  const context = await browser.newContext();
  // The page comes through the load balancer too (the instances serve the demo).
  const page = await open(context, RD_LB, [target], channel);
  await connectedTo(page, target);
  let counts;
  const deadline = Date.now() + PATIENCE;
  while ((counts = await control('GET', '/cluster/websockets')).reduce((a, b) => a + b, 0) !== 1) {
    assert.ok(Date.now() < deadline, `one WebSocket on the instances, got ${counts}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const on = counts.indexOf(1);
  await control('POST', `/cluster/publisher?channel=${channel}&count=300&interval=10`);
  await waitForMessages(page, channel, 30, 'before the instance goes');
  // SIGTERM: the instance closes its sockets with 1001 and stops accepting; HAProxy sends the
  // page's reconnect to the other one.
  await control('POST', `/cluster/server/${on}/stop`);
  try {
    await control('GET', '/cluster/publisher/wait');
    await waitForMessages(page, channel, 300, 'after the instance went away');
    const stream = (await control('GET', `/cluster/xrange?channel=${channel}`)).map(([offset]) => offset);
    assert.equal(stream.length, 300);
    assert.deepEqual(await received(page, channel), stream, 'exactly the stream, in order');
    assert.deepEqual(await control('GET', '/cluster/websockets'), on === 0 ? [0, 1] : [1, 0], 'now on the other instance');
    assert.match(await page.textContent('#log'), /disconnected \(1001/);
  } finally {
    await control('POST', `/cluster/server/${on}/start`);
  }
  await context.close();
});

test('failover: the page moves to the other server and misses nothing', async () => {
  const channel = unique('failover');
  const context = await browser.newContext();
  const page = await open(context, RD_APP, [RD_SERVER_A, RD_SERVER_B], channel);
  await connectedTo(page, RD_SERVER_A);
  await control('POST', `/publisher?channel=${channel}&count=300&interval=10`);
  await waitForMessages(page, channel, 30, 'before the failover');
  await control('POST', '/server/0/stop');
  try {
    await connectedTo(page, RD_SERVER_B);
    await control('GET', '/publisher/wait');
    await waitForMessages(page, channel, 300, 'after the failover');
    assert.deepEqual(await received(page, channel), await xrange(channel), 'exactly the stream, in order');
    assert.match(await page.textContent('#log'), /disconnected/);
  } finally {
    await control('POST', '/server/0/start');
  }
  await context.close();
});

test('an entry XADDed by another program appears in the page', async () => {
  const channel = unique('direct');
  const context = await browser.newContext();
  const page = await open(context, httpB, [RD_SERVER_B], channel);
  await connectedTo(page, RD_SERVER_B);
  const { offset } = await control('POST', `/xadd?channel=${channel}&field=text&value=from-redis-cli`);
  await page.waitForSelector(`#messages li[data-offset="${offset}"]`, { timeout: PATIENCE });
  assert.match(await page.textContent(`#messages li[data-offset="${offset}"]`), /from-redis-cli/);
  await context.close();
});

test('bad input shows a clear error and the page keeps working', async () => {
  const channel = unique('bad');
  const context = await browser.newContext();
  const page = await open(context, httpA, [RD_SERVER_A], channel);
  await connectedTo(page, RD_SERVER_A);
  await page.click('summary');
  await page.fill('#raw-fields', 'just three words');
  await page.click('#raw button');
  await page.waitForSelector('#error:not([hidden])', { timeout: PATIENCE });
  assert.match(await page.textContent('#error'), /invalid_argument: .*even number/);

  await page.fill('#new-channel', 'x'.repeat(300));
  await page.click('#add-channel button');
  await page.waitForFunction(() => /invalid_argument: .*limit is 256/.test(document.querySelector('#error').textContent), null, { timeout: PATIENCE });

  await say(page, 'ann', 'still working');
  await waitForMessages(page, channel, 1, 'after the errors');
  assert.equal(await page.isHidden('#error'), true, 'the error clears after a successful send');
  await context.close();
});

test('the page shows each failed attempt, then the connection', async () => {
  const dead = await new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => { const { port } = server.address(); server.close(() => resolve(`ws://127.0.0.1:${port}/`)); });
  });
  const context = await browser.newContext();
  const page = await open(context, httpA, [dead, RD_SERVER_A], unique('state'));
  await connectedTo(page, RD_SERVER_A);
  assert.match(await page.textContent('#log'), new RegExp(`could not connect to ${dead.replace(/[/.]/g, '\\$&')} \\(1006`));
  assert.equal(await page.evaluate(() => window.demo.client.state), 'connected');
  await context.close();
});

test('the package works from a plain <script type="module"> with no bundler', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${RD_CONTROL}/pages/plain.html?target=${RD_SERVER_A}`);
  await page.waitForFunction(() => document.body.dataset.result !== 'pending', null, { timeout: PATIENCE });
  assert.equal(await page.getAttribute('body', 'data-result'), 'ok');
  await context.close();
});

test('a page with tokens from its auth service reads its own channel and no one else\'s', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${RD_CONTROL}/pages/tokens.html?target=${process.env.RD_SERVER_AUTH}&user=ann`);
  await page.waitForFunction(() => document.body.dataset.result !== 'pending', null, { timeout: PATIENCE });
  assert.equal(await page.getAttribute('body', 'data-result'), 'ok');
  await context.close();
});
