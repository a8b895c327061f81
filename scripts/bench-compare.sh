#!/usr/bin/env bash
# scripts/bench-compare.sh: every BENCHMARKS.md figure in one run on this machine,
# each beside its reference (OpenSSL, Python's cryptography.fernet, a
# course-style Python Boss, the disk's fsync rate), then the targets as ratios
# (bench/summarize.py). Everything runs on 127.0.0.1; servers it starts are
# stopped by pid on exit. Results land in target/bench-compare/.
#
# Environment: SCALE (default 1) multiplies message counts; SKIP_BUILD=1 uses
# the existing target/release/spyctl; SKIP_CRITERION=1 reuses target/criterion.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/bench-compare
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spyctl-bench.XXXXXX")
SCALE=${SCALE:-1}
BIN=$ROOT/target/release/spyctl
PIDS=()

cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

section() { printf '\n== %s\n' "$*"; }
n() { echo $(( $1 * SCALE )); }

# Python with pyca cryptography: the bench venv (`just bench-setup`), else python3 if it has it.
PY=$ROOT/target/bench-venv/bin/python
if [ ! -x "$PY" ]; then
    PY=$(command -v python3 || true)
fi
if [ -z "$PY" ] || ! "$PY" -c 'import cryptography.fernet' 2>/dev/null; then
    echo "error: needs Python with the cryptography package: run \`just bench-setup\`" >&2
    exit 1
fi
command -v openssl >/dev/null || { echo "error: openssl not found (apt-get install openssl)" >&2; exit 1; }

rm -rf "$OUT" && mkdir -p "$OUT"

section "machine"
{
    echo "nproc: $(nproc)"
    lscpu | head -n 15
    echo "kernel: $(uname -srm)"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "rustc: $(rustc --version 2>/dev/null || echo '?')"
    echo "openssl: $(openssl version)"
    echo "python: $("$PY" --version 2>&1), cryptography $("$PY" -c 'import cryptography; print(cryptography.__version__)')"
    echo "disk: $(df -h "$ROOT/target" | tail -n 1)"
} | tee "$OUT/machine.txt"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    section "build (release)"
    cargo build --release --quiet
fi

section "crypto: OpenSSL, criterion, Python (back to back)"
openssl speed -elapsed -mr -seconds 1 -evp aes-128-cbc >"$OUT/openssl-aes.mr" 2>/dev/null
openssl speed -elapsed -mr -seconds 1 -hmac sha256 >"$OUT/openssl-hmac.mr" 2>/dev/null
grep '^+F' "$OUT/openssl-aes.mr" "$OUT/openssl-hmac.mr" | sed 's/^.*+F:[0-9]*:/  /'
echo "  (bytes/s at 16, 64, 256, 1024, 8192, 16384 B blocks, wall clock)"
if [ "${SKIP_CRITERION:-0}" != 1 ]; then
    cargo bench --quiet -p spyctl-benches --bench crypto 2>&1 | grep -E '^(fernet|blind_index|password|protocol)/|time:|thrpt:' \
        | tee "$OUT/criterion.txt"
fi
"$PY" bench/fernet_speed.py --json >"$OUT/python-fernet.json"
"$PY" bench/fernet_speed.py --seconds 0.05 | sed 's/^/  (quick re-run) /' || true

section "fsync rate (before)"
"$PY" bench/fsync_rate.py --dir "$WORK" --json | tee "$OUT/fsync-before.json"

section "durable write rate in 512 KiB chunks (the file-chunk pattern: write + fdatasync each)"
dd if=/dev/zero of="$WORK/dsync.bin" bs=512K count=64 oflag=dsync 2>&1 | tail -n 1 | tee "$OUT/dsync.txt"
rm -f "$WORK/dsync.bin"

section "set up a home: db init, login, export agent 1's wire key"
HOME_DIR=$WORK/home
SP=("$BIN" --home "$HOME_DIR")
"${SP[@]}" db init >/dev/null
echo 'mission-accepted-96' | "${SP[@]}" login --name 'Ethan Hunt' --password-stdin >/dev/null
KEY=$WORK/agent1.key
"${SP[@]}" agent key export 1 --out "$KEY" >/dev/null
AUTH=(--agent-id 1 --key-file "$KEY")

wait_for_line() { # file pattern: waits up to 10 s for the server's "listening" line
    for _ in $(seq 100); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "error: server did not start; see $1" >&2
    return 1
}

section "spyctl Boss"
"${SP[@]}" -q boss serve --bind 127.0.0.1:0 --max-connections 512 >"$WORK/boss.out" 2>"$WORK/boss.err" &
BOSS_PID=$!
PIDS+=("$BOSS_PID")
wait_for_line "$WORK/boss.out" 'listening on'
ADDR=$(grep -o '127\.0\.0\.1:[0-9]*' "$WORK/boss.out" | head -n 1)
IDLE_KIB=$(awk '/^VmRSS/ {print $2}' "/proc/$BOSS_PID/status")
echo "  $ADDR (pid $BOSS_PID, RSS ${IDLE_KIB} KiB)"

bench_spyctl() { # name addr conns messages mode
    "$BIN" --json boss bench --addr "$2" -c "$3" -n "$4" --mode "$5" -s 64 "${AUTH[@]}" >"$OUT/ingest-$1-$5-$3.json" \
        || echo "  (failures: see $OUT/ingest-$1-$5-$3.json)"
    "$PY" bench/show_run.py "$OUT/ingest-$1-$5-$3.json" "$1"
}

