// A stand-in for the manager's admin HTTP endpoint, for developing and testing the dashboard
// without a cluster. Serves the same routes the manager does:
//
//   GET /, /dashboard, /dashboard/      manager/dashboard/index.html
//   GET /dashboard/<file>               manager/dashboard/<file> (read on every request)
//   GET /api/cluster                    a fake cluster whose shard map changes over time
//
// index.html goes out with a strict Content-Security-Policy (PAGE_CSP), so a page change that
// needs inline script or style, or anything external, fails the tests.
//
// Modes: "normal" (default), "sparse" (odd, half-empty JSON: the page must cope), "down"
// (/api/cluster answers 503). With a token, /api/cluster wants `Authorization: Bearer <token>`
// or `?token=`; the page's own files stay public.
//
//   node tests/dashboard/mock-server.mjs [--port 0] [--token T] [--mode normal|sparse|down]
//        [--runners N] [--groups default:200,persisted:100] [--period-ms 3000]
//
// As a module: `const mock = await startMockServer({...}); mock.url; await mock.close();`

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
export const DASHBOARD_DIR = join(here, '..', '..', 'manager', 'dashboard');

const CONTENT_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.json': 'application/json',
};
export const PAGE_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
// Only the page's files: no directory walking, no source files.
const ASSETS = new Set(['index.html', 'dashboard.js', 'dashboard.css']);

