/**
 * redistribute-client: real-time messages over Redis Streams, for browsers and Node.js.
 */

/** A stream offset such as `"1518951480106-0"`: a message's position, usable as a resume point. */
export type Offset = string;

/** Where a subscription starts: `"$"` (new messages only), `"0"` (everything kept) or an offset. */
export type StartOffset = '$' | '0' | Offset;

/**
 * A received message: a plain object with every field of the stream entry as an own property
 * (whatever its name: a field called `__proto__` is data, not a prototype), each value passed
 * through `decode` (by default `JSON.parse`, falling back to the raw string), and `offset`, set
 * last (the client refuses to publish a field named `offset`; an entry another publisher wrote
 * with one shows the real offset).
 */
export interface Message<T = unknown> {
  offset: Offset;
  /** Consumer group deliveries only: how many times the group delivered this entry. */
  deliveries?: number;
  [field: string]: T | Offset | number | undefined;
}

/** Joining a consumer group: each member receives a share of the channel's entries. */
export interface GroupOptions {
  /** The group (created, with the stream, if it does not exist). */
  group: string;
  /** This member's name; a member rejoining under its name first gets its unacknowledged entries. */
  consumer: string;
  /** Where a newly created group starts: `'$'` (default) or `'0'` / an offset. */
  offset?: StartOffset;
  /** Acknowledge each batch after the `messages` listeners ran. Default false: call `ack`. */
  autoAck?: boolean;
}

/** Passed as third argument of `messages` for consumer group deliveries. */
export interface DeliveryInfo {
  group: string;
}

/** Codes carried by errors (`err.code`): the server's, and the client's own. */
export type ErrorCode =
  | 'bad_request' | 'unknown_op' | 'forbidden' | 'unauthorized' | 'conflict' | 'too_large' | 'limit_exceeded'
  | 'rate_limited' | 'unavailable' | 'unknown_outcome' | 'internal'
  | 'invalid_argument' | 'disconnected' | 'closed' | 'queue_full' | 'unsubscribed' | 'truncated' | 'protocol'
  | 'storage_quota' | 'storage_corrupt' | 'storage_failed' | 'decode_failed' | 'timeout' | 'cancelled';

/** An Error with a stable `code` (and the `channel` concerned, when there is one). */
export interface RedistributeError extends Error {
  code: ErrorCode | (string & {});
  channel?: string;
  /** `decode_failed`: the offset of the message whose value `decode` threw on. */
  offset?: Offset;
  /** A publish an earlier page left in the outbox that the server refused: its outbox id. */
  id?: string;
}

/** A WebSocket constructor: the browser's, Node's global one, or the `ws` package's. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown;

export interface ClientOptions {
  /** Server URLs (`ws://`, `wss://`, `http://` or `https://`), tried in turn when reconnecting. */
  targets: string | string[];
  /**
   * Turns each published value into the string stored. Default `JSON.stringify` (strings too, so
   * every value comes back exactly as it was). A throw or a non-string rejects with `invalid_argument`.
   */
  encode?: (value: unknown) => string;
  /**
   * Turns each received string back into a value. Default `JSON.parse`, falling back to the raw
   * string (for values other publishers wrote). A throw emits `error` (`decode_failed`, with the
   * channel and offset) and delivers the raw string.
   */
  decode?: (value: string) => unknown;
  /** Keep received messages in localStorage (ignored where there is none, as in Node.js). Default `true`. */
  localStorage?: boolean;
  /** Messages kept per channel in storage; the oldest go first. Default 1000. */
  storageLimit?: number;
  /** Prefix of the storage keys. Default `"redistribute:v1:"`. */
  storagePrefix?: string;
  /** First reconnect delay ceiling in ms (exponential backoff with full jitter). Default 250. */
  reconnectDelay?: number;
  /** Largest reconnect delay in ms. Default 10000. */
  reconnectDelayMax?: number;
  /**
   * Publishes that may wait for a connection (including those restored from an earlier page's
   * outbox) before further ones are rejected with `queue_full`. Default 1000.
   */
  maxQueue?: number;
  /** Longest time in ms received messages wait before being written to storage. Default 100. */
  flushInterval?: number;
  /**
   * Longest time in ms an attempt may take to open (and authenticate) before the next target is
   * tried; reported as `connect_error` with code 4408. Default 10000.
   */
  connectTimeout?: number;
  /** Longest time in ms a call waits for the server's reply before it rejects with `timeout`. Default 15000. */
  requestTimeout?: number;
  /** WebSocket constructor where there is no global one (Node.js < 22: `import WebSocket from 'ws'`). */
  WebSocket?: WebSocketConstructor;
  /**
   * A connection token (JWT) from your auth service, sent on every connection. It cannot be
   * refreshed: prefer `getToken` for sessions that outlive it. Not together with `getToken`.
   */
  token?: string;
  /**
   * Fetches a connection token: called on every connection, and on an open connection a minute
   * before the token expires (halfway through a shorter life). A rejection or a non-string fails
   * the calls waiting for the connection with `unauthorized`.
   */
  getToken?: () => string | Promise<string>;
  /**
   * Share one connection among the tabs of this origin that use the same `targets` and
   * `storagePrefix` (one tab leads, elected with Web Locks; the others relay over a
   * BroadcastChannel). Default `true` where those APIs exist; Node.js always has one per client.
   */
  shareConnection?: boolean;
}

