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
    cargo clippy --all-targets -- -D warnings

# Exactly what CI runs.
ci:
    bash .ci/run

# Run the Boss on 127.0.0.1:5000 in this terminal (Ctrl-C to stop).
serve home="":
    cargo run --release -- {{ if home == "" { "" } else { "--home " + home } }} boss serve

# Send a message as the logged-in agent to the local Boss.
send text="Hello, Boss":
    cargo run --release -- send "{{text}}"
