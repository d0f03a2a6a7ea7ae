/// <reference path="./.sst/platform/config.d.ts" />

// Deployment of cluster-sst with SST (docs/deploy.md explains it for people):
//
//   Vpc ── Database (RDS PostgreSQL) ── Cluster (ECS on Fargate)
//          Manager  (cluster-manager, 1 task, port 8080)
//          Proxy    (cluster-proxy, 1..5 tasks, port 3333, Effect RPC port 3334,
//                    CPU/memory autoscaling)
//          Runner   (cluster-runner x4 in one task, ports 34431..34434)
//          Api      (Lambda, custom runtime, dist/lambda/bootstrap, function URL)
//
// Every service's processes also serve their admin HTTP endpoint (/metrics, /healthz,
// /readyz; the manager's /dashboard and /api/cluster) on an admin port of their own:
// manager 9090, proxy 9091, runners 9093..9096 (the gateway's 9092 in `sst dev`). ECS's
// container health checks curl /healthz on it; the Monitoring security group, for a metrics
// scraper or OTLP collector the operator runs in the VPC, is the only one that reaches it
// from outside the task. Deployed, the processes log JSON lines (log.format=json) and export
// spans to trace.otlp_endpoint when the stage or the deploy's environment sets one.
//
// The processes find each other through SST links: the Linkables "ShardManager" and
// "ProxyServer" ({host, port}) and the Postgres "Database" reach them as
// SST_RESOURCE_<Name> JSON environment variables. The Lambda gets the address of the proxy
// it calls as CLUSTER_GATEWAY_PROXY (host:port; CLUSTER_PROXY_* is where a proxy listens).
// The Linkable "EffectRpc" ({host, port} of the proxies' Effect RPC listener) is for the
// app's TypeScript functions, which call the entities with @effect/rpc (docs/deploy.md);
// no process reads it.
//
// Credentials (docs/security.md): one Ed25519 key per role in the sst.Secrets
// ClusterManagerKey, ClusterRunnerKey, ClusterProxyKey, ClusterClientKey (the Lambda) and
// ClusterAdminKey (linked to nothing: operators only), and the trust list of public keys in
// ClusterTrust. Each service links its own key and the trust list, nothing else, so a
// broken-into runner holds no key of another role. EffectRpcToken is the bearer token of the
// Effect RPC listener: the proxy links it, and so do the functions that call the listener.
// Set them once per stage from `clusterctl keys init DIR` with the lines
// deploy/secret-commands.sh prints.
// Secrets, not keys generated here: they need no extra Pulumi provider (the offline checks
// run with SST's platform alone), and the admin key exists on the operator's machine before
// it exists in AWS.
//
// Per stage (STAGES below): the function URL's protection (a bearer token checked by the
// handler, or AWS_IAM), Fargate Spot or regular capacity, the HTTP allowlist.
// Deployed, each service has a security group of its own that admits only its ports, from
// the services that call it, and the database is reached over TLS with the server's name
// verified against the RDS CA bundle the image ships.
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
// The proxy's Effect RPC listener (docs/effect-rpc.md), which the process leaves off unless
// a port is set; 3334 as in `scripts/dev up`.
const EFFECT_PORT = 3334;
// The admin HTTP endpoints (`<section>.admin_port`; 0, the processes' default, serves none).
// One port per process of a task: the four runners share their task's network namespace,
// so each has its own, runner-N on RUNNER_ADMIN_PORTS[N-1].
const MANAGER_ADMIN_PORT = 9090;
const PROXY_ADMIN_PORT = 9091;
const GATEWAY_ADMIN_PORT = 9092;
const RUNNER_ADMIN_PORTS = [9093, 9094, 9095, 9096];
// OTLP/HTTP, where a collector in the Monitoring security group receives the spans.
const OTLP_HTTP_PORT = 4318;

// The RDS engine, pinned: SST's default moves with SST releases (17 in 4.17.1).
const POSTGRES_VERSION = "16.4";
const POSTGRES_PORT = 5432;
// The CA bundle of RDS in the image (Dockerfile), for sslmode=verify-full.
const IMAGE_RDS_CA = "/app/certs/rds-global-bundle.pem";

