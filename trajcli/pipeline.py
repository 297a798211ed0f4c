"""The flow every command shares: discover -> inventory -> one pass -> Gram set."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from trajcli.engine.gram import GramSet, accumulate, itemsize
from trajcli.engine.journal import PassJournal
from trajcli.io.discover import discover_checkpoints
from trajcli.io.inventory import Inventory, Selection, take_inventory


def load_inventory(paths: list[str], selection: Selection, min_checkpoints: int = 2) -> Inventory:
    """Discover the checkpoints under `paths` ('-' reads paths from stdin) and take their inventory."""
    stdin_text = sys.stdin.read() if "-" in paths else None
    return take_inventory(discover_checkpoints(paths, stdin_text), selection, min_checkpoints)


@contextlib.contextmanager
def progress_bar(total: int, quiet: bool, what: str = "reading", unit: str = "bytes") -> Iterator:
    """A progress bar on stderr (bytes read and throughput, or items done), only when stderr is a
    terminal and not --quiet; yields `advance(n)` or None."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TimeRemainingColumn,
                               TransferSpeedColumn)

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(), unit)
    with Progress(what, BarColumn(), *counts, TimeRemainingColumn(), console=Console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)


def read_trajectory(inv: Inventory, memory_budget_bytes: int, quiet: bool = False, segments: dict | None = None,
                    device: str = "cpu", scheduler: str | None = None, workers: int | None = None,
                    journal: PassJournal | None = None) -> GramSet:
    """The single streaming pass over an inventoried trajectory (tensors cut into leaves by `segments`):
    in this process, or on a Dask cluster (`scheduler` address, or `workers` local processes); with a
    `journal`, the tensors an interrupted pass finished are not read again."""
    done = journal.done if journal is not None else {}
    total = sum(
        t.numel * itemsize(r.tensors[t.name].dtype) for t in inv.tensors if t.name not in done for r in inv.readers
    )
    if scheduler is None and workers is None:
        with progress_bar(total, quiet) as on_bytes:
            return accumulate(inv, memory_budget_bytes, on_bytes, segments, device, journal=journal)
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
