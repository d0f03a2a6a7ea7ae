/// <reference path="./.sst/platform/config.d.ts" />

// Deployment of cluster-sst with SST (docs/deploy.md explains it for people):
//
//   Vpc ── Database (RDS PostgreSQL) ── Cluster (ECS on Fargate)
//          Manager  (cluster-manager, 1 task, port 8080)
//          Proxy    (cluster-proxy, 1..5 tasks, port 3333, CPU/memory autoscaling)
//          Runner   (cluster-runner x4 in one task, ports 34431..34434)
//          Api      (Lambda, custom runtime, dist/lambda/bootstrap, function URL)
//
// The processes find each other through SST links: the Linkables "ShardManager" and
// "ProxyServer" ({host, port}) and the Postgres "Database" reach them as
// SST_RESOURCE_<Name> JSON environment variables. The Lambda gets the address of the proxy
// it calls as CLUSTER_GATEWAY_PROXY (host:port; CLUSTER_PROXY_* is where a proxy listens).
//
// In `sst dev` nothing of the cluster runs in AWS: each service's dev.command starts the
// locally built binary (build/release/bin/, built by `scripts/dev build`), the database is a
// local PostgreSQL on 127.0.0.1:5435, and the local HTTP gateway (cluster-gateway, port 8787)
// stands in for the Lambda, because `sst dev` cannot run custom-runtime functions locally.
//
// deploy/sst-config.test.mjs evaluates this file with stubbed SST globals and checks the
// resource graph; deploy/check-sst-config.sh type-checks it against SST's own types.

// The processes' own defaults (libs/process/include/cluster/process/defaults.hpp); set
// explicitly here so the deployment does not depend on them.
const MANAGER_PORT = 8080;
const PROXY_PORT = 3333;
const GATEWAY_PORT = 8787;
const RUNNER_PORTS = [34431, 34432, 34433, 34434];

// ECS sends SIGTERM, waits this long, then SIGKILL. 120 s is Fargate's maximum: a runner
// hands its shards back and finishes in-flight messages before it exits.
const STOP_TIMEOUT_S = 120;

// Where the binaries are: in the image (Dockerfile) and in a local release build (sst dev).
const IMAGE_BIN = "/app/bin";
const IMAGE_CONFIG = "/app/config/local.toml";
const IMAGE_PLUGINS = "/app/plugins";
const LOCAL_BIN = "build/release/bin";
const LOCAL_CONFIG = "config/local.toml";
const LOCAL_PLUGINS = "build/release/plugins";

// The Lambda bundle written by the normal build: a self-contained directory whose
// `bootstrap` is the custom-runtime entry point.
const LAMBDA_BUNDLE = "dist/lambda";
const LAMBDA_HANDLER = "bootstrap";

