"""The single pass on a Dask cluster: each task reads a few consecutive chunks (row ranges of one or
more tensors) from every checkpoint and returns their small N × N partial Grams; the partial Grams are
summed in float64 here.

Workers open the checkpoints themselves (they must see the same files: checked up front) and keep
them open between tasks. A lost worker's tasks are retried elsewhere by Dask; a failed read fails the
run with the file's name, as in a single process.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable

import numpy as np

from trajcli.engine.gram import (
    CPU_CHUNK_ELEMS,
    DEFAULT_MEMORY_BUDGET,
    Chunk,
    GramSet,
    NumpyProducts,
    add_parts,
    chunk_bytes,
    chunk_elems_for,
    difference_in_place,
    finish_gramset,
    plan_chunks,
    products_without_nonfinite,
    read_chunk,
    resume_from,
    tensor_finished,
)
from trajcli.engine.journal import PassJournal, kept_on_failure
from trajcli.errors import DataError, UsageError
from trajcli.io.discover import Checkpoint
from trajcli.io.inventory import Inventory
from trajcli.types import Segment

# Per worker process: the checkpoints it has opened, keyed by their files' identity (path, size, mtime,
# inode, ctime): a file written again is opened again, never read through an old handle. A worker of a
# long-lived cluster keeps the readers of the last OPEN_TRAJECTORIES trajectories only.
OPEN_TRAJECTORIES = 2
_OPEN: OrderedDict[tuple, list] = OrderedDict()
_BUFFER: list[np.ndarray] = []  # per worker process: the chunk buffer, reused (fresh pages cost a fault each)


def _readers_for(checkpoints: tuple[Checkpoint, ...]) -> list:
    """This worker's open readers of `checkpoints`, in training order."""
    from trajcli.io.sources import file_identity, open_checkpoint

    key = tuple((str(c.path), c.strip_prefixes, tuple(tuple(file_identity(f)) for f in c.files)) for c in checkpoints)
    if key in _OPEN:
        _OPEN.move_to_end(key)
    else:
        _OPEN[key] = [open_checkpoint(c) for c in checkpoints]
        while len(_OPEN) > OPEN_TRAJECTORIES:
            for reader in _OPEN.popitem(last=False)[1]:
                reader.close()
    return _OPEN[key]


def _chunks_task(checkpoints: tuple[Checkpoint, ...], chunks: tuple[Chunk, ...]) -> tuple[dict, dict]:
    """Runs on a worker: (leaf -> partial basis Gram, tensor -> {checkpoint index -> NaN/Inf count})
    over a few chunks, one after the other in one reused buffer."""
    readers = _readers_for(checkpoints)
    n = len(checkpoints)
    products = NumpyProducts()  # A @ A.T as a symmetric rank-k update, as in one process
    scratch = GramSet([c.name for c in checkpoints])
    sums: dict = {}
    for chunk in chunks:
        if not _BUFFER or _BUFFER[0].size < n * chunk.n_elems:
            _BUFFER[:] = [np.empty(n * chunk.n_elems)]
        x = _BUFFER[0][: n * chunk.n_elems].reshape(n, chunk.n_elems)
        read_chunk(readers, chunk, x)
        difference_in_place(x)
        parts = products(x, chunk)
        if not products.finite(parts):
            parts = products_without_nonfinite(readers, chunk, x, products, scratch)
        add_parts(sums, parts)
    return sums, scratch.nonfinite


def _tasks(chunks: list[Chunk], task_elems: int) -> list[tuple[Chunk, ...]]:
    """Consecutive chunks batched up to `task_elems` elements per checkpoint: the many small tensors
    (biases, norms) share tasks instead of paying a scheduler round trip each."""
    tasks: list[list[Chunk]] = []
    size = 0
    for chunk in chunks:
        if not tasks or size + chunk.n_elems > task_elems:
            tasks.append([])
            size = 0
        tasks[-1].append(chunk)
        size += chunk.n_elems
    return [tuple(t) for t in tasks]


def _missing_files(paths: list[str]) -> list[str]:
    """Runs on each worker: the checkpoint files it cannot read."""
    return [p for p in paths if not os.access(p, os.R_OK)]


SCHEDULER_TIMEOUT_S = 20.0  # how long a scheduler has to answer (documented with --scheduler)
_ADDRESS = re.compile(r"(?:(?:tcp|tls)://)?(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def check_scheduler_address(address: str) -> None:
    """A scheduler address as `dask scheduler` prints it: [tcp:// or tls://]host:port."""
    found = _ADDRESS.fullmatch(address)
    if found is None or not 0 < int(found.group(2)) < 65536:
        raise UsageError(f"--scheduler {address!r} is not the address of a Dask scheduler",
                         "give host:port as `dask scheduler` prints it, e.g. tcp://10.0.0.5:8786 "
                         "(or --workers N for a cluster on this machine)")


def connect(scheduler: str | None, n_workers: int | None):
    """A Dask client: to `scheduler`, or to a local cluster of `n_workers` processes on this machine."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("--scheduler/--workers need Dask's distributed scheduler",
                         "pip install 'trajcli[dask]'") from None
    if scheduler is not None:
        check_scheduler_address(scheduler)
        return _client_within(Client, scheduler, SCHEDULER_TIMEOUT_S)
    return _local_client(n_workers)


def _client_within(client_class, address: str, timeout_s: float):
    """A client of the scheduler at `address`, or a DataError once `timeout_s` has passed: a port that
    accepts but speaks no Dask (an HTTP server, the dashboard) would keep Dask's handshake waiting."""
    hint = "check the address (e.g. tcp://host:8786, not the dashboard's port) and that the scheduler is running"
    outcome: dict = {}

    def attempt() -> None:
        try:
            outcome["client"] = client_class(address, timeout=f"{timeout_s}s")
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, name="trajcli-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DataError(f"no Dask scheduler answered at {address} within {timeout_s:g} s", hint)
    if "error" in outcome:
        exc = outcome["error"]
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"cannot connect to a Dask scheduler at {address}: {type(exc).__name__}: {first}", hint)
    return outcome["client"]


