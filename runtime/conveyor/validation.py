"""Checks on what callers hand to enqueue: job IDs, queue names, functions, TTLs."""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import importlib
import inspect
import re
import sys
import time
import types
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ForbiddenFunction, InvalidArgument, InvalidFunction, InvalidJobId, InvalidQueueName

MAX_JOB_ID = 128
_QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_PATH_RE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_MODULE_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)
# Refused as job targets unless allowed by name: os.system, builtins.eval and
# subprocess.getoutput would hand a shell to whoever can write to Redis.
_STDLIB = frozenset(sys.stdlib_module_names) | {"builtins", "__main__"}


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str):
        raise InvalidJobId(f"job ID must be a string, got {type(job_id).__name__}")
    if not job_id:
        raise InvalidJobId("job ID must not be empty")
    if len(job_id) > MAX_JOB_ID:
        raise InvalidJobId(f"job ID is {len(job_id)} characters long; the limit is {MAX_JOB_ID}")
    if ":" in job_id:
        raise InvalidJobId(f"job ID {job_id!r} contains ':', which is reserved (execution IDs are kept apart)")
    if any(ch.isspace() for ch in job_id):
        raise InvalidJobId(f"job ID {job_id!r} contains whitespace")
    if not job_id.isprintable():
        # IDs reach terminals and logs: a bidi override, a zero-width or a control
        # character there disguises one job as another.
        ch = next(ch for ch in job_id if not ch.isprintable())
        raise InvalidJobId(f"job ID {job_id!r} contains {code_point(ch)}, an invisible or control character")
    if "{" in job_id or "}" in job_id:
        raise InvalidJobId(f"job ID {job_id!r} contains '{{' or '}}', which Redis Cluster reads as a hash tag")
    return job_id


def code_point(ch: str) -> str:
    """'U+202E (RIGHT-TO-LEFT OVERRIDE)'; controls and unassigned code points have no name."""
    fallback = {"Cc": "<control>", "Cs": "<surrogate>", "Co": "<private use>", "Cn": "<unassigned>"}
    name = unicodedata.name(ch, "") or fallback.get(unicodedata.category(ch), "<unnamed>")
    return f"U+{ord(ch):04X} ({name})"


