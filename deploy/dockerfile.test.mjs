// Static checks of the container image (Docker is not needed, and not run): the build
// stage builds with the same script as a local build, the runtime stage ships the
// binaries, plugins and config where sst.config.ts expects them, with only runtime
// libraries, as a non-root user; .dockerignore keeps local outputs out of the context.
// Run: node --test deploy/dockerfile.test.mjs (ctest: dockerfile_static).

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const read = (file) => fs.readFileSync(path.join(ROOT, file), "utf8");

// Instructions of the Dockerfile: comments dropped, continuation lines joined.
function instructions(text) {
  const joined = text
    .split("\n")
    .filter((line) => !/^\s*#/.test(line))
    .join("\n")
    .replace(/\\\n/g, " ");
  return joined
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean)
    .map((line) => {
      const [, keyword, rest] = /^(\S+)\s*(.*)$/.exec(line);
      return { keyword: keyword.toUpperCase(), args: rest.replace(/\s+/g, " ") };
    });
}

function stages(text) {
  const result = [];
  for (const instruction of instructions(text)) {
    if (instruction.keyword === "FROM") {
      const [, image, name] = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(instruction.args);
      result.push({ image, name, steps: [] });
    } else {
      assert.ok(result.length, `${instruction.keyword} before FROM`);
      result.at(-1).steps.push(instruction);
    }
  }
  return result;
}

const dockerfile = stages(read("Dockerfile"));
const [build, runtime] = dockerfile;
const runs = (stage) => stage.steps.filter((s) => s.keyword === "RUN").map((s) => s.args);
const copies = (stage) => stage.steps.filter((s) => s.keyword === "COPY").map((s) => s.args);

test("two stages: a Debian 12 build stage and a slim Debian 12 runtime stage", () => {
  assert.equal(dockerfile.length, 2);
  assert.equal(build.image, "debian:bookworm");
  assert.equal(build.name, "build");
  assert.equal(runtime.image, "debian:bookworm-slim");
});

test("the build stage installs packages and builds with scripts/dev, like a local build", () => {
  const commands = runs(build);
  assert.ok(commands.some((c) => /(^|&&\s*)scripts\/dev deps(\s|$)/.test(c)), "RUN scripts/dev deps");
  assert.ok(commands.some((c) => /(^|&&\s*)scripts\/dev build(\s|$)/.test(c)), "RUN scripts/dev build");
  assert.ok(commands.every((c) => !/cmake|apt-get/.test(c)), "no second build recipe or package list");
  // The sources arrive before the build.
  const steps = build.steps.map((s) => `${s.keyword} ${s.args}`);
  const copyAll = steps.findIndex((s) => /^COPY \. \.?/.test(s));
  const buildStep = steps.findIndex((s) => /scripts\/dev build/.test(s));
  assert.ok(copyAll >= 0 && copyAll < buildStep, "COPY . . comes before scripts/dev build");
});

test("the runtime stage copies bin/, the plugins and config/ from the build stage", () => {
  const from = copies(runtime).filter((c) => c.startsWith("--from=build "));
  assert.ok(from.some((c) => /\/build\/release\/bin\/? \/app\/bin\/$/.test(c)), "bin/ → /app/bin/");
  assert.ok(from.some((c) => /\/build\/release\/plugins\/\S* \/app\/plugins\/$/.test(c)), "plugins → /app/plugins/");
  assert.ok(from.some((c) => /\/config\/? \/app\/config\/$/.test(c)), "config/ → /app/config/");
  // sst.config.ts runs the binaries from these folders.
  const config = read("sst.config.ts");
  for (const [name, value] of [
    ["IMAGE_BIN", "/app/bin"],
    ["IMAGE_CONFIG", "/app/config/local.toml"],
    ["IMAGE_PLUGINS", "/app/plugins"],
  ]) {
    assert.match(config, new RegExp(`const ${name} = "${value.replace(/\//g, "\\/")}";`), `sst.config.ts ${name}`);
  }
  assert.ok(fs.existsSync(path.join(ROOT, "config", "local.toml")), "config/local.toml exists");
});

test("the runtime stage installs only runtime libraries and runs as a non-root user", () => {
  const install = runs(runtime).join(" && ");
  for (const pkg of ["libboost-filesystem1.74.0", "libpq5", "libssl3", "libspdlog1.10", "libfmt9", "libtomlplusplus3"]) {
    assert.match(install, new RegExp(`(^|\\s)${pkg.replace(/\./g, "\\.")}(\\s|$)`), pkg);
  }
  assert.match(install, /--no-install-recommends/);
  assert.doesNotMatch(install, /(^|\s)(g\+\+|cmake|ninja-build|[a-z0-9.+-]+-dev)(\s|$)/, "no compiler or -dev package");
  const users = runtime.steps.filter((s) => s.keyword === "USER").map((s) => s.args);
  assert.equal(users.length, 1);
  assert.doesNotMatch(users[0], /^(root|0)(:|$)/, "USER is not root");
});

