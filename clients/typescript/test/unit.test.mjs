// Pieces that need no cluster: the shard function's vectors, framing, keys and trust lists.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { ClusterError, ErrorCode, hashString, loadCredentials, shardFor, SigningKey, TrustList } from "../dist/index.js";
import { decodeEnvelope, encodeFrame, FrameReader } from "../dist/frame.js";
import { transcript } from "../dist/handshake.js";

test("the shard function matches docs/protocol.md's vectors", () => {
  const vectors = [
    ["Test", 1014191315, 216],
    ["", 5381, 282],
    ["user-1", -490910200, 101],
    ["héllo", 181375403, 204],
    ["😀", 5191800, 1],
  ];
  for (const [id, hash, shard] of vectors) {
    assert.equal(hashString(id), hash, `hash of ${JSON.stringify(id)}`);
    assert.equal(shardFor(id, 300), shard, `shard of ${JSON.stringify(id)}`);
  }
  assert.throws(() => shardFor("x", 0), RangeError);
});

test("frames split across and packed within reads come out whole", () => {
  const frames = [encodeFrame(3, 7, { rpc: "Greet", payload: new Uint8Array([1, 2]) }), encodeFrame(5, 8, {})];
  const bytes = Buffer.concat(frames);
  const reader = new FrameReader(1 << 20);
  const bodies = [];
  for (let i = 0; i < bytes.length; i += 3) bodies.push(...reader.push(bytes.subarray(i, i + 3)));
  assert.equal(bodies.length, 2);
  const first = decodeEnvelope(bodies[0]);
  assert.deepEqual([first.kind, first.id, first.fields.rpc], [3, 7, "Greet"]);
  assert.deepEqual([...first.fields.payload], [1, 2]);
  assert.deepEqual(decodeEnvelope(bodies[1]), { kind: 5, id: 8, fields: {} });
});

test("the worked example's hello is byte for byte the documented one", () => {
  const frame = encodeFrame(1, 0, {
    protocol_version: 2,
    role: "client",
    name: "clusterctl",
    key: new Uint8Array(0),
    nonce: new Uint8Array(0),
  });
  assert.equal(
    frame.toString("hex"),
    "00000040930100" +
      "85b070726f746f636f6c5f76657273696f6e02a4726f6c65a6636c69656e74a46e616d65aa636c7573746572637" +
      "46ca36b6579c400a56e6f6e6365c400",
  );
});

test("a frame over the limit and a body that is not an envelope are refused", () => {
  const reader = new FrameReader(16);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(17);
  assert.throws(() => reader.push(header), /exceeds the limit/);
  assert.throws(() => decodeEnvelope(new Uint8Array([0x92, 0x01, 0x02])), /\[kind, id, fields\]/);
  assert.throws(() => decodeEnvelope(new Uint8Array([0x93, 0xff, 0x00, 0x80])), /unsigned/);
});

test("keys load from a base64 seed and from PEM; the trust list names their roles", () => {
  const seed = Buffer.alloc(32, 7).toString("base64");
  const key = SigningKey.fromText(seed + "\n");
  assert.equal(key.publicKey.length, 32);
  const { privateKey } = generateKeyPairSync("ed25519");
  const pem = SigningKey.fromText(privateKey.export({ format: "pem", type: "pkcs8" }).toString());
  const trust = TrustList.parse(
    `# comment\nclient=${Buffer.from(key.publicKey).toString("base64")}, admin=${Buffer.from(pem.publicKey).toString("base64")}\n`,
  );
  assert.equal(trust.roleOf(key.publicKey), "client");
  assert.equal(trust.roleOf(pem.publicKey), "admin");
  assert.throws(() => TrustList.parse("pilot=AAAA"), /unknown role/);
  assert.throws(() => SigningKey.fromText("not a key"), /neither PEM nor/);
});

test("credentials come from the folder the environment names, TLS from its tls file", () => {
  const dir = mkdtempSync(join(tmpdir(), "ts-creds-"));
  const client = SigningKey.fromText(Buffer.alloc(32, 1).toString("base64"));
  writeFileSync(join(dir, "client.key"), Buffer.alloc(32, 1).toString("base64") + "\n");
  writeFileSync(join(dir, "trust"), `client=${Buffer.from(client.publicKey).toString("base64")}\n`);
  const found = loadCredentials({ env: { CLUSTER_SECURITY_CREDENTIALS_DIR: dir } });
  assert.equal(found.role, "client");
  assert.equal(found.tls, "off");
  writeFileSync(join(dir, "tls"), "on\n");
  assert.equal(loadCredentials({ env: { CLUSTER_SECURITY_CREDENTIALS_DIR: dir } }).tls, "on");
  assert.equal(loadCredentials({ env: { CLUSTER_SECURITY_CREDENTIALS_DIR: dir, CLUSTER_SECURITY_AUTH: "false" } }), null);
  assert.equal(loadCredentials({ env: { CLUSTER_SECURITY_CREDENTIALS_DIR: join(dir, "none") } }), null);
});

test("the transcript is each field length-prefixed, in the documented order", () => {
  const hello = { protocol_version: 2, role: "client", name: "n", key: new Uint8Array([1]), nonce: new Uint8Array([2]) };
  const ack = { role: "proxy", name: "", key: new Uint8Array([3]), nonce: new Uint8Array([4]) };
  const bytes = Buffer.from(transcript("client", hello, ack, new Uint8Array(0)));
  const fields = [];
  for (let at = 0; at < bytes.length; ) {
    const n = bytes.readUInt32BE(at);
    fields.push(bytes.subarray(at + 4, at + 4 + n).toString("latin1"));
    at += 4 + n;
  }
  assert.deepEqual(fields, ["cluster-sst handshake client", "2", "client", "n", "\x01", "\x02", "proxy", "", "\x03", "\x04", ""]);
});

test("errors carry the code, its name and the application's tag", () => {
  const error = new ClusterError(ErrorCode.ApplicationError, "no such account", { tag: "NotFound" });
  assert.equal(error.code, 7);
  assert.equal(error.codeName, "ApplicationError");
  assert.equal(error.tag, "NotFound");
  assert.equal(error.message, "ApplicationError (NotFound): no such account");
  assert.ok(new ClusterError(ErrorCode.NotOwner, "").retriable);
  assert.ok(!new ClusterError(ErrorCode.Cancelled, "").retriable);
});
