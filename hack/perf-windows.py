#!/usr/bin/env python3
"""Where a bench mode's CPU goes, from a system-wide profile cut to the samples' windows.

The method of the profiles in bench-results/journal.md:

    REKINDLE_BENCH_WINDOWS=/tmp/windows REKINDLE_BENCH_OUT=/tmp/b bash hack/bench.sh &
    perf record -a -g -k CLOCK_MONOTONIC -F 4000 -o /tmp/perf.data -- sleep 120
    perf script -i /tmp/perf.data -F comm,pid,tid,cpu,time,sym \\
        | python3 hack/perf-windows.py /tmp/windows --freq 4000 --mode rekindle-staged

(or the bench's A/B mode with the same build twice, for mode (4) only). Prints the
mean window, the CPU time per window by command (`idle`: the idle task), and with
`--by-ms` how busy the CPUs were in each millisecond from the windows' start, with
the busiest commands of that millisecond.
"""

import argparse
import bisect
import collections
import os
import re
import signal
import sys

# perf script -F comm,pid,tid,cpu,time[,sym]: "comm  pid/tid [cpu] time: ..."
SAMPLE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):")


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quietly, into `head`
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("windows", help="the file REKINDLE_BENCH_WINDOWS named")
    ap.add_argument("--freq", type=float, required=True, help="perf record's -F (samples/s per CPU)")
    ap.add_argument("--mode", default="rekindle-staged", help="the bench mode (default rekindle-staged)")
    ap.add_argument("--by-ms", action="store_true", help="busy CPUs by millisecond of the window")
    ap.add_argument("--top", type=int, default=20, help="commands listed (default 20)")
    args = ap.parse_args()

    wins = []
    with open(args.windows) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0] == args.mode:
                wins.append((float(parts[1]), float(parts[2])))
    if not wins:
        sys.exit(f"no windows of mode {args.mode} in {args.windows}")
    wins.sort()
    starts = [w[0] for w in wins]
    per_sample_ms = 1000.0 / args.freq
    by_comm = collections.Counter()
    busy = collections.Counter()
    busy_who = collections.defaultdict(collections.Counter)
    for line in sys.stdin:
        m = SAMPLE.match(line)
        if not m:
            continue
        comm, pid, t = m.group(1), m.group(2), float(m.group(5))
        i = bisect.bisect_right(starts, t) - 1
        if i < 0 or t > wins[i][1]:
            continue
        key = "idle" if pid == "0" else comm
        by_comm[key] += 1
        if key != "idle":
            b = int((t - wins[i][0]) * 1000)
            busy[b] += 1
            busy_who[b][key] += 1

    n = len(wins)
    cpus = os.cpu_count() or 1
    mean = sum(b - a for a, b in wins) * 1000 / n
    print(f"{n} windows of {args.mode}, mean {mean:.2f} ms; CPU ms per window by command:")
    for comm, count in by_comm.most_common(args.top):
        print(f"  {comm:32s} {count * per_sample_ms / n:7.2f}")
    if args.by_ms:
        print(f"busy share of the {cpus} CPUs by ms from the window's start:")
        for b in range(int(max(e - a for a, e in wins) * 1000) + 1):
            live = sum(1 for a, e in wins if (e - a) * 1000 > b)
            if not live:
                break
            share = busy[b] * per_sample_ms / live / cpus * 100
            top = ", ".join(f"{c} {v * per_sample_ms / live:.2f}" for c, v in busy_who[b].most_common(4))
            print(f"  {b:3d} ms: {share:5.1f}%  ({live} windows)  {top}")


if __name__ == "__main__":
    main()
