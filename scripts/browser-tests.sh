#!/usr/bin/env bash
# The browser half of the tests: builds www/, starts the real host (echo, faulty and the
# front end), runs the client's behaviour tests in headless Chromium
# (wasm-bindgen-test), then drives www/ with Playwright. Expects `cargo test --release
# --workspace` to have built the host and the components (test.sh runs it first).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/setup-browser.sh
source scripts/lib.sh

scripts/build-www.sh

components="$CARGO_TARGET_DIR/wasm-components/wasm32-wasip2/guest"
work=$(mktemp -d)
cat > "$work/wasmsocket.toml" <<TOML
[listener]
host = "127.0.0.1"
port = 0

[static_files]
dir = "$PWD/www"

[[service]]
path = "/echo"
component = "$components/echo.wasm"

[[service]]
path = "/faulty"
component = "$components/faulty.wasm"
TOML
trap 'kill "${host_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
start_host "$work/wasmsocket.toml"

echo "== client behaviour tests in headless Chromium (host at $addr)"
WASMSOCKET_TEST_URL="ws://$addr" \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test --release -p wasmsocket-client --target wasm32-unknown-unknown --test behaviour

echo "== www/ end to end with Playwright"
WASMSOCKET_NPM="$WASMSOCKET_NPM" node tests/browser/www.test.mjs "http://$addr/"
