#!/usr/bin/env python3
"""Time from exec of the Lambda bootstrap (dist/lambda/bootstrap) to its first
`GET /2018-06-01/runtime/invocation/next`.

A tiny loopback HTTP server plays the Lambda runtime API (AWS_LAMBDA_RUNTIME_API points at
it) and records when the first /next request arrives; it holds that request open (as the
real API does while no event is queued), so the bootstrap is stopped with SIGTERM after
each run. CLUSTER_GATEWAY_PROXY names the local proxy (127.0.0.1:3333); the proxy does not
need to be running for this figure. Times are from just before Popen (fork + exec of
/bin/sh, the bundled dynamic loader, cluster-lambda's start-up).

usage: bench/lambda_startup.py [--runs N] [--bootstrap dist/lambda/bootstrap]
"""

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
from runner_startup import stop  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    first_next_ns = None
    seen = threading.Event()

    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next"):
            if RuntimeApi.first_next_ns is None:
                RuntimeApi.first_next_ns = time.monotonic_ns()
                RuntimeApi.seen.set()
            time.sleep(30)  # no event: hold the long poll until the bootstrap is stopped
        self.send_response(404)
        self.end_headers()

    def do_POST(self):
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bootstrap", default=os.path.join(ROOT, "dist/lambda/bootstrap"))
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API="127.0.0.1:%d" % server.server_address[1],
               CLUSTER_GATEWAY_PROXY="127.0.0.1:3333")
    results = []
    for _ in range(args.runs):
        RuntimeApi.first_next_ns = None
        RuntimeApi.seen.clear()
        t0 = time.monotonic_ns()
        proc = subprocess.Popen([args.bootstrap], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = RuntimeApi.seen.wait(timeout=10)
        stop(proc, timeout_s=5)
        if not ok:
            print("lambda_startup: no /next request within 10 s", file=sys.stderr)
            return 1
        ms = round((RuntimeApi.first_next_ns - t0) / 1e6, 2)
        results.append(ms)
        print(json.dumps({"first_next_ms": ms}), flush=True)
    print(json.dumps({"runs": len(results), "median_first_next_ms": round(statistics.median(results), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
