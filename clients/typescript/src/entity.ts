// Typed declarations of entity types, so calls read `client.entity(Greeter, "Test").Greet(...)`.
import type { CallOptions, StreamOptions } from "./client.js";
import type { CallStream } from "./stream.js";

export interface RpcDecl<Req, Rep> {
  readonly kind: "rpc";
  readonly persisted: boolean;
  /** Type carriers only; never set. */
  readonly __types?: (request: Req) => Rep;
}

export interface StreamDecl<Req, Item, Final> {
  readonly kind: "stream";
  readonly persisted: false;
  readonly __types?: (request: Req) => [Item, Final];
}

export type AnyDecl = RpcDecl<any, any> | StreamDecl<any, any, any>;

export interface EntityDef<N extends string, R extends Record<string, AnyDecl>> {
  readonly name: N;
  readonly rpcs: R;
}

/** An RPC answering one reply. `persisted` is informational: the runner decides. */
export function rpc<Req, Rep>(options: { persisted?: boolean } = {}): RpcDecl<Req, Rep> {
  return { kind: "rpc", persisted: options.persisted ?? false };
}

/** A streaming RPC: items of type `Item`, then a final reply of type `Final`. */
export function stream<Req, Item, Final = unknown>(): StreamDecl<Req, Item, Final> {
  return { kind: "stream", persisted: false };
}

export function defineEntity<N extends string, R extends Record<string, AnyDecl>>(name: N, rpcs: R): EntityDef<N, R> {
  return { name, rpcs };
}

/** What `client.entity(def, id)` returns: one method per declared RPC. */
export type EntityClient<R extends Record<string, AnyDecl>> = {
  [K in keyof R]: R[K] extends StreamDecl<infer Req, infer Item, infer Final>
    ? (request: Req, options?: StreamOptions) => CallStream<Item, Final>
    : R[K] extends RpcDecl<infer Req, infer Rep>
      ? (request: Req, options?: CallOptions) => Promise<Rep>
      : never;
};
