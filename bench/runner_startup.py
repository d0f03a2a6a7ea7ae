#!/usr/bin/env python3
"""Time from exec of a new runner to the first call it serves, against the running local
cluster (scripts/dev up).

Starts an extra runner (default runner-3 on 127.0.0.1:34433, same config, storage and
plugins as scripts/dev's runners) with subprocess.Popen, then
  1. connects to its port every millisecond until it accepts (listen_ms);
  2. sends it, directly (no proxy), one GreetVolatile request for an entity of every shard
     (300 ids, one per shard) every 2 ms until one is answered OK instead of NotOwner:
     the runner has registered, the manager has given it shards and it serves them
     (first_call_ms);
then stops it with SIGTERM (it unregisters; its shards go back) and waits for it to exit.
Prints one JSON line per run and the median. Times are from just before Popen, so they
include fork/exec, dynamic loading, plugin loading and registration.

usage: bench/runner_startup.py [--runs N] [--name runner-3] [--port 34433]
"""

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- a minimal MessagePack encoder/decoder for the protocol's few shapes --------------

def pack(value):
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        return b"\xcf" + struct.pack(">Q", value)
    if isinstance(value, str):
        data = value.encode()
        if len(data) < 32:
            return bytes([0xA0 | len(data)]) + data
        return b"\xd9" + bytes([len(data)]) + data
    if isinstance(value, bytes):
        return b"\xc4" + bytes([len(value)]) + value
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(pack(v) for v in value)
    if isinstance(value, dict):
        return bytes([0x80 | len(value)]) + b"".join(pack(k) + pack(v) for k, v in value.items())
    raise TypeError(value)


def container_size(data, i, fix, op16):
    """Element count of the map or array at data[i] and where its elements start."""
    b = data[i]
    if b <= fix + 0x0F:
        return b & 0x0F, i + 1
    if b == op16:
        return struct.unpack_from(">H", data, i + 1)[0], i + 3
    return struct.unpack_from(">I", data, i + 1)[0], i + 5


def unpack(data, i=0):
    b = data[i]
    if b < 0x80:
        return b, i + 1
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        n, i = container_size(data, i, 0x80, 0xDE)
        out = {}
        for _ in range(n):
            k, i = unpack(data, i)
            v, i = unpack(data, i)
            out[k] = v
        return out, i
    if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
        n, i = container_size(data, i, 0x90, 0xDC)
        out = []
        for _ in range(n):
            v, i = unpack(data, i)
            out.append(v)
        return out, i
    if 0xA0 <= b <= 0xBF:
        n = b & 0x1F
        return data[i + 1:i + 1 + n].decode(), i + 1 + n
    fixed = {0xC0: None, 0xC2: False, 0xC3: True}
    if b in fixed:
        return fixed[b], i + 1
    sizes = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i",
             0xD3: ">q"}
    if b in sizes:
        fmt = sizes[b]
        return struct.unpack_from(fmt, data, i + 1)[0], i + 1 + struct.calcsize(fmt)
    lengths = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I", 0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}
    if b in lengths:
        fmt = lengths[b]
        n = struct.unpack_from(fmt, data, i + 1)[0]
        start = i + 1 + struct.calcsize(fmt)
        raw = data[start:start + n]
        return (raw if b <= 0xC6 else raw.decode()), start + n
    raise ValueError("unsupported MessagePack byte 0x%02x" % b)


def frame(kind, msg_id, fields):
    body = pack([kind, msg_id, fields])
    return struct.pack(">I", len(body)) + body


def read_frame(sock, buf):
    while True:
        if len(buf) >= 4:
            size = struct.unpack_from(">I", buf, 0)[0]
            if len(buf) >= 4 + size:
                body = bytes(buf[4:4 + size])
                del buf[:4 + size]
                return unpack(body)[0]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


# --- docs/protocol.md's shard mapping -------------------------------------------------

