// Starts the reference Effect Cluster (server.mjs) as a child process on free ports and stops
// it by its PID: the tests, the wire capture and the benchmark share it.
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const server = join(here, "server.mjs");
// The reference runs on the same Effect release as the tests (see run-tests.sh).
const loader = process.env.EFFECT_MATRIX === "latest"
  ? ["--import", pathToFileURL(join(here, "../latest/register.mjs")).href]
  : [];

export async function startReference({ timeoutMs = 20000 } = {}) {
  const child = spawn(process.execPath, [...loader, server], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
  const ports = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`reference server not ready in ${timeoutMs} ms:\n${log}`)), timeoutMs);
    const onData = (data) => {
      log += data;
      const match = /ready ndjson=(\d+) msgpack=(\d+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        resolve({ ndjson: Number(match[1]), msgpack: Number(match[2]) });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`reference server exited (${code ?? signal}):\n${log}`));
    });
  });
  return {
    ports,
    pid: child.pid,
    log: () => log,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      process.kill(child.pid, "SIGTERM");
      const timer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, "SIGKILL");
      }, 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}
