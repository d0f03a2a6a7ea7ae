// The seed's client call, unchanged: EntityProxy.toRpcGroup(Greeter) over Effect RPC's socket
// protocol with NDJSON. Only the address and the bearer token are this cluster's:
// EFFECT_HOST/EFFECT_PORT (default 127.0.0.1:3334, where `scripts/dev up` listens) and
// EFFECT_TOKEN (default: the token `scripts/dev up` wrote to .local/credentials/effect.token).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { EntityProxy } from "@effect/cluster";
import { NodeRuntime, NodeSocket } from "@effect/platform-node";
import { RpcClient, RpcSerialization } from "@effect/rpc";
import { Effect, Layer } from "effect";
import { Greeter } from "./greeter.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const token =
  process.env.EFFECT_TOKEN ?? readFileSync(join(here, "../../.local/credentials/effect.token"), "utf8").trim();

const program = Effect.gen(function* () {
  const client = yield* RpcClient.make(EntityProxy.toRpcGroup(Greeter));
  const reply = yield* client.Greet({ entityId: "Test", payload: { name: "John" } });
  console.log(reply.message);
}).pipe(RpcClient.withHeaders({ authorization: `Bearer ${token}` }));

const ProtocolLive = RpcClient.layerProtocolSocket().pipe(
  Layer.provide(
    NodeSocket.layerNet({
      host: process.env.EFFECT_HOST ?? "127.0.0.1",
      port: Number(process.env.EFFECT_PORT ?? 3334),
    }),
  ),
  Layer.provide(RpcSerialization.layerNdjson),
);

program.pipe(Effect.scoped, Effect.provide(ProtocolLive), NodeRuntime.runMain);
