// An unmodified Effect RPC client (the group derived with EntityProxy.toRpcGroup) against the
// proxy's Effect listener — or, with EFFECT_TARGET=reference, against a real Effect Cluster,
// which is where the expectations below come from. Where the two are meant to differ (the
// proxy answers an unknown tag per request, Effect's RpcServer with a connection-wide
// Defect), the assertion says which side it describes.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { EntityProxy } from "@effect/cluster";
import { Chunk, Effect, Exit, Fiber, Stream } from "effect";
import { waitFor } from "../../../clients/typescript/test/harness.mjs";
import { defectOf, failureOf, msgpackSurvivesSplitFrames, valueOf, withClient } from "../lib/client.mjs";
import { Greeter, GreeterNumericName, GreeterUnknownRpc, Phantom, Probe, Rejected } from "../lib/entities.mjs";
import { skipReason, startTarget, target } from "../lib/targets.mjs";

const skip = skipReason();
const Both = EntityProxy.toRpcGroup(Greeter).merge(EntityProxy.toRpcGroup(Probe));

describe(`Effect RPC calls (${target})`, { skip, timeout: 180000 }, () => {
  let server;
  before(async () => {
    server = await startTarget();
  });
  after(async () => {
    await server?.stop();
  });

  for (const serialization of ["ndjson", "msgpack"]) {
    test(`Greeter.Greet answers over ${serialization}`, { timeout: 20000 }, async () => {
      const exit = await withClient(server.endpoint(serialization), Both, (client) =>
        client.Greet({ entityId: "Test", payload: { name: "John" } }),
      );
      assert.deepEqual(valueOf(exit), { message: "Hello, John! from Test Greeter 216" });
    });
  }

  test("the prefix form (toRpcGroup(Greeter, {prefix: \"Greeter.\"})) reaches the same entity", { timeout: 20000 }, async () => {
    const Prefixed = EntityProxy.toRpcGroup(Greeter, { prefix: "Greeter." });
    for (const serialization of ["ndjson", "msgpack"]) {
      const exit = await withClient(server.endpoint(serialization), Prefixed, (client) =>
        Effect.all([
          client.Greet({ entityId: "Test", payload: { name: "John" } }),
          client.GreetVolatile({ entityId: "Prefixed", payload: { name: "Ann" } }),
        ]),
      );
      const [greet, volatile] = valueOf(exit);
      assert.deepEqual(greet, { message: "Hello, John! from Test Greeter 216" });
      assert.match(volatile.message, /^Hello, Ann! from Prefixed Greeter \d+$/);
    }
  });

  for (const serialization of ["ndjson", "msgpack"]) {
    const splitFrames = serialization === "msgpack" && !msgpackSurvivesSplitFrames()
      ? "this @effect/rpc decodes MessagePack per read: a burst of replies split by TCP breaks its client"
      : false;
    test(`1,000 concurrent calls over one connection all get their own reply (${serialization})`, { skip: splitFrames, timeout: 60000 }, async () => {
      const n = 1000;
      const exit = await withClient(
        server.endpoint(serialization),
        Both,
        (client) =>
          Effect.all(
            Array.from({ length: n }, (_, i) =>
              client.GreetVolatile({ entityId: `many-${i % 50}`, payload: { name: `n${i}` } }),
            ),
            { concurrency: "unbounded" },
          ),
        { timeoutMs: 50000 },
      );
      const replies = valueOf(exit);
      assert.equal(replies.length, n);
      replies.forEach((reply, i) => assert.match(reply.message, new RegExp(`^Hello, n${i}! from many-${i % 50} Greeter \\d+$`)));
    });
  }

  test("a stream (Greeter.GreetMany count 5) yields its 5 items in order, then ends", { timeout: 20000 }, async () => {
    for (const serialization of ["ndjson", "msgpack"]) {
      const exit = await withClient(server.endpoint(serialization), Both, (client) =>
        Stream.runCollect(client.GreetMany({ entityId: "Test", payload: { name: "S", count: 5, delay_ms: 20 } })).pipe(
          Effect.map(Chunk.toReadonlyArray),
        ),
      );
      assert.deepEqual(
        valueOf(exit),
        [0, 1, 2, 3, 4].map((index) => ({ message: "Hello, S! from Test Greeter 216", index })),
      );
    }
  });

  test("a typed application error arrives as Fail with its tag (Probe.Reject)", { timeout: 20000 }, async () => {
    for (const serialization of ["ndjson", "msgpack"]) {
      const exit = await withClient(server.endpoint(serialization), Both, (client) =>
        client.Reject({ entityId: "rejecting", payload: {} }),
      );
      const error = failureOf(exit);
      assert.ok(error instanceof Rejected, `decoded as the schema's class, got ${error?.constructor?.name}`);
      assert.equal(error._tag, "Rejected");
      assert.equal(error.message, "probe rejected the request");
    }
  });

  test("an unknown RPC is a Die for that request", { timeout: 20000 }, async () => {
    const Mixed = EntityProxy.toRpcGroup(Phantom).merge(EntityProxy.toRpcGroup(Greeter));
    for (const serialization of ["ndjson", "msgpack"]) {
      const exit = await withClient(server.endpoint(serialization), Mixed, (client) =>
        Effect.gen(function* () {
          const unknown = yield* Effect.exit(client.Vanish({ entityId: "x", payload: {} }));
          // The proxy answers per request, so the connection still serves the next call.
          const next = target === "cluster"
            ? yield* client.GreetVolatile({ entityId: "Test", payload: { name: "After" } })
            : undefined;
          return { unknown, next };
        }),
      );
      const { unknown, next } = valueOf(exit);
      const defect = defectOf(unknown);
      if (target === "cluster") {
        assert.equal(defect.name, "UnknownRpc");
        assert.match(defect.message, /Unknown request tag: (Phantom\.)?Vanish\b/);
        assert.deepEqual(next, { message: "Hello, After! from Test Greeter 216" });
      } else {
        // Effect's RpcServer: a connection-wide Defect carrying a bare string.
        assert.match(defect, /^Unknown request tag: (Phantom\.)?Vanish$/);
      }
    }
  });

  test("an RPC the entity type does not have (Greeter.Vanish) is a Die for that request", { timeout: 20000 }, async () => {
    const Prefixed = EntityProxy.toRpcGroup(GreeterUnknownRpc, { prefix: "Greeter." });
    const exit = await withClient(server.endpoint("ndjson"), Prefixed, (client) =>
      Effect.exit(client.Vanish({ entityId: "Test", payload: {} })),
    );
    const defect = defectOf(valueOf(exit));
    if (target === "cluster") {
      assert.equal(defect.name, "UnknownRpc");
      assert.match(defect.message, /Vanish/);
    } else {
      assert.match(defect, /^Unknown request tag: Greeter\.Vanish$/);
    }
  });

  test("a payload the entity cannot read (name a number) is a Die for that request", { timeout: 20000 }, async () => {
    const Wrong = EntityProxy.toRpcGroup(GreeterNumericName);
    for (const serialization of ["ndjson", "msgpack"]) {
      const exit = await withClient(server.endpoint(serialization), Wrong, (client) =>
        Effect.gen(function* () {
          const bad = yield* Effect.exit(client.GreetVolatile({ entityId: "Test", payload: { name: 42 } }));
          // The connection (and the entity) are fine afterwards.
          const good = yield* Effect.exit(client.GreetVolatile({ entityId: "Test", payload: { name: 7 } }));
          return { bad, good };
        }),
      );
      const { bad, good } = valueOf(exit);
      const defect = defectOf(bad);
      if (target === "cluster") {
        assert.equal(defect.name, "BadPayload", `defect ${defect}`);
      } else {
        assert.match(String(defect), /Expected string, actual 42/);
      }
      assert.ok(Exit.isFailure(good), "a numeric name is refused every time");
    }
  });

  test("interrupting a call (Probe.Sleep 20 s, after 300 ms) interrupts the handler", { timeout: 30000 }, async () => {
    for (const serialization of ["ndjson", "msgpack"]) {
      const entityId = `interrupted-${serialization}`;
      const exit = await withClient(server.endpoint(serialization), Both, (client) =>
        Effect.gen(function* () {
          const started = Date.now();
          const fiber = yield* Effect.fork(client.Sleep({ entityId, payload: { ms: 20000 } }));
          yield* Effect.sleep("300 millis");
          const sleeping = yield* Fiber.interrupt(fiber);
          const interruptedAfter = Date.now() - started;
          // The entity is free again: its next call does not wait for the 20 s sleep.
          const echoStarted = Date.now();
          const echo = yield* client.Echo({ entityId, payload: { text: "after" } });
          return { sleeping, interruptedAfter, echo, echoMs: Date.now() - echoStarted };
        }),
      );
      const { sleeping, interruptedAfter, echo, echoMs } = valueOf(exit);
      assert.ok(Exit.isInterrupted(sleeping), "the call's fiber ended interrupted");
      assert.ok(interruptedAfter < 5000, `interrupt took ${interruptedAfter} ms`);
      assert.equal(echo.text, "after");
      assert.ok(echoMs < 5000, `the entity stayed busy ${echoMs} ms`);
      if (target === "cluster") {
        const logs = () => server.cluster.log("runner-1") + server.cluster.log("runner-2");
        const cancelled = new RegExp(`Probe/${entityId} Sleep: cancelled`);
        assert.ok(await waitFor(() => cancelled.test(logs()), 5000), "no runner logged the cancellation");
      } else {
        const cancelled = new RegExp(`Probe.Sleep ${entityId} cancelled`);
        assert.ok(await waitFor(() => cancelled.test(server.reference.log()), 5000), "the handler was not interrupted");
      }
    }
  });

  test("Effect.timeout on a call interrupts it and the client gets its own timeout", { timeout: 20000 }, async () => {
    const exit = await withClient(server.endpoint("ndjson"), Both, (client) =>
      client.Sleep({ entityId: "timed-out", payload: { ms: 20000 } }).pipe(Effect.timeout("300 millis"), Effect.either),
    );
    const result = valueOf(exit);
    assert.equal(result._tag, "Left");
    assert.equal(result.left._tag, "TimeoutException");
  });

  test("x-cluster-timeout-ms bounds a call: Die DeadlineExceeded", { skip: target === "reference" && "a header of the proxy's", timeout: 20000 }, async () => {
    const started = Date.now();
    const exit = await withClient(server.endpoint("msgpack"), Both, (client) =>
      Effect.exit(
        client.Sleep({ entityId: "deadline", payload: { ms: 5000 } }, { headers: { "x-cluster-timeout-ms": "300" } }),
      ),
    );
    const elapsed = Date.now() - started;
    assert.equal(defectOf(valueOf(exit)).name, "DeadlineExceeded");
    assert.ok(elapsed < 4000, `the deadline took ${elapsed} ms`);
  });
});
