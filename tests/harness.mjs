// Test harness: starts a real redis-server and three redistribute-server instances on free loopback
// ports, plus a small HTTP control API that tests (in Node or in a browser) use to stop and start
// servers, write into Redis directly and read streams back. Then it runs the given command with
// the addresses in its environment, stops everything it started, and exits with the command's
// status.
//
//   node tests/harness.mjs -- <command> [args…]
//
// Environment given to the command:
//   RD_SERVER_A, RD_SERVER_B   ws:// URLs of the two open instances
//   RD_SERVER_AUTH             ws:// URL of an instance that checks tokens (from /token)
//   RD_CONTROL                 http:// URL of the control API
//   RD_REDIS_PORT              the Redis port
// The servers let consumer group entries idle 1 s before others may claim them.
//
// Control API (CORS open, loopback only):
//   POST /server/<0|1>/stop    SIGTERM the instance and wait for it to exit
//   POST /server/<0|1>/start   start it again on the same port and wait until healthy
//   POST /xadd?channel=C&field=F&value=V      XADD rd:C straight into Redis → {"offset": …}
//   POST /publisher?channel=C&count=N&interval=MS   another process XADDs N entries (n=0…N-1)
//   GET  /publisher/wait       resolves when that publisher is done
//   GET  /xrange?channel=C     [[offset, [f, v, …]], …]
//   GET  /token?sub=U&ttl=S&channels=JSON   {"token": HS256 JWT for RD_SERVER_AUTH, "issued": n}
//                              (default grant: user:{sub} subscribe, history, publish)
//   GET  /token/count          {"issued": n}: tokens issued so far
//   GET  /app/…                the files of $RD_STATIC (a page whose origin outlives the servers)
//   GET  /pkg/…                the built npm package (dist/redistribute-client)
//   GET  /pages/…              test pages (tests/e2e/pages)
//
// With RD_STATIC=DIR the servers also serve DIR themselves (`--static`).
//
// With RD_CLUSTER=1 it also starts a Redis Cluster (3 masters, 3 replicas), two more servers on it
// and HAProxy in front of them with deploy/haproxy.cfg, and adds:
//   RD_LB                      http:// URL of the load balancer (pages and WebSockets)
//   POST /cluster/server/<0|1>/stop|start   SIGTERM / start an instance behind it
//   GET  /cluster/websockets   [n0, n1]: WebSockets open on each instance (from /metrics)
//   POST /cluster/publisher?channel=C&count=N&interval=MS   XADDs into the cluster
//   GET  /cluster/publisher/wait
//   GET  /cluster/xrange?channel=C     as /xrange, from the cluster

import { spawn, execFile } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync, existsSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, extname, resolve, sep as pathSep } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { createHmac } from 'node:crypto';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const serverBin = process.env.RD_SERVER_BIN ?? join(root, 'target', 'debug', 'redistribute-server');
const children = new Set();
// The secret of the token-checking server (index 2); tokens come from the control API's /token.
const TOKEN_SECRET = 'harness secret: 32 bytes or more, for tests only';
// The servers' default --key-prefix: channel C is the Redis key rd:C.
const KEY_PREFIX = 'rd:';

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

function run(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], ...options });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await sleep(50);
  }
  throw new Error(`harness: ${what} did not happen within ${ms} ms`);
}

function redisCli(port, args, cluster = false) {
  const mode = cluster ? ['-c'] : [];
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-p', String(port), ...mode, '--json', ...args], (err, stdout) => (err ? reject(err) : resolve(JSON.parse(stdout))));
  });
}

function output(cmd, args) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, (err, stdout, stderr) => (err ? reject(new Error(`${cmd}: ${stderr || err}`)) : resolve(stdout.trim())));
  });
}

// A free port whose cluster bus port (+10000) is free too.
async function clusterPort() {
  for (;;) {
    const port = await freePort();
    if (port >= 55535) continue;
    const bus = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port + 10000, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (bus) return port;
  }
}

