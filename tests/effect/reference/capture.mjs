// Records what an unmodified Effect RPC client and the reference Effect Cluster say to each
// other over TCP, both directions, byte for byte: a relay in front of the reference server
// logs every frame (NDJSON lines as text, MessagePack frames as hex plus their decoding).
// It is the ground truth a server implementation of the protocol is checked against.
//
//   node reference/capture.mjs [--out /tmp/effect-wire.txt] [--skip-ping]
import { EntityProxy } from "@effect/cluster";
import { Cause, Chunk, Effect, Stream } from "effect";
import { Unpackr } from "msgpackr";
import { createConnection, createServer } from "node:net";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { withClient } from "../lib/client.mjs";
import { Greeter, GreeterNumericName, Phantom, Probe } from "../lib/entities.mjs";
import { startReference } from "./process.mjs";

const { values: args } = parseArgs({
  options: { out: { type: "string", default: "/tmp/effect-wire.txt" }, "skip-ping": { type: "boolean" } },
});

// The versions this process really loaded (run-tests.sh may point the imports elsewhere).
const versions = ["effect", "@effect/rpc", "@effect/cluster", "@effect/platform", "msgpackr"]
  .map((name) => {
    const file = fileURLToPath(import.meta.resolve(name));
    const root = file.slice(0, file.lastIndexOf(`/node_modules/${name}/`) + `/node_modules/${name}`.length);
    return `${name} ${JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version}`;
  })
  .join(", ");

let scenario = "";
let scenarioStart = 0;
const records = [];

/** Splits a direction's byte stream into frames; keeps per-connection decoder state. */
function framer(serialization) {
  if (serialization === "ndjson") {
    let buffer = "";
    return (bytes) => {
      buffer += bytes.toString("utf8");
      const lines = buffer.split("\n");
      buffer = lines.pop();
      return lines.map((line) => ({ text: line }));
    };
  }
  // One Unpackr per direction and connection, like the peers: record definitions (the
  // msgpackr record extension) would carry over between frames if the encoder kept them.
  const unpackr = new Unpackr();
  let pending = Buffer.alloc(0);
  return (bytes) => {
    pending = Buffer.concat([pending, bytes]);
    const frames = [];
    let consumed = 0;
    try {
      unpackr.unpackMultiple(pending, (value, start, end) => {
        frames.push({ hex: pending.subarray(start, end).toString("hex"), value });
        consumed = end;
      });
    } catch (error) {
      if (error.incomplete !== true && !/Unexpected end/.test(String(error.message))) {
        frames.push({ hex: pending.subarray(consumed).toString("hex"), value: `undecodable: ${error.message}` });
        consumed = pending.length;
      }
    }
    pending = pending.subarray(consumed);
    return frames;
  };
}

