// The resource graph of sst.config.ts, in `sst dev` and deployed, without AWS or the SST
// CLI: deploy/sst-stubs.mjs evaluates the config with recording stubs of SST's globals.
// Run: deploy/node-test.sh deploy/sst-config.test.mjs (ctest: sst_config_graph).

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { evaluateConfig, resolve, ROOT } from "./sst-stubs.mjs";

const BINARIES = ["cluster-manager", "cluster-runner", "cluster-proxy", "cluster-gateway"];
const RUNNER_PORTS = [34431, 34432, 34433, 34434];
const SERVICE_BINARY = { Manager: "cluster-manager", Proxy: "cluster-proxy", Runner: "cluster-runner" };
// The admin HTTP endpoints: one port per process of a task (the runners share theirs).
const ADMIN_PORT = { Manager: 9090, Proxy: 9091, Gateway: 9092 };
const RUNNER_ADMIN_PORTS = [9093, 9094, 9095, 9096];
const ALL_ADMIN_PORTS = [9090, 9091, 9092, ...RUNNER_ADMIN_PORTS];
const SECTION = { Manager: "manager", Proxy: "proxy", Runner: "runner", Gateway: "gateway" };
// [service, container, admin port] of every ECS container.
const adminPortOf = (serviceName, containerIndex) =>
  serviceName === "Runner" ? RUNNER_ADMIN_PORTS[containerIndex] : ADMIN_PORT[serviceName];
const healthCommand = (port) => ["CMD-SHELL", `curl -fsS --max-time 2 http://127.0.0.1:${port}/healthz || exit 1`];
const TRACE_VARIABLES = ["CLUSTER_TRACE_OTLP_ENDPOINT", "CLUSTER_TRACE_SAMPLE_RATIO"];

// Runs `fn` with the deploy's environment holding `variables` (and none of the trace
// variables the caller's shell may have), restoring it afterwards.
async function withEnvironment(variables, fn) {
  const saved = Object.fromEntries(TRACE_VARIABLES.map((name) => [name, process.env[name]]));
  for (const name of TRACE_VARIABLES) delete process.env[name];
  Object.assign(process.env, variables);
  try {
    return await fn();
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
}

const byType = (resources, type) => resources.filter((r) => r.type === type);
const one = (resources, type, name) => {
  const found = resources.filter((r) => r.type === type && r.name === name);
  assert.equal(found.length, 1, `expected one ${type} named ${name}`);
  return found[0];
};
const linkNames = (args) => (args.link ?? []).map((component) => component.__name).sort();

// The containers of a Service as SST normalizes them: `containers`, or the top level.
const containersOf = (service) =>
  service.args.containers ??
  [{ name: service.name, image: service.args.image, environment: service.args.environment,
     command: service.args.command, health: service.args.health, dev: service.args.dev }];

// Executable targets declared anywhere in the CMake tree.
function cmakeExecutables() {
  const names = new Set();
  const skip = new Set(["build", "node_modules", ".sst", ".git", "dist", ".local"]);
  (function walk(dir) {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) {
        if (!skip.has(entry.name)) walk(path.join(dir, entry.name));
      } else if (entry.name === "CMakeLists.txt") {
        const text = fs.readFileSync(path.join(dir, entry.name), "utf8");
        for (const m of text.matchAll(/add_executable\(\s*([A-Za-z0-9_.-]+)/g)) names.add(m[1]);
      }
    }
  })(ROOT);
  return names;
}

// A fake project root holding a built Lambda bundle, as after `scripts/dev build`.
function fakeRootWithBundle() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "sst-root-"));
  fs.mkdirSync(path.join(root, "dist", "lambda"), { recursive: true });
  fs.writeFileSync(path.join(root, "dist", "lambda", "bootstrap"), "#!/bin/sh\n", { mode: 0o755 });
  return root;
}

test("app(): name, home, pinned SST version and removal policy", async () => {
  const { app } = await evaluateConfig({ dev: false, root: fakeRootWithBundle() });
  assert.equal(app.name, "cluster-sst");
  assert.equal(app.home, "aws");
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));
  assert.equal(pkg.devDependencies.sst, "4.17.1", "package.json pins sst exactly");
  assert.equal(app.version, pkg.devDependencies.sst, "app().version matches the pinned CLI");

  const production = await evaluateConfig({ dev: false, stage: "production", root: fakeRootWithBundle() });
  assert.equal(production.app.removal, "retain");
  const dev = await evaluateConfig({ dev: false, stage: "dev", root: fakeRootWithBundle() });
  assert.equal(dev.app.removal, "remove");
});

