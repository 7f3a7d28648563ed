#!/usr/bin/env bash
# Lints and type-checks the code, with the settings in pyproject.toml ([tool.ruff], [tool.mypy]):
#   ruff check   runtime/, operator/, tests/, benchmarks/ and scripts/*.py
#   mypy         conveyor and conveyor_operator, strict (tests/ is left to ruff)
# Both come with the dev extra (scripts/setup.sh installs it). Any finding fails (exit != 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check
.venv/bin/mypy --python-executable .venv/bin/python
