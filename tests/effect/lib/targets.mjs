// Where the tests send their calls: a cluster of the C++ binaries with the proxy's Effect RPC
// listener on (the default), or the reference Effect Cluster (EFFECT_TARGET=reference) for
// the tests whose expectations Effect Cluster itself defines.
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { missingBinaries, TestCluster } from "../../../clients/typescript/test/harness.mjs";
import { startReference } from "../reference/process.mjs";

export const target = process.env.EFFECT_TARGET === "reference" ? "reference" : "cluster";

/** Why the tests cannot run here (node --test `skip` reason), or false. */
export function skipReason() {
  if (target === "reference") return false;
  const missing = missingBinaries();
  return missing.length > 0 ? `build the C++ binaries first (missing ${missing.join(", ")})` : false;
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * A cluster with the proxy's Effect listener on a free port and a fresh token.
 * `serialization` picks proxy.effect_serialization (auto by default).
 */
export async function startCluster({ runners = 2, serialization = "auto", proxyArgs = [], runnerArgs = [], env = {} } = {}) {
  const port = await freePort();
  const token = randomBytes(16).toString("hex");
  const cluster = await TestCluster.start({
    runners,
    runnerArgs,
    env,
    proxyArgs: [
      "--set", `proxy.effect_port=${port}`,
      "--set", `proxy.effect_token=${token}`,
      "--set", `proxy.effect_serialization=${serialization}`,
      ...proxyArgs,
    ],
  });
  return {
    cluster,
    token,
    endpoint: (ser = "ndjson") => ({ port, serialization: ser, token }),
    stop: () => cluster.stop(),
  };
}

/** Whichever target EFFECT_TARGET names, as `{ endpoint(serialization), stop(), cluster? }`. */
export async function startTarget(options = {}) {
  if (target === "reference") {
    const reference = await startReference();
    return {
      reference,
      endpoint: (ser = "ndjson") => ({ port: reference.ports[ser], serialization: ser, token: "unused" }),
      stop: () => reference.stop(),
    };
  }
  return startCluster(options);
}
