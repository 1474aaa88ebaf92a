"""An ordered, bounded parallel map over worker processes (for `gptkit prepare`'s tokenisation).

`ordered_map` hands items to a pool of worker processes and yields the results in the order the
items came in, so what the caller writes is the same as with one process. It never holds more
than a few items per worker in flight: `multiprocessing.Pool.imap` would read its whole input
ahead of the workers, which for a corpus bigger than memory is not an option.

Workers are started with "spawn", not "fork": forking a process whose Rust thread pools (those
of the `tokenizers` library) have already run can deadlock the child. Spawned workers import
gptkit afresh, which takes a second or two, so callers use the pool only for inputs big enough
to repay that. As with any spawn pool, a script that calls this must keep its top-level code
under `if __name__ == "__main__":` (the workers import the main module).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

Tag = TypeVar("Tag")
Arg = TypeVar("Arg")
Result = TypeVar("Result")

IN_FLIGHT_PER_WORKER = 2  # one item being worked on, one waiting: workers never idle, memory stays bounded


def cpu_cores() -> int:
    """The CPU cores this process may run on (fewer than os.cpu_count() under taskset or a container's cpuset)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def ordered_map(fn: Callable[[Arg], Result], items: Iterable[tuple[Tag, Arg]], *, workers: int,
                initializer: Callable[..., None], initargs: tuple[Any, ...] = ()) -> Iterator[tuple[Tag, Result]]:
    """(tag, fn(arg)) for each (tag, arg) in `items`, in order, computed by `workers` spawned processes.

    `fn` and `initializer` must be importable module-level functions; tags stay in this process
    (only `arg` is sent to a worker). At most `IN_FLIGHT_PER_WORKER * workers` items are in flight.
    """
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))
    pending: deque[tuple[Tag, Future[Result]]] = deque()
    try:
        for tag, arg in items:
            pending.append((tag, pool.submit(fn, arg)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                oldest_tag, oldest = pending.popleft()
                yield oldest_tag, oldest.result()
        while pending:
            oldest_tag, oldest = pending.popleft()
            yield oldest_tag, oldest.result()
    finally:  # also when the caller stops early (an error, Ctrl-C): drop queued work, let running items end
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(parent: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    # Ctrl-C reaches every process in the terminal's process group; only the parent should act on
    # it (it stops the pool), not print a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    initializer(*initargs)


def _exit_when_orphaned(parent: int, poll_s: float = 0.5) -> None:
    """End this worker once its parent is gone (killed with SIGKILL, say), instead of waiting forever for work.

    `parent` comes from the parent itself: had it died while this worker was starting, asking
    os.getppid() here would already give the new parent (init), and we would never notice.
    """
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)
