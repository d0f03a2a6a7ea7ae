#!/usr/bin/env node
// Opens the manager's dashboard in headless Chromium and checks what it renders.
//
//   node tests/dashboard/dashboard-test.mjs --url http://127.0.0.1:9100/dashboard
//        [--token T] [--expect-runners N] [--expect-shards N] [--screenshot out.png]
//        [--settle-ms 1500] [--timeout-ms 20000] [--chromium /usr/bin/chromium]
//
// Waits (bounded) until body[data-loaded="true"], then until the page shows --expect-runners
// [data-runner] rows and --expect-shards .shard cells (all groups together), so a cluster still
// settling gets the rest of the timeout. Fails on an uncaught page exception, a console.error
// from the page, a Content-Security-Policy violation, or a JavaScript dialog (a sign of script
// injection). Exit status: 0 pass,
// 1 fail, 2 usage. Talks to Chromium over --remote-debugging-pipe (DevTools protocol, no
// WebSocket), with a throw-away profile; the browser it started is killed by process group
// id on every exit path. Knows nothing about the mock: it runs against the real manager too.
// --settle-ms: how long to let the page keep polling before the screenshot (sparklines fill
// up at one sample a second); it does not count against --timeout-ms.

import { spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const USAGE = 'usage: dashboard-test.mjs --url <page url> [--token T] [--expect-runners N] [--expect-shards N] ' +
  '[--screenshot path.png] [--settle-ms N] [--timeout-ms N] [--chromium path]';
const WIDTH = 1440;
const HEIGHT = 900;

class Failure extends Error {}

function usage(message) {
  console.error(`dashboard-test: ${message}\n${USAGE}`);
  process.exit(2);
}

function parseOptions() {
  // `node --test tests/dashboard/` picks this file up by its name (*-test.mjs): it is a tool,
  // not a test file; mock.test.mjs runs it.
  if (process.env.NODE_TEST_CONTEXT && process.argv.length <= 2) {
    console.log('dashboard-test.mjs is the checker, not a test file: see mock.test.mjs');
    process.exit(0);
  }
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        token: { type: 'string' },
        'expect-runners': { type: 'string' },
        'expect-shards': { type: 'string' },
        screenshot: { type: 'string' },
        'timeout-ms': { type: 'string', default: '20000' },
        'settle-ms': { type: 'string', default: '1500' },
        chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    usage(err.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.url) usage('--url is required');
  let url;
  try {
    url = new URL(values.url);
  } catch {
    usage(`--url is not a URL: ${values.url}`);
  }
  // What to print: never the token.
  const shown = new URL(url.href);
  if (values.token) {
    url.searchParams.set('token', values.token);
    shown.searchParams.set('token', '***');
  } else if (shown.searchParams.has('token')) {
    shown.searchParams.set('token', '***');
  }
  const count = (name) => {
    const v = values[name];
    if (v === undefined) return null;
    if (!/^\d+$/.test(v)) usage(`--${name} wants a non-negative integer, not ${v}`);
    return Number(v);
  };
  const timeout = count('timeout-ms');
  if (!timeout) usage('--timeout-ms must be positive');
  try {
    accessSync(values.chromium, constants.X_OK);
  } catch {
    usage(`no executable chromium at ${values.chromium} (set --chromium or CHROMIUM)`);
  }
  return {
    url: url.href,
    shownUrl: shown.href,
    runners: count('expect-runners'),
    shards: count('expect-shards'),
    screenshot: values.screenshot || null,
    timeoutMs: timeout,
    settleMs: count('settle-ms'),
    chromium: values.chromium,
  };
}

// ---- a DevTools-protocol client over Chromium's --remote-debugging-pipe (fd 3 in, fd 4 out,
// NUL-terminated JSON messages) ---------------------------------------------------------------
class Cdp {
  constructor(input, output) {
    this.input = input;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = [];
    this.closed = null;
    let buffer = Buffer.alloc(0);
    output.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      let end;
      while ((end = buffer.indexOf(0)) >= 0) {
        const text = buffer.subarray(0, end).toString('utf8');
        buffer = buffer.subarray(end + 1);
        let msg;
        try {
          msg = JSON.parse(text);
        } catch {
          continue;
        }
        if (msg.id !== undefined && this.pending.has(msg.id)) {
          const { resolve, reject, method } = this.pending.get(msg.id);
          this.pending.delete(msg.id);
          if (msg.error) reject(new Failure(`${method}: ${msg.error.message}`));
          else resolve(msg.result);
        } else if (msg.method) {
          for (const fn of this.listeners) fn(msg);
        }
      }
    });
    // Deferred a little: when the browser died, its exit status makes the better message.
    const gone = () => setTimeout(() => this.fail(new Failure('chromium closed the DevTools pipe (did it crash?)')), 200);
    output.on('close', gone);
    output.on('error', gone);
    input.on('error', gone);
  }

  fail(err) {
    if (this.closed) return;
    this.closed = err;
    for (const { reject } of this.pending.values()) reject(err);
    this.pending.clear();
  }

  send(method, params = {}, sessionId) {
    if (this.closed) return Promise.reject(this.closed);
    const id = this.nextId++;
    const msg = { id, method, params };
    if (sessionId) msg.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.input.write(`${JSON.stringify(msg)}\0`);
    });
  }

  on(fn) {
    this.listeners.push(fn);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the browser -----------------------------------------------------------------------------
function launch(chromium) {
  const profile = mkdtempSync(join(tmpdir(), 'dashboard-test-'));
  const args = [
    '--headless=new', '--no-sandbox', '--disable-gpu', `--user-data-dir=${profile}`,
    '--remote-debugging-pipe', '--no-first-run', '--no-default-browser-check', '--disable-extensions',
    '--disable-background-networking', '--disable-sync', '--disable-default-apps', '--disable-dev-shm-usage',
    '--disable-component-update', '--metrics-recording-only', '--mute-audio', '--hide-scrollbars',
    '--password-store=basic', '--use-mock-keychain', `--window-size=${WIDTH},${HEIGHT}`, 'about:blank',
  ];
  // detached: its own process group, so the renderer and zygote children die with it.
  const child = spawn(chromium, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'], detached: true });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', (err) => resolve({ error: err }));
  });
  let cleaned = false;
  async function cleanup(cdp) {
    if (cleaned) return;
    cleaned = true;
    if (cdp && !cdp.closed && child.exitCode === null) {
      cdp.send('Browser.close').catch(() => {});
      await Promise.race([exited, sleep(2000)]);
    }
    killNow();
    await Promise.race([exited, sleep(2000)]);
    removeProfile();
  }
  function killNow() {
    if (!child.pid) return;
    // The whole group (renderers, zygote) first; the leader itself only while it is unreaped,
    // so a recycled pid is never hit.
    const targets = [-child.pid];
    if (child.exitCode === null && child.signalCode === null) targets.push(child.pid);
    for (const target of targets) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  function removeProfile() {
    try {
      rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    } catch (err) {
      console.error(`dashboard-test: could not remove ${profile}: ${err.message}`);
    }
  }
  return { child, exited, cleanup, killNow, removeProfile, stderrTail: () => stderr.trim() };
}