async function relay(serialization, targetPort) {
  const server = createServer((client) => {
    const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
    const toServer = framer(serialization);
    const toClient = framer(serialization);
    const note = (direction, frames, chunkBytes) => {
      const at = Date.now() - scenarioStart;
      for (const frame of frames) records.push({ scenario, direction, at, ...frame, chunkBytes });
    };
    client.on("data", (bytes) => {
      note("C->S", toServer(bytes), bytes.length);
      upstream.write(bytes);
    });
    upstream.on("data", (bytes) => {
      note("S->C", toClient(bytes), bytes.length);
      client.write(bytes);
    });
    client.on("close", () => {
      records.push({ scenario, direction: "C->S", at: Date.now() - scenarioStart, event: "connection closed by client" });
      upstream.destroy();
    });
    upstream.on("close", () => client.destroy());
    client.on("error", () => {});
    upstream.on("error", () => {});
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { port: server.address().port, close: () => new Promise((r) => server.close(r)) };
}

const plain = EntityProxy.toRpcGroup(Greeter).merge(EntityProxy.toRpcGroup(Probe));
const scenarios = [
  ["greet (Greeter.Greet, persisted, entity Test)", plain, (greeter) =>
    greeter.Greet({ entityId: "Test", payload: { name: "John" } })],
  ["two calls on one connection (do msgpack record definitions repeat?)", plain, (greeter) =>
    Effect.zip(
      greeter.GreetVolatile({ entityId: "Test", payload: { name: "Ann" } }),
      greeter.GreetVolatile({ entityId: "Test", payload: { name: "Bob" } }),
    )],
  ["three calls in flight at once (Effect.all, concurrency unbounded)", plain, (greeter) =>
    Effect.all(["A", "B", "C"].map((name) => greeter.GreetVolatile({ entityId: `E${name}`, payload: { name } })),
      { concurrency: "unbounded" })],
  ["typed failure (Probe.Reject -> Rejected)", plain, (probe) =>
    probe.Reject({ entityId: "p1", payload: {} })],
  ["stream with 3 items (Greeter.GreetMany count 3, delay 30 ms)", plain, (greeter) =>
    Stream.runCollect(greeter.GreetMany({ entityId: "Test", payload: { name: "Ann", count: 3, delay_ms: 30 } })).pipe(
      Effect.map(Chunk.toReadonlyArray))],
  ["interrupt (Probe.Sleep 20 s, Effect.timeout 300 ms)", plain, (probe) =>
    probe.Sleep({ entityId: "p2", payload: { ms: 20000 } }).pipe(Effect.timeout("300 millis"), Effect.option,
      Effect.zipLeft(Effect.sleep("300 millis")))],
  ["stream interrupted after 2 items (GreetMany count 50, delay 100 ms, Stream.take 2)", plain, (greeter) =>
    Stream.runCollect(
      greeter.GreetMany({ entityId: "Test", payload: { name: "Cy", count: 50, delay_ms: 100 } }).pipe(Stream.take(2)),
    ).pipe(Effect.map(Chunk.toReadonlyArray), Effect.zipLeft(Effect.sleep("300 millis")))],
  ["unknown tag (an RPC the server's group does not have)", EntityProxy.toRpcGroup(Phantom),
    (phantom) => phantom.Vanish({ entityId: "x", payload: {} })],
  ["bad payload (name a number where the server's schema says string)",
    EntityProxy.toRpcGroup(GreeterNumericName),
    (greeter) => greeter.GreetVolatile({ entityId: "Test", payload: { name: 42 } })],
  ["defect in the entity handler (Probe.Fail dies; bounded to 3 s)", plain, (probe) =>
    probe.Fail({ entityId: "p3", payload: {} }).pipe(Effect.timeout("3 seconds"))],
  ["prefixed tags (toRpcGroup(Greeter, {prefix: \"Greeter.\"}))",
    EntityProxy.toRpcGroup(Greeter, { prefix: "Greeter." }), (greeter) =>
      greeter.GreetVolatile({ entityId: "Test", payload: { name: "John" } })],
  ["per-call headers (x-cluster-primary-key, x-cluster-timeout-ms) on top of withHeaders", plain, (greeter) =>
    greeter.Greet({ entityId: "Test", payload: { name: "Key" } },
      { headers: { "x-cluster-primary-key": "order-7", "x-cluster-timeout-ms": "5000" } })],
];
if (!args["skip-ping"]) {
  scenarios.push(["ping (an idle connection: the client pings every 10 s)", plain, () =>
    Effect.sleep("10500 millis")]);
}

const reference = await startReference();
const out = [];
const line = (text = "") => out.push(text);
try {
  for (const serialization of ["ndjson", "msgpack"]) {
    const hop = await relay(serialization, reference.ports[serialization]);
    for (const [name, groups, body] of scenarios) {
      scenario = `${serialization} / ${name}`;
      scenarioStart = Date.now();
      const exit = await withClient({ port: hop.port, serialization, token: "s3cret" }, groups, body,
        { timeoutMs: 20000 });
      records.push({
        scenario,
        outcome: exit._tag === "Success" ? inspect(exit.value) : `failure: ${Cause.pretty(exit.cause).split("\n").slice(0, 2).join(" | ")}`,
      });
      await new Promise((r) => setTimeout(r, 100));
    }
    await hop.close();
  }
} finally {
  await reference.stop();
}

line(`# Effect RPC over TCP, captured ${new Date().toISOString()}`);
line(`# ${versions}`);
line("# client: RpcClient.layerProtocolSocket + NodeSocket.layerNet, RpcClient.withHeaders({authorization})");
line("# server: reference/server.mjs (Sharding + EntityProxyServer.layerRpcHandlers + RpcServer.layerProtocolSocketServer)");
line("# Each scenario is a fresh TCP connection. +N ms is from the start of the scenario.");
line("# msgpack: Effect's msgPack serialization is msgpackr's `new Packr()` with its defaults, which");
line("# writes objects with the record extension (fixext1 type 0x72 'r' = define a record structure");
line("# in slot 0x40.., followed by the array of keys then the values); see the decoded form below.");
line("# A msgpackr Unpackr (defaults) decodes them. `undefined` packs as d4 00 00 (fixext1 type 0).");
let current = "";
for (const record of records) {
  if (record.scenario !== current) {
    current = record.scenario;
    line();
    line(`## ${current}`);
  }
  if (record.outcome !== undefined) {
    line(`   => the Effect client's result: ${record.outcome}`);
  } else if (record.event) {
    line(`${record.direction} +${record.at}ms (${record.event})`);
  } else if (record.text !== undefined) {
    line(`${record.direction} +${record.at}ms ${record.text}`);
  } else {
    line(`${record.direction} +${record.at}ms ${record.hex}`);
    line(`      decoded: ${JSON.stringify(record.value)}`);
  }
}
writeFileSync(args.out, out.join("\n") + "\n");
console.log(`wrote ${args.out} (${records.length} records)`);

function inspect(value) {
  const text = JSON.stringify(value, (_key, v) => (typeof v === "bigint" ? `${v}n` : v));
  return text === undefined ? String(value) : text;
}
