"""Where figures are drawn. matplotlib takes about half a second to import and a quarter second per
figure, all of it Python under one GIL; a report draws a dozen figures. So:

    drawing.start()      # early (before a pass): fork one drawing process, which imports matplotlib
                         # while this process parses, reads and computes (a second one would import it
                         # again, on the cores the pass uses)
    drawing.run(jobs)    # [(plot_function, args), ...]: that process draws them, with a helper it forks
                         # then (sharing its matplotlib), each taking the next job from a shared counter
    drawing.stop()       # at the end of the command

The jobs are plot functions of `trajcli.report.plots` with their arguments (small: N × N matrices and
result documents, pickled once to the drawing process); each writes its own file. Without `start()`
(a library caller) `run` draws here, with a forked helper for SPLIT_FROM jobs or more.

The drawing process is forked before any thread of a pass exists and never touches torch. It leads its
own process group (Ctrl-C reaches this process only, which then stops it and its helper at once), and
it ends by itself when this process ends, even killed outright: its end of the pipe then reads EOF."""

from __future__ import annotations

import os
import signal
import sys

# Fewer jobs than this are drawn by one process: a fork would cost more than it saves.
SPLIT_FROM = 4

_server = None  # (multiprocessing.Process, Connection) while a drawing process runs


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def start() -> bool:
    """Fork the drawing process now (idempotent); False where processes cannot be forked."""
    global _server
    if _server is not None:
        return True
    if not _can_fork():
        return False
    import multiprocessing

    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    process = context.Process(target=_serve, args=(theirs, ours), name="trajcli-draw", daemon=True)
    process.start()
    theirs.close()
    _server = (process, ours)
    return True


def _serve(conn, parents_end) -> None:
    """The drawing process: import matplotlib, then draw each list of jobs sent, replying None or
    (exception, traceback text), until the pipe closes."""
    import traceback

    parents_end.close()  # only the parent holds that end now: its exit (or death) is our EOF
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from trajcli.report import plots

    plots.prepare()
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            draw(jobs)
            reply = None
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
            reply = (exc, traceback.format_exc())
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text, then
            conn.send((RuntimeError(f"{type(reply[0]).__name__}: {reply[0]}"), reply[1]))


def run(jobs: list[tuple]) -> None:
    """Draw every (function, args) job, in the drawing process when one was started; a failed
    figure raises its exception here."""
    if not jobs:
        return
    if _server is None:
        draw(jobs)
        return
    process, conn = _server
    try:
        conn.send(jobs)
        reply = conn.recv()
    except (EOFError, OSError):
        stop()
        raise RuntimeError(f"the drawing process ended unexpectedly (exit code {process.exitcode})") from None
    except BaseException:  # interrupted: stop the drawing now, before the caller discards its files
        stop()
        raise
    if reply is not None:
        exc, text = reply
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"(raised in the drawing process)\n{text}")
        raise exc


def stop() -> None:
    """End the drawing process and any helper it forked, at once (at the end of a command it is idle:
    `run` returns only once its figures are drawn)."""
    global _server
    server, _server = _server, None
    if server is None:
        return
    process, conn = server
    conn.close()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.join()


def draw(jobs: list[tuple]) -> None:
    """Draw the jobs in this process and, with SPLIT_FROM jobs or more and two cores, a forked helper
    (matplotlib is not thread-safe; a fork shares the data and the imported matplotlib without
    pickling). Each takes the next job number from a counter in shared memory, so a slow figure does
    not leave the other idle. A failed helper fails the whole set."""
    if len(jobs) < SPLIT_FROM or not _can_fork() or (os.cpu_count() or 1) < 2:
        for fn, args in jobs:
            fn(*args)
        return
    import multiprocessing
    import traceback

    from trajcli.report import plots

    plots.prepare()  # imported once, before the fork
    taken = multiprocessing.Value("i", 0)  # the next job to draw, shared with the forked helper

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
    if pid == 0:  # the helper: draw, then leave without running the parent's exit handlers
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
