// TLS: the handshake signatures cover the TLS exporter value (docs/security.md), so a call
// works only when this client binds the same value the servers do.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, ErrorCode, loadCredentials } from "../dist/index.js";
import { TestCluster } from "./harness.mjs";

let cluster;
before(async () => {
  cluster = await TestCluster.start({ runners: 1, proxies: 1, tls: true });
});
after(async () => cluster?.stop());

test("a call over TLS, credentials and TLS mode from the folder", async () => {
  const credentials = loadCredentials({ dir: cluster.credentials });
  assert.equal(credentials.tls, "on");
  const client = new Client({ proxies: cluster.proxies, credentials });
  try {
    assert.deepEqual(await client.call("Greeter", "Test", "Greet", { name: "John" }), {
      message: "Hello, John! from Test Greeter 216",
    });
  } finally {
    client.close();
  }
});

test("a plain connection to a port that requires TLS is refused", async () => {
  const credentials = { ...loadCredentials({ dir: cluster.credentials }), tls: "off" };
  const client = new Client({ proxies: cluster.proxies, credentials, timeoutMs: 3000 });
  try {
    await assert.rejects(client.call("Greeter", "Test", "Greet", { name: "John" }), (e) => e.code === ErrorCode.Unauthorized);
  } finally {
    client.close();
  }
});
