#!/usr/bin/env bash
# bench/file_builds.sh RUNS BIN... : the same 64 MiB random file sent with
# `send --file` (v1, agent 1 by key file, PSK: no signatures) to a Boss of
# each build, one Boss per build started once, the builds alternating in
# every round so all see the same load. Each sender has a home of its own
# (the upload journal). Per run: wall time of the whole `send` process
# (hashing, connecting, every chunk), its CPU (user + system, /usr/bin/time)
# and the Boss's CPU over the run (/proc/<pid>/stat); then each build's
# medians. Prints `uptime` before and after. Loopback only.
set -euo pipefail
RUNS=$1
shift
WORK=$(mktemp -d)
declare -a ADDR PIDS
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
head -c $((64 * 1024 * 1024)) /dev/urandom >"$WORK/file.bin"
. "$(dirname "$0")/common.sh"
i=0
for bin in "$@"; do
    home=$WORK/boss$i
    mkdir -m 700 "$WORK/sender$i"
    boss_home "$home" "$bin"
    "$bin" --home "$home" -q agent key export 1 --out "$home/k"
    serve_boss "$home" "$bin"
    PIDS[i]=$BOSS_PID
    ADDR[i]=$BOSS_ADDR
    i=$((i + 1))
done
boss_cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # clock ticks
echo "uptime before: $(uptime)"
for r in $(seq "$RUNS"); do
    line="round $r:"
    i=0
    for bin in "$@"; do
        b0=$(boss_cpu "${PIDS[i]}")
        t0=$(date +%s.%N)
        SPYCTL_HOME=$WORK/sender$i /usr/bin/time -o "$WORK/cpu" -f "%U %S" "$bin" -q send --file "$WORK/file.bin" \
            --addr "${ADDR[i]}" --agent-id 1 --key-file "$WORK/boss$i/k" >/dev/null
        t1=$(date +%s.%N)
        b1=$(boss_cpu "${PIDS[i]}")
        row=$(python3 -c "import sys; u, s = open(sys.argv[3]).read().split(); t = float(sys.argv[2]) - float(sys.argv[1]);
print(f'{t:.3f} {float(u) + float(s):.2f} {(int(sys.argv[5]) - int(sys.argv[4])) / 100:.2f}')" "$t0" "$t1" "$WORK/cpu" "$b0" "$b1")
        echo "$row" >>"$WORK/times$i"
        read -r t c b <<<"$row"
        line="$line | $(basename "$bin") ${t} s, client CPU $c s, Boss CPU $b s"
        i=$((i + 1))
    done
    echo "$line"
done
echo "uptime after: $(uptime)"
i=0
for bin in "$@"; do
    python3 - "$WORK/times$i" "$(basename "$bin")" <<'PY'
import statistics, sys
rows = [[float(v) for v in line.split()] for line in open(sys.argv[1])]
wall, client, boss = (statistics.median(r[k] for r in rows) for k in range(3))
print(f"{sys.argv[2]}: median {wall:.3f} s = {64 / wall:.0f} MiB/s; client CPU {client:.2f} s, Boss CPU {boss:.2f} s")
PY
    i=$((i + 1))
done
