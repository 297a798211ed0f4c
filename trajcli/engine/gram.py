"""The single streaming pass: every tensor, in row chunks, from all N checkpoints at once.

For each tensor the pass accumulates one float64 *basis Gram* G_B = B Bᵀ where the rows of B are
    b_0 = θ_0,   b_k = θ_k − θ_{k−1}  (k = 1 … N−1).
Every quantity of METRICS.md is a linear function of these vectors — θ_k = b_0 + Σ_{j≤k} b_j,
θ_k − θ_r = ±Σ b_j over the steps between them, updates are b_k themselves — so the raw, displacement
and update Grams all follow from G_B by small N × N products (trajcli.metrics.trajectory), while the
differences that would cancel catastrophically are formed on each chunk before any product. One
product per chunk serves all three modes, any reference and any grouping of tensors (Grams add).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from trajcli.arch.grouping import Segment
from trajcli.io.inventory import Inventory, TensorSpec

DEFAULT_MEMORY_BUDGET = 512 * 1024 * 1024


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
    """Elements per checkpoint in one chunk: the (N, chunk) float64 buffer is half the budget, the
    rest covers the per-checkpoint read that is converted into it and the products."""
    return max(1, memory_budget_bytes // (2 * 8 * n_checkpoints))


def accumulate(
    inv: Inventory,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    on_bytes: Callable[[int], None] | None = None,
    segments: dict[str, Segment] | None = None,
) -> GramSet:
    """Read every analysed tensor once, in row chunks, and return the per-leaf basis Grams."""
    n = len(inv.checkpoints)
    segments = segments or {}
    chunk_elems = chunk_elems_for(n, memory_budget_bytes)
    widest_row = max(t.numel // max(t.n_rows, 1) for t in inv.tensors)
    buffer = np.empty(n * max(chunk_elems, widest_row))
    grams = GramSet([c.name for c in inv.checkpoints])
    for spec in inv.tensors:
        segment = segments.get(spec.name) or Segment(0, ((0, spec.n_rows, spec.name),))
        for leaf, gram in _tensor_grams(inv, spec, segment, buffer, chunk_elems, grams, on_bytes).items():
            grams.basis[leaf] = gram
            grams.tensor_of[leaf] = spec.name
        for start, stop, leaf in segment.ranges:
            size = spec.numel // (spec.shape[segment.axis] if spec.shape else 1) * (stop - start)
            grams.n_params[leaf] = grams.n_params.get(leaf, 0) + size
    return grams


def _tensor_grams(inv: Inventory, spec: TensorSpec, segment: Segment, buffer: np.ndarray, chunk_elems: int,
                  grams: GramSet, on_bytes: Callable[[int], None] | None) -> dict[str, np.ndarray]:
    n = len(inv.readers)
    row_elems = spec.numel // spec.n_rows
    rows_per_chunk = max(1, chunk_elems // row_elems)
    out = {leaf: np.zeros((n, n)) for _, _, leaf in segment.ranges}
    for row_start in range(0, spec.n_rows, rows_per_chunk):
        row_stop = min(spec.n_rows, row_start + rows_per_chunk)
        m = (row_stop - row_start) * row_elems
        x = buffer[: n * m].reshape(n, m)  # (n_ckpt, chunk_elems), contiguous
        _read_chunk(inv, spec, row_start, row_stop, x, on_bytes)
        _difference_in_place(x)
        parts = _leaf_products(x, segment, row_start, row_stop, row_elems)
        if not all(np.isfinite(np.diagonal(p)).all() for p in parts.values()):
            # A NaN/Inf in any checkpoint shows on a diagonal. Rare: read the chunk again, zero the bad
            # values and remember which checkpoints had them, so the other entries stay exact.
            _read_chunk(inv, spec, row_start, row_stop, x, None)
            bad_counts = grams.nonfinite.setdefault(spec.name, {})
            for k in range(n):
                bad = ~np.isfinite(x[k])
                count = int(bad.sum())
                if count:
                    bad_counts[k] = bad_counts.get(k, 0) + count
                    x[k][bad] = 0.0
            _difference_in_place(x)
            parts = _leaf_products(x, segment, row_start, row_stop, row_elems)
        for leaf, part in parts.items():
            out[leaf] += part
    return out


def _leaf_products(x: np.ndarray, segment: Segment, row_start: int, row_stop: int, row_elems: int) -> dict[str, np.ndarray]:
    """B Bᵀ of each leaf's share of the chunk (numpy computes A @ A.T as a symmetric rank-k update)."""
    if len(segment.ranges) == 1:
        return {segment.ranges[0][2]: x @ x.T}
    n = x.shape[0]
    rows = row_stop - row_start
    products: dict[str, np.ndarray] = {}
    for start, stop, leaf in segment.ranges:
        if segment.axis == 0:
            lo, hi = max(start, row_start) - row_start, min(stop, row_stop) - row_start
            if hi <= lo:
                continue
            part = x[:, lo * row_elems: hi * row_elems]  # strided rows, no copy
        else:  # columns of a 2-D [rows, cols] tensor (GPT-2's Conv1D): a copy
            part = np.ascontiguousarray(x.reshape(n, rows, row_elems)[:, :, start:stop]).reshape(n, -1)
        product = part @ part.T
        products[leaf] = products[leaf] + product if leaf in products else product
    return products


def _read_chunk(inv: Inventory, spec: TensorSpec, row_start: int, row_stop: int, x: np.ndarray,
                on_bytes: Callable[[int], None] | None) -> None:
    for k, reader in enumerate(inv.readers):
        reader.read_into(spec.name, row_start, row_stop, x[k])
        if on_bytes is not None:
            on_bytes(x.shape[1] * itemsize(reader.tensors[spec.name].dtype))


def _difference_in_place(x: np.ndarray) -> None:
    """Rows θ_0 … θ_{N−1} become the basis b_0 = θ_0, b_k = θ_k − θ_{k−1} (to float64 rounding)."""
    for k in range(x.shape[0] - 1, 0, -1):
        np.subtract(x[k], x[k - 1], out=x[k])


def itemsize(dtype: str) -> int:
    """Bytes per stored element of a float dtype name."""
    return {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4)