def shard_for(entity_id, shards=300):
    data = entity_id.encode("utf-16-le")
    h = 5381
    for k in range(len(data) - 2, -2, -2):
        h = ((h * 33) ^ int.from_bytes(data[k:k + 2], "little")) & 0xFFFFFFFF
    h = (h & 0xBFFFFFFF) | ((h >> 1) & 0x40000000)
    if h >= 2**31:
        h -= 2**32
    return abs(h) % shards + 1


def one_id_per_shard(shards=300):
    ids, n = {}, 0
    while len(ids) < shards:
        entity_id = "probe-%d" % n
        ids.setdefault(shard_for(entity_id, shards), entity_id)
        n += 1
    return list(ids.values())


def stop(proc, timeout_s):
    """SIGTERM, then SIGKILL if `proc` has not exited within `timeout_s`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def runner_command(name, port):
    """The runner's command line; the database URL (it holds the password) goes to
    runner_environment() instead, out of `ps`."""
    run = os.path.join(ROOT, ".local", "run")
    storage = open(os.path.join(run, "storage")).read().strip()
    cmd = [os.path.join(ROOT, "build/release/bin/cluster-runner"), "--config",
           os.path.join(ROOT, "config/local.toml"), "--set", "cluster.storage=" + storage]
    cmd += ["--set", "runner.name=" + name, "--set", "runner.port=%d" % port,
            "--set", "runner.plugins=" + os.path.join(ROOT, "build/release/plugins")]
    return cmd


def runner_environment():
    run = os.path.join(ROOT, ".local", "run")
    env = dict(os.environ)
    if open(os.path.join(run, "storage")).read().strip() == "postgres":
        env["CLUSTER_STORAGE_URL"] = open(os.path.join(run, "postgres.url")).read().strip()
    return env


def measure(name, port, ids, log):
    cmd = runner_command(name, port)
    t0 = time.monotonic_ns()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=runner_environment())
    ms = lambda: (time.monotonic_ns() - t0) / 1e6
    try:
        sock = None
        while sock is None:
            if proc.poll() is not None:
                raise RuntimeError("runner exited with %d" % proc.returncode)
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                time.sleep(0.001)
        listen_ms = ms()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        sock.sendall(frame(1, 0, {"protocol_version": 1, "role": "client", "name": "startup"}))
        read_frame(sock, buf)
        payload = pack({"name": "startup"})
        msg_id, first_ms = 1, None
        while first_ms is None and ms() < 30000:
            batch = b"".join(
                frame(3, msg_id + k, {"entity_type": "Greeter", "entity_id": entity_id,
                                      "rpc": "GreetVolatile", "payload": payload})
                for k, entity_id in enumerate(ids))
            msg_id += len(ids)
            sock.sendall(batch)
            for _ in ids:
                reply = read_frame(sock, buf)
                if reply[0] == 4 and reply[2].get("code", 0) == 0 and first_ms is None:
                    first_ms = ms()
            if first_ms is None:
                time.sleep(0.002)
        sock.close()
        return {"listen_ms": round(listen_ms, 1),
                "first_call_ms": None if first_ms is None else round(first_ms, 1)}
    finally:
        stop(proc, timeout_s=20)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--name", default="runner-3")
    parser.add_argument("--port", type=int, default=34433)
    parser.add_argument("--pause-s", type=float, default=2.0,
                        help="wait between runs, for the shards to settle back")
    args = parser.parse_args()
    ids = one_id_per_shard()
    results = []
    with open(os.path.join(ROOT, ".local", "logs", args.name + "-startup.log"), "ab") as log:
        for run in range(args.runs):
            if run:
                time.sleep(args.pause_s)
            result = measure(args.name, args.port, ids, log)
            print(json.dumps(result), flush=True)
            results.append(result)
    firsts = [r["first_call_ms"] for r in results if r["first_call_ms"] is not None]
    if not firsts:
        print("runner_startup: no run served a call", file=sys.stderr)
        return 1
    print(json.dumps({"runs": len(results),
                      "median_listen_ms": statistics.median(r["listen_ms"] for r in results),
                      "median_first_call_ms": statistics.median(firsts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
