// Message kinds, error codes and field shapes of the wire protocol (docs/protocol.md; the
// C++ source of truth is libs/protocol/include/cluster/protocol/messages.hpp and errc.hpp).

export const PROTOCOL_VERSION = 2;

export const Kind = {
  hello: 1,
  helloAck: 2,
  request: 3,
  reply: 4,
  ping: 5,
  pong: 6,
  subscribeAssignments: 9,
  assignments: 10,
  getStatus: 11,
  interrupt: 12,
  auth: 16,
  streamChunk: 17,
  streamAck: 18,
} as const;

/** Error codes carried in `reply.code`; the numbers never change within a protocol version. */
export const ErrorCode = {
  Ok: 0,
  MalformedFrame: 1,
  UnsupportedVersion: 2,
  UnknownKind: 3,
  UnknownEntityType: 4,
  UnknownRpc: 5,
  BadPayload: 6,
  ApplicationError: 7,
  Defect: 8,
  NotOwner: 9,
  MailboxFull: 10,
  DeadlineExceeded: 11,
  NoRunner: 12,
  Unavailable: 13,
  ShuttingDown: 14,
  FrameTooLarge: 15,
  InvalidRequest: 16,
  TooManyRequests: 17,
  StorageError: 18,
  HandshakeRequired: 19,
  Unauthorized: 20,
  Forbidden: 21,
  StateConflict: 22,
  Cancelled: 23,
} as const;

export type ErrorName = keyof typeof ErrorCode;

const namesByCode: Map<number, ErrorName> = new Map(
  Object.entries(ErrorCode).map(([name, code]) => [code, name as ErrorName]),
);

/** The name of a code, or `Error<N>` for one this client does not know. */
export function errorName(code: number): string {
  return namesByCode.get(code) ?? `Error${code}`;
}

/** Codes after which the request did not run: a router or a client may send it again. */
export function isRetriable(code: number): boolean {
  return (
    code === ErrorCode.NotOwner ||
    code === ErrorCode.NoRunner ||
    code === ErrorCode.Unavailable ||
    code === ErrorCode.ShuttingDown
  );
}

/** What `request.credit` 0 stands for. */
export const DEFAULT_STREAM_CREDIT = 32;
/** The most credit a caller may hold out at once. */
export const MAX_STREAM_CREDIT = 65536;
/** `cluster.max_frame_bytes`' default: the largest frame body this client accepts. */
export const DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024;

export interface RequestFields {
  entity_type: string;
  entity_id: string;
  rpc: string;
  payload: Uint8Array;
  persisted: boolean;
  primary_key?: string | null;
  deliver_at_ms?: number | null;
  timeout_ms: number;
  discard?: boolean;
  credit?: number;
}

export interface ReplyFields {
  code: number;
  error: string;
  message: string;
  payload: Uint8Array;
}

export interface RpcInfo {
  name: string;
  persisted: boolean;
  read_only: boolean;
  stream: boolean;
}

export interface EntityTypeInfo {
  name: string;
  group: string;
  rpcs: RpcInfo[];
}

export interface ShardGroupAssignment {
  group: string;
  shards: number;
  owners: string[];
}

export interface AssignmentSnapshot {
  version: number;
  storage: string;
  groups: ShardGroupAssignment[];
  entity_types: EntityTypeInfo[];
  runners: { name: string; address: string; healthy: boolean; shards: number }[];
}
