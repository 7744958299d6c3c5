#!/usr/bin/env bash
# Bytes and requests sent to S3 per byte of WAL, upload lag, idle requests (issue 16; see
# bench/upload_cost.py and bench/README.md). A full run takes about 6 minutes, --quick about 2.3;
# a hard limit (15 / 6 minutes, SIGTERM, then SIGKILL 60 s later) bounds a hung run, and the
# Python side stops every process it started on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib/env.sh
limit=900
for a in "$@"; do [ "$a" = "--quick" ] && limit=360; [ "$a" = "--slow-segment" ] && limit=3000; done
exec timeout -k 60 "$limit" test_runner/.venv/bin/python bench/upload_cost.py "$@"
