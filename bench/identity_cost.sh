#!/usr/bin/env bash
# bench/identity_cost.sh [BIN] [ROUNDS]: what identities cost (issue 13), each
# beside its reference in the same run, on 127.0.0.1 with one Boss.
#  1. Enrolment: ROUNDS x (`agent enroll 6` in the Boss's home, `join CODE`
#     from a fresh agent home). Prints join's own timing of the exchange
#     (connect to JOINED: SPAKE2, key confirmation, the Boss's commit; no
#     process start) and the wall time of each whole `join` process beside
#     `spyctl --version` (process start alone).
#  2. Ingest at 8 persistent connections, 64 B messages: `boss bench` as agent 1
#     over v1 (PSK, its exported wire key) and as enrolled agent 6 (channel
#     key, Ed25519 signature + minisign global signature per message, the
#     Boss verifies the statement signature before storing, signed receipt
#     per ACK checked by the agent), alternating PSK, signed, PSK, signed ...
#     ROUNDS times so both see the same load. Each run also prints the Boss's
#     own CPU per message (user + system, /proc/PID/stat).
# Prints `uptime` before and after: the machine may be shared.
set -euo pipefail
BIN=${1:-target/release/spyctl}
ROUNDS=${2:-5}
N=${N:-4000}
WORK=$(mktemp -d)
trap 'kill "$(jobs -p)" 2>/dev/null || true; rm -rf "$WORK"' EXIT
echo "uptime before: $(uptime)"
. "$(dirname "$0")/common.sh"
BOSS=$WORK/boss
SP=("$BIN" --home "$BOSS")
boss_home "$BOSS" "$BIN"
"${SP[@]}" -q agent key export 1 --out "$WORK/agent1.key"
serve_boss "$BOSS" "$BIN" --max-connections 512
ADDR=$BOSS_ADDR
now() { date +%s%N; }

echo "== enrolment, $ROUNDS rounds (agent 6, a fresh agent home each time)"
for i in $(seq "$ROUNDS"); do
    CODE=$("${SP[@]}" --json agent enroll 6 | sed -n 's/.*"code": *"\([^"]*\)".*/\1/p')
    AGENT=$WORK/agent-$i
    mkdir -m 700 "$AGENT"
    t0=$(now)
    OUT=$("$BIN" --home "$AGENT" --json join "$CODE" --addr "$ADDR")
    t1=$(now)
    t2=$(now)
    "$BIN" --version >/dev/null
    t3=$(now)
    EXCHANGE=$(printf '%s' "$OUT" | sed -n 's/.*"elapsed_ms": *\([0-9.]*\).*/\1/p')
    printf 'join exchange %s ms; join process %.1f ms; spyctl --version %.1f ms\n' \
        "$EXCHANGE" "$(echo "($t1 - $t0) / 1000000" | bc -l)" "$(echo "($t3 - $t2) / 1000000" | bc -l)"
done
LAST=$WORK/agent-$ROUNDS

echo "== ingest, 8 persistent connections, $N x 64 B per run, alternating"
# The Boss's own CPU (user + system ticks of all its threads, /proc/PID/stat)
# around each run: per message, it does not depend on what else the machine runs.
boss_ticks() { awk '{ print $14 + $15 }' "/proc/$BOSS_PID/stat"; }
TICK=$(getconf CLK_TCK)
for i in $(seq "$ROUNDS"); do
    b0=$(boss_ticks)
    "$BIN" --json boss bench --addr "$ADDR" -c 8 -n "$N" -s 64 --agent-id 1 --key-file "$WORK/agent1.key" \
        >"$WORK/psk-$i.json"
    b1=$(boss_ticks)
    "$BIN" --home "$LAST" --json boss bench --addr "$ADDR" -c 8 -n "$N" -s 64 >"$WORK/signed-$i.json"
    b2=$(boss_ticks)
    for kind in psk signed; do
        if [ "$kind" = psk ]; then ticks=$((b1 - b0)); else ticks=$((b2 - b1)); fi
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-6s round %s: %7.0f msgs/s  p50 %.3f ms  p99 %.3f ms  stored %d  signed %s  Boss CPU %.1f us/msg" % (sys.argv[2], sys.argv[3], r["msgs_per_sec"], r["latency_us"]["p50"]/1e3, r["latency_us"]["p99"]/1e3, r["stored"], r["signed"], int(sys.argv[4]) / int(sys.argv[5]) * 1e6 / r["stored"]))' \
            "$WORK/$kind-$i.json" "$kind" "$i" "$ticks" "$TICK"
    done
done
echo "uptime after: $(uptime)"