test(".dockerignore keeps build outputs, dependencies and local state out of the context", () => {
  const lines = read(".dockerignore")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => l.replace(/^\//, "").replace(/\/$/, ""));
  for (const entry of ["build", "dist", "node_modules", ".sst", ".local"]) {
    assert.ok(lines.includes(entry), `${entry} is ignored`);
  }
  // SST appends ".sst" to .dockerignore before a build unless that exact line is present.
  assert.ok(read(".dockerignore").split("\n").includes(".sst"), "the exact line .sst");
  // What the build stage needs is not ignored.
  for (const needed of ["scripts", "CMakeLists.txt", "CMakePresets.json", "config"]) {
    assert.ok(!lines.includes(needed), `${needed} is in the context`);
  }
});

test("the runtime stage ships the RDS CA bundle where sst.config.ts points verify-full", () => {
  const config = read("sst.config.ts");
  const m = /const IMAGE_RDS_CA = "([^"]+)";/.exec(config);
  assert.ok(m, "sst.config.ts IMAGE_RDS_CA");
  const adds = runtime.steps.filter((s) => s.keyword === "ADD").map((s) => s.args);
  const bundle = adds.find((a) => a.endsWith(` ${m[1]}`));
  assert.ok(bundle, `an ADD of the bundle to ${m[1]}`);
  assert.match(bundle, /(^|\s)https:\/\/truststore\.pki\.rds\.amazonaws\.com\/global\/global-bundle\.pem\s/, "AWS's global bundle, over https");
  assert.match(bundle, /--chmod=0?644\s/, "readable by the unprivileged user");
  const steps = runtime.steps.map((s) => s.keyword);
  assert.ok(steps.indexOf("ADD") < steps.indexOf("USER"), "added before USER");
});

// EXPOSE's ports, ranges ("9093-9096") expanded.
const exposed = (stage) =>
  stage.steps
    .filter((s) => s.keyword === "EXPOSE")
    .flatMap((s) => s.args.split(" "))
    .flatMap((spec) => {
      const [, from, to] = /^(\d+)(?:-(\d+))?(?:\/tcp)?$/.exec(spec);
      const ports = [];
      for (let port = Number(from); port <= Number(to ?? from); port++) ports.push(port);
      return ports;
    });

test("the runtime stage has curl, which the ECS health checks run", () => {
  const install = runs(runtime).find((c) => /apt-get install/.test(c));
  assert.ok(install, "an apt-get install in the runtime stage");
  const packages = /apt-get install ([^&]*)/.exec(install)[1].split(" ");
  assert.ok(packages.includes("--no-install-recommends"));
  for (const pkg of ["curl", "ca-certificates"]) assert.ok(packages.includes(pkg), `${pkg} is installed`);
  assert.match(install, /rm -rf \/var\/lib\/apt\/lists\/\*/, "the package lists are dropped");
  // sst.config.ts's health checks call it.
  const config = read("sst.config.ts");
  assert.match(config, /"CMD-SHELL", `curl -fsS --max-time 2 http:\/\/127\.0\.0\.1:\$\{adminPort\}\/healthz \|\| exit 1`/);
});

test("the runtime stage exposes the cluster ports and the admin ports sst.config.ts sets", () => {
  const ports = exposed(runtime);
  for (const port of [8080, 3333, 8787, 34431, 34432, 34433, 34434]) assert.ok(ports.includes(port), `EXPOSE ${port}`);
  const config = read("sst.config.ts");
  const constant = (name) => {
    const m = new RegExp(`const ${name} = (\\[[^\\]]*\\]|\\d+);`).exec(config);
    assert.ok(m, `sst.config.ts ${name}`);
    return [JSON.parse(m[1])].flat();
  };
  const admin = ["MANAGER_ADMIN_PORT", "PROXY_ADMIN_PORT", "GATEWAY_ADMIN_PORT", "RUNNER_ADMIN_PORTS"].flatMap(constant);
  assert.deepEqual(admin, [9090, 9091, 9092, 9093, 9094, 9095, 9096]);
  for (const port of admin) assert.ok(ports.includes(port), `EXPOSE ${port} (admin)`);
});