export default $config({
  app(input) {
    return {
      name: "cluster-sst",
      home: "aws",
      // The CLI refuses to run this app with another SST version than the one pinned in
      // package.json.
      version: "4.17.1",
      removal: input?.stage === "production" ? "retain" : "remove",
      // The AWS provider version SST 4.17.1's platform is built against; pinned so that
      // `sst install` (and so the type check in CI) does not drift with new releases.
      providers: { aws: "7.20.0" },
    };
  },

  async run() {
    const fs = await import("node:fs");
    const path = await import("node:path");

    const vpc = new sst.aws.Vpc("Vpc", { nat: "ec2" });

    const database = new sst.aws.Postgres("Database", {
      vpc,
      database: "cluster",
      // `sst dev` links the processes to this local server instead of RDS.
      dev: {
        username: "postgres",
        password: "password",
        database: "cluster",
        host: "127.0.0.1",
        port: 5435,
      },
    });

    const cluster = new sst.aws.Cluster("Cluster", { vpc });

    // Every service runs the same image, built from the repository's Dockerfile.
    const image = { context: ".", dockerfile: "Dockerfile" };

    const health = (command: string[]) => ({
      command: ["CMD", ...command],
      startPeriod: "30 seconds" as const,
      interval: "15 seconds" as const,
      timeout: "5 seconds" as const,
      retries: 3,
    });
    // A TCP connect to a port in the task (bash is in the image; /bin/sh is dash).
    const tcpHealth = (port: number) =>
      health(["/bin/bash", "-c", `exec 3<>/dev/tcp/127.0.0.1/${port}`]);

    // SST has no option for the container stop timeout: set it in the task definition.
    const gracefulStop = {
      taskDefinition: (args: aws.ecs.TaskDefinitionArgs): undefined => {
        args.containerDefinitions = $jsonParse(args.containerDefinitions).apply(
          (containers: Record<string, unknown>[]) =>
            JSON.stringify(
              containers.map((container) => ({ ...container, stopTimeout: STOP_TIMEOUT_S })),
            ),
        );
        return undefined;
      },
    };

    // A process in the image: its binary, the config file and overrides for containers
    // (listen on all interfaces of the task instead of loopback).
    const imageCommand = (binary: string, ...sets: string[]) => [
      `${IMAGE_BIN}/${binary}`,
      "--config",
      IMAGE_CONFIG,
      ...sets.flatMap((set) => ["--set", set]),
    ];
    // The same process from a local release build, for `sst dev`.
    const devCommand = (binary: string, ...sets: string[]) =>
      [`${LOCAL_BIN}/${binary}`, "--config", LOCAL_CONFIG, ...sets.map((set) => `--set ${set}`)].join(
        " ",
      );

    const manager = new sst.aws.Service("Manager", {
      cluster,
      image,
      cpu: "0.25 vCPU",
      memory: "0.5 GB",
      link: [database],
      environment: {
        CLUSTER_CLUSTER_STORAGE: "postgres",
        CLUSTER_MANAGER_PORT: String(MANAGER_PORT),
      },
      command: imageCommand("cluster-manager", "manager.host=0.0.0.0"),
      health: health([
        `${IMAGE_BIN}/clusterctl`,
        "--manager",
        `127.0.0.1:${MANAGER_PORT}`,
        "--timeout-ms",
        "3000",
        "status",
      ]),
      dev: { command: devCommand("cluster-manager") },
      transform: gracefulStop,
    });

    // In AWS the manager is reached through its Cloud Map name; in `sst dev` it runs here.
    const shardManager = new sst.Linkable("ShardManager", {
      properties: {
        host: $dev ? "127.0.0.1" : manager.service,
        port: MANAGER_PORT,
      },
    });

    const proxy = new sst.aws.Service("Proxy", {
      cluster,
      image,
      cpu: "0.25 vCPU",
      memory: "0.5 GB",
      link: [shardManager],
      environment: {
        CLUSTER_PROXY_PORT: String(PROXY_PORT),
      },
      command: imageCommand("cluster-proxy", "proxy.host=0.0.0.0"),
      health: tcpHealth(PROXY_PORT),
      scaling: {
        min: 1,
        max: 5,
        cpuUtilization: 70,
        memoryUtilization: 70,
      },
      dev: { command: devCommand("cluster-proxy") },
      transform: gracefulStop,
    });

    const proxyServer = new sst.Linkable("ProxyServer", {
      properties: {
        host: $dev ? "127.0.0.1" : proxy.service,
        port: PROXY_PORT,
      },
    });

    // Four runners share one task (one network address, four ports); each advertises the
    // task's private IP, which the runner reads from ECS_CONTAINER_METADATA_URI_V4.
    new sst.aws.Service("Runner", {
      cluster,
      cpu: "1 vCPU",
      memory: "2 GB",
      link: [database, shardManager],
      containers: RUNNER_PORTS.map((port, index) => ({
        name: `runner-${index + 1}`,
        image,
        environment: {
          CLUSTER_CLUSTER_STORAGE: "postgres",
          CLUSTER_RUNNER_NAME: `runner-${index + 1}`,
          CLUSTER_RUNNER_PORT: String(port),
        },
        command: imageCommand("cluster-runner", "runner.host=0.0.0.0", `runner.plugins=${IMAGE_PLUGINS}`),
        health: tcpHealth(port),
        dev: { command: devCommand("cluster-runner", `runner.plugins=${LOCAL_PLUGINS}`) },
      })),
      transform: gracefulStop,
    });

    // `sst dev` only: the HTTP gateway that serves what the Lambda serves when deployed.
    new sst.x.DevCommand("Gateway", {
      link: [proxyServer],
      environment: { CLUSTER_GATEWAY_PORT: String(GATEWAY_PORT) },
      dev: {
        title: "Gateway",
        autostart: true,
        command: devCommand("cluster-gateway"),
      },
    });
    const gatewayUrl = `http://127.0.0.1:${GATEWAY_PORT}`;

    if ($dev) {
      // `sst dev` cannot run a provided.al2023 function on this machine, so no Lambda is
      // created in dev; the gateway above answers the same HTTP requests.
      return {
        api: gatewayUrl,
        manager: `127.0.0.1:${MANAGER_PORT}`,
        proxy: `127.0.0.1:${PROXY_PORT}`,
      };
    }

    // Fail with a clear message rather than a Lambda that cannot start.
    if (!fs.existsSync(path.join($cli.paths.root, LAMBDA_BUNDLE, LAMBDA_HANDLER))) {
      throw new Error(
        `${LAMBDA_BUNDLE}/${LAMBDA_HANDLER} is missing: build it first (scripts/dev build), then run sst again`,
      );
    }

    const api = new sst.aws.Function("Api", {
      vpc,
      runtime: "provided.al2023",
      architecture: "x86_64",
      bundle: LAMBDA_BUNDLE,
      handler: LAMBDA_HANDLER,
      url: true,
      memory: "512 MB",
      timeout: "30 seconds",
      environment: {
        CLUSTER_GATEWAY_PROXY: $interpolate`${proxy.service}:${PROXY_PORT}`,
      },
    });

    return {
      api: api.url,
      manager: $interpolate`${manager.service}:${MANAGER_PORT}`,
      proxy: $interpolate`${proxy.service}:${PROXY_PORT}`,
    };
  },
});
