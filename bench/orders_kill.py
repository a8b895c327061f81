#!/usr/bin/env python3
"""Orders survive kill -9 of either side during delivery (issue 14).

Starts a Boss in a fresh home, enrols agent 6 from a second home (its own
"machine"), queues --orders orders for it, then --kills times: starts
`spyctl orders` in the agent's home (a v2 fetch that stores each offered
batch durably, then confirms it) and, after a random delay, kill -9s either
that fetch or the Boss (chosen at random; a killed Boss is restarted on the
same address). The cut point is random among: a random delay (often
mid-handshake), just after the agent stored an offer but before it confirmed
it, and just after the Boss marked orders delivered. Then it fetches until nothing is left and checks, in the
agent's home, that every order is there exactly once, and, in the Boss's
database, that none is left undelivered.

Prints one summary line per 10 kills and a JSON result at the end; exits 1
if an order is lost or shown twice.

Usage: python3 bench/orders_kill.py [--bin target/release/spyctl]
       [--orders 10000] [--kills 100] [--seed 1] [--max-delay-ms 30]
"""

import argparse
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PASSWORD = b"mission-accepted-96\n"


class Boss:
    """The Boss process in its home, restartable on the same address."""

    def __init__(self, bin_path, home):
        self.bin, self.home, self.proc, self.addr = bin_path, home, None, "127.0.0.1:0"

    def start(self):
        self.proc = subprocess.Popen(
            [self.bin, "--home", self.home, "boss", "serve", "--bind", self.addr],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline()
        match = re.match(r"Boss listening on (\S+)", line)
        if not match:
            raise SystemExit(f"the Boss did not start: {line!r}")
        self.addr = match.group(1)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


def file_size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def pending(db_path):
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM Orders WHERE DeliveredAt IS NULL").fetchone()[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "spyctl"))
    p.add_argument("--orders", type=int, default=10000)
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-delay-ms", type=float, default=30.0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="orders-kill-")
    boss_home, agent_home = os.path.join(work, "boss"), os.path.join(work, "agent")
    os.mkdir(boss_home, 0o700)
    os.mkdir(agent_home, 0o700)
    sp = [a.bin, "--home", boss_home]
    run(sp + ["-q", "db", "init"])
    run(sp + ["-q", "login", "--name", "Ethan Hunt", "--password-stdin"], input=PASSWORD)
    boss = Boss(a.bin, boss_home)
    boss.start()
    code = json.loads(run(sp + ["--json", "agent", "enroll", "6"]).stdout)["code"]
    run([a.bin, "--home", agent_home, "-q", "join", code, "--addr", boss.addr])

    t0 = time.time()
    for i in range(a.orders):
        run(sp + ["-q", "order", "6", f"order {i:05d} of {a.orders}"])
    print(f"queued {a.orders} orders in {time.time() - t0:.1f} s; load {os.getloadavg()[0]:.2f}", flush=True)

    fetch = [a.bin, "--home", agent_home, "--json", "orders", "--addr", boss.addr, "--timeout", "5"]
    killed = {"agent": 0, "boss": 0}
    mid_delivery = 0
    delivered_per_round = []
    points = {"delay": 0, "stored": 0, "confirmed": 0}
    orders_file = os.path.join(agent_home, "orders")
    db_path = os.path.join(boss_home, "spyctl.db")
    t0 = time.time()
    for k in range(1, a.kills + 1):
        left_before = pending(db_path)
        proc = subprocess.Popen(fetch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Where to cut, at random: after a random delay (often mid-handshake
        # or mid-offer); right after the agent's home grew (an offer stored
        # but not yet confirmed, the riskiest point); or once the Boss has
        # marked at least one order delivered (confirmed, next offer on the way).
        point = rng.choice(["delay", "stored", "confirmed"])
        size_before = file_size(orders_file)
        deadline = time.time() + 10
        if point == "delay":
            time.sleep(rng.uniform(0, a.max_delay_ms) / 1000)
        while point != "delay" and proc.poll() is None and time.time() < deadline:
            if point == "stored" and file_size(orders_file) > size_before:
                break
            if point == "confirmed" and pending(db_path) < left_before:
                break
            time.sleep(0.0002)
        points[point] += 1
        victim = rng.choice(["agent", "boss"])
        still_running = proc.poll() is None
        if victim == "agent":
            proc.kill()
            proc.wait()
        else:
            boss.kill()
            proc.wait()
            boss.start()
        killed[victim] += 1
        # Mid-delivery: the fetch was still running and orders were still waiting.
        left_after = pending(db_path)
        mid_delivery += still_running and left_after > 0
        delivered_per_round.append(left_before - left_after)
        if k % 10 == 0 or k == a.kills:
            left = pending(db_path)
            print(
                f"kill {k}: agent {killed['agent']}, boss {killed['boss']}, mid-delivery {mid_delivery}; "
                f"{left} undelivered; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )

    # Fetch until the outbox is empty (no kills now).
    for _ in range(100):
        run(fetch)
        if pending(db_path) == 0:
            break
    elapsed = time.time() - t0
    stored = json.loads(run([a.bin, "--home", agent_home, "--json", "orders", "--offline"]).stdout)["orders"]
    ids = [o["id"] for o in stored]
    texts = [o["text"] for o in stored]
    expected = {f"order {i:05d} of {a.orders}" for i in range(a.orders)}
    result = {
        "orders": a.orders,
        "kills": killed,
        "kills_mid_delivery": mid_delivery,
        "cut_points": points,
        "confirmed_per_round_max": max(delivered_per_round),
        "stored_in_agent_home": len(stored),
        "distinct_ids": len(set(ids)),
        "shown_twice": len(ids) - len(set(ids)),
        "lost": len(expected - set(texts)),
        "unexpected": len(set(texts) - expected),
        "undelivered_at_boss": pending(db_path),
        "seconds_from_first_kill_to_done": round(elapsed, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    boss.kill()
    print(json.dumps(result))
    ok = result["lost"] == 0 and result["shown_twice"] == 0 and result["unexpected"] == 0
    ok = ok and result["undelivered_at_boss"] == 0 and len(stored) == a.orders
    if ok:
        subprocess.run(["rm", "-rf", work])
    else:
        print(f"FAILED; homes kept in {work}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
