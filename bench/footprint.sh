#!/usr/bin/env bash
# Resident memory and idle CPU of one safekeeper process following 1 and 20 idle primaries
# (see bench/footprint.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/env.sh
exec test_runner/.venv/bin/python bench/footprint.py "$@"
