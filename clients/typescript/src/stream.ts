// The caller's side of a streaming reply (docs/protocol.md "Streaming replies"): items wait
// in a buffer no larger than the credit granted, and credit goes back only as the consumer
// pulls items out, so a slow consumer holds the producer back.
import { ClusterError } from "./errors.js";
import { ErrorCode } from "./protocol.js";

/** What a CallStream needs from the connection that carries it. */
export interface StreamTransport {
  ack(credit: number): void;
  /** Stop the request (interrupt) and forget it. */
  cancel(): void;
}

type Outcome<F> = { ok: true; value: F } | { ok: false; error: ClusterError };

/**
 * The items of a streaming RPC as an async iterable, then its final reply in `final`.
 * Leaving a `for await` early (break, throw) interrupts the request.
 */
export class CallStream<Item, Final = unknown> implements AsyncIterable<Item> {
  /** The final reply once every item was read; rejects with the stream's error. */
  readonly final: Promise<Final>;
  private resolveFinal!: (value: Final) => void;
  private rejectFinal!: (error: ClusterError) => void;
  private buffer: Item[] = [];
  private outcome: Outcome<Final> | null = null;
  private waiter: (() => void) | null = null;
  private transport: StreamTransport | null = null;
  private unacked = 0;
  private received = 0;
  private granted: number;
  private readonly ackEvery: number;
  private iterating = false;

  /** Told whenever the credit the callee holds changes (for the client's inactivity timer). */
  onProgress: (() => void) | null = null;

  constructor(
    readonly credit: number,
    private readonly decode: (bytes: Uint8Array) => Item,
  ) {
    this.granted = credit;
    this.ackEvery = Math.max(1, Math.floor(credit / 2));
    this.final = new Promise<Final>((resolve, reject) => {
      this.resolveFinal = resolve;
      this.rejectFinal = reject;
    });
    // A caller that only iterates must not see an unhandled rejection of `final`.
    this.final.catch(() => {});
  }

  /** Items delivered to the caller so far (read or buffered). */
  get itemsReceived(): number {
    return this.received;
  }

  get done(): boolean {
    return this.outcome !== null;
  }

  /** Credit the callee still holds: items it may send before the next ack. */
  get creditOutstanding(): number {
    return this.granted - this.received;
  }

  attach(transport: StreamTransport): void {
    this.transport = transport;
  }

  /** Stops the stream: the request is interrupted, iteration ends with Cancelled. */
  cancel(reason = "the stream was cancelled by the caller"): void {
    if (this.outcome) return;
    this.transport?.cancel();
    this.finish({ ok: false, error: new ClusterError(ErrorCode.Cancelled, reason) });
  }

  /** Items from a stream_chunk. */
  pushItems(items: Uint8Array[]): void {
    if (this.outcome) return;
    if (this.received + items.length > this.granted) {
      this.transport?.cancel();
      this.finish({
        ok: false,
        error: new ClusterError(
          ErrorCode.InvalidRequest,
          `the callee sent ${this.received + items.length - this.granted} items past the credit`,
        ),
      });
      return;
    }
    this.received += items.length;
    try {
      for (const item of items) this.buffer.push(this.decode(item));
    } catch (error) {
      this.transport?.cancel();
      this.finish({
        ok: false,
        error: new ClusterError(ErrorCode.BadPayload, `a stream item does not decode: ${(error as Error).message}`),
      });
      return;
    }
    this.onProgress?.();
    this.wake();
  }

  end(outcome: Outcome<Final>): void {
    this.finish(outcome);
  }

  private finish(outcome: Outcome<Final>): void {
    if (this.outcome) return;
    this.outcome = outcome;
    this.transport = null;
    if (outcome.ok) this.resolveFinal(outcome.value);
    else {
      // Read items stay readable; a failure drops nothing that already arrived.
      this.rejectFinal(outcome.error);
    }
    this.onProgress?.();
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }

  private consumed(): void {
    if (this.outcome || !this.transport) return;
    this.unacked += 1;
    if (this.unacked >= this.ackEvery) {
      this.granted += this.unacked;
      this.transport.ack(this.unacked);
      this.unacked = 0;
      this.onProgress?.();
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<Item> {
    if (this.iterating) throw new Error("a CallStream can be iterated once");
    this.iterating = true;
    return {
      next: async (): Promise<IteratorResult<Item>> => {
        for (;;) {
          if (this.outcome && !this.outcome.ok && this.outcome.error.code === ErrorCode.Cancelled)
            throw this.outcome.error;
          if (this.buffer.length > 0) {
            const value = this.buffer.shift() as Item;
            this.consumed();
            return { done: false, value };
          }
          if (this.outcome) {
            if (this.outcome.ok) return { done: true, value: undefined };
            throw this.outcome.error;
          }
          await new Promise<void>((resolve) => (this.waiter = resolve));
        }
      },
      return: async (): Promise<IteratorResult<Item>> => {
        this.cancel("the caller stopped reading the stream");
        this.buffer = [];
        return { done: true, value: undefined };
      },
    };
  }
}
