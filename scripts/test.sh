#!/usr/bin/env bash
# Runs the test suite (pytest) against redis-servers the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
