"""Settings shared by the command line and the library, with no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PassOptions:
    """How checkpoints are read: the settings every reading command (and `trajcli.open`) shares."""

    memory_budget: str | None = None  # e.g. "256MiB"; None: the default (engine.budget)
    device: str = "auto"  # auto | cpu | cuda
    scheduler: str | None = None  # a Dask scheduler address
    workers: int | None = None  # local Dask worker processes
    recompute: bool = False  # read again even where the output folder holds Grams of these files
    quiet: bool = False  # no progress display
    read_threads: int | None = None  # threads reading ahead of the products; None: engine.gram.default_read_threads()
