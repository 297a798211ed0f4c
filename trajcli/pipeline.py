"""The flow every command shares: discover -> inventory -> one pass -> Gram set."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from trajcli.engine.gram import GramSet, accumulate, itemsize
from trajcli.engine.journal import PassJournal
from trajcli.engine.store import check_unchanged
from trajcli.errors import UsageError
from trajcli.io.discover import discover_checkpoints
from trajcli.io.inventory import Inventory, Selection, take_inventory
from trajcli.options import PassOptions


def load_inventory(paths: list[str], selection: Selection, min_checkpoints: int = 2) -> Inventory:
    """Discover the checkpoints under `paths` ('-' reads paths from stdin) and take their inventory."""
    stdin_text = sys.stdin.read() if "-" in paths else None
    return take_inventory(discover_checkpoints(paths, stdin_text), selection, min_checkpoints)


PROGRESS_EVERY_S = 10.0  # how often a progress line is written when stderr is not a terminal


def _amount(n: float, unit: str) -> str:
    if unit != "bytes":
        return f"{n:.3g} {unit}"
    for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= size:
            return f"{n / size:.1f} {name}"
    return f"{n:g} B"


class ProgressLines:
    """Progress as plain lines on a stream that is not a terminal (a log file, nohup, a batch job):
    one when the phase starts, one every `every_s` seconds (done/total, percent, rate), one at the end."""

    def __init__(self, what: str, total: int, unit: str, stream, every_s: float = PROGRESS_EVERY_S):
        self.what, self.total, self.unit, self.stream, self.every_s = what, total, unit, stream, every_s
        self.done = 0
        self.start = self.last = time.monotonic()
        self._say(f"{self.what}: {_amount(total, unit)} to go")

    def _say(self, text: str) -> None:
        print(f"trajcli: {text}", file=self.stream, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            done = _amount(self.done, self.unit) if self.unit == "bytes" else f"{self.done}"
            self._say(f"{self.what}: {done} of {_amount(self.total, self.unit)} "
                      f"({100 * self.done / max(self.total, 1):.0f}%), {_amount(rate, self.unit)}/s")

    def close(self) -> None:
        self._say(f"{self.what}: {_amount(self.done, self.unit)} done in {time.monotonic() - self.start:.1f} s")


@contextlib.contextmanager
def progress_bar(total: int, quiet: bool, what: str = "reading", unit: str = "bytes") -> Iterator:
    """Progress on stderr, unless --quiet: a live bar (bytes read and throughput, or items done) on a
    terminal or in a Jupyter notebook, plain lines every few seconds elsewhere (`ProgressLines`);
    yields `advance(n)` or None."""
    if quiet:
        yield None
        return
    if not sys.stderr.isatty() and "ipykernel" not in sys.modules:  # rich draws its bar in Jupyter too
        lines = ProgressLines(what, total, unit, sys.stderr)
        yield lines.advance
        lines.close()
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(), unit)
    with Progress(what, BarColumn(), *counts, TimeRemainingColumn(), console=Console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)


def read_trajectory(inv: Inventory, memory_budget_bytes: int, quiet: bool = False, segments: dict | None = None,
                    device: str = "cpu", scheduler: str | None = None, workers: int | None = None,
                    journal: PassJournal | None = None, read_threads: int | None = None) -> GramSet:
    """The single streaming pass over an inventoried trajectory (tensors cut into leaves by `segments`):
    in this process, or on a Dask cluster (`scheduler` address, or `workers` local processes); with a
    `journal`, the tensors an interrupted pass finished are not read again."""
    grams = _pass(inv, memory_budget_bytes, quiet, segments, device, scheduler, workers, journal, read_threads)
    check_unchanged(inv)  # a file written again or replaced meanwhile: its Grams would mix two files
    return grams


def _pass(inv: Inventory, memory_budget_bytes: int, quiet: bool, segments: dict | None, device: str,
          scheduler: str | None, workers: int | None, journal: PassJournal | None, read_threads: int | None) -> GramSet:
    done = journal.done if journal is not None else {}
    total = sum(
        t.numel * itemsize(r.tensors[t.name].dtype) for t in inv.tensors if t.name not in done for r in inv.readers
    )
    if scheduler is None and workers is None:
        with progress_bar(total, quiet) as on_bytes:
            return accumulate(inv, memory_budget_bytes, on_bytes, segments, device, read_threads, journal=journal)
    from trajcli.engine.distributed import accumulate_distributed, connect

    client = connect(scheduler, workers)
    try:
        with progress_bar(total, quiet) as on_bytes:
            return accumulate_distributed(inv, client, memory_budget_bytes, segments, on_bytes, journal)
    finally:
        cluster = client.cluster if scheduler is None else None
        client.close()
        if cluster is not None:
            cluster.close()


def read_pass(paths, selection: Selection, out: Path | None, options: PassOptions, plan_for=None,
              notify: Callable[[str], None] = lambda message: None, on_out_dir: Callable[[], None] | None = None):
    """Inventory, output folder check, the plan (which needs the inventory), then the single pass —
    or, when `out` holds Grams saved from these very files, no pass at all.

    `plan_for(inv)` returns (segments: how tensors are cut into leaves, anything the caller needs
    later); the result is (inventory, Gram set, output folder or None, that second item). `notify`
    receives the messages a user should see (reuse, resume, a large budget); `on_out_dir` is called
    once the output folder is held, before the pass."""
    _check_pass_options(options)
    budget = _budget(options, notify)
    inv = load_inventory(paths, selection)
    try:
        out_dir, grams, planned = _pass_over(inv, out, options, budget, plan_for, notify, on_out_dir)
    finally:
        inv.close()
    return inv, grams, out_dir, planned


def pass_over(inv: Inventory, options: PassOptions, plan_for=None, notify: Callable[[str], None] = lambda m: None):
    """The single pass over an inventory already taken (its readers open; the caller closes them):
    (Gram set, what `plan_for` returned beside the segments). Nothing saved, nothing reused."""
    _check_pass_options(options)
    _, grams, planned = _pass_over(inv, None, options, _budget(options, notify), plan_for, notify, None)
    return grams, planned


def _check_pass_options(options: PassOptions) -> None:
    if options.scheduler is not None:
        from trajcli.engine.distributed import check_scheduler_address

        check_scheduler_address(options.scheduler)  # before any checkpoint is opened
    if (options.scheduler is not None or options.workers is not None) and options.device == "cuda":
        raise UsageError("--device cuda is for the pass in this process; Dask workers multiply on their CPUs",
                         "drop --device cuda, or --scheduler/--workers")


def _budget(options: PassOptions, notify) -> int:
    from trajcli.engine.budget import available_memory_bytes, parse_budget

    budget = parse_budget(options.memory_budget)
    available = available_memory_bytes()
    if options.memory_budget is not None and available and budget > available // 2:
        notify(f"warning: --memory-budget {options.memory_budget} is more than half of the {available >> 20} MiB "
               "available now")
    return budget


def _pass_over(inv: Inventory, out: Path | None, options: PassOptions, budget: int, plan_for, notify, on_out_dir):
    from trajcli.engine.gram import resolve_device
    from trajcli.engine.journal import kept_on_failure
    from trajcli.engine.store import GRAMS_FILE, load_grams, pass_plan, save_grams
    from trajcli.report import render

    distributed = options.scheduler is not None or options.workers is not None
    out_dir = render.prepare_out(out, inv) if out is not None else None
    if out_dir is not None and on_out_dir is not None:
        on_out_dir()
    segments, planned = plan_for(inv) if plan_for is not None else ({}, None)
    grams = None
    if out_dir is not None and not options.recompute:
        grams = load_grams(out_dir / GRAMS_FILE, inv, segments)
        if grams is not None:
            notify(f"reusing the Grams saved in {out_dir / GRAMS_FILE} (--recompute reads again)")
    if grams is None:
        device = "cpu" if distributed else resolve_device(options.device)
        journal = None
        if out_dir is not None:  # a pass that stops keeps its finished tensors there, for the next
            journal = PassJournal.open(out_dir, pass_plan(inv, segments), fresh=options.recompute)
            if journal.done:
                notify(f"resuming an interrupted pass: {len(journal.done)} of {len(inv.tensors)} tensors were "
                       f"read before (kept in {journal.folder}; --recompute reads them again)")
        try:
            with kept_on_failure(journal):  # stopped while saving too: the whole pass is kept
                grams = read_trajectory(inv, budget, quiet=options.quiet, segments=segments, device=device,
                                        scheduler=options.scheduler, workers=options.workers, journal=journal,
                                        read_threads=options.read_threads)
                if out_dir is not None:
                    save_grams(out_dir / GRAMS_FILE, inv, grams, segments)
        except BaseException:
            if journal is not None and journal.n_kept:
                notify(f"{journal.n_kept} of {len(inv.tensors)} tensors are read and kept in {journal.folder}: "
                       "the same command goes on from there")
            raise
        if journal is not None:
            journal.remove()
    return out_dir, grams, planned
