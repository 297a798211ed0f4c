"""Where the workers of `--workers N` come from: a fork server (multiprocessing's, which Dask's local
cluster can use) that has imported Dask's worker and trajcli's task code once.

`start()` is called when the local cluster is made: the server is a fresh interpreter that imports
those modules once, and every worker is then forked from it, ready in a fraction of a second. Neither
imports torch for safetensors checkpoints (rows are converted by numpy; see trajcli.io.sources); a
worker that meets a torch file imports it then. The server is a plain single-threaded process (no
inherited thread pools or file descriptors) and ends when this process does.

Kept light: it imports nothing beyond the standard library.
"""

from __future__ import annotations

import os

# What a worker needs: Dask's worker and trajcli's task code (numpy, safetensors). Not torch: a worker
# reads safetensors rows without it, and imports it only for torch files (once per worker, when the
# first task opens one).
PRELOAD = ["distributed", "trajcli.engine.distributed", "trajcli.io.sources"]
_METHOD_ENV = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"


def usable() -> bool:
    """Whether local workers are forked from the server: the platform has fork servers (Linux, macOS)
    and the user has not chosen another start method for Dask's workers."""
    import multiprocessing

    return _METHOD_ENV not in os.environ and "forkserver" in multiprocessing.get_all_start_methods()


def start() -> bool:
    """Start the fork server now, importing PRELOAD (idempotent; returns at once: the imports run in
    the server). False where it is not used."""
    if not usable():
        return False
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
    return True
