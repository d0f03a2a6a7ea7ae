// The client: calls and streams through one or more proxies (failover), or straight to the
// runner that owns the entity (direct mode), over multiplexed connections.
import { type Credentials, loadCredentials, type Role } from "./credentials.js";
import { ClusterError, fromReply } from "./errors.js";
import { decodePayload, encodePayload } from "./frame.js";
import { Connection, type PendingCall } from "./connection.js";
import { DirectRouter } from "./direct.js";
import {
  type AssignmentSnapshot,
  DEFAULT_STREAM_CREDIT,
  ErrorCode,
  isRetriable,
  Kind,
  MAX_STREAM_CREDIT,
  type ReplyFields,
  type RequestFields,
} from "./protocol.js";
import { CallStream } from "./stream.js";
import type { AnyDecl, EntityClient, EntityDef } from "./entity.js";

export interface ClientOptions {
  /**
   * Proxies (host:port), tried in order; a lost or unreachable one is left for the next.
   * Default: $CLUSTER_PROXY_ADDRESS, else 127.0.0.1:3333 (the proxy of `scripts/dev up`).
   */
  proxies?: string[];
  /**
   * How to authenticate. Default: `loadCredentials()` (the environment, then
   * ./.local/credentials). `null`: no authentication (servers with `security.auth = false`).
   */
  credentials?: Credentials | null;
  /** Direct mode: no proxy; the manager's assignments say which runner to call. */
  direct?: { manager: string };
  /** hello's name, in the servers' logs. */
  name?: string;
  /** Deadline of a call without its own `timeoutMs` (default 10000). */
  timeoutMs?: number;
  connectTimeoutMs?: number;
  /** Reconnection backoff: the first wait and the longest (default 50 and 2000 ms). */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Decode 64-bit integers of replies as bigint (default: number, exact up to 2^53). */
  useBigInt64?: boolean;
  maxFrameBytes?: number;
}

export interface CallOptions {
  /** The call's deadline in ms (sent as `timeout_ms`; for streams it bounds each wait). */
  timeoutMs?: number;
  /** Aborting interrupts the request; the call rejects with a Cancelled ClusterError. */
  signal?: AbortSignal;
  /** Deduplication key of a persisted RPC: a retry with it gets the stored reply. */
  primaryKey?: string;
  /** Persisted RPCs: do not run before this time. */
  deliverAt?: Date | number;
  /** Marks the request persisted (informational: the runner decides from the declaration). */
  persisted?: boolean;
}

export interface StreamOptions extends Omit<CallOptions, "primaryKey" | "deliverAt" | "persisted"> {
  /** Items the callee may send before the consumer pulls any (default 32, at most 65536). */
  credit?: number;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));

function cancelledError(signal: AbortSignal): ClusterError {
  const reason = signal.reason instanceof Error ? signal.reason.message : "aborted";
  return new ClusterError(ErrorCode.Cancelled, `the call was cancelled by the caller (${reason})`, {
    cause: signal.reason,
  });
}

// Time the proxy gets past a call's deadline to answer DeadlineExceeded itself, so the
// caller hears the cluster's reason rather than a local timeout.
const deadlineGraceMs = 1000;

/** The wire target of one attempt: a connection and how to undo its request. */
interface Route {
  connection: Connection;
  /** The connection was lost under the request: remember it for the next attempt. */
  lost(): void;
}

export class Client {
  private readonly proxies: string[];
  private readonly credentials: Credentials | null;
  private readonly options: ClientOptions;
  private readonly timeoutMs: number;
  private proxyIndex = 0;
  private connection: Connection | null = null;
  private connecting: Promise<Connection> | null = null;
  private backoffMs: number;
  private closed = false;
  private readonly direct: DirectRouter | null;

