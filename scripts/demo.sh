#!/usr/bin/env bash
# Quickstart: set up (venv, redis-server if missing) and run `conveyor demo`,
# which starts a private redis-server, enqueues jobs and runs a worker on them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/conveyor demo "$@"