/** Messages an earlier page received after the stored log's end but could not store (storage was full). */
export interface Gap {
  /** Where the stored log stops (null: nothing was stored). A subscription resumes after it, so the server sends them again. */
  after: Offset | null;
  /** How many messages followed it unstored. */
  count: number;
}

/** Stored messages of a channel, from `load`. */
export interface Loaded<T = unknown> {
  /** Oldest first, contiguous: never a message after a missing one. */
  messages: Message<T>[];
  /** The newest stored offset (where `subscribe` resumes), or null when nothing is stored. */
  lastOffset: Offset | null;
  /** Messages received after `lastOffset` that were not stored, or null. */
  gap: Gap | null;
}

/** A publish the server has not answered yet, from `outbox()`. */
export interface OutboxItem<T = unknown> {
  /** Its idempotency key: every attempt to send it carries it, so the server stores it once. */
  id: string;
  channel: string;
  /** The published fields, decoded. */
  message: Record<string, T>;
  /** On the wire, waiting for the reply: it can no longer be cancelled. */
  sent: boolean;
  /** When it was published, in ms since the epoch. */
  at: number;
}

/** Where the connection stands: `disconnected` means waiting to try again. */
export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** A failed attempt to connect, from `connect_error`. */
export interface ConnectAttempt {
  /** The URL tried. */
  target: string;
  /** The close code: 1006 when the socket never opened (refused, unreachable, TLS…), 4408 when it
   * took longer than `connectTimeout`, else the server's (e.g. 1008 for a refused connection). */
  code: number;
  /** The close reason, or what went wrong. */
  reason: string;
}

export interface ClientEvents<T = unknown> {
  /** The connection state changed (also read as `client.state`). */
  state: (state: ConnectionState) => void;
  /** An attempt to connect failed before the connection was usable; the client tries the next target. */
  connect_error: (attempt: ConnectAttempt) => void;
  /** A connection opened (`url` is the server's). Subscriptions are being restored. */
  connect: (url: string) => void;
  /** The connection closed; the client reconnects by itself unless `close()` was called. */
  disconnect: (code: number, reason: string) => void;
  /**
   * New messages of a subscribed channel, in order, each delivered once. For a consumer group
   * membership, `info.group` is set and each message has `deliveries`.
   */
  messages: (channel: string, messages: Message<T>[], info?: DeliveryInfo) => void;
  /** A transient message a server application broadcast (not stored, no offset). */
  broadcast: (channel: string, message: unknown) => void;
  /** The number of publishes waiting for the server's answer changed (see `outbox()`). */
  outbox: (waiting: number) => void;
  /**
   * A publish an earlier page left in the outbox was stored (its promise went with that page).
   * `id` is its outbox id. A refusal is an `error` event with the same `id`.
   */
  published: (channel: string, offset: Offset, id: string) => void;
  /** Something went wrong that no call can report (a lost history, full storage…). */
  error: (error: RedistributeError) => void;
}

export declare class Client<T = unknown> {
  constructor(options: ClientOptions);
  on<E extends keyof ClientEvents<T>>(event: E, listener: ClientEvents<T>[E]): this;
  off<E extends keyof ClientEvents<T>>(event: E, listener?: ClientEvents<T>[E]): this;
  once<E extends keyof ClientEvents<T>>(event: E, listener: ClientEvents<T>[E]): this;
  /**
   * Subscribes to `channel`. Without `offset`, resumes after the last stored message, or starts
   * with new messages. Resolves `true` once the server confirmed.
   */
  subscribe(channel: string, offset?: StartOffset): Promise<true>;
  /** Joins a consumer group of `channel`: this client receives a share of its entries. */
  subscribe(channel: string, group: GroupOptions): Promise<true>;
  /** Stops deliveries of `channel` (or, with `{ group }`, leaves that consumer group). */
  unsubscribe(channel: string, group?: { group: string }): Promise<true>;
  /**
   * Acknowledges consumer group deliveries, all or none (rejects with `bad_request` if one is not
   * pending). Resolves with how many were acknowledged.
   */
  ack(channel: string, group: string, offsets: Offset | Offset[]): Promise<number>;
  /**
   * Publishes field/value pairs: `publish('chat', 'TEST_MESSAGE', { foo: 'bar' })`. Rejects
   * (code `invalid_argument`, naming the argument) for an odd number of arguments, a non-string
   * channel or field name, a field named `offset`, or a value `encode` cannot turn into a string.
   * Resolves with the new offset.
   */
  publish(channel: string, ...fieldsAndValues: unknown[]): Promise<Offset>;
  /** Stored messages and last offset of `channel`, from localStorage only. */
  load(channel: string): Promise<Loaded<T>>;
  /**
   * Publishes the server has not answered, oldest first. They are kept in localStorage until
   * answered: a page closed or reloaded meanwhile leaves them to the next client on the same
   * storage, which sends them first.
   */
  outbox(): Promise<OutboxItem<T>[]>;
  /** Takes an unsent publish out of the outbox (its call rejects with `cancelled`); resolves whether it was there. */
  cancel(id: string): Promise<boolean>;
  /** True while a connection is open. */
  readonly connected: boolean;
  /** Where the connection stands; each change is a `state` event. */
  readonly state: ConnectionState;
  /** The server URL in use or being tried. */
  readonly target: string | null;
  /**
   * Closes for good: stops reconnecting and timers, writes stored messages, settles calls. The
   * outbox is abandoned (its publishes reject with `closed`); a page that is simply left keeps it.
   */
  close(): void;
}

/** Creates a client and starts connecting. */
export declare function createClient<T = unknown>(options: ClientOptions): Client<T>;
export default createClient;