type UrlAuth = "token" | "iam";
interface StageSettings {
  // "token": a public URL whose handler requires `Authorization: Bearer <GatewayToken>`;
  // "iam": the URL takes only SigV4-signed requests (AWS_IAM). Not both: SigV4 signs in
  // the same Authorization header the handler reads the token from.
  urlAuth: UrlAuth;
  // Fargate Spot runs at a discount and may be reclaimed with a 2-minute notice: ECS sends
  // SIGTERM and the processes drain within STOP_TIMEOUT_S, as for any stop.
  spot: boolean;
  // gateway.expose: what HTTP may call, comma-separated "Type", "Type/Rpc" or "*";
  // "" leaves the gateway's default (the example plugins' types).
  expose: string;
  // trace.otlp_endpoint of the services: an OTLP/HTTP traces endpoint in the VPC (plain
  // http://), e.g. an ADOT collector's "http://<host>:4318/v1/traces"; "" exports no spans.
  otlpEndpoint: string;
  // trace.sample_ratio, the share of new traces that record spans (0..1); undefined keeps
  // the processes' default (0.01).
  traceSampleRatio?: number;
}
const DEFAULT_STAGE: StageSettings = { urlAuth: "token", spot: true, expose: "", otlpEndpoint: "" };
// Stages that differ from DEFAULT_STAGE.
const STAGES: Record<string, Partial<StageSettings>> = {
  production: { urlAuth: "iam" },
};
// The trace settings may also come from the environment of `sst deploy`/`sst dev`, under the
// processes' own names (they win over STAGES, as the variables win over the config file):
//   CLUSTER_TRACE_OTLP_ENDPOINT=http://collector.internal:4318/v1/traces \
//   CLUSTER_TRACE_SAMPLE_RATIO=0.1 npx sst deploy --stage dev
// A setting that is not there is not passed on: the processes keep their defaults.
const stageSettings = (stage: string): StageSettings => {
  const settings: StageSettings = { ...DEFAULT_STAGE, ...STAGES[stage] };
  const endpoint = process.env.CLUSTER_TRACE_OTLP_ENDPOINT?.trim();
  if (endpoint) settings.otlpEndpoint = endpoint;
  const ratio = process.env.CLUSTER_TRACE_SAMPLE_RATIO?.trim();
  if (ratio) settings.traceSampleRatio = Number(ratio);
  // The processes' exporter posts OTLP/HTTP JSON over plain HTTP (a collector in the VPC).
  if (settings.otlpEndpoint && !/^http:\/\/\S+$/.test(settings.otlpEndpoint)) {
    throw new Error(`trace.otlp_endpoint '${settings.otlpEndpoint}' is not an http:// URL`);
  }
  const sample = settings.traceSampleRatio;
  if (sample !== undefined && !(Number.isFinite(sample) && sample >= 0 && sample <= 1)) {
    throw new Error(`trace.sample_ratio '${ratio ?? sample}' is not a number between 0 and 1`);
  }
  return settings;
};

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
    const stage = stageSettings($app.stage);
    const urlToken = stage.urlAuth === "token";

    const vpc = new sst.aws.Vpc("Vpc", { nat: "ec2" });

    // --- credentials ---------------------------------------------------------------------
    const keys = {
      manager: new sst.Secret("ClusterManagerKey"),
      runner: new sst.Secret("ClusterRunnerKey"),
      proxy: new sst.Secret("ClusterProxyKey"),
      client: new sst.Secret("ClusterClientKey"),
      // Linked to nothing: operators read it (sst secret list, sst shell) for admin verbs.
      admin: new sst.Secret("ClusterAdminKey"),
    };
    const trust = new sst.Secret("ClusterTrust");
    // Only where the handler checks a token.
    const gatewayToken = urlToken ? new sst.Secret("GatewayToken") : undefined;
    // Every stage: the proxy refuses to start its Effect RPC listener without a token while
    // the processes authenticate.
    const effectRpcToken = new sst.Secret("EffectRpcToken");

    // --- security groups (deployed only: in `sst dev` the processes run on this machine) --
    // One per service; every ingress names the security group of the caller, none a CIDR.
    const groups = $dev ? undefined : securityGroups(vpc);

    const database = new sst.aws.Postgres("Database", {
      vpc,
      database: "cluster",
      version: POSTGRES_VERSION,
      // `sst dev` links the processes to this local server instead of RDS.
      dev: {
        username: "postgres",
        password: "password",
        database: "cluster",
        host: "127.0.0.1",
        port: 5435,
      },
      transform: groups && {
        // Only the manager's and the runners' security groups reach it.
        instance: (args: aws.rds.InstanceArgs): undefined => {
          args.vpcSecurityGroupIds = [groups.database.id];
          return undefined;
        },
        // The server refuses connections without TLS (SST sets rds.force_ssl to 0).
        parameterGroup: (args: aws.rds.ParameterGroupArgs): undefined => {
          args.parameters = $resolve([args.parameters ?? []]).apply(([parameters]) => [
            ...parameters.filter((p) => p.name !== "rds.force_ssl"),
            { name: "rds.force_ssl", value: "1" },
          ]);
          return undefined;
        },
      },
    });
    // Deployed, the manager and the runners verify the database's certificate and name.
    const databaseTls: Record<string, string> = $dev
      ? {}
      : { CLUSTER_STORAGE_SSLMODE: "verify-full", CLUSTER_STORAGE_SSLROOTCERT: IMAGE_RDS_CA };

    const cluster = new sst.aws.Cluster("Cluster", { vpc });

    // Every service runs the same image, built from the repository's Dockerfile.
    const image = { context: ".", dockerfile: "Dockerfile" };

    // ECS's container health check: the process's /healthz (200 while its event loop
    // turns) on its admin port, from inside the container (curl is in the image). A task
    // whose container fails `retries` checks in a row is replaced. Liveness, not readiness:
    // /readyz is 503 while a runner waits for the manager, which a restart would not fix.
    const health = (adminPort: number) => ({
      command: ["CMD-SHELL", `curl -fsS --max-time 2 http://127.0.0.1:${adminPort}/healthz || exit 1`],
      startPeriod: "30 seconds" as const,
      interval: "15 seconds" as const,
      timeout: "5 seconds" as const,
      retries: 3,
    });
    // The admin endpoint of a process (`<section>.admin_port`, `<section>.admin_host`):
    // deployed on all interfaces of the task, so that the Monitoring security group reaches
    // it; in `sst dev` on loopback (the processes' default host).
    const adminEnvironment = (section: string, port: number): Record<string, string> => {
      const prefix = `CLUSTER_${section.toUpperCase()}_ADMIN_`;
      return { [`${prefix}PORT`]: String(port), ...($dev ? {} : { [`${prefix}HOST`]: "0.0.0.0" }) };
    };
    // Every process of the stage: JSON log lines deployed (CloudWatch Logs parses them; the
    // `sst dev` tabs keep text), and the trace settings when the stage or the deploy sets them.
    const observability: Record<string, string> = {
      ...($dev ? {} : { CLUSTER_LOG_FORMAT: "json" }),
      ...(stage.otlpEndpoint ? { CLUSTER_TRACE_OTLP_ENDPOINT: stage.otlpEndpoint } : {}),
      ...(stage.traceSampleRatio !== undefined
        ? { CLUSTER_TRACE_SAMPLE_RATIO: String(stage.traceSampleRatio) }
        : {}),
    };

    // SST has no option for the container stop timeout: set it in the task definition.
    // Deployed, the service's tasks get its own security group instead of the VPC's
    // default one (which admits everything from inside the VPC).
    const serviceTransform = (group: aws.ec2.SecurityGroup | undefined) => ({
      taskDefinition: (args: aws.ecs.TaskDefinitionArgs): undefined => {
        args.containerDefinitions = $jsonParse(args.containerDefinitions).apply(
          (containers: Record<string, unknown>[]) =>
            JSON.stringify(
              containers.map((container) => ({ ...container, stopTimeout: STOP_TIMEOUT_S })),
            ),
        );
        return undefined;
      },
      service: (args: aws.ecs.ServiceArgs): undefined => {
        if (group) {
          args.networkConfiguration = $resolve([args.networkConfiguration, group.id]).apply(
            ([network, id]) =>
              ({
                ...(network as Record<string, unknown>),
                securityGroups: [id],
              }) as aws.types.input.ecs.ServiceNetworkConfiguration,
          );
        }
        return undefined;
      },
    });
    const capacity = stage.spot ? ("spot" as const) : undefined;

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
      capacity,
      link: [database, keys.manager, trust],
      environment: {
        CLUSTER_CLUSTER_STORAGE: "postgres",
        CLUSTER_MANAGER_PORT: String(MANAGER_PORT),
        ...databaseTls,
        ...adminEnvironment("manager", MANAGER_ADMIN_PORT),
        ...observability,
      },
      command: imageCommand("cluster-manager", "manager.host=0.0.0.0"),
      health: health(MANAGER_ADMIN_PORT),
      dev: { command: devCommand("cluster-manager") },
      transform: serviceTransform(groups?.manager),
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
      capacity,
      link: [shardManager, keys.proxy, trust, effectRpcToken],
      environment: {
        CLUSTER_PROXY_PORT: String(PROXY_PORT),
        CLUSTER_PROXY_EFFECT_PORT: String(EFFECT_PORT),
        ...adminEnvironment("proxy", PROXY_ADMIN_PORT),
        ...observability,
      },
      command: imageCommand("cluster-proxy", "proxy.host=0.0.0.0", "proxy.effect_host=0.0.0.0"),
      health: health(PROXY_ADMIN_PORT),
      scaling: {
        min: 1,
        max: 5,
        cpuUtilization: 70,
        memoryUtilization: 70,
      },
      dev: { command: devCommand("cluster-proxy") },
      transform: serviceTransform(groups?.proxy),
    });

    const proxyServer = new sst.Linkable("ProxyServer", {
      properties: {
        host: $dev ? "127.0.0.1" : proxy.service,
        port: PROXY_PORT,
      },
    });

    // A TypeScript function that calls the entities through the Effect RPC listener links
    // [effectRpc, effectRpcToken] (Resource.EffectRpc.host/port, Resource.EffectRpcToken.value)
    // and runs in the VPC with the Api security group, the one the proxies admit.
    const effectRpc = new sst.Linkable("EffectRpc", {
      properties: {
        host: $dev ? "127.0.0.1" : proxy.service,
        port: EFFECT_PORT,
      },
    });

    // Four runners share one task (one network address, four ports); each advertises the
    // task's private IP, which the runner reads from ECS_CONTAINER_METADATA_URI_V4.
    new sst.aws.Service("Runner", {
      cluster,
      cpu: "1 vCPU",
      memory: "2 GB",
      capacity,
      link: [database, shardManager, keys.runner, trust],
      containers: RUNNER_PORTS.map((port, index) => ({
        name: `runner-${index + 1}`,
        image,
        environment: {
          CLUSTER_CLUSTER_STORAGE: "postgres",
          CLUSTER_RUNNER_NAME: `runner-${index + 1}`,
          CLUSTER_RUNNER_PORT: String(port),
          ...databaseTls,
          ...adminEnvironment("runner", RUNNER_ADMIN_PORTS[index]),
          ...observability,
        },
        command: imageCommand("cluster-runner", "runner.host=0.0.0.0", `runner.plugins=${IMAGE_PLUGINS}`),
        health: health(RUNNER_ADMIN_PORTS[index]),
        dev: { command: devCommand("cluster-runner", `runner.plugins=${LOCAL_PLUGINS}`) },
      })),
      transform: serviceTransform(groups?.runner),
    });

    // `sst dev` only: the HTTP gateway that serves what the Lambda serves when deployed.
    // What the HTTP side gets, in the Lambda and in the local gateway alike.
    const httpLinks = [keys.client, trust, ...(gatewayToken ? [gatewayToken] : [])];
    const exposeEnvironment: Record<string, string> = stage.expose
      ? { CLUSTER_GATEWAY_EXPOSE: stage.expose }
      : {};
    new sst.x.DevCommand("Gateway", {
      link: [proxyServer, ...httpLinks],
      environment: {
        CLUSTER_GATEWAY_PORT: String(GATEWAY_PORT),
        ...adminEnvironment("gateway", GATEWAY_ADMIN_PORT),
        ...observability,
        ...exposeEnvironment,
      },
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
        effectRpc: `127.0.0.1:${EFFECT_PORT}`,
      };
    }

    // Fail with a clear message rather than a Lambda that cannot start.
    if (!fs.existsSync(path.join($cli.paths.root, LAMBDA_BUNDLE, LAMBDA_HANDLER))) {
      throw new Error(
        `${LAMBDA_BUNDLE}/${LAMBDA_HANDLER} is missing: build it first (scripts/dev build), then run sst again`,
      );
    }

    // A custom runtime does not read SST's encrypted link file (resource.enc, read by SST's
    // SDKs), so the linked secrets are also handed to the bootstrap as the config keys
    // security.key, security.trust and gateway.bearer_token.
    const tokenEnvironment: Record<string, $util.Output<string>> = gatewayToken
      ? { CLUSTER_GATEWAY_BEARER_TOKEN: gatewayToken.value }
      : {};
    const api = new sst.aws.Function("Api", {
      vpc: { privateSubnets: vpc.privateSubnets, securityGroups: [groups!.api.id] },
      runtime: "provided.al2023",
      architecture: "x86_64",
      bundle: LAMBDA_BUNDLE,
      handler: LAMBDA_HANDLER,
      url: { authorization: stage.urlAuth === "token" ? "none" : "iam" },
      memory: "512 MB",
      timeout: "30 seconds",
      link: httpLinks,
      environment: {
        CLUSTER_GATEWAY_PROXY: $interpolate`${proxy.service}:${PROXY_PORT}`,
        CLUSTER_SECURITY_KEY: keys.client.value,
        CLUSTER_SECURITY_TRUST: trust.value,
        ...tokenEnvironment,
        ...exposeEnvironment,
      },
    });

    return {
      api: api.url,
      apiAuth: stage.urlAuth,
      manager: $interpolate`${manager.service}:${MANAGER_PORT}`,
      proxy: $interpolate`${proxy.service}:${PROXY_PORT}`,
      effectRpc: $interpolate`${proxy.service}:${EFFECT_PORT}`,
      // Attach it to a metrics scraper or OTLP collector in the VPC (docs/deploy.md).
      monitoringSecurityGroup: groups!.monitoring.id,
    };
  },
});

