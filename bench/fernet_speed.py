#!/usr/bin/env python3
"""Python's `cryptography.fernet` seal (and open) rate at the sizes the
criterion bench uses (64 B, 1 KiB, 64 KiB, 1 MiB), for scripts/bench-compare.sh.

Each figure is the best of 3 runs of about --seconds each; prints one line per
size, or JSON with --json.
"""

import argparse
import json
import time

from cryptography.fernet import Fernet

SIZES = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB"), (1024 * 1024, "1MiB")]


def rate(fn, seconds):
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, n / elapsed)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=0.3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    f = Fernet(Fernet.generate_key())
    out = []
    for size, label in SIZES:
        data = b"\xa5" * size
        token = f.encrypt(data)
        seal = rate(lambda: f.encrypt(data), a.seconds)
        opened = rate(lambda: f.decrypt(token), a.seconds)
        out.append({"size": label, "bytes": size, "seal_per_sec": seal, "seal_mib_per_sec": seal * size / 1048576,
                    "open_per_sec": opened, "open_mib_per_sec": opened * size / 1048576})
    if a.json:
        print(json.dumps(out))
    else:
        for r in out:
            print(f"python fernet {r['size']:>6}: seal {r['seal_per_sec']:>10.0f}/s {r['seal_mib_per_sec']:8.1f} MiB/s"
                  f"   open {r['open_per_sec']:>10.0f}/s {r['open_mib_per_sec']:8.1f} MiB/s")


if __name__ == "__main__":
    main()
