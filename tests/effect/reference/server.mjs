// A reference Effect Cluster: one in-process node of @effect/cluster (Sharding with in-memory
// message and shard storage, a local shard manager, no remote runners) hosting Greeter and
// Probe implemented in Effect, served to Effect RPC clients exactly the way an Effect Cluster
// application exposes its entities: EntityProxyServer.layerRpcHandlers behind RpcServer over
// a TCP socket. The compatibility tests run against it (EFFECT_TARGET=reference) to show that
// their expectations are what real Effect Cluster does, and the wire capture records it.
//
//   node reference/server.mjs [--ndjson-port N] [--msgpack-port N] [--host 127.0.0.1]
//
// Prints one line `ready ndjson=<port> msgpack=<port>` when both listeners accept.
import * as Cluster from "@effect/cluster";
import { NodeRuntime, NodeSocketServer } from "@effect/platform-node";
import { RpcSerialization, RpcServer } from "@effect/rpc";
import { Effect, Layer, Stream } from "effect";
import { parseArgs } from "node:util";
import { Greeter, Probe, Rejected } from "../lib/entities.mjs";

const { Entity, EntityProxy, EntityProxyServer, MessageStorage, Runners, ShardingConfig, Sharding } = Cluster;

// One node that owns every shard. 0.39 builds it from a local shard manager client and
// in-memory shard storage; later releases (no shard manager) ship it as TestRunner.layer.
export const ShardingLive = Cluster.ShardManager
  ? Sharding.layer.pipe(
      Layer.provide(Runners.layerNoop),
      Layer.provide(Cluster.ShardManager.layerClientLocal),
      Layer.provide(MessageStorage.layerMemory),
      Layer.provide(Cluster.ShardStorage.layerMemory),
      Layer.provide(ShardingConfig.layer({ entityMessagePollInterval: "500 millis" })),
    )
  : Cluster.TestRunner.layer;

const GreeterLive = Greeter.toLayer(
  Effect.gen(function* () {
    const address = yield* Entity.CurrentAddress;
    // The C++ Greeter's format, so one expectation fits both servers.
    const greeting = (name) => `Hello, ${name}! from ${address.entityId} Greeter ${address.shardId.id}`;
    return {
      Greet: ({ payload }) => Effect.succeed({ message: greeting(payload.name) }),
      GreetVolatile: ({ payload }) => Effect.succeed({ message: greeting(payload.name) }),
      GreetMany: ({ payload }) =>
        Stream.range(0, Math.max(0, payload.count) - 1).pipe(
          Stream.take(Math.max(0, payload.count)),
          Stream.mapEffect((index) =>
            Effect.as(
              index > 0 && payload.delay_ms > 0 ? Effect.sleep(payload.delay_ms) : Effect.void,
              { message: greeting(payload.name), index },
            ),
          ),
        ),
    };
  }),
  { concurrency: "unbounded" },
);

let activations = 0;
const ProbeLive = Probe.toLayer(
  Effect.gen(function* () {
    const address = yield* Entity.CurrentAddress;
    const activation = ++activations;
    const log = [];
    return {
      Append: ({ payload }) =>
        Effect.sync(() => {
          log.push(`${payload.sender}:${payload.value}`);
          return { log: [...log] };
        }),
      Echo: ({ payload }) =>
        Effect.succeed({ text: payload.text, entity_id: address.entityId, shard: address.shardId.id, activation }),
      Sleep: ({ payload }) =>
        Effect.gen(function* () {
          const start = Date.now();
          yield* Effect.sleep(payload.ms);
          return { slept_ms: Date.now() - start };
        }).pipe(Effect.onInterrupt(() => Effect.logInfo(`Probe.Sleep ${address.entityId} cancelled`))),
      Fail: () => Effect.die(new Error("probe failed on purpose")),
      Reject: () => Effect.fail(new Rejected({ message: "probe rejected the request" })),
      Stamp: () => Effect.sync(() => ({ at_ms: Date.now() })),
    };
  }),
  // Sleep must not hold up the entity's other calls (the C++ handlers are coroutines).
  { concurrency: "unbounded" },
);

export const EntitiesLive = Layer.mergeAll(GreeterLive, ProbeLive);

// 0.39 tags the RPCs `Greet` (or `Greeter.Greet` with a prefix): serve both names. Later
// releases always tag them `Greeter.Greet` (plus `Greeter.GreetDiscard`) and take no prefix.
const prefixOption = !EntityProxy.toRpcGroup(Greeter).requests.has("Greeter.Greet");
const entities = [Greeter, Probe];

export const ProxyGroup = entities
  .flatMap((entity) =>
    prefixOption
      ? [EntityProxy.toRpcGroup(entity), EntityProxy.toRpcGroup(entity, { prefix: `${entity.type}.` })]
      : [EntityProxy.toRpcGroup(entity)],
  )
  .reduce((all, group) => all.merge(group));

export const HandlersLive = Layer.mergeAll(
  ...entities.flatMap((entity) =>
    prefixOption
      ? [
          EntityProxyServer.layerRpcHandlers(entity),
          EntityProxyServer.layerRpcHandlers(entity, { prefix: `${entity.type}.` }),
        ]
      : [EntityProxyServer.layerRpcHandlers(entity)],
  ),
);

// Layers are shared by reference within one build: without Layer.fresh both listeners would
// get the one protocol built first, and the second port would accept but never answer.
const listener = (host, port, serialization) =>
  RpcServer.layer(ProxyGroup).pipe(
    Layer.provide(Layer.fresh(RpcServer.layerProtocolSocketServer)),
    Layer.provide(NodeSocketServer.layer({ host, port })),
    Layer.provide(serialization),
  );

/** The whole reference node; ports 0 pick free ones (see the `ready` line). */
export const referenceLayer = ({ host = "127.0.0.1", ndjsonPort = 0, msgpackPort = 0 } = {}) =>
  Layer.mergeAll(
    listener(host, ndjsonPort, RpcSerialization.layerNdjson),
    listener(host, msgpackPort, RpcSerialization.layerMsgPack),
  ).pipe(Layer.provide(HandlersLive), Layer.provide(EntitiesLive), Layer.provideMerge(ShardingLive));

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      "ndjson-port": { type: "string", default: "0" },
      "msgpack-port": { type: "string", default: "0" },
    },
  });
  const host = values.host;
  const ndjsonPort = Number(values["ndjson-port"]);
  const msgpackPort = Number(values["msgpack-port"]);
  // NodeSocketServer.layer does not hand back the bound port, so ports 0 are resolved here
  // first (a free port is taken and released just before listening on it).
  const { createServer } = await import("node:net");
  const pick = (port) =>
    port !== 0
      ? Promise.resolve(port)
      : new Promise((resolve, reject) => {
          const server = createServer();
          server.once("error", reject);
          server.listen(0, host, () => {
            const picked = server.address().port;
            server.close(() => resolve(picked));
          });
        });
  const ports = { ndjson: await pick(ndjsonPort), msgpack: await pick(msgpackPort) };
  const ready = Layer.effectDiscard(
    Effect.sync(() => console.log(`ready ndjson=${ports.ndjson} msgpack=${ports.msgpack}`)),
  );
  // Layer.provide builds the listeners first, so `ready` means both accept connections.
  NodeRuntime.runMain(
    Layer.launch(
      Layer.provide(ready, referenceLayer({ host, ndjsonPort: ports.ndjson, msgpackPort: ports.msgpack })),
    ),
  );
}
