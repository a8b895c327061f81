#!/usr/bin/env python3
"""Prints one line from a load-run JSON (spyctl boss bench --json or
bench/sender.py --json): scripts/bench-compare.sh's progress output."""

import json
import sys

r = json.load(open(sys.argv[1]))
lat = r["latency_us"]
fail = f"  FAILED {r['failed']}: {r.get('first_error')}" if r.get("failed") else ""
print(f"  {sys.argv[2]:<7} {r['mode']:<11} c={r['connections']:<3} {r['msgs_per_sec']:>8.0f} msgs/s  "
      f"p50 {lat['p50'] / 1e3:.2f} ms  p99 {lat['p99'] / 1e3:.2f} ms  max {lat['max'] / 1e3:.2f} ms{fail}")
