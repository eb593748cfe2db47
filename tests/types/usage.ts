// Compile-only check of the package's TypeScript declarations (`tsc -p tests/types`): what a
// TypeScript app writes must type-check, and misuse must not.
import createClient, { Client, type ClientOptions, type Message, type RedistributeError, type OutboxItem } from 'redistribute-client';
import WebSocket from 'ws';

interface Chat { text: string }

const options: ClientOptions = { targets: ['https://api.example:8080'], storageLimit: 500, WebSocket };
const client: Client<Chat> = createClient<Chat>(options);

client.on('messages', (channel: string, messages: Message<Chat>[]) => {
  for (const m of messages) {
    const offset: string = m.offset;
    void [channel, offset, m.TEST_MESSAGE];
  }
});
client.on('connect', (url: string) => void url);
client.on('disconnect', (code: number, reason: string) => void [code, reason]);
client.on('error', (err: RedistributeError) => void err.code);
client.once('broadcast', (channel, message) => void [channel, message]);

async function use(): Promise<void> {
  const confirmed: true = await client.subscribe('chat', '$');
  const offset: string = await client.publish('chat', 'TEST_MESSAGE', { text: 'hi' });
  const { messages, lastOffset } = await client.load('chat');
  const last: string | null = lastOffset;
  void [confirmed, offset, messages, last, client.connected, client.target];
  await client.unsubscribe('chat');
  // Consumer groups.
  const joined: true = await client.subscribe('jobs', { group: 'workers', consumer: 'w1', offset: '0', autoAck: false });
  const acked: number = await client.ack('jobs', 'workers', ['1518951480106-0']);
  await client.unsubscribe('jobs', { group: 'workers' });
  void [joined, acked];
  client.close();
}
client.on('messages', (channel, messages, info) => {
  const group: string | undefined = info?.group;
  const deliveries: number | undefined = messages[0]?.deliveries;
  void [channel, group, deliveries];
});
void use;

// @ts-expect-error: unknown event
client.on('message', () => {});
// @ts-expect-error: targets is required
createClient({});
// @ts-expect-error: storageLimit is a number
createClient({ targets: 'ws://x/', storageLimit: 'many' });
// @ts-expect-error: messages listeners get (channel, messages)
client.on('messages', (channel: number) => void channel);
// @ts-expect-error: a group subscription needs a consumer name
client.subscribe('jobs', { group: 'workers' });

// Tokens: a fixed one, or a getter (sync or async).
createClient({ targets: 'wss://a.example', token: 'eyJ…' });
createClient({ targets: 'wss://a.example', getToken: async () => 'eyJ…' });
createClient({ targets: 'wss://a.example', getToken: () => 'eyJ…' });
// @ts-expect-error a token is a string
createClient({ targets: 'wss://a.example', token: 42 });
const refused: RedistributeError['code'] = 'unauthorized';
void refused;

// The outbox: list, cancel, and hear about publishes an earlier page left.
async function outbox() {
  const waiting: OutboxItem[] = await client.outbox();
  const first = waiting[0];
  if (first && !first.sent) {
    const cancelled: boolean = await client.cancel(first.id);
    void [cancelled, first.channel, first.message, first.at];
  }
}
void outbox;
client.on('outbox', (count) => void (count satisfies number));
client.on('published', (channel, offset, id) => void [channel.length, offset.length, id.length]);
// @ts-expect-error: cancel takes an outbox id
client.cancel(42);
