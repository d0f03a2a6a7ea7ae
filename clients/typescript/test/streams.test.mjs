// Streaming replies and cancellation against a real cluster: Greeter.GreetMany through the
// proxy, credit, aborts, and a runner killed mid-stream.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, ClusterError, defineEntity, ErrorCode, loadCredentials, rpc, stream } from "../dist/index.js";
import { TestCluster, waitFor } from "./harness.mjs";

const Greeter = defineEntity("Greeter", {
  GreetVolatile: rpc(),
  GreetMany: stream(),
});

let cluster;
let client;
let streams = false;
const pause = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  cluster = await TestCluster.start({ runners: 2, proxies: 1 });
  client = new Client({ proxies: cluster.proxies, credentials: loadCredentials({ dir: cluster.credentials }) });
  streams = await cluster.hasStreams(client);
});

after(async () => {
  client?.close();
  await cluster?.stop();
});

test("a stream's items arrive in order, then its final reply", async (t) => {
  if (!streams) return t.skip("these runners have no streaming RPCs");
  const items = client.entity(Greeter, "Test").GreetMany({ name: "John", count: 100, delay_ms: 0 });
  const seen = [];
  for await (const item of items) seen.push(item);
  assert.equal(seen.length, 100);
  seen.forEach((item, i) => assert.deepEqual(item, { message: "Hello, John! from Test Greeter 216", index: i }));
  assert.deepEqual(await items.final, { count: 100 });
});

test("a slow consumer holds the producer to the credit and still gets every item", async (t) => {
  if (!streams) return t.skip("these runners have no streaming RPCs");
  const credit = 8;
  const items = client.stream("Greeter", "slow-reader", "GreetMany", { name: "S", count: 2000, delay_ms: 0 }, { credit });
  let read = 0;
  let mostAhead = 0;
  for await (const item of items) {
    assert.equal(item.index, read);
    read += 1;
    if (read === 10 || read === 1000) {
      // While nothing is read, at most `credit` items may arrive beyond what was read.
      await pause(700);
      assert.ok(items.itemsReceived - read <= credit, `${items.itemsReceived - read} items ahead of the reader`);
    }
    mostAhead = Math.max(mostAhead, items.itemsReceived - read);
  }
  assert.equal(read, 2000);
  assert.ok(mostAhead <= credit, `at most ${credit} ahead, saw ${mostAhead}`);
  assert.deepEqual(await items.final, { count: 2000 });
});

test("time a consumer holds the credit does not count against the stream's deadline", async (t) => {
  if (!streams) return t.skip("these runners have no streaming RPCs");
  const items = client.stream("Greeter", "gap", "GreetMany", { name: "G", count: 12, delay_ms: 0 }, { credit: 4, timeoutMs: 1000 });
  let read = 0;
  for await (const _ of items) {
    read += 1;
    if (read === 2) await pause(1800);
  }
  assert.equal(read, 12);
});

test("aborting a stream interrupts the handler: Cancelled here, the runner logs it, the entity is free", async (t) => {
  if (!streams) return t.skip("these runners have no streaming RPCs");
  const controller = new AbortController();
  const items = client.stream("Greeter", "abort-stream", "GreetMany", { name: "A", count: 100000, delay_ms: 200 }, { signal: controller.signal });
  let read = 0;
  await assert.rejects(
    (async () => {
      for await (const _ of items) {
        read += 1;
        if (read === 2) controller.abort();
      }
    })(),
    (error) => {
      assert.ok(error instanceof ClusterError);
      assert.equal(error.code, ErrorCode.Cancelled);
      return true;
    },
  );
  await assert.rejects(items.final, (e) => e.code === ErrorCode.Cancelled);
  const logs = () => cluster.log("runner-1") + cluster.log("runner-2");
  assert.ok(await waitFor(() => /cancelled/i.test(logs()), 5000), "no runner logged the cancellation");
  const started = Date.now();
  await client.entity(Greeter, "abort-stream").GreetVolatile({ name: "B" }, { timeoutMs: 10000 });
  assert.ok(Date.now() - started < 3000, `the entity stayed busy ${Date.now() - started} ms`);
});

test("leaving a for-await early stops the stream", async (t) => {
  if (!streams) return t.skip("these runners have no streaming RPCs");
  const items = client.entity(Greeter, "break-early").GreetMany({ name: "E", count: 100000, delay_ms: 100 });
  for await (const item of items) if (item.index === 1) break;
  await assert.rejects(items.final, (e) => e.code === ErrorCode.Cancelled);
  const started = Date.now();
  await client.entity(Greeter, "break-early").GreetVolatile({ name: "F" }, { timeoutMs: 10000 });
  assert.ok(Date.now() - started < 3000, `the entity stayed busy ${Date.now() - started} ms`);
});

test("an error before any item ends the stream with that error", async (t) => {
  if (!streams) return t.skip("these runners have no streaming RPCs");
  const items = client.stream("Greeter", "x", "NoSuchStream", {});
  await assert.rejects(
    (async () => {
      for await (const _ of items);
    })(),
    (e) => e.code === ErrorCode.UnknownRpc,
  );
});

test("direct mode streams from the owning runner and interrupts it there", async (t) => {
  if (!streams) return t.skip("these runners have no streaming RPCs");
  const direct = new Client({
    direct: { manager: cluster.managerAddress },
    credentials: loadCredentials({ dir: cluster.credentials, role: "proxy" }),
  });
  try {
    const items = direct.entity(Greeter, "Test").GreetMany({ name: "D", count: 50, delay_ms: 0 }, { credit: 4 });
    let read = 0;
    for await (const item of items) assert.equal(item.index, read++);
    assert.equal(read, 50);
    assert.deepEqual(await items.final, { count: 50 });
    const endless = direct.entity(Greeter, "direct-abort").GreetMany({ name: "D", count: 100000, delay_ms: 100 });
    for await (const item of endless) if (item.index === 1) break;
    await assert.rejects(endless.final, (e) => e.code === ErrorCode.Cancelled);
    const started = Date.now();
    await direct.entity(Greeter, "direct-abort").GreetVolatile({ name: "E" }, { timeoutMs: 10000 });
    assert.ok(Date.now() - started < 3000, `the entity stayed busy ${Date.now() - started} ms`);
  } finally {
    direct.close();
  }
});

// Last: it kills a runner.
test("a runner killed mid-stream ends the stream with Unavailable; a new call succeeds", async (t) => {
  if (!streams) return t.skip("these runners have no streaming RPCs");
  const id = "doomed-stream";
  const snapshot = await client.status();
  const { shardFor } = await import("../dist/index.js");
  const group = snapshot.groups.find((g) => g.group === "default");
  const owner = group.owners[shardFor(id, group.shards) - 1];
  const name = snapshot.runners.find((r) => r.address === owner).name;
  const items = client.stream("Greeter", id, "GreetMany", { name: "K", count: 100000, delay_ms: 20 }, { timeoutMs: 20000 });
  let read = 0;
  await assert.rejects(
    (async () => {
      for await (const _ of items) {
        read += 1;
        if (read === 5) await cluster.kill(name, "SIGKILL");
      }
    })(),
    (error) => {
      assert.ok(error instanceof ClusterError);
      assert.equal(error.code, ErrorCode.Unavailable, error.message);
      return true;
    },
  );
  const reply = await client.entity(Greeter, id).GreetVolatile({ name: "L" }, { timeoutMs: 20000 });
  assert.match(reply.message, /^Hello, L! from doomed-stream Greeter \d+$/);
});
