// Evaluates sst.config.ts outside SST: the TypeScript is transpiled with the `typescript`
// package from node_modules, and the globals SST provides ($config, $app, $dev, $cli,
// $interpolate, $jsonParse, sst.aws.*, sst.Linkable, sst.Secret, sst.x.DevCommand, and the
// few raw `aws.*` resources the config creates) are small stubs that record every component
// and its arguments. Pulumi Outputs are modelled as `Out` values that
// carry a known placeholder. The stubs also enforce the few rules of SST 4.17.1 that a
// config can break without a type error (see .sst/platform/src/components after
// `sst install`): top-level component names are unique regardless of case (link.ts), "app"
// is reserved, names contain no spaces (component.ts), a Service with `containers` takes no
// top-level image/health/environment/... (fargate.ts), and in `sst dev` a Service starts one
// dev command per container named `<Service>[<container>]Dev` (service.ts).

import { createRequire } from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const APP_NAME = "cluster-sst";

const require = createRequire(path.join(ROOT, "package.json"));

/** A Pulumi Output whose value is known (a placeholder for what AWS would assign). */
export class Out {
  constructor(value) {
    this.value = value;
  }
  apply(fn) {
    return new Out(fn(this.value));
  }
  toString() {
    throw new Error("an Output was used as a string: use $interpolate or .apply");
  }
}

/** Replaces every Out inside `value` (arrays and plain objects too) by its value. */
export function resolve(value) {
  if (value instanceof Out) return resolve(value.value);
  if (Array.isArray(value)) return value.map(resolve);
  if (value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolve(v)]));
  }
  return value;
}

let transpiled;
function transpiledConfig() {
  if (transpiled) return transpiled;
  let ts;
  try {
    ts = require("typescript");
  } catch {
    throw new Error("the typescript package is missing: run npm ci (deploy/node-test.sh does)");
  }
  const source = fs.readFileSync(path.join(ROOT, "sst.config.ts"), "utf8");
  const out = ts.transpileModule(source, {
    fileName: "sst.config.ts",
    reportDiagnostics: true,
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
    },
  });
  const errors = (out.diagnostics ?? []).filter((d) => d.category === ts.DiagnosticCategory.Error);
  if (errors.length) {
    throw new Error(
      "sst.config.ts does not parse: " +
        errors.map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n")).join("; "),
    );
  }
  transpiled = out.outputText;
  return transpiled;
}

let evaluations = 0;

/**
 * Runs app() and run() of sst.config.ts as `sst dev` (dev: true) or `sst deploy` would.
 * Returns { app, resources, outputs }; resources are { type, name, args, component }.
 * `root` is what the config sees as the project root ($cli.paths.root).
 */
