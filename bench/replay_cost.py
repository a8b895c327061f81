#!/usr/bin/env python3
"""bench/replay_cost.py ADDR AGENT_ID KEYFILE [MIB] [REPLAYS]

Prices a keyless replay against a Boss: uploads a MIB-MiB file (512 KiB chunks,
written from PROTOCOL.md), then re-sends the captured line of its last chunk
REPLAYS times, as someone without the key could within the TTL, and prints the
median and max time the Boss took to answer a replay, and the answer. Loopback
only; bounded. Needs `cryptography` (the tests' target/py-venv has it).
"""
import hashlib, json, os, secrets, socket, statistics, sys, time

from cryptography.fernet import Fernet

addr, agent, keyfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mib = int(sys.argv[4]) if len(sys.argv) > 4 else 64
replays = int(sys.argv[5]) if len(sys.argv) > 5 else 20
key = Fernet(open(keyfile, "rb").read().strip())
host, port = addr.rsplit(":", 1)
sock = socket.create_connection((host, int(port)))
reader = sock.makefile("rb")
data = os.urandom(mib * 1024 * 1024)
sha = hashlib.sha256(data).hexdigest()
file_id = secrets.token_hex(16)
chunk = 512 * 1024
last_line = None
for offset in range(0, len(data), chunk):
    body = data[offset : offset + chunk]
    header = {"v": 1, "id": secrets.token_hex(16), "kind": "file", "file_id": file_id, "name": "replay.bin",
              "offset": offset, "size": len(data)}
    if offset + len(body) == len(data):
        header["sha256"] = sha
    line = b"MSG %d " % agent + key.encrypt(json.dumps(header).encode() + b"\n" + body) + b"\n"
    sock.sendall(line)
    reply = reader.readline()
    if not reply.startswith(b"ACK"):
        sys.exit(f"upload refused: {reply[:120]!r}")
    last_line = line
times = []
for _ in range(replays):
    t0 = time.perf_counter()
    sock.sendall(last_line)
    reply = reader.readline()
    times.append(time.perf_counter() - t0)
answer = reply.split(b" ", 1)[0].decode()
print(f"{mib} MiB file, {replays} replays of its last chunk: median {statistics.median(times)*1000:.2f} ms, "
      f"max {max(times)*1000:.2f} ms per answer ({answer})")