def check_queue_name(name: Any) -> str:
    if not isinstance(name, str) or not _QUEUE_RE.fullmatch(name):
        raise InvalidQueueName(
            f"invalid queue name {name!r}: use 1-100 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def function_path(func: Callable[..., Any] | str) -> str:
    """The import path ("pkg.module:qualname") a worker uses to find ``func``."""
    if isinstance(func, str):
        return _checked_path(func)
    if not callable(func):
        raise InvalidFunction(f"{func!r} is neither a callable nor an import path")
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if inspect.ismethod(func) or qualname is None or module is None:
        raise InvalidFunction(
            f"{func!r} cannot be stored as an import path; pass a module-level function or 'pkg.module:function'"
        )
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise InvalidFunction(f"{module}.{qualname} is a lambda or nested function; workers cannot import it")
    if module == "__main__":
        raise InvalidFunction(
            f"{qualname} is defined in __main__, which a worker cannot import; move it into a module"
        )
    return f"{module}:{qualname}"


@functools.lru_cache(maxsize=1024)
def _checked_path(func: str) -> str:
    path = func if ":" in func else _dotted_to_colon(func)
    if not _PATH_RE.fullmatch(path):
        raise InvalidFunction(f"invalid function path {func!r}: expected 'package.module:function'")
    return path


def _dotted_to_colon(path: str) -> str:
    module, _, attr = path.rpartition(".")
    return f"{module}:{attr}" if module else path


def check_module_names(names: Iterable[Any], what: str = "allow_modules") -> tuple[str, ...]:
    """Module names for an allow-list ("myapp", "myapp.tasks")."""
    if isinstance(names, str):
        raise InvalidArgument(f"{what} must be a list of module names, not the string {names!r}")
    out = tuple(names)
    for name in out:
        if not isinstance(name, str) or not _MODULE_RE.fullmatch(name):
            raise InvalidArgument(f"{what}: {name!r} is not a module name (expected e.g. 'myapp' or 'myapp.tasks')")
    return out


def _allowed(module: str, allow_modules: tuple[str, ...]) -> bool:
    if allow_modules:
        return any(module == m or module.startswith(m + ".") for m in allow_modules)
    return module.partition(".")[0] not in _STDLIB


def _refused(path: str, module: str, allow_modules: tuple[str, ...], how: str = "module {}") -> ForbiddenFunction:
    if allow_modules:
        why = f"is not among this worker's allowed modules ({', '.join(allow_modules)})"
        fix = f"start the worker with --allow-module {module} to run it"
    else:
        why = "is in the Python standard library (not run by default)"
        fix = (f"start the worker with --allow-module {module.partition('.')[0]} to run it (plus --allow-module "
               "for each of your own packages: with an allow-list a worker runs only what it names)")
    return ForbiddenFunction(f"job target {path!r} refused: {how.format(module)} {why}; {fix}")


def check_target(path: str, allow_modules: tuple[str, ...] = ()) -> None:
    """May a worker import and run ``path``? Decided on the name alone, before any import
    (importing a module runs its code). Without an allow-list: anything but the standard
    library and builtins; with one: only those modules and their submodules."""
    module = path.partition(":")[0]
    if not _allowed(module, allow_modules):
        raise _refused(path, module, allow_modules)


def _defined_in(obj: Any) -> str | None:
    """The module a function, method or class comes from (None for other callables)."""
    if isinstance(obj, (types.FunctionType, types.MethodType, type)):
        return getattr(obj, "__module__", None)
    if isinstance(obj, types.BuiltinFunctionType):  # os.system, eval, or a method of some object
        owner = getattr(obj, "__self__", None)
        if owner is None or isinstance(owner, types.ModuleType):
            return getattr(obj, "__module__", None) or getattr(owner, "__name__", None)
        return type(owner).__module__
    if isinstance(obj, (types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType)):
        return type(getattr(obj, "__self__", None) or getattr(obj, "__objclass__", object)).__module__
    return None


def _check_reached(path: str, obj: Any, allow_modules: tuple[str, ...]) -> None:
    """An allowed module can still lead elsewhere: ``somepkg:check_output`` may be
    subprocess's function, imported there. What a path reaches must be allowed as well,
    unless both ends are the standard library (os:system is posix.system), which an
    allow-list has then named on purpose."""
    named = path.partition(":")[0]
    origin = _defined_in(obj)
    if origin is None or origin == named or _allowed(origin, allow_modules):
        return
    if named.partition(".")[0] in _STDLIB and origin.partition(".")[0] in _STDLIB:
        return
    name = getattr(obj, "__qualname__", "?")
    raise _refused(path, origin, allow_modules, f"it is {{0}}.{name}, imported there, and {{0}}")


def import_function(path: str, allow_modules: tuple[str, ...] = ()) -> Callable[..., Any]:
    """Resolve "pkg.module:qualname" if this worker may run it (see :func:`check_target`).
    Raises InvalidFunction (ForbiddenFunction when refused) with a reason a human can act on."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise InvalidFunction(f"cannot import {path!r}: expected 'package.module:function'")
    check_target(path, allow_modules)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise InvalidFunction(f"cannot import {path!r}: {type(exc).__name__}: {exc}") from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidFunction(f"cannot import {path!r}: module {module_name!r} has no attribute {qualname!r}") from None
        if isinstance(obj, types.ModuleType) and not _allowed(obj.__name__, allow_modules):
            raise _refused(path, obj.__name__, allow_modules, "it leads into module {}, which")
    if not callable(obj):
        raise InvalidFunction(f"cannot import {path!r}: it is a {type(obj).__name__}, not a callable")
    _check_reached(path, obj, allow_modules)
    func: Callable[..., Any] = obj
    return func


def check_allow_pickle(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"allow_pickle must be True or False, got {value!r}")
    return value


def check_ttl(name: str, value: Any, *, allow_zero: bool = True) -> int:
    """TTLs are whole seconds: >0 keeps that long, 0 deletes at once, -1 keeps forever."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer number of seconds, got {value!r}")
    if value < -1 or (value == 0 and not allow_zero):
        raise InvalidArgument(f"{name}={value} is out of range: use seconds > 0, 0 to delete at once, or -1 to keep forever")
    return value


