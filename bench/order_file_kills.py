#!/usr/bin/env python3
"""bench/order_file_kills.py: random kill -9 of either side while an agent
downloads the file an order carries (`order --file`, then `orders`).

A Boss home and a separate joined agent home (agent 6) on 127.0.0.1; the
agent reaches the Boss through a counting TCP proxy in this script. A file of
random bytes is ordered to agent 6 twice: the first download runs
uninterrupted (the reference, timed, and a check of the counting: it must
re-fetch nothing); during the second, at random moments, the script sends
SIGKILL to the agent's `spyctl orders` or to the Boss (a coin toss). A
killed Boss is restarted on the same port at once (a running `orders` then
resumes in process, on a new session); a killed or failed `orders` is
started again and resumes from what its home holds.

Re-fetched bytes are counted on the wire, by the proxy: for each connection
it counts the chunk bytes (`B` frames: their lines' length, 61,440 bytes per
81,959-byte line, a line cut short counted pro rata) it forwarded towards the
agent, and notes the agent's durable offset (the whole segments of
`received/<FileId>.part`, from its size) when the connection's first chunk
line starts, before the agent can have written any of it. An interruption
then re-fetched what the connection carried minus how far the next
connection's starting offset moved on.

At the end `orders --save` writes the plaintext (checked by spyctl) and the
script compares its SHA-256 with the source's.

Usage: bench/order_file_kills.py [--bin target/release/spyctl] [--mib 256] [--kills 20]
"""

import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from killbench import boss_and_agent, kill_args, run

CHUNK = 61440
# "F " + base64 of (type byte + 8-byte offset + 61,440 bytes + 16-byte tag) + "\n".
FULL_LINE = 2 + (1 + 8 + CHUNK + 16 + 2) // 3 * 4 + 1
HEADER = 25
SEGMENT = 4 + CHUNK + 16



def held(part):
    """Plaintext bytes in whole segments of the agent's partial copy."""
    try:
        size = os.path.getsize(part)
    except FileNotFoundError:
        return 0
    return max(0, size - HEADER) // SEGMENT * CHUNK


class Proxy:
    """Forwards 127.0.0.1:port to the Boss; counts chunk bytes downstream."""

    def __init__(self, target, part_path):
        self.target = target
        self.part = part_path
        self.lock = threading.Lock()
        self.conns = []  # [start_offset or None, chunk_bytes]
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def reset(self, part_path):
        with self.lock:
            self.part = part_path
            self.conns = []

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            try:
                boss = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                record = [None, 0.0]
                self.conns.append(record)
            threading.Thread(target=self.pipe, args=(client, boss, None), daemon=True).start()
            threading.Thread(target=self.pipe, args=(boss, client, record), daemon=True).start()

    def pipe(self, src, dst, record):
        line = 0
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if record is not None:
                    start = 0
                    while start < len(data):
                        nl = data.find(b"\n", start)
                        end = len(data) if nl < 0 else nl + 1
                        before = line
                        line += end - start
                        if before < 20000 <= line and record[0] is None:
                            # A chunk line starts: the agent holds only what
                            # it held before this connection's first chunk.
                            with self.lock:
                                record[0] = held(self.part)
                        if nl >= 0:
                            if line >= 20000:
                                record[1] += chunk_bytes(line)
                            line = 0
                        start = end
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if record is not None and line >= 20000:
                record[1] += CHUNK * line / FULL_LINE  # a line cut short
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def chunk_bytes(line_len):
    """The chunk bytes a whole `B` line of `line_len` bytes carries."""
    if line_len == FULL_LINE:
        return CHUNK
    b64 = line_len - 3
    raw = b64 // 4 * 3  # the file's last chunk: padding ignored, at most 2 bytes off
    return max(0, raw - 1 - 8 - 16)


