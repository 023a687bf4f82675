#!/usr/bin/env bash
# fm-relay-lambda's size and cold start, measured locally (BENCHMARKS.md, "On Lambda").
#
#   bench/lambda/run.sh    builds the function with the `lambda` profile (release, stripped),
#                          reports the binary's size and its zip's (what Lambda takes), then
#                          times cold starts to the first answer and warm answers
#                          (bench/lambda/cold_start.py says how)
#
# Needs the test virtualenv (.venv: cargo-lambda, moto, cfn-lint), which scripts/setup.sh makes.
# Every process it starts listens on loopback and is stopped when it ends. Env: RUNS (cold
# starts, default 10), WARM (warm answers per start, default 20).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.venv
for tool in cargo-lambda moto_server cfn-lint; do
    if [ ! -x "$venv/bin/$tool" ]; then
        echo "[lambda] $venv/bin/$tool is missing: run scripts/setup.sh" >&2
        exit 1
    fi
done

cargo build --profile lambda -p fm-relay-lambda -p fm-sim --bins --locked
bench_name=lambda
. bench/lib.sh
bin="$(target_dir)/lambda"

# The package Lambda takes: the binary as `bootstrap`, zipped (what `cargo lambda build
# --output-format zip` makes).
python3 - "$bin/fm-relay-lambda" "$work/bootstrap.zip" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED, compresslevel=9) as package:
    info = zipfile.ZipInfo("bootstrap")
    info.external_attr = 0o755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(sys.argv[1], "rb") as binary:
        package.writestr(info, binary.read())
EOF
printf 'package           %.1f MB zipped (bootstrap.zip; Lambda takes up to 50 MB zipped, 250 MB unzipped)\n' \
    "$(python3 -c 'import os, sys; print(os.path.getsize(sys.argv[1]) / 1e6)' "$work/bootstrap.zip")"

sim_port=$(free_port)
moto_port=$(free_port)
lambda_port=$(free_port)

# fm-sim answers at once: the first token at once, 32 tokens as fast as it can.
"$bin/fm-sim" --port "$sim_port" --first-token-ms 0 --tokens-per-second 0 >"$work/sim.log" 2>&1 &
pids+=($!)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!)
# The emulator, without a function of its own: cold_start.py starts the function. In this mode
# the emulator's one function is `_`: its runtime API is `/.rt`, its function URL `/lambda-url/_`.
setsid "$venv/bin/cargo-lambda" lambda watch --only-lambda-apis -A 127.0.0.1 -P "$lambda_port" \
    >"$work/watch.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$sim_port/_sim/stats" fm-sim "$work/sim.log"
wait_for "http://127.0.0.1:$moto_port/" moto_server "$work/moto.log" any
# (its function URL answers only when a function has taken the request: wait for the port)
wait_for_port "$lambda_port"

PY_TEMPLATE_JSON=$("$venv/bin/python" -c 'import json, sys
from cfnlint.decode import decode
template, errors = decode(sys.argv[1])
assert not errors, errors
print(json.dumps(template))' deploy/lambda/template.yaml) \
LAMBDA_BIN="$bin/fm-relay-lambda" \
LAMBDA_RUNTIME_API="http://127.0.0.1:$lambda_port/.rt" \
LAMBDA_URL="http://127.0.0.1:$lambda_port/lambda-url/_" \
SIM_URL="http://127.0.0.1:$sim_port" \
MOTO_URL="http://127.0.0.1:$moto_port" \
    python3 bench/lambda/cold_start.py
