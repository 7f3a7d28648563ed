#!/usr/bin/env bash
# Runs the test suite (pytest) against redis-servers the tests start themselves.
#   ./scripts/test.sh          the default run (slow scenarios skipped)
#   ./scripts/test.sh --all    everything, slow scenarios included (what CI runs)
# Other arguments go to pytest. Tests run in four processes (pytest-xdist): most of their
# time is spent waiting on workers and Redis, not on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--all" ]; then
  shift
  exec .venv/bin/python -m pytest -n 4 -m "slow or not slow" "$@"
fi
exec .venv/bin/python -m pytest -n 4 "$@"
