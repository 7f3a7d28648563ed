"""The one way test jobs leave their trace in a file outside Redis: one O_APPEND write per
line, so lines of concurrent runs (threads or processes) never interleave."""

from __future__ import annotations

import os


def append(path: str, line: str) -> None:
    """Append ``line`` and a newline to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