def main():
    ap = kill_args(__doc__.splitlines()[0])
    a = ap.parse_args()
    rng = random.Random(a.seed)
    binary = os.path.abspath(a.bin)
    work, boss, agent_home = boss_and_agent(binary, "order-file-kills-")
    boss_home = os.path.join(work, "boss")
    sp = [binary, "--home", boss_home]
    ap_ = [binary, "--home", agent_home]

    # A whole number of chunks (256 MiB less 4,096 bytes, say), so every
    # chunk line on the wire is a full one the proxy recognises by length.
    size = (a.mib << 20) // CHUNK * CHUNK
    path = os.path.join(work, "big.bin")
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(left, 1 << 20))
            sha.update(block)
            f.write(block)
            left -= len(block)
    local_sha = sha.hexdigest()

    host, port = boss.addr.split(":")
    proxy = Proxy((host, int(port)), "")

    def order():
        queued = json.loads(run(sp + ["--json", "order", "6", "--file", path, "bench"]))
        file_id = queued["file"]["id"]
        part = os.path.join(agent_home, "received", file_id + ".part")
        proxy.reset(part)
        return queued["queued"][0]["order"], part

    def start_orders():
        return subprocess.Popen(ap_ + ["--json", "orders", "--addr", proxy.addr, "--timeout", "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # The uninterrupted reference: timed, and it must re-fetch nothing.
    t_order = time.monotonic()
    order()
    order_secs = time.monotonic() - t_order
    print("order --file (read, hash, seal under files/orders): %.2f s (%.0f MiB/s)" %
          (order_secs, size / order_secs / (1 << 20)))
    t0 = time.monotonic()
    clean = start_orders()
    out, err = clean.communicate()
    clean_secs = time.monotonic() - t0
    if clean.returncode != 0:
        sys.exit("the reference download failed: " + err)
    fetched = sum(c[1] for c in proxy.conns)
    print("uninterrupted download of %d bytes: %.2f s (%.0f MiB/s), chunk bytes on the wire %d (file %d)" %
          (size, clean_secs, size / clean_secs / (1 << 20), round(fetched), size))

    # The same, straight to the Boss (no proxy): spyctl's own speed.
    order()
    t0 = time.monotonic()
    run(ap_ + ["-q", "orders", "--addr", boss.addr])
    direct_secs = time.monotonic() - t0
    print("uninterrupted download straight to the Boss: %.2f s (%.0f MiB/s)" %
          (direct_secs, size / direct_secs / (1 << 20)))

    order_id, part = order()
    kills = {"agent": 0, "boss": 0}
    agent_runs = 1
    agent = start_orders()
    t_start = time.monotonic()
    step = size / (a.kills + 2)
    window_secs = clean_secs / (size / (8 * CHUNK))
    while True:
        if kills["agent"] + kills["boss"] < a.kills:
            target = held(part) + rng.uniform(0.1, 1.5) * step
            while held(part) < target and agent.poll() is None:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 2 * window_secs))
            if agent.poll() is not None:
                if agent.returncode == 0:
                    break
                agent = start_orders()
                agent_runs += 1
                continue
            if rng.random() < 0.5:
                agent.send_signal(signal.SIGKILL)
                agent.wait()
                kills["agent"] += 1
                agent = start_orders()
                agent_runs += 1
            else:
                boss.proc.send_signal(signal.SIGKILL)
                boss.proc.wait()
                kills["boss"] += 1
                boss.start()
        else:
            agent.communicate()
            if agent.returncode == 0:
                break
            agent = start_orders()
            agent_runs += 1
    elapsed = time.monotonic() - t_start

    # Per interruption: what a connection carried, minus how far the next
    # one's starting offset moved on. Connections that carried no chunk
    # (the Boss down, the orders step) are skipped.
    with proxy.lock:
        conns = [(c[0], c[1]) for c in proxy.conns if c[0] is not None]
    refetched = []
    for (start, carried), (next_start, _) in zip(conns, conns[1:]):
        refetched.append(max(0.0, carried - (next_start - start)))
    last_start, last_carried = conns[-1]
    tail_extra = last_carried - (size - last_start)
    print("kills: %d of the agent, %d of the Boss (%d asked), over %.1f s; %d `orders` processes, "
          "%d connections that carried chunks" % (kills["agent"], kills["boss"], a.kills, elapsed, agent_runs,
                                                 len(conns)))
    if refetched:
        n = len(refetched)
        print("re-fetched bytes per interruption (%d): max %d (%.2f chunks), mean %.0f (%.2f chunks); "
              "total %d of %d" % (n, max(refetched), max(refetched) / CHUNK, sum(refetched) / n,
                                  sum(refetched) / n / CHUNK, sum(refetched), size))
    print("last connection carried %d bytes beyond what was missing (expected 0)" % round(tail_extra))

    out_path = os.path.join(work, "saved.bin")
    run(ap_ + ["orders", "--save", order_id, "--out", out_path])
    got = hashlib.sha256(open(out_path, "rb").read()).hexdigest()
    print("saved SHA-256 %s source %s: %s" % (got[:16], local_sha[:16], "MATCH" if got == local_sha else "MISMATCH"))
    boss.proc.send_signal(signal.SIGTERM)
    boss.proc.wait()
    print("uptime after:", run(["uptime"]).strip())
    subprocess.run(["rm", "-rf", work])
    if got != local_sha:
        sys.exit(1)


if __name__ == "__main__":
    main()
