#!/usr/bin/env python3
"""Wait for a function's first HTTP answer and print how long it took.

  first-response.py START_NS PORT [TIMEOUT_S]

START_NS is a CLOCK_REALTIME timestamp in nanoseconds (`date +%s%N`) taken just
before the start was requested. Polls http://127.0.0.1:PORT/ every millisecond;
prints `<elapsed_ms> <body>` on the first 200 and exits 0, or exits 1 on timeout.
"""
import http.client
import sys
import time

start_ns, port = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 30.0)
while time.monotonic() < deadline:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/")
        r = c.getresponse()
        body = r.read().decode()
        if r.status == 200:
            print(f"{(time.time_ns() - start_ns) / 1e6:.1f} {body}")
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.001)
sys.exit(1)
