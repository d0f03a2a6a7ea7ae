// One connection to a proxy, a runner or the manager: the handshake, then any number of
// requests in flight at once, told apart by id (docs/protocol.md "Ids and multiplexing").
import { randomBytes } from "node:crypto";
import { connect as tcpConnect, isIP, Socket } from "node:net";
import { connect as tlsConnect, TLSSocket } from "node:tls";

import { type Credentials, type Role, verifySignature } from "./credentials.js";
import { ClusterError } from "./errors.js";
import { decodeEnvelope, encodeFrame, type Envelope, FrameReader, ProtocolViolation } from "./frame.js";
import { EXPORTER_LABEL, type HelloAckFields, type HelloFields, transcript } from "./handshake.js";
import { DEFAULT_MAX_FRAME_BYTES, ErrorCode, Kind, PROTOCOL_VERSION, type ReplyFields } from "./protocol.js";

/** What a caller waits on for one id: the final reply, stream items, or the connection's end. */
export interface PendingCall {
  reply(reply: ReplyFields): void;
  chunk?(items: Uint8Array[]): void;
  lost(error: ClusterError): void;
}

export interface ConnectionOptions {
  /** host:port */
  address: string;
  /** null: no authentication (servers with `security.auth = false`). */
  credentials: Credentials | null;
  /** The roles the server may prove (a proxy for calls; runner or manager in direct mode). */
  serverRoles: readonly Role[];
  /** hello's name, shown in the servers' logs. */
  name: string;
  /** hello's role without credentials (with them, the key's role). */
  role?: Role;
  connectTimeoutMs?: number;
  maxFrameBytes?: number;
  /** Pushes (id 0), e.g. the manager's `assignments`. */
  onPush?(envelope: Envelope): void;
  onClose?(error: ClusterError): void;
}

function parseAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(":");
  const port = Number(address.slice(at + 1));
  if (at <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535)
    throw new ClusterError(ErrorCode.InvalidRequest, `'${address}' is not host:port`);
  let host = address.slice(0, at);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  return { host, port };
}

const empty = new Uint8Array(0);

function bin(value: unknown): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") return new Uint8Array(Buffer.from(value, "utf8"));
  return empty;
}

function str(value: unknown): string {
  return typeof value === "string" ? value : "";
}

function uint(value: unknown): number {
  return typeof value === "number" ? value : 0;
}

export function replyOf(fields: Record<string, unknown>): ReplyFields {
  return { code: uint(fields.code), error: str(fields.error), message: str(fields.message), payload: bin(fields.payload) };
}

// No context, as the servers call SSL_export_keying_material (@types/node wants one; Node
// does not).
function exporterValue(tls: TLSSocket): Uint8Array {
  const exportKeyingMaterial = tls.exportKeyingMaterial as unknown as (this: TLSSocket, length: number, label: string) => Buffer;
  return new Uint8Array(exportKeyingMaterial.call(tls, 32, EXPORTER_LABEL));
}

export class Connection {
  readonly address: string;
  private socket: Socket;
  private reader: FrameReader;
  private pending = new Map<number, PendingCall>();
  private nextId = 2; // 0 is hello's, 1 auth's
  private closedWith: ClusterError | null = null;
  private handshakeWaiter: ((envelope: Envelope | ClusterError) => void) | null = null;
  private handshakeQueue: (Envelope | ClusterError)[] = [];
  private established = false;
  /** The server's hello_ack name and proven role. */
  peerName = "";
  peerRole = "";

  private constructor(
    private readonly options: ConnectionOptions,
    socket: Socket,
  ) {
    this.address = options.address;
    this.socket = socket;
    this.reader = new FrameReader(options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES);
    socket.setNoDelay(true);
    socket.on("data", (data: Buffer) => this.received(data));
    socket.on("error", (error) => this.fail(new ClusterError(ErrorCode.Unavailable, `${this.address}: ${error.message}`)));
    socket.on("close", () => this.fail(new ClusterError(ErrorCode.Unavailable, `the connection to ${this.address} closed`)));
  }

