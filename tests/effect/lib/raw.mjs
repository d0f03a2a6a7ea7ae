// A bare TCP peer speaking the Effect RPC wire format by hand, for what the Effect client
// does not let a test do on purpose: send without the token, look at the connection being
// closed, ping, mix serializations on one port. The frames are those of reference/capture.mjs.
import { Packr, Unpackr } from "msgpackr";
import { createConnection } from "node:net";

export async function rawConnection({ host = "127.0.0.1", port, serialization = "ndjson" }) {
  const socket = createConnection({ host, port });
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  const messages = [];
  const waiters = new Set();
  let closed = false;
  // The same encoder Effect's msgPack serialization uses: msgpackr's Packr with records.
  const packr = new Packr();
  const unpackr = new Unpackr();
  let text = "";
  let pending = Buffer.alloc(0);
  const notify = () => {
    for (const waiter of waiters) waiter();
  };
  socket.on("data", (bytes) => {
    if (serialization === "ndjson") {
      text += bytes.toString("utf8");
      const lines = text.split("\n");
      text = lines.pop();
      for (const line of lines) if (line.length > 0) messages.push(JSON.parse(line));
    } else {
      pending = Buffer.concat([pending, bytes]);
      let consumed = 0;
      try {
        unpackr.unpackMultiple(pending, (value, _start, end) => {
          messages.push(value);
          consumed = end;
        });
      } catch (error) {
        if (!error.incomplete) throw error;
      }
      pending = pending.subarray(consumed);
    }
    notify();
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    closed = true;
    notify();
  });

  const until = (predicate, timeoutMs, what) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const result = predicate();
        if (result === undefined || result === false) return;
        waiters.delete(check);
        clearTimeout(timer);
        resolve(result);
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`${what} within ${timeoutMs} ms; got ${JSON.stringify(messages)}`));
      }, timeoutMs);
      waiters.add(check);
      check();
    });

  return {
    messages,
    get closed() {
      return closed;
    },
    send(message) {
      socket.write(serialization === "ndjson" ? JSON.stringify(message) + "\n" : packr.pack(message));
    },
    /** The first message (from the start) matching `predicate`. */
    next: (predicate, timeoutMs = 5000) => until(() => messages.find(predicate), timeoutMs, "no matching message"),
    closedWithin: (timeoutMs = 5000) => until(() => closed, timeoutMs, "the connection stayed open"),
    close() {
      socket.destroy();
    },
  };
}

let nextId = 1000000;
/** A Request as RpcClient encodes it (ids are decimal strings, headers pairs). */
export function request(tag, payload, headers = []) {
  return {
    _tag: "Request",
    id: String(nextId++),
    tag,
    payload,
    traceId: "0123456789abcdef0123456789abcdef",
    spanId: "0123456789abcdef",
    sampled: false,
    headers,
  };
}
