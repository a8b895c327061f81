#!/usr/bin/env bash
# Fuzz spyctl's parsers for a bounded time each: the request line
# (parse_request), the Fernet token (FernetKey::open) and the message header
# (decode_message). Usage: scripts/hardening-fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Needs a nightly toolchain and cargo-fuzz (installed from crates.io if missing).
# The corpus grows in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>);
# a crash leaves its input in fuzz/artifacts/<target> and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parse_request fernet_open decode_message)

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "cargo fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

mkdir -p target
report=target/fuzz-figures.txt
: > "$report"
status=0
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    mkdir -p "fuzz/corpus/$t"
    log="target/fuzz-$t.log"
    set +e
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || echo "cov: ?")
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    if [ "$rc" -eq 0 ]; then
        line="fuzz $t: ${secs}s, $runs runs ($speed/s), $cov, corpus $corpus inputs, no crash"
    else
        line="fuzz $t: FAILED (exit $rc) after $runs runs; see $log and fuzz/artifacts/$t"
        grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5 || true
        status=1
    fi
    echo "$line" | tee -a "$report"
done
exit "$status"
