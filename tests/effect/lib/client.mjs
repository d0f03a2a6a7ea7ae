// How an unmodified Effect program reaches an Effect RPC server over TCP: RpcClient over a
// NodeSocket, NDJSON or MessagePack framing, and the token as an `authorization` header on
// every request (RpcClient.withHeaders, which every request made inside it picks up).
import { NodeSocket } from "@effect/platform-node";
import { RpcClient, RpcSerialization } from "@effect/rpc";
import { Cause, Effect, Exit, Layer, Option } from "effect";

export const serializationLayer = (serialization) => {
  if (serialization === "msgpack") return RpcSerialization.layerMsgPack;
  if (serialization === "ndjson") return RpcSerialization.layerNdjson;
  throw new Error(`unknown serialization ${serialization} (ndjson or msgpack)`);
};

/** The client protocol for one TCP connection: every client built on it shares the socket. */
export const protocolLayer = ({ host = "127.0.0.1", port, serialization = "ndjson" }) =>
  RpcClient.layerProtocolSocket().pipe(
    Layer.provide(NodeSocket.layerNet({ host, port })),
    Layer.provide(serializationLayer(serialization)),
  );

export const withToken = (token) =>
  token === undefined ? (effect) => effect : RpcClient.withHeaders({ authorization: `Bearer ${token}` });

/**
 * The client's RPC functions by their entity RPC name (`Greet`), however the release lays them
 * out: @effect/cluster 0.39 names them by tag (`Greet`, or `Greeter.Greet` with a prefix),
 * later releases always prefix the tags with the entity type and nest the client by prefix
 * (`client.Greeter.Greet`). Types of one group must not share RPC names.
 */
export function byRpcName(client) {
  const rpcs = {};
  for (const [key, value] of Object.entries(client)) {
    if (typeof value === "function") rpcs[key.slice(key.indexOf(".") + 1)] = value;
    else if (value !== null && typeof value === "object") {
      for (const [name, fn] of Object.entries(value)) if (typeof fn === "function") rpcs[name] = fn;
    }
  }
  return rpcs;
}

/**
 * Runs `body(rpcs)` with an RPC client of `group` on a fresh connection (`rpcs` is
 * `byRpcName(client)`) and resolves with its Exit. One connection serves one RpcClient: the socket protocol hands the server's
 * messages to the first client that runs on it only, so several entities over one connection
 * take one merged group (`toRpcGroup(A).merge(toRpcGroup(B))`).
 */
export function withClient(target, group, body, { token = target.token, timeoutMs = 30000 } = {}) {
  const program = Effect.gen(function* () {
    const client = yield* RpcClient.make(group);
    return yield* body(byRpcName(client));
  }).pipe(
    Effect.scoped,
    withToken(token),
    Effect.provide(protocolLayer(target)),
    Effect.timeoutFail({ duration: timeoutMs, onTimeout: () => new Error(`no answer in ${timeoutMs} ms`) }),
  );
  return Effect.runPromiseExit(program);
}

/** Unwraps a successful Exit, or throws with the pretty-printed Cause. */
export function valueOf(exit) {
  if (Exit.isSuccess(exit)) return exit.value;
  throw new Error(`expected success, got:\n${Cause.pretty(exit.cause)}`);
}

/** The defect of a Die cause, or throws. */
export function defectOf(exit) {
  if (Exit.isSuccess(exit)) throw new Error(`expected a defect, got success ${JSON.stringify(exit.value)}`);
  const defects = [...Cause.defects(exit.cause)];
  if (defects.length === 0) throw new Error(`expected a Die cause, got:\n${Cause.pretty(exit.cause)}`);
  return defects[0];
}

/** The typed error of a Fail cause, or throws. */
export function failureOf(exit) {
  if (Exit.isSuccess(exit)) throw new Error(`expected a failure, got success ${JSON.stringify(exit.value)}`);
  const failure = Cause.failureOption(exit.cause);
  if (Option.isNone(failure)) throw new Error(`expected a Fail cause, got:\n${Cause.pretty(exit.cause)}`);
  return failure.value;
}

/**
 * Whether this @effect/rpc's MessagePack parser keeps a frame that arrives in two reads.
 * Before 0.70 it does not (it decodes each read on its own), so a burst of replies large
 * enough to be split by TCP fails the connection — on the client's side, whatever the server.
 */
export function msgpackSurvivesSplitFrames() {
  const parser = RpcSerialization.msgPack.unsafeMake();
  const frame = parser.encode({ _tag: "Exit", requestId: "1", exit: { _tag: "Success", value: { message: "hello" } } });
  try {
    const decoded = [...parser.decode(frame.subarray(0, 10)), ...parser.decode(frame.subarray(10))];
    return decoded.length === 1 && decoded[0].requestId === "1";
  } catch {
    return false;
  }
}
