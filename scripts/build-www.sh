#!/usr/bin/env bash
# Builds the browser client (client-wasm) into www/pkg with wasm-bindgen (--target web),
# shrinks it with wasm-opt -Oz when npm's binaryen is available, and prints its sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/setup-browser.sh

# Panic locations name their source files: leave the registry's absolute path out of
# them (the bundle is smaller and does not say where it was built).
for registry in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
    RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$registry="
done
export RUSTFLAGS
# The JavaScript class needs no XML binding: leave quick-xml out of the bundle. talc
# replaces Rust's default allocator (dlmalloc), about 7 KB smaller.
cargo build --profile wasm-release -p wasmsocket-client --target wasm32-unknown-unknown \
    --no-default-features --features talc-allocator
wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release/wasmsocket_client.wasm"
rm -rf www/pkg
wasm-bindgen --target web --out-dir www/pkg "$wasm"
out=www/pkg/wasmsocket_client_bg.wasm
raw=$(wc -c < "$out")
if [ -x "$WASMSOCKET_NPM/node_modules/.bin/wasm-opt" ]; then
    "$WASMSOCKET_NPM/node_modules/.bin/wasm-opt" -Oz --strip-debug --strip-producers --enable-bulk-memory --enable-nontrapping-float-to-int \
        --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
        "$out" -o "$out.opt" && mv "$out.opt" "$out"
fi
opt=$(wc -c < "$out")
gz=$(gzip -9 -c "$out" | wc -c)
echo "www/pkg: wasm $raw bytes after wasm-bindgen, $opt after wasm-opt -Oz, $gz gzipped"
