#!/usr/bin/env bash
# bench/file_at_rest.sh BIN_A BIN_B [RUNS]: the same 64 MiB file sent over
# loopback with `spyctl send --file` to a Boss of each build, alternating
# A, B, A, B, ... so both see the same machine load; prints each run's wall
# time and each build's median MiB/s. Used to price encryption at rest
# (A: plaintext under files/, B: sealed). Loopback only; bounded runs.
set -euo pipefail
A=$1 B=$2 RUNS=${3:-5}
WORK=$(mktemp -d)
trap 'kill "$(jobs -p)" 2>/dev/null || true; rm -rf "$WORK"' EXIT
head -c $((64 * 1024 * 1024)) /dev/urandom >"$WORK/file.bin"
run_one() { # bin label -> seconds
    local bin=$1 home="$WORK/home-$2-$RANDOM"
    mkdir -m 700 "$home"
    SPYCTL_HOME=$home "$bin" -q db init >/dev/null
    SPYCTL_HOME=$home "$bin" agent key export 1 --out "$home/k" >/dev/null 2>&1 ||
        { printf 'mission-accepted-96\n' | SPYCTL_HOME=$home "$bin" -q login --name "Ethan Hunt" --password-stdin &&
          SPYCTL_HOME=$home "$bin" -q agent key export 1 --out "$home/k"; }
    SPYCTL_HOME=$home "$bin" boss serve --bind 127.0.0.1:0 >"$home/serve.out" 2>/dev/null &
    local pid=$! addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^Boss listening on \([^ ]*\).*/\1/p' "$home/serve.out")
        [ -n "$addr" ] && break
        sleep 0.1
    done
    local t0 t1
    t0=$(date +%s.%N)
    "$bin" -q send --file "$WORK/file.bin" --addr "$addr" --agent-id 1 --key-file "$home/k" >/dev/null
    t1=$(date +%s.%N)
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c "print(f'{float(\"$t1\")-float(\"$t0\"):.3f}')"
}
declare -a TA TB
for i in $(seq "$RUNS"); do
    TA+=("$(run_one "$A" a)"); TB+=("$(run_one "$B" b)")
    echo "run $i: A ${TA[-1]} s, B ${TB[-1]} s"
done
python3 - "${TA[*]}" "${TB[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"A median {ma:.3f} s = {64/ma:.0f} MiB/s; B median {mb:.3f} s = {64/mb:.0f} MiB/s; B costs {100*(mb-ma)/ma:+.1f}% time")
PY