// Evaluated in the page: everything the checks need, in one round trip.
const PROBE = `(() => {
  const text = (el) => (el && !el.hidden ? el.textContent.trim() : '');
  return {
    readyState: document.readyState,
    loaded: document.body ? document.body.dataset.loaded === 'true' : false,
    runners: document.querySelectorAll('[data-runner]').length,
    shards: document.querySelectorAll('.shard').length,
    groups: document.querySelectorAll('[data-group]').length,
    unassigned: document.querySelectorAll('.shard[data-owner="none"]').length,
    banner: text(document.getElementById('banner')),
    title: document.title,
  };
})()`;

async function run(opts, browser, issues) {
  const { child } = browser;
  const cdp = new Cdp(child.stdio[3], child.stdio[4]);
  browser.cdp = cdp;
  browser.exited.then(({ code, signal, error }) => {
    cdp.fail(new Failure(error
      ? `cannot start ${opts.chromium}: ${error.message}`
      : `chromium exited early (code ${code}, signal ${signal}): ${browser.stderrTail().split('\n').slice(-3).join(' | ')}`));
  });

  const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank' });
  const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
  const page = (method, params) => cdp.send(method, params, sessionId);

  const resources = new Map(); // requestId -> url
  cdp.on((msg) => {
    if (msg.sessionId !== sessionId) return;
    const p = msg.params || {};
    switch (msg.method) {
      case 'Runtime.exceptionThrown': {
        const d = p.exceptionDetails || {};
        const what = (d.exception && (d.exception.description || d.exception.value)) || d.text || 'exception';
        issues.errors.push(`uncaught exception: ${String(what).split('\n')[0]} (${d.url || 'page'}:${(d.lineNumber ?? 0) + 1})`);
        break;
      }
      case 'Runtime.consoleAPICalled':
        if (p.type === 'error' || p.type === 'assert') {
          const args = (p.args || []).map((a) => a.value ?? a.description ?? '').join(' ');
          issues.errors.push(`console.${p.type}: ${args.split('\n')[0]}`);
        }
        break;
      case 'Page.javascriptDialogOpening':
        issues.errors.push(`page opened a JavaScript ${p.type}() dialog: ${p.message}`);
        page('Page.handleJavaScriptDialog', { accept: false }).catch(() => {});
        break;
      case 'Network.requestWillBeSent':
        resources.set(p.requestId, p.request && p.request.url);
        break;
      case 'Network.responseReceived':
        if (p.response && p.response.status >= 400) {
          issues.network.push(`${p.type || 'request'} ${new URL(p.response.url).pathname} → HTTP ${p.response.status}`);
        }
        break;
      case 'Network.loadingFailed':
        if (!p.canceled) {
          const u = resources.get(p.requestId);
          issues.network.push(`${p.type || 'request'} ${u ? new URL(u).pathname : '?'} failed: ${p.errorText}`);
        }
        break;
      default:
    }
  });

  await page('Runtime.enable');
  await page('Page.enable');
  await page('Network.enable');
  // A Content-Security-Policy violation is a broken page even when nothing throws.
  await page('Page.addScriptToEvaluateOnNewDocument', {
    source: `document.addEventListener('securitypolicyviolation', (e) =>
      console.error('Content-Security-Policy violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline code')));`,
  });
  await page('Emulation.setDeviceMetricsOverride', { width: WIDTH, height: HEIGHT, deviceScaleFactor: 1, mobile: false });

  const started = Date.now();
  const nav = await page('Page.navigate', { url: opts.url });
  if (nav.errorText) throw new Failure(`cannot open ${opts.shownUrl}: ${nav.errorText}`);

  const deadline = started + opts.timeoutMs;
  const probe = async () => {
    const r = await page('Runtime.evaluate', { expression: PROBE, returnByValue: true });
    if (r.exceptionDetails) throw new Failure(`probe failed: ${r.exceptionDetails.text}`);
    return r.result.value;
  };
  const matches = (s) => (opts.runners === null || s.runners === opts.runners) && (opts.shards === null || s.shards === opts.shards);

  let snap = null;
  let loadedAt = null;
  while (Date.now() < deadline) {
    try {
      snap = await probe();
    } catch (err) {
      // The page is navigating: the context the probe ran in went away. Try again.
      if (err instanceof Failure && /context|navigat|destroyed/i.test(err.message)) snap = null;
      else throw err;
    }
    if (snap && snap.loaded && loadedAt === null) loadedAt = Date.now();
    if (issues.errors.length) break;
    if (snap && snap.loaded && matches(snap)) break;
    await sleep(150);
  }

  const context = () => {
    const lines = [];
    if (snap && snap.banner) lines.push(`page banner: ${snap.banner}`);
    for (const n of [...new Set(issues.network)].slice(0, 5)) lines.push(`network: ${n}`);
    return lines.length ? `\n  ${lines.join('\n  ')}` : '';
  };

  const shoot = async () => {
    const shot = await page('Page.captureScreenshot', {
      format: 'png',
      clip: { x: 0, y: 0, width: WIDTH, height: HEIGHT, scale: 1 },
      captureBeyondViewport: false,
    });
    try {
      writeFileSync(opts.screenshot, Buffer.from(shot.data, 'base64'));
    } catch (err) {
      throw new Failure(`cannot write the screenshot: ${err.message}`);
    }
  };
  const reportedErrors = () => {
    if (issues.errors.length) {
      throw new Failure(`the page reported errors:\n  ${[...new Set(issues.errors)].slice(0, 5).join('\n  ')}${context()}`);
    }
  };

  try {
    reportedErrors();
    if (!snap || !snap.loaded) {
      throw new Failure(`page never loaded: body[data-loaded="true"] missing after ${opts.timeoutMs} ms at ${opts.shownUrl}` +
        ` (document ${snap ? snap.readyState : 'unavailable'})${context()}`);
    }
    const wrong = [];
    if (opts.runners !== null && snap.runners !== opts.runners) wrong.push(`expected ${opts.runners} runner rows, page shows ${snap.runners}`);
    if (opts.shards !== null && snap.shards !== opts.shards) wrong.push(`expected ${opts.shards} shard cells, page shows ${snap.shards}`);
    if (wrong.length) throw new Failure(`${wrong.join('; ')} (waited ${opts.timeoutMs} ms)${context()}`);
    if (opts.screenshot) {
      // Let a few more polls land so the picture shows trend lines, not a first frame.
      await sleep(opts.settleMs);
      reportedErrors();
    }
  } catch (err) {
    // A failing page still leaves a picture behind when one was asked for.
    if (opts.screenshot && !cdp.closed) {
      await shoot().then(() => console.error(`dashboard-test: screenshot of the failing page: ${opts.screenshot}`), () => {});
    }
    throw err;
  }
  if (opts.screenshot) await shoot();
  return { snap, loadMs: loadedAt - started };
}

