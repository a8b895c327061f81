#!/usr/bin/env bash
# Peak memory (max RSS) of `spyctl boss inbox` over a large inbox: N text
# messages of SIZE bytes each, sealed with agent 1's exported wire key by
# Python's `cryptography` Fernet and inserted straight into Messages (the
# Boss would store the same tokens). Prints the max RSS of the table view,
# of `--json`, and of `--json --all`. Usage: scripts/inbox-memory.sh N SIZE [SPYCTL]
set -euo pipefail
n="${1:-200}"
size="${2:-700000}"
spyctl="${3:-target/release/spyctl}"
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
export SPYCTL_HOME="$home"
"$spyctl" db init >/dev/null
printf '%s\n' 'mission-accepted-96' | "$spyctl" login --name "Ethan Hunt" --password-stdin >/dev/null
"$spyctl" agent key export 1 --out "$home/agent-1.key" >/dev/null
python3 - "$home" "$n" "$size" <<'PY'
import json, os, sqlite3, sys, time
from cryptography.fernet import Fernet
home, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
f = Fernet(open(os.path.join(home, "agent-1.key")).read().strip())
db = sqlite3.connect(os.path.join(home, "spyctl.db"))
now = int(time.time())
body = (b"The eagle has landed. " * (size // 22 + 1))[:size]
for i in range(n):
    mid = "%032x" % i
    head = json.dumps({"v": 1, "id": mid, "kind": "text"}, separators=(",", ":")).encode()
    token = f.encrypt(head + b"\n" + body).decode()
    db.execute("INSERT INTO Messages (AgentId, MessageId, ReceivedAt, Token) VALUES (1, ?, ?, ?)", (mid, now - n + i, token))
    if i % 100 == 99:
        db.commit()
db.commit()
PY
echo "inbox: $n messages of $size bytes, $(du -m "$home/spyctl.db" | cut -f1) MB database"
for args in "boss inbox" "--json boss inbox" "--json boss inbox --all"; do
    # An older spyctl has no --all: its plain inbox already shows everything.
    rss=$(/usr/bin/time -f '%M' "$spyctl" $args 2>&1 >/dev/null | tail -1) || rss="(not supported)"
    echo "spyctl $args: max RSS ${rss} KiB"
done
