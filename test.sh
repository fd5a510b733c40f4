#!/usr/bin/env bash
# Sets up everything and runs every test: unit tests, the command-line tests, and the
# end-to-end tests that start the real host binary with real guest components.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
