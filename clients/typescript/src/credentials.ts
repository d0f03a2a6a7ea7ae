// Keys and trust lists (docs/security.md), found the way clusterctl finds them, so a program
// run next to `scripts/dev up` works without arguments.
import { createPrivateKey, createPublicKey, KeyObject, sign, verify } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export type Role = "manager" | "runner" | "proxy" | "client" | "admin";
const roles: readonly Role[] = ["manager", "runner", "proxy", "client", "admin"];

// DER prefixes of an Ed25519 PKCS#8 private key and SPKI public key around the raw 32 bytes.
const pkcs8Prefix = Buffer.from("302e020100300506032b657004220420", "hex");
const spkiPrefix = Buffer.from("302a300506032b6570032100", "hex");

export class SigningKey {
  private constructor(
    private readonly key: KeyObject,
    readonly publicKey: Uint8Array,
  ) {}

  /** A base64 32-byte Ed25519 seed (what `clusterctl keys init` writes) or a PEM private key. */
  static fromText(text: string): SigningKey {
    const trimmed = text.trim();
    let key: KeyObject;
    if (trimmed.startsWith("-----BEGIN")) {
      key = createPrivateKey(trimmed);
      if (key.asymmetricKeyType !== "ed25519") throw new Error("the private key is not an Ed25519 key");
    } else {
      const seed = Buffer.from(trimmed, "base64");
      if (seed.length !== 32 || seed.toString("base64").replace(/=+$/, "") !== trimmed.replace(/=+$/, ""))
        throw new Error("the private key is neither PEM nor a base64 32-byte Ed25519 seed");
      key = createPrivateKey({ key: Buffer.concat([pkcs8Prefix, seed]), format: "der", type: "pkcs8" });
      seed.fill(0);
    }
    const spki = createPublicKey(key).export({ format: "der", type: "spki" });
    return new SigningKey(key, new Uint8Array(spki.subarray(spki.length - 32)));
  }

  static fromFile(path: string): SigningKey {
    try {
      return SigningKey.fromText(readFileSync(path, "utf8"));
    } catch (error) {
      throw new Error(`${(error as Error).message} (${path})`);
    }
  }

  sign(message: Uint8Array): Uint8Array {
    return new Uint8Array(sign(null, message, this.key));
  }
}

export function verifySignature(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    const key = createPublicKey({ key: Buffer.concat([spkiPrefix, publicKey]), format: "der", type: "spki" });
    return verify(null, message, key, signature);
  } catch {
    return false;
  }
}

/** role=BASE64KEY entries, several per line allowed (commas or blanks), `#` comments. */
export class TrustList {
  readonly entries: { role: Role; key: Uint8Array }[] = [];

  static parse(text: string): TrustList {
    const out = new TrustList();
    text.split("\n").forEach((line, index) => {
      if (line.trim() === "" || line.trim().startsWith("#")) return;
      for (const entry of line.split(/[\s,]+/).filter((e) => e !== "")) {
        const where = `trust list line ${index + 1}: `;
        const eq = entry.indexOf("=");
        if (eq < 0) throw new Error(`${where}expected role=BASE64KEY, got '${entry}'`);
        const role = entry.slice(0, eq) as Role;
        if (!roles.includes(role)) throw new Error(`${where}unknown role '${role}'`);
        const key = Buffer.from(entry.slice(eq + 1), "base64");
        if (key.length !== 32) throw new Error(`${where}the ${role} key is not a base64 32-byte Ed25519 public key`);
        out.entries.push({ role, key: new Uint8Array(key) });
      }
    });
    return out;
  }

  static fromFile(path: string): TrustList {
    try {
      return TrustList.parse(readFileSync(path, "utf8"));
    } catch (error) {
      throw new Error(`${path}: ${(error as Error).message}`);
    }
  }

  roleOf(key: Uint8Array): Role | undefined {
    return this.entries.find((e) => Buffer.compare(Buffer.from(e.key), Buffer.from(key)) === 0)?.role;
  }
}

export type TlsMode = "off" | "on";

