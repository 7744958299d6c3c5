#!/usr/bin/env bash
# Encryption on vs off (issue 19): encode throughput of the upload path (compress, then encrypt;
# the Rust bench `encode_throughput_bench`, release build) and restore-wal throughput against a
# local moto S3 server and full-segment upload throughput of a real safekeeper following a real
# primary (bench/encryption_bench.py). Builds the release binary unless
# SAFEKEEPER_BIN names one; uses the test venv (moto, boto3, crc32c, zstandard, cryptography).
#   bench/encryption_bench.sh [--segments 16] [--rounds 3] [--segment-mb 16] [--upload-segments 8]
# ENC_BENCH_REPS (default 5) sets the rounds of the encode bench.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x test_runner/.venv/bin/python ] || { echo "test venv missing: run scripts/test.sh once" >&2; exit 1; }
. scripts/lib/find_pg.sh
PG_BINDIR=$(find_pg_bindir) || { echo "PostgreSQL server binaries not found (run scripts/test.sh once)" >&2; exit 1; }
export PG_BINDIR
target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${SAFEKEEPER_BIN:-}" ]; then
  cargo build --release -p safekeeper --locked >&2
  export SAFEKEEPER_BIN="$target/release/safekeeper"
fi
echo "== upload: encode throughput (release build of the test)"
cargo test --release -p safekeeper --locked --lib encode_throughput_bench -- --ignored --nocapture 2>&1 \
  | grep -v '^running\|^test \|^$\|test result'
echo "== restore: restore-wal throughput against moto"
export PATH="$PWD/test_runner/.venv/bin:$PATH"
exec test_runner/.venv/bin/python bench/encryption_bench.py "$@"
