"""The single streaming pass: every tensor, in row chunks, from all N checkpoints at once.

For each tensor the pass accumulates one float64 *basis Gram* G_B = B Bᵀ where the rows of B are
    b_0 = θ_0,   b_k = θ_k − θ_{k−1}  (k = 1 … N−1).
Every measure trajcli reports is a linear function of these vectors — θ_k = b_0 + Σ_{j≤k} b_j,
θ_k − θ_r = ±Σ b_j over the steps between them, updates are b_k themselves — so the raw, displacement
and update Grams all follow from G_B by small N × N products (trajcli.metrics.trajectory), while the
differences that would cancel catastrophically are formed on each chunk before any product. One
product per chunk serves all three modes, any reference and any grouping of tensors (Grams add).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trajcli.engine.journal import PassJournal, kept_on_failure
from trajcli.errors import UsageError
from trajcli.io.inventory import Inventory
from trajcli.metrics import trajectory as tm
from trajcli.types import Segment, TensorSpec, whole_segment

DEFAULT_MEMORY_BUDGET = 512 * 1024 * 1024
_PARALLEL_MIN_ELEMS = 1 << 15  # below this a chunk is read in the reader thread alone
# Elements per checkpoint in a chunk multiplied on the CPU, whatever the budget allows: a row converted,
# differenced and multiplied while it is still in the core's cache. On the 2-core machine a pass took
# 20 % less time with this cap than with 256 MiB chunks, at N = 8, 16 and 48 (benchmarks/RESULTS.md).
CPU_CHUNK_ELEMS = 1 << 16


@dataclass
class GramSet:
    """Per-leaf basis Grams of one trajectory: everything later analyses need, N × N each.

    A leaf is a whole tensor, or the part of one that a `Segment` names (a Q/K/V part, a head)."""

    labels: list[str]  # checkpoint names in training order
    basis: dict[str, np.ndarray] = field(default_factory=dict)  # leaf -> (N, N) float64
    n_params: dict[str, int] = field(default_factory=dict)  # leaf -> elements
    tensor_of: dict[str, str] = field(default_factory=dict)  # leaf -> tensor
    nonfinite: dict[str, dict[int, int]] = field(default_factory=dict)  # tensor -> {ckpt_idx: count}

    @property
    def n_checkpoints(self) -> int:
        return len(self.labels)

    def group(self, leaves: list[str]) -> tuple[np.ndarray, set[int]]:
        """The basis Gram of a group (the sum of its leaves') and the checkpoints with bad values."""
        total = np.zeros((self.n_checkpoints, self.n_checkpoints))
        bad: set[int] = set()
        for leaf in leaves:
            total += self.basis[leaf]
            bad.update(self.nonfinite.get(self.tensor_of[leaf], {}))
        return total, bad

    def whole(self) -> tuple[np.ndarray, set[int]]:
        """The basis Gram of every analysed parameter together."""
        return self.group(list(self.basis))


def chunk_elems_for(n_checkpoints: int, memory_budget_bytes: int) -> int:
    """Elements per checkpoint in one chunk. Up to two (N, chunk) float64 buffers (one being read
    while the other is multiplied) take half the budget; the rest covers reads and products."""
    return max(1, memory_budget_bytes // (4 * 8 * n_checkpoints))


@dataclass(frozen=True)
class Chunk:
    """Elements [start, stop) of a tensor flattened in storage order: whole rows (along the first
    axis), or — where one row is wider than a chunk (fused MoE experts) — a piece of one row."""

    spec: TensorSpec
    segment: Segment
    start: int
    stop: int

    @property
    def row_elems(self) -> int:
        return self.spec.numel // self.spec.n_rows

    @property
    def n_elems(self) -> int:
        return self.stop - self.start

    @property
    def last(self) -> bool:
        """Whether this is the tensor's last chunk."""
        return self.stop == self.spec.numel


def plan_chunks(inv: Inventory, segments: dict[str, Segment], chunk_elems: int, skip=()) -> list[Chunk]:
    """Chunks of every analysed tensor but those in `skip`, in order, none over `chunk_elems`
    elements; a tensor's are consecutive."""
    chunks = []
    for spec in inv.tensors:
        if spec.name in skip:
            continue
        segment = segments.get(spec.name) or whole_segment(spec)
        row_elems = spec.numel // spec.n_rows
        if row_elems <= chunk_elems:
            rows_per_chunk = chunk_elems // row_elems
            for row in range(0, spec.n_rows, rows_per_chunk):
                chunks.append(Chunk(spec, segment, row * row_elems, min(spec.n_rows, row + rows_per_chunk) * row_elems))
            continue
        for row_start in range(0, spec.numel, row_elems):  # pieces of each row: no chunk spans two rows
            for start in range(row_start, row_start + row_elems, chunk_elems):
                chunks.append(Chunk(spec, segment, start, min(row_start + row_elems, start + chunk_elems)))
    return chunks


def default_read_threads() -> int:
    """0 (read in the main thread, no overlap) on machines with two cores or fewer, where overlapping
    measured slower, warm or cold cache (memory bandwidth, not latency, bounds the pass there); else 2.
    `--read-threads` (PassOptions.read_threads) chooses otherwise."""
    return 0 if (os.cpu_count() or 1) <= 2 else 2


def _chunk_stream(inv: Inventory, chunks: list[Chunk], n: int, capacity: int, read_threads: int) -> Iterator:
    """(chunk, differenced rows) in order. With read_threads > 0 a background thread prepares the next
    chunk in a second buffer (its checkpoints read by `read_threads` threads) while the caller
    multiplies the current one; with 0 everything happens here, in one buffer."""

    def prepare(chunk: Chunk, buffer: np.ndarray, readers) -> np.ndarray:
        x = buffer[: n * chunk.n_elems].reshape(n, chunk.n_elems)  # (n_ckpt, chunk_elems), contiguous
        read_chunk(inv.readers, chunk, x, readers)
        difference_in_place(x)
        return x

    if read_threads <= 0:
        buffer = np.empty(n * capacity)
        for chunk in chunks:
            yield chunk, prepare(chunk, buffer, None)
        return
    buffers = [np.empty(n * capacity), np.empty(n * capacity)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trajcli-chunk") as pool, \
            ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="trajcli-read") as readers:
        pending = pool.submit(prepare, chunks[0], buffers[0], readers) if chunks else None
        for i, chunk in enumerate(chunks):
            x = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(prepare, chunks[i + 1], buffers[(i + 1) % 2], readers)
            yield chunk, x


def accumulate(
    inv: Inventory,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    on_bytes: Callable[[int], None] | None = None,
    segments: dict[str, Segment] | None = None,
    device: str = "cpu",
    read_threads: int | None = None,
    journal: PassJournal | None = None,
) -> GramSet:
    """Read every analysed tensor once, in row chunks, and return the per-leaf basis Grams.

    Products run with numpy's BLAS on the CPU, or with torch on `device`; reading overlaps them when
    `read_threads` > 0 (default: `default_read_threads()`). With a `journal`, the tensors it holds
    are not read again, and each tensor finished is handed to it."""
    n = len(inv.checkpoints)
    segments = segments or {}
    grams = GramSet([c.name for c in inv.checkpoints])
    sums = resume_from(journal, grams)
    products = _products_for(device)
    chunk_elems = chunk_elems_for(n, memory_budget_bytes)
    if isinstance(products, NumpyProducts):
        chunk_elems = min(chunk_elems, CPU_CHUNK_ELEMS)
    chunks = plan_chunks(inv, segments, chunk_elems, skip=journal.done if journal else ())
    capacity = max((c.n_elems for c in chunks), default=1)
    threads = default_read_threads() if read_threads is None else read_threads
    with kept_on_failure(journal):
        for chunk, x in _chunk_stream(inv, chunks, n, capacity, threads):
            parts = products(x, chunk)
            if not products.finite(parts):
                parts = products_without_nonfinite(inv.readers, chunk, x, products, grams)
            add_parts(sums, parts)
            if journal is not None and chunk.last:
                tensor_finished(journal, chunk, sums, grams, products.to_numpy)
            if on_bytes is not None:
                on_bytes(chunk_bytes(inv, chunk))
    return finish_gramset(grams, inv, segments, sums, products.to_numpy)


def resume_from(journal: PassJournal | None, grams: GramSet) -> dict:
    """The leaf sums (and NaN/Inf counts, into `grams`) of the tensors an earlier pass finished."""
    sums: dict[str, object] = {}
    for tensor, (leaves, nonfinite) in (journal.done.items() if journal else ()):
        sums.update(leaves)
        if nonfinite:
            grams.nonfinite[tensor] = dict(nonfinite)
    return sums


def tensor_finished(journal: PassJournal, chunk: Chunk, sums: dict, grams: GramSet, to_numpy) -> None:
    """Hand the journal the Grams of the tensor whose last chunk `chunk` was."""
    leaves = dict.fromkeys(leaf for _, _, leaf in chunk.segment.ranges)
    journal.finished(chunk.spec.name, {leaf: sums[leaf] for leaf in leaves}, grams.nonfinite.get(chunk.spec.name, {}),
                     to_numpy)


def add_parts(sums: dict, parts: dict) -> None:
    """Add each leaf's partial basis Gram to its running sum (numpy arrays or torch tensors)."""
    for leaf, part in parts.items():
        sums[leaf] = sums[leaf] + part if leaf in sums else part


def chunk_bytes(inv: Inventory, chunk: Chunk) -> int:
    """The stored bytes one chunk reads, from every checkpoint (for the progress bar)."""
    return sum(chunk.n_elems * itemsize(r.tensors[chunk.spec.name].dtype) for r in inv.readers)


def finish_gramset(grams: GramSet, inv: Inventory, segments: dict[str, Segment], sums: dict, to_numpy) -> GramSet:
    """Fill `grams` from the summed products: one basis Gram, size and tensor per leaf."""
    for spec in inv.tensors:
        segment = segments.get(spec.name) or whole_segment(spec)
        per_index = spec.numel // (spec.shape[segment.axis] if spec.shape else 1)
        for start, stop, leaf in segment.ranges:
            gram = to_numpy(sums[leaf])
            # exactly symmetric, as numpy's symmetric rank-k update makes it (a device's product may
            # differ across the diagonal in the last bit): the upper triangle is the whole Gram
            grams.basis[leaf] = gram if np.array_equal(gram, gram.T) else tm.mirror_upper(np.array(gram))
            grams.tensor_of[leaf] = spec.name
            grams.n_params[leaf] = grams.n_params.get(leaf, 0) + per_index * (stop - start)
    return grams


def products_without_nonfinite(readers: Sequence, chunk: Chunk, x: np.ndarray, products, grams: GramSet) -> dict:
    """A NaN/Inf in any checkpoint shows on a diagonal. Rare: read the chunk again from `readers` (one
    per checkpoint), zero the bad values and remember which checkpoints had them, so every other
    entry stays exact."""
    read_chunk(readers, chunk, x)
    bad_counts = grams.nonfinite.setdefault(chunk.spec.name, {})
    for k in range(x.shape[0]):
        bad = ~np.isfinite(x[k])
        count = int(bad.sum())
        if count:
            bad_counts[k] = bad_counts.get(k, 0) + count
            x[k][bad] = 0.0
    difference_in_place(x)
    return products(x, chunk)


def _leaf_slices(x: np.ndarray, chunk: Chunk):
    """(leaf, the leaf's share of the chunk as an (n_ckpt, elems) array) for each leaf in the chunk."""
    segment = chunk.segment
    if len(segment.ranges) == 1:
        yield segment.ranges[0][2], x
        return
    n, row_elems = x.shape[0], chunk.row_elems
    whole_rows = chunk.start % row_elems == 0 and chunk.n_elems % row_elems == 0
    first_col = chunk.start % row_elems  # a piece of one row: its first column
    for start, stop, leaf in segment.ranges:
        if segment.axis == 0:  # rows: a range of the flat chunk
            lo, hi = max(start * row_elems, chunk.start), min(stop * row_elems, chunk.stop)
            if hi > lo:
                yield leaf, x[:, lo - chunk.start: hi - chunk.start]  # strided rows, no copy
        elif whole_rows:  # columns of a 2-D [rows, cols] tensor (GPT-2's Conv1D): reshape copies them
            yield leaf, x.reshape(n, chunk.n_elems // row_elems, row_elems)[:, :, start:stop].reshape(n, -1)
        else:  # columns within a piece of one row
            lo, hi = max(start, first_col), min(stop, first_col + chunk.n_elems)
            if hi > lo:
                yield leaf, x[:, lo - first_col: hi - first_col]


class NumpyProducts:
    """B Bᵀ per leaf with numpy (A @ A.T runs as a symmetric rank-k update)."""

    def __call__(self, x: np.ndarray, chunk: Chunk) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for leaf, part in _leaf_slices(x, chunk):
            product = part @ part.T
            out[leaf] = out[leaf] + product if leaf in out else product
        return out

    @staticmethod
    def finite(parts: dict) -> bool:
        return all(np.isfinite(np.diagonal(p)).all() for p in parts.values())

    @staticmethod
    def to_numpy(total) -> np.ndarray:
        return total


class _TorchProducts:
    """The same products in float64 on a torch device: the chunk is copied there (while the reader
    thread fills the other buffer) and the sums stay on the device until the end."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def __call__(self, x: np.ndarray, chunk: Chunk) -> dict:
        on_device = self.torch.from_numpy(x).to(self.device)
        out: dict = {}
        for leaf, part in _leaf_slices(on_device, chunk):
            product = part @ part.T
            out[leaf] = out[leaf] + product if leaf in out else product
        return out

    def finite(self, parts: dict) -> bool:
        return all(bool(self.torch.isfinite(self.torch.diagonal(p)).all()) for p in parts.values())

    @staticmethod
    def to_numpy(total) -> np.ndarray:
        return total.cpu().numpy()


def resolve_device(device: str) -> str:
    """`auto` is CUDA when torch sees a device, else the CPU; `cuda` without a device is a usage error.
    torch is imported only where a CUDA device may be there (`cuda_possible`)."""
    if device == "cpu" or (device == "auto" and not cuda_possible()):
        return "cpu"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available", "use --device cpu (or auto)")
    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_possible() -> bool:
    """Whether a CUDA (or ROCm) device may be present, told without importing torch: not with a CPU
    build of torch, nor on Linux without the driver's device nodes, nor on macOS. Elsewhere: maybe."""
    import sys
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False
    if "+cpu" in version or sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(Path(node).exists() for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))
    return True


def _products_for(device: str):
    device = resolve_device(device)
    return NumpyProducts() if device == "cpu" else _TorchProducts(device)


def read_chunk(readers: Sequence, chunk: Chunk, x: np.ndarray, pool: ThreadPoolExecutor | None = None) -> None:
    """The chunk's elements of every checkpoint (`readers`, one per checkpoint, in order) into x
    (n_ckpt, elems); with `pool`, the checkpoints in parallel."""
    def read(k: int) -> None:
        readers[k].read_into(chunk.spec.name, chunk.start, chunk.stop, x[k])

    if pool is None or chunk.n_elems < _PARALLEL_MIN_ELEMS:
        for k in range(len(readers)):
            read(k)
    else:
        for future in [pool.submit(read, k) for k in range(len(readers))]:
            future.result()


def difference_in_place(x: np.ndarray) -> None:
    """Rows θ_0 … θ_{N−1} become the basis b_0 = θ_0, b_k = θ_k − θ_{k−1} (to float64 rounding).
    Last row first, so each subtraction still sees the original previous row. numpy's kernel: torch's
    is quicker on several cores, but importing torch costs more than it saves (benchmarks/RESULTS.md)."""
    for k in range(x.shape[0] - 1, 0, -1):
        np.subtract(x[k], x[k - 1], out=x[k])


def itemsize(dtype: str) -> int:
    """Bytes per stored element of a float dtype name."""
    return {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4)
