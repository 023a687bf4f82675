#!/usr/bin/env bash
# Builds and runs the relay on its embedded default: without AWS configuration, Bedrock calls go
# to the embedded simulator, so it answers out of the box. Installs what is missing first.
#
#   scripts/run.sh                 # http://127.0.0.1:8080
#   PORT=9000 scripts/run.sh       # another port
#   scripts/run.sh --config relay.toml --idle-timeout-ms 5000   # any `fm-relay serve` flag
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The chat UI, served at / from web/dist.
PATH="$PWD/node_modules/.bin:$PATH" trunk build --release
cargo build --release --locked -p fm-relay
target_dir=$(cargo metadata --no-deps --format-version 1 --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/release/fm-relay" serve --port "${PORT:-8080}" --web-dir web/dist "$@"
