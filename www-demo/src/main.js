// The demo chat: every feature of redistribute-client in a page a person can use.
//
// Servers come from `?targets=url1,url2` (default: the page's own origin). Each channel's history
// is shown from localStorage before the network answers, then kept live. Messages sent while no
// server is reachable wait in the outbox, shown under the messages, and survive a reload. Test
// hooks: the body's data-state / data-target / data-outbox attributes and `window.demo`.
import createClient from 'redistribute-client';

const params = new URLSearchParams(location.search);
const targets = (params.get('targets') ?? location.origin).split(',').filter(Boolean);
const channels = (params.get('channels') ?? 'general,random').split(',').filter(Boolean);
const $ = (id) => document.getElementById(id);

const client = createClient({ targets });
const state = { current: channels[0], seen: new Map(), duplicates: [] };
window.demo = {
  client,
  received: (channel) => [...(state.seen.get(channel)?.keys() ?? [])],
  // Offsets delivered twice: the client promises none (the end-to-end tests check it).
  duplicates: () => [...state.duplicates],
};

function log(text, kind = '') {
  const li = document.createElement('li');
  li.className = kind;
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('log').prepend(li);
  while ($('log').children.length > 30) $('log').lastChild.remove();
}

function showError(err) {
  $('error').hidden = false;
  $('error').textContent = `${err.code ?? 'error'}: ${err.message}`;
}

function setStatus(kind, text) {
  document.body.dataset.state = kind;
  $('status').className = `status ${kind}`;
  $('status').textContent = text;
}

function renderTargets(active) {
  $('targets').replaceChildren(...targets.map((t) => {
    const li = document.createElement('li');
    li.textContent = t;
    if (t.replace(/^http/, 'ws').replace(/\/?$/, '/') === active) li.className = 'active';
    return li;
  }));
}

function renderChannels() {
  $('channels').replaceChildren(...[...state.seen.keys()].map((name) => {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.textContent = `#${name}`;
    button.className = name === state.current ? 'current' : '';
    button.onclick = () => { state.current = name; renderChannels(); renderMessages(); };
    li.append(button);
    return li;
  }));
  $('channel-title').textContent = `#${state.current}`;
}

function messageItem(message, source) {
  const li = document.createElement('li');
  li.dataset.offset = message.offset;
  li.dataset.source = source;
  const ms = Number(message.offset.split('-')[0]);
  const who = document.createElement('b');
  who.textContent = message.author ?? 'someone';
  const text = document.createElement('span');
  const fields = Object.entries(message).filter(([k]) => !['offset', 'author', 'text', 'at'].includes(k));
  text.textContent = message.text ?? fields.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(' ');
  const meta = document.createElement('small');
  meta.textContent = `${new Date(ms).toLocaleTimeString()} · ${message.offset}${source === 'storage' ? ' · stored' : ''}`;
  li.append(who, text, meta);
  return li;
}

function renderMessages() {
  const list = state.seen.get(state.current) ?? new Map();
  $('messages').replaceChildren(...[...list.values()].map(({ message, source }) => messageItem(message, source)));
  $('messages').scrollTop = $('messages').scrollHeight;
}

function add(channel, messages, source) {
  if (!state.seen.has(channel)) state.seen.set(channel, new Map());
  const list = state.seen.get(channel);
  const fresh = [];
  for (const message of messages) {
    if (list.has(message.offset)) {
      // Never expected: recorded and shown, and the rest of the batch still goes in.
      state.duplicates.push(message.offset);
      log(`duplicate message ${message.offset} on #${channel}`, 'bad');
      continue;
    }
    list.set(message.offset, { message, source });
    fresh.push(message);
  }
  if (channel === state.current) {
    for (const message of fresh) $('messages').append(messageItem(message, source));
    $('messages').scrollTop = $('messages').scrollHeight;
  }
}

