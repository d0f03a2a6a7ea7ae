// A real local cluster for the tests: the C++ binaries (manager, runners, proxies) as child
// processes on free loopback ports, with fresh credentials, memory storage, and the Greeter
// and Probe plugins. Every child is stopped by PID when the cluster is stopped.
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const buildDir = resolve(process.env.CLUSTER_BUILD_DIR ?? join(here, "../../../build/dev"));
export const binDir = join(buildDir, "bin");
const pluginFiles = [join(buildDir, "plugins/libgreeter.so"), join(buildDir, "test-plugins/libprobe_plugin.so")];

export function missingBinaries() {
  const needed = ["cluster-manager", "cluster-runner", "cluster-proxy", "clusterctl"].map((b) => join(binDir, b));
  return [...needed, ...pluginFiles].filter((f) => !existsSync(f));
}

async function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** Polls `predicate` every `intervalMs` until it holds (true) or `timeoutMs` passes (false). */
export async function waitFor(predicate, timeoutMs = 20000, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export class TestCluster {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), "cluster-ts-"));
    this.credentials = join(this.dir, "credentials");
    this.children = new Map(); // name → ChildProcess
    this.proxyArgs = [];
    this.env = {};
  }

  /**
   * `proxyArgs`: extra arguments (e.g. `--set proxy.key=value`) for every proxy; `env`: extra
   * environment variables for every child.
   */
  static async start({ runners = 2, proxies = 1, runnerArgs = [], proxyArgs = [], env = {}, tls = false } = {}) {
    const missing = missingBinaries();
    if (missing.length > 0) throw new Error(`build these first: ${missing.join(", ")}`);
    const cluster = new TestCluster();
    cluster.tls = tls;
    cluster.proxyArgs = proxyArgs;
    cluster.env = env;
    try {
      await cluster.init(runners, proxies, runnerArgs);
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  async init(runners, proxies, runnerArgs) {
    await run(join(binDir, "clusterctl"), ["keys", "init", this.credentials]);
    // What `scripts/dev up` records for the tools when it turns TLS on.
    if (this.tls) writeFileSync(join(this.credentials, "tls"), "on\n");
    this.managerPort = await freePort();
    this.proxyPorts = [];
    for (let i = 0; i < proxies; ++i) this.proxyPorts.push(await freePort());
    this.runnerPorts = [];
    for (let i = 0; i < runners; ++i) this.runnerPorts.push(await freePort());
    this.spawn("manager", "cluster-manager", ["--set", `manager.port=${this.managerPort}`]);
    for (let i = 1; i <= runners; ++i) this.startRunner(i, runnerArgs);
    for (let i = 1; i <= proxies; ++i) this.startProxy(i);
    await this.ready(runners);
  }

  get managerAddress() {
    return `127.0.0.1:${this.managerPort}`;
  }

  get proxies() {
    return this.proxyPorts.map((p) => `127.0.0.1:${p}`);
  }

  spawn(name, program, args) {
    const log = openSync(join(this.dir, `${name}.log`), "a");
    const security = this.tls ? ["--set", "security.tls=on"] : [];
    const child = spawn(join(binDir, program), ["--set", "cluster.storage=memory", ...security, ...args], {
      stdio: ["ignore", log, log],
      env: { ...process.env, CLUSTER_SECURITY_CREDENTIALS_DIR: this.credentials, CLUSTER_LOG_LEVEL: "info", ...this.env },
    });
    child.exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
    this.children.set(name, child);
    return child;
  }

  startRunner(n, extra = []) {
    return this.spawn(`runner-${n}`, "cluster-runner", [
      "--set", `runner.name=runner-${n}`,
      "--set", `runner.port=${this.runnerPorts[n - 1]}`,
      "--set", `runner.manager=${this.managerAddress}`,
      "--set", `runner.plugins=${pluginFiles.join(",")}`,
      ...extra,
    ]);
  }

  startProxy(n) {
    return this.spawn(`proxy-${n}`, "cluster-proxy", [
      "--set", `proxy.port=${this.proxyPorts[n - 1]}`,
      "--set", `proxy.manager=${this.managerAddress}`,
      ...this.proxyArgs,
    ]);
  }

  /**
   * Whether the runners declare Greeter.GreetMany as a stream: the runner side of streams,
   * interrupts and discard is there.
   */
  async hasStreams(client) {
    const snapshot = await client.status();
    const greeter = snapshot.entity_types.find((t) => t.name === "Greeter");
    return Boolean(greeter?.rpcs.some((r) => r.name === "GreetMany" && r.stream));
  }

  log(name) {
    const file = join(this.dir, `${name}.log`);
    return existsSync(file) ? readFileSync(file, "utf8") : "";
  }

  /** `clusterctl wait`: exactly `runners` healthy runners, every shard owned, each proxy answering. */
  async ready(runners, timeoutS = 40) {
    const conditions = ["runners", String(runners), "--exactly", "shards"];
    try {
      await run(
        join(binDir, "clusterctl"),
        ["--manager", this.managerAddress, "--proxy", this.proxies[0] ?? "127.0.0.1:1", "wait", "--interval-ms", "50",
          "--timeout-s", String(timeoutS), ...conditions],
        { env: { ...process.env, CLUSTER_SECURITY_CREDENTIALS_DIR: this.credentials } },
      );
    } catch (error) {
      throw new Error(`the cluster did not become ready: ${error.stdout ?? ""}${error.stderr ?? ""}`);
    }
  }

  /** Sends `signal` to child `name` (by its PID) and waits for it to exit. */
  async kill(name, signal = "SIGKILL") {
    const child = this.children.get(name);
    if (!child) return;
    this.children.delete(name);
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, signal);
    await child.exited;
  }

  async stop() {
    const names = [...this.children.keys()];
    await Promise.all(
      names.map(async (name) => {
        const child = this.children.get(name);
        if (child.exitCode !== null || child.signalCode !== null) return;
        process.kill(child.pid, "SIGTERM");
        const timer = setTimeout(() => {
          if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, "SIGKILL");
        }, 5000);
        await child.exited;
        clearTimeout(timer);
      }),
    );
    this.children.clear();
    if (!process.env.CLUSTER_TS_KEEP_LOGS) rmSync(this.dir, { recursive: true, force: true });
  }
}
