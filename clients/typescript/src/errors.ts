import { ErrorCode, errorName, isRetriable } from "./protocol.js";

/**
 * A failed call: the reply's `code` (a number of docs/protocol.md's table), its name
 * (`"DeadlineExceeded"`, ...) and message. For `ApplicationError` `tag` is the application's
 * error tag (`"NotFound"`) and `details` the reply's payload bytes, when there are any.
 */
export class ClusterError extends Error {
  readonly code: number;
  readonly codeName: string;
  readonly tag: string | undefined;
  readonly details: Uint8Array | undefined;
  /** The message without the code's name. */
  readonly detail: string;

  constructor(
    code: number,
    message: string,
    options: { tag?: string; details?: Uint8Array; cause?: unknown } = {},
  ) {
    const codeName = errorName(code);
    const shown = options.tag && options.tag !== codeName ? `${codeName} (${options.tag})` : codeName;
    super(message ? `${shown}: ${message}` : shown, { cause: options.cause });
    this.name = "ClusterError";
    this.code = code;
    this.codeName = codeName;
    this.tag = options.tag;
    this.details = options.details && options.details.length > 0 ? options.details : undefined;
    this.detail = message;
  }

  /** The request did not run; sending it again is safe. */
  get retriable(): boolean {
    return isRetriable(this.code);
  }

  is(name: keyof typeof ErrorCode): boolean {
    return this.code === ErrorCode[name];
  }
}

/** The error of a failed reply. */
export function fromReply(reply: { code: number; error: string; message: string; payload: Uint8Array }): ClusterError {
  const tag = reply.code === ErrorCode.ApplicationError ? reply.error : undefined;
  return new ClusterError(reply.code, reply.message, { tag, details: reply.payload });
}