async function main() {
  const opts = parseOptions();
  const browser = launch(opts.chromium);
  const issues = { errors: [], network: [] };
  const onSignal = (sig) => {
    browser.killNow();
    browser.removeProfile();
    console.error(`dashboard-test: interrupted by ${sig}`);
    process.exit(1);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // A hard ceiling in case the browser stops answering the pipe altogether.
  let watchdog;
  const hang = new Promise((_, reject) => {
    const ceiling = opts.timeoutMs + (opts.screenshot ? opts.settleMs : 0) + 10000;
    watchdog = setTimeout(() => reject(new Failure(`no result within ${ceiling} ms (chromium hung?)`)), ceiling);
  });

  let status = 0;
  try {
    const { snap, loadMs } = await Promise.race([run(opts, browser, issues), hang]);
    const parts = [`${snap.runners} runner${snap.runners === 1 ? '' : 's'}`,
      `${snap.shards} shard${snap.shards === 1 ? '' : 's'} in ${snap.groups} group${snap.groups === 1 ? '' : 's'} (${snap.unassigned} unassigned)`];
    console.log(`dashboard-test: ok — ${parts.join(', ')}, loaded in ${loadMs} ms` +
      `${opts.screenshot ? `, screenshot ${opts.screenshot}` : ''} — ${opts.shownUrl}`);
  } catch (err) {
    status = 1;
    console.error(`dashboard-test: FAIL — ${err instanceof Failure ? err.message : err.stack || err}`);
  } finally {
    clearTimeout(watchdog);
    await browser.cleanup(browser.cdp);
  }
  process.exit(status);
}

main();
