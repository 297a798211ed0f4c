"""The `trajcli` entry point: signals first, then the command line (trajcli.cli)."""

from __future__ import annotations

import sys


def main() -> None:
    import gc
    import signal

    from trajcli.errors import Terminated, raise_terminated

    # From the first instant: SIGTERM and Ctrl-C while the modules load end as they do later (exit 130,
    # one line), not with 143 or a KeyboardInterrupt traceback.
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        _run()
    except (KeyboardInterrupt, Terminated):  # before the command's own handling, or a second Ctrl-C
        print("trajcli: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        # The command is over: a Ctrl-C now would only interrupt the exit handlers (Dask's) with an
        # "Exception ignored" traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # What is left is freed with the process. Frozen, the objects of torch, Dask and the run are
        # not traversed by the collections of interpreter shutdown: ~0.3 s of a 3.4 s `similarity` on
        # the 2 GB benchmark (benchmarks/RESULTS.md); exit handlers still run, files are still closed.
        gc.freeze()


def _run() -> None:
    from trajcli.cli import app

    app()
