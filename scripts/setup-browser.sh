# Sourced by the scripts that build or test the browser side: installs the
# wasm32-unknown-unknown target, wasm-bindgen-cli at the version in Cargo.lock, npm's
# binaryen (wasm-opt) and playwright-core, and Debian's chromium + chromium-driver.

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

# wasm-bindgen-cli must match the wasm-bindgen crate exactly.
wbg_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wbg_version" ]; then
    # Without --locked: its lockfile pins a crate version the registry mirror lacks.
    cargo install wasm-bindgen-cli --version "$wbg_version"
fi

export WASMSOCKET_NPM="${WASMSOCKET_NPM:-$HOME/.cache/wasmsocket/npm}"
if [ ! -x "$WASMSOCKET_NPM/node_modules/.bin/wasm-opt" ] || [ ! -d "$WASMSOCKET_NPM/node_modules/playwright-core" ]; then
    mkdir -p "$WASMSOCKET_NPM"
    (cd "$WASMSOCKET_NPM" && npm install --no-audit --no-fund --silent binaryen@132 playwright-core@1 >/dev/null)
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get install -y chromium chromium-driver >/dev/null \
        || { $sudo_cmd apt-get update >/dev/null && $sudo_cmd apt-get install -y chromium chromium-driver >/dev/null; }
fi
