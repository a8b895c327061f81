# spyctl tasks. Each recipe is a thin wrapper over cargo (or a script), so CI
# can call the same commands without `just`. `just --list` shows them all.

# Show the recipes.
default:
    @just --list

# The guided tour in a throw-away home (the README's first command).
demo:
    cargo run --release -- demo

# Every test: unit, Fernet vectors, properties, Python interop, end to end.
test:
    cargo test

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Exactly what CI runs.
ci:
    bash .ci/run

# Run the Boss on 127.0.0.1:5000 in this terminal (Ctrl-C to stop).
serve home="":
    cargo run --release -- {{ if home == "" { "" } else { "--home " + home } }} boss serve

# Send a message as the logged-in agent to the local Boss.
send text="Hello, Boss":
    cargo run --release -- send "{{text}}"

# End-to-end scenarios only: the registry and the Boss, real processes and real TCP.
e2e:
    cargo test --test all -- cli_registry boss_e2e cli_docs

# Write the man page to target/spyctl.1 (read it with `man target/spyctl.1`).
man:
    cargo run --release -- man > target/spyctl.1

# Print shell completions, e.g. `just completions zsh > ~/.zfunc/_spyctl`.
completions shell="bash":
    cargo run --release -q -- completions {{shell}}

# Criterion micro-benchmarks: Fernet seal/open by size, blind index, Argon2id, parsers.
bench:
    cargo bench -p spyctl-benches --bench crypto

# Install the Python reference Boss's requirements (bench/) into target/bench-venv.
bench-setup:
    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install -q -r bench/requirements.txt

# Load-test a running Boss as the logged-in agent, e.g. `just bench-load 127.0.0.1:5000 8 4000`.
bench-load addr="127.0.0.1:5000" connections="8" messages="4000":
    cargo run --release -- boss bench --addr {{addr}} --connections {{connections}} --messages {{messages}}

# Every issue-6 figure beside its reference (OpenSSL, Python, fsync rate) in one run; see BENCHMARKS.md.
bench-compare: bench-setup
    bash scripts/bench-compare.sh

# Boss CPU per message from /proc, beside the fsync rate and the Python Boss, 3 rounds of 8 x 20,000 (issue 15).
bench-cpu: bench-setup
    cargo build --release && target/bench-venv/bin/python bench/boss_cpu.py --runs 3 --python

# Hardening, long runs: 64x1000 load, 10 kill -9 crashes, 10k hostile lines, 200 slow clients; figures in target/hardening-figures.txt.
hardening:
    bash scripts/hardening-long.sh

# Fuzz the request line, Fernet token and message header parsers for `secs` seconds each (nightly + cargo-fuzz).
fuzz secs="60":
    bash scripts/hardening-fuzz.sh {{secs}}
