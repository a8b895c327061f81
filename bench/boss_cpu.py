#!/usr/bin/env python3
"""Boss CPU per durable message, beside its references in the same run.

Starts a spyctl Boss in a fresh home (default logging, as an operator runs
it), then for each of --runs rounds: measures the disk's fsync rate, runs
`spyctl boss bench` (8 persistent connections by default) while reading the
Boss's user and system CPU from /proc/<pid>/stat before and after, and, with
--python, runs the Python reference Boss (bench/boss.py driven by
bench/sender.py) right after. Prints one line per round and the spread.

Per-message CPU is less sensitive to a shared machine than throughput: other
jobs slow the Boss down but do not add to its own CPU time, so the load
average is printed with every round for reading the rates.

Usage: python bench/boss_cpu.py [--bin target/release/spyctl] [--runs 3]
       [-c 8] [-n 20000] [--python] [--json]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """(user, system) seconds of every thread the process ever had."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) is in parentheses and may hold spaces.
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fsync_rate(directory, seconds=1.0):
    block = os.urandom(4096)
    fd, path = tempfile.mkstemp(prefix="fsync-rate-", dir=directory)
    try:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, block)
            os.fsync(fd)
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)


def start_server(argv, out_path, err_path):
    """Starts a server that prints 'listening on HOST:PORT'; returns (proc, addr)."""
    out, err = open(out_path, "w"), open(err_path, "w")
    proc = subprocess.Popen(argv, stdout=out, stderr=err)
    for _ in range(200):
        with open(out_path) as f:
            m = re.search(r"listening on (\S+:\d+)", f.read())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"error: server did not start; see {err_path}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "spyctl"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("-c", "--connections", type=int, default=8)
    p.add_argument("-n", "--messages", type=int, default=20000)
    p.add_argument("--pipeline", type=int, default=1)
    p.add_argument("--python", action="store_true", help="also run the Python reference Boss each round")
    p.add_argument("--python-messages", type=int, default=800)
    p.add_argument("--quiet-boss", action="store_true", help="run the Boss with -q (errors only)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    work = tempfile.mkdtemp(prefix="spyctl-cpu.")
    home = os.path.join(work, "home")
    sp = [a.bin, "--home", home]
    subprocess.run(sp + ["db", "init"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(sp + ["login", "--name", "Ethan Hunt", "--password-stdin"], input=b"mission-accepted-96\n",
                   check=True, stdout=subprocess.DEVNULL)
    key = os.path.join(work, "agent1.key")
    subprocess.run(sp + ["agent", "key", "export", "1", "--out", key], check=True, stdout=subprocess.DEVNULL)
    auth = ["--agent-id", "1", "--key-file", key]

    serve = sp + (["-q"] if a.quiet_boss else []) + ["boss", "serve", "--bind", "127.0.0.1:0"]
    boss, addr = start_server(serve, os.path.join(work, "boss.out"), os.path.join(work, "boss.err"))
    py = sys.executable
    rounds = []
    try:
        def bench(messages):
            return [a.bin, "--json", "boss", "bench", "--addr", addr, "-c", str(a.connections), "-n", str(messages),
                    "--mode", "persistent", "-s", "64", "--pipeline", str(a.pipeline)] + auth

        # Warm-up: the first connections, page cache and WAL growth are not the steady state.
        subprocess.run(bench(2000), check=True, stdout=subprocess.DEVNULL)
        for i in range(a.runs):
            r = {"round": i + 1, "load_before": loadavg(), "fsync_per_sec": fsync_rate(work)}
            u0, s0 = cpu_seconds(boss.pid)
            out = subprocess.run(bench(a.messages), check=True, capture_output=True).stdout
            u1, s1 = cpu_seconds(boss.pid)
            run = json.loads(out)
            acked = run["stored"] + run.get("duplicates", 0)
            r.update({
                "msgs_per_sec": run["msgs_per_sec"],
                "p50_ms": run["latency_us"]["p50"] / 1e3,
                "p99_ms": run["latency_us"]["p99"] / 1e3,
                "failed": run.get("failed", 0),
                "boss_user_us": (u1 - u0) / acked * 1e6,
                "boss_sys_us": (s1 - s0) / acked * 1e6,
            })
            r["boss_cpu_us"] = r["boss_user_us"] + r["boss_sys_us"]
            r["x_fsync"] = r["msgs_per_sec"] / r["fsync_per_sec"]
            if a.python:
                pydir = os.path.join(work, f"pyboss-{i}")
                pyboss, pyaddr = start_server(
                    [py, os.path.join(HERE, "boss.py"), "--bind", "127.0.0.1:0", "--dir", pydir] + auth,
                    os.path.join(work, f"pyboss-{i}.out"), os.path.join(work, f"pyboss-{i}.err"))
                try:
                    out = subprocess.run(
                        [py, os.path.join(HERE, "sender.py"), "--json", "--addr", pyaddr, "-c", str(a.connections),
                         "-n", str(a.python_messages), "-s", "64", "--mode", "persistent"] + auth,
                        check=True, capture_output=True).stdout
                finally:
                    stop(pyboss)
                r["python_msgs_per_sec"] = json.loads(out)["msgs_per_sec"]
                r["x_python"] = r["msgs_per_sec"] / r["python_msgs_per_sec"]
            r["load_after"] = loadavg()
            rounds.append(r)
            if not a.json:
                line = (f"round {r['round']}: {r['msgs_per_sec']:>8.0f} msgs/s  p50 {r['p50_ms']:.2f} ms  "
                        f"Boss CPU {r['boss_cpu_us']:.1f} us/msg (user {r['boss_user_us']:.1f} + sys "
                        f"{r['boss_sys_us']:.1f})  fsync {r['fsync_per_sec']:.0f}/s ({r['x_fsync']:.2f}x)")
                if a.python:
                    line += f"  Python {r['python_msgs_per_sec']:.0f} msgs/s ({r['x_python']:.1f}x)"
                line += f"  load {r['load_before']} -> {r['load_after']}"
                if r["failed"]:
                    line += f"  FAILED {r['failed']}"
                print(line, flush=True)
    finally:
        stop(boss)
        if not a.keep:
            subprocess.run(["rm", "-rf", work])
    if a.json:
        print(json.dumps({"connections": a.connections, "messages": a.messages, "rounds": rounds}))
    else:
        cpu = [r["boss_cpu_us"] for r in rounds]
        rate = [r["msgs_per_sec"] for r in rounds]
        print(f"spread: Boss CPU {min(cpu):.1f}-{max(cpu):.1f} us/msg, {min(rate):.0f}-{max(rate):.0f} msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
