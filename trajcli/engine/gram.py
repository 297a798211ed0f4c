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

from trajcli.io.inventory import Inventory, TensorSpec

DEFAULT_MEMORY_BUDGET = 512 * 1024 * 1024


@dataclass
class GramSet:
    """Per-tensor basis Grams of one trajectory: everything later analyses need, N × N each."""

    labels: list[str]  # checkpoint names in training order
    basis: dict[str, np.ndarray] = field(default_factory=dict)  # tensor -> (N, N) float64
    n_params: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, dict[int, int]] = field(default_factory=dict)  # tensor -> {ckpt_idx: count}

    @property
    def n_checkpoints(self) -> int:
        return len(self.labels)

    def group(self, tensors: list[str]) -> tuple[np.ndarray, set[int]]:
        """The basis Gram of a group (the sum of its tensors') and the checkpoints with bad values."""
        total = np.zeros((self.n_checkpoints, self.n_checkpoints))
        bad: set[int] = set()
        for name in tensors:
            total += self.basis[name]
            bad.update(self.nonfinite.get(name, {}))
        return total, bad


def chunk_elems_for(n_checkpoints: int, memory_budget_bytes: int) -> int:
    """Elements per checkpoint in one chunk: the (N, chunk) float64 buffer is half the budget, the
    rest covers the per-checkpoint read that is converted into it and the products."""
    return max(1, memory_budget_bytes // (2 * 8 * n_checkpoints))


def accumulate(
    inv: Inventory,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    on_bytes: Callable[[int], None] | None = None,
) -> GramSet:
    """Read every analysed tensor once, in row chunks, and return the per-tensor basis Grams."""
    n = len(inv.checkpoints)
    chunk_elems = chunk_elems_for(n, memory_budget_bytes)
    widest_row = max(t.numel // max(t.n_rows, 1) for t in inv.tensors)
    buffer = np.empty(n * max(chunk_elems, widest_row))
    grams = GramSet([c.name for c in inv.checkpoints])
    for spec in inv.tensors:
        grams.basis[spec.name] = _tensor_gram(inv, spec, buffer, chunk_elems, grams, on_bytes)
        grams.n_params[spec.name] = spec.numel
    return grams


def _tensor_gram(inv: Inventory, spec: TensorSpec, buffer: np.ndarray, chunk_elems: int,
                 grams: GramSet, on_bytes: Callable[[int], None] | None) -> np.ndarray:
    n = len(inv.readers)
    row_elems = spec.numel // spec.n_rows
    rows_per_chunk = max(1, chunk_elems // row_elems)
    gram = np.zeros((n, n))
    for row_start in range(0, spec.n_rows, rows_per_chunk):
        row_stop = min(spec.n_rows, row_start + rows_per_chunk)
        m = (row_stop - row_start) * row_elems
        x = buffer[: n * m].reshape(n, m)  # (n_ckpt, chunk_elems), contiguous
        _read_chunk(inv, spec, row_start, row_stop, x, on_bytes)
        _difference_in_place(x)
        part = x @ x.T  # numpy computes A @ A.T as a symmetric rank-k update
        if not np.isfinite(np.diagonal(part)).all():
            # A NaN/Inf in any checkpoint shows on the diagonal. Rare: read the chunk again, zero the
            # bad values and remember which checkpoints had them, so the other entries stay exact.
            _read_chunk(inv, spec, row_start, row_stop, x, None)
            bad_counts = grams.nonfinite.setdefault(spec.name, {})
            for k in range(n):
                bad = ~np.isfinite(x[k])
                count = int(bad.sum())
                if count:
                    bad_counts[k] = bad_counts.get(k, 0) + count
                    x[k][bad] = 0.0
            _difference_in_place(x)
            part = x @ x.T
        gram += part
    return gram


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
