#!/usr/bin/env bash
# Sync-mode TPS of the safekeeper vs pg_receivewal --synchronous (see bench/sync_tps.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/env.sh
exec test_runner/.venv/bin/python bench/sync_tps.py "$@"
