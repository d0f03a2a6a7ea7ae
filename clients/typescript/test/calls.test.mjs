// Calls against a real cluster (manager, two runners, two proxies) started by the test.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, ClusterError, defineEntity, ErrorCode, loadCredentials, rpc, shardFor, SigningKey, TrustList } from "../dist/index.js";
import { TestCluster, waitFor } from "./harness.mjs";

const Greeter = defineEntity("Greeter", {
  Greet: rpc({ persisted: true }),
  GreetVolatile: rpc(),
});
const Probe = defineEntity("Probe", {
  Echo: rpc(),
  Sleep: rpc(),
  Append: rpc({ persisted: true }),
  Stamp: rpc({ persisted: true }),
  Reject: rpc(),
  Fail: rpc(),
});

let cluster;
let credentials;
const clients = [];
function client(options = {}) {
  const c = new Client({ proxies: cluster.proxies, credentials, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  cluster = await TestCluster.start({ runners: 2, proxies: 2 });
  credentials = loadCredentials({ dir: cluster.credentials });
});

after(async () => {
  for (const c of clients) c.close();
  await cluster?.stop();
});

test("Greeter.Greet answers through the proxy, typed", async () => {
  const reply = await client().entity(Greeter, "Test").Greet({ name: "John" });
  assert.deepEqual(reply, { message: "Hello, John! from Test Greeter 216" });
});

test("the client's shard function agrees with the runners'", async () => {
  const c = client();
  for (const id of ["Test", "user-1", "héllo", "😀", "a longer id / with spaces", "ü".repeat(40)]) {
    const reply = await c.entity(Probe, id).Echo({ text: "x" });
    assert.equal(reply.shard, shardFor(id, 300), `shard of ${JSON.stringify(id)}`);
    assert.equal(reply.entity_id, id);
  }
});

test("many calls share one connection and their replies find their callers", async () => {
  const c = client();
  await c.entity(Probe, "warm").Echo({ text: "" });
  const started = Date.now();
  const n = 200;
  const replies = await Promise.all(
    Array.from({ length: n }, (_, i) => c.call("Probe", `mux-${i}`, i % 2 ? "Sleep" : "Echo", i % 2 ? { ms: 300 } : { text: `t${i}` })),
  );
  const elapsed = Date.now() - started;
  replies.forEach((reply, i) => {
    if (i % 2) assert.equal(typeof reply.slept_ms, "number", `call ${i}: ${JSON.stringify(reply)}`);
    else assert.equal(reply.text, `t${i}`);
  });
  // 100 sleeps of 300 ms one after the other would take 30 s.
  assert.ok(elapsed < 10000, `${n} concurrent calls took ${elapsed} ms`);
  assert.equal(c.connectionCount, 1);
});

test("a call past its deadline fails with DeadlineExceeded", async () => {
  const started = Date.now();
  await assert.rejects(client().entity(Probe, "slow").Sleep({ ms: 5000 }, { timeoutMs: 300 }), (error) => {
    assert.ok(error instanceof ClusterError);
    assert.equal(error.code, ErrorCode.DeadlineExceeded);
    return true;
  });
  assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
});

test("failures are typed: unknown type, unknown RPC, bad payload, application error, defect", async () => {
  const c = client();
  const expect = async (promise, code, check = () => {}) =>
    assert.rejects(promise, (error) => {
      assert.ok(error instanceof ClusterError, String(error));
      assert.equal(error.codeName, Object.keys(ErrorCode).find((k) => ErrorCode[k] === code));
      assert.equal(error.code, code, error.message);
      check(error);
      return true;
    });
  await expect(c.call("Nope", "x", "Greet", {}), ErrorCode.UnknownEntityType);
  await expect(c.call("Greeter", "x", "Nope", {}), ErrorCode.UnknownRpc, (e) => assert.match(e.message, /Nope/));
  await expect(c.call("Probe", "x", "Sleep", { ms: "long" }), ErrorCode.BadPayload);
  await expect(c.entity(Probe, "x").Reject({}), ErrorCode.ApplicationError, (e) => {
    assert.equal(e.tag, "Rejected");
    assert.match(e.detail, /probe rejected the request/);
  });
  await expect(c.entity(Probe, "x").Fail({}), ErrorCode.Defect, (e) => assert.match(e.detail, /on purpose/));
});

test("a primary key makes a persisted call run once", async () => {
  const c = client();
  const probe = c.entity(Probe, "dedupe");
  const first = await probe.Append({ sender: "a", value: 1 }, { primaryKey: "dedupe-1" });
  const again = await probe.Append({ sender: "a", value: 1 }, { primaryKey: "dedupe-1" });
  assert.deepEqual(first, { log: ["a:1"] });
  assert.deepEqual(again, first);
  const next = await probe.Append({ sender: "a", value: 2 }, { primaryKey: "dedupe-2" });
  assert.deepEqual(next, { log: ["a:1", "a:2"] });
  await assert.rejects(probe.Append({ sender: "b", value: 9 }, { primaryKey: "dedupe-1" }), (error) => {
    assert.equal(error.code, ErrorCode.InvalidRequest);
    assert.match(error.message, /primary key reused/);
    return true;
  });
});

test("deliverAt holds a persisted call until its time", async () => {
  const at = Date.now() + 800;
  const reply = await client().entity(Probe, "later").Stamp({}, { deliverAt: new Date(at), primaryKey: `later-${at}` });
  assert.ok(reply.at_ms >= at, `ran at ${reply.at_ms}, ${at - reply.at_ms} ms early`);
});

test("discard is acknowledged once accepted and the request still runs", async (t) => {
  const c = client();
  if (!(await cluster.hasStreams(c))) return t.skip("these runners do not implement discard");
  const started = Date.now();
  // Acknowledged before the 3 s handler ends.
  await c.discard("Probe", "fire", "Sleep", { ms: 3000 });
  assert.ok(Date.now() - started < 2000, `discard took ${Date.now() - started} ms`);
  // A persisted discard is stored, then runs: the entity's log shows it.
  await c.discard("Probe", "fire-log", "Append", { sender: "d", value: 1 }, { persisted: true });
  let log = [];
  assert.ok(
    await waitFor(async () => {
      log = (await c.entity(Probe, "fire-log").Append({ sender: "probe", value: log.length })).log;
      return log.includes("d:1");
    }, 10000, 100),
    `the discarded Append never ran: ${JSON.stringify(log)}`,
  );
});

test("an aborted call sends interrupt and rejects with Cancelled; the entity is free again", async (t) => {
  const c = client();
  if (!(await cluster.hasStreams(c))) return t.skip("these runners do not implement interrupt");
  const probe = c.entity(Probe, "abort-me");
  const controller = new AbortController();
  const sleeping = probe.Sleep({ ms: 20000 }, { signal: controller.signal, timeoutMs: 30000 });
  await new Promise((r) => setTimeout(r, 300));
  controller.abort();
  await assert.rejects(sleeping, (error) => {
    assert.equal(error.code, ErrorCode.Cancelled);
    return true;
  });
  // The entity runs one message at a time: it answers only once the sleep was cancelled.
  const started = Date.now();
  await probe.Echo({ text: "after" }, { timeoutMs: 15000 });
  assert.ok(Date.now() - started < 5000, `the entity was busy for ${Date.now() - started} ms more`);
  await assert.rejects(probe.Echo({ text: "x" }, { signal: AbortSignal.abort() }), (e) => e.code === ErrorCode.Cancelled);
});

test("credentials the cluster does not trust are refused with Unauthorized", async () => {
  const stranger = SigningKey.fromText(Buffer.alloc(32, 9).toString("base64"));
  const trust = TrustList.parse(`client=${Buffer.from(stranger.publicKey).toString("base64")}\n` +
    credentials.trust.entries.filter((e) => e.role !== "client").map((e) => `${e.role}=${Buffer.from(e.key).toString("base64")}`).join("\n"));
  const c = client({ credentials: { key: stranger, trust, role: "client", tls: "off" }, timeoutMs: 3000 });
  await assert.rejects(c.entity(Greeter, "Test").Greet({ name: "x" }), (e) => e.code === ErrorCode.Unauthorized);
  const anonymous = client({ credentials: null, timeoutMs: 3000 });
  await assert.rejects(anonymous.entity(Greeter, "Test").Greet({ name: "x" }), (e) => e.code === ErrorCode.Unauthorized);
});

test("status reads the proxy's assignment snapshot", async () => {
  const snapshot = await client().status();
  assert.equal(snapshot.storage, "memory");
  const group = snapshot.groups.find((g) => g.group === "default");
  assert.equal(group.shards, 300);
  assert.ok(snapshot.entity_types.some((t) => t.name === "Greeter"));
});

test("direct mode calls the owning runner with the manager's assignments", async () => {
  const c = client({ direct: { manager: cluster.managerAddress }, credentials: loadCredentials({ dir: cluster.credentials, role: "proxy" }) });
  assert.deepEqual(await c.entity(Greeter, "Test").GreetVolatile({ name: "John" }), { message: "Hello, John! from Test Greeter 216" });
  const replies = await Promise.all(Array.from({ length: 50 }, (_, i) => c.entity(Probe, `direct-${i}`).Echo({ text: String(i) })));
  replies.forEach((r, i) => assert.equal(r.shard, shardFor(`direct-${i}`, 300)));
  await assert.rejects(c.call("Nope", "x", "Greet", {}), (e) => e.code === ErrorCode.UnknownEntityType);
});

// Last: it kills a proxy.
test("failover: a killed proxy fails the calls on it with Unavailable, the next call goes to the other", async () => {
  const c = client();
  await c.entity(Greeter, "Test").GreetVolatile({ name: "a" });
  const inFlight = c.entity(Probe, "failover").Sleep({ ms: 5000 });
  const failed = assert.rejects(inFlight, (error) => {
    assert.equal(error.code, ErrorCode.Unavailable);
    assert.match(error.message, /closed|ECONNRESET/);
    return true;
  });
  await new Promise((r) => setTimeout(r, 200));
  await cluster.kill("proxy-1", "SIGKILL");
  await failed;
  const reply = await c.entity(Greeter, "Test").GreetVolatile({ name: "b" }, { timeoutMs: 10000 });
  assert.equal(reply.message, "Hello, b! from Test Greeter 216");
  // A new client starts with the dead proxy first and moves on.
  const fresh = client();
  assert.equal((await fresh.entity(Greeter, "Test").GreetVolatile({ name: "c" })).message, "Hello, c! from Test Greeter 216");
});
