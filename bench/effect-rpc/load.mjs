#!/usr/bin/env node
// The Effect client's own load loop: N fibers calling one Greeter RPC over one Effect RPC
// connection, as fast as the replies come back. Prints calls/s, latency percentiles and the
// CPU time of this Node process (and of the server processes when it started them), so one
// can tell whether the client, the proxy or the runners are the limit.
//
//   node bench/effect-rpc/load.mjs --port 4100 --token T [--serialization ndjson|msgpack]
//        [--in-flight 64] [--duration-s 10] [--warmup-s 2] [--rpc GreetVolatile|Greet]
//   node bench/effect-rpc/load.mjs --start reference   # the reference Effect Cluster
//   node bench/effect-rpc/load.mjs --start cluster     # C++ binaries from CLUSTER_BUILD_DIR
//
// It uses tests/effect's packages (cd tests/effect && npm ci).
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { byRpcName, protocolLayer, withToken } from "../../tests/effect/lib/client.mjs";
import { Greeter } from "../../tests/effect/lib/entities.mjs";
import { Cluster, Effect, Exit, Fiber, Rpc } from "../../tests/effect/lib/modules.mjs";

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    token: { type: "string", default: process.env.EFFECT_TOKEN },
    serialization: { type: "string", default: "ndjson" },
    "in-flight": { type: "string", default: "64" },
    "duration-s": { type: "string", default: "10" },
    "warmup-s": { type: "string", default: "2" },
    rpc: { type: "string", default: "GreetVolatile" },
    entities: { type: "string" },
    start: { type: "string" },
    runners: { type: "string", default: "2" },
    json: { type: "boolean", default: false },
  },
});

const inFlight = Number(args["in-flight"]);
const durationS = Number(args["duration-s"]);
const warmupS = Number(args["warmup-s"]);
const entities = Number(args.entities ?? inFlight);
const serialization = args.serialization;
if (!["ndjson", "msgpack"].includes(serialization)) throw new Error("--serialization is ndjson or msgpack");
if (!["GreetVolatile", "Greet"].includes(args.rpc)) throw new Error("--rpc is GreetVolatile or Greet");

// --- the target ---
let endpoint;
let serverPids = {};
let stopServer = async () => {};
if (args.start === "reference") {
  const { startReference } = await import("../../tests/effect/reference/process.mjs");
  const reference = await startReference();
  endpoint = { host: "127.0.0.1", port: reference.ports[serialization], serialization };
  serverPids = { reference: reference.pid };
  stopServer = () => reference.stop();
} else if (args.start === "cluster") {
  const { startCluster } = await import("../../tests/effect/lib/targets.mjs");
  const started = await startCluster({ runners: Number(args.runners) });
  endpoint = { ...started.endpoint(serialization), host: "127.0.0.1" };
  for (const [name, child] of started.cluster.children) serverPids[name] = child.pid;
  stopServer = () => started.stop();
} else if (args.start !== undefined) {
  throw new Error("--start is reference or cluster");
} else {
  if (args.port === undefined) throw new Error("--port (or --start reference|cluster) is needed");
  endpoint = { host: args.host, port: Number(args.port), serialization, token: args.token };
}

// CPU seconds (user + system) of other processes, from /proc: where the server's time goes.
const ticksPerSecond = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();
function processCpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
  } catch {
    return NaN;
  }
}
const serverCpu = () => Object.fromEntries(Object.entries(serverPids).map(([name, pid]) => [name, processCpuSeconds(pid)]));

// --- the load ---
const group = Cluster.EntityProxy.toRpcGroup(Greeter);
const latencies = [];
let recording = false;
let stopping = false;
let calls = 0;
let errors = 0;
let firstError;

const worker = (call, i) =>
  Effect.gen(function* () {
    const request = { entityId: `load-${i % entities}`, payload: { name: "load" } };
    while (!stopping) {
      const started = performance.now();
      const exit = yield* Effect.exit(call(request));
      if (!recording) continue;
      if (Exit.isSuccess(exit)) {
        latencies.push(performance.now() - started);
        calls += 1;
      } else {
        errors += 1;
        firstError ??= exit.cause;
      }
    }
  });

const program = Effect.gen(function* () {
  const client = byRpcName(yield* Rpc.RpcClient.make(group));
  const call = client[args.rpc];
  const fibers = yield* Effect.fork(
    Effect.all(Array.from({ length: inFlight }, (_, i) => worker(call, i)), { concurrency: "unbounded", discard: true }),
  );
  yield* Effect.sleep(`${warmupS} seconds`);
  recording = true;
  const cpu0 = process.cpuUsage();
  const elu0 = performance.eventLoopUtilization();
  const server0 = serverCpu();
  const t0 = performance.now();
  yield* Effect.sleep(`${durationS} seconds`);
  recording = false;
  const wallS = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const elu = performance.eventLoopUtilization(elu0);
  const server1 = serverCpu();
  stopping = true;
  yield* Fiber.join(fibers);
  return { wallS, cpu, elu, server0, server1 };
}).pipe(Effect.scoped, withToken(endpoint.token), Effect.provide(protocolLayer(endpoint)));

let exit;
try {
  exit = await Effect.runPromiseExit(program);
} finally {
  await stopServer();
}
if (Exit.isFailure(exit)) {
  console.error("the load loop failed:", exit.cause);
  process.exit(1);
}
const { wallS, cpu, elu, server0, server1 } = exit.value;
latencies.sort((a, b) => a - b);
const pct = (p) => (latencies.length === 0 ? NaN : latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]);
const clientCpuS = (cpu.user + cpu.system) / 1e6;
const result = {
  target: args.start ?? `${endpoint.host}:${endpoint.port}`,
  serialization,
  rpc: args.rpc,
  inFlight,
  durationS: Number(wallS.toFixed(2)),
  calls,
  errors,
  callsPerS: Math.round(calls / wallS),
  p50Ms: Number(pct(50).toFixed(3)),
  p99Ms: Number(pct(99).toFixed(3)),
  clientCpu: Number((clientCpuS / wallS).toFixed(2)), // cores
  clientCpuUsPerCall: calls > 0 ? Math.round((clientCpuS * 1e6) / calls) : null,
  clientEventLoopUtilization: Number(elu.utilization.toFixed(2)),
  serverCpu: Object.fromEntries(
    Object.keys(server1).map((name) => [name, Number(((server1[name] - server0[name]) / wallS).toFixed(2))]),
  ),
};
if (args.json) {
  console.log(JSON.stringify(result));
} else {
  const servers = Object.entries(result.serverCpu).map(([n, c]) => `${n} ${c}`).join(", ");
  console.log(
    `${result.target} ${serialization} ${args.rpc} in-flight ${inFlight}: ${result.callsPerS} calls/s, ` +
      `p50 ${result.p50Ms} ms, p99 ${result.p99Ms} ms, ${errors} errors; client CPU ${result.clientCpu} cores ` +
      `(${result.clientCpuUsPerCall} µs/call, event loop ${Math.round(result.clientEventLoopUtilization * 100)}% busy)` +
      (servers ? `; server CPU (cores): ${servers}` : ""),
  );
}
if (errors > 0) {
  console.error("first error:", firstError);
  process.exitCode = 1;
}
