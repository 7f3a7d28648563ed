"""``--pool process``: sync jobs in child processes, for hard timeouts and isolation.

Each child runs one job at a time. A job past its timeout gets its child killed
(SIGKILL) and replaced; a child that dies (os._exit, a segfault, the OOM killer)
fails only the job it was running; ``max_jobs_per_child`` recycles children.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import sys
from multiprocessing.connection import Connection

from ..context import JobContext
from .execution import JobTimeout, Outcome, call_path, failure

log = logging.getLogger("conveyor.worker")


def _child_main(conn: Connection, allow_pickle: bool, allow_modules: tuple[str, ...], sys_path: list[str]) -> None:
    # A child imports job functions as the parent would: the forkserver may have started
    # before the worker put the user's folders (--path, the current folder) on sys.path.
    sys.path[:] = sys_path + [p for p in sys.path if p not in sys_path]
    # The parent handles SIGTERM/SIGINT and decides when children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        path, ser, payload, ctx = msg
        # Nothing carries a child's reports to the worker: set_progress raises there (reporting=False).
        job = JobContext(ctx[0], ctx[1], ctx[2], ctx[3], reporting=False) if ctx else None
        conn.send(call_path(path, ser, payload, allow_pickle, job, allow_modules))


class _Child:
    def __init__(self, ctx: multiprocessing.context.ForkServerContext, allow_pickle: bool,
                 allow_modules: tuple[str, ...]) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, args=(child_conn, allow_pickle, allow_modules, list(sys.path)),
                                daemon=True)
        self.proc.start()
        child_conn.close()
        self.jobs = 0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()

    def retire(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=5)
        self.kill()


class ProcessPool:
    def __init__(self, size: int, *, max_jobs_per_child: int = 0, allow_pickle: bool = False,
                 allow_modules: tuple[str, ...] = ()) -> None:
        self.size = size
        self.max_jobs_per_child = max_jobs_per_child
        self.allow_pickle = allow_pickle
        self.allow_modules = allow_modules  # children check targets themselves: they import them
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["conveyor.worker.execution"])
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._all: set[_Child] = set()

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        child = _Child(self._ctx, self.allow_pickle, self.allow_modules)
        self._all.add(child)
        self._idle.put_nowait(child)

    def _replace(self, child: _Child, *, kill: bool) -> None:
        self._all.discard(child)
        child.kill() if kill else child.retire()
        self._spawn()

    async def run(self, path: str, ser: str, payload: bytes | None, timeout: float,
                  ctx: JobContext | None = None) -> Outcome:
        child = await self._idle.get()
        loop = asyncio.get_running_loop()
        try:
            # The context crosses as plain values (its lease-lost event stays here).
            child.conn.send((path, ser, payload, (ctx.id, ctx.execution_id, ctx.queue, ctx.attempt) if ctx else None))
        except OSError:
            self._replace(child, kill=True)
            return failure("WorkerLost", "the child process was gone before the job started")
        readable = loop.create_future()
        fd = child.conn.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await asyncio.wait_for(readable, timeout)
        except TimeoutError:
            self._replace(child, kill=True)
            return failure("JobTimeout", f"the job exceeded its timeout of {timeout:g}s; its child process was killed",
                           cls=JobTimeout)
        except asyncio.CancelledError:
            self._replace(child, kill=True)
            raise
        finally:
            loop.remove_reader(fd)
        try:
            outcome: Outcome = child.conn.recv()
        except (EOFError, OSError):
            child.proc.join()
            code = child.proc.exitcode
            self._replace(child, kill=True)
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            return failure("WorkerLost", f"the child process running the job {how}")
        child.jobs += 1
        if self.max_jobs_per_child and child.jobs >= self.max_jobs_per_child:
            self._replace(child, kill=False)
        else:
            self._idle.put_nowait(child)
        return outcome

    def close(self) -> None:
        for child in list(self._all):
            child.kill()
        self._all.clear()
