#!/usr/bin/env bash
# Sets up everything and runs the host serving the example services of wasmsocket.toml
# (ws://127.0.0.1:9090/echo) and the browser front end (http://127.0.0.1:9090/).
# Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh

examples=()
for dir in guest/examples/*/; do
    examples+=(-p "$(basename "$dir")")
done
cargo build --profile guest --target wasm32-wasip2 "${examples[@]}"
mkdir -p components
for dir in guest/examples/*/; do
    name="$(basename "$dir")"
    cp "$CARGO_TARGET_DIR/wasm32-wasip2/guest/${name//-/_}.wasm" components/
done

scripts/build-www.sh
cargo build --profile dist -p wasmsocket-host
echo "wasmsocket: open http://127.0.0.1:9090/ in a browser"
exec "$CARGO_TARGET_DIR/dist/wasmsocket" serve --config wasmsocket.toml "$@"
