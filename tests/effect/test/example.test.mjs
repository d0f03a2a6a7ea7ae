// The documented example (examples/effect-client, README "Effect clients"): the seed's
// client program as it is, given only the address and the token, prints the greeting.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { skipReason, startCluster, target } from "../lib/targets.mjs";

const run = promisify(execFile);
const example = resolve(dirname(fileURLToPath(import.meta.url)), "../../../examples/effect-client");
const skip =
  target === "reference"
    ? "the example calls the proxy"
    : process.env.EFFECT_MATRIX === "latest"
      ? "the example pins the seed's releases; the pinned run checks it"
      : skipReason();

test("examples/effect-client prints Hello, John! from Test Greeter 216", { skip, timeout: 180000 }, async () => {
  // Its own package.json, as a user would install it.
  const installed = join(example, "node_modules/.package-lock.json");
  if (!existsSync(installed) || statSync(join(example, "package-lock.json")).mtimeMs > statSync(installed).mtimeMs)
    await run("npm", ["ci", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: example, timeout: 150000 });
  const server = await startCluster({ runners: 1 });
  try {
    const { port, token } = server.endpoint("ndjson");
    const { stdout } = await run("node", ["greet.mjs"], {
      cwd: example,
      timeout: 30000,
      env: { ...process.env, EFFECT_PORT: String(port), EFFECT_TOKEN: token },
    });
    assert.equal(stdout.trim(), "Hello, John! from Test Greeter 216");
  } finally {
    await server.stop();
  }
});