_METHOD_KEY = "distributed.worker.multiprocessing-method"


def _local_client(n_workers: int):
    """A client of a local cluster of `n_workers` processes on this machine. Where the platform has a
    fork server (Linux, macOS) and DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD does not choose
    otherwise, the workers are forked from trajcli's (trajcli.engine.forkserver: Dask's worker and
    trajcli's task code imported once), so
    each is ready in a fraction of a second, and no process imports torch for safetensors; else
    Dask's default (spawned workers). A worker Dask restarts later is spawned. One BLAS thread per
    worker (and one torch thread, if it needs torch), as Dask's spawned workers have
    (OMP_NUM_THREADS=1), keeps 2 workers on 2 cores from fighting over them."""
    import dask
    from dask.distributed import Client, LocalCluster

    from trajcli.engine import forkserver

    try:
        import threadpoolctl  # noqa: F401 - limits a worker's BLAS threads (_one_thread_per_worker)
    except ImportError:
        raise UsageError("--workers needs threadpoolctl beside Dask", "pip install 'trajcli[dask]'") from None

    method = "forkserver" if forkserver.start() else dask.config.get(_METHOD_KEY)  # start(): if not yet
    with dask.config.set({_METHOD_KEY: method}):
        # no dashboard; the scheduler's HTTP endpoints on a free loopback port, not on :8787 of every interface
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = Client(cluster)
    client.run(_one_thread_per_worker)
    return client


_LIMITS: list = []  # per worker process: the BLAS limit in force


def _one_thread_per_worker() -> None:
    import threadpoolctl

    # torch is imported by a worker only for what needs it (torch files, rare dtypes): with one thread
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _LIMITS[:] = [threadpoolctl.threadpool_limits(1)]  # numpy's BLAS (OpenBLAS, MKL, ...)


def accumulate_distributed(
    inv: Inventory,
    client,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    segments: dict[str, Segment] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    journal: PassJournal | None = None,
) -> GramSet:
    """The per-leaf basis Grams of `accumulate`, computed by the workers of `client`.

    Tasks are shaped by the memory budget per worker; partial Grams are summed in float64 as they
    arrive (the order differs from a single process only by float64 rounding). With a `journal`, as
    in `accumulate`: its tensors are not read again, and each tensor is handed to it once all its
    chunks have arrived."""
    from dask.distributed import as_completed

    paths = sorted({str(f.resolve()) for c in inv.checkpoints for f in c.files})
    for worker, missing in client.run(_missing_files, paths).items():
        if missing:
            raise DataError(f"Dask worker {worker} cannot read {missing[0]}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                            "the checkpoints must be on a filesystem every worker sees, at the same path")
    n = len(inv.checkpoints)
    segments = segments or {}
    # a worker keeps one chunk buffer (no read-ahead buffer beside it): twice the elements of a chunk
    # of the single-process pass fit the same budget
    task_elems = 2 * chunk_elems_for(n, memory_budget_bytes)
    grams = GramSet([c.name for c in inv.checkpoints])
    sums = resume_from(journal, grams)
    chunks = plan_chunks(inv, segments, min(task_elems, CPU_CHUNK_ELEMS), skip=journal.done if journal else ())
    remaining = Counter(chunk.spec.name for chunk in chunks)  # chunks not yet summed, per tensor
    checkpoints = tuple(inv.checkpoints)
    futures = {client.submit(_chunks_task, checkpoints, task, pure=False, retries=2): task
               for task in _tasks(chunks, task_elems)}
    with kept_on_failure(journal):
        for future in as_completed(futures):
            parts, bad = future.result()
            add_parts(sums, parts)
            for tensor, per_checkpoint in bad.items():
                counts = grams.nonfinite.setdefault(tensor, {})
                for k, c in per_checkpoint.items():
                    counts[k] = counts.get(k, 0) + c
            for chunk in futures[future]:
                remaining[chunk.spec.name] -= 1
                if journal is not None and remaining[chunk.spec.name] == 0:
                    tensor_finished(journal, chunk, sums, grams, lambda total: total)
            if on_bytes is not None:
                on_bytes(sum(chunk_bytes(inv, chunk) for chunk in futures[future]))
    return finish_gramset(grams, inv, segments, sums, lambda total: total)
