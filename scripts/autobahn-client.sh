#!/usr/bin/env bash
# The native client against the Autobahn TestSuite (fuzzingserver mode).
#   scripts/autobahn-client.sh          all cases except the compression ones (12.*, 13.*),
#                                       plus the 12.1.* and 13.1.* samples
#   scripts/autobahn-client.sh --full   every case
# Needs ../shared/autobahn (the kit) next to the repository. Fails unless every case is
# OK or INFORMATIONAL (NON-STRICT allowed; see docs/conformance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/lib.sh

autobahn_kit

work=$(mktemp -d)
trap 'kill "$wstest_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# By default every case but the compression ones, plus their 12.1.* and 13.1.* samples.
cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.1.*", "13.1.*"]'
[ "${1:-}" = "--full" ] && cases='["*"]'
cat > "$work/spec.json" <<JSON
{"url": "ws://127.0.0.1:$port", "outdir": "$work/reports/clients", "cases": $cases, "exclude-cases": []}
JSON

cargo build --release -p wasmsocket-client --example autobahn
(cd "$work" && exec "$dir/venv27/bin/python" "$kit/wstest_local.py" -m fuzzingserver -s spec.json -u 0 > wstest.log 2>&1) &
wstest_pid=$!
for _ in $(seq 100); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
done
"$CARGO_TARGET_DIR/release/examples/autobahn" "ws://127.0.0.1:$port" wasmsocket-client
python3 "$kit/check_results.py" "$work/reports/clients/index.json" --allow-nonstrict
