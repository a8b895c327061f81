#!/usr/bin/env bash
# bench/v2_commits.sh BIN...: how many writer transactions N v2 messages
# take, per binary (e.g. a base build and this one). One Boss per binary with
# the writer's debug line `group commit` (one per transaction) logged;
# enrolled agent 6 sends N signed 64 B texts over v2 for each spec
# (connections:pipeline). `uptime` with every figure.
set -euo pipefail
N=${N:-4000}
SPECS=${SPECS:-"1:16 8:16 8:1"}
. "$(dirname "$0")/common.sh"
for BIN in "$@"; do
    W=$(mktemp -d)
    boss_home "$W/boss" "$BIN"
    RUST_LOG=spyctl::boss::store=debug SERVE_LOG=$W/boss/log serve_boss "$W/boss" "$BIN"
    PID=$BOSS_PID ADDR=$BOSS_ADDR
    join_agent "$W/boss" "$W/agent" "$ADDR" "$BIN"
    for spec in $SPECS; do
        IFS=: read -r conns pipe <<<"$spec"
        before=$(grep -c "group commit" "$W/boss/log" || true)
        out=$("$BIN" --home "$W/agent" --json boss bench --protocol v2 --addr "$ADDR" -c "$conns" -n "$N" \
            --mode persistent --pipeline "$pipe")
        sleep 0.3
        after=$(grep -c "group commit" "$W/boss/log" || true)
        rate=$(echo "$out" | sed -n 's/.*"msgs_per_sec": *\([0-9]*\).*/\1/p' | head -1)
        echo "$BIN -c $conns --pipeline $pipe: $N v2 messages, $((after - before)) transactions, $rate msgs/s, $(uptime | sed 's/.*load/load/')"
    done
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    rm -rf "$W"
done
