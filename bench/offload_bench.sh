#!/usr/bin/env bash
# Upload lag under sync pgbench and full-segment upload throughput against moto's S3
# (see bench/offload_bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/env.sh
exec test_runner/.venv/bin/python bench/offload_bench.py "$@"
