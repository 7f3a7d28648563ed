"""Running one job's function and turning what happened into an Outcome.

Shared by the thread pool, the event loop and the child processes of the
process pool, so every pool reports errors the same way.
"""

from __future__ import annotations

import ctypes
import inspect
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..context import JobContext, _current
from ..errors import ForbiddenFunction, InvalidFunction
from ..retry import RetryLater
from ..serializers import Serializer, reader
from ..validation import import_function


class JobTimeout(Exception):
    """Raised inside a job that ran past its timeout."""


class JobStopped(Exception):
    """Raised inside a job stopped on request (``conveyor job stop``)."""


STOPPED = "JobStopped"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: bytes = b""
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    # "module.Name" of the exception class and its bases, for retry_on / dont_retry_on.
    exc_names: tuple[str, ...] = ()
    retry_after: float | None = None  # the job raised RetryLater(delay)
    retryable: bool = True  # False for failures no retry can fix (a malformed job)


# _lib.lua's record_attempt keeps the first 1000 bytes of a message, which can split a
# UTF-8 character; cut here first, on a character boundary, and it has nothing to cut.
MESSAGE_LIMIT = 1000
# A traceback is stored whole in the job hash: bounded so one runaway repr cannot fill Redis.
TRACEBACK_LIMIT = 64 * 1024


def clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, cut between characters, marked where
    cut. Lone surrogates (which Redis cannot be sent) come out backslash-escaped."""
    if text.isascii() and len(text) <= limit:
        return text
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    if keep_end:  # a traceback's last lines name the exception and where it was raised
        mark = "[... cut: only the end is kept ...]\n"
        return mark + data[len(data) - limit + len(mark):].decode("utf-8", "ignore")
    mark = "..."
    return data[: limit - len(mark)].decode("utf-8", "ignore") + mark


def _outcome(exc_type: str, message: str, tb: str, names: tuple[str, ...], **more: Any) -> Outcome:
    """Every failed Outcome is built here, so every one is cut to what Redis keeps."""
    return Outcome(False, exc_type=exc_type, exc_message=clip(message, MESSAGE_LIMIT),
                   traceback=clip(tb, TRACEBACK_LIMIT, keep_end=True), exc_names=names, **more)


def failure(exc_type: str, message: str, tb: str = "", *, cls: type[BaseException] | None = None,
            retryable: bool = True) -> Outcome:
    names = tuple(f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__) if cls else (exc_type,)
    return _outcome(exc_type, message, tb, names, retryable=retryable)


def from_exception(exc: BaseException) -> Outcome:
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    tb = "".join(traceback.format_exception(exc))
    names = tuple(f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__)
    retry_after = exc.delay if isinstance(exc, RetryLater) else None
    return _outcome(name, _message(exc), tb, names, retry_after=retry_after)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as err:  # a broken __str__ must not lose the job's outcome
        return f"<str() of the exception failed: {type(err).__name__}>"


class MalformedJob(Exception):
    pass


_functions: dict[tuple[str, tuple[str, ...]], Callable[..., Any]] = {}


def resolve(path: str, allow_modules: tuple[str, ...] = ()) -> Callable[..., Any]:
    """Import a job function once per process, if ``allow_modules`` lets this worker run
    it (see :func:`conveyor.validation.check_target`). Raises InvalidFunction, or
    ForbiddenFunction before anything is imported."""
    func = _functions.get((path, allow_modules))
    if func is None:
        func = _functions[(path, allow_modules)] = import_function(path, allow_modules)
    return func


def import_failure(exc: InvalidFunction) -> Outcome:
    """A refused target fails for good (no retry makes it allowed); a missing one may
    import after the next deploy, so it may be retried."""
    if isinstance(exc, ForbiddenFunction):
        return failure("ForbiddenFunction", str(exc), retryable=False)
    return failure("ImportError", str(exc))


def serializer_for(name: str, allow_pickle: bool) -> Serializer:
    try:
        return reader(name, allow_pickle=allow_pickle, hint="start the worker with --allow-pickle")
    except Exception as exc:
        raise MalformedJob(str(exc)) from None


def decode_call(serializer: Serializer, payload: bytes | None) -> tuple[list[Any], dict[str, Any]]:
    if payload is None:
        raise MalformedJob("job has no payload field")
    try:
        data = serializer.loads(payload)
        args, kwargs = data["a"], data["k"]
    except Exception as exc:
        raise MalformedJob(f"cannot decode the {serializer.name} payload: {type(exc).__name__}: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise MalformedJob("payload must hold a list of args and a dict of kwargs")
    return args, kwargs


def malformed(exc: Exception) -> Outcome:
    return failure("MalformedJob", str(exc), retryable=False)


def encode_result(serializer: Serializer, value: Any) -> Outcome:
    try:
        return Outcome(True, serializer.dumps(value))
    except Exception as exc:
        kind = type(value).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        return failure("ResultNotSerializable",
                       f"the job returned {article} {kind} that {serializer.name} cannot store: {exc}")


def call_sync(func: Callable[..., Any], ser: str, payload: bytes | None, allow_pickle: bool,
              ctx: JobContext | None = None) -> Outcome:
    """Decode, call, encode. Never raises: every ending becomes an Outcome."""
    token = _current.set(ctx) if ctx is not None else None
    try:
        return _call_sync(func, ser, payload, allow_pickle)
    finally:
        if token is not None:
            _current.reset(token)


def _call_sync(func: Callable[..., Any], ser: str, payload: bytes | None, allow_pickle: bool) -> Outcome:
    try:
        serializer = serializer_for(ser, allow_pickle)
        args, kwargs = decode_call(serializer, payload)
    except MalformedJob as exc:
        return malformed(exc)
    try:
        value = func(*args, **kwargs)
    except SystemExit as exc:
        return failure("SystemExit", f"the job called sys.exit({exc.code!r})", "".join(traceback.format_exception(exc)),
                       cls=SystemExit)
    except Exception as exc:
        return from_exception(exc)
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if close:
            close()
        return failure("TypeError", "the job function returned an awaitable; declare it 'async def' so the worker awaits it")
    return encode_result(serializer, value)


def call_path(path: str, ser: str, payload: bytes | None, allow_pickle: bool, ctx: JobContext | None = None,
              allow_modules: tuple[str, ...] = ()) -> Outcome:
    """call_sync by import path, as the process pool's children run it."""
    try:
        func = resolve(path, allow_modules)
    except InvalidFunction as exc:
        return import_failure(exc)
    return call_sync(func, ser, payload, allow_pickle, ctx)


class ThreadCall:
    """A sync job on a pool thread, remembering the thread so a timeout can reach it."""

    def __init__(self, func: Callable[..., Any], ser: str, payload: bytes | None, allow_pickle: bool,
                 ctx: JobContext | None = None) -> None:
        self.args = (func, ser, payload, allow_pickle, ctx)
        self.tag: Any = None  # what the submitter needs back with the outcome
        self.thread_id: int | None = None
        self.started = 0.0  # monotonic: when a thread took it from the stage (JobThreads)
        self.done = False
        self._lock = threading.Lock()

    def __call__(self) -> Outcome:
        with self._lock:
            self.thread_id = threading.get_ident()
        try:
            return call_sync(*self.args)
        finally:
            with self._lock:
                self.done = True

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        """Raise exc_type in the job's thread at its next Python instruction.

        Best effort: a thread blocked in C code (a socket read, time.sleep) sees
        it only when that call returns. Hard timeouts need --pool process.
        """
        with self._lock:
            if self.done or self.thread_id is None:
                return False
            hit: int = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), ctypes.py_object(exc_type))
            return hit == 1
