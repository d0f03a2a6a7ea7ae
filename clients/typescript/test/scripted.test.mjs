// The client's side of streams and interrupts against a scripted peer (no authentication):
// what it sends (credit, acks as the consumer reads, interrupts) and how it takes what the
// peer sends (chunks, final replies, too many items, a lost connection).
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, test } from "node:test";

import { encode } from "@msgpack/msgpack";
import { Client, ClusterError, ErrorCode } from "../dist/index.js";
import { decodeEnvelope, encodeFrame, FrameReader } from "../dist/frame.js";
import { waitFor } from "./harness.mjs";

const Kind = { hello: 1, helloAck: 2, request: 3, reply: 4, interrupt: 12, chunk: 17, ack: 18 };

/** A peer that answers hello and hands every later message to `onMessage(envelope, socket)`. */
class ScriptedPeer {
  constructor() {
    this.messages = [];
    this.sockets = new Set();
    this.onMessage = () => {};
    this.server = createServer((socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
      socket.on("error", () => {});
      const reader = new FrameReader(1 << 24);
      socket.on("data", (data) => {
        for (const body of reader.push(data)) {
          const envelope = decodeEnvelope(body);
          if (envelope.kind === Kind.hello) {
            socket.write(encodeFrame(Kind.helloAck, envelope.id, { protocol_version: 2, name: "scripted", role: "proxy", key: new Uint8Array(), nonce: new Uint8Array(), signature: new Uint8Array() }));
            continue;
          }
          this.messages.push(envelope);
          this.onMessage(envelope, socket);
        }
      });
    });
  }
  async listen() {
    await new Promise((r) => this.server.listen(0, "127.0.0.1", r));
    return `127.0.0.1:${this.server.address().port}`;
  }
  of(kind, id) {
    return this.messages.filter((m) => m.kind === kind && (id === undefined || m.id === id));
  }
  close() {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}

const reply = (socket, id, code, payload = new Uint8Array(), message = "") =>
  socket.write(encodeFrame(Kind.reply, id, { code, error: "", message, payload }));
const chunk = (socket, id, items) => socket.write(encodeFrame(Kind.chunk, id, { items: items.map((i) => encode(i)) }));

let peer;
let client;
before(async () => {
  peer = new ScriptedPeer();
  const address = await peer.listen();
  client = new Client({ proxies: [address], credentials: null });
});
after(() => {
  client.close();
  peer.close();
});

test("the request carries the credit; acks follow the reader, half the window at a time", async () => {
  const sent = new Map(); // id → items sent
  peer.onMessage = (m, socket) => {
    if (m.kind === Kind.request) {
      assert.equal(m.fields.credit, 8);
      assert.equal(m.fields.entity_type, "T");
      sent.set(m.id, 8);
      chunk(socket, m.id, Array.from({ length: 8 }, (_, i) => ({ i })));
    } else if (m.kind === Kind.ack) {
      const from = sent.get(m.id);
      const total = from + m.fields.credit;
      sent.set(m.id, total);
      if (from < 20) chunk(socket, m.id, Array.from({ length: Math.min(total, 20) - from }, (_, k) => ({ i: from + k })));
      if (total >= 20) reply(socket, m.id, 0, encode({ count: 20 }));
    }
  };
  const items = client.stream("T", "a", "S", {}, { credit: 8 });
  assert.ok(await waitFor(() => items.itemsReceived === 8, 5000));
  assert.equal(peer.of(Kind.ack).length, 0, "nothing read, nothing acked");
  const seen = [];
  for await (const item of items) {
    seen.push(item.i);
    if (seen.length === 3) {
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(peer.of(Kind.ack).length, 0, "3 read of 8: no ack yet");
    }
    if (seen.length === 4) {
      assert.ok(await waitFor(() => peer.of(Kind.ack).length === 1, 2000));
      assert.equal(peer.of(Kind.ack)[0].fields.credit, 4);
    }
  }
  assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => i));
  assert.deepEqual(await items.final, { count: 20 });
});

test("items past the credit end the stream with InvalidRequest and an interrupt", async () => {
  peer.messages = [];
  peer.onMessage = (m, socket) => {
    if (m.kind === Kind.request) chunk(socket, m.id, Array.from({ length: 5 }, (_, i) => ({ i })));
  };
  const items = client.stream("T", "b", "S", {}, { credit: 4 });
  await assert.rejects(items.final, (e) => e.code === ErrorCode.InvalidRequest && /past the credit/.test(e.message));
  assert.ok(await waitFor(() => peer.of(Kind.interrupt).length === 1, 2000));
});

