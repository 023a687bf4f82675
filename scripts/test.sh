#!/usr/bin/env bash
# Runs every check and test of FM Relay, installing what is missing first.
# This is the command CI runs (.ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "formatting"
cargo fmt --all --check
step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "fm-protocol builds for wasm32"
cargo build -p fm-protocol --target wasm32-unknown-unknown --locked
step "tests"
cargo test --workspace --locked
