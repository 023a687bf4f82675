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

# Debian packages: redis-server (the answer cache's shared backend, started by the tests
# themselves on a free port), haproxy (the load balancer in front of the replicas test's relays,
# with deploy/haproxy.cfg), chromium (the browser end-to-end test), chromium-driver (runs the
# UI's wasm-bindgen-test component tests in headless Chromium), Node.js and npm (wasm-opt and
# playwright-core come from npm).
missing_packages=()
command -v redis-server >/dev/null 2>&1 || missing_packages+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing_packages+=(haproxy)
command -v chromium >/dev/null 2>&1 || missing_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing_packages+=(chromium-driver)
command -v npm >/dev/null 2>&1 || missing_packages+=(nodejs npm)
# python3-venv: the tests' Python tools (the reference OpenMetrics parser) live in .venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing_packages+=(python3-venv)
if [ ${#missing_packages[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing_packages[*]} and no apt-get to install them: install them and run this again"
        exit 1
    fi
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo_cmd=(sudo)
        else
            log "installing ${missing_packages[*]} needs root: run this as root or install sudo"
            exit 1
        fi
    fi
    log "installing Debian packages: ${missing_packages[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing_packages[@]}" >/dev/null
fi
log "redis-server ready: $(redis-server --version | cut -d' ' -f1-3)"
log "haproxy ready: $(haproxy -v | head -n 1 | cut -d' ' -f1-3)"

# The web UI's build tools, at the versions the build needs. Trunk's own downloads cannot work
# here (Trunk.toml sets offline = true), so each is installed from a registry.
trunk_version="0.21.14"
if ! trunk --version 2>/dev/null | grep -qF "$trunk_version"; then
    log "installing trunk $trunk_version (compiles from crates.io: about 15 minutes, once)"
    cargo install trunk --version "$trunk_version" --locked
fi
# wasm-bindgen-cli must be exactly the wasm-bindgen of Cargo.lock; its own lockfile pins a crate
# the registry no longer serves, so no --locked.
wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qF "$wasm_bindgen_version"; then
    log "installing wasm-bindgen-cli $wasm_bindgen_version"
    cargo install wasm-bindgen-cli --version "$wasm_bindgen_version"
fi
# wasm-opt (npm binaryen; Debian's older binaryen breaks the WASM), playwright-core, and
# @vscode/vsce, which packages the VS Code extension.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "installing npm packages (binaryen, playwright-core, @vscode/vsce)"
    npm ci --no-audit --no-fund --loglevel=error
fi
log "web tools ready: $(trunk --version), $(wasm-bindgen --version), $(node_modules/.bin/wasm-opt --version)"
# The tests' Python tools, in a virtualenv made once and reused (pip skips what is installed).
if [ ! -x .venv/bin/python ]; then
    log "making the Python virtualenv .venv"
    python3 -m venv .venv
fi
if [ ! -f .venv/.requirements-installed ] || [ scripts/requirements-test.txt -nt .venv/.requirements-installed ]; then
    log "installing the tests' Python packages"
    .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
    touch .venv/.requirements-installed
fi
log "python tools ready: $(.venv/bin/python --version)"
