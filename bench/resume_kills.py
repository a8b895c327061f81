#!/usr/bin/env python3
"""bench/resume_kills.py: random kill -9 of either side during one large upload.

A Boss home and a separate joined agent home (agent 6) on 127.0.0.1. The agent
runs `spyctl send --file` on a file of random bytes; at random moments the
script sends SIGKILL to the sender or to the Boss (a coin toss each time). A
killed Boss is restarted on the same port at once (a running sender may then
resume in process); a killed or failed sender is started again, and resumes
from the offset the Boss reports. At the end the Boss's recorded file is
exported and its SHA-256 compared with the local file's.

Re-sent bytes per interruption are counted from the sender's own debug log
(RUST_LOG=spyctl::net::client=debug, unbuffered, so a killed sender's lines
survive): the end of the last chunk it queued for the wire before the
interruption, minus the offset the upload then resumed from. That is an upper
bound: a queued chunk may not have left the machine.

With --protocol v2 the upload runs over the Noise channel (chunks of 61,440
bytes, up to 8 in flight), and a chunk in the figures is a v2 chunk.

Usage: bench/resume_kills.py [--bin target/release/spyctl] [--mib 256] [--kills 20] [--protocol v1|v2]
"""

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

from killbench import boss_and_agent, kill_args, run

QUEUED = re.compile(r"file chunk queued offset=(\d+) end=(\d+)")
RESUMED = re.compile(r"(file upload starts(?: \(v2\))?|file upload resumed|v2 upload resumed) resumed_from=(\d+)")
CHUNK = {"v1": 512 * 1024, "v2": 61440}



def main():
    ap = kill_args(__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=["v1", "v2"], default="v1")
    a = ap.parse_args()
    chunk = CHUNK[a.protocol]
    rng = random.Random(a.seed)
    binary = os.path.abspath(a.bin)
    work, boss, agent_home = boss_and_agent(binary, "resume-kills-")
    boss_home = os.path.join(work, "boss")
    sp = [binary, "--home", boss_home]

    path = os.path.join(work, "big.bin")
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(a.mib):
            block = rng.randbytes(1 << 20)
            sha.update(block)
            f.write(block)
    local_sha = sha.hexdigest()
    size = a.mib << 20

    logs = []

    def start_sender():
        log = os.path.join(work, "send-%d.log" % len(logs))
        logs.append(log)
        env = dict(os.environ, RUST_LOG="spyctl::net::client=debug,spyctl::net::v2_upload=debug")
        return subprocess.Popen([binary, "--home", agent_home, "--json", "send", "--file", path,
                                 "--addr", boss.addr, "--protocol", a.protocol], stdout=subprocess.PIPE,
                                stderr=open(log, "w"), env=env, text=True)

    # A full uncut upload first, timed: the kills are spread over its length.
    t0 = time.monotonic()
    first = start_sender()
    out, _ = first.communicate()
    clean_secs = time.monotonic() - t0
    clean = json.loads(out)
    print("uninterrupted upload of %d MiB: %.2f s (%.0f MiB/s), bytes sent %d" %
          (a.mib, clean_secs, a.mib / clean_secs, clean["bytes_sent"]))
    logs.clear()
    os.rename(path, path + ".x")  # a new path: a new upload, a new file id
    path = path + ".x"

    kills = {"sender": 0, "boss": 0}
    part_dir = os.path.join(boss_home, "files", "6")

    def held():
        # Sealed bytes of the partial upload under the Boss's files/.
        total = 0
        for name in os.listdir(part_dir) if os.path.isdir(part_dir) else []:
            if name.endswith(".part"):
                try:
                    total += os.path.getsize(os.path.join(part_dir, name))
                except FileNotFoundError:
                    pass
        return total

    sender = start_sender()
    t_start = time.monotonic()
    result = None
    step = size / (a.kills + 2)
    chunk_secs = clean_secs / (size / chunk)
    while result is None:
        if kills["sender"] + kills["boss"] < a.kills:
            # Each kill lands after the upload has grown by a random amount
            # (0.1 to 1.5 times an even share), so every kill cuts a transfer
            # in progress and the kills spread over the whole file.
            target = held() + rng.uniform(0.1, 1.5) * step
            while held() < target and sender.poll() is None:
                time.sleep(0.001)
            # Then a random moment within about two chunks' time, so a kill
            # is not tied to the instant the Boss has just written a chunk.
            time.sleep(rng.uniform(0, 2 * chunk_secs))
            if sender.poll() is not None:
                out = sender.stdout.read()
                if sender.returncode == 0:
                    result = json.loads(out)
                    break
                sender = start_sender()
                continue
            if rng.random() < 0.5:
                sender.send_signal(signal.SIGKILL)
                sender.wait()
                kills["sender"] += 1
                sender = start_sender()
            else:
                boss.proc.send_signal(signal.SIGKILL)
                boss.proc.wait()
                kills["boss"] += 1
                boss.start()
        else:
            out, _ = sender.communicate()
            if sender.returncode == 0:
                result = json.loads(out)
            else:
                sender = start_sender()
    elapsed = time.monotonic() - t_start

    # Re-sent bytes per interruption, from the logs in order.
    resent = []
    queued_end = None
    for log in logs:
        for line in open(log):
            m = QUEUED.search(line)
            if m:
                queued_end = max(queued_end or 0, int(m.group(2)))
                continue
            m = RESUMED.search(line)
            if m:
                start = int(m.group(2))
                if queued_end is not None:
                    resent.append(max(0, queued_end - start))
                queued_end = start
    n = len(resent)
    print("protocol %s, chunk %d bytes" % (a.protocol, chunk))
    print("kills: %d of the sender, %d of the Boss (%d asked), over %.1f s; %d sender processes" %
          (kills["sender"], kills["boss"], a.kills, elapsed, len(logs)))
    if n:
        print("re-sent bytes per interruption (%d resumes): max %d (%.2f chunks), mean %.0f (%.2f chunks)" %
              (n, max(resent), max(resent) / chunk, sum(resent) / n, sum(resent) / n / chunk))
    print("final send: status %s, resumed_from %s, bytes_sent %s, interruptions in process %s" %
          (result["status"], result.get("resumed_from"), result.get("bytes_sent"), result.get("interruptions")))

    # The recorded file, exported by the Boss and hashed.
    inbox = json.loads(run(sp + ["--json", "boss", "inbox", "--all"]))
    out_path = os.path.join(work, "exported")
    # Newest first: the interrupted upload's file.
    file_id = [m["id"] for m in inbox][0]
    run(sp + ["boss", "inbox", "get", file_id, "--out", out_path])
    got = hashlib.sha256(open(out_path, "rb").read()).hexdigest()
    print("inbox entries: %d (expected 2: the uninterrupted reference and the interrupted upload); "
          "exported SHA-256 %s local %s: %s" %
          (len(inbox), got[:16], local_sha[:16], "MATCH" if got == local_sha else "MISMATCH"))
    boss.proc.send_signal(signal.SIGTERM)
    boss.proc.wait()
    print("uptime after:", run(["uptime"]).strip())
    subprocess.run(["rm", "-rf", work])
    if got != local_sha or len(inbox) != 2:
        sys.exit(1)


if __name__ == "__main__":
    main()