  /** Connects and completes the handshake; rejects with a ClusterError (Unavailable, Unauthorized, ...). */
  static async open(options: ConnectionOptions): Promise<Connection> {
    const { host, port } = parseAddress(options.address);
    const timeoutMs = options.connectTimeoutMs ?? 3000;
    const tls = options.credentials?.tls === "on";
    const socket = await new Promise<Socket>((resolve, reject) => {
      const onError = (error: Error) => {
        clearTimeout(timer);
        s.destroy();
        reject(new ClusterError(ErrorCode.Unavailable, `cannot connect to ${options.address}: ${error.message}`));
      };
      // Servers present a throwaway self-signed certificate: what proves them is the
      // handshake signature over the TLS exporter value, not the certificate.
      const s: Socket = tls
        ? tlsConnect({
            host,
            port,
            rejectUnauthorized: false,
            minVersion: "TLSv1.3",
            ...(isIP(host) ? {} : { servername: host }),
          })
        : tcpConnect({ host, port });
      const timer = setTimeout(
        () => onError(new Error(`no connection within ${timeoutMs} ms`)),
        timeoutMs,
      );
      s.once("error", onError);
      s.once(tls ? "secureConnect" : "connect", () => {
        clearTimeout(timer);
        s.off("error", onError);
        resolve(s);
      });
    });
    const connection = new Connection(options, socket);
    const timer = setTimeout(
      () => connection.fail(new ClusterError(ErrorCode.Unavailable, `no handshake with ${options.address} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    try {
      await connection.handshake(tls ? (socket as TLSSocket) : null);
    } catch (error) {
      connection.close();
      throw error;
    } finally {
      clearTimeout(timer);
    }
    return connection;
  }

  get open(): boolean {
    return this.closedWith === null;
  }

  /** Requests waiting for their reply on this connection. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Sends a request-like message; `call` hears its reply (and stream chunks) by id. */
  send(kind: number, fields: Record<string, unknown>, call: PendingCall): number {
    if (this.closedWith) throw this.closedWith;
    const id = this.nextId++;
    this.pending.set(id, call);
    this.write(encodeFrame(kind, id, fields));
    return id;
  }

  /** Asks the callee to stop request `id`; its reply still comes (Cancelled) unless forgotten. */
  interrupt(id: number): void {
    if (this.closedWith || !this.pending.has(id)) return;
    this.write(encodeFrame(Kind.interrupt, id, {}));
  }

  /** Grants stream `id` `credit` more items. */
  ack(id: number, credit: number): void {
    if (this.closedWith || !this.pending.has(id) || credit <= 0) return;
    this.write(encodeFrame(Kind.streamAck, id, { credit }));
  }

  /** Drops the waiter of `id`: a later reply for it is ignored. */
  forget(id: number): void {
    this.pending.delete(id);
  }

  close(): void {
    this.fail(new ClusterError(ErrorCode.Unavailable, `the connection to ${this.address} was closed by this client`));
  }

  private write(frame: Buffer): void {
    this.socket.write(frame);
  }

  private fail(error: ClusterError): void {
    if (this.closedWith) return;
    this.closedWith = error;
    this.socket.destroy();
    this.handshakeArrived(error);
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const call of calls) call.lost(error);
    this.options.onClose?.(error);
  }

  private received(data: Buffer): void {
    let bodies: Buffer[];
    try {
      bodies = this.reader.push(data);
    } catch (error) {
      this.fail(new ClusterError(ErrorCode.FrameTooLarge, `${this.address}: ${(error as Error).message}`));
      return;
    }
    for (const body of bodies) {
      if (this.closedWith) return;
      let envelope: Envelope;
      try {
        envelope = decodeEnvelope(body);
      } catch (error) {
        const message = error instanceof ProtocolViolation ? error.message : String(error);
        this.fail(new ClusterError(ErrorCode.MalformedFrame, `${this.address} sent an unreadable frame: ${message}`));
        return;
      }
      if (!this.established) this.handshakeArrived(envelope);
      else this.dispatch(envelope);
    }
  }

  private dispatch(envelope: Envelope): void {
    switch (envelope.kind) {
      case Kind.reply: {
        const reply = replyOf(envelope.fields);
        const call = this.pending.get(envelope.id);
        if (call) {
          this.pending.delete(envelope.id);
          call.reply(reply);
        } else if (envelope.id === 0 && reply.code !== ErrorCode.Ok) {
          // Connection-level errors (FrameTooLarge, MalformedFrame) come with id 0 and the
          // server closes the connection after them.
          this.fail(new ClusterError(reply.code, `${this.address}: ${reply.message}`));
        }
        return;
      }
      case Kind.streamChunk: {
        const call = this.pending.get(envelope.id);
        const items = envelope.fields.items;
        if (call?.chunk && Array.isArray(items)) call.chunk(items.map(bin));
        return;
      }
      case Kind.ping:
        this.write(encodeFrame(Kind.pong, envelope.id, {}));
        return;
      case Kind.pong:
        return;
      default:
        if (envelope.id === 0) this.options.onPush?.(envelope);
    }
  }

  private handshakeArrived(item: Envelope | ClusterError): void {
    if (this.established) return;
    const waiter = this.handshakeWaiter;
    if (waiter) {
      this.handshakeWaiter = null;
      waiter(item);
    } else this.handshakeQueue.push(item);
  }

  private nextHandshakeFrame(): Promise<Envelope> {
    const queued = this.handshakeQueue.shift();
    const settle = (item: Envelope | ClusterError, resolve: (e: Envelope) => void, reject: (e: unknown) => void) =>
      item instanceof ClusterError ? reject(item) : resolve(item);
    if (queued) return new Promise((resolve, reject) => settle(queued, resolve, reject));
    return new Promise((resolve, reject) => {
      this.handshakeWaiter = (item) => settle(item, resolve, reject);
    });
  }

  private refusal(envelope: Envelope, during: string): ClusterError {
    if (envelope.kind === Kind.reply) {
      const reply = replyOf(envelope.fields);
      return new ClusterError(reply.code || ErrorCode.MalformedFrame, reply.message || `${during} refused`);
    }
    return new ClusterError(ErrorCode.MalformedFrame, `${during}: unexpected message kind ${envelope.kind}`);
  }

  private async handshake(tls: TLSSocket | null): Promise<void> {
    const credentials = this.options.credentials;
    const hello: HelloFields = {
      protocol_version: PROTOCOL_VERSION,
      role: credentials ? credentials.role : (this.options.role ?? "client"),
      name: this.options.name,
      key: credentials ? credentials.key.publicKey : empty,
      nonce: credentials ? new Uint8Array(randomBytes(32)) : empty,
    };
    this.write(encodeFrame(Kind.hello, 0, { ...hello }));
    const answer = await this.nextHandshakeFrame();
    if (answer.kind !== Kind.helloAck) throw this.refusal(answer, "hello");
    const f = answer.fields;
    const ack: HelloAckFields = {
      protocol_version: uint(f.protocol_version),
      name: str(f.name),
      role: str(f.role),
      key: bin(f.key),
      nonce: bin(f.nonce),
      signature: bin(f.signature),
    };
    this.peerName = ack.name;
    this.peerRole = ack.role;
    if (credentials) {
      if (ack.key.length !== 32)
        throw new ClusterError(
          ErrorCode.Unauthorized,
          `${this.address} did not prove who it is (is security.auth off there?)`,
        );
      const listed = credentials.trust.roleOf(ack.key);
      if (!listed || !this.options.serverRoles.includes(listed) || listed !== ack.role)
        throw new ClusterError(
          ErrorCode.Unauthorized,
          `the key of ${this.address} is not trusted as ${this.options.serverRoles.join(" or ")}`,
        );
      const binding = tls ? exporterValue(tls) : empty;
      if (!verifySignature(ack.key, transcript("server", hello, ack, binding), ack.signature))
        throw new ClusterError(ErrorCode.Unauthorized, `the handshake signature of ${this.address} does not verify`);
      const signature = credentials.key.sign(transcript("client", hello, ack, binding));
      this.write(encodeFrame(Kind.auth, 1, { signature }));
      const verdict = await this.nextHandshakeFrame();
      if (verdict.kind !== Kind.reply || uint(verdict.fields.code) !== ErrorCode.Ok) throw this.refusal(verdict, "auth");
    }
    this.established = true;
    // Anything that came right behind the handshake's last frame.
    for (const item of this.handshakeQueue.splice(0)) if (!(item instanceof ClusterError)) this.dispatch(item);
  }
}
