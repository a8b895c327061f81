#!/usr/bin/env python3
"""The machine's fsync rate where the benchmarks write: append 4 KiB and
fsync, in a loop, for --seconds. This is the ceiling of any design that
commits (and so fsyncs) once per message; group commit is measured against it.
"""

import argparse
import json
import os
import tempfile
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=".", help="a directory on the disk to measure")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    block = os.urandom(4096)
    fd, path = tempfile.mkstemp(prefix="fsync-rate-", dir=a.dir)
    try:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < a.seconds:
            os.write(fd, block)
            os.fsync(fd)
            n += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    rate = n / elapsed
    if a.json:
        print(json.dumps({"fsyncs": n, "elapsed_secs": elapsed, "fsync_per_sec": rate}))
    else:
        print(f"fsync rate: {rate:.0f}/s ({n} x write 4 KiB + fsync in {elapsed:.2f} s, {1e3 / rate:.3f} ms each)")


if __name__ == "__main__":
    main()
