#!/usr/bin/env bash
# Restore throughput of `safekeeper restore-wal` (segments/s) against a local moto S3 server,
# without and with --prefetch (see bench/restore_bench.py). Builds the release binary unless
# SAFEKEEPER_BIN names one; uses the test venv (moto, boto3, crc32c).
#   bench/restore_bench.sh [--segments 64] [--prefetch 8] [--segment-mb 16]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x test_runner/.venv/bin/python ] || { echo "test venv missing: run scripts/test.sh once" >&2; exit 1; }
if [ -z "${SAFEKEEPER_BIN:-}" ]; then
  cargo build --release -p safekeeper --locked >&2
  export SAFEKEEPER_BIN="$PWD/target/release/safekeeper"
fi
export PATH="$PWD/test_runner/.venv/bin:$PATH"
exec test_runner/.venv/bin/python bench/restore_bench.py "$@"