test("deploy/secret-commands.sh sets every secret of the config from clusterctl keys init's files, values on stdin", async () => {
  const { resources } = await evaluateConfig({ dev: false, root: fakeRootWithBundle() });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cluster-keys-"));
  try {
    for (const role of ["manager", "runner", "proxy", "client", "admin"]) {
      fs.writeFileSync(path.join(dir, `${role}.key`), `${role}-private\n`, { mode: 0o600 });
    }
    fs.writeFileSync(path.join(dir, "trust"), "manager=AAAA\n");
    const script = path.join(ROOT, "deploy", "secret-commands.sh");
    const out = execFileSync(script, [dir, "--stage", "ci"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    const lines = out.trim().split("\n");
    const set = lines.map((line) => {
      const m = /^npx sst secret set ([A-Za-z0-9]+) --stage ci < (\S+)$/.exec(line);
      assert.ok(m, `a command with the value on stdin: ${line}`);
      assert.ok(fs.existsSync(m[2]), `${m[2]} exists`);
      return m[1];
    });
    assert.deepEqual(set.sort(), byType(resources, "sst:sst:Secret").map((s) => s.name).sort());
    assert.ok(!out.includes("private"), "no key in the output");
    for (const file of ["gateway.token", "effect.token"]) {
      const token = path.join(dir, file);
      assert.equal(fs.statSync(token).mode & 0o777, 0o600, `the generated ${file} is 0600`);
      assert.match(fs.readFileSync(token, "utf8"), /^[0-9a-f]{64}$/);
    }
    assert.notEqual(
      fs.readFileSync(path.join(dir, "gateway.token"), "utf8"),
      fs.readFileSync(path.join(dir, "effect.token"), "utf8"),
      "each token is its own",
    );
    // A missing key is a clear error, not a half-printed list.
    fs.rmSync(path.join(dir, "runner.key"));
    assert.throws(
      () => execFileSync(script, [dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }),
      (e) => /runner\.key is missing/.test(String(e.stderr)) && String(e.stdout) === "",
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

for (const mode of ["dev", "deployed"]) {
  describe(`${mode} mode`, () => {
    const isDev = mode === "dev";
    let result;
    let root;
    before(async () => {
      root = fakeRootWithBundle();
      result = await withEnvironment({}, () => evaluateConfig({ dev: isDev, root }));
    });
    after(() => fs.rmSync(root, { recursive: true, force: true }));

    test("a VPC with an EC2 NAT, PostgreSQL in it with a local dev server, an ECS cluster", () => {
      const { resources } = result;
      const vpc = one(resources, "sst:aws:Vpc", "Vpc");
      assert.equal(vpc.args.nat, "ec2");
      const db = one(resources, "sst:aws:Postgres", "Database");
      assert.equal(db.args.vpc, vpc.component);
      assert.deepEqual(
        { host: db.args.dev.host, port: db.args.dev.port },
        { host: "127.0.0.1", port: 5435 },
      );
      for (const key of ["username", "password", "database"]) {
        assert.equal(typeof db.args.dev[key], "string", `dev.${key}`);
        assert.ok(db.args.dev[key].length > 0, `dev.${key}`);
      }
      const cluster = one(resources, "sst:aws:Cluster", "Cluster");
      assert.equal(cluster.args.vpc, vpc.component);
    });

    test("three services: Manager, Proxy, Runner, all in the cluster", () => {
      const services = byType(result.resources, "sst:aws:Service");
      assert.deepEqual(services.map((s) => s.name).sort(), ["Manager", "Proxy", "Runner"]);
      const cluster = one(result.resources, "sst:aws:Cluster", "Cluster").component;
      for (const s of services) assert.equal(s.args.cluster, cluster, `${s.name}.cluster`);
    });

    test("the runner task runs four runners on ports 34431..34434 with distinct names", () => {
      const runner = one(result.resources, "sst:aws:Service", "Runner");
      const containers = runner.args.containers;
      assert.equal(containers.length, 4);
      assert.deepEqual(containers.map((c) => Number(c.environment.CLUSTER_RUNNER_PORT)), RUNNER_PORTS);
      const names = containers.map((c) => c.environment.CLUSTER_RUNNER_NAME);
      assert.equal(new Set(names).size, 4, "runner names are distinct");
      assert.deepEqual(containers.map((c) => c.name), names, "container name = runner name");
      for (const c of containers) assert.equal(c.environment.CLUSTER_CLUSTER_STORAGE, "postgres");
    });

    test("linkables ShardManager, ProxyServer and EffectRpc carry the manager's and proxy's host and port", () => {
      const manager = one(result.resources, "sst:aws:Service", "Manager").component;
      const proxy = one(result.resources, "sst:aws:Service", "Proxy").component;
      const shardManager = one(result.resources, "sst:sst:Linkable", "ShardManager").component.properties;
      const proxyServer = one(result.resources, "sst:sst:Linkable", "ProxyServer").component.properties;
      const effectRpc = one(result.resources, "sst:sst:Linkable", "EffectRpc").component.properties;
      assert.equal(shardManager.port, 8080);
      assert.equal(proxyServer.port, 3333);
      assert.equal(effectRpc.port, 3334);
      if (isDev) {
        assert.equal(shardManager.host, "127.0.0.1");
        assert.equal(proxyServer.host, "127.0.0.1");
        assert.equal(effectRpc.host, "127.0.0.1");
      } else {
        assert.equal(shardManager.host, resolve(manager.service), "manager's Cloud Map name");
        assert.equal(proxyServer.host, resolve(proxy.service), "proxy's Cloud Map name");
        assert.equal(effectRpc.host, resolve(proxy.service), "proxy's Cloud Map name");
      }
    });

    test("the proxy listens for Effect RPC on 3334 with the EffectRpcToken secret", () => {
      const proxy = one(result.resources, "sst:aws:Service", "Proxy").args;
      assert.equal(proxy.environment.CLUSTER_PROXY_EFFECT_PORT, "3334");
      assert.ok(linkNames(proxy).includes("EffectRpcToken"));
      // Only clients read the EffectRpc link: no process is linked to it.
      const linkers = result.resources.filter((r) => Array.isArray(r.args?.link));
      assert.deepEqual(linkers.filter((r) => linkNames(r.args).includes("EffectRpc")).map((r) => r.name), []);
    });

    test("links: database to manager and runners, manager to runners and proxies, proxy to the gateway", () => {
      const { resources } = result;
      // Each links its own key and the trust list, and no other key.
      assert.deepEqual(linkNames(one(resources, "sst:aws:Service", "Manager").args), ["ClusterManagerKey", "ClusterTrust", "Database"]);
      assert.deepEqual(linkNames(one(resources, "sst:aws:Service", "Runner").args), ["ClusterRunnerKey", "ClusterTrust", "Database", "ShardManager"]);
      assert.deepEqual(linkNames(one(resources, "sst:aws:Service", "Proxy").args), ["ClusterProxyKey", "ClusterTrust", "EffectRpcToken", "ShardManager"]);
      assert.deepEqual(linkNames(one(resources, "sst:sst:DevCommand", "Gateway").args), ["ClusterClientKey", "ClusterTrust", "GatewayToken", "ProxyServer"]);
      const manager = one(resources, "sst:aws:Service", "Manager").args;
      assert.equal(manager.environment.CLUSTER_CLUSTER_STORAGE, "postgres");
      assert.equal(manager.environment.CLUSTER_MANAGER_PORT, "8080");
    });

    test("credentials: a secret per role key, the trust list and the gateway token; the admin key is linked to nothing", () => {
      const { resources } = result;
      const secrets = byType(resources, "sst:sst:Secret");
      assert.deepEqual(
        secrets.map((s) => s.name).sort(),
        ["ClusterAdminKey", "ClusterClientKey", "ClusterManagerKey", "ClusterProxyKey", "ClusterRunnerKey", "ClusterTrust", "EffectRpcToken", "GatewayToken"],
      );
      for (const s of secrets) assert.equal(s.args.placeholder, undefined, `${s.name} has no value in the code`);
      const linkers = resources.filter((r) => Array.isArray(r.args?.link));
      const linkedBy = (name) => linkers.filter((r) => linkNames(r.args).includes(name)).map((r) => r.name).sort();
      assert.deepEqual(linkedBy("ClusterAdminKey"), []);
      assert.ok(linkedBy("ClusterTrust").length >= 4, "the trust list reaches every process");
      // In `sst dev` SST also makes a DevCommand per container, with the service's links.
      for (const [key, owners] of [
        ["ClusterManagerKey", /^Manager/],
        ["ClusterRunnerKey", /^Runner/],
        ["ClusterProxyKey", /^Proxy/],
        ["ClusterClientKey", /^(Api|Gateway)$/],
        ["EffectRpcToken", /^Proxy/],
      ]) {
        const holders = linkedBy(key);
        assert.ok(holders.length > 0, `${key} is linked`);
        for (const holder of holders) assert.match(holder, owners, `${key} is linked only to its role's processes`);
      }
    });

    test("every dev command runs a binary of the local release build", () => {
      const executables = cmakeExecutables();
      const commands = [];
      for (const service of byType(result.resources, "sst:aws:Service")) {
        for (const c of containersOf(service)) commands.push([service.name, c.dev?.command]);
      }
      commands.push(["Gateway", one(result.resources, "sst:sst:DevCommand", "Gateway").args.dev.command]);
      assert.equal(commands.length, 7, "manager, proxy, four runners and the gateway");
      for (const [owner, command] of commands) {
        assert.equal(typeof command, "string", `${owner} has a dev.command`);
        const argv = command.trim().split(/\s+/);
        const m = /^build\/release\/bin\/([a-z-]+)$/.exec(argv[0]);
        assert.ok(m, `${owner}: '${argv[0]}' is a binary in build/release/bin/`);
        assert.ok(BINARIES.includes(m[1]), `${owner}: ${m[1]} is one of ${BINARIES.join(", ")}`);
        assert.ok(executables.has(m[1]), `${owner}: ${m[1]} is an add_executable() target of the build`);
        const expected = SERVICE_BINARY[owner] ?? "cluster-gateway";
        assert.equal(m[1], expected, `${owner} runs ${expected}`);
        const config = argv[argv.indexOf("--config") + 1];
        assert.equal(config, "config/local.toml", `${owner}: --config config/local.toml`);
        assert.ok(fs.existsSync(path.join(ROOT, config)), `${config} exists`);
      }
      const runnerCommands = containersOf(one(result.resources, "sst:aws:Service", "Runner")).map((c) => c.dev.command);
      for (const command of runnerCommands) assert.match(command, /--set runner\.plugins=build\/release\/plugins(\s|$)/);
    });

    test("the gateway dev command serves HTTP on 8787", () => {
      const gateway = one(result.resources, "sst:sst:DevCommand", "Gateway").args;
      assert.equal(gateway.environment.CLUSTER_GATEWAY_PORT, "8787");
      assert.notEqual(gateway.dev.autostart, false);
    });

    test("admin endpoints: manager 9090, proxy 9091, gateway 9092, runner-N 9092+N; all interfaces deployed, loopback in sst dev", () => {
      const owners = [];
      for (const service of byType(result.resources, "sst:aws:Service")) {
        containersOf(service).forEach((c, i) => owners.push([`${service.name}/${c.name}`, SECTION[service.name], adminPortOf(service.name, i), c.environment]));
      }
      owners.push(["Gateway", "gateway", ADMIN_PORT.Gateway, one(result.resources, "sst:sst:DevCommand", "Gateway").args.environment]);
      assert.equal(owners.length, 7);
      for (const [owner, section, port, env] of owners) {
        const prefix = `CLUSTER_${section.toUpperCase()}_ADMIN_`;
        assert.equal(env[`${prefix}PORT`], String(port), `${owner}: ${prefix}PORT`);
        // Deployed the Monitoring group reaches it through the task's address; in `sst dev`
        // the processes keep their default host, 127.0.0.1.
        assert.equal(env[`${prefix}HOST`], isDev ? undefined : "0.0.0.0", `${owner}: ${prefix}HOST`);
        // No token in the task definition (none is configured yet).
        assert.equal(env[`${prefix}TOKEN`], undefined, `${owner}: ${prefix}TOKEN`);
        for (const key of Object.keys(env)) {
          if (/^CLUSTER_[A-Z]+_ADMIN_/.test(key)) assert.ok(key.startsWith(prefix), `${owner}: ${key} is its own section's`);
        }
      }
      // Distinct, and none is a cluster port (the runners share their task's network).
      const ports = owners.map(([, , port]) => port);
      assert.deepEqual([...ports].sort(), [...ALL_ADMIN_PORTS].sort());
      for (const port of ports) assert.ok(![8080, 3333, 3334, 8787, 5432, ...RUNNER_PORTS].includes(port));
    });

    test("logs: JSON lines deployed, text in sst dev; no trace settings unless configured", () => {
      const envs = byType(result.resources, "sst:aws:Service").flatMap((s) => containersOf(s).map((c) => [`${s.name}/${c.name}`, c.environment]));
      // The Gateway dev command runs only in `sst dev`.
      if (isDev) envs.push(["Gateway", one(result.resources, "sst:sst:DevCommand", "Gateway").args.environment]);
      for (const [owner, env] of envs) {
        if (isDev) assert.equal(env.CLUSTER_LOG_FORMAT, undefined, `${owner}: text logs`);
        else assert.equal(env.CLUSTER_LOG_FORMAT, "json", `${owner}: CLUSTER_LOG_FORMAT=json`);
        for (const name of TRACE_VARIABLES) assert.equal(env[name], undefined, `${owner}: ${name} is not set`);
      }
    });
  });
}

describe("sst dev", () => {
  let result;
  before(async () => {
    result = await evaluateConfig({ dev: true });
  });

  test("creates no Lambda (sst dev cannot run provided.al2023); the local gateway stands in", () => {
    assert.equal(byType(result.resources, "sst:aws:Function").length, 0);
    assert.equal(result.outputs.api, "http://127.0.0.1:8787");
    assert.equal(result.outputs.manager, "127.0.0.1:8080");
    assert.equal(result.outputs.proxy, "127.0.0.1:3333");
    assert.equal(result.outputs.effectRpc, "127.0.0.1:3334");
  });

  test("each container becomes a dev process with its own environment and links", () => {
    const devCommands = byType(result.resources, "sst:sst:DevCommand");
    assert.deepEqual(
      devCommands.map((d) => d.name).sort(),
      ["Gateway", "ManagerDev", "ProxyDev", "Runnerrunner-1Dev", "Runnerrunner-2Dev", "Runnerrunner-3Dev", "Runnerrunner-4Dev"],
    );
    const ports = devCommands
      .filter((d) => d.name.startsWith("Runner"))
      .map((d) => Number(d.args.environment.CLUSTER_RUNNER_PORT))
      .sort();
    assert.deepEqual(ports, RUNNER_PORTS);
  });
});

describe("deployed", () => {
  let result;
  let root;
  before(async () => {
    root = fakeRootWithBundle();
    result = await withEnvironment({}, () => evaluateConfig({ dev: false, root }));
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  test("every service runs the repository's image with its binary listening on all interfaces", () => {
    for (const service of byType(result.resources, "sst:aws:Service")) {
      const binary = SERVICE_BINARY[service.name];
      for (const c of containersOf(service)) {
        assert.deepEqual(resolve(c.image), { context: ".", dockerfile: "Dockerfile" }, `${service.name}/${c.name} image`);
        assert.equal(c.command[0], `/app/bin/${binary}`);
        assert.deepEqual(c.command.slice(1, 3), ["--config", "/app/config/local.toml"]);
        const sets = c.command.filter((_, i) => c.command[i - 1] === "--set");
        const section = { "cluster-manager": "manager", "cluster-proxy": "proxy", "cluster-runner": "runner" }[binary];
        assert.ok(sets.includes(`${section}.host=0.0.0.0`), `${service.name}/${c.name} listens on 0.0.0.0`);
        if (binary === "cluster-proxy") assert.ok(sets.includes("proxy.effect_host=0.0.0.0"), "Effect RPC on 0.0.0.0");
        if (binary === "cluster-runner") assert.ok(sets.includes("runner.plugins=/app/plugins"));
      }
    }
  });

  test("container health checks: curl /healthz on each process's own admin port", () => {
    const checks = [];
    for (const service of byType(result.resources, "sst:aws:Service")) {
      const section = SECTION[service.name];
      const defs = JSON.parse(service.component.taskDefinition.containerDefinitions);
      containersOf(service).forEach((c, i) => {
        const port = adminPortOf(service.name, i);
        const owner = `${service.name}/${c.name}`;
        assert.equal(c.environment[`CLUSTER_${section.toUpperCase()}_ADMIN_PORT`], String(port), `${owner}: admin port`);
        assert.deepEqual(c.health.command, healthCommand(port), `${owner}: curl http://127.0.0.1:${port}/healthz`);
        // What ECS gets, after transform.taskDefinition.
        assert.deepEqual(defs[i].healthCheck.command, healthCommand(port), `${owner}: task definition healthCheck`);
        checks.push(c.health);
      });
    }
    assert.equal(checks.length, 6, "the manager, the proxy and four runners");
    const seconds = (text) => Number(/^(\d+) seconds$/.exec(text)?.[1]);
    for (const h of checks) {
      for (const key of ["startPeriod", "interval", "timeout"]) assert.match(h[key], /^\d+ seconds$/);
      // ECS's limits: interval 5..300 s, timeout 2..60 s, startPeriod 0..300 s, retries 1..10.
      assert.ok(seconds(h.interval) >= 5 && seconds(h.interval) <= 300);
      assert.ok(seconds(h.timeout) >= 2 && seconds(h.timeout) <= 60 && seconds(h.timeout) < seconds(h.interval));
      assert.ok(seconds(h.timeout) > 2, "longer than curl's --max-time 2");
      assert.ok(seconds(h.startPeriod) <= 300);
      assert.ok(h.retries >= 1 && h.retries <= 10);
    }
  });

  test("trace settings from the deploy's environment reach every process; bad values stop the deploy", async () => {
    const endpoint = "http://collector.internal:4318/v1/traces";
    const traced = await withEnvironment(
      { CLUSTER_TRACE_OTLP_ENDPOINT: endpoint, CLUSTER_TRACE_SAMPLE_RATIO: "0.25" },
      () => evaluateConfig({ dev: false, root }),
    );
    const envs = byType(traced.resources, "sst:aws:Service").flatMap((s) => containersOf(s).map((c) => [`${s.name}/${c.name}`, c.environment]));
    assert.equal(envs.length, 6);
    for (const [owner, env] of envs) {
      assert.equal(env.CLUSTER_TRACE_OTLP_ENDPOINT, endpoint, owner);
      assert.equal(env.CLUSTER_TRACE_SAMPLE_RATIO, "0.25", owner);
      assert.equal(env.CLUSTER_LOG_FORMAT, "json", owner);
    }
    // An endpoint alone keeps the processes' default ratio.
    const endpointOnly = await withEnvironment({ CLUSTER_TRACE_OTLP_ENDPOINT: endpoint }, () => evaluateConfig({ dev: false, root }));
    const manager = one(endpointOnly.resources, "sst:aws:Service", "Manager").args.environment;
    assert.equal(manager.CLUSTER_TRACE_OTLP_ENDPOINT, endpoint);
    assert.equal(manager.CLUSTER_TRACE_SAMPLE_RATIO, undefined);
    await withEnvironment({ CLUSTER_TRACE_SAMPLE_RATIO: "2" }, () =>
      assert.rejects(evaluateConfig({ dev: false, root }), /trace\.sample_ratio '2' is not a number between 0 and 1/),
    );
    for (const bad of ["collector:4318", "https://collector:4318/v1/traces"]) {
      await withEnvironment({ CLUSTER_TRACE_OTLP_ENDPOINT: bad }, () =>
        assert.rejects(evaluateConfig({ dev: false, root }), new RegExp(`trace\\.otlp_endpoint '${bad}' is not an http:// URL`)),
      );
    }
  });

  test("the Lambda serves no admin endpoint (it answers only the runtime API)", () => {
    const env = resolve(one(result.resources, "sst:aws:Function", "Api").args.environment);
    for (const key of Object.keys(env)) assert.doesNotMatch(key, /_ADMIN_/, key);
  });

  test("every task definition gives each container 120 s to stop gracefully", () => {
    for (const service of byType(result.resources, "sst:aws:Service")) {
      assert.equal(typeof service.args.transform?.taskDefinition, "function", `${service.name}: transform.taskDefinition`);
      const names = containersOf(service).map((c) => c.name);
      const defs = JSON.parse(service.component.taskDefinition.containerDefinitions);
      assert.deepEqual(defs.map((d) => d.stopTimeout), names.map(() => 120), `${service.name}: stopTimeout`);
      assert.deepEqual(defs.map((d) => d.name), names, "the containers are kept");
      assert.ok(defs.every((d) => d.linuxParameters?.initProcessEnabled === true), "SST's other settings are kept");
    }
  });

  test("the proxy scales from 1 to 5 tasks on 70% CPU and 70% memory", () => {
    const proxy = one(result.resources, "sst:aws:Service", "Proxy");
    assert.deepEqual(proxy.args.scaling, { min: 1, max: 5, cpuUtilization: 70, memoryUtilization: 70 });
    for (const name of ["Manager", "Runner"]) {
      assert.equal(one(result.resources, "sst:aws:Service", name).args.scaling, undefined, `${name} is not autoscaled`);
    }
  });

  test("the Lambda: custom runtime from dist/lambda, function URL, in the VPC, proxy address in its environment", () => {
    const fn = one(result.resources, "sst:aws:Function", "Api");
    const vpc = one(result.resources, "sst:aws:Vpc", "Vpc").component;
    const proxy = one(result.resources, "sst:aws:Service", "Proxy").component;
    assert.equal(fn.args.runtime, "provided.al2023");
    assert.equal(fn.args.bundle, "dist/lambda");
    assert.equal(fn.args.handler, "bootstrap");
    assert.deepEqual(resolve(fn.args.vpc.privateSubnets), resolve(vpc.privateSubnets), "in the private subnets");
    assert.deepEqual(resolve(fn.args.vpc.securityGroups), [resolve(one(result.resources, "aws:ec2:SecurityGroup", "ApiSecurityGroup").component.id)]);
    // The address it calls, under the gateway's name: CLUSTER_PROXY_* is where a proxy listens.
    assert.equal(resolve(fn.args.environment.CLUSTER_GATEWAY_PROXY), `${resolve(proxy.service)}:3333`);
    assert.equal(fn.args.environment.CLUSTER_PROXY_HOST, undefined);
    assert.equal(fn.args.environment.CLUSTER_PROXY_PORT, undefined);
  });

  test("the Lambda gets the client key, the trust list and the bearer token as config keys (a custom runtime reads no resource.enc)", () => {
    const fn = one(result.resources, "sst:aws:Function", "Api");
    assert.deepEqual(linkNames(fn.args), ["ClusterClientKey", "ClusterTrust", "GatewayToken"]);
    const env = resolve(fn.args.environment);
    assert.equal(env.CLUSTER_SECURITY_KEY, "secret:ClusterClientKey");
    assert.equal(env.CLUSTER_SECURITY_TRUST, "secret:ClusterTrust");
    assert.equal(env.CLUSTER_GATEWAY_BEARER_TOKEN, "secret:GatewayToken");
    assert.equal(env.CLUSTER_GATEWAY_EXPOSE, undefined, "the gateway's default allowlist unless the stage sets one");
    for (const value of Object.values(env)) assert.doesNotMatch(String(value), /secret:Cluster(Admin|Manager|Runner|Proxy)Key/);
  });

  test("the function URL: a bearer token by default, AWS_IAM in production", async () => {
    const fn = one(result.resources, "sst:aws:Function", "Api");
    assert.deepEqual(resolve(fn.args.url), { authorization: "none" });
    assert.equal(result.outputs.apiAuth, "token");

    const production = await evaluateConfig({ dev: false, stage: "production", root });
    const prodFn = one(production.resources, "sst:aws:Function", "Api");
    assert.deepEqual(resolve(prodFn.args.url), { authorization: "iam" });
    assert.equal(production.outputs.apiAuth, "iam");
    // No token to set or check where IAM alone guards the URL.
    assert.equal(production.resources.filter((r) => r.name === "GatewayToken").length, 0);
    assert.equal(resolve(prodFn.args.environment).CLUSTER_GATEWAY_BEARER_TOKEN, undefined);
    assert.deepEqual(linkNames(prodFn.args), ["ClusterClientKey", "ClusterTrust"]);
  });

  test("every service runs on Fargate Spot (a per-stage choice)", () => {
    for (const service of byType(result.resources, "sst:aws:Service")) {
      assert.equal(service.args.capacity, "spot", `${service.name}.capacity`);
    }
  });

  test("PostgreSQL 16 pinned, TLS required by the server and verified by the clients", () => {
    const db = one(result.resources, "sst:aws:Postgres", "Database");
    assert.match(db.args.version, /^16\.\d+$/, "engine version pinned to a 16.x release");
    assert.equal(db.component.instance.engineVersion, db.args.version);
    assert.equal(db.component.parameterGroup.family, "postgres16");
    const parameters = db.component.parameterGroup.parameters;
    assert.deepEqual(parameters.filter((p) => p.name === "rds.force_ssl"), [{ name: "rds.force_ssl", value: "1" }]);
    assert.ok(parameters.some((p) => p.name === "rds.logical_replication"), "SST's other parameters are kept");
    const dockerfile = fs.readFileSync(path.join(ROOT, "Dockerfile"), "utf8");
    const manager = one(result.resources, "sst:aws:Service", "Manager");
    const runner = one(result.resources, "sst:aws:Service", "Runner");
    for (const env of [manager.args.environment, ...runner.args.containers.map((c) => c.environment)]) {
      assert.equal(env.CLUSTER_STORAGE_SSLMODE, "verify-full");
      assert.equal(env.CLUSTER_STORAGE_SSLROOTCERT, "/app/certs/rds-global-bundle.pem");
    }
    assert.ok(dockerfile.includes("/app/certs/rds-global-bundle.pem"), "the image ships the CA bundle");
    const proxy = one(result.resources, "sst:aws:Service", "Proxy");
    assert.equal(proxy.args.environment.CLUSTER_STORAGE_SSLMODE, undefined, "the proxy has no [storage]");
  });

  test("security groups: each service admits only its port, only from the services that call it", () => {
    const { resources } = result;
    const groups = Object.fromEntries(
      byType(resources, "aws:ec2:SecurityGroup").map((g) => [resolve(g.component.id), g.name.replace(/SecurityGroup$/, "")]),
    );
    assert.deepEqual(Object.values(groups).sort(), ["Api", "Database", "Manager", "Monitoring", "Proxy", "Runner"]);
    const rules = byType(resources, "aws:vpc:SecurityGroupIngressRule").map((r) => [r.name, resolve(r.args)]);
    const ingress = rules.map(([name, a]) => {
      assert.equal(a.ipProtocol, "tcp", `${name}: tcp only`);
      assert.equal(a.cidrIpv4, undefined, `${name}: from a security group, not a CIDR`);
      assert.equal(a.cidrIpv6, undefined, `${name}: from a security group, not a CIDR`);
      return `${groups[a.securityGroupId]}:${a.fromPort}-${a.toPort}<-${groups[a.referencedSecurityGroupId]}`;
    });
    assert.deepEqual(ingress.sort(), [
      "Database:5432-5432<-Manager",
      "Database:5432-5432<-Runner",
      "Manager:8080-8080<-Proxy",
      "Manager:8080-8080<-Runner",
      "Manager:9090-9090<-Monitoring",
      "Monitoring:4318-4318<-Manager",
      "Monitoring:4318-4318<-Proxy",
      "Monitoring:4318-4318<-Runner",
      "Proxy:3333-3333<-Api",
      "Proxy:3334-3334<-Api",
      "Proxy:9091-9091<-Monitoring",
      "Runner:34431-34434<-Manager",
      "Runner:34431-34434<-Proxy",
      "Runner:34431-34434<-Runner",
      "Runner:9093-9096<-Monitoring",
    ]);
    // The admin ports: never from a CIDR (0.0.0.0/0 least of all), only from Monitoring.
    for (const [name, a] of rules) {
      if (ALL_ADMIN_PORTS.some((port) => a.fromPort <= port && port <= a.toPort)) {
        assert.equal(groups[a.referencedSecurityGroupId], "Monitoring", `${name}: an admin port only from the Monitoring group`);
        assert.ok(a.cidrIpv4 !== "0.0.0.0/0" && a.cidrIpv6 !== "::/0", `${name}: not open to the internet`);
      }
    }
    // The admin port of each process is admitted by its own service's group.
    for (const [name, ports] of [["Manager", [9090]], ["Proxy", [9091]], ["Runner", RUNNER_ADMIN_PORTS]]) {
      for (const port of ports) {
        assert.ok(
          rules.some(([, a]) => groups[a.securityGroupId] === name && a.fromPort <= port && port <= a.toPort),
          `${name} admits ${port} from Monitoring`,
        );
      }
    }
    const egress = byType(resources, "aws:vpc:SecurityGroupEgressRule").map((r) => resolve(r.args));
    assert.deepEqual(
      egress.filter((a) => groups[a.securityGroupId] === "Monitoring").map((a) => [a.cidrIpv4, a.ipProtocol]),
      [["0.0.0.0/0", "-1"]],
      "a collector forwards to AWS APIs",
    );
    const apiEgress = byType(resources, "aws:vpc:SecurityGroupEgressRule")
      .map((r) => resolve(r.args))
      .filter((a) => groups[a.securityGroupId] === "Api");
    assert.deepEqual(apiEgress.map((a) => [groups[a.referencedSecurityGroupId], a.fromPort, a.toPort, a.cidrIpv4]), [
      ["Proxy", 3333, 3333, undefined],
      ["Proxy", 3334, 3334, undefined],
    ]);

    // The tasks and the database use them instead of the VPC's default group.
    for (const name of ["Manager", "Proxy", "Runner"]) {
      const service = one(resources, "sst:aws:Service", name).component;
      assert.deepEqual(service.ecsService.networkConfiguration.securityGroups.map((id) => groups[id]), [name]);
      assert.equal(service.ecsService.networkConfiguration.assignPublicIp, true, "SST's other network settings are kept");
    }
    const db = one(resources, "sst:aws:Postgres", "Database").component;
    assert.deepEqual(db.instance.vpcSecurityGroupIds.map((id) => groups[id]), ["Database"]);
  });

  test("outputs: the function URL and the internal addresses", () => {
    const fn = one(result.resources, "sst:aws:Function", "Api").component;
    assert.equal(result.outputs.api, resolve(fn.url));
    assert.match(result.outputs.manager, /^Manager\..+:8080$/);
    assert.match(result.outputs.proxy, /^Proxy\..+:3333$/);
    assert.match(result.outputs.effectRpc, /^Proxy\..+:3334$/);
    const monitoring = one(result.resources, "aws:ec2:SecurityGroup", "MonitoringSecurityGroup").component;
    assert.equal(result.outputs.monitoringSecurityGroup, resolve(monitoring.id));
  });

  test("a deploy without a built dist/lambda/bootstrap stops with a clear message", async () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), "sst-root-"));
    try {
      await assert.rejects(evaluateConfig({ dev: false, root: empty }), /dist\/lambda\/bootstrap is missing.*scripts\/dev build/);
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });
});
