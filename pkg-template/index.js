// redistribute-client: the JavaScript face of the WebAssembly client.
//
// The logic (protocol, reconnects, persistence) runs in WebAssembly; this file loads it (with a
// URL that bundlers such as Vite understand, or from disk in Node.js), gives it an event emitter,
// checks every argument before it reaches the module (a wrong type there would trap), encodes
// published values and turns received entries into messages.

import init, { WasmClient } from './wasm/redistribute_client.js';
import { DirectLink, SharedLink, canShare } from './tabs.js';

let loading;

// Node's file API, imported only in Node. The specifier is a variable so that browser bundlers
// (Vite, webpack) neither try to resolve it nor warn about it.
const NODE_FS = 'node:fs/promises';

const isNode = typeof process !== 'undefined' && process.versions != null && process.versions.node != null;

function loadWasm() {
  if (!loading) {
    const url = new URL('./wasm/redistribute_client_bg.wasm', import.meta.url);
    loading = isNode && url.protocol === 'file:'
      ? import(/* @vite-ignore */ /* webpackIgnore: true */ NODE_FS).then((fs) => fs.readFile(url)).then((bytes) => init({ module_or_path: bytes }))
      : init({ module_or_path: url });
  }
  return loading;
}

const EVENTS = new Set(['state', 'connect', 'connect_error', 'disconnect', 'messages', 'broadcast', 'outbox', 'published', 'error']);
const TARGET = /^(wss?|https?):\/\/[^/?#]/i;

// Lossless by default: every value goes out as JSON (strings too) and comes back as it was.
// Values not written as JSON (by another publisher) arrive as their raw string.
const encodeJson = (value) => JSON.stringify(value);
const decodeJson = (text) => {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
};

/** An `Error` with a stable `code` (and the `channel` concerned, when there is one). */
function codedError(code, message, channel, Kind = Error) {
  const err = new Kind(message);
  err.code = code;
  if (channel !== undefined) err.channel = channel;
  return err;
}

const invalid = (message) => codedError('invalid_argument', `redistribute-client: ${message}`, undefined, TypeError);

/** What a value is, for error messages. */
function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  switch (typeof value) {
    case 'undefined': return 'undefined';
    case 'number': case 'boolean': return `${typeof value} ${value}`;
    case 'bigint': return `bigint ${value}n`;
    case 'string': return `string ${JSON.stringify(value)}`;
    case 'function': return 'a function';
    case 'symbol': return 'a symbol';
    default: return 'an object';
  }
}

function requireString(value, name) {
  if (typeof value !== 'string') throw invalid(`${name} must be a string, got ${describe(value)}`);
  return value;
}

function optionalFunction(options, name) {
  const value = options[name];
  if (value !== undefined && value !== null && typeof value !== 'function') {
    throw invalid(`option ${name} must be a function, got ${describe(value)}`);
  }
  return value ?? undefined;
}

/** The options checks that must fail at once (the rest are checked by the module). */
function checkOptions(options) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw invalid(`createClient needs an options object with \`targets\`, got ${describe(options)}`);
  }
  const { targets } = options;
  const list = typeof targets === 'string' ? [targets] : targets;
  if (!Array.isArray(list)) {
    throw invalid(`option targets is required: a server URL or an array of them, got ${describe(targets)}`);
  }
  if (list.length === 0) throw invalid('option targets must name at least one server');
  list.forEach((target, i) => {
    if (typeof target !== 'string') throw invalid(`targets[${i}] must be a URL string, got ${describe(target)}`);
    if (!TARGET.test(target)) {
      throw invalid(`target ${JSON.stringify(target)} is not a ws://, wss://, http:// or https:// URL`);
    }
  });
  const numbers = [['storageLimit', 1], ['reconnectDelay', 1], ['reconnectDelayMax', 1], ['maxQueue', 0], ['flushInterval', 0], ['connectTimeout', 1], ['requestTimeout', 1]];
  for (const [name, min] of numbers) {
    const value = options[name];
    if (value !== undefined && !(typeof value === 'number' && Number.isFinite(value) && value >= min)) {
      throw invalid(`option ${name} must be a number ≥ ${min}, got ${describe(value)}`);
    }
  }
  for (const [name, type] of [['localStorage', 'boolean'], ['storagePrefix', 'string'], ['shareConnection', 'boolean']]) {
    const value = options[name];
    if (value !== undefined && typeof value !== type) throw invalid(`option ${name} must be a ${type}, got ${describe(value)}`);
  }
  optionalFunction(options, 'WebSocket');
  const { token } = options;
  if (token !== undefined && token !== null) {
    if (typeof token !== 'string' || token === '') throw invalid(`option token must be a non-empty string, got ${describe(token)}`);
    if (optionalFunction(options, 'getToken')) throw invalid('give either option token or option getToken, not both');
  }
  optionalFunction(options, 'getToken');
  return { encode: optionalFunction(options, 'encode') ?? encodeJson, decode: optionalFunction(options, 'decode') ?? decodeJson };
}

