#!/usr/bin/env bash
# Builds the fm-ide WASM core twice with wasm-bindgen: for Node (the VS Code extension host loads
# ide-plugin/vscode/dist/core/fm_ide.js) and for the web (ide-plugin/vscode/dist/core-web/, an
# ES module for a webview or any browser panel). Needs the toolchain scripts/setup.sh installs.
#
#   ide-plugin/build.sh            # then: cd ide-plugin/vscode && npm run package
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p fm-ide --target wasm32-unknown-unknown --profile web-release --locked
target_dir=$(cargo metadata --no-deps --format-version 1 --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
wasm="$target_dir/wasm32-unknown-unknown/web-release/fm_ide.wasm"
dist=ide-plugin/vscode/dist
rm -rf "$dist/core" "$dist/core-web"
wasm-bindgen --target nodejs --out-dir "$dist/core" "$wasm"
wasm-bindgen --target web --out-dir "$dist/core-web" "$wasm"
# The web build is an ES module; the extension's own files are CommonJS.
echo '{ "type": "module" }' >"$dist/core-web/package.json"
# Smaller and faster: binaryen's optimiser (from npm, as for the web UI), when it is installed.
if [ -x node_modules/.bin/wasm-opt ]; then
    for out in "$dist/core/fm_ide_bg.wasm" "$dist/core-web/fm_ide_bg.wasm"; do
        node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int "$out" -o "$out"
    done
fi
printf 'fm-ide core: %s bytes (%s gzip)\n' "$(wc -c <"$dist/core/fm_ide_bg.wasm")" "$(gzip -9 -c "$dist/core/fm_ide_bg.wasm" | wc -c)" >&2
