"""Where figures are drawn. matplotlib takes about half a second to import and a quarter second per
figure, all of it Python under one GIL; a report draws a dozen figures. So:

    drawing.start()      # before a pass: fork one drawing process, which imports matplotlib while
                         # this process reads (a second process would import it again and slow the pass)
    drawing.run(jobs)    # [(plot_function, args), ...]: that process draws them, with a child it
                         # forks then (sharing its matplotlib), each taking the next job from a counter
    drawing.stop()       # at the end of the command

The jobs are plot functions of `trajcli.report.plots` with their arguments (small: N × N matrices and
result documents, pickled once to the drawing process); each writes its own file. Without `start()`
(a library caller) `run` draws here, with a forked child for four jobs or more. The drawing process
is forked before any thread of the pass exists, never touches torch and ignores Ctrl-C (this process
stops it)."""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

# Fewer jobs than this are drawn by one process: a fork would cost more than it saves.
SPLIT_FROM = 4

_pool: ProcessPoolExecutor | None = None


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _exit_with(parent: int) -> None:
    """Leave when the parent is gone (killed outright: nothing would tell this process otherwise)."""
    import time

    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _ready(parent: int) -> None:
    """Initializer of the drawing process: leave interruption to the parent and end with it, load
    matplotlib (Agg)."""
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_exit_with, args=(parent,), name="trajcli-parent-watch", daemon=True).start()
    from trajcli.report import plots

    plots.prepare()


def start() -> bool:
    """Fork the drawing process now (idempotent); False where processes cannot be forked."""
    global _pool
    if _pool is not None:
        return True
    if not _can_fork():
        return False
    import multiprocessing

    sys.stdout.flush()
    sys.stderr.flush()
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=_ready,
                               initargs=(os.getpid(),))
    pool.submit(int)  # the process is forked on the first submission: now, from this thread
    _pool = pool
    return True


def run(jobs: list[tuple]) -> None:
    """Draw every (function, args) job, in the drawing process when one was started; a failed
    figure raises here."""
    if not jobs:
        return
    if _pool is not None:
        _pool.submit(draw, jobs).result()
    else:
        draw(jobs)


def stop() -> None:
    """Stop the drawing process (it is idle unless a command failed while it drew)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def draw(jobs: list[tuple]) -> None:
    """Draw the jobs in this process and, with SPLIT_FROM jobs or more and two cores, a forked child
    (matplotlib is not thread-safe; a fork shares the data and the imported matplotlib without
    pickling). Each takes the next job number from a counter in shared memory, so a slow figure does
    not leave the other idle. A failed child fails the whole set."""
    if len(jobs) < SPLIT_FROM or not _can_fork() or (os.cpu_count() or 1) < 2:
        for fn, args in jobs:
            fn(*args)
        return
    import multiprocessing
    import traceback

    from trajcli.report import plots

    plots.prepare()  # imported once, before the fork
    taken = multiprocessing.Value("i", 0)  # the next job to draw, shared with the forked child

    def drain() -> None:
        while True:
            with taken.get_lock():
                i = taken.value
                taken.value = i + 1
            if i >= len(jobs):
                return
            fn, args = jobs[i]
            fn(*args)

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: draw, then leave without running the parent's exit handlers
        code = 0
        try:
            drain()
        except BaseException:  # noqa: BLE001 - reported by the parent through the exit status
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    try:
        drain()
    except BaseException:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"a plotting process failed (status {status})")