section "ingest into spyctl (durable: WAL, synchronous=FULL, group commit), 64 B messages"
for mode in persistent per-message; do
    bench_spyctl spyctl "$ADDR" 1 "$(n 1000)" "$mode"
    bench_spyctl spyctl "$ADDR" 8 "$(n 4000)" "$mode"
    bench_spyctl spyctl "$ADDR" 64 "$(n 8000)" "$mode"
done

section "boss bench --pipeline 1/4/16 at 8 persistent connections (messages in flight per connection)"
for p in 1 4 16; do
    "$BIN" --json boss bench --addr "$ADDR" -c 8 -n "$(n 4000)" --mode persistent --pipeline "$p" -s 64 "${AUTH[@]}" \
        >"$OUT/pipeline-$p-8.json" || echo "  (failures: see $OUT/pipeline-$p-8.json)"
    "$PY" bench/show_run.py "$OUT/pipeline-$p-8.json" "pipe=$p"
done

section "64 MiB file to spyctl (spyctl send --file)"
FILE=$WORK/file-64MiB.bin
head -c $((64 * 1024 * 1024)) /dev/urandom >"$FILE"
t0=$(date +%s.%N)
"$BIN" -q --json send --file "$FILE" --addr "$ADDR" "${AUTH[@]}" >"$WORK/file-send.out"
t1=$(date +%s.%N)
"$PY" -c 'import json,sys; s=float(sys.argv[2])-float(sys.argv[1]); print(json.dumps({"impl":"spyctl","file_bytes":64*1048576,"elapsed_secs":s}))' \
    "$t0" "$t1" | tee "$OUT/file-spyctl.json"

section "Boss memory with 256 idle connections (each sent one message first)"
LOADED_KIB=$(awk '/^VmRSS/ {print $2}' "/proc/$BOSS_PID/status")
coproc IDLE { "$PY" bench/idle_conns.py --addr "$ADDR" -n 256 "${AUTH[@]}" --hold 60; }
PIDS+=("$IDLE_PID")
read -r ready _ <&"${IDLE[0]}"
[ "$ready" = ready ] || { echo "error: idle connections did not open" >&2; exit 1; }
sleep 1
CONNS_KIB=$(awk '/^VmRSS/ {print $2}' "/proc/$BOSS_PID/status")
HWM_KIB=$(awk '/^VmHWM/ {print $2}' "/proc/$BOSS_PID/status")
THREADS=$(awk '/^Threads/ {print $2}' "/proc/$BOSS_PID/status")
eval "exec ${IDLE[1]}>&-"
wait "$IDLE_PID" 2>/dev/null || true
printf '{"connections": 256, "idle_kib": %s, "loaded_kib": %s, "conns_kib": %s, "hwm_kib": %s, "threads": %s}\n' \
    "$IDLE_KIB" "$LOADED_KIB" "$CONNS_KIB" "$HWM_KIB" "$THREADS" | tee "$OUT/rss.json"

kill "$BOSS_PID" && wait "$BOSS_PID" 2>/dev/null || true

section "spyctl agent list, cold process"
if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 3 --runs 30 --export-json "$WORK/hf.json" "${SP[*]} agent list" >/dev/null
    "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; t=sorted(r["times"]); print(json.dumps({"tool":"hyperfine","runs":len(t),"median_ms":r["median"]*1e3,"min_ms":t[0]*1e3,"p90_ms":t[int(0.9*len(t))-1]*1e3,"max_ms":t[-1]*1e3}))' \
        "$WORK/hf.json" | tee "$OUT/agent-list.json"
else
    "$PY" bench/cold_start.py --json --runs 30 -- "${SP[@]}" agent list | tee "$OUT/agent-list.json"
fi

section "Python reference Boss (ThreadingTCPServer, pyca Fernet, one sqlite3 commit per message)"
"$PY" bench/boss.py --bind 127.0.0.1:0 "${AUTH[@]}" --dir "$WORK/pyboss" >"$WORK/pyboss.out" 2>"$WORK/pyboss.err" &
PYBOSS_PID=$!
PIDS+=("$PYBOSS_PID")
wait_for_line "$WORK/pyboss.out" 'listening on'
PYADDR=$(grep -o '127\.0\.0\.1:[0-9]*' "$WORK/pyboss.out" | head -n 1)
echo "  $PYADDR (pid $PYBOSS_PID)"
for mode in persistent per-message; do
    for conns in 1 8; do
        msgs=$(n $((conns == 1 ? 300 : 800)))
        "$PY" bench/sender.py --json --addr "$PYADDR" "${AUTH[@]}" -c "$conns" -n "$msgs" -s 64 --mode "$mode" \
            >"$OUT/ingest-python-$mode-$conns.json" || echo "  (failures: see $OUT/ingest-python-$mode-$conns.json)"
        "$PY" bench/show_run.py "$OUT/ingest-python-$mode-$conns.json" python
    done
done
echo "  the same Python Boss driven by spyctl boss bench (server cost alone):"
bench_spyctl pyboss "$PYADDR" 8 "$(n 800)" persistent

section "64 MiB file to the Python Boss (bench/sender.py --file)"
"$PY" bench/sender.py --json --addr "$PYADDR" "${AUTH[@]}" --file "$FILE" | tee "$OUT/file-python.json"
kill "$PYBOSS_PID" && wait "$PYBOSS_PID" 2>/dev/null || true

section "fsync rate (after)"
"$PY" bench/fsync_rate.py --dir "$WORK" --json | tee "$OUT/fsync-after.json"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

section "summary"
"$PY" bench/summarize.py "$OUT" "$ROOT/target/criterion"
echo
echo "Raw figures: $OUT (summary.md holds the tables for BENCHMARKS.md)"
