// What each side of the handshake signs (docs/protocol.md "Handshake", docs/security.md).
import { PROTOCOL_VERSION } from "./protocol.js";

export interface HelloFields {
  protocol_version: number;
  role: string;
  name: string;
  key: Uint8Array;
  nonce: Uint8Array;
}

export interface HelloAckFields {
  protocol_version: number;
  name: string;
  role: string;
  key: Uint8Array;
  nonce: Uint8Array;
  signature: Uint8Array;
}

export const EXPORTER_LABEL = "EXPORTER-cluster-sst-handshake";

/** Each field as a 4-byte big-endian length and its bytes, so no field runs into the next. */
export function transcript(
  side: "server" | "client",
  hello: HelloFields,
  ack: Omit<HelloAckFields, "signature" | "protocol_version">,
  channelBinding: Uint8Array,
): Uint8Array {
  const text = (s: string) => Buffer.from(s, "utf8");
  const fields: Uint8Array[] = [
    text(`cluster-sst handshake ${side}`),
    text(String(hello.protocol_version ?? PROTOCOL_VERSION)),
    text(hello.role),
    text(hello.name),
    hello.key,
    hello.nonce,
    text(ack.role),
    text(ack.name),
    ack.key,
    ack.nonce,
    channelBinding,
  ];
  const parts: Buffer[] = [];
  for (const field of fields) {
    const length = Buffer.allocUnsafe(4);
    length.writeUInt32BE(field.length, 0);
    parts.push(length, Buffer.from(field.buffer, field.byteOffset, field.byteLength));
  }
  return new Uint8Array(Buffer.concat(parts));
}
