"""Work spread over processes (``replay --jobs``, ``replay --vary``), and what every worker process
of voicerelay does first.

:func:`run_in_processes` calls a function on each of a list of items in up to ``jobs`` worker
processes (multiprocessing's "spawn" method: the parent may run threads) and hands each outcome
back in input order, as soon as it and every one before it are known, so a caller can print each
item's output as a block when its turn comes. It is a small pool of its own rather than
``concurrent.futures.ProcessPoolExecutor``, for two things that executor does not do (Python
3.11): a worker that dies fails only the item it was running (the executor breaks the whole pool
and terminates every other worker, failing their items too), and Ctrl-C reaches the items that
are running, which end as they would in one process (a replay writes what finished) instead of
being killed or run to the end.

Signals: a worker ignores SIGINT while it starts, then only notes it, except while a job made
with :func:`run_interruptible` runs, where the first SIGINT (or one noted before) cancels it: the
terminal sends Ctrl-C to the whole process group, and a worker's KeyboardInterrupt would only
print a traceback. On Ctrl-C the parent starts nothing new, sends SIGINT to its workers (every
0.5 s: one still starting up has not heard the first) and waits for them (at most
:data:`INTERRUPT_GRACE_S`, then they are killed); the items that were not started are
:data:`NOT_RUN`. A worker whose parent died without stopping it (SIGKILL) ends
itself within :data:`ORPHAN_CHECK_S`. No worker outlives :func:`run_in_processes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: How often a worker checks that the process that started it is still there.
ORPHAN_CHECK_S = 1.0
#: After Ctrl-C, how long running items may take to end before their workers are killed.
INTERRUPT_GRACE_S = 10.0


def worker_started(parent: int) -> None:
    """A worker process's first act: leave Ctrl-C to its parent (the terminal sends SIGINT to the
    whole process group; the parent stops its workers, and a worker's own KeyboardInterrupt would
    only print a traceback), and end itself if the parent dies without stopping it (SIGKILL)."""
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)  # orphaned: nobody will ever ask this worker for anything again

    threading.Thread(target=watch, name="orphan watch", daemon=True).start()


@dataclasses.dataclass(frozen=True, slots=True)
class Died:
    """The worker process running the item died (a crash, a signal, ``os._exit``)."""

    exitcode: int | None
    interrupted = False  # (see Raised)

    def describe(self) -> str:
        code = self.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"its worker process was killed by {name}"
        return f"its worker process died (exit code {code})"


class _NotRun:
    """The item was never started: Ctrl-C came first."""

    def __repr__(self) -> str:
        return "NOT_RUN"


NOT_RUN: Any = _NotRun()


@dataclasses.dataclass(frozen=True, slots=True)
class Raised:
    """The function raised: ``error`` (what the worker could pickle of it)."""

    error: BaseException

    @property
    def interrupted(self) -> bool:
        """It raised because of Ctrl-C (it was cancelled before it could end as interrupted)."""
        return isinstance(self.error, asyncio.CancelledError | KeyboardInterrupt)

    def describe(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


_interrupted = False


def _note_interrupt(signum: int, frame: Any) -> None:
    global _interrupted
    _interrupted = True


def run_interruptible(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` in a worker of :func:`run_in_processes`, where the first SIGINT
    cancels it (as Ctrl-C does in one process; so does one that came before it started) and later
    ones are ignored. Outside it, a worker only notes a SIGINT."""

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        fired = False

        def interrupt() -> None:
            nonlocal fired
            if not fired:
                fired = True
                task.cancel()

        loop.add_signal_handler(signal.SIGINT, interrupt)
        if _interrupted:
            interrupt()
        try:
            return await coroutine
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, _note_interrupt)

    return asyncio.run(main())


def _serve(conn: Any, parent: int) -> None:
    """A worker: run what the parent sends, one at a time, until it sends None or goes away."""
    worker_started(parent)
    signal.signal(signal.SIGINT, _note_interrupt)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        function, item = job
        try:
            outcome: Any = function(item)
        except BaseException as exc:  # noqa: BLE001 - the parent decides what a failure means
            outcome = Raised(exc)
        try:
            conn.send(outcome)
        except Exception as exc:  # noqa: BLE001 - an outcome that does not pickle
            conn.send(Raised(RuntimeError(f"{type(outcome).__name__} could not be sent back: {exc}")))


