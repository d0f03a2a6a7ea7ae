// Framing (docs/protocol.md "Transport"): a 4-byte big-endian body length, then one
// MessagePack value [kind, id, fields].
import { Decoder, Encoder } from "@msgpack/msgpack";

export interface Envelope {
  kind: number;
  id: number;
  fields: Record<string, unknown>;
}

// The same bounds as the C++ decoder, so a hostile peer cannot make this process allocate
// more than a frame's worth.
const decoder = new Decoder({ maxArrayLength: 65536, maxMapLength: 65536 });
const encoder = new Encoder({ ignoreUndefined: true });

export class ProtocolViolation extends Error {
  override name = "ProtocolViolation";
}

export function encodeFrame(kind: number, id: number, fields: Record<string, unknown>): Buffer {
  const body = encoder.encode([kind, id, fields]);
  const frame = Buffer.allocUnsafe(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  frame.set(body, 4);
  return frame;
}

export function decodeEnvelope(body: Uint8Array): Envelope {
  let value: unknown;
  try {
    value = decoder.decode(body);
  } catch (error) {
    throw new ProtocolViolation(`the frame body is not MessagePack: ${(error as Error).message}`);
  }
  if (!Array.isArray(value) || value.length !== 3)
    throw new ProtocolViolation("the frame body is not [kind, id, fields]");
  const [kind, id, fields] = value as [unknown, unknown, unknown];
  if (typeof kind !== "number" || !Number.isInteger(kind) || kind < 0)
    throw new ProtocolViolation("the frame's kind is not an unsigned integer");
  if (typeof id !== "number" || !Number.isInteger(id) || id < 0)
    throw new ProtocolViolation("the frame's id is not an unsigned integer");
  if (fields === null || typeof fields !== "object" || Array.isArray(fields) || fields instanceof Uint8Array)
    throw new ProtocolViolation("the frame's fields are not a map");
  return { kind, id, fields: fields as Record<string, unknown> };
}

/** Splits a byte stream into frame bodies. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxFrameBytes: number) {}

  /** Adds bytes; returns the complete bodies they finish, in order. */
  push(data: Buffer): Buffer[] {
    this.chunks.push(data);
    this.buffered += data.length;
    const bodies: Buffer[] = [];
    for (;;) {
      if (this.buffered < 4) break;
      const head = this.peek(4);
      const length = head.readUInt32BE(0);
      if (length > this.maxFrameBytes)
        throw new ProtocolViolation(`a frame of ${length} bytes exceeds the limit of ${this.maxFrameBytes}`);
      if (this.buffered < 4 + length) break;
      const all = this.take(4 + length);
      bodies.push(all.subarray(4));
    }
    return bodies;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    return Buffer.concat(this.chunks).subarray(0, n);
  }

  private take(n: number): Buffer {
    let first = this.chunks[0]!;
    if (first.length < n) {
      first = Buffer.concat(this.chunks);
      this.chunks = [first];
    }
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return out;
  }
}

const payloadEncoder = new Encoder({ ignoreUndefined: true });

/** The MessagePack bytes of an RPC's request (the C++ SDK's MSGPACK_DEFINE_MAP: a map). */
export function encodePayload(value: unknown): Uint8Array {
  return payloadEncoder.encode(value);
}

export function decodePayload<T>(bytes: Uint8Array, useBigInt64 = false): T {
  if (bytes.length === 0) return undefined as T;
  const d = useBigInt64 ? bigIntDecoder : defaultPayloadDecoder;
  return d.decode(bytes) as T;
}

const defaultPayloadDecoder = new Decoder();
const bigIntDecoder = new Decoder({ useBigInt64: true });
