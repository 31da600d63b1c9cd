#!/usr/bin/env python3
"""Rekindle's reference function: a small stdlib-only HTTP function server.

Start-up does what makes real function cold starts slow: the libraries a typical
data-handling function imports (numpy, pandas, and a set of stdlib modules) and ~48 MB
of initialised in-memory state — about 120 MB resident in all. After a CRIU checkpoint/restore, the request
counter must keep counting from where it was.

  GET  /         -> {"function", "count", "pid", "state_bytes", "checksum"}
  GET  /healthz  -> ok
  GET  /verify   -> {"function", "state", "state_bytes"}: "state" is "intact" when every
                    byte of the state equals a fresh build of it, "corrupt" otherwise (a
                    check for restores: it reads every page of the state)
  GET  /log/TEXT -> ok; TEXT written as a line to stdout and to stderr (where the
                    runtime sends a restored function's output)
  GET  /sleep/MS -> as GET /, after holding the request MS milliseconds (at most
                    10000): a request that keeps its instance busy, for tests of
                    concurrency
  POST /invoke   -> {"function", "count", "body_bytes"}

Environment: PORT (8080), BIND (127.0.0.1), FUNCTION_NAME (python-fn),
STATE_MB (48).
"""

import os
import signal
import sys
import time

T0 = time.monotonic()

# --- "initialisation": imports a typical function pulls in --------------------------
import base64  # noqa: E402,F401
import collections  # noqa: E402,F401
import csv  # noqa: E402,F401
import datetime  # noqa: E402,F401
import decimal  # noqa: E402,F401
import email.message  # noqa: E402,F401
import email.parser  # noqa: E402,F401
import hashlib  # noqa: E402
import http.client  # noqa: E402,F401
import http.server  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402,F401
import random  # noqa: E402
import re  # noqa: E402,F401
import socketserver  # noqa: E402,F401
import threading  # noqa: E402
import urllib.parse  # noqa: E402,F401
import uuid  # noqa: E402,F401
import xml.etree.ElementTree  # noqa: E402,F401
import zlib  # noqa: E402,F401

import numpy  # noqa: E402,F401
import pandas  # noqa: E402,F401

try:
    import sqlite3  # noqa: F401
except ImportError:  # not every minimal rootfs ships it
    sqlite3 = None

FUNCTION = os.environ.get("FUNCTION_NAME", "python-fn")
PORT = int(os.environ.get("PORT", "8080"))
BIND = os.environ.get("BIND", "127.0.0.1")
STATE_MB = int(os.environ.get("STATE_MB", "48"))


def build_state(mb):
    """~mb MB of deterministic state in 1 MiB blocks, no two alike and not zero pages
    (CRIU must copy them): a quarter of each block is pseudo-random, the rest a repeated
    pattern, so it compresses roughly like a real heap (~4x) rather than to nothing."""
    chunk = 1 << 20
    rng = random.Random(FUNCTION)
    blocks = []
    for i in range(mb):
        pattern = hashlib.sha256(b"%s/%d" % (FUNCTION.encode(), i)).digest()
        noise = rng.randbytes(chunk // 4)
        blocks.append(noise + pattern * ((chunk - len(noise)) // len(pattern)))
    return blocks


STATE = build_state(STATE_MB)
STATE_BYTES = sum(len(b) for b in STATE)
CHECKSUM = hashlib.sha256(b"".join(b[:64] for b in STATE)).hexdigest()[:16]

_count = 0
_lock = threading.Lock()


def next_count():
    global _count
    with _lock:
        _count += 1
        return _count


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "rekindle-python-fn/1"
    # HTTP/1.0: one request per connection, so an idle function holds no established
    # TCP connection (a checkpoint then only has the listening socket to save).
    protocol_version = "HTTP/1.0"

    def _send(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, obj):
        self._send(200, json.dumps(obj) + "\n")

    def _answer_count(self):
        self._json({"function": FUNCTION, "count": next_count(), "pid": os.getpid(),
                    "state_bytes": STATE_BYTES, "checksum": CHECKSUM})

    def do_GET(self):
        if self.path == "/":
            self._answer_count()
        elif self.path.startswith("/sleep/"):
            try:
                ms = int(self.path[len("/sleep/"):])
            except ValueError:
                self._send(400, '{"error": "/sleep/MS: MS in milliseconds"}\n')
                return
            time.sleep(min(max(ms, 0), 10000) / 1000)
            self._answer_count()
        elif self.path == "/healthz":
            self._send(200, "ok\n", "text/plain")
        elif self.path == "/verify":
            intact = STATE == build_state(STATE_MB)
            self._json({"function": FUNCTION, "state": "intact" if intact else "corrupt",
                        "state_bytes": STATE_BYTES})
        elif self.path.startswith("/log/"):
            text = urllib.parse.unquote(self.path[len("/log/"):])
            print(text, flush=True)
            print(text, file=sys.stderr, flush=True)
            self._send(200, "ok\n", "text/plain")
        else:
            self._send(404, '{"error": "not found"}\n')

    def do_POST(self):
        if self.path != "/invoke":
            self._send(404, '{"error": "not found"}\n')
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        self._json({"function": FUNCTION, "count": next_count(), "body_bytes": len(body)})

    def log_message(self, fmt, *args):  # keep stdout for the ready line
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = Server((BIND, PORT), Handler)
    init_ms = (time.monotonic() - T0) * 1000
    print(f"ready port={server.server_address[1]} init_ms={init_ms:.0f}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
