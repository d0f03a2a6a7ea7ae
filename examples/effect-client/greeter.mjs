// The seed's Greeter as an Effect Cluster program declares it. The C++ plugin
// (plugins/greeter) serves it: the same RPC names, payload and reply fields.
import { ClusterSchema, Entity } from "@effect/cluster";
import { Rpc } from "@effect/rpc";
import { Schema } from "effect";

export const Greeter = Entity.make("Greeter", [
  Rpc.make("Greet", {
    payload: { name: Schema.String },
    success: Schema.Struct({ message: Schema.String }),
  }).annotate(ClusterSchema.Persisted, true),
]);
