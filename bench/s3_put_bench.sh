#!/usr/bin/env bash
# PUT throughput of 16 MiB objects against a local moto S3 server at concurrency 1, 4 and 16.
#
# Starts moto on 127.0.0.1 with a free port, runs remote_storage's put_bench example (release
# build), and stops moto by PID on exit. Extra arguments go to put_bench, e.g.
#   bench/s3_put_bench.sh --concurrency 1,4,16 --objects 32
# moto is found as in the tests: $MOTO_SERVER_BIN, else moto_server on PATH, else the project venv.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

moto="${MOTO_SERVER_BIN:-}"
if [[ -z "$moto" ]]; then
    moto="$(command -v moto_server || true)"
fi
if [[ -z "$moto" ]]; then
    moto="$repo/test_runner/.venv/bin/moto_server"
fi
if [[ ! -x "$moto" ]]; then
    echo "moto_server not found (set MOTO_SERVER_BIN or create test_runner/.venv)" >&2
    exit 1
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp -t moto-bench.XXXXXX.log)"

"$moto" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
cleanup() {
    kill "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

# Bounded wait for readiness (30 s).
ready=0
for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        ready=1
        break
    fi
    if ! kill -0 "$moto_pid" 2>/dev/null; then
        echo "moto exited early:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ "$ready" != 1 ]]; then
    echo "moto did not come up on port $port within 30 s" >&2
    exit 1
fi

cd "$repo"
cargo run --release -q -p remote_storage --example put_bench -- --endpoint "http://127.0.0.1:$port" "$@"