/** A Redis Cluster of 3 masters and 3 replicas in `dir`; resolves to its node ports. */
async function startCluster(dir) {
  const ports = [];
  for (let i = 0; i < 6; i++) ports.push(await clusterPort());
  for (const port of ports) {
    run('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--cluster-enabled', 'yes', '--cluster-node-timeout', '1000', '--cluster-replica-validity-factor', '0', '--repl-ping-replica-period', '1', '--repl-diskless-sync-delay', '0',
      '--cluster-config-file', `nodes-${port}.conf`, '--dir', dir], { stdio: 'ignore' });
  }
  for (const port of ports) await until(`cluster node ${port}`, async () => (await redisCli(port, ['PING'])) === 'PONG');
  await output('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes']);
  for (const port of ports) {
    await until('the cluster to be ok', async () => (await output('redis-cli', ['-p', String(port), 'CLUSTER', 'INFO'])).includes('cluster_state:ok'));
  }
  // Every master's replica in sync, so that publishes confirmed by a replica (`WAIT`) go through.
  for (const port of ports) {
    const info = await output('redis-cli', ['-p', String(port), 'INFO', 'replication']);
    if (info.includes('role:master')) {
      await until(`the replica of ${port} to sync`, async () => (await output('redis-cli', ['-p', String(port), 'INFO', 'replication'])).includes('state=online'));
    }
  }
  return ports;
}

