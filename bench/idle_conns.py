#!/usr/bin/env python3
"""Holds N idle connections open to a Boss, for the memory figure in
scripts/bench-compare.sh. With --key-file each connection first sends one real
message and waits for its ACK (so every connection thread has done real work),
then all sit idle. Prints `ready N` when they are all open, then holds them
until stdin closes or --hold seconds pass (bounded, so it always ends).
"""

import argparse
import json
import os
import select
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True)
    p.add_argument("-n", "--connections", type=int, default=256)
    p.add_argument("--agent-id", type=int)
    p.add_argument("--key-file")
    p.add_argument("--hold", type=float, default=30.0, help="seconds to hold at most")
    a = p.parse_args()
    fernet = None
    if a.key_file:
        from cryptography.fernet import Fernet

        with open(a.key_file) as f:
            fernet = Fernet(f.read().strip())
    host, port = a.addr.rsplit(":", 1)
    socks = []
    for _ in range(a.connections):
        s = socket.create_connection((host, int(port)), timeout=10)
        if fernet is not None:
            header = json.dumps({"v": 1, "id": os.urandom(16).hex(), "kind": "text"}).encode()
            s.sendall(b"MSG %d " % a.agent_id + fernet.encrypt(header + b"\nidle soon") + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            if not reply.startswith(b"ACK "):
                print(f"error: {reply[:80]!r}", file=sys.stderr)
                return 1
        socks.append(s)
    print(f"ready {len(socks)}", flush=True)
    deadline = time.monotonic() + a.hold
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], 0.2)
        if ready and not sys.stdin.readline():
            break
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
