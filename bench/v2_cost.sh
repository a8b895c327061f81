#!/usr/bin/env bash
# bench/v2_cost.sh [BIN] [ROUNDS]: what protocol v2 (Noise IK sessions,
# issue 14) costs beside its references, in the same rounds, on 127.0.0.1.
# One Boss, agent 1 sending over v1 (PSK, exported wire key) and enrolled
# agent 6 (its own home, joined) sending signed texts over v1 (channel key)
# and over v2; then the Python reference Boss (bench/boss.py, a commit per
# message) driven by bench/sender.py. 8 persistent connections, N x 64 B each;
# per-message connections (a handshake per message for v2), M each; then 64
# persistent connections and 8 with 16 messages in flight each (SPECS).
# Rounds alternate the kinds so all see the same load. `uptime` before/after.
set -euo pipefail
BIN=${1:-target/release/spyctl}
ROUNDS=${2:-3}
N=${N:-8000}
M=${M:-1000}
PY=${PY:-target/py-venv/bin/python}
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
echo "uptime before: $(uptime)"
. "$(dirname "$0")/common.sh"
BOSS=$WORK/boss AGENT=$WORK/agent
boss_home "$BOSS" "$BIN"
"$BIN" --home "$BOSS" -q agent key export 1 --out "$WORK/agent1.key"
serve_boss "$BOSS" "$BIN" --max-connections 512
ADDR=$BOSS_ADDR
join_agent "$BOSS" "$AGENT" "$ADDR" "$BIN"
show() {
    "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-12s %-11s round %s: %7.0f msgs/s  p50 %.3f ms  p99 %.3f ms  stored %d" % (sys.argv[2], sys.argv[3], sys.argv[4], r["msgs_per_sec"], r["latency_us"]["p50"]/1e3, r["latency_us"]["p99"]/1e3, r.get("stored", 0)))' "$@"
}
# MODE:CONNECTIONS:PIPELINE; SPECS overrides (e.g. SPECS="persistent:64:1").
SPECS=${SPECS:-"persistent:8:1 per-message:8:1 persistent:64:1 persistent:8:16"}
for spec in $SPECS; do
    IFS=: read -r mode conns pipe <<<"$spec"
    count=$N
    [ "$mode" = per-message ] && count=$M
    echo "== $mode, $conns connections, pipeline $pipe, $count x 64 B per run"
    for i in $(seq "$ROUNDS"); do
        tag=$mode-$conns-$pipe-$i
        common=(--addr "$ADDR" -c "$conns" -n "$count" --mode "$mode" --pipeline "$pipe")
        "$BIN" --json boss bench "${common[@]}" --agent-id 1 --key-file "$WORK/agent1.key" >"$WORK/v1-$tag.json"
        "$BIN" --home "$AGENT" --json boss bench "${common[@]}" >"$WORK/signed-$tag.json"
        "$BIN" --home "$AGENT" --json boss bench "${common[@]}" --protocol v2 >"$WORK/v2-$tag.json"
        show "$WORK/v1-$tag.json" "v1 psk" "$mode" "$i"
        show "$WORK/signed-$tag.json" "v1 signed" "$mode" "$i"
        show "$WORK/v2-$tag.json" "v2 signed" "$mode" "$i"
        "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); h=r["handshake_us"]; print("             v2 handshakes: p50 %.3f ms  p99 %.3f ms" % (h["p50"]/1e3, h["p99"]/1e3))' "$WORK/v2-$tag.json"
    done
done
if "$PY" -c 'import cryptography' 2>/dev/null; then
    echo "== Python reference Boss (bench/boss.py), persistent, 8 connections, 800 x 64 B per run"
    for i in $(seq "$ROUNDS"); do
        D=$WORK/pyboss-$i
        "$PY" bench/boss.py --agent-id 1 --key-file "$WORK/agent1.key" --dir "$D" --bind 127.0.0.1:0 \
            >"$WORK/pyboss-$i.out" 2>/dev/null &
        PID=$!
        PYADDR=""
        for _ in $(seq 100); do
            PYADDR=$(grep -o '127.0.0.1:[0-9]*' "$WORK/pyboss-$i.out" | head -1 || true)
            [ -n "$PYADDR" ] && break
            sleep 0.1
        done
        "$PY" bench/sender.py --json --addr "$PYADDR" --agent-id 1 --key-file "$WORK/agent1.key" -c 8 -n 800 \
            >"$WORK/py-$i.json"
        kill "$PID" 2>/dev/null || true
        show "$WORK/py-$i.json" "python" "persistent" "$i"
    done
else
    echo "(no Python with cryptography: the Python reference was skipped)"
fi
echo "uptime after: $(uptime)"
