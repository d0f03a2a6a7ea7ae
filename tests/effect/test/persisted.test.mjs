// Persisted calls made by an Effect client: they survive a runner killed with SIGKILL while
// they are in flight, and the x-cluster-primary-key header makes a repeated call the same
// message (the cluster answers it with the first call's reply).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { EntityProxy } from "@effect/cluster";
import { Effect } from "effect";
import { waitFor } from "../../../clients/typescript/test/harness.mjs";
import { defectOf, valueOf, withClient } from "../lib/client.mjs";
import { Probe } from "../lib/entities.mjs";
import { skipReason, startCluster, target } from "../lib/targets.mjs";

const skip = target === "reference" ? "runner crashes and primary-key headers are the C++ cluster's" : skipReason();
const Probes = EntityProxy.toRpcGroup(Probe);

describe("persisted calls from an Effect client", { skip, timeout: 180000 }, () => {
  let server;
  before(async () => {
    server = await startCluster({ runners: 2 });
  });
  after(async () => {
    await server?.stop();
  });

  test("a repeated primary key is the same message: answered with the first call's reply", { timeout: 20000 }, async () => {
    const append = (client, value, key) =>
      client.Append(
        { entityId: "keyed", payload: { sender: "k", value } },
        { headers: { "x-cluster-primary-key": key } },
      );
    const exit = await withClient(server.endpoint("ndjson"), Probes, (client) =>
      Effect.gen(function* () {
        const first = yield* append(client, 1, "order-1");
        const again = yield* append(client, 1, "order-1");
        const other = yield* append(client, 3, "order-2");
        // The same key for a different request is a caller's mistake, not a new message.
        const reused = yield* Effect.exit(append(client, 4, "order-1"));
        return { first, again, other, reused };
      }),
    );
    const { first, again, other, reused } = valueOf(exit);
    assert.deepEqual(first.log, ["k:1"]);
    assert.deepEqual(again, first, "the second call with the same key did not run again");
    assert.deepEqual(other.log, ["k:1", "k:3"]);
    assert.equal(defectOf(reused).name, "InvalidRequest");
  });

  test("kill -9 of a runner during 200 concurrent persisted Probe.Append calls fails none", { timeout: 120000 }, async () => {
    const n = 200;
    let replied = 0;
    // Spread the calls over ~400 ms so that some are sent before, some while and some after
    // the runner dies.
    const calls = (client) =>
      Effect.all(
        Array.from({ length: n }, (_, i) =>
          Effect.sleep(i * 2).pipe(
            Effect.zipRight(client.Append({ entityId: `crash-${i % 20}`, payload: { sender: `c${i}`, value: i } })),
            Effect.tap(() => Effect.sync(() => ++replied)),
            Effect.either,
          ),
        ),
        { concurrency: "unbounded" },
      );
    const running = withClient(server.endpoint("ndjson"), Probes, calls, { timeoutMs: 100000 });
    assert.ok(await waitFor(() => replied >= 10, 20000, 5), "no calls answered before the kill");
    const killedAt = replied;
    await server.cluster.kill("runner-1", "SIGKILL");
    const results = valueOf(await running);
    const failures = results.filter((r) => r._tag === "Left").map((r) => String(r.left?._tag ?? r.left));
    assert.deepEqual(failures, [], `${failures.length} of ${n} calls failed`);
    assert.ok(killedAt < n, "the runner was killed while calls were in flight");
    results.forEach((r, i) => assert.ok(r.right.log.includes(`c${i}:${i}`), `reply ${i} lacks its own entry`));
  });
});
