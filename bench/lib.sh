# Shell helpers the bench scripts share (bench/peer/run.sh, bench/lambda/run.sh): source it after
# setting `bench_name` (the tag of their messages). It makes `$work`, a temporary folder, and
# `pids`, the processes to stop: whatever a script appends there is stopped (its process group
# when it leads one, as a `setsid` child does) and `$work` removed when the script ends.

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Cargo's target folder (CARGO_TARGET_DIR or the workspace's).
target_dir() {
    cargo metadata --no-deps --format-version 1 --locked |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# A TCP port free on loopback now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for URL NAME LOG [any]: until URL answers 2xx (with `any`: answers at all, an HTTP error
# included), for up to 120 s; else says NAME did not come up, shows LOG's tail and ends the script.
wait_for() {
    local accept='urllib.request.urlopen(sys.argv[1], timeout=1)'
    if [ "${4:-}" = any ]; then
        accept='try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass'
    fi
    for _ in $(seq 1 1200); do
        if python3 -c "import sys, urllib.request, urllib.error
$accept" "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "[$bench_name] $2 did not come up: $1" >&2
    if [ -n "${3:-}" ]; then
        tail -30 "$3" >&2
    fi
    exit 1
}

# wait_for_port PORT: until something listens on loopback PORT, for up to 60 s.
wait_for_port() {
    for _ in $(seq 1 600); do
        if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
            "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
}
