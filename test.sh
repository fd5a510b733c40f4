#!/usr/bin/env bash
# Sets up everything and runs every test: formatting and lints, unit tests, the
# end-to-end tests that start the real host binary with real guest components, the
# client's behaviour tests natively and in headless Chromium, the www/ front end in
# Chromium (Playwright), and the host and the native client against the Autobahn
# TestSuite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
source scripts/setup-browser.sh
source scripts/setup-services.sh

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
WASMSOCKET_TEST_URL=ws://unused cargo clippy --release -p wasmsocket-client \
    --target wasm32-unknown-unknown --all-targets -- -D warnings

echo "== native tests"
cargo test --release --workspace
# The vendored engine's own tests, including those of the changes in its PATCHES.md.
cargo test --release --manifest-path vendor/yawc/Cargo.toml --lib

echo "== browser tests"
scripts/browser-tests.sh

echo "== Autobahn: the host with the echo component, isolated and shared (all but 12.*, 13.*; their 12.1, 13.1 samples)"
scripts/autobahn-host.sh

echo "== Autobahn: native client (all but 12.*, 13.*; their 12.1, 13.1 samples)"
scripts/autobahn-client.sh
