// Direct mode: the manager's assignment snapshots say which runner owns an entity's shard,
// and requests go straight to that runner (no proxy hop). The manager lets only runner,
// proxy and admin keys subscribe, and runners admit only proxy, runner and admin keys, so
// this mode needs one of those (docs/protocol.md "Permissions").
import type { Role } from "./credentials.js";
import { ClusterError } from "./errors.js";
import type { Connection } from "./connection.js";
import type { Envelope } from "./frame.js";
import { type AssignmentSnapshot, ErrorCode, Kind } from "./protocol.js";
import { shardFor } from "./shard.js";

type Open = (
  address: string,
  serverRoles: readonly Role[],
  onPush?: (envelope: Envelope) => void,
  onClose?: (error: ClusterError) => void,
) => Promise<Connection>;

interface Route {
  connection: Connection;
  lost(): void;
}

export class DirectRouter {
  private snapshot: AssignmentSnapshot | null = null;
  private manager: Promise<Connection> | null = null;
  private runners = new Map<string, Promise<Connection>>();
  private waiters: (() => void)[] = [];
  private closed = false;

  constructor(private readonly options: { manager: string; open: Open }) {}

  /** The latest snapshot, subscribing first when there is none. */
  async assignments(deadline: number): Promise<AssignmentSnapshot> {
    for (;;) {
      await this.managerRoute(deadline);
      if (this.snapshot) return this.snapshot;
      await this.nextSnapshot(deadline);
      if (Date.now() >= deadline && !this.snapshot)
        throw new ClusterError(ErrorCode.Unavailable, `no assignments from the manager ${this.options.manager} in time`);
    }
  }

  async managerRoute(deadline: number): Promise<Route> {
    if (this.closed) throw new ClusterError(ErrorCode.Unavailable, "the client is closed");
    this.manager ??= this.subscribe().catch((error) => {
      this.manager = null;
      throw error;
    });
    const remaining = deadline - Date.now();
    const connection = await withDeadline(this.manager, remaining, `the manager ${this.options.manager}`);
    return { connection, lost: () => (this.manager = null) };
  }

  /** The connection to the runner owning the entity's shard, waiting for an owner. */
  async route(entityType: string, entityId: string, deadline: number, signal: AbortSignal | undefined): Promise<Route> {
    for (;;) {
      if (signal?.aborted) throw new ClusterError(ErrorCode.Cancelled, "the call was cancelled by the caller");
      const snapshot = await this.assignments(deadline);
      const type = snapshot.entity_types.find((t) => t.name === entityType);
      if (!type) throw new ClusterError(ErrorCode.UnknownEntityType, `no runner serves entity type '${entityType}'`);
      const group = snapshot.groups.find((g) => g.group === (type.group || "default"));
      const owner = group && group.shards > 0 ? group.owners[shardFor(entityId, group.shards) - 1] : undefined;
      if (owner) {
        const connection = await this.runner(owner, deadline).catch(() => null);
        if (connection?.open) return { connection, lost: () => this.runners.delete(owner) };
        this.runners.delete(owner);
      }
      if (Date.now() >= deadline)
        throw new ClusterError(ErrorCode.NoRunner, `no runner owns the shard of ${entityType}/${entityId}`);
      await this.nextSnapshot(Math.min(deadline, Date.now() + 200));
    }
  }

  get runnerConnections(): number {
    return this.runners.size;
  }

  /** A retriable answer: the next attempt waits briefly for a newer snapshot. */
  stale(_entityType: string, _entityId: string): void {}

  close(): void {
    this.closed = true;
    void this.manager?.then((c) => c.close(), () => {});
    for (const runner of this.runners.values()) void runner.then((c) => c.close(), () => {});
    this.runners.clear();
  }

  private runner(address: string, deadline: number): Promise<Connection> {
    let connection = this.runners.get(address);
    if (!connection) {
      connection = this.options.open(address, ["runner"], undefined, () => {
        if (this.runners.get(address) === connection) this.runners.delete(address);
      });
      connection.catch(() => this.runners.delete(address));
      this.runners.set(address, connection);
    }
    return withDeadline(connection, deadline - Date.now(), `runner ${address}`);
  }

  private async subscribe(): Promise<Connection> {
    const connection = await this.options.open(
      this.options.manager,
      ["manager"],
      (envelope) => {
        if (envelope.kind !== Kind.assignments) return;
        this.snapshot = envelope.fields as unknown as AssignmentSnapshot;
        for (const wake of this.waiters.splice(0)) wake();
      },
      () => (this.manager = null),
    );
    const reply = await new Promise<{ code: number; message: string; payload: Uint8Array }>((resolve, reject) =>
      connection.send(Kind.subscribeAssignments, {}, { reply: resolve, lost: reject }),
    );
    if (reply.code !== ErrorCode.Ok) {
      connection.close();
      throw new ClusterError(reply.code, `subscribing to the manager's assignments: ${reply.message}`);
    }
    return connection;
  }

  private nextSnapshot(deadline: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  if (ms <= 0) return Promise.reject(new ClusterError(ErrorCode.Unavailable, `${what} is not reachable in time`));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new ClusterError(ErrorCode.Unavailable, `${what} is not reachable in time`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}
