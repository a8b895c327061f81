# bench/common.sh: the setup the shell benchmarks share (sourced, not run).
# A Boss home with the director logged in, its server on a free loopback
# port, and agent 6 enrolled from a home of its own.

# boss_home DIR BIN: a fresh Boss home in DIR (0700), the director logged in.
boss_home() {
    mkdir -m 700 "$1"
    "$2" --home "$1" -q db init >/dev/null
    printf 'mission-accepted-96\n' | "$2" --home "$1" -q login --name 'Ethan Hunt' --password-stdin
}

# serve_boss DIR BIN [FLAGS...]: starts `boss serve` as a background job of
# the calling shell (so its `jobs -p` and EXIT trap see it) on 127.0.0.1:0;
# sets BOSS_ADDR once it listens and BOSS_PID (fails after 10 s). Its log
# (stderr) goes to $SERVE_LOG if set, else nowhere.
serve_boss() {
    local home=$1 bin=$2
    shift 2
    "$bin" --home "$home" boss serve --bind 127.0.0.1:0 "$@" >"$home/serve.out" 2>"${SERVE_LOG:-/dev/null}" &
    BOSS_PID=$!
    BOSS_ADDR=""
    for _ in $(seq 100); do
        BOSS_ADDR=$(sed -n 's/^Boss listening on \([^ ]*\).*/\1/p' "$home/serve.out")
        [ -n "$BOSS_ADDR" ] && break
        sleep 0.1
    done
    [ -n "$BOSS_ADDR" ] || { echo "the Boss did not start" >&2; return 1; }
}

# join_agent BOSS_DIR AGENT_DIR ADDR BIN: `agent enroll 6` in the Boss's home,
# then `join` from a fresh agent home (0700).
join_agent() {
    local code
    mkdir -m 700 "$2"
    code=$("$4" --home "$1" --json agent enroll 6 | sed -n 's/.*"code": *"\([^"]*\)".*/\1/p')
    "$4" --home "$2" -q join "$code" --addr "$3" >/dev/null
}
