#!/usr/bin/env bash
# bench/v2_file.sh BIN [RUNS]: a 64 MiB random file sent over loopback by an
# enrolled agent's joined home, with `send --file` (v1, signed: 512 KiB
# chunks) and `send --protocol v2 --file` (60 KiB chunks in Noise frames),
# alternating v1, v2, v1, v2, ... to one Boss so both see the same load.
# Prints `uptime` before and after, each run's wall time (whole process:
# hashing the file, the handshake, every chunk) and each protocol's median.
set -euo pipefail
BIN=$1 RUNS=${2:-5}
WORK=$(mktemp -d)
trap 'kill "$(jobs -p)" 2>/dev/null || true; rm -rf "$WORK"' EXIT
uptime
head -c $((64 * 1024 * 1024)) /dev/urandom >"$WORK/file.bin"
. "$(dirname "$0")/common.sh"
boss=$WORK/boss agent=$WORK/agent
boss_home "$boss" "$BIN"
serve_boss "$boss" "$BIN"
addr=$BOSS_ADDR
join_agent "$boss" "$agent" "$addr" "$BIN"
run_one() { # extra send flags -> seconds
    local t0 t1
    t0=$(date +%s.%N)
    SPYCTL_HOME=$agent "$BIN" -q send "$@" --file "$WORK/file.bin" --addr "$addr" >/dev/null
    t1=$(date +%s.%N)
    python3 -c "print(f'{float(\"$t1\")-float(\"$t0\"):.3f}')"
}
declare -a T1 T2
for i in $(seq "$RUNS"); do
    T1+=("$(run_one)"); T2+=("$(run_one --protocol v2)")
    echo "run $i: v1 ${T1[-1]} s, v2 ${T2[-1]} s"
done
python3 - "${T1[*]}" "${T2[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"64 MiB: v1 median {ma:.3f} s = {64/ma:.0f} MiB/s; v2 median {mb:.3f} s = {64/mb:.0f} MiB/s; v2/v1 {ma/mb:.2f}")
PY
uptime
