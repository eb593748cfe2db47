// How a Client reaches the WebAssembly client: its own (DirectLink), or one shared by every tab of
// the origin (SharedLink).
//
// Tab sharing: tabs with the same targets and storagePrefix elect a leader with the Web Locks API.
// The leading tab runs the WebAssembly client (the only WebSocket and the only writer of
// localStorage); the others send it their calls over a BroadcastChannel and receive its replies
// and events. When the leading tab goes (closed, crashed, or `close()`d), the lock passes to the
// next tab in line, which starts the client, resubscribes what every tab follows after the last
// message the tabs were given (messages the previous leader delivered but had not stored yet are
// stored, not delivered again), and gets every call still unanswered sent again. Publishes carry
// the calling tab's idempotency keys, so one in flight at the handover is stored once.
//
// Both links expose the same surface: `call(op, args)` (an operation of the WebAssembly client),
// `state`, `connected`, `target`, `key()` (a fresh idempotency key, or undefined) and `close()`.

const PREFIX = 'redistribute-tabs:';

/** Whether tabs can share a connection here (browsers with Web Locks and BroadcastChannel). */
export function canShare() {
  return typeof navigator !== 'undefined' && typeof navigator.locks?.request === 'function'
    && typeof BroadcastChannel === 'function' && typeof window !== 'undefined';
}

