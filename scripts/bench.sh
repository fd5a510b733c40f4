#!/usr/bin/env bash
# Benchmarks the host (echo component) against native Rust WebSocket echo servers
# (fastwebsockets, yawc, tokio-tungstenite) and the wasmtime floor (yawc with a bare
# WebAssembly call per message) on this machine; see docs/benchmarks.md.
#   scripts/bench.sh            full run (3 rounds, about 10 minutes); rewrites
#                               docs/benchmarks.md and docs/benchmarks.svg
#   scripts/bench.sh --quick    smoke check (well under a minute); writes nothing
# Other arguments go to wasmsocket-bench (`--help` lists them), e.g. --rounds 5,
# --scale (hold 100,000 connections per target), --loads small,idle, --targets host,yawc.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --profile dist -p wasmsocket-host
cargo build --profile guest --target wasm32-wasip2 -p echo
cargo build --profile dist -p wasmsocket-bench

args=("$@")
out=(--out docs/benchmarks.md)
for arg in "$@"; do
    case "$arg" in
        --quick | --out | --out=* | -h | --help | -V | --version) out=() ;;
    esac
done

export WASMSOCKET_HOST_BIN="$CARGO_TARGET_DIR/dist/wasmsocket"
export WASMSOCKET_ECHO_COMPONENT="$CARGO_TARGET_DIR/wasm32-wasip2/guest/echo.wasm"
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || revision="$revision with uncommitted changes"
export WASMSOCKET_BENCH_REVISION="$revision"
export WASMSOCKET_BENCH_COMMAND="scripts/bench.sh${args[*]:+ ${args[*]}}"
exec "$CARGO_TARGET_DIR/dist/wasmsocket-bench" "${out[@]}" "${args[@]}"
