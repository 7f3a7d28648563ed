#!/usr/bin/env bash
# Sets up everything Conveyor needs on a fresh machine, idempotently:
# redis-server, redis-cli, openssl and shellcheck (installed with apt-get when missing) and
# .venv with conveyor[dev].
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, by the command the tests run: redis-server; redis-cli (package
# redis-tools), which tests/deployments.py uses to create a cluster; openssl, which it
# uses to make the TLS certificates; shellcheck, which tests/chart/test_kind_flow.py runs on
# every script in scripts/; chromium, which the dashboard's browser tests drive (Playwright,
# pointed at Debian's build: no browser download).
MISSING=()
command -v redis-server >/dev/null 2>&1 || MISSING+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || MISSING+=(redis-tools)
command -v openssl >/dev/null 2>&1 || MISSING+=(openssl)
command -v shellcheck >/dev/null 2>&1 || MISSING+=(shellcheck)
command -v chromium >/dev/null 2>&1 || MISSING+=(chromium)
if [ "${#MISSING[@]}" -gt 0 ]; then
  echo "setup: installing missing packages with apt-get: ${MISSING[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" - <<'PY' || { echo "setup: Conveyor needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 11))
PY

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import conveyor, pytest, xdist, rq, msgpack, dramatiq, aiohttp, starlette, jinja2, uvicorn, multipart, httpx2, playwright" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.conveyor-installed ]; then
  echo "setup: installing conveyor[dev] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch .venv/.conveyor-installed
fi

# The editable install finds `conveyor` through an import hook that Python asks only after
# sys.path: run from the folder that holds this clone (named conveyor/), a script would import
# the clone's folder as an empty namespace package ("cannot import name 'Queue' from 'conveyor'
# (unknown location)"). The source folders on sys.path make the real package win.
SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n' "$PWD/runtime" "$PWD/operator" > "$SITE/conveyor-sources.pth"

# Compile our own sources once: where PYTHONDONTWRITEBYTECODE is set (common in containers
# and CI images) every worker and CLI process would otherwise compile them again at start-up.
.venv/bin/python -m compileall -q runtime operator tests >/dev/null
