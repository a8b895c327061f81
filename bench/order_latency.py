#!/usr/bin/env python3
"""bench/order_latency.py [BIN] [N]: how fast an order reaches a listening agent
(issue 14: p99 under 10 ms on loopback), with real processes in separate homes.

A Boss home (db init, the director logged in, `boss serve` on 127.0.0.1:0) and
agent 6 enrolled and joined from its own home, running `spyctl --json listen`.
Each of N orders is queued by a separate `spyctl --json order 6 TEXT` process
(the director's, as in real use). Latency = the moment the first byte of the
agent's JSON line for that order reaches this script, minus the moment the
first byte of `order`'s JSON reaches it. `order` prints only after its
transaction committed, so the span covers: the Boss noticing the commit (its
1 ms PRAGMA data_version poll), reading and opening the order, the Noise frame,
the agent's fsync of its orders file, and its print. Orders are spaced 20 ms
apart so each is measured on its own, not queued behind the previous batch.

Set HOMES_DIR (e.g. /dev/shm) to put both homes elsewhere than the default
temporary directory (the machine's disk).

Reference in the same run: the same order fetched by running `spyctl orders`
right after `order` printed (what an agent without `listen` would do: a new
connection, a handshake, a fetch). Also: the Boss's CPU while idle, with and
without a listener (from /proc), and `uptime` before and after.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/spyctl")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
REF = max(50, N // 10)
AGENT = "6"


def sp(home, *args, stdin=None):
    out = subprocess.run([BIN, "--home", home, *args], input=stdin, capture_output=True, check=True)
    return out.stdout.decode()


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(name, values_ns):
    ms = [v / 1e6 for v in values_ns]
    print(
        f"{name:<34} n={len(ms):5d}  p50 {pct(ms, 50):7.3f} ms  p90 {pct(ms, 90):7.3f} ms  "
        f"p99 {pct(ms, 99):7.3f} ms  max {max(ms):7.3f} ms"
    )


def first_byte_then_rest(proc):
    """Reads a child's stdout: the time its first byte arrived, and all of it."""
    fd = proc.stdout.fileno()
    first = os.read(fd, 1)
    t = time.perf_counter_ns()
    rest = proc.stdout.read()
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args} failed: {proc.stderr.read().decode()}")
    return t, (first + rest).decode()


def queue_order(boss_home, text):
    proc = subprocess.Popen(
        [BIN, "--home", boss_home, "--json", "order", AGENT, text], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    t, out = first_byte_then_rest(proc)
    return t, json.loads(out)["queued"][0]["order"]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


def main():
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    # HOMES_DIR=/dev/shm puts both homes in memory: fsync then costs nothing,
    # which shows how much of the latency is the agent's durable write.
    work = tempfile.mkdtemp(dir=os.environ.get("HOMES_DIR"))
    print(f"homes under {work}")
    boss_home, agent_home = os.path.join(work, "boss"), os.path.join(work, "agent")
    os.mkdir(boss_home, 0o700)
    os.mkdir(agent_home, 0o700)
    sp(boss_home, "-q", "db", "init")
    sp(boss_home, "-q", "login", "--name", "Ethan Hunt", "--password-stdin", stdin=b"mission-accepted-96\n")
    boss = subprocess.Popen(
        [BIN, "--home", boss_home, "boss", "serve", "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    addr = re.search(r"listening on (\S+)", boss.stdout.readline().decode()).group(1)
    code = json.loads(sp(boss_home, "--json", "agent", "enroll", AGENT))["code"]
    sp(agent_home, "-q", "join", code, "--addr", addr)
    listener = None
    try:
        # Idle cost with nobody listening (the dispatcher's 50 ms poll).
        hz = os.sysconf("SC_CLK_TCK")
        before = cpu_ticks(boss.pid)
        time.sleep(5)
        idle_cpu = (cpu_ticks(boss.pid) - before) / hz / 5 * 100

        listener = subprocess.Popen(
            [BIN, "--home", agent_home, "--json", "listen", "--addr", addr],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        arrivals, seen = {}, threading.Condition()

        def read_listener():
            fd = listener.stdout.fileno()
            buf = b""
            while True:
                chunk = os.read(fd, 65536)
                t = time.perf_counter_ns()
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    order = json.loads(line)
                    with seen:
                        arrivals[order["id"]] = t
                        seen.notify_all()

        threading.Thread(target=read_listener, daemon=True).start()
        time.sleep(0.5)
        # Idle cost with an agent listening (the 1 ms poll).
        before = cpu_ticks(boss.pid)
        time.sleep(5)
        listening_cpu = (cpu_ticks(boss.pid) - before) / hz / 5 * 100
        latencies, order_wall = [], []
        for i in range(N):
            start = time.perf_counter_ns()
            t, oid = queue_order(boss_home, f"bench order {i}")
            order_wall.append(time.perf_counter_ns() - start)
            with seen:
                if not seen.wait_for(lambda: oid in arrivals, timeout=10):
                    raise SystemExit(f"order {oid} never reached the listener")
                latencies.append(arrivals[oid] - t)
            time.sleep(0.02)
        listener.terminate()
        listener.wait()
        listener = None

        # Reference: no listener; the agent fetches right after `order` printed.
        fetch = []
        for i in range(REF):
            t, _ = queue_order(boss_home, f"reference order {i}")
            out = json.loads(sp(agent_home, "--json", "orders", "--addr", addr))
            fetch.append(time.perf_counter_ns() - t)
            assert out["new"] == 1, out
        negative = sum(1 for v in latencies if v < 0)
        print(f"orders to agent 6 over loopback, {N} queued one at a time by separate `order` processes")
        summary("listen: order printed -> agent printed", latencies)
        summary("reference: order -> `orders` fetched", fetch)
        summary("(the `order` process, spawn to exit)", order_wall)
        if negative:
            print(f"({negative} push(es) reached the agent before `order`'s own print reached this script)")
        print(f"Boss CPU while idle, nobody listening (50 ms outbox poll): {idle_cpu:.2f} % of one core")
        print(f"Boss CPU while idle, one agent listening (1 ms outbox poll): {listening_cpu:.2f} % of one core")
    finally:
        if listener:
            listener.kill()
        boss.terminate()
        boss.wait()
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