  constructor(options: ClientOptions = {}) {
    this.options = options;
    this.proxies = options.proxies ?? [process.env.CLUSTER_PROXY_ADDRESS || "127.0.0.1:3333"];
    if (this.proxies.length === 0 && !options.direct) throw new Error("no proxy address given");
    this.credentials = options.credentials === undefined ? loadCredentials() : options.credentials;
    this.timeoutMs = options.timeoutMs ?? 10000;
    this.backoffMs = options.backoff?.initialMs ?? 50;
    this.direct = options.direct
      ? new DirectRouter({
          manager: options.direct.manager,
          open: (address, roles, onPush, onClose) => this.openConnection(address, roles, onPush, onClose),
        })
      : null;
  }

  /** A typed handle on one entity: `client.entity(Greeter, "Test").Greet({name: "John"})`. */
  entity<N extends string, R extends Record<string, AnyDecl>>(def: EntityDef<N, R>, id: string): EntityClient<R> {
    const out: Record<string, unknown> = {};
    for (const [rpc, decl] of Object.entries(def.rpcs as Record<string, AnyDecl>)) {
      out[rpc] =
        decl.kind === "stream"
          ? (request: unknown, opts?: StreamOptions) => this.stream(def.name, id, rpc, request, opts)
          : (request: unknown, opts?: CallOptions) =>
              this.call(def.name, id, rpc, request, { persisted: decl.persisted, ...opts });
    }
    return out as EntityClient<R>;
  }

  /** Calls an RPC; resolves with its decoded reply or rejects with a ClusterError. */
  async call<Reply = unknown>(
    entityType: string,
    entityId: string,
    rpc: string,
    request: unknown,
    options: CallOptions = {},
  ): Promise<Reply> {
    const reply = await this.request(entityType, entityId, rpc, request, options, false);
    return decodePayload<Reply>(reply.payload, this.options.useBigInt64);
  }

  /**
   * Fire and forget (`discard`): resolves once the cluster accepted the request (a persisted
   * one: once stored); its outcome is not sent back.
   */
  async discard(entityType: string, entityId: string, rpc: string, request: unknown, options: CallOptions = {}): Promise<void> {
    await this.request(entityType, entityId, rpc, request, options, true);
  }

  /** The cluster's assignment snapshot, as the proxy (or, in direct mode, the manager) has it. */
  async status(options: { timeoutMs?: number } = {}): Promise<AssignmentSnapshot> {
    const deadline = Date.now() + (options.timeoutMs ?? this.timeoutMs);
    const route = this.direct ? await this.direct.managerRoute(deadline) : await this.proxyRoute(deadline, undefined);
    const reply = await new Promise<ReplyFields>((resolve, reject) => {
      route.connection.send(Kind.getStatus, {}, { reply: resolve, lost: reject });
    });
    if (reply.code !== ErrorCode.Ok) throw fromReply(reply);
    return decodePayload<AssignmentSnapshot>(reply.payload);
  }

  /** Calls a streaming RPC: iterate the result for its items, then await `.final`. */
  stream<Item = unknown, Final = unknown>(
    entityType: string,
    entityId: string,
    rpc: string,
    request: unknown,
    options: StreamOptions = {},
  ): CallStream<Item, Final> {
    const credit = options.credit ?? DEFAULT_STREAM_CREDIT;
    if (!Number.isInteger(credit) || credit < 1 || credit > MAX_STREAM_CREDIT)
      throw new RangeError(`credit must be an integer from 1 to ${MAX_STREAM_CREDIT}`);
    const decode = (bytes: Uint8Array) => decodePayload<Item>(bytes, this.options.useBigInt64);
    const stream = new CallStream<Item, Final>(credit, decode);
    void this.runStream(stream, entityType, entityId, rpc, request, options, credit);
    return stream;
  }

  /** Open connections to proxies (at most one) or, in direct mode, to runners. */
  get connectionCount(): number {
    if (this.direct) return this.direct.runnerConnections;
    return this.connection?.open ? 1 : 0;
  }

  /** Closes every connection; calls in flight fail with Unavailable. */
  close(): void {
    this.closed = true;
    this.connection?.close();
    this.connection = null;
    this.direct?.close();
  }