// A small deterministic PRNG so a run is reproducible.
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/// The fake cluster: `groups` is [[name, shards], ...]. Every `periodMs` a batch of shards of one
/// group starts a handoff (unassigned for one period), then lands on another runner.
export function createCluster({ runners = 2, groups = [['default', 200], ['persisted', 100]], periodMs = 3000, seed = 7 } = {}) {
  const random = prng(seed);
  const started = Date.now();
  const names = Array.from({ length: runners }, (_, i) => `runner-${i + 1}`);
  const state = groups.map(([name, shards]) => ({
    name,
    owners: Array.from({ length: shards }, (_, i) => (runners > 0 ? Math.floor((i * runners) / shards) : -1)),
    handoff: [], // [shard, target]
  }));
  const events = [];
  const event = (time, kind, message) => {
    events.unshift({ time_ms: time, kind, message });
    events.length = Math.min(events.length, 50);
  };
  names.forEach((n, i) => event(started - 60000 + i * 1000, 'runner_joined', `${n} joined at 127.0.0.1:${34431 + i}`));
  names.forEach((n, i) => event(started - 55000 + i * 1000, 'plugin_loaded', `greeter@1.2.0 and counter@0.4.1 loaded on ${n}`));
  if (runners > 1) event(started - 50000, 'shards_moved', `${Math.round(state[0].owners.length / runners)} shards of ${state[0].name} moved runner-1 → runner-2`);
  event(started - 20000, 'plugin_pushed', 'greeter@1.2.0 pushed to all runners');

  let steps = 0;
  function step(now) {
    steps++;
    for (const g of state) {
      for (const [shard, target] of g.handoff) g.owners[shard] = target;
      g.handoff = [];
    }
    if (runners < 2 || state.length === 0) return;
    const g = state[Math.floor(random() * state.length)];
    const from = Math.floor(random() * runners);
    let to = Math.floor(random() * (runners - 1));
    if (to >= from) to++;
    const owned = g.owners.map((o, i) => (o === from ? i : -1)).filter((i) => i >= 0);
    const floor = Math.floor(g.owners.length / (2 * runners));
    const k = Math.min(4 + Math.floor(random() * 14), owned.length - floor);
    if (k <= 0) return;
    const startAt = Math.floor(random() * (owned.length - k + 1));
    const batch = owned.slice(startAt, startAt + k);
    for (const shard of batch) g.owners[shard] = -1;
    g.handoff = batch.map((shard) => [shard, to]);
    event(now, 'shards_moved', `${k} shard${k === 1 ? '' : 's'} of ${g.name} moved ${names[from]} → ${names[to]}`);
    if (steps % 7 === 0) event(now, 'runner_unhealthy', `${names[to]} missed a heartbeat (recovered)`);
  }
  const timer = setInterval(() => step(Date.now()), periodMs);
  timer.unref();

  function snapshot() {
    const now = Date.now();
    const t = (now - started) / 1000;
    const perRunner = names.map(() => 0);
    for (const g of state) for (const o of g.owners) if (o >= 0) perRunner[o]++;
    const wave = (i, period, phase = 0) => 1 + 0.22 * Math.sin((t / period) * 2 * Math.PI + i + phase);
    const runnerCalls = names.map((_, i) => 24000 * wave(i, 23) * (perRunner[i] / Math.max(1, ...perRunner) * 0.6 + 0.4));
    const totalCalls = runnerCalls.reduce((a, b) => a + b, 0);
    const errorRate = 0.6 + 0.6 * Math.max(0, Math.sin(t / 9));
    const greeterShare = 0.72;
    const backlog = Math.max(0, Math.round(18 + 16 * Math.sin(t / 5)));
    return {
      time_ms: now,
      version: '0.9.0',
      storage: 'postgres',
      manager: '127.0.0.1:34400',
      groups: state.map((g) => ({ name: g.name, shards: g.owners.length, owners: [...g.owners] })),
      runners: names.map((name, i) => ({
        name,
        address: `127.0.0.1:${34431 + i}`,
        admin_address: `127.0.0.1:${9101 + i}`,
        healthy: true,
        shards: perRunner[i],
        version: '0.9.0',
        plugins: [
          { name: 'greeter', version: '1.2.0', entity_types: ['Greeter'] },
          { name: 'counter', version: '0.4.1', entity_types: ['Counter'] },
        ],
        metrics: {
          ok: true,
          error: '',
          cpu_cores: +(runnerCalls[i] / 70000).toFixed(3),
          rss_bytes: Math.round((48 + perRunner[i] * 0.12 + 3 * Math.sin(t / 11 + i)) * 1048576),
          active_entities: perRunner[i] * 7 + Math.round(40 * wave(i, 13)),
          mailbox_depth: Math.round(3 + 3 * Math.sin(t / 3 + i * 2)),
          calls_per_s: +runnerCalls[i].toFixed(1),
          errors_per_s: +(errorRate * (runnerCalls[i] / totalCalls)).toFixed(2),
          connections: 4 + i,
          plugin_restarts: i === 1 ? 1 : 0,
        },
      })),
      entity_types: [
        {
          name: 'Greeter', group: groups[0]?.[0] ?? 'default',
          active_entities: Math.round(1400 * wave(0, 13)), mailbox_depth: Math.round(2 + 2 * Math.sin(t / 3)),
          calls_per_s: +(totalCalls * greeterShare).toFixed(1), errors_per_s: +(errorRate * 0.8).toFixed(2),
          p50_ms: +(0.05 * wave(1, 17)).toFixed(3), p99_ms: +(0.9 * wave(2, 7)).toFixed(3),
          rpcs: [
            { name: 'Greet', calls_per_s: +(totalCalls * greeterShare * 0.35).toFixed(1), errors_per_s: +(errorRate * 0.8).toFixed(2), p50_ms: 0.08, p99_ms: +(1.4 * wave(2, 7)).toFixed(3) },
            { name: 'GreetVolatile', calls_per_s: +(totalCalls * greeterShare * 0.65).toFixed(1), errors_per_s: 0, p50_ms: 0.04, p99_ms: +(0.6 * wave(3, 7)).toFixed(3) },
          ],
        },
        {
          name: 'Counter', group: groups[1]?.[0] ?? 'persisted',
          active_entities: Math.round(620 * wave(1, 19)), mailbox_depth: Math.round(4 + 3 * Math.sin(t / 4)),
          calls_per_s: +(totalCalls * (1 - greeterShare)).toFixed(1), errors_per_s: +(errorRate * 0.2).toFixed(2),
          p50_ms: +(1.8 * wave(2, 11)).toFixed(3), p99_ms: +(12.5 * wave(0, 9)).toFixed(2),
          rpcs: [
            { name: 'Increment', calls_per_s: +(totalCalls * (1 - greeterShare) * 0.8).toFixed(1), errors_per_s: +(errorRate * 0.2).toFixed(2), p50_ms: 2.1, p99_ms: +(14.2 * wave(0, 9)).toFixed(2) },
            { name: 'Get', calls_per_s: +(totalCalls * (1 - greeterShare) * 0.2).toFixed(1), errors_per_s: 0, p50_ms: 0.3, p99_ms: 2.4 },
          ],
        },
      ],
      persisted_backlog: [{ group: groups[1]?.[0] ?? 'persisted', pending: backlog }],
      dead_letters: {
        count: 2,
        recent: [
          { time_ms: started - 12000, entity_type: 'Counter', entity_id: 'order-4711', rpc: 'Increment', reason: 'handler crashed 3 times' },
          { time_ms: started - 41000, entity_type: 'Greeter', entity_id: 'x', rpc: 'Greet', reason: 'payload failed to decode: <b>not html</b>' },
        ],
      },
      events: events.map((e) => ({ ...e })),
    };
  }

  return { snapshot, close: () => clearInterval(timer) };
}

