"""A job module that imports a standard-library function under its own name, the way
`from subprocess import getoutput` does in real code: the worker must not run it."""

from __future__ import annotations

from subprocess import getoutput  # noqa: F401  (re-exported on purpose)


def own() -> str:
    return "own"