export async function evaluateConfig({ dev, stage = "ci", root = ROOT, command } = {}) {
  const resources = [];
  const names = new Set();

  function register(type, name, args, component) {
    if (typeof name !== "string" || name.length === 0) throw new Error(`${type}: missing name`);
    if (name.includes(" ")) throw new Error(`Invalid component name "${name}" (${type}): no spaces`);
    const lower = name.toLowerCase();
    if (lower === "app") throw new Error(`Component name "${name}" is reserved`);
    if (names.has(lower)) throw new Error(`Component name ${name} is not unique.`);
    names.add(lower);
    resources.push({ type, name, args, component });
  }

  class Component {
    constructor(type, name, args) {
      this.__name = name;
      this.args = args ?? {};
      register(type, name, this.args, this);
    }
  }

  class Vpc extends Component {
    constructor(name, args = {}) {
      super("sst:aws:Vpc", name, args);
    }
    get id() {
      return new Out(`vpc-${this.__name}`);
    }
    get privateSubnets() {
      return new Out([`subnet-${this.__name}-private-1`, `subnet-${this.__name}-private-2`]);
    }
    get publicSubnets() {
      return new Out([`subnet-${this.__name}-public-1`, `subnet-${this.__name}-public-2`]);
    }
    get securityGroups() {
      return new Out([`sg-${this.__name}-default`]);
    }
  }

  // Runs a `transform.<key>` hook as SST's transform() does: a function edits the args, an
  // object is merged into them. Returns the args as they end up.
  function applyTransform(hook, args, resourceName) {
    if (typeof hook === "function") {
      hook(args, {}, resourceName);
      return args;
    }
    return hook ? { ...args, ...hook } : args;
  }

  class Postgres extends Component {
    constructor(name, args) {
      super("sst:aws:Postgres", name, args);
      if (!args?.vpc) throw new Error(`Postgres ${name}: vpc is required`);
      if (!dev) {
        // As SST 4.17.1's postgres.ts: the engine version (default "17") and the parameter
        // group it creates, each through its transform hook.
        const engineVersion = args.version ?? "17";
        this.instance = resolve(
          applyTransform(args.transform?.instance, {
            engine: "postgres",
            engineVersion,
            dbSubnetGroupName: `${name}SubnetGroup`,
            storageEncrypted: true,
          }, `${name}Instance`),
        );
        this.parameterGroup = resolve(
          applyTransform(args.transform?.parameterGroup, {
            family: `postgres${String(engineVersion).split(".")[0]}`,
            parameters: [
              { name: "rds.force_ssl", value: "0" },
              { name: "rds.logical_replication", value: "1", applyMethod: "pending-reboot" },
            ],
          }, `${name}ParameterGroup`),
        );
      }
    }
  }

  class Secret extends Component {
    constructor(name, placeholder) {
      super("sst:sst:Secret", name, { placeholder });
      if (!/^[A-Z][A-Za-z0-9]*$/.test(name)) {
        throw new Error(`Secret ${name}: names start with a capital letter and hold only letters and digits`);
      }
    }
    get value() {
      return new Out(`secret:${this.__name}`);
    }
  }

  // Raw Pulumi resources (no SST naming rules): recorded, with an `id` Output.
  class Resource {
    constructor(type, name, args) {
      if (typeof name !== "string" || name.length === 0) throw new Error(`${type}: missing name`);
      this.__name = name;
      this.args = args ?? {};
      resources.push({ type, name, args: this.args, component: this });
    }
    get id() {
      return new Out(`${this.__name}-id`);
    }
  }
  const resourceClass = (type) =>
    class extends Resource {
      constructor(name, args) {
        super(type, name, args);
      }
    };

  class Cluster extends Component {
    constructor(name, args) {
      super("sst:aws:Cluster", name, args);
      if (!args?.vpc) throw new Error(`Cluster ${name}: vpc is required`);
    }
  }

  class DevCommand extends Component {
    constructor(name, args = {}) {
      super("sst:sst:DevCommand", name, args);
    }
  }

  class Service extends Component {
    constructor(name, args) {
      super("sst:aws:Service", name, args);
      if (!(args?.cluster instanceof Cluster)) throw new Error(`Service ${name}: cluster must be an sst.aws.Cluster`);
      const topLevel = ["image", "logging", "environment", "environmentFiles", "volumes", "health", "ssm"];
      if (args.containers && topLevel.some((key) => args[key] !== undefined)) {
        throw new Error(
          `Service ${name}: You cannot provide both "containers" and "image", "logging", "environment", "environmentFiles", "volumes", "health" or "ssm".`,
        );
      }
      this.containers = args.containers ?? [
        {
          name,
          image: args.image,
          environment: args.environment,
          command: args.command,
          health: args.health,
          dev: args.dev,
        },
      ];
      if (!dev) {
        // As SST's createTaskDefinition: the container definitions as a JSON string, then
        // the `transform.taskDefinition` hook (a function that edits the args, or an object
        // merged into them).
        let taskArgs = {
          family: `${name}`,
          containerDefinitions: new Out(
            JSON.stringify(
              this.containers.map((c) => ({
                name: c.name,
                image: `${name}Image${c.name}@sha256:0`,
                command: resolve(c.command),
                healthCheck: resolve(c.health),
                environment: Object.entries(resolve(c.environment) ?? {}).map(([k, v]) => ({ name: k, value: v })),
                linuxParameters: { initProcessEnabled: true },
              })),
            ),
          ),
        };
        taskArgs = applyTransform(args.transform?.taskDefinition, taskArgs, `${name}Task`);
        this.taskDefinition = resolve(taskArgs);
        // As SST's service.ts: the ECS service in the VPC's public subnets with the cluster
        // VPC's security groups, then `transform.service`.
        const vpc = args.cluster.args.vpc;
        const serviceArgs = applyTransform(args.transform?.service, {
          name,
          networkConfiguration: {
            assignPublicIp: true,
            subnets: vpc.publicSubnets,
            securityGroups: vpc.securityGroups,
          },
        }, `${name}Service`);
        this.ecsService = resolve(serviceArgs);
      }
      if (dev && args.dev !== false) {
        for (const container of this.containers) {
          const title = this.containers.length === 1 ? name : `${name}${container.name}`;
          new DevCommand(`${title}Dev`, {
            link: args.link,
            dev: { title, autostart: true, ...container.dev },
            environment: { ...container.environment, AWS_REGION: "us-east-1" },
          });
        }
      }
    }
    get service() {
      return new Out(dev ? "dev.sst" : `${this.__name}.${stage}.${APP_NAME}.sst`);
    }
  }

  class Function extends Component {
    constructor(name, args) {
      super("sst:aws:Function", name, args);
      if (!args?.handler) throw new Error(`Function ${name}: handler is required`);
    }
    get url() {
      return new Out(`https://${this.__name.toLowerCase()}.lambda-url.us-east-1.on.aws/`);
    }
  }

  class Linkable extends Component {
    constructor(name, definition) {
      super("sst:sst:Linkable", name, definition);
      if (!definition || typeof definition.properties !== "object") {
        throw new Error(`Linkable ${name}: properties are required`);
      }
    }
    get properties() {
      return resolve(this.args?.properties);
    }
  }

  const globals = {
    $config: (config) => config,
    $dev: dev,
    $app: { name: APP_NAME, stage, removal: "remove", protect: false, providers: {} },
    $cli: {
      command: command ?? (dev ? "dev" : "deploy"),
      rpc: "",
      paths: { home: os.homedir(), root, work: path.join(root, ".sst"), platform: path.join(root, ".sst", "platform") },
      state: { version: {} },
    },
    $interpolate: (strings, ...values) =>
      new Out(strings.reduce((text, part, i) => text + part + (i < values.length ? String(resolve(values[i])) : ""), "")),
    $concat: (...values) => new Out(values.map((v) => String(resolve(v))).join("")),
    $output: (value) => new Out(resolve(value)),
    $resolve: (value) => new Out(resolve(value)),
    $jsonParse: (text) => new Out(JSON.parse(resolve(text))),
    $jsonStringify: (value) => new Out(JSON.stringify(resolve(value))),
    $transform: () => {},
    $asset: (p) => ({ asset: p }),
    sst: {
      aws: { Vpc, Postgres, Cluster, Service, Function },
      Linkable,
      Secret,
      x: { DevCommand },
    },
    aws: {
      ec2: { SecurityGroup: resourceClass("aws:ec2:SecurityGroup") },
      vpc: {
        SecurityGroupIngressRule: resourceClass("aws:vpc:SecurityGroupIngressRule"),
        SecurityGroupEgressRule: resourceClass("aws:vpc:SecurityGroupEgressRule"),
      },
    },
  };

  const saved = {};
  for (const [key, value] of Object.entries(globals)) {
    saved[key] = Object.getOwnPropertyDescriptor(globalThis, key);
    globalThis[key] = value;
  }
  try {
    // A fresh file per evaluation: the module reads the globals when app()/run() run.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sst-config-"));
    const file = path.join(dir, `sst.config.${++evaluations}.mjs`);
    fs.writeFileSync(file, transpiledConfig());
    let config;
    try {
      config = (await import(pathToFileURL(file).href)).default;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const app = config.app({ stage });
    const outputs = resolve(await config.run());
    return { app, resources, outputs };
  } finally {
    for (const [key, descriptor] of Object.entries(saved)) {
      if (descriptor) Object.defineProperty(globalThis, key, descriptor);
      else delete globalThis[key];
    }
  }
}
