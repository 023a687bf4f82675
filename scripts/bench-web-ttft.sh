#!/usr/bin/env bash
# Measures how much of the chat page's time to first token is spent outside the relay (network,
# browser, rendering): browser TTFT minus the relay's TTFT for the same requests, over SSE and
# WebSocket. Builds the release relay, simulator and UI first. Options (environment):
#   BENCH_REQUESTS=50  measured requests per transport
#   BENCH_WARMUP=5     unmeasured requests before them
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PATH="$PWD/node_modules/.bin:$PATH" trunk build --release
cargo build --release --locked -p fm-relay -p fm-sim --bins
target_dir=$(cargo metadata --no-deps --format-version 1 --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
FM_RELAY_BIN="$target_dir/release/fm-relay" FM_SIM_BIN="$target_dir/release/fm-sim" FM_WEB_DIR="$PWD/web/dist" \
    node bench/browser/ttft.mjs
