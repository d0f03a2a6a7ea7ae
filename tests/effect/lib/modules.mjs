// The Effect modules of this package, for scripts outside it (bench/effect-rpc) that must use
// the very same copies as lib/ (one `effect` in the process, the pinned release).
export * as Cluster from "@effect/cluster";
export * as Rpc from "@effect/rpc";
export { Cause, Chunk, Effect, Exit, Fiber, Layer, Stream } from "effect";
