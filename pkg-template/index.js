// redistribute-client: the JavaScript face of the WebAssembly client.
//
// The logic (protocol, reconnects, persistence) runs in WebAssembly; this file loads it (with a
// URL that bundlers such as Vite understand, or from disk in Node.js), gives it an event emitter,
// and turns `publish(channel, ...args)` into the array the module expects.

import init, { WasmClient } from './wasm/redistribute_client.js';

let loading;

// Node's file API, imported only in Node. The specifier is a variable so that browser bundlers
// (Vite, webpack) neither try to resolve it nor warn about it.
const NODE_FS = 'node:fs/promises';

function loadWasm() {
  if (!loading) {
    const url = new URL('./wasm/redistribute_client_bg.wasm', import.meta.url);
    const isNode = typeof process !== 'undefined' && process.versions != null && process.versions.node != null;
    loading = isNode && url.protocol === 'file:'
      ? import(/* @vite-ignore */ /* webpackIgnore: true */ NODE_FS).then((fs) => fs.readFile(url)).then((bytes) => init({ module_or_path: bytes }))
      : init({ module_or_path: url });
  }
  return loading;
}

const EVENTS = new Set(['connect', 'disconnect', 'messages', 'broadcast', 'error']);

/** A connection to one or more Redistribute servers. See index.d.ts for the full API. */
export class Client {
  #listeners = new Map();
  #autoAck = new Set();
  #inner = null;
  #closed = false;
  #ready;

  constructor(options) {
    if (options == null || typeof options !== 'object') {
      throw new TypeError('redistribute-client: options with `targets` are required');
    }
    this.#ready = loadWasm().then(() => {
      if (!this.#closed) {
        this.#inner = new WasmClient(options, (event, ...args) => this.#emit(event, ...args));
      }
    });
    // Construction errors (bad options) reject every call and are reported once as an event.
    this.#ready.catch((err) => queueMicrotask(() => this.#emit('error', err)));
  }

  /** Adds a listener for `connect`, `disconnect`, `messages`, `broadcast` or `error`. */
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

  async #client() {
    await this.#ready;
    if (this.#inner === null) {
      const err = new Error('the client was closed');
      err.code = 'closed';
      throw err;
    }
    return this.#inner;
  }

  /**
   * Subscribes to `channel`; resolves `true` once the server confirmed. `options` is an offset
   * (`'$'`, `'0'`, an offset) or `{ group, consumer, offset?, autoAck? }` to join a consumer group.
   */
  async subscribe(channel, options) {
    const client = await this.#client();
    if (options !== null && typeof options === 'object') {
      const { group, consumer, offset, autoAck = false } = options;
      if (typeof group !== 'string' || typeof consumer !== 'string') {
        const err = new TypeError('a group subscription needs string `group` and `consumer`');
        err.code = 'invalid_argument';
        throw err;
      }
      const joined = await client.joinGroup(channel, group, consumer, offset ?? undefined);
      const key = `${channel}\u0000${group}`;
      if (autoAck) this.#autoAck.add(key);
      else this.#autoAck.delete(key);
      return joined;
    }
    return client.subscribe(channel, options ?? undefined);
  }

  /** Unsubscribes from `channel`, or leaves its consumer group with `{ group }`; resolves `true`. */
  async unsubscribe(channel, options) {
    const client = await this.#client();
    if (options !== null && typeof options === 'object' && typeof options.group === 'string') {
      this.#autoAck.delete(`${channel}\u0000${options.group}`);
      return client.leaveGroup(channel, options.group);
    }
    return client.unsubscribe(channel);
  }

  /** Acknowledges consumer group deliveries (all or none); resolves with how many. */
  async ack(channel, group, offsets) {
    return (await this.#client()).ack(channel, group, Array.isArray(offsets) ? offsets : [offsets]);
  }

  /** Publishes field/value pairs to `channel`; resolves with the new message's offset. */
  async publish(channel, ...args) {
    return (await this.#client()).publish(channel, args);
  }

  /** Stored messages of `channel` and its last offset, from localStorage (no network). */
  async load(channel) {
    return (await this.#client()).load(channel);
  }

  /** True while a connection is open. */
  get connected() {
    return this.#inner !== null && this.#inner.connected;
  }

  /** The server URL in use or being tried (null until the module has loaded). */
  get target() {
    return this.#inner === null ? null : this.#inner.target;
  }

  /** Closes the connection for good: timers stop, stored messages are written, calls settle. */
  close() {
    this.#closed = true;
    if (this.#inner !== null) {
      this.#inner.close();
      this.#inner.free();
      this.#inner = null;
    }
  }
}

/** Creates a client and starts connecting. */
export function createClient(options) {
  return new Client(options);
}

export default createClient;
