#!/usr/bin/env python3
"""Reference sender / load generator, in plain Python.

Speaks the same lines as bench/boss.py and spyctl (PROTOCOL.md): each message
is `MSG <agent-id> <fernet-token>` whose plaintext is a JSON header line and
the body; each reply must be an ACK sealed under the same key naming the same
message id. Threads stand in for connections, as a course client would.

    sender.py --addr 127.0.0.1:5001 --agent-id 6 --key-file k -c 8 -n 2000 -s 64
    sender.py --addr 127.0.0.1:5001 --agent-id 6 --key-file k --file big.bin

--messages is the total, split evenly over the connections (as spyctl boss
bench does). Prints msgs/s and latency p50/p99/max, or one JSON object.
"""

import argparse
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time

from cryptography.fernet import Fernet

CHUNK = 512 * 1024


def percentile(sorted_samples, p):
    if not sorted_samples:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_samples)))
    return sorted_samples[min(rank, len(sorted_samples)) - 1]


class Conn:
    def __init__(self, addr, timeout):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def round_trip(self, line):
        self.sock.sendall(line)
        reply = self.rfile.readline(1 << 20)
        if not reply.endswith(b"\n"):
            raise ConnectionError("the Boss closed the connection")
        return reply

    def close(self):
        self.rfile.close()
        self.sock.close()


def send_one(conn, fernet, agent_id, header, body):
    plaintext = json.dumps(header).encode() + b"\n" + body
    line = b"MSG %d " % agent_id + fernet.encrypt(plaintext) + b"\n"
    reply = conn.round_trip(line)
    if not reply.startswith(b"ACK "):
        raise RuntimeError(reply.decode(errors="replace").strip())
    ack = fernet.decrypt(reply[4:].strip(), ttl=300)
    ack_header = json.loads(ack.partition(b"\n")[0])
    if ack_header.get("id") != header["id"]:
        raise RuntimeError("the ACK names another message")
    return ack_header["status"]


def worker(a, fernet, count, body, latencies, errors):
    conn = None
    try:
        for _ in range(count):
            header = {"v": 1, "id": os.urandom(16).hex(), "kind": "text"}
            began = time.perf_counter()
            if conn is None:
                conn = Conn(a.addr, a.timeout)
            send_one(conn, fernet, a.agent_id, header, body)
            if a.mode == "per-message":
                conn.close()
                conn = None
            latencies.append(time.perf_counter() - began)
    except Exception as e:  # report, like spyctl boss bench: a sender stops at its first failure
        errors.append(str(e))
    finally:
        if conn is not None:
            conn.close()


def load(a, fernet):
    body = b"x" * a.size
    latencies, errors = [], []
    n = max(1, a.connections)
    shares = [a.messages // n + (1 if i < a.messages % n else 0) for i in range(n)]
    threads = [threading.Thread(target=worker, args=(a, fernet, s, body, latencies, errors)) for s in shares]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    us = lambda s: round(s * 1e6)  # noqa: E731
    return {
        "impl": "python",
        "connections": n,
        "messages": a.messages,
        "size": a.size,
        "mode": a.mode,
        "acked": len(latencies),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
        "elapsed_secs": elapsed,
        "msgs_per_sec": len(latencies) / elapsed if elapsed else 0.0,
        "latency_us": {
            "p50": us(percentile(latencies, 50)),
            "p99": us(percentile(latencies, 99)),
            "max": us(latencies[-1]) if latencies else 0,
        },
    }


def send_file(a, fernet):
    size = os.path.getsize(a.file)
    started = time.perf_counter()
    digest = hashlib.sha256()
    with open(a.file, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    sha = digest.hexdigest()
    file_id = os.urandom(16).hex()
    conn = Conn(a.addr, a.timeout)
    offset = 0
    with open(a.file, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            header = {"v": 1, "id": os.urandom(16).hex(), "kind": "file", "file_id": file_id,
                      "name": os.path.basename(a.file), "offset": offset, "size": size}
            offset += len(chunk)
            if offset == size:
                header["sha256"] = sha
            send_one(conn, fernet, a.agent_id, header, chunk)
            if offset == size:
                break
    conn.close()
    elapsed = time.perf_counter() - started
    return {"impl": "python", "file_bytes": size, "elapsed_secs": elapsed, "mib_per_sec": size / elapsed / 1048576}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", default="127.0.0.1:5001")
    p.add_argument("--agent-id", type=int, required=True)
    p.add_argument("--key-file", required=True)
    p.add_argument("-c", "--connections", type=int, default=1)
    p.add_argument("-n", "--messages", type=int, default=1000, help="total, split over the connections")
    p.add_argument("-s", "--size", type=int, default=64, help="body bytes per message")
    p.add_argument("--mode", choices=["persistent", "per-message"], default="persistent")
    p.add_argument("--file", help="send this file in 512 KiB chunks instead of messages")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    with open(a.key_file) as f:
        fernet = Fernet(f.read().strip())
    result = send_file(a, fernet) if a.file else load(a, fernet)
    if a.json:
        print(json.dumps(result))
    elif a.file:
        print(f"{result['file_bytes']} bytes in {result['elapsed_secs']:.3f} s: {result['mib_per_sec']:.1f} MiB/s")
    else:
        l = result["latency_us"]
        print(f"{result['acked']} of {a.messages} acknowledged in {result['elapsed_secs']:.3f} s: "
              f"{result['msgs_per_sec']:.0f} msgs/s; latency p50 {l['p50'] / 1000:.3f} ms "
              f"p99 {l['p99'] / 1000:.3f} ms max {l['max'] / 1000:.3f} ms")
    if result.get("failed"):
        print(f"error: {result['failed']} sender(s) failed; first: {result['first_error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
