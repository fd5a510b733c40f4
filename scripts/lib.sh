# Shared by the test scripts (sourced).

# Finds and installs the Autobahn kit: sets $kit (the kit) and $dir (its install).
autobahn_kit() {
    kit="${AUTOBAHN_KIT:-}"
    for candidate in "$(cd .. && pwd)/shared/autobahn" /work/shared/autobahn; do
        [ -z "$kit" ] && [ -x "$candidate/install.sh" ] && kit="$candidate"
    done
    [ -n "$kit" ] || { echo "error: the Autobahn kit (shared/autobahn) was not found; set AUTOBAHN_KIT" >&2; exit 1; }
    dir="${AUTOBAHN_DIR:-$HOME/.cache/autobahn}"
    "$kit/install.sh" "$dir" >/dev/null
}

# Starts the built host with config file $1 (port 0) in the background, logs in the
# file's directory; sets $host_pid and $addr (ip:port), or fails with the host's log.
start_host() {
    local config="$1" logs
    logs="$(dirname "$config")"
    RUST_LOG="${RUST_LOG:-error}" "$CARGO_TARGET_DIR/release/wasmsocket" serve --config "$config" \
        > "$logs/host.out" 2> "$logs/host.err" &
    host_pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$logs/host.out" 2>/dev/null && break
        sleep 0.1
    done
    addr=$(sed -n 's/^wasmsocket listening on //p' "$logs/host.out")
    [ -n "$addr" ] || { cat "$logs/host.err" >&2; echo "error: the host did not start" >&2; exit 1; }
}