  // --- internals --------------------------------------------------------------------------

  private fields(
    entityType: string,
    entityId: string,
    rpc: string,
    payload: Uint8Array,
    options: CallOptions & { credit?: number },
    discard: boolean,
    timeoutMs: number,
  ): RequestFields {
    const fields: RequestFields = {
      entity_type: entityType,
      entity_id: entityId,
      rpc,
      payload,
      persisted: options.persisted ?? false,
      timeout_ms: Math.max(1, Math.ceil(timeoutMs)),
    };
    if (options.primaryKey !== undefined) fields.primary_key = options.primaryKey;
    if (options.deliverAt !== undefined)
      fields.deliver_at_ms = options.deliverAt instanceof Date ? options.deliverAt.getTime() : options.deliverAt;
    if (discard) fields.discard = true;
    if (options.credit !== undefined) fields.credit = options.credit;
    return fields;
  }

  private async request(
    entityType: string,
    entityId: string,
    rpc: string,
    request: unknown,
    options: CallOptions,
    discard: boolean,
  ): Promise<ReplyFields> {
    const { signal } = options;
    if (signal?.aborted) throw cancelledError(signal);
    const payload = encodePayload(request ?? {});
    const deadline = Date.now() + (options.timeoutMs ?? this.timeoutMs);
    let lastError: ClusterError | null = null;
    for (let attempt = 0; ; ++attempt) {
      const remaining = deadline - Date.now();
      if (remaining <= 0)
        throw lastError ?? new ClusterError(ErrorCode.DeadlineExceeded, `no reply within ${options.timeoutMs ?? this.timeoutMs} ms`);
      const route = await this.route(entityType, entityId, deadline, signal);
      const fields = this.fields(entityType, entityId, rpc, payload, options, discard, remaining);
      const outcome = await this.attempt(route, fields, remaining, signal);
      if ("reply" in outcome) {
        const reply = outcome.reply;
        if (reply.code === ErrorCode.Ok) return reply;
        const error = fromReply(reply);
        // The request did not run: another proxy (or, directly, the shard's new owner) may take it.
        if (!isRetriable(reply.code) || Date.now() >= deadline) throw error;
        lastError = error;
        this.direct?.stale(entityType, entityId);
        await sleep(Math.min(this.retryDelay(attempt), deadline - Date.now()));
        continue;
      }
      // The connection went away with the request on it: whether it ran is unknown, so only
      // a request with a primary key (deduplicated) is sent again.
      route.lost();
      if (options.primaryKey === undefined) throw outcome.lost;
      lastError = outcome.lost;
    }
  }

  private retryDelay(attempt: number): number {
    const max = this.options.backoff?.maxMs ?? 2000;
    const base = Math.min(max, (this.options.backoff?.initialMs ?? 50) * 2 ** attempt);
    return base / 2 + Math.random() * (base / 2);
  }

