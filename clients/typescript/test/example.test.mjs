// The README's example (examples/greet.ts, compiled to dist-examples/) run as a program
// against a cluster, found the way it is on `scripts/dev up`: the environment's proxy
// address and credentials folder.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, test } from "node:test";

import { TestCluster } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
let cluster;

before(async () => {
  cluster = await TestCluster.start({ runners: 1, proxies: 1 });
});
after(async () => cluster?.stop());

test("the README's example prints the greeting", async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [join(here, "../dist-examples/greet.js")], {
    env: { ...process.env, CLUSTER_PROXY_ADDRESS: cluster.proxies[0], CLUSTER_SECURITY_CREDENTIALS_DIR: cluster.credentials },
    timeout: 20000,
  });
  assert.equal(stdout, "Hello, John! from Test Greeter 216\n");
});