// Odd but legal-looking input: wrong types, missing fields, out-of-range owners, markup in strings.
function sparseSnapshot() {
  return {
    version: 3,
    groups: [{ name: 'odd', owners: [0, 5, -1, null] }, { shards: 'many' }],
    runners: [{ name: '<img src=x onerror=alert(1)>', healthy: 'yes', metrics: { ok: false } }],
    entity_types: [{}, { name: 'T', rpcs: [{}, null] }],
    persisted_backlog: null,
    dead_letters: { count: 'n/a', recent: [null] },
    events: [{}, { kind: 'weird_kind', time_ms: 'now' }, null],
  };
}

function authorized(req, url, token) {
  if (!token) return true;
  const auth = req.headers.authorization || '';
  if (auth === `Bearer ${token}`) return true;
  return url.searchParams.get('token') === token;
}

/// Starts the mock on 127.0.0.1 (`port` 0: an ephemeral one). Resolves to { url, port, close }.
export async function startMockServer({ port = 0, token = '', mode = 'normal', runners = 2, groups, periodMs = 3000, log = false } = {}) {
  const cluster = createCluster({ runners, periodMs, ...(groups ? { groups } : {}) });
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const send = (status, type, body, extra = {}) => {
      res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff', ...extra });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (log) console.error(`${req.method} ${req.url}`);
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'text/plain; charset=utf-8', 'method not allowed\n', { Allow: 'GET, HEAD' });

    const path = url.pathname;
    if (path === '/api/cluster') {
      if (!authorized(req, url, token)) {
        return send(401, 'application/json', JSON.stringify({ error: 'missing or wrong token' }), { 'WWW-Authenticate': 'Bearer' });
      }
      if (mode === 'down') return send(503, 'application/json', JSON.stringify({ error: 'mock is down' }));
      const body = mode === 'sparse' ? sparseSnapshot() : cluster.snapshot();
      return send(200, 'application/json', JSON.stringify(body));
    }
    let file = null;
    if (path === '/' || path === '/dashboard' || path === '/dashboard/') file = 'index.html';
    else if (path.startsWith('/dashboard/') && ASSETS.has(path.slice('/dashboard/'.length))) file = path.slice('/dashboard/'.length);
    if (!file) return send(404, 'text/plain; charset=utf-8', 'not found\n');
    try {
      const body = await readFile(join(DASHBOARD_DIR, file));
      // The strictest policy the page is meant to live under: no inline code, nothing external.
      return send(200, CONTENT_TYPES[file.slice(file.lastIndexOf('.'))] || 'application/octet-stream', body,
        file === 'index.html' ? { 'Content-Security-Policy': PAGE_CSP } : {});
    } catch (err) {
      return send(500, 'text/plain; charset=utf-8', `cannot read ${file}: ${err.message}\n`);
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const actual = server.address().port;
  return {
    port: actual,
    url: `http://127.0.0.1:${actual}/dashboard`,
    close: () => new Promise((resolve) => {
      cluster.close();
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      token: { type: 'string', default: '' },
      mode: { type: 'string', default: 'normal' },
      runners: { type: 'string', default: '2' },
      groups: { type: 'string', default: 'default:200,persisted:100' },
      'period-ms': { type: 'string', default: '3000' },
      log: { type: 'boolean', default: false },
    },
  });
  if (!['normal', 'sparse', 'down'].includes(values.mode)) {
    console.error(`--mode must be normal, sparse or down, not ${values.mode}`);
    process.exit(2);
  }
  const mock = await startMockServer({
    port: Number(values.port),
    token: values.token,
    mode: values.mode,
    runners: Number(values.runners),
    groups: values.groups.split(',').filter(Boolean).map((g) => {
      const [name, shards] = g.split(':');
      return [name, Number(shards) || 0];
    }),
    periodMs: Number(values['period-ms']),
    log: values.log,
  });
  const q = values.token ? `?token=${encodeURIComponent(values.token)}` : '';
  console.log(`mock dashboard at ${mock.url}${q}`);
  const stop = () => mock.close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
