// The proxy's Effect listener admits only requests that carry its token, and only to what
// proxy.effect_expose lists. Checked with the Effect client (what the caller sees) and with a
// bare socket (that the connection is closed after a refused request).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { EntityProxy } from "@effect/cluster";
import { Effect } from "effect";
import { defectOf, valueOf, withClient } from "../lib/client.mjs";
import { Greeter, Probe } from "../lib/entities.mjs";
import { rawConnection, request } from "../lib/raw.mjs";
import { skipReason, startCluster, target } from "../lib/targets.mjs";

const skip = target === "reference" ? "the token and the allowlist are the proxy's" : skipReason();
const Both = EntityProxy.toRpcGroup(Greeter).merge(EntityProxy.toRpcGroup(Probe));
const greet = (client) => client.Greet({ entityId: "Test", payload: { name: "John" } });

describe("the Effect listener's token", { skip, timeout: 120000 }, () => {
  let server;
  before(async () => {
    server = await startCluster({ runners: 1 });
  });
  after(async () => {
    await server?.stop();
  });

  for (const serialization of ["ndjson", "msgpack"]) {
    test(`a call without the token, or with a wrong one, is refused (${serialization})`, { timeout: 20000 }, async () => {
      for (const token of [undefined, "wrong", ""]) {
        const exit = await withClient({ ...server.endpoint(serialization), token }, Both, greet, { token, timeoutMs: 10000 });
        const defect = defectOf(exit);
        assert.equal(defect.name, "Unauthorized", `token ${JSON.stringify(token)}: ${defect}`);
      }
      const exit = await withClient(server.endpoint(serialization), Both, greet);
      assert.deepEqual(valueOf(exit), { message: "Hello, John! from Test Greeter 216" });
    });

    test(`the connection is closed after a refused request (${serialization})`, { timeout: 20000 }, async () => {
      const raw = await rawConnection(server.endpoint(serialization));
      try {
        const refused = request("Greet", { entityId: "Test", payload: { name: "John" } });
        raw.send(refused);
        const exit = await raw.next((m) => m._tag === "Exit" && m.requestId === refused.id);
        assert.equal(exit.exit._tag, "Failure");
        assert.equal(exit.exit.cause._tag, "Die");
        assert.equal(exit.exit.cause.defect.name, "Unauthorized");
        assert.equal(typeof exit.exit.cause.defect.message, "string");
        await raw.closedWithin(5000);
      } finally {
        raw.close();
      }
    });
  }

  test("the wrong scheme (a bare token, no `Bearer`) is refused too", { timeout: 20000 }, async () => {
    const raw = await rawConnection(server.endpoint("ndjson"));
    try {
      const refused = request("Greet", { entityId: "Test", payload: { name: "John" } }, [["authorization", server.token]]);
      raw.send(refused);
      const exit = await raw.next((m) => m._tag === "Exit" && m.requestId === refused.id);
      assert.equal(exit.exit.cause.defect.name, "Unauthorized");
    } finally {
      raw.close();
    }
  });

  test("Ping is answered with Pong, in either serialization on the one (auto) port", { timeout: 20000 }, async () => {
    for (const serialization of ["ndjson", "msgpack"]) {
      const raw = await rawConnection(server.endpoint(serialization));
      try {
        raw.send({ _tag: "Ping" });
        await raw.next((m) => m._tag === "Pong");
        // A call with the token on the same connection works after the ping.
        const call = request("Greet", { entityId: "Test", payload: { name: "Raw" } }, [["authorization", `Bearer ${server.token}`]]);
        raw.send(call);
        const exit = await raw.next((m) => m._tag === "Exit" && m.requestId === call.id);
        assert.deepEqual(exit.exit, { _tag: "Success", value: { message: "Hello, Raw! from Test Greeter 216" } });
      } finally {
        raw.close();
      }
    }
  });
});

describe("the Effect listener's allowlist (proxy.effect_expose)", { skip, timeout: 120000 }, () => {
  let server;
  before(async () => {
    server = await startCluster({ runners: 1, proxyArgs: ["--set", "proxy.effect_expose=Greeter,Probe/Echo"] });
  });
  after(async () => {
    await server?.stop();
  });

  test("a listed type and a listed Type/Rpc are callable, the rest is Forbidden", { timeout: 20000 }, async () => {
    const exit = await withClient(server.endpoint("ndjson"), Both, (client) =>
      Effect.all({
        greet: greet(client),
        echo: client.Echo({ entityId: "e", payload: { text: "hi" } }),
        sleep: Effect.exit(client.Sleep({ entityId: "e", payload: { ms: 1 } })),
        reject: Effect.exit(client.Reject({ entityId: "e", payload: {} })),
      }),
    );
    const { greet: greeting, echo, sleep, reject } = valueOf(exit);
    assert.deepEqual(greeting, { message: "Hello, John! from Test Greeter 216" });
    assert.equal(echo.text, "hi");
    for (const refused of [sleep, reject]) assert.equal(defectOf(refused).name, "Forbidden");
  });
});
