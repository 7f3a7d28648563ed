"""A job module that leaves a file behind when imported, so a test can tell whether a
worker that refused one of its functions imported it anyway (importing runs code)."""

from __future__ import annotations

import os
from pathlib import Path

_marker = os.environ.get("CONVEYOR_TEST_IMPORT_MARKER")
if _marker:
    Path(_marker).touch()


def ping() -> str:
    return "pong"
