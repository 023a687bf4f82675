#!/usr/bin/env bash
# Installs what building and testing FM Relay needs, skipping whatever is already present.
# Safe to run any number of times. Needs: a Rust toolchain managed by rustup.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        log "cargo not found: install the Rust toolchain (https://rustup.rs) and run this again"
        exit 1
    fi
fi

if command -v rustup >/dev/null 2>&1; then
    installed_components=$(rustup component list --installed 2>/dev/null || true)
    for component in rustfmt clippy; do
        if ! grep -q "^${component}" <<<"$installed_components"; then
            log "adding rustup component ${component}"
            rustup component add "$component"
        fi
    done
    if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        log "adding the wasm32-unknown-unknown target"
        rustup target add wasm32-unknown-unknown
    fi
else
    log "rustup not found: make sure rustfmt, clippy and the wasm32-unknown-unknown target are installed"
fi
log "toolchain ready: $(cargo --version)"
