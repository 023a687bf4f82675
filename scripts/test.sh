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
cargo clippy -p fm-web --target wasm32-unknown-unknown --all-targets --locked -- -D warnings
cargo clippy -p fm-ide --target wasm32-unknown-unknown --all-targets --locked -- -D warnings
step "fm-protocol builds for wasm32"
cargo build -p fm-protocol --target wasm32-unknown-unknown --locked
step "tests"
# relay/tests/lambda.rs runs this binary under `cargo lambda watch`, which starts it with
# `cargo run`: built here first, the test does not wait for a build.
cargo build -p fm-relay-lambda --bin fm-relay-lambda --locked
cargo test --workspace --exclude fm-web --locked
step "soak, short (20 s of mixed traffic: the relay's memory stays flat, the traffic is served)"
# The 30-minute run: cargo bench -p fm-relay --bench soak (BENCHMARKS.md, "Soak").
SOAK_SECS=20 cargo test -p fm-relay --bench soak --locked
step "concurrent streams, short (200 streams over HTTP/1.1 and HTTP/2 upstreams, and HTTP/2 from clients too, every one intact)"
# The full run: scripts/bench-streams.sh, 10 000 streams (BENCHMARKS.md, "10 000 concurrent
# streams"). A debug build's memory per stream says little: the budget here only catches a leak.
STREAMS=200 STREAM_TOKENS=3 STREAM_TOKENS_PER_SEC=10 STREAM_FIRST_TOKEN_MS=1500 STREAM_BUDGET_KIB=200 \
    cargo test -p fm-relay --bench streams --locked
step "beside LiteLLM, short (the side-by-side driver against one fm-sim, 2 s per scenario)"
# The full run: bench/peer/run.sh (BENCHMARKS.md, "Beside LiteLLM").
bench/peer/run.sh --smoke
step "IDE core tests (wasm-bindgen-test in Node)"
# A test file that does not ask for a browser runs in Node.
cargo test -p fm-ide --target wasm32-unknown-unknown --test node --locked
step "web UI component tests (wasm-bindgen-test in headless chromium)"
# .cargo/config.toml makes wasm-bindgen-test-runner the wasm32 runner; it drives Chromium here.
CHROMEDRIVER=$(command -v chromedriver) cargo test -p fm-web --target wasm32-unknown-unknown --locked
step "web UI build (trunk)"
PATH="$PWD/node_modules/.bin:$PATH" trunk build --release
wasm=$(ls web/dist/*.wasm)
wasm_gzip=$(gzip -9 -c "$wasm" | wc -c)
printf '    %s: %s bytes, %s gzip (budget 256000)\n' "$wasm" "$(wc -c <"$wasm")" "$wasm_gzip" >&2
if [ "$wasm_gzip" -gt 256000 ]; then
    echo "the web UI's WASM is over its 250 KB gzip budget" >&2
    exit 1
fi
step "browser end-to-end test (chromium)"
target_dir=$(cargo metadata --no-deps --format-version 1 --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
cargo build -p fm-relay -p fm-sim --bins --locked
FM_RELAY_BIN="$target_dir/debug/fm-relay" FM_SIM_BIN="$target_dir/debug/fm-sim" FM_WEB_DIR="$PWD/web/dist" \
    node tests/e2e/chat.test.mjs
FM_RELAY_BIN="$target_dir/debug/fm-relay" FM_SIM_BIN="$target_dir/debug/fm-sim" FM_WEB_DIR="$PWD/web/dist" \
    node tests/e2e/keys.test.mjs
FM_RELAY_BIN="$target_dir/debug/fm-relay" FM_SIM_BIN="$target_dir/debug/fm-sim" FM_WEB_DIR="$PWD/web/dist" \
    node tests/e2e/documents.test.mjs
step "IDE core end-to-end (Node) and the VS Code extension, tested as packaged"
ide-plugin/build.sh
FM_RELAY_BIN="$target_dir/debug/fm-relay" FM_SIM_BIN="$target_dir/debug/fm-sim" \
    node --test --experimental-websocket ide-plugin/tests/e2e.test.mjs
(cd ide-plugin/vscode && PATH="$OLDPWD/node_modules/.bin:$PATH" npm run package --silent)
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    ide-plugin/vscode/fm-relay-assistant.vsix "$unpacked"
FM_RELAY_BIN="$target_dir/debug/fm-relay" FM_SIM_BIN="$target_dir/debug/fm-sim" FM_IDE_EXTENSION_DIR="$unpacked/extension" \
    node --test ide-plugin/vscode/test/extension.test.mjs