def check_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgument(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def check_replicas(min_replicas: Any, timeout: Any) -> tuple[int, float]:
    """Queue(min_replicas=, replica_timeout=): how many replicas must confirm an enqueue, within what."""
    if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 0:
        raise InvalidArgument(f"min_replicas must be an integer >= 0, got {min_replicas!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidArgument(f"replica_timeout must be seconds > 0, got {timeout!r}")
    return min_replicas, float(timeout)


def check_args(args: Any) -> tuple[Any, ...]:
    """The positional arguments as a tuple. Only a tuple or list: any other iterable would be
    spread silently, and the string 'abc' would become the three arguments 'a', 'b', 'c'."""
    if isinstance(args, tuple):
        return args
    if isinstance(args, list):
        return tuple(args)
    hint = f" (one argument: args=({args!r},))" if isinstance(args, (str, bytes)) else ""
    raise InvalidArgument(f"args must be a tuple or list of the function's arguments, "
                          f"got {type(args).__name__} {args!r:.60}{hint}")


def check_kwargs(kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise InvalidArgument(f"kwargs must be a dict of keyword arguments, got {type(kwargs).__name__} {kwargs!r:.60}")
    return dict(kwargs)


def _local_function(func: Callable[..., Any] | str) -> Callable[..., Any] | None:
    """The function itself when this process has it without importing anything: enqueueing
    must not run a module's import-time code (or pay for a failed import) just to check."""
    if not isinstance(func, str):
        return func
    module_name, _, qualname = (func if ":" in func else _dotted_to_colon(func)).partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if callable(obj) else None


@functools.lru_cache(maxsize=512)
def _keywords(func: Callable[..., Any]) -> tuple[frozenset[str], bool] | None:
    """(names accepted by keyword, whether it takes **kwargs); None when there is no signature."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None
    names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_keywords(func: Callable[..., Any] | str, kwargs: dict[str, Any], options: Iterable[str] = ()) -> None:
    """Refuse, at enqueue, a keyword the function cannot take: the worker would only fail the
    job with a TypeError later, and a misspelt enqueue option (timout=5) would go unnoticed.
    No check when the function is not at hand here (a path to a module this process has not
    imported) or takes **kwargs."""
    target = _local_function(func)
    if target is None:
        return
    try:
        accepted = _keywords(target)
    except TypeError:  # unhashable callable: not worth a signature without the cache
        return
    if accepted is None or accepted[1]:
        return
    for name in kwargs:
        if name in accepted[0]:
            continue
        option = difflib.get_close_matches(name, list(options), n=1)
        param = difflib.get_close_matches(name, sorted(accepted[0]), n=1)
        hint = (f" (did you mean {option[0]}= as an enqueue option?)" if option
                else f" (did you mean {param[0]}=?)" if param else "")
        label = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
        raise InvalidArgument(f"{label}() got an unexpected keyword argument {name!r}{hint}")


def delay_due(delay: float | dt.timedelta) -> float:
    """When a job enqueued ``delay`` from now is due (seconds since the epoch)."""
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise InvalidArgument(f"delay must be seconds >= 0 or a timedelta, got {delay!r}")
    return time.time() + seconds


def when_due(when: dt.datetime) -> float:
    if not isinstance(when, dt.datetime):
        raise InvalidArgument(f"enqueue_at takes a datetime, got {type(when).__name__}")
    return when.timestamp()