test("abort and break send interrupt with the request's id", async () => {
  peer.messages = [];
  peer.onMessage = (m, socket) => {
    if (m.kind === Kind.request) chunk(socket, m.id, [{ i: 0 }, { i: 1 }]);
    if (m.kind === Kind.interrupt) reply(socket, m.id, ErrorCode.Cancelled, undefined, "interrupted");
  };
  const controller = new AbortController();
  const aborted = client.stream("T", "c", "S", {}, { signal: controller.signal });
  const loop = (async () => {
    for await (const _ of aborted) controller.abort(new Error("enough"));
  })();
  await assert.rejects(loop, (e) => e instanceof ClusterError && e.code === ErrorCode.Cancelled && /enough/.test(e.message));
  const broken = client.stream("T", "d", "S", {});
  for await (const _ of broken) break;
  await assert.rejects(broken.final, (e) => e.code === ErrorCode.Cancelled);
  const requests = peer.of(Kind.request).map((m) => m.id);
  assert.ok(await waitFor(() => peer.of(Kind.interrupt).length === 2, 2000));
  assert.deepEqual(peer.of(Kind.interrupt).map((m) => m.id), requests);

  // A plain call too, and a late reply to it is ignored.
  const controller2 = new AbortController();
  peer.onMessage = (m, socket) => {
    if (m.kind === Kind.interrupt) setTimeout(() => reply(socket, m.id, 0, encode({ late: true })), 20);
  };
  const call = client.call("T", "e", "R", {}, { signal: controller2.signal });
  await waitFor(() => peer.of(Kind.request).length === 3, 2000);
  controller2.abort();
  await assert.rejects(call, (e) => e.code === ErrorCode.Cancelled);
  assert.ok(await waitFor(() => peer.of(Kind.interrupt).length === 3, 2000));
});

test("the stream's inactivity deadline pauses while the reader holds all the credit", async () => {
  peer.messages = [];
  peer.onMessage = (m, socket) => {
    if (m.kind === Kind.request) chunk(socket, m.id, [{ i: 0 }, { i: 1 }]);
    if (m.kind === Kind.ack) reply(socket, m.id, 0, encode({ count: 2 }));
  };
  // Credit 2 used up at once: the reader holds it for 3× the deadline, which is not a gap.
  const items = client.stream("T", "f", "S", {}, { credit: 2, timeoutMs: 200 });
  assert.ok(await waitFor(() => items.itemsReceived === 2, 2000));
  await new Promise((r) => setTimeout(r, 1500));
  const seen = [];
  for await (const item of items) seen.push(item.i);
  assert.deepEqual(seen, [0, 1]);
  // A peer that says nothing while it holds credit is timed out.
  peer.onMessage = () => {};
  const silent = client.stream("T", "g", "S", {}, { timeoutMs: 200 });
  await assert.rejects(silent.final, (e) => e.code === ErrorCode.DeadlineExceeded);
});

test("a lost connection ends streams and calls with Unavailable; the next call reconnects", async () => {
  peer.messages = [];
  peer.onMessage = (m, socket) => {
    if (m.kind === Kind.request && m.fields.rpc === "S") chunk(socket, m.id, [{ i: 0 }]);
    if (m.kind === Kind.request && m.fields.rpc === "Drop") socket.destroy();
    if (m.kind === Kind.request && m.fields.rpc === "Ok") reply(socket, m.id, 0, encode({ ok: 1 }));
  };
  const items = client.stream("T", "h", "S", {});
  const pending = client.call("T", "i", "Hang", {});
  assert.ok(await waitFor(() => items.itemsReceived === 1, 2000));
  const lost = assert.rejects(pending, (e) => e.code === ErrorCode.Unavailable);
  await assert.rejects(client.call("T", "j", "Drop", {}), (e) => e.code === ErrorCode.Unavailable);
  await lost;
  await assert.rejects(items.final, (e) => e.code === ErrorCode.Unavailable);
  assert.deepEqual(await client.call("T", "k", "Ok", {}), { ok: 1 });
});

test("a retriable answer is retried until the deadline, other errors are not", async () => {
  peer.messages = [];
  let answered = 0;
  peer.onMessage = (m, socket) => {
    if (m.kind !== Kind.request) return;
    answered += 1;
    if (m.fields.rpc === "Flaky" && answered < 3) return reply(socket, m.id, ErrorCode.NoRunner, undefined, "no runner yet");
    if (m.fields.rpc === "Flaky") return reply(socket, m.id, 0, encode({ attempt: answered }));
    socket.write(encodeFrame(Kind.reply, m.id, { code: ErrorCode.ApplicationError, error: "Nope", message: "said no", payload: encode({ why: 1 }) }));
  };
  assert.deepEqual(await client.call("T", "l", "Flaky", {}), { attempt: 3 });
  answered = 0;
  await assert.rejects(client.call("T", "m", "Refuse", {}), (e) => e.code === ErrorCode.ApplicationError && e.tag === "Nope" && e.details.length > 0);
  assert.equal(answered, 1);
});