/** What a connection authenticates with; `null` credentials mean `security.auth = false`. */
export interface Credentials {
  key: SigningKey;
  trust: TrustList;
  /** The key's role as the trust list has it ("client" for the local client key). */
  role: Role;
  tls: TlsMode;
}

export interface LoadCredentialsOptions {
  /** A credentials folder (`<role>.key`, `trust`, optional `tls`). */
  dir?: string;
  /** The role whose key to prefer in the folder ("client" unless given). */
  role?: Role;
  keyFile?: string;
  trustFile?: string;
  tls?: TlsMode;
  env?: NodeJS.ProcessEnv;
}

function sstValue(env: NodeJS.ProcessEnv, resource: string): string | undefined {
  const text = env[`SST_RESOURCE_${resource}`];
  if (!text) return undefined;
  try {
    const parsed = JSON.parse(text) as { value?: unknown };
    return typeof parsed.value === "string" ? parsed.value : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The key and trust list as clusterctl finds them, first that applies per half:
 * the options; CLUSTER_SECURITY_KEY / _KEY_FILE and CLUSTER_SECURITY_TRUST / _TRUST_FILE;
 * SST links (SST_RESOURCE_Cluster<Role>Key, SST_RESOURCE_ClusterTrust); the folder
 * `dir`, else $CLUSTER_SECURITY_CREDENTIALS_DIR, else ./.local/credentials (the one
 * `scripts/dev up` makes). TLS: the option, CLUSTER_SECURITY_TLS, the folder's `tls` file,
 * else off. Returns null when CLUSTER_SECURITY_AUTH is false, or when nothing is found.
 */
export function loadCredentials(options: LoadCredentialsOptions = {}): Credentials | null {
  const env = options.env ?? process.env;
  const auth = env.CLUSTER_SECURITY_AUTH;
  if (auth === "false" || auth === "0" || auth === "off") return null;
  const wanted: Role = options.role ?? "client";
  const folder = options.dir ?? (env.CLUSTER_SECURITY_CREDENTIALS_DIR || join(".local", "credentials"));

  let key: SigningKey | undefined;
  if (options.keyFile) key = SigningKey.fromFile(options.keyFile);
  else if (env.CLUSTER_SECURITY_KEY) key = SigningKey.fromText(env.CLUSTER_SECURITY_KEY);
  else if (env.CLUSTER_SECURITY_KEY_FILE) key = SigningKey.fromFile(env.CLUSTER_SECURITY_KEY_FILE);
  else {
    const sstName = (r: Role) => `Cluster${r[0]!.toUpperCase()}${r.slice(1)}Key`;
    const linked = [wanted, ...roles].map((r) => sstValue(env, sstName(r))).find((v) => v !== undefined);
    if (linked !== undefined) key = SigningKey.fromText(linked);
    else
      for (const r of [wanted, "client" as const]) {
        const file = join(folder, `${r}.key`);
        if (existsSync(file)) {
          key = SigningKey.fromFile(file);
          break;
        }
      }
  }

  let trust: TrustList | undefined;
  if (options.trustFile) trust = TrustList.fromFile(options.trustFile);
  else if (env.CLUSTER_SECURITY_TRUST) trust = TrustList.parse(env.CLUSTER_SECURITY_TRUST);
  else if (env.CLUSTER_SECURITY_TRUST_FILE) trust = TrustList.fromFile(env.CLUSTER_SECURITY_TRUST_FILE);
  else {
    const linked = sstValue(env, "ClusterTrust");
    if (linked !== undefined) trust = TrustList.parse(linked);
    else if (existsSync(join(folder, "trust"))) trust = TrustList.fromFile(join(folder, "trust"));
  }
  if (!key || !trust) return null;

  const role = trust.roleOf(key.publicKey);
  if (!role) throw new Error("the key is not in the trust list");
  let tls = options.tls ?? (env.CLUSTER_SECURITY_TLS as TlsMode | undefined);
  if (!tls) {
    const file = join(folder, "tls");
    tls = existsSync(file) ? (readFileSync(file, "utf8").trim().split(/\s+/)[0] as TlsMode) : "off";
  }
  if (tls !== "on" && tls !== "off") throw new Error(`TLS mode '${tls}' is neither on nor off`);
  return { key, trust, role, tls };
}
