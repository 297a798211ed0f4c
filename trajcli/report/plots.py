"""Plots (matplotlib, Agg backend, imported only when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tick_positions(n: int, max_ticks: int = 20) -> list[int]:
    if n <= max_ticks:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_ticks - 1)) for i in range(max_ticks)})


def trajectory_map(path: Path, matrix: np.ndarray, tick_labels: list[str], title: str, fmt: str = "png") -> None:
    """Heatmap of a trajectory map: checkpoints in training order, cosine on a fixed [-1, 1] scale
    (undefined entries grey), a colour bar and the MDS in the title."""
    plt = _pyplot()
    n = matrix.shape[0]
    size = min(9.0, 3.5 + 0.12 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=110)
    cmap = plt.get_cmap("RdBu_r").copy()
    cmap.set_bad("#bbbbbb")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    ticks = _tick_positions(n)
    ax.set_xticks(ticks, [tick_labels[i] for i in ticks], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, [tick_labels[i] for i in ticks], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("checkpoint (step)", fontsize=9)
    ax.set_ylabel("checkpoint (step)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    fig.tight_layout()
    fig.savefig(path, format=fmt)
    plt.close(fig)
