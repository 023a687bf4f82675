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
cargo clippy --workspace --exclude fm-web --all-targets --locked -- -D warnings
cargo clippy -p fm-web --target wasm32-unknown-unknown --locked -- -D warnings
step "fm-protocol builds for wasm32"
cargo build -p fm-protocol --target wasm32-unknown-unknown --locked
step "tests"
cargo test --workspace --exclude fm-web --locked
step "web UI build (trunk)"
PATH="$PWD/node_modules/.bin:$PATH" trunk build --release
wasm=$(ls web/dist/*.wasm)
log_size() { printf '    %s: %s bytes, %s gzip\n' "$1" "$(wc -c <"$1")" "$(gzip -9 -c "$1" | wc -c)" >&2; }
log_size "$wasm"
step "browser end-to-end test (chromium)"
target_dir=$(cargo metadata --no-deps --format-version 1 --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
cargo build -p fm-relay -p fm-sim --bins --locked
FM_RELAY_BIN="$target_dir/debug/fm-relay" FM_SIM_BIN="$target_dir/debug/fm-sim" FM_WEB_DIR="$PWD/web/dist" \
    node tests/e2e/chat.test.mjs
