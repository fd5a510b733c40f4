#!/usr/bin/env bash
# The host (echo component, isolated and shared mode) against the Autobahn TestSuite
# (fuzzingclient mode).
#   scripts/autobahn-host.sh          all cases except the compression ones (12.*, 13.*),
#                                     plus the 12.1.* and 13.1.* samples
#   scripts/autobahn-host.sh --full   every case (12.* and 13.* take 15-20 minutes)
# Fails unless every case is OK or INFORMATIONAL (NON-STRICT allowed; see
# docs/conformance.md). The Autobahn limits (16 MiB messages) are this run's
# configuration, not the host's defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/lib.sh

autobahn_kit

cargo build --release -p wasmsocket-host
cargo build --profile guest --target wasm32-wasip2 -p echo
work=$(mktemp -d)
cat > "$work/wasmsocket.toml" <<TOML
[listener]
host = "127.0.0.1"
port = 0

[[service]]
path = "/echo"
component = "$CARGO_TARGET_DIR/wasm32-wasip2/guest/echo.wasm"
max_frame_size = 16777216
max_message_size = 16777216

[[service]]
path = "/echo-shared"
component = "$CARGO_TARGET_DIR/wasm32-wasip2/guest/echo.wasm"
max_frame_size = 16777216
max_message_size = 16777216
mode = "shared"
[service.limits]
max_memory = 268435456
TOML
trap 'kill "${host_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
start_host "$work/wasmsocket.toml"
# By default every case but the compression ones, plus their 12.1.* and 13.1.* samples.
cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.1.*", "13.1.*"]'
[ "${1:-}" = "--full" ] && cases='["*"]'
cat > "$work/spec.json" <<JSON
{"outdir": "$work/reports/servers",
 "servers": [{"agent": "wasmsocket", "url": "ws://$addr/echo"},
             {"agent": "wasmsocket-shared", "url": "ws://$addr/echo-shared"}],
 "cases": $cases, "exclude-cases": [], "exclude-agent-cases": {}}
JSON
(cd "$work" && "$dir/venv27/bin/python" "$kit/wstest_local.py" -m fuzzingclient -s spec.json > wstest.log 2>&1)
if [ -n "${AUTOBAHN_REPORTS:-}" ]; then
    rm -rf "$AUTOBAHN_REPORTS" && cp -r "$work/reports/servers" "$AUTOBAHN_REPORTS"
fi
python3 "$kit/check_results.py" "$work/reports/servers/index.json" --allow-nonstrict
