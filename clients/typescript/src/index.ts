export { Client, type CallOptions, type ClientOptions, type StreamOptions } from "./client.js";
export { CallStream } from "./stream.js";
export { ClusterError } from "./errors.js";
export { defineEntity, rpc, stream, type EntityClient, type EntityDef, type RpcDecl, type StreamDecl } from "./entity.js";
export {
  loadCredentials,
  SigningKey,
  TrustList,
  type Credentials,
  type LoadCredentialsOptions,
  type Role,
  type TlsMode,
} from "./credentials.js";
export { hashString, shardFor } from "./shard.js";
export {
  DEFAULT_STREAM_CREDIT,
  ErrorCode,
  errorName,
  isRetriable,
  MAX_STREAM_CREDIT,
  PROTOCOL_VERSION,
  type AssignmentSnapshot,
  type ErrorName,
} from "./protocol.js";
export { Connection, type ConnectionOptions } from "./connection.js";
