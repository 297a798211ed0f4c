"""Where figures are drawn. matplotlib takes over half a second to import and a quarter second per
figure, all of it Python under one GIL; a report draws a dozen figures. So:

    drawing.start()          # early (before a pass): fork the drawing process, which imports
                             # matplotlib while this process parses, reads and computes, then forks
                             # a helper (sharing that import: a second import would cost the cores
                             # the pass uses); both wait for jobs
    job = drawing.submit(plot_function, args)
                             # sent at once: drawn while this process goes on (writes the other
                             # files, computes the next analysis)
    drawing.wait([job, ...]) # until those are drawn; a failed figure raises its exception here
    drawing.stop()           # at the end of the command

The jobs are plot functions of `trajcli.report.plots` with their arguments (small: N × N matrices and
result documents, pickled to the drawing processes); each writes its own file. Each drawer takes the
next job from the one job pipe, so a slow figure does not leave the other idle, and answers on a pipe
of its own, so that a drawer which dies is seen (its pipe reads EOF). Without `start()` (a library
caller, or beside Dask workers) `submit` returns None and `run` draws here, with a forked helper for
SPLIT_FROM jobs or more.

The drawing process is forked before any thread of a pass exists and never touches torch. It leads its
own process group (Ctrl-C reaches this process only, which then stops the drawers at once), and they
end by themselves when this process ends, even killed outright: the job pipe then reads EOF."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field

# Fewer jobs than this are drawn by one process when no drawing process was started: a fork would
# cost more than it saves.
SPLIT_FROM = 4
DRAWERS = 2  # the drawing process and its helper

_server = None  # a _Server while a drawing process runs


@dataclass
class _Server:
    process: object  # multiprocessing.Process: the drawing process (the helper is its child)
    jobs: object  # Connection: the send end of the job pipe
    replies: list  # Connection per drawer: (job number, None or (exception, traceback text))
    outbox: object  # queue.SimpleQueue of pickled jobs, written to the job pipe by the `sender` thread
    sender: object  # threading.Thread: a send blocks while both drawers are busy and the pipe is full
    done: dict = field(default_factory=dict)  # job number -> reply, received but not yet waited for
    sent: int = 0  # job numbers handed out


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
    jobs_in, jobs_out = context.Pipe(duplex=False)
    replies = [context.Pipe(duplex=False) for _ in range(DRAWERS)]
    sys.stdout.flush()
    sys.stderr.flush()
    process = context.Process(target=_serve, name="trajcli-draw", daemon=True,
                              args=(jobs_in, [w for _, w in replies], context.Lock(),
                                    [jobs_out] + [r for r, _ in replies]))
    process.start()
    jobs_in.close()
    for _, w in replies:
        w.close()
    import queue
    import threading

    outbox = queue.SimpleQueue()
    sender = threading.Thread(target=_send_all, args=(outbox, jobs_out), name="trajcli-draw-send", daemon=True)
    sender.start()
    _server = _Server(process, jobs_out, [r for r, _ in replies], outbox, sender)
    return True


def _send_all(outbox, jobs) -> None:
    """The sender thread: each pickled job to the job pipe, in order, until None (or the pipe breaks:
    the drawers are gone, which `wait` reports)."""
    while (payload := outbox.get()) is not None:
        try:
            jobs.send_bytes(payload)
        except OSError:
            return


def _serve(jobs, replies, lock, parents_ends) -> None:
    """The drawing process: import matplotlib, fork the helper, then both draw jobs until the job
    pipe closes."""
    for conn in parents_ends:
        conn.close()  # only the parent holds those ends now: its exit (or death) is our EOF
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from trajcli.report import plots

    plots.prepare()
    mine = replies[0]
    for k, reply in enumerate(replies[1:], 1):
        pid = os.fork()
        if pid == 0:  # a helper: draw, then leave without running this process's exit handlers
            try:
                for other in replies[:k]:
                    other.close()
                _drain(jobs, lock, reply)
            finally:
                os._exit(0)
        reply.close()
    _drain(jobs, lock, mine)


def _drain(jobs, lock, reply) -> None:
    import traceback

    while True:
        with lock:  # one reader at a time: a message is read whole
            try:
                number, fn, args = jobs.recv()
            except (EOFError, OSError):
                return
        try:
            fn(*args)
            answer = None
        except BaseException as exc:
            answer = (exc, traceback.format_exc())
        try:
            reply.send((number, answer))
        except (EOFError, OSError):
            return
        except Exception:
            reply.send((number, (RuntimeError(f"{type(answer[0]).__name__}: {answer[0]}"), answer[1])))


def submit(fn, args: tuple) -> int | None:
    """Send one job to the drawing process; its number for `wait`, or None when no drawing process
    runs (the caller then draws it itself, with `run`)."""
    server = _server
    if server is None:
        return None
    from multiprocessing.reduction import ForkingPickler

    number = server.sent
    server.sent += 1
    try:
        _collect(server, block=False)  # the replies so far: their pipes never fill up
        # pickled here and now (the caller may change its documents later), sent by the sender thread
        # (this one goes on while the drawers are busy)
        server.outbox.put(bytes(ForkingPickler.dumps((number, fn, args))))
    except BaseException:
        _failed(server)
    return number


def wait(numbers: list[int]) -> None:
    """Until the given jobs are drawn; a failed one raises its exception here."""
    server = _server
    if not numbers:
        return
    if server is None:
        raise RuntimeError("the drawing process was stopped before its figures were drawn")
    try:
        while any(n not in server.done for n in numbers):
            _collect(server, block=True)
    except BaseException:
        _failed(server)
    answers = [server.done.pop(n) for n in numbers]
    for answer in answers:
        if answer is not None:
            exc, text = answer
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"(raised in the drawing process)\n{text}")
            raise exc


def _collect(server: _Server, block: bool) -> None:
    from multiprocessing.connection import wait as ready

    for conn in ready(server.replies, timeout=None if block else 0):
        number, answer = conn.recv()  # EOFError: that drawer died
        server.done[number] = answer


def _failed(server: _Server) -> None:
    """Stop the drawing at once (an interruption, or a drawer that ended), then raise: the caller
    discards the files it was drawing."""
    exc = sys.exc_info()[1]
    stop()
    if isinstance(exc, (EOFError, OSError)):
        raise RuntimeError(f"the drawing process ended unexpectedly (exit code {server.process.exitcode})") from None
    raise exc


def run(jobs: list[tuple]) -> None:
    """Draw every (function, args) job: in the drawing process when one was started, else here."""
    if _server is None:
        if jobs:
            draw(jobs)
        return
    wait([submit(fn, args) for fn, args in jobs])


def stop() -> None:
    """End the drawing process and its helper, at once (at the end of a command they are idle: its
    figures were waited for)."""
    global _server
    server, _server = _server, None
    if server is None:
        return
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # not yet its own group (just forked): no helper yet
        server.process.kill()
    server.process.join()
    server.outbox.put(None)  # a send still blocked fails now: no drawer holds the pipe's other end
    server.sender.join(timeout=5)
    server.jobs.close()
    for conn in server.replies:
        conn.close()


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
        except BaseException:
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