/** The publishes waiting for a server, each unsent one with a button that cancels it. */
async function renderOutbox() {
  const waiting = await client.outbox();
  document.body.dataset.outbox = String(waiting.length);
  $('outbox').hidden = waiting.length === 0;
  $('outbox-count').textContent = String(waiting.length);
  $('outbox-items').replaceChildren(...waiting.map(({ id, channel, message, sent, at }) => {
    const li = document.createElement('li');
    li.dataset.id = id;
    const text = document.createElement('span');
    text.textContent = `#${channel} · ${message.author ?? 'someone'}: ${message.text ?? JSON.stringify(message)}`;
    const when = document.createElement('small');
    when.textContent = `${new Date(at).toLocaleTimeString()}${sent ? ' · sending…' : ''}`;
    li.append(text, when);
    if (!sent) {
      const cancel = document.createElement('button');
      cancel.textContent = 'Cancel';
      cancel.onclick = () => client.cancel(id);
      li.append(cancel);
    }
    return li;
  }));
}

/** Shows a channel's stored history at once: no network needed. */
async function showHistory(channel) {
  if (state.seen.has(channel)) return;
  state.seen.set(channel, new Map());
  const { messages, gap } = await client.load(channel);
  add(channel, messages, 'storage');
  if (gap) log(`#${channel}: ${gap.count} messages after the stored ones could not be stored; the server sends them again`);
  renderChannels();
}

/** History, then the subscription (resuming after the stored last offset), confirmed. */
async function join(channel) {
  await showHistory(channel);
  await client.subscribe(channel);
}

client.on('connect', (url) => {
  setStatus('connected', `connected · ${url}`);
  document.body.dataset.target = url;
  renderTargets(url);
  log(`connected to ${url}`, 'good');
});
client.on('disconnect', (code, reason) => {
  setStatus('disconnected', `reconnecting… (${code}${reason ? ` ${reason}` : ''})`);
  log(`disconnected (${code}${reason ? `: ${reason}` : ''}); trying the next server`, 'bad');
});
client.on('state', (now) => {
  if (now === 'connecting') setStatus('connecting', `connecting · ${client.target}`);
});
client.on('connect_error', ({ target, code, reason }) => {
  setStatus('disconnected', `cannot reach ${target} (${code}${reason ? ` ${reason}` : ''}); retrying…`);
  log(`could not connect to ${target} (${code}${reason ? `: ${reason}` : ''})`, 'bad');
});
client.on('messages', (channel, messages) => add(channel, messages, 'live'));
client.on('outbox', () => renderOutbox());
client.on('published', (channel, offset) => log(`sent a message an earlier page left for #${channel} (${offset})`, 'good'));
client.on('error', (err) => { log(`${err.code}: ${err.message}`, 'bad'); });

$('publish').onsubmit = async (event) => {
  event.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  const author = $('author').value.trim() || 'anonymous';
  localStorage.setItem('demo:author', author);
  $('text').value = '';
  try {
    await client.publish(state.current, 'author', author, 'text', text);
    $('error').hidden = true;
  } catch (err) {
    if (err.code !== 'cancelled') showError(err);
  }
};

$('raw').onsubmit = async (event) => {
  event.preventDefault();
  const parts = $('raw-fields').value.split(/\s+/).filter(Boolean);
  try {
    const offset = await client.publish(state.current, ...parts);
    $('error').hidden = true;
    log(`published raw fields at ${offset}`);
  } catch (err) {
    showError(err);
  }
};

$('add-channel').onsubmit = async (event) => {
  event.preventDefault();
  const name = $('new-channel').value.trim();
  if (!name) return;
  try {
    await join(name);
    state.current = name;
    $('new-channel').value = '';
    $('error').hidden = true;
    renderChannels();
    renderMessages();
  } catch (err) {
    state.seen.delete(name);
    renderChannels();
    showError(err);
  }
};

$('author').value = localStorage.getItem('demo:author') ?? '';
setStatus('connecting', `connecting · ${targets[0]}`);
renderTargets(null);
for (const channel of channels) {
  await showHistory(channel);
  // Confirmed whenever a server is reachable; the page is usable before that.
  client.subscribe(channel).catch(showError);
}
renderChannels();
renderMessages();
await renderOutbox();
document.body.dataset.ready = 'true';
