#!/usr/bin/env bash
# The relay beside LiteLLM's proxy, both in front of one fm-sim, driven with the same load by
# bench/benches/peer.rs (see there for what is measured and reported).
#
#   bench/peer/run.sh            the full run: release builds, concurrencies 1,16,64, 10 s each
#   bench/peer/run.sh --smoke    what the test command runs: debug builds, 2 s at 4 connections
#
# Makes the virtualenv .venv-litellm once (LiteLLM's proxy, pinned below) and reuses it. Every
# process it starts listens on loopback and is stopped when it ends. Env: PEER_CONCURRENCY,
# PEER_SECS, PEER_MODES override the run's shape; LITELLM_WORKERS (default 2, one per core).
set -euo pipefail
cd "$(dirname "$0")/../.."

LITELLM_VERSION=1.106.12
smoke=false
if [ "${1:-}" = "--smoke" ]; then
    smoke=true
fi

venv=.venv-litellm
if [ ! -x "$venv/bin/litellm" ] || ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$LITELLM_VERSION')"; then
    echo "[peer] making $venv with litellm[proxy]==$LITELLM_VERSION" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
fi

if $smoke; then
    profile=debug
    cargo build -p fm-relay -p fm-sim --bins --locked
    : "${PEER_CONCURRENCY:=4}" "${PEER_SECS:=2}"
    bench=(cargo test -p fm-bench --bench peer --locked)
else
    profile=release
    cargo build --release -p fm-relay -p fm-sim --bins --locked
    : "${PEER_CONCURRENCY:=1,16,64}" "${PEER_SECS:=10}"
    bench=(cargo bench -p fm-bench --bench peer --locked)
fi
export PEER_CONCURRENCY PEER_SECS
bench_name=peer
. bench/lib.sh
bin="$(target_dir)/$profile"

sim_port=$(free_port)
relay_port=$(free_port)
litellm_port=$(free_port)

# The simulator: the first token at once, 32 tokens as fast as it can.
"$bin/fm-sim" --port "$sim_port" --first-token-ms 0 --tokens-per-second 0 >"$work/sim.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$sim_port/_sim/stats" fm-sim "$work/sim.log"

# The relay: its embedded defaults (retries, breakers, adaptive rate limiting, failover plan,
# metrics, the usage ledger), one model on the simulator's OpenAI route, the cache off
# (LiteLLM's is off too).
cat >"$work/relay.toml" <<EOF
default_model = "bench"

[server]
port = $relay_port

[cache]
enabled = false

# One API key, sk-bench (LiteLLM checks its master key too): every request is identified, its
# usage filed in the ledger.
[auth]
mode = "keys"

[[auth.keys]]
name = "bench"
key_sha256 = "$(printf %s sk-bench | sha256sum | cut -d' ' -f1)"

[[models]]
id = "bench"
provider = "openai"
upstream_id = "bench"
endpoint = "http://127.0.0.1:$sim_port/v1"
region = "local"
input_price_per_1k = 0.0
output_price_per_1k = 0.0
context_window = 128000
EOF
(cd "$work" && exec "$bin/fm-relay" serve --config "$work/relay.toml" >"$work/relay.log" 2>&1) &
relay_pid=$!
pids+=($relay_pid)
wait_for "http://127.0.0.1:$relay_port/healthz" fm-relay "$work/relay.log"

# LiteLLM's proxy: the same model through its OpenAI provider, no database, no callbacks; it
# refuses to start without a master key, which the driver sends (a string compare per request).
cat >"$work/litellm.yaml" <<EOF
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:$sim_port/v1
      api_key: sk-sim
litellm_settings:
  telemetry: false
EOF
(cd "$work" && LITELLM_MASTER_KEY=sk-bench LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR exec "$OLDPWD/$venv/bin/litellm" \
    --config "$work/litellm.yaml" --host 127.0.0.1 --port "$litellm_port" \
    --num_workers "${LITELLM_WORKERS:-2}" >"$work/litellm.log" 2>&1) &
litellm_pid=$!
pids+=($litellm_pid)
wait_for "http://127.0.0.1:$litellm_port/health/liveliness" litellm "$work/litellm.log"

relay_version=$("$bin/fm-relay" --version | awk '{print $2}')
relay_commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
litellm_version=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('litellm'))")

PEER_TARGETS="fm-sim=http://127.0.0.1:$sim_port/v1,fm-relay=http://127.0.0.1:$relay_port/v1,litellm=http://127.0.0.1:$litellm_port/v1" \
PEER_PIDS="fm-relay=$relay_pid,litellm=$litellm_pid" \
PEER_VERSIONS="fm-relay=$relay_version at $relay_commit ($profile build),litellm=$litellm_version (its proxy with ${LITELLM_WORKERS:-2} workers),fm-sim=$relay_version" \
PEER_MODEL=bench \
    "${bench[@]}"
