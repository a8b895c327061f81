#!/usr/bin/env python3
"""Cold-process wall time of a command (`spyctl agent list`), the hyperfine
stand-in for scripts/bench-compare.sh: --warmup runs, then --runs timed runs,
each a fresh process with output discarded; prints median, min, p90 and max.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    times = []
    for i in range(a.warmup + a.runs):
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        took = time.perf_counter() - start
        if done.returncode != 0:
            print(f"error: {' '.join(cmd)} failed: {done.stderr.decode(errors='replace').strip()}", file=sys.stderr)
            return 1
        if i >= a.warmup:
            times.append(took * 1000)
    times.sort()
    result = {"runs": a.runs, "median_ms": statistics.median(times), "min_ms": times[0],
              "p90_ms": times[max(0, int(0.9 * len(times)) - 1)], "max_ms": times[-1]}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"median {result['median_ms']:.2f} ms (min {result['min_ms']:.2f}, p90 {result['p90_ms']:.2f}, "
              f"max {result['max_ms']:.2f}) over {a.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
