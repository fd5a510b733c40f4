# Sourced by run.sh and test.sh: installs what building wasmsocket needs and picks the
# cargo target directory. Safe to run again; does nothing that is already done.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wasmsocket/target}"
mkdir -p "$CARGO_TARGET_DIR"

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    # Guest components are built for wasm32-wasip2.
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        rustup target add wasm32-wasip2
    fi
else
    echo "warning: rustup not found; make sure the wasm32-wasip2 target is installed" >&2
fi
if command -v rustup >/dev/null 2>&1; then
    # The test command checks formatting and lints.
    for component in rustfmt clippy; do
        if ! rustup component list --installed | grep -q "^$component"; then
            rustup component add "$component"
        fi
    done
fi
