#!/usr/bin/env bash
# Concurrent streams through one relay process (relay/benches/streams.rs; 10 000 by default):
# raises the open-files limit the run needs — each stream holds a socket in the bench (client),
# one or two in the relay (client, and upstream over HTTP/1.1) and one in the simulator, which
# runs in the bench — then runs the bench in release. Env: the bench's (STREAMS,
# STREAM_UPSTREAMS, ...; see its header).
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(( ${STREAMS:-10000} * 5 + 1024 ))
if [ "$(ulimit -n)" -lt "$want" ]; then
    # Root may raise the hard limit; anyone may raise the soft one up to it.
    ulimit -Hn "$want" 2>/dev/null || true
    ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
echo "[streams] open-files limit: $(ulimit -n)" >&2
exec cargo bench -p fm-relay --bench streams --locked "$@"
