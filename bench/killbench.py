"""bench/killbench.py: the setup the kill -9 benchmarks share (imported by
resume_kills.py and order_file_kills.py, not run): a Boss home with the
director logged in, its server on 127.0.0.1 (restartable on the same port
after a kill), and agent 6 enrolled and joined from a home of its own."""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time


def kill_args(description):
    """The options every kill -9 benchmark takes: the binary, the file's
    size, how many kills, and the random seed."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bin", default="target/release/spyctl")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=14)
    return ap


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


class Boss:
    """`boss serve` in `home`; `proc` and `addr` are those of the live one."""

    def __init__(self, binary, home, work):
        self.cmd = [binary, "--home", home]
        self.out_path = os.path.join(work, "serve.out")
        self.proc = None
        self.addr = "127.0.0.1:0"

    def start(self):
        """Starts the server (on the port of the last one, once there was one)."""
        out = open(self.out_path, "w")
        proc = subprocess.Popen(self.cmd + ["boss", "serve", "--bind", self.addr], stdout=out,
                                stderr=subprocess.DEVNULL)
        for _ in range(400):
            m = re.search(r"listening on (127\.0\.0\.1:\d+)", open(self.out_path).read())
            if m:
                self.addr = m.group(1)
                self.proc = proc
                return
            time.sleep(0.05)
        sys.exit("the Boss did not start")


def boss_and_agent(binary, prefix):
    """A work directory, a running Boss (its home: work/boss) and agent 6's
    joined home (work/agent). Prints `uptime` first."""
    work = tempfile.mkdtemp(prefix=prefix)
    boss_home, agent_home = os.path.join(work, "boss"), os.path.join(work, "agent")
    os.mkdir(boss_home, 0o700)
    os.mkdir(agent_home, 0o700)
    print("uptime before:", run(["uptime"]).strip())
    sp = [binary, "--home", boss_home]
    run(sp + ["-q", "db", "init"])
    run(sp + ["-q", "login", "--name", "Ethan Hunt", "--password-stdin"], input="mission-accepted-96\n")
    boss = Boss(binary, boss_home, work)
    boss.start()
    code = json.loads(run(sp + ["--json", "agent", "enroll", "6"]))["code"]
    run([binary, "--home", agent_home, "-q", "join", code, "--addr", boss.addr])
    return work, boss, agent_home