// The security groups of the deployed services: each admits only its own ports, only from
// the security groups of the services that call it. The tasks' egress stays open (image
// pulls, logs, AWS APIs); the app's functions (the Api group) may only reach the proxies.
function securityGroups(vpc: sst.aws.Vpc) {
  const group = (name: string, description: string) =>
    new aws.ec2.SecurityGroup(`${name}SecurityGroup`, { vpcId: vpc.id, description });
  const groups = {
    manager: group("Manager", "cluster-manager: 8080 from runners and proxies"),
    runner: group("Runner", "cluster-runner: 34431-34434 from proxies, runners and the manager"),
    // It also admits the Effect RPC port: AWS cannot edit a group's description in place,
    // and a new one would replace the group under the running tasks and the Lambda.
    proxy: group("Proxy", "cluster-proxy: 3333 from the Lambda"),
    api: group("Api", "the Lambda: no ingress, egress to the proxies only"),
    database: group("Database", "PostgreSQL: 5432 from the manager and the runners"),
    // For what the operator runs in the VPC to watch the cluster (a Prometheus or ADOT
    // collector, a bastion for the dashboard): the only group the admin ports admit. (The
    // service groups keep their descriptions: a new one would replace the group.)
    monitoring: group(
      "Monitoring",
      "scrapers and collectors: reach the admin ports 9090-9096, OTLP/HTTP 4318 from the services",
    ),
  };
  const allow = (
    name: string,
    to: aws.ec2.SecurityGroup,
    from: aws.ec2.SecurityGroup,
    ports: [number, number],
  ) =>
    new aws.vpc.SecurityGroupIngressRule(name, {
      securityGroupId: to.id,
      referencedSecurityGroupId: from.id,
      ipProtocol: "tcp",
      fromPort: ports[0],
      toPort: ports[1],
    });
  const runnerPorts: [number, number] = [RUNNER_PORTS[0], RUNNER_PORTS[RUNNER_PORTS.length - 1]];
  allow("ManagerFromRunner", groups.manager, groups.runner, [MANAGER_PORT, MANAGER_PORT]);
  allow("ManagerFromProxy", groups.manager, groups.proxy, [MANAGER_PORT, MANAGER_PORT]);
  allow("RunnerFromProxy", groups.runner, groups.proxy, runnerPorts);
  allow("RunnerFromRunner", groups.runner, groups.runner, runnerPorts);
  allow("RunnerFromManager", groups.runner, groups.manager, runnerPorts);
  allow("ProxyFromApi", groups.proxy, groups.api, [PROXY_PORT, PROXY_PORT]);
  allow("ProxyEffectFromApi", groups.proxy, groups.api, [EFFECT_PORT, EFFECT_PORT]);
  allow("DatabaseFromManager", groups.database, groups.manager, [POSTGRES_PORT, POSTGRES_PORT]);
  allow("DatabaseFromRunner", groups.database, groups.runner, [POSTGRES_PORT, POSTGRES_PORT]);
  // The admin endpoints (/metrics, the manager's dashboard) from the Monitoring group only;
  // ECS's health checks run inside the task and need no rule.
  const runnerAdminPorts: [number, number] = [
    RUNNER_ADMIN_PORTS[0],
    RUNNER_ADMIN_PORTS[RUNNER_ADMIN_PORTS.length - 1],
  ];
  allow("ManagerAdminFromMonitoring", groups.manager, groups.monitoring, [MANAGER_ADMIN_PORT, MANAGER_ADMIN_PORT]);
  allow("ProxyAdminFromMonitoring", groups.proxy, groups.monitoring, [PROXY_ADMIN_PORT, PROXY_ADMIN_PORT]);
  allow("RunnerAdminFromMonitoring", groups.runner, groups.monitoring, runnerAdminPorts);
  // A collector in the Monitoring group receives the services' spans (trace.otlp_endpoint).
  allow("MonitoringOtlpFromManager", groups.monitoring, groups.manager, [OTLP_HTTP_PORT, OTLP_HTTP_PORT]);
  allow("MonitoringOtlpFromProxy", groups.monitoring, groups.proxy, [OTLP_HTTP_PORT, OTLP_HTTP_PORT]);
  allow("MonitoringOtlpFromRunner", groups.monitoring, groups.runner, [OTLP_HTTP_PORT, OTLP_HTTP_PORT]);
  for (const [name, g] of [
    ["Manager", groups.manager],
    ["Runner", groups.runner],
    ["Proxy", groups.proxy],
    // Open like the tasks': a collector forwards to CloudWatch, Amazon Managed Prometheus,
    // X-Ray (AWS APIs) besides scraping the admin ports.
    ["Monitoring", groups.monitoring],
  ] as const) {
    new aws.vpc.SecurityGroupEgressRule(`${name}Egress`, {
      securityGroupId: g.id,
      cidrIpv4: "0.0.0.0/0",
      ipProtocol: "-1",
    });
  }
  for (const [name, port] of [
    ["ApiToProxy", PROXY_PORT],
    ["ApiToProxyEffect", EFFECT_PORT],
  ] as const) {
    new aws.vpc.SecurityGroupEgressRule(name, {
      securityGroupId: groups.api.id,
      referencedSecurityGroupId: groups.proxy.id,
      ipProtocol: "tcp",
      fromPort: port,
      toPort: port,
    });
  }
  return groups;
}
