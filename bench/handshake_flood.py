#!/usr/bin/env python3
"""What a keyless v2 handshake flood from one address costs the Boss.

Starts a Boss in a fresh home with `--failed-handshakes N` for each N in
--budgets (0 = no limit), and for --seconds floods it from this machine with
well-formed v2 first messages (Noise IK under the Boss's public key, a fresh
random static key claiming agent 6, so each one opens but names no enrolled
key), one per connection, from --threads threads. Reports the handshakes
answered with a Noise message 2, those refused `busy`, and the Boss's own CPU
(user + system, /proc/PID/stat) per second of flood.

Needs PyPI `noiseprotocol` (the tests install it into target/py-venv):

    target/py-venv/bin/python bench/handshake_flood.py [--bin target/release/spyctl]
        [--seconds 5] [--threads 4] [--budgets 0,10]
"""

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time

from noise.connection import Keypair, NoiseConnection
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")


def boss_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def first_message(boss_x25519):
    noise = NoiseConnection.from_name(b"Noise_IK_25519_AESGCM_SHA256")
    noise.set_as_initiator()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, X25519PrivateKey.generate().private_bytes_raw())
    noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, boss_x25519)
    noise.set_prologue(b"spyctl/v2")
    noise.start_handshake()
    hello = json.dumps({"v": 2, "agent": 6, "time": int(time.time())}, separators=(",", ":")).encode()
    return b"NOISE " + base64.urlsafe_b64encode(noise.write_message(hello)) + b"\n"


def flood(addr, boss_x25519, until, counts, lock):
    host, port = addr.rsplit(":", 1)
    while time.time() < until:
        line = first_message(boss_x25519)
        try:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(line)
                answer = sock.makefile("rb").readline()
        except OSError:
            answer = b""
        kind = "noise" if answer.startswith(b"NOISE ") else "busy" if answer.startswith(b"ERR busy") else "other"
        with lock:
            counts[kind] += 1


def run_one(bin_path, budget, seconds, threads):
    home = tempfile.mkdtemp(prefix="flood-")
    os.chmod(home, 0o700)
    subprocess.run([bin_path, "--home", home, "-q", "db", "init"], check=True, capture_output=True)
    boss = subprocess.Popen(
        [bin_path, "--home", home, "-q", "boss", "serve", "--bind", "127.0.0.1:0",
         "--failed-handshakes", str(budget)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        addr = re.match(r"Boss listening on (\S+)", boss.stdout.readline()).group(1)
        # The Boss's public X25519 key (public by design: any agent's boss.pin
        # holds it), taken here from the identity file in its home.
        with open(os.path.join(home, "identity.key")) as f:
            secret = bytes.fromhex(f.read().split()[1])
        boss_x25519 = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
        counts, lock = {"noise": 0, "busy": 0, "other": 0}, threading.Lock()
        cpu0 = boss_cpu(boss.pid)
        until = time.time() + seconds
        workers = [threading.Thread(target=flood, args=(addr, boss_x25519, until, counts, lock))
                   for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        cpu = boss_cpu(boss.pid) - cpu0
    finally:
        boss.kill()
        boss.wait()
        subprocess.run(["rm", "-rf", home])
    return {
        "failed_handshakes_budget": budget or "off",
        "attempts_per_second": round(sum(counts.values()) / seconds),
        "answered_noise_per_second": round(counts["noise"] / seconds, 1),
        "refused_busy_per_second": round(counts["busy"] / seconds),
        "other": counts["other"],
        "boss_cpu_ms_per_second": round(cpu * 1000 / seconds, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "spyctl"))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--budgets", default="0,10")
    a = p.parse_args()
    for budget in (int(b) for b in a.budgets.split(",")):
        print(json.dumps(run_one(a.bin, budget, a.seconds, a.threads)), flush=True)


if __name__ == "__main__":
    main()
