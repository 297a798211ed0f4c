"""Where figures are drawn. A command that draws a few figures draws them in its own process when its
files are committed (`run`). `trajcli report` draws a dozen while it computes: it opens a `Drawer`
(two worker processes of the standard library's ProcessPoolExecutor, started before the pass so that
they import matplotlib meanwhile), sends each figure as soon as its analysis is done, and waits for
them when the part's files are committed. The Drawer belongs to the command's flow (a `with` block):
nothing global, nothing left behind."""

from __future__ import annotations

from concurrent.futures import Future

DRAWERS = 2


def run(jobs: list[tuple]) -> None:
    """Draw each (plot function, args) job here; a failing figure raises its exception here."""
    for plot, args in jobs:
        plot(*args)


def _prepare_worker() -> None:
    """A drawing worker: Ctrl-C is the command's to handle (it cancels what is left); matplotlib is
    imported now, while the command reads."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from trajcli.report import plots

    plots._pyplot()


def _ready() -> None:
    """A first job: it makes the pool start its worker (each imports matplotlib as it starts)."""


class Drawer:
    """Figures drawn by worker processes beside the command's own work (see the module's doc)."""

    def __init__(self, workers: int = DRAWERS):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawned, not forked: a fresh interpreter shares no threads or locks with a command that is reading
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_prepare_worker)
        for _ in range(workers):
            self._pool.submit(_ready)

    def submit(self, plot, args: tuple) -> Future:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(plot, *args)
        except BrokenProcessPool:  # a worker died before this figure was sent (killed, out of memory)
            raise _worker_ended() from None

    def __enter__(self) -> Drawer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # on an error: what was not started is cancelled; what is being drawn is waited for, so that no
        # figure is written into a folder after its files were removed
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)


def wait(futures: list[Future], cancel: bool = False) -> None:
    """Until every figure in `futures` is drawn; the first failure raises here. With `cancel`, those
    not yet started are dropped (and the running ones waited for, without their failures)."""
    from concurrent.futures import wait as wait_all
    from concurrent.futures.process import BrokenProcessPool

    if cancel:
        for future in futures:
            future.cancel()
        wait_all(futures)
        return
    try:
        for future in futures:
            future.result()
    except BrokenProcessPool:
        raise _worker_ended() from None


def _worker_ended() -> Exception:
    from trajcli.errors import DataError

    return DataError("a drawing worker ended while drawing the figures (killed, or out of memory); nothing was "
                     "written", "run the command again (saved Grams make it quick)")