/** `publish`'s field/value arguments as the strings the module sends. */
function encodeFields(args, encode) {
  if (args.length === 0 || args.length % 2 !== 0) {
    throw invalid(`publish needs field/value pairs after the channel: got ${args.length} argument(s), an even number is required`);
  }
  const fields = new Array(args.length);
  for (let i = 0; i < args.length; i += 2) {
    const name = args[i];
    if (typeof name !== 'string') throw invalid(`field name #${i / 2 + 1} must be a string, got ${describe(name)}`);
    if (name === 'offset') throw invalid('a field cannot be named "offset": received messages carry their offset under that name');
    let text;
    try {
      text = encode(args[i + 1]);
    } catch (err) {
      throw invalid(`the value of field ${JSON.stringify(name)} could not be encoded: ${err?.message ?? String(err)}`);
    }
    if (typeof text !== 'string') {
      throw invalid(`the value of field ${JSON.stringify(name)} encodes to ${describe(text)}, not a string`);
    }
    fields[i] = name;
    fields[i + 1] = text;
  }
  return fields;
}

// Own data properties: a field called `__proto__` or `constructor` is data, never the prototype.
const define = (object, key, value) =>
  Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });

/** A connection to one or more Redistribute servers. See index.d.ts for the full API. */
export class Client {
  #listeners = new Map();
  #autoAck = new Set();
  #link;
  #encode;
  #decode;

  constructor(options) {
    ({ encode: this.#encode, decode: this.#decode } = checkOptions(options));
    const start = (emit) => loadWasm().then(() => new WasmClient(options, (event, ...args) => emit(event, args)));
    const deliver = (event, args) => this.#fromModule(event, args);
    // Tabs of one origin with the same servers and storage share one connection (see tabs.js).
    const shared = !isNode && options.shareConnection !== false && canShare();
    const targets = typeof options.targets === 'string' ? [options.targets] : options.targets;
    const name = `${options.storagePrefix ?? 'redistribute:v1:'} ${targets.join(' ')}`;
    this.#link = shared ? new SharedLink(name, start, deliver) : new DirectLink(start, deliver);
  }

  /** Adds a listener for `state`, `connect`, `connect_error`, `disconnect`, `messages`, `broadcast`, `outbox`, `published` or `error`. */
  on(event, listener) {
    if (!EVENTS.has(event)) throw new TypeError(`redistribute-client: unknown event ${JSON.stringify(event)}`);
    if (typeof listener !== 'function') throw new TypeError('redistribute-client: listener must be a function');
    if (!this.#listeners.has(event)) this.#listeners.set(event, []);
    this.#listeners.get(event).push(listener);
    return this;
  }

  /** Removes a listener added with `on` (or all of an event's listeners without `listener`). */
  off(event, listener) {
    const list = this.#listeners.get(event);
    if (!list) return this;
    if (listener === undefined) this.#listeners.delete(event);
    else {
      const i = list.indexOf(listener);
      if (i >= 0) list.splice(i, 1);
    }
    return this;
  }

  /** Adds a listener that runs once. */
  once(event, listener) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      listener(...args);
    };
    return this.on(event, wrapper);
  }

  // Events from the module: entries become messages on their way to the listeners.
  #fromModule(event, args) {
    if (event === 'messages') args[1] = this.#messages(args[0], args[1]);
    this.#emit(event, ...args);
  }