  /** One request on one connection: its reply, or the connection's loss. */
  private attempt(
    route: Route,
    fields: RequestFields,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<{ reply: ReplyFields } | { lost: ClusterError }> {
    return new Promise((resolve, reject) => {
      const connection = route.connection;
      let id = 0;
      let settled = false;
      const settle = () => {
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const call: PendingCall = {
        reply: (reply) => {
          if (settled) return;
          settle();
          resolve({ reply });
        },
        lost: (error) => {
          if (settled) return;
          settle();
          resolve({ lost: error });
        },
      };
      const onAbort = () => {
        if (settled) return;
        settle();
        connection.interrupt(id);
        connection.forget(id);
        reject(cancelledError(signal!));
      };
      const timer = setTimeout(() => {
        if (settled) return;
        settle();
        connection.interrupt(id);
        connection.forget(id);
        reject(new ClusterError(ErrorCode.DeadlineExceeded, `no reply from ${connection.address} within ${fields.timeout_ms} ms`));
      }, timeoutMs + deadlineGraceMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        id = connection.send(Kind.request, fields as unknown as Record<string, unknown>, call);
      } catch (error) {
        settle();
        resolve({ lost: error as ClusterError });
      }
    });
  }

  private async runStream<Item, Final>(
    stream: CallStream<Item, Final>,
    entityType: string,
    entityId: string,
    rpc: string,
    request: unknown,
    options: StreamOptions,
    credit: number,
  ): Promise<void> {
    const { signal } = options;
    const fail = (error: ClusterError) => stream.end({ ok: false, error });
    if (signal?.aborted) return fail(cancelledError(signal));
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const payload = encodePayload(request ?? {});
    const deadline = Date.now() + timeoutMs;
    let lastError: ClusterError | null = null;
    for (let attempt = 0; ; ++attempt) {
      if (stream.done) return;
      if (Date.now() >= deadline)
        return fail(lastError ?? new ClusterError(ErrorCode.DeadlineExceeded, `no item within ${timeoutMs} ms`));
      let route: Route;
      try {
        route = await this.route(entityType, entityId, deadline, signal);
      } catch (error) {
        return fail(error as ClusterError);
      }
      if (stream.done) return;
      const fields = this.fields(entityType, entityId, rpc, payload, { ...options, credit }, false, timeoutMs);
      const result = await this.streamAttempt(route.connection, stream, fields, timeoutMs, signal);
      if (result === "done") return;
      if ("lost" in result) {
        route.lost();
        return fail(result.lost);
      }
      // A retriable reply before any item: the request did not run.
      lastError = result.retry;
      this.direct?.stale(entityType, entityId);
      await sleep(Math.min(this.retryDelay(attempt), deadline - Date.now()));
    }
  }

  private streamAttempt<Item, Final>(
    connection: Connection,
    stream: CallStream<Item, Final>,
    fields: RequestFields,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<"done" | { lost: ClusterError } | { retry: ClusterError }> {
    return new Promise((resolve) => {
      let id = 0;
      let timer: NodeJS.Timeout | undefined;
      let finished = false;
      const finish = (result: "done" | { lost: ClusterError } | { retry: ClusterError }) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        stream.onProgress = null;
        resolve(result);
      };
      // The spec's gap rule: timeout_ms bounds each wait for the callee, not time it spends
      // held back by a consumer that has not returned credit.
      const arm = () => {
        clearTimeout(timer);
        if (stream.done) return finish("done");
        if (stream.creditOutstanding <= 0) return;
        timer = setTimeout(() => {
          connection.interrupt(id);
          connection.forget(id);
          stream.end({
            ok: false,
            error: new ClusterError(ErrorCode.DeadlineExceeded, `no item or reply from ${connection.address} within ${timeoutMs} ms`),
          });
          finish("done");
        }, timeoutMs + deadlineGraceMs);
      };
      const onAbort = () => {
        connection.interrupt(id);
        connection.forget(id);
        stream.end({ ok: false, error: cancelledError(signal!) });
        finish("done");
      };
      const call: PendingCall = {
        reply: (reply) => {
          if (finished) return;
          if (reply.code === ErrorCode.Ok) {
            let value: Final;
            try {
              value = decodePayload<Final>(reply.payload, this.options.useBigInt64);
            } catch (error) {
              stream.end({ ok: false, error: new ClusterError(ErrorCode.BadPayload, `the final reply does not decode: ${(error as Error).message}`) });
              return finish("done");
            }
            stream.end({ ok: true, value: (value ?? null) as Final });
            return finish("done");
          }
          const error = fromReply(reply);
          if (isRetriable(reply.code) && stream.itemsReceived === 0) return finish({ retry: error });
          stream.end({ ok: false, error });
          finish("done");
        },
        chunk: (items) => {
          if (!finished) stream.pushItems(items);
        },
        lost: (error) => finish({ lost: error }),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        id = connection.send(Kind.request, fields as unknown as Record<string, unknown>, call);
      } catch (error) {
        return finish({ lost: error as ClusterError });
      }
      stream.attach({
        ack: (credit) => connection.ack(id, credit),
        cancel: () => {
          connection.interrupt(id);
          connection.forget(id);
          finish("done");
        },
      });
      stream.onProgress = arm;
      arm();
    });
  }

  private async route(entityType: string, entityId: string, deadline: number, signal: AbortSignal | undefined): Promise<Route> {
    if (this.direct) return this.direct.route(entityType, entityId, deadline, signal);
    return this.proxyRoute(deadline, signal);
  }

  private openConnection(
    address: string,
    serverRoles: readonly Role[],
    onPush?: Parameters<typeof Connection.open>[0]["onPush"],
    onClose?: (error: ClusterError) => void,
  ): Promise<Connection> {
    return Connection.open({
      address,
      credentials: this.credentials,
      serverRoles,
      name: this.options.name ?? "ts-client",
      connectTimeoutMs: this.options.connectTimeoutMs,
      maxFrameBytes: this.options.maxFrameBytes,
      onPush,
      onClose,
    });
  }

  /** The open proxy connection, connecting (and failing over, with backoff) when there is none. */
  private async proxyRoute(deadline: number, signal: AbortSignal | undefined): Promise<Route> {
    let lastError: ClusterError | null = null;
    for (;;) {
      if (this.closed) throw new ClusterError(ErrorCode.Unavailable, "the client is closed");
      if (signal?.aborted) throw cancelledError(signal);
      const current = this.connection;
      if (current?.open) return this.routeOf(current);
      this.connecting ??= this.connectRound().finally(() => (this.connecting = null));
      try {
        const connection = await this.connecting;
        return this.routeOf(connection);
      } catch (error) {
        lastError = error as ClusterError;
        // A refusal of these credentials will not change by waiting.
        if (
          lastError.code === ErrorCode.Unauthorized ||
          lastError.code === ErrorCode.Forbidden ||
          lastError.code === ErrorCode.UnsupportedVersion
        )
          throw lastError;
      }
      const wait = Math.min(this.backoffMs, deadline - Date.now());
      if (wait <= 0)
        throw new ClusterError(ErrorCode.Unavailable, `no proxy reachable (${lastError.detail})`, { cause: lastError });
      await sleep(wait / 2 + Math.random() * (wait / 2));
      this.backoffMs = Math.min(this.backoffMs * 2, this.options.backoff?.maxMs ?? 2000);
    }
  }

  private routeOf(connection: Connection): Route {
    return {
      connection,
      lost: () => {
        if (this.connection === connection) this.connection = null;
      },
    };
  }

  /** Tries each proxy once, starting with the preferred one. */
  private async connectRound(): Promise<Connection> {
    let lastError: ClusterError | null = null;
    for (let i = 0; i < this.proxies.length; ++i) {
      const index = (this.proxyIndex + i) % this.proxies.length;
      const address = this.proxies[index]!;
      try {
        let opened: Connection | null = null;
        const connection = await this.openConnection(address, ["proxy"], undefined, () => {
          if (opened !== null && this.connection === opened) {
            this.connection = null;
            // Next time start with the proxy after the one that went away.
            this.proxyIndex = (index + 1) % this.proxies.length;
          }
        });
        if (this.closed) {
          connection.close();
          throw new ClusterError(ErrorCode.Unavailable, "the client is closed");
        }
        opened = connection;
        this.connection = connection;
        this.proxyIndex = index;
        this.backoffMs = this.options.backoff?.initialMs ?? 50;
        return connection;
      } catch (error) {
        lastError = error instanceof ClusterError ? error : new ClusterError(ErrorCode.Unavailable, String(error));
        if (lastError.code === ErrorCode.Unauthorized || lastError.code === ErrorCode.UnsupportedVersion) throw lastError;
      }
    }
    throw lastError ?? new ClusterError(ErrorCode.Unavailable, "no proxy address");
  }
}
