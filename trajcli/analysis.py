"""Results of the analyses as plain dicts (the JSON contracts), built from a Gram set."""

from __future__ import annotations

import numpy as np

from trajcli import __version__
from trajcli.engine.gram import GramSet
from trajcli.errors import UsageError
from trajcli.io.inventory import Inventory
from trajcli.metrics import trajectory as tm

SIMILARITY_SCHEMA = "trajcli.similarity/1"


def resolve_reference(labels: list[str], steps: list[int | None], reference: str | None) -> int:
    """The index of `--reference`: a checkpoint name, or a step number; default the first."""
    if reference is None:
        return 0
    if reference in labels:
        return labels.index(reference)
    if reference.isdigit() and steps.count(int(reference)) == 1:
        return steps.index(int(reference))
    shown = ", ".join(labels[:4]) + (" …" if len(labels) > 4 else "")
    raise UsageError(f"--reference {reference!r} names no checkpoint of this trajectory", f"use a name ({shown}) or a step")


def mode_labels(labels: list[str], mode: str, reference_idx: int) -> list[str]:
    if mode == "raw":
        return list(labels)
    if mode == "displacement":
        return [name for k, name in enumerate(labels) if k != reference_idx]
    return [f"{labels[k]}→{labels[k + 1]}" for k in range(len(labels) - 1)]


def checkpoints_json(inv: Inventory) -> list[dict]:
    return [{"name": c.name, "path": str(c.path), "step": c.step, "format": c.format} for c in inv.checkpoints]


def _extreme_pairs(cos: np.ndarray, labels: list[str]) -> tuple[dict | None, dict | None]:
    iu = np.triu_indices(cos.shape[0], k=1)
    values = cos[iu]
    finite = np.isfinite(values)
    if not finite.any():
        return None, None
    idx = np.flatnonzero(finite)
    hi = idx[np.argmax(values[idx])]
    lo = idx[np.argmin(values[idx])]

    def pair(i: int) -> dict:
        a, b = int(iu[0][i]), int(iu[1][i])
        return {"pair": [labels[a], labels[b]], "cosine": float(values[i])}

    return pair(hi), pair(lo)


def group_trajectory(basis: np.ndarray, bad: set[int], mode: str, reference_idx: int, labels: list[str]) -> dict:
    """Trajectory map, MDS and every lengths-and-bends measure of one group."""
    vectors = tm.mode_vectors(basis, mode, reference_idx, bad)
    cos = tm.cosine_matrix(vectors)
    n = cos.shape[0]
    half = n // 2
    most, least = _extreme_pairs(cos, mode_labels(labels, mode, reference_idx))
    return {
        "cos": cos,
        "mds": tm.mean_directional_similarity(cos),
        "mds_early": tm.mean_directional_similarity(cos[: n - half, : n - half]) if n >= 4 else None,
        "mds_late": tm.mean_directional_similarity(cos[half:, half:]) if n >= 4 else None,
        "most_similar": most,
        "least_similar": least,
        "path": tm.lengths_and_bends(basis, reference_idx, bad),
        "spectrum": tm.spectrum(cos),
        "pca": tm.trajectory_pca(basis) if not bad else None,
    }


def similarity_result(inv: Inventory, grams: GramSet, mode: str, reference: str | None) -> tuple[dict, np.ndarray, list[str]]:
    """(the similarity JSON document, the matrix with NaN where undefined, warnings)."""
    labels = grams.labels
    steps = [c.step for c in inv.checkpoints]
    ref_idx = resolve_reference(labels, steps, reference)
    basis, bad = grams.group(list(grams.basis))
    result = group_trajectory(basis, bad, mode, ref_idx, labels)
    cos = result.pop("cos")
    warnings: list[str] = []
    identical = tm.identical_pairs(basis, bad)
    for i, j in identical:
        warnings.append(f"checkpoints {labels[i]} and {labels[j]} are identical: "
                        "their difference has no direction (entries involving it are null)")
    nonfinite = [
        {"checkpoint": labels[k], "tensor": name, "count": count}
        for name, per_ckpt in grams.nonfinite.items() for k, count in sorted(per_ckpt.items())
    ]
    for item in nonfinite:
        warnings.append(f"checkpoint {item['checkpoint']}: tensor {item['tensor']} has {item['count']} NaN/Inf "
                        "value(s); entries involving this checkpoint are null")
    frozen_zero = tm.mode_vectors(basis, "raw", bad_ckpts=bad).zero
    for k in np.flatnonzero(frozen_zero):
        warnings.append(f"checkpoint {labels[k]}: all analysed weights are zero; its raw direction is undefined")
    doc = {
        "schema": SIMILARITY_SCHEMA,
        "trajcli_version": __version__,
        "checkpoints": checkpoints_json(inv),
        "mode": mode,
        "reference": labels[ref_idx] if mode == "displacement" else None,
        "labels": mode_labels(labels, mode, ref_idx),
        "matrix": tm.matrix_to_json(cos),
        "mds": result["mds"],
        "mds_early": result["mds_early"],
        "mds_late": result["mds_late"],
        "n_checkpoints": len(labels),
        "n_params": int(sum(grams.n_params.values())),
        "n_tensors": len(grams.basis),
        "most_similar": result["most_similar"],
        "least_similar": result["least_similar"],
        "path": {**result["path"], "reference": labels[ref_idx]},
        "spectrum": result["spectrum"],
        "pca": result["pca"],
        "identical": [[labels[i], labels[j]] for i, j in identical],
        "nonfinite": nonfinite,
        "left_out": inv.left_out,
        "warnings": warnings,
    }
    return doc, cos, warnings