  /** Entries `{ offset, fields, deliveries? }` as messages `{ offset, field: value, … }`. */
  #messages(channel, entries) {
    return entries.map(({ offset, fields, deliveries }) => {
      const message = this.#fields(channel, offset, fields);
      define(message, 'offset', offset);
      if (deliveries !== undefined) define(message, 'deliveries', deliveries);
      return message;
    });
  }

  /** `[field, value, …]` (values encoded) as an object of decoded values. */
  #fields(channel, offset, fields) {
    const message = {};
    for (let i = 0; i + 1 < fields.length; i += 2) define(message, fields[i], this.#decodeValue(channel, offset, fields[i], fields[i + 1]));
    return message;
  }

  #decodeValue(channel, offset, field, text) {
    try {
      return this.#decode(text);
    } catch (err) {
      const which = offset === null ? 'a waiting publish' : `message ${offset}`;
      const reason = `decode threw for field ${JSON.stringify(field)} of ${which} of ${JSON.stringify(channel)}: ${err?.message ?? String(err)}; the raw string is delivered`;
      const report = codedError('decode_failed', reason, channel);
      report.offset = offset;
      queueMicrotask(() => this.#emit('error', report));
      return text;
    }
  }

  #emit(event, ...args) {
    const list = this.#listeners.get(event);
    if (!list || list.length === 0) {
      if (event === 'error' && typeof console !== 'undefined') console.warn('redistribute-client:', args[0]);
      this.#maybeAutoAck(event, args);
      return;
    }
    for (const listener of [...list]) {
      try {
        listener(...args);
      } catch (err) {
        // A failing listener must not break the client or the other listeners.
        if (event !== 'error') this.#emit('error', err);
        else queueMicrotask(() => { throw err; });
      }
    }
    this.#maybeAutoAck(event, args);
  }

  // With `autoAck`, group deliveries are acknowledged once every `messages` listener returned.
  #maybeAutoAck(event, [channel, messages, meta]) {
    if (event !== 'messages' || !meta || !this.#autoAck.has(`${channel}\u0000${meta.group}`)) return;
    this.ack(channel, meta.group, messages.map((m) => m.offset)).catch((err) => this.#emit('error', err));
  }

  #call(op, ...args) {
    return this.#link.call(op, args);
  }

  /**
   * Subscribes to `channel`; resolves `true` once the server confirmed. `options` is an offset
   * (`'$'`, `'0'`, an offset) or `{ group, consumer, offset?, autoAck? }` to join a consumer group.
   */
  async subscribe(channel, options) {
    requireString(channel, 'channel');
    if (options !== null && typeof options === 'object' && !Array.isArray(options)) {
      const { group, consumer, offset, autoAck = false } = options;
      requireString(group, 'group');
      requireString(consumer, 'consumer');
      if (offset !== undefined) requireString(offset, 'offset');
      if (typeof autoAck !== 'boolean') throw invalid(`autoAck must be a boolean, got ${describe(autoAck)}`);
      const joined = await this.#call('joinGroup', channel, group, consumer, offset);
      const key = `${channel}\u0000${group}`;
      if (autoAck) this.#autoAck.add(key);
      else this.#autoAck.delete(key);
      return joined;
    }
    if (options !== undefined && options !== null && typeof options !== 'string') {
      throw invalid(`the second argument of subscribe must be an offset string or { group, consumer }, got ${describe(options)}`);
    }
    return this.#call('subscribe', channel, options ?? undefined);
  }

  /** Unsubscribes from `channel`, or leaves its consumer group with `{ group }`; resolves `true`. */
  async unsubscribe(channel, options) {
    requireString(channel, 'channel');
    if (options !== undefined && options !== null) {
      if (typeof options !== 'object') throw invalid(`the second argument of unsubscribe must be { group }, got ${describe(options)}`);
      const group = requireString(options.group, 'group');
      this.#autoAck.delete(`${channel}\u0000${group}`);
      return this.#call('leaveGroup', channel, group);
    }
    return this.#call('unsubscribe', channel);
  }

  /** Acknowledges consumer group deliveries (all or none); resolves with how many. */
  async ack(channel, group, offsets) {
    requireString(channel, 'channel');
    requireString(group, 'group');
    const list = Array.isArray(offsets) ? offsets : [offsets];
    list.forEach((offset, i) => requireString(offset, Array.isArray(offsets) ? `offsets[${i}]` : 'offsets'));
    return this.#call('ack', channel, group, list);
  }

  /** Publishes field/value pairs to `channel`; resolves with the new message's offset. */
  async publish(channel, ...args) {
    requireString(channel, 'channel');
    const fields = encodeFields(args, this.#encode);
    return this.#call('publish', channel, fields, this.#link.key());
  }

  /**
   * Stored messages of `channel` (contiguous), its last offset (where a subscription resumes),
   * and the gap an earlier page left (`{ after, count }` or null), from localStorage (no network).
   */
  async load(channel) {
    requireString(channel, 'channel');
    const { entries, lastOffset, gap } = await this.#call('load', channel);
    return { messages: this.#messages(channel, entries), lastOffset, gap };
  }

  /**
   * Publishes the server has not answered yet, oldest first: `{ id, channel, message, sent, at }`.
   * They are kept in localStorage, so those an earlier page left go out from this one.
   */
  async outbox() {
    return (await this.#call('outbox')).map(({ id, channel, fields, sent, at }) =>
      ({ id, channel, message: this.#fields(channel, null, fields), sent, at }));
  }

  /** Takes an unsent publish out of the outbox (its call rejects with `cancelled`); resolves whether it was there. */
  async cancel(id) {
    requireString(id, 'id');
    return this.#call('cancel', id);
  }

  /** True while a connection is open. */
  get connected() {
    return this.#link.connected;
  }

  /** `'connecting'`, `'connected'`, `'disconnected'` (waiting to retry) or `'closed'`. */
  get state() {
    return this.#link.state;
  }

  /** The server URL in use or being tried (null until the module has loaded). */
  get target() {
    return this.#link.target;
  }

  /**
   * Closes the connection for good: timers stop, stored messages are written, calls settle, and
   * the outbox is abandoned (its publishes reject with `closed`; a page that is simply left keeps them).
   */
  close() {
    this.#link.close();
  }
}

/** Creates a client and starts connecting. */
export function createClient(options) {
  return new Client(options);
}

export default createClient;
