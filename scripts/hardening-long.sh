#!/usr/bin/env bash
# The long hardening runs: the same tests `cargo test` runs short
# (tests/all/hardening/, the hostile-token properties in tests/all/fernet_vectors.rs,
# and the parser properties in src/net/protocol_properties.rs), with the long counts, in release mode, one test
# at a time so the figures are not skewed by each other. Counts come from the
# environment; the defaults are the long ones. Figures are printed and written to
# target/hardening-figures.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

export HARDENING_SENDERS="${HARDENING_SENDERS:-64}"
export HARDENING_MESSAGES="${HARDENING_MESSAGES:-1000}"
export HARDENING_CRASHES="${HARDENING_CRASHES:-10}"
export HARDENING_CRASH_SENDERS="${HARDENING_CRASH_SENDERS:-8}"
export HARDENING_HOSTILE_LINES="${HARDENING_HOSTILE_LINES:-10000}"
export HARDENING_SLOW_CONNECTIONS="${HARDENING_SLOW_CONNECTIONS:-200}"
export HARDENING_SLOW_SAMPLES="${HARDENING_SLOW_SAMPLES:-100}"
export HARDENING_PROPTEST_CASES="${HARDENING_PROPTEST_CASES:-5000}"
export HARDENING_FLOOD_SENDS="${HARDENING_FLOOD_SENDS:-1000}"
export HARDENING_LOG_FLOOD_MS="${HARDENING_LOG_FLOOD_MS:-5000}"
export HARDENING_TIMING_PROBES="${HARDENING_TIMING_PROBES:-10000}"
mkdir -p target
export HARDENING_REPORT="${HARDENING_REPORT:-$PWD/target/hardening-figures.txt}"
: > "$HARDENING_REPORT"

{
    echo "hardening run $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(uname -sr), release build"
    echo "counts: load ${HARDENING_SENDERS}x${HARDENING_MESSAGES}, crashes ${HARDENING_CRASHES}" \
        "(${HARDENING_CRASH_SENDERS} senders), hostile ${HARDENING_HOSTILE_LINES} lines," \
        "slow ${HARDENING_SLOW_CONNECTIONS} connections, proptest ${HARDENING_PROPTEST_CASES} cases," \
        "flood ${HARDENING_FLOOD_SENDS} sends, log flood ${HARDENING_LOG_FLOOD_MS} ms x2, timing ${HARDENING_TIMING_PROBES} probes"
} | tee -a "$HARDENING_REPORT"

# The slow-client test holds 200+ sockets on each side.
ulimit -n 4096 2>/dev/null || true
start=$(date +%s)
set +e
cargo test --release --test all -- hardening:: fernet_vectors:: --nocapture --test-threads=1 2>&1 |
    grep -E '^(test |FIGURE|SEED|SKIP|test result|failures|---- )|panicked'
rc=${PIPESTATUS[0]}
PROPTEST_CASES="$HARDENING_PROPTEST_CASES" cargo test --release --lib net::protocol::properties 2>&1 |
    grep -E '^(test |test result|failures|---- )|panicked'
rc2=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] || rc=$rc2
set -e
echo "hardening: $(( $(date +%s) - start )) s in all, exit $rc" | tee -a "$HARDENING_REPORT"
echo "figures: $HARDENING_REPORT"
exit "$rc"
