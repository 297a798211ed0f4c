"""Typed results of the library API (`trajcli.open`): numpy arrays for computing, the command line's
JSON document for saving. Each result holds the document its command prints with --json
(`to_dict()`), its schema name and version, and the warnings the analysis raised."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _nan_for_none(value) -> float:
    return float("nan") if value is None else float(value)


def _frame(rows: list[dict]):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_frame() needs pandas (pip install pandas); to_dict() needs nothing") from None
    return pd.DataFrame(rows)


@dataclass(frozen=True, eq=False)
class Result:
    """A result document (`document`) and the warnings raised while computing it."""

    document: dict = field(repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def schema(self) -> str:
        """The document's schema and version, e.g. trajcli.similarity/1."""
        return self.document["schema"]

    def to_dict(self) -> dict:
        """The JSON document as plain Python, exactly what the command prints with --json parses to
        (None where undefined, lists for matrices)."""
        return json.loads(self.to_json())

    def to_json(self, path: str | Path | None = None) -> str:
        """The document as strict JSON text (the command's --json output); written to `path` when given."""
        from trajcli.report.writers import dumps_json

        text = dumps_json(self.document)
        if path is not None:
            Path(path).write_text(text)
        return text


@dataclass(frozen=True, eq=False)
class Similarity(Result):
    """The trajectory map of one mode: `matrix` (float64, NaN where undefined), its `labels` (one per
    row: checkpoints, or consecutive pairs in update mode) and its MDS ω (NaN where undefined)."""

    mode: str = "raw"
    matrix: np.ndarray = field(default=None, repr=False)
    labels: list[str] = field(default_factory=list)
    mds: float = float("nan")

    def to_frame(self):
        """The matrix as a labelled DataFrame (needs pandas)."""
        frame = _frame([dict(zip(self.labels, row)) for row in self.matrix])
        frame.index = self.labels
        return frame


@dataclass(frozen=True, eq=False)
class Layers(Result):
    """One trajectory map per group (`matrices`, by group name) and its MDS (`mds`, NaN where undefined)."""

    by: str = "block"
    mode: str = "raw"
    matrices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    mds: dict[str, float] = field(default_factory=dict)

    def to_frame(self):
        """One row per group: name, kind, layer, n_params, mds, path length and straightness (needs pandas)."""
        return _frame([{"name": g["name"], "kind": g["kind"], "layer": g["layer"], "n_params": g["n_params"],
                        "mds": _nan_for_none(g["mds"]), "path_length": _nan_for_none(g["path"]["length"]),
                        "straightness": _nan_for_none(g["path"]["straightness"])} for g in self.document["groups"]])


@dataclass(frozen=True, eq=False)
class QKV(Result):
    """Per attention layer: ω of Q, K and V, their heterogeneity and map distance (see `to_frame`)."""

    mode: str = "displacement"

    def to_frame(self):
        """One row per attention layer: layer, block, depth, ω_q, ω_k, ω_v, heterogeneity, map
        distance (needs pandas)."""
        return _frame([{"layer": e["layer"], "block": e["block"], "depth": e["depth"],
                        **{f"mds_{p}": _nan_for_none(e[p]["mds"]) for p in "qkv"},
                        "heterogeneity": _nan_for_none(e["heterogeneity"]),
                        "map_distance": _nan_for_none(e["map_distance"])} for e in self.document["layers"]])


@dataclass(frozen=True, eq=False)
class Dynamics(Result):
    """Norms, angles, effective learning rates and regime verdicts per group (see `to_frame`)."""

    def to_frame(self):
        """One row per group × checkpoint, as dynamics.csv (needs pandas)."""
        rows = []
        for g in self.document["groups"]:
            n = len(g["norm"])
            for k in range(n):
                interval = k - 1  # interval values sit on the row of the checkpoint that ends them
                rows.append({"group": g["name"], "kind": g["kind"], "step": self.document["steps"][k],
                             "norm": _nan_for_none(g["norm"][k]),
                             "effective_lr": _nan_for_none(g["effective_lr"][k]) if g["effective_lr"] else float("nan"),
                             "angle_deg": _nan_for_none(g["angle_deg"][interval]) if interval >= 0 else float("nan"),
                             "regime": g["regime"]["verdict"]})
        return _frame(rows)


@dataclass(frozen=True, eq=False)
class Comparison(Result):
    """Runs compared: `document` (schema trajcli.compare/1: runs, groups, findings), and the joint raw and
    displacement maps (numpy, None when the runs do not share an architecture)."""

    joint_raw: np.ndarray | None = field(default=None, repr=False)
    joint_displacement: np.ndarray | None = field(default=None, repr=False)

    def to_frame(self):
        """One row per run: name, group, checkpoints, parameters and every compared measure (needs pandas)."""
        from trajcli.comparison import SCALARS

        return _frame([{"name": r["name"], "group": r["group"], "n_checkpoints": r["n_checkpoints"],
                        "n_params": r["n_params"], **{k: _nan_for_none(r[k]) for k in SCALARS}}
                       for r in self.document["runs"]])
