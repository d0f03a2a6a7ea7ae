// The Effect-side declarations of the C++ test entities (plugins/greeter, tests/plugins/probe),
// written the way an Effect Cluster program declares its own entities. The field names and
// shapes follow the C++ request/reply structs, so the same declarations type both the calls
// to the proxy and the reference Effect Cluster in reference/.
import { ClusterSchema, Entity } from "@effect/cluster";
import { Rpc } from "@effect/rpc";
import { Schema } from "effect";

export class Rejected extends Schema.TaggedError()("Rejected", { message: Schema.String }) {}

const Greeting = Schema.Struct({ message: Schema.String });

export const Greeter = Entity.make("Greeter", [
  Rpc.make("Greet", { payload: { name: Schema.String }, success: Greeting }).annotate(ClusterSchema.Persisted, true),
  Rpc.make("GreetVolatile", { payload: { name: Schema.String }, success: Greeting }),
  Rpc.make("GreetMany", {
    payload: { name: Schema.String, count: Schema.Number, delay_ms: Schema.Number },
    success: Schema.Struct({ message: Schema.String, index: Schema.Number }),
    stream: true,
  }),
]);

const Empty = Schema.Struct({});

export const Probe = Entity.make("Probe", [
  Rpc.make("Append", {
    payload: { sender: Schema.String, value: Schema.Number },
    success: Schema.Struct({ log: Schema.Array(Schema.String) }),
  }).annotate(ClusterSchema.Persisted, true),
  Rpc.make("Echo", {
    payload: { text: Schema.String },
    success: Schema.Struct({
      text: Schema.String,
      entity_id: Schema.String,
      shard: Schema.Number,
      activation: Schema.Number,
    }),
  }),
  Rpc.make("Sleep", { payload: { ms: Schema.Number }, success: Schema.Struct({ slept_ms: Schema.Number }) }),
  Rpc.make("Fail", { payload: Empty, success: Empty }),
  Rpc.make("Reject", { payload: Empty, success: Empty, error: Rejected }),
  Rpc.make("Stamp", { payload: Empty, success: Schema.Struct({ at_ms: Schema.Number }) }).annotate(
    ClusterSchema.Persisted,
    true,
  ),
]);

/**
 * A Greeter as a client with the wrong idea of the payload (`name` a number): what an
 * out-of-date client sends. The server has to refuse the payload, not crash on it.
 */
export const GreeterNumericName = Entity.make("Greeter", [
  Rpc.make("GreetVolatile", { payload: { name: Schema.Number }, success: Greeting }),
]);

/** An RPC the Greeter does not have, called as the Greeter's (tagged `Greeter.Vanish`). */
export const GreeterUnknownRpc = Entity.make("Greeter", [Rpc.make("Vanish", { payload: Empty, success: Empty })]);

/** An RPC no entity type declares. */
export const Phantom = Entity.make("Phantom", [Rpc.make("Vanish", { payload: Empty, success: Empty })]);