/** 64 random bits in hex. */
function randomId() {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** An error as plain data (what a BroadcastChannel carries intact), and back. */
export function toPlain(err) {
  const { name = 'Error', message = String(err), code, channel, offset, id } = err ?? {};
  return { name, message, code, channel, offset, id };
}

export function fromPlain(plain) {
  const err = plain.name === 'TypeError' ? new TypeError(plain.message) : new Error(plain.message);
  for (const key of ['code', 'channel', 'offset', 'id']) if (plain[key] !== undefined) err[key] = plain[key];
  return err;
}

const closedError = () => Object.assign(new Error('the client was closed'), { code: 'closed' });

/** One client per tab: calls go straight to this tab's WebAssembly client. */
export class DirectLink {
  #client = null;
  #ready;
  #closed = false;

  /** `start(emit)` resolves to a WebAssembly client that reports its events to `emit(event, args)`. */
  constructor(start, deliver) {
    this.#ready = start((event, args) => deliver(event, args)).then((client) => {
      if (this.#closed) client.free();
      else this.#client = client;
    });
    // Construction errors (bad options) reject every call and are reported once as an event.
    this.#ready.catch((err) => queueMicrotask(() => deliver('error', [err])));
  }

  async call(op, args) {
    await this.#ready;
    if (this.#client === null) throw closedError();
    return this.#client[op](...args);
  }

  key() {
    return undefined;
  }

  get state() {
    if (this.#client !== null) return this.#client.state;
    return this.#closed ? 'closed' : 'connecting';
  }

  get connected() {
    return this.#client !== null && this.#client.connected;
  }

  get target() {
    return this.#client === null ? null : this.#client.target;
  }

  close() {
    this.#closed = true;
    if (this.#client !== null) {
      this.#client.close();
      this.#client.free();
      this.#client = null;
    }
  }
}

/** The key of a subscription: its channel, or channel and group for a group membership. */
const subscriptionKey = (channel, group) => (group === undefined ? channel : `${channel}\u0000${group}`);
const SUBSCRIBING = new Set(['subscribe', 'joinGroup']);
/** The subscription a call of `subscribe`, `joinGroup`, `unsubscribe` or `leaveGroup` is about. */
const keyOf = (op, args) => subscriptionKey(args[0], op === 'joinGroup' || op === 'leaveGroup' ? args[1] : undefined);

/** Every tab of the origin on one connection, led by the tab holding the lock. */
export class SharedLink {
  #id = randomId();
  #keys = 0;
  #bus;
  #start;
  #deliver;
  /** The leading tab's id, once known (this tab's own when it leads). */
  #leader = null;
  /** This tab's WebAssembly client, while it leads. */
  #client = null;
  /** Calls of this tab waiting for their reply: id → { op, args, resolve, reject }. */
  #pending = new Map();
  #calls = 0;
  /** What this tab follows: subscription key → the call that made it. */
  #subscriptions = new Map();
  /** The last offset the tabs were given, per channel (every tab sees every channel's messages). */
  #seen = new Map();
  /** Leader: per channel, the offset up to which the tabs already have what a resumed subscription replays. */
  #handedOver = new Map();
  /** Leader: subscription key → ids of the tabs following it. */
  #members = new Map();
  /** The leader's connection state, as last reported. */
  #snapshot = { state: 'connecting', connected: false, target: null };
  #abort = new AbortController();
  #resign = null;
  #closed = false;

  constructor(name, start, deliver) {
    this.#start = start;
    this.#deliver = deliver;
    this.#bus = new BroadcastChannel(PREFIX + name);
    this.#bus.onmessage = ({ data }) => this.#onMessage(data);
    this.#post({ t: 'hello', from: this.#id });
    navigator.locks.request(PREFIX + name, { signal: this.#abort.signal }, () => this.#lead())
      .catch((err) => { if (err?.name !== 'AbortError') deliver('error', [err]); });
    // A tab that goes away lets the leader drop what only it followed.
    this.#onPageHide = () => { if (this.#leader !== this.#id) this.#post({ t: 'bye', from: this.#id }); };
    window.addEventListener('pagehide', this.#onPageHide);
  }

  #onPageHide;

  call(op, args) {
    if (this.#closed) return Promise.reject(closedError());
    if (SUBSCRIBING.has(op)) this.#subscriptions.set(keyOf(op, args), { op, args });
    if (op === 'unsubscribe' || op === 'leaveGroup') this.#subscriptions.delete(keyOf(op, args));
    return new Promise((resolve, reject) => {
      const id = ++this.#calls;
      this.#pending.set(id, { op, args, resolve, reject });
      this.#send(id);
    }).catch((err) => {
      if (SUBSCRIBING.has(op)) this.#subscriptions.delete(keyOf(op, args));
      throw err;
    });
  }

  /** Idempotency keys are made by the tab, so a publish sent again to a new leader keeps its key. */
  key() {
    this.#keys += 1;
    return `${this.#id}-${this.#keys}`;
  }

  get state() {
    if (this.#closed) return 'closed';
    return this.#client !== null ? this.#client.state : this.#snapshot.state;
  }

  get connected() {
    return !this.#closed && (this.#client !== null ? this.#client.connected : this.#snapshot.connected);
  }

  get target() {
    return this.#client !== null ? this.#client.target : this.#snapshot.target;
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    window.removeEventListener('pagehide', this.#onPageHide);
    for (const { reject } of this.#pending.values()) reject(closedError());
    this.#pending.clear();
    if (this.#client !== null) {
      // The outbox stays in storage: the next leading tab sends it.
      this.#client.handOver();
      this.#client.free();
      this.#client = null;
      this.#post({ t: 'resign', from: this.#id });
      this.#resign?.();
    } else {
      this.#post({ t: 'bye', from: this.#id });
      this.#abort.abort();
    }
    this.#bus.close();
    this.#deliver('state', ['closed']);
  }

  #post(message) {
    if (!this.#closed || message.t === 'resign' || message.t === 'bye') this.#bus.postMessage(message);
  }

  /** Sends (or, leading, serves) a pending call; without a known leader it waits for one. */
  #send(id) {
    const { op, args } = this.#pending.get(id);
    if (this.#leader === this.#id) this.#serve(this.#id, id, op, args);
    else if (this.#leader !== null) this.#post({ t: 'call', from: this.#id, to: this.#leader, id, op, args });
  }

  #settle(id, reply) {
    const call = this.#pending.get(id);
    if (!call) return;
    this.#pending.delete(id);
    if (reply.ok) call.resolve(reply.value);
    else call.reject(fromPlain(reply.error));
  }

  /** A new leader: everything this tab follows and every unanswered call goes to it. */
  #follow(leader, snapshot) {
    if (leader === this.#leader) return;
    this.#leader = leader;
    if (snapshot) this.#adopt(snapshot);
    const pendingKeys = new Set([...this.#pending.values()].filter(({ op }) => SUBSCRIBING.has(op)).map(({ op, args }) => keyOf(op, args)));
    for (const [key, { op, args }] of this.#subscriptions) {
      if (pendingKeys.has(key)) continue;
      this.call(op, args).catch((err) => this.#deliver('error', [err]));
    }
    for (const id of [...this.#pending.keys()]) this.#send(id);
  }

  #onMessage(message) {
    if (this.#closed) return;
    switch (message.t) {
      case 'hello':
        if (this.#leader === this.#id) this.#announce();
        break;
      case 'leader':
        this.#follow(message.from, message.snapshot);
        break;
      case 'resign':
        if (message.from === this.#leader) {
          this.#leader = null;
          this.#adopt({ ...this.#snapshot, state: 'connecting', connected: false });
        }
        break;
      case 'call':
        if (message.to === this.#id && this.#leader === this.#id) this.#serve(message.from, message.id, message.op, message.args);
        break;
      case 'reply':
        if (message.to === this.#id) this.#settle(message.id, message);
        break;
      case 'bye':
        if (this.#leader === this.#id) this.#leave(message.from);
        break;
      case 'event':
        if (message.to === undefined || message.to === this.#id) this.#receive(message.event, message.args, message.snapshot);
        break;
    }
  }

  /** A follower takes the (new) leader's connection state, telling its listeners what changed
   * as the tab's own client would have. */
  #adopt(snapshot) {
    const was = this.#snapshot;
    this.#snapshot = snapshot;
    if (was.connected && !snapshot.connected) this.#deliver('disconnect', [1001, 'the tab holding the connection went away']);
    if (snapshot.state !== was.state) this.#deliver('state', [snapshot.state]);
    if (snapshot.connected && !was.connected) this.#deliver('connect', [snapshot.target]);
  }

  // ---- leading ----

  /** Holds the lock: runs the client until this tab closes (or goes away). */
  async #lead() {
    if (this.#closed) return;
    this.#adopt({ state: 'connecting', connected: false, target: this.#snapshot.target });
    const client = await this.#start((event, args) => this.#fromClient(event, args));
    if (this.#closed) {
      client.handOver();
      client.free();
      return;
    }
    this.#client = client;
    this.#members.clear();
    this.#handedOver = new Map(this.#seen);
    const released = new Promise((resolve) => { this.#resign = resolve; });
    this.#announce();
    this.#follow(this.#id, null);
    await released;
  }

  #snapshotNow() {
    const client = this.#client;
    return client === null ? this.#snapshot : { state: client.state, connected: client.connected, target: client.target };
  }

  #announce() {
    this.#post({ t: 'leader', from: this.#id, snapshot: this.#snapshotNow() });
  }

  /** Leader: runs a tab's call on the client and answers it (unless this tab closed meanwhile:
   * the caller then sends it again to the next leader). */
  async #serve(from, id, op, args) {
    let reply;
    try {
      reply = { ok: true, value: await this.#execute(from, op, args) };
    } catch (err) {
      reply = { ok: false, error: toPlain(err) };
    }
    if (this.#closed) return;
    if (from === this.#id) this.#settle(id, reply);
    else this.#post({ t: 'reply', to: from, id, ...reply });
  }

  async #execute(from, op, args) {
    const client = this.#client;
    if (client === null) throw closedError();
    switch (op) {
      case 'subscribe':
      case 'joinGroup': {
        const [channel, second] = args;
        const key = keyOf(op, args);
        if (!this.#members.has(key)) this.#members.set(key, new Set());
        this.#members.get(key).add(from);
        try {
          if (op === 'joinGroup') return await client.joinGroup(...args);
          // An explicit offset asks for a replay: nothing of it is held back.
          if (second !== undefined) this.#handedOver.delete(channel);
          return await client.subscribe(channel, second, this.#seen.get(channel));
        } catch (err) {
          this.#members.get(key)?.delete(from);
          throw err;
        }
      }
      case 'unsubscribe':
      case 'leaveGroup': {
        const key = keyOf(op, args);
        const members = this.#members.get(key);
        members?.delete(from);
        if (members && members.size > 0) return true;
        this.#members.delete(key);
        return op === 'unsubscribe' ? client.unsubscribe(args[0]) : client.leaveGroup(args[0], args[1]);
      }
      default:
        return client[op](...args);
    }
  }

  /** Leader: a tab went away; what only it followed is unsubscribed. */
  #leave(tab) {
    for (const [key, members] of this.#members) {
      if (!members.delete(tab) || members.size > 0) continue;
      const [channel, group] = key.split('\u0000');
      this.#execute(tab, group === undefined ? 'unsubscribe' : 'leaveGroup', group === undefined ? [channel] : [channel, group])
        .catch((err) => this.#deliver('error', [err]));
    }
  }

  /** Leader: an event of the client goes to every tab (group deliveries to one member). */
  #fromClient(event, args) {
    if (this.#closed) return;
    let to;
    if (event === 'messages') {
      const [channel, entries, meta] = args;
      if (meta) {
        to = this.#members.get(subscriptionKey(channel, meta.group))?.values().next().value;
      } else {
        // After a handover the subscription resumes where the store stops, which may be before
        // what the tabs were given: those entries are stored, not delivered again.
        const upTo = this.#handedOver.get(channel);
        if (upTo !== undefined) {
          const fresh = entries.filter((e) => compareOffsets(e.offset, upTo) > 0);
          if (fresh.length > 0) this.#handedOver.delete(channel);
          if (fresh.length === 0) return;
          args = [channel, fresh];
        }
      }
    }
    if (event === 'error') args = [toPlain(args[0])];
    const snapshot = this.#snapshotNow();
    this.#post({ t: 'event', event, args, snapshot, to });
    if (to === undefined || to === this.#id) this.#receive(event, args, snapshot);
  }

  /** Every tab: an event of the shared client, for this tab's listeners if it concerns them. */
  #receive(event, args, snapshot) {
    const was = this.#snapshot.state;
    this.#snapshot = snapshot;
    if (event === 'state' && args[0] === was) return;
    if (event === 'messages') {
      const [channel, entries, meta] = args;
      if (!meta) this.#seen.set(channel, entries[entries.length - 1].offset);
      if (!this.#subscriptions.has(subscriptionKey(channel, meta?.group))) return;
    }
    if (event === 'error') {
      const err = fromPlain(args[0]);
      // A stream that lost what the tabs had starts over: its old offsets mean nothing now.
      if (err.code === 'truncated' && err.channel !== undefined) {
        this.#seen.delete(err.channel);
        this.#handedOver.delete(err.channel);
      }
      args = [err];
    }
    this.#deliver(event, args);
  }
}

/** Compares two offsets (`<ms>-<seq>`, canonical decimal) as the stream orders them. */
export function compareOffsets(a, b) {
  const [am, as] = a.split('-');
  const [bm, bs] = b.split('-');
  const number = (x, y) => x.length - y.length || (x < y ? -1 : x > y ? 1 : 0);
  return number(am, bm) || number(as, bs);
}