class _Worker:
    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe()
        main = threading.current_thread() is threading.main_thread()
        # Ctrl-C ignored while it is spawned: a spawned process keeps an ignored signal ignored
        # through its start-up, so a terminal's Ctrl-C never interrupts it mid-import
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            self.process = context.Process(target=_serve, args=(child, os.getpid()), name="voicerelay worker",
                                           daemon=True)
            self.process.start()
        finally:
            if main and previous is not None:
                signal.signal(signal.SIGINT, previous)
        child.close()

    async def call(self, function: Callable[[Any], Any], item: Any) -> Any:
        """The outcome of ``function(item)`` in this worker; :class:`Died` if the worker died."""
        loop = asyncio.get_running_loop()
        try:
            self.conn.send((function, item))
        except (BrokenPipeError, OSError):
            return await self._died()
        readable = loop.create_future()
        fd = self.conn.fileno()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.shield(readable)
        finally:
            loop.remove_reader(fd)
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return await self._died()

    async def _died(self) -> Died:
        await asyncio.to_thread(self.process.join, 5)
        return Died(self.process.exitcode)

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(self.process.pid, signal.SIGINT)  # type: ignore[arg-type]

    async def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        await asyncio.to_thread(self.process.join, timeout)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, timeout)
        self.conn.close()


async def run_in_processes(function: Callable[[Any], Any], items: Sequence[Any], jobs: int,
                           done: Callable[[int, Any], None] | None = None) -> tuple[list[Any], bool]:
    """Call ``function(item)`` (a module-level function: it is pickled by name) for every item in
    up to ``jobs`` worker processes. Returns (outcomes in input order, interrupted).

    An outcome is what the function returned, :class:`Raised` if it raised, :class:`Died` if its
    worker died (a new worker takes the remaining items), or :data:`NOT_RUN` if Ctrl-C came before
    it started. ``done(index, outcome)`` is called in input order, each as soon as it and every
    item before it have their outcome. Ctrl-C (this task cancelled) ends the items that run as
    the module doc says, and returns with ``interrupted`` True.
    """
    context = multiprocessing.get_context("spawn")
    outcomes: list[Any] = [None] * len(items)
    known = [False] * len(items)
    todo = list(range(len(items)))[::-1]  # popped from the end: input order
    workers: list[_Worker] = []
    reported = 0
    interrupted = False

    def settle(index: int, outcome: Any) -> None:
        nonlocal reported
        outcomes[index], known[index] = outcome, True
        while reported < len(items) and known[reported]:
            if done is not None:
                done(reported, outcomes[reported])
            reported += 1

    async def lane() -> None:
        worker: _Worker | None = None
        try:
            while todo and not interrupted:
                index = todo.pop()
                if worker is None:
                    worker = _Worker(context)
                    workers.append(worker)
                outcome = await worker.call(function, items[index])
                if isinstance(outcome, Died):
                    workers.remove(worker)
                    worker.conn.close()
                    worker = None
                settle(index, outcome)
        finally:
            if worker is not None:
                await worker.stop()
                workers.remove(worker)

    lanes = [asyncio.create_task(lane(), name=f"worker lane {n}") for n in range(max(1, min(jobs, len(items))))]
    try:
        await asyncio.wait(lanes)  # (not gather: Ctrl-C must not cancel the lanes, they end their items)
    except asyncio.CancelledError:
        interrupted = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + INTERRUPT_GRACE_S
        while True:  # again and again: a worker still starting up may not have heard the first one
            for worker in workers:
                worker.interrupt()
            _, running = await asyncio.wait(lanes, timeout=max(0.0, min(0.5, deadline - loop.time())))
            if not running or loop.time() >= deadline:
                break
        if running:
            for worker in workers:
                worker.process.kill()
            await asyncio.wait(running, timeout=10)
        for index in range(len(items)):
            if not known[index]:
                settle(index, NOT_RUN)
    finally:
        for lane_task in lanes:
            if not lane_task.done():
                lane_task.cancel()
    if not interrupted:
        for lane_task in lanes:
            lane_task.result()  # a bug of ours in a lane is raised, not lost
    return outcomes, interrupted


__all__ = ["INTERRUPT_GRACE_S", "NOT_RUN", "ORPHAN_CHECK_S", "Died", "Raised", "run_in_processes",
           "run_interruptible", "worker_started"]
