// The dashboard against the mock manager, through the same checker CI runs against the real one.
//
//   node --test tests/dashboard/mock.test.mjs
//
// Needs /usr/bin/chromium (or CHROMIUM=...). Each check runs dashboard-test.mjs as a child with
// its own TMPDIR, so it can also prove the browser profile is removed and no browser is left.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { startMockServer } from './mock-server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const CHECKER = join(here, 'dashboard-test.mjs');

// Processes whose command line mentions `dir` (a browser still using a profile under it).
function processesUsing(dir) {
  const found = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) found.push(pid);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

// Runs the checker; resolves to { code, stdout, stderr } (never rejects on a failing check).
function check(args) {
  const tmp = mkdtempSync(join(tmpdir(), 'dashboard-mock-test-'));
  const env = { ...process.env, TMPDIR: tmp };
  delete env.NODE_TEST_CONTEXT; // the checker is a plain script, not a test file
  return new Promise((resolve) => {
    execFile(process.execPath, [CHECKER, ...args], { env, timeout: 60000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      const leftFiles = readdirSync(tmp);
      const leftProcs = processesUsing(tmp);
      rmSync(tmp, { recursive: true, force: true });
      resolve({ code, stdout, stderr, leftFiles, leftProcs });
    });
  });
}

function assertClean(r) {
  assert.deepEqual(r.leftFiles, [], `checker left files in its TMPDIR: ${r.leftFiles}`);
  assert.deepEqual(r.leftProcs, [], `checker left processes: ${r.leftProcs}`);
}

function pngSize(file) {
  const b = readFileSync(file);
  assert.equal(b.subarray(1, 4).toString('latin1'), 'PNG', 'screenshot is not a PNG');
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
}

describe('dashboard against the mock manager', () => {
  let mock;
  const out = mkdtempSync(join(tmpdir(), 'dashboard-shots-'));
  before(async () => {
    mock = await startMockServer({ periodMs: 1000 });
  });
  after(async () => {
    await mock?.close();
    rmSync(out, { recursive: true, force: true });
  });

  test('passes with 2 runners and 300 shards, and takes a 1440x900 screenshot', async () => {
    const shot = join(out, 'ok.png');
    const r = await check(['--url', mock.url, '--expect-runners', '2', '--expect-shards', '300', '--screenshot', shot, '--settle-ms', '500']);
    assert.equal(r.code, 0, `checker failed:\n${r.stderr}`);
    assert.match(r.stdout, /^dashboard-test: ok — 2 runners, 300 shards in 2 groups/);
    assert.equal(r.stdout.trim().split('\n').length, 1, 'summary is one line');
    assert.deepEqual(pngSize(shot), { width: 1440, height: 900 });
    assertClean(r);
  });

  test('serves the page at /, /dashboard and its files under /dashboard/', async () => {
    const base = mock.url.replace(/\/dashboard$/, '');
    for (const [path, type] of [['/', 'text/html'], ['/dashboard', 'text/html'], ['/dashboard/dashboard.js', 'text/javascript'],
      ['/dashboard/dashboard.css', 'text/css'], ['/api/cluster', 'application/json']]) {
      const res = await fetch(base + path);
      assert.equal(res.status, 200, path);
      assert.ok(res.headers.get('content-type').startsWith(type), `${path}: ${res.headers.get('content-type')}`);
      await res.arrayBuffer();
    }
    for (const path of ['/dashboard/../CMakeLists.txt', '/dashboard/embed.cmake', '/nope']) {
      const res = await fetch(base + path);
      assert.equal(res.status, 404, path);
      await res.arrayBuffer();
    }
  });

  test('fails when expecting 3 runners', async () => {
    const r = await check(['--url', mock.url, '--expect-runners', '3', '--expect-shards', '300', '--timeout-ms', '3000']);
    assert.notEqual(r.code, 0, 'checker passed although the page shows 2 runners');
    assert.match(r.stderr, /expected 3 runner rows, page shows 2/);
    assertClean(r);
  });

  test('fails when the shard count is wrong', async () => {
    const r = await check(['--url', mock.url, '--expect-shards', '301', '--timeout-ms', '2000']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /expected 301 shard cells, page shows 300/);
  });

  test('rejects bad usage with status 2', async () => {
    const r = await check(['--expect-runners', '2']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--url is required/);
  });
});

describe('dashboard against odd manager answers', () => {
  test('sends ?token= as a bearer token, and says so when it is missing', async () => {
    const mock = await startMockServer({ token: 'Zq9 s/+1' });
    try {
      const ok = await check(['--url', mock.url, '--token', 'Zq9 s/+1', '--expect-runners', '2', '--expect-shards', '300']);
      assert.equal(ok.code, 0, ok.stderr);
      assert.ok(!(ok.stdout + ok.stderr).includes('Zq9'), 'the token must not be printed');
      const missing = await check(['--url', mock.url, '--timeout-ms', '2500']);
      assert.notEqual(missing.code, 0);
      assert.match(missing.stderr, /page never loaded/);
      assert.match(missing.stderr, /manager unreachable: HTTP 401/);
      assertClean(missing);
    } finally {
      await mock.close();
    }
  });

  test('copes with missing and mistyped fields without throwing', async () => {
    const mock = await startMockServer({ mode: 'sparse' });
    try {
      // One runner (named like markup: it must stay text), one 4-shard group and one empty one.
      const r = await check(['--url', mock.url, '--expect-runners', '1', '--expect-shards', '4']);
      assert.equal(r.code, 0, r.stderr);
    } finally {
      await mock.close();
    }
  });

  test('shows "manager unreachable" and never loads when /api/cluster fails', async () => {
    const mock = await startMockServer({ mode: 'down' });
    try {
      const r = await check(['--url', mock.url, '--timeout-ms', '2500']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /page banner: manager unreachable: HTTP 503/);
      assertClean(r);
    } finally {
      await mock.close();
    }
  });

  test('fails clearly when nothing listens', async () => {
    const mock = await startMockServer();
    const url = mock.url;
    await mock.close();
    const r = await check(['--url', url, '--timeout-ms', '2000']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /ERR_CONNECTION_REFUSED/);
    assertClean(r);
  });
});