// A tiny token issuer: an HS256 JWT with the given user, lifetime and channel grants.
function issueToken(sub, ttlSeconds, channels) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds, channels })}`;
  return `${body}.${createHmac('sha256', TOKEN_SECRET).update(body).digest('base64url')}`;
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', r));
}

async function main() {
  const sep = process.argv.indexOf('--');
  const command = sep >= 0 ? process.argv.slice(sep + 1) : [];
  if (command.length === 0) throw new Error('usage: node tests/harness.mjs -- <command> [args…]');
  if (!existsSync(serverBin)) throw new Error(`${serverBin} is missing: run cargo build first`);

  const dir = mkdtempSync(join(tmpdir(), 'redistribute-harness-'));
  const redisPort = await freePort();
  run('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--dir', dir], { stdio: 'ignore' });
  await until('redis start', async () => (await redisCli(redisPort, ['PING'])) === 'PONG');

  const staticDir = process.env.RD_STATIC ? resolve(process.env.RD_STATIC) : null;
  const servers = [];
  // Servers 0 and 1 run open (loopback only); server 2 checks tokens signed with TOKEN_SECRET,
  // which the control API's /token route issues.
  for (let i = 0; i < 3; i++) servers.push({ port: await freePort(), child: null });
  const startServer = async (i) => {
    const s = servers[i];
    const extra = staticDir ? ['--static', staticDir] : [];
    if (i === 2) extra.push('--token-secret', TOKEN_SECRET);
    // Test pages come from other origins (the control server, wasm-bindgen's runner on a port of
    // its own), so browsers' Origin never matches the servers' Host here.
    extra.push('--allowed-origin', '*');
    s.child = run(serverBin, ['--listen', `127.0.0.1:${s.port}`, '--redis', `redis://127.0.0.1:${redisPort}`, '--log', 'warn', '--shutdown-grace', '2', '--group-claim-idle-ms', '1000', ...extra]);
    await until(`server ${i} start`, async () => (await fetch(`http://127.0.0.1:${s.port}/healthz`)).ok);
  };
  const stopServer = async (i) => {
    const s = servers[i];
    if (s.child && s.child.exitCode === null) {
      s.child.kill('SIGTERM');
      await exited(s.child);
    }
    s.child = null;
  };
  await startServer(0);
  await startServer(1);
  await startServer(2);

  // Optional: a cluster, two servers on it, and HAProxy in front of them.
  const lb = process.env.RD_CLUSTER === '1' ? { instances: [], publisher: Promise.resolve() } : null;
  if (lb) {
    lb.nodes = await startCluster(dir);
    const seeds = lb.nodes.slice(0, 3).flatMap((p) => ['--redis-cluster', `redis://127.0.0.1:${p}`]);
    lb.key = (channel) => output(serverBin, [...seeds, 'key', channel]);
    for (let i = 0; i < 2; i++) lb.instances.push({ port: await freePort(), child: null });
    lb.start = async (i) => {
      const s = lb.instances[i];
      const extra = staticDir ? ['--static', staticDir] : [];
      s.child = run(serverBin, ['--listen', `127.0.0.1:${s.port}`, ...seeds, '--publish-replicas', '1', '--log', 'warn', '--shutdown-grace', '2', '--allowed-origin', '*', ...extra]);
      await until(`cluster server ${i} start`, async () => (await fetch(`http://127.0.0.1:${s.port}/healthz`)).ok);
    };
    lb.stop = async (i) => {
      const s = lb.instances[i];
      if (s.child && s.child.exitCode === null) {
        s.child.kill('SIGTERM');
        await exited(s.child);
      }
      s.child = null;
    };
    await lb.start(0);
    await lb.start(1);
    lb.port = await freePort();
    run('haproxy', ['-db', '-f', resolve(root, 'deploy', 'haproxy.cfg')], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, LB_BIND: `127.0.0.1:${lb.port}`, REDISTRIBUTE_1: `127.0.0.1:${lb.instances[0].port}`, REDISTRIBUTE_2: `127.0.0.1:${lb.instances[1].port}` },
    });
    await until('haproxy start', async () => (await fetch(`http://127.0.0.1:${lb.port}/healthz`)).ok);
  }

  // Static files on the control origin, which outlives the servers: the demo, the built package
  // as it would sit in node_modules, and test pages.
  const mounts = {
    '/app/': staticDir,
    '/pkg/': resolve(root, 'dist', 'redistribute-client'),
    '/pages/': resolve(root, 'tests', 'e2e', 'pages'),
  };
  let publisher = Promise.resolve();
  let tokensIssued = 0;
  const control = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const reply = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json', 'access-control-allow-origin': '*' });
      res.end(JSON.stringify(body));
    };
    try {
      const q = (k) => url.searchParams.get(k);
      let m;
      if (req.method === 'OPTIONS') return reply(204, null);
      const mount = Object.entries(mounts).find(([prefix, dir]) => dir && url.pathname.startsWith(prefix));
      if (mount) {
        const [prefix, dir] = mount;
        const file = resolve(dir, url.pathname.slice(prefix.length) || 'index.html');
        if (!file.startsWith(dir + pathSep) || !existsSync(file) || !statSync(file).isFile()) return reply(404, { error: 'no such file' });
        const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.png': 'image/png' };
        res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-cache' });
        return res.end(readFileSync(file));
      }
      if ((m = url.pathname.match(/^\/server\/(\d)\/(stop|start)$/))) {
        await (m[2] === 'stop' ? stopServer(Number(m[1])) : startServer(Number(m[1])));
        return reply(200, { ok: true });
      }
      if (url.pathname === '/token') {
        const grants = q('channels') ? JSON.parse(q('channels')) : [{ match: 'user:{sub}', allow: ['subscribe', 'history', 'publish'] }];
        tokensIssued += 1;
        return reply(200, { token: issueToken(q('sub') ?? 'ann', Number(q('ttl') ?? 60), grants), issued: tokensIssued });
      }
      if (url.pathname === '/token/count') return reply(200, { issued: tokensIssued });
      if (url.pathname === '/xadd') return reply(200, { offset: await redisCli(redisPort, ['XADD', KEY_PREFIX + q('channel'), '*', q('field'), q('value')]) });
      if (url.pathname === '/xrange') return reply(200, await redisCli(redisPort, ['XRANGE', KEY_PREFIX + q('channel'), '-', '+']));
      if (url.pathname === '/publisher') {
        const count = Number(q('count'));
        const interval = Number(q('interval') ?? 10);
        const channel = q('channel');
        publisher = (async () => {
          // One redis-cli process fed over stdin: "another process keeps publishing".
          const cli = spawn('redis-cli', ['-p', String(redisPort)], { stdio: ['pipe', 'ignore', 'inherit'] });
          children.add(cli);
          for (let n = 0; n < count; n++) {
            cli.stdin.write(`XADD ${KEY_PREFIX}${channel} * n ${n}\n`);
            await sleep(interval);
          }
          cli.stdin.end();
          await exited(cli);
          children.delete(cli);
        })();
        return reply(200, { started: true });
      }
      if (url.pathname === '/publisher/wait') {
        await publisher;
        return reply(200, { done: true });
      }
      if (lb && (m = url.pathname.match(/^\/cluster\/server\/(\d)\/(stop|start)$/))) {
        await (m[2] === 'stop' ? lb.stop(Number(m[1])) : lb.start(Number(m[1])));
        return reply(200, { ok: true });
      }
      if (lb && url.pathname === '/cluster/websockets') {
        const counts = await Promise.all(lb.instances.map(async (s) => {
          if (!s.child) return 0;
          const text = await (await fetch(`http://127.0.0.1:${s.port}/metrics`)).text();
          return Number(/^redistribute_websockets_open (\d+)$/m.exec(text)[1]);
        }));
        return reply(200, counts);
      }
      if (lb && url.pathname === '/cluster/xrange') {
        return reply(200, await redisCli(lb.nodes[0], ['XRANGE', await lb.key(q('channel')), '-', '+'], true));
      }
      if (lb && url.pathname === '/cluster/publisher') {
        const count = Number(q('count'));
        const interval = Number(q('interval') ?? 10);
        const key = await lb.key(q('channel'));
        lb.publisher = (async () => {
          const cli = spawn('redis-cli', ['-c', '-p', String(lb.nodes[0])], { stdio: ['pipe', 'ignore', 'inherit'] });
          children.add(cli);
          for (let n = 0; n < count; n++) {
            cli.stdin.write(`XADD ${key} * n ${n}\n`);
            await sleep(interval);
          }
          cli.stdin.end();
          await exited(cli);
          children.delete(cli);
        })();
        return reply(200, { started: true });
      }
      if (lb && url.pathname === '/cluster/publisher/wait') {
        await lb.publisher;
        return reply(200, { done: true });
      }
      reply(404, { error: 'unknown control route' });
    } catch (err) {
      reply(500, { error: String(err) });
    }
  });
  const controlPort = await freePort();
  await new Promise((r) => control.listen(controlPort, '127.0.0.1', r));

  const env = {
    ...process.env,
    RD_SERVER_A: `ws://127.0.0.1:${servers[0].port}/`,
    RD_SERVER_B: `ws://127.0.0.1:${servers[1].port}/`,
    RD_SERVER_AUTH: `ws://127.0.0.1:${servers[2].port}/`,
    RD_CONTROL: `http://127.0.0.1:${controlPort}`,
    RD_REDIS_PORT: String(redisPort),
    RD_APP: `http://127.0.0.1:${controlPort}/app/`,
    ...(lb ? { RD_LB: `http://127.0.0.1:${lb.port}/` } : {}),
  };
  console.log(`harness: redis :${redisPort}, servers ${env.RD_SERVER_A} ${env.RD_SERVER_B}, control ${env.RD_CONTROL}`);
  const test = spawn(command[0], command.slice(1), { stdio: 'inherit', env });
  const code = await new Promise((r) => test.on('exit', (c, signal) => r(c ?? (signal ? 1 : 0))));

  control.close();
  for (const child of children) child.kill('SIGTERM');
  await Promise.all([...children].map(exited));
  rmSync(dir, { recursive: true, force: true });
  process.exit(code);
}

main().catch(async (err) => {
  console.error(err);
  for (const child of children) child.kill('SIGKILL');
  process.exit(1);
});
