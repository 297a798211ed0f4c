"""Trajectory maps and lengths-and-bends measures, as pure functions of a basis Gram (numpy only).

A basis Gram G_B (N × N) holds the inner products of b_0 = θ_0 and b_k = θ_k − θ_{k−1}. A *mode*
picks vectors x = M b (M a small coefficient matrix); their Gram is M G_B Mᵀ, and |M| |G_B| |M|ᵀ
bounds the magnitude of the terms summed, which tells a true zero vector from rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("raw", "displacement", "update")

# A vector whose squared norm is below this fraction of the terms it was summed from is treated as
# zero (an identical checkpoint pair, a frozen group): its direction is undefined.
ZERO_TOLERANCE = 1e-10


def raw_coefficients(n: int) -> np.ndarray:
    """θ_k = b_0 + b_1 + … + b_k."""
    return np.tril(np.ones((n, n)))


def displacement_coefficients(n: int, reference_idx: int, keep_reference: bool = False) -> np.ndarray:
    """θ_k − θ_r = Σ_{r<j≤k} b_j (k > r), −Σ_{k<j≤r} b_j (k < r); row r is zero when kept. That is
    row k of the raw coefficients less row r (entries exactly 0, 1, −1)."""
    raw = raw_coefficients(n)
    coef = raw - raw[reference_idx]
    return coef if keep_reference else np.delete(coef, reference_idx, axis=0)


def update_coefficients(n: int) -> np.ndarray:
    """θ_{k+1} − θ_k = b_{k+1}."""
    return np.eye(n)[1:]


@dataclass
class ModeVectors:
    """The vectors of one mode: their Gram, which are zero, which touch bad checkpoints."""

    gram: np.ndarray  # (n_vec, n_vec)
    zero: np.ndarray  # (n_vec,) bool: no direction
    bad: np.ndarray  # (n_vec,) bool: built from a checkpoint with NaN/Inf values
    members: list[tuple[int, ...]]  # checkpoints each vector is built from


def mode_vectors(basis: np.ndarray, mode: str, reference_idx: int = 0, bad_ckpts: set[int] = frozenset(),
                 keep_reference: bool = False) -> ModeVectors:
    n = basis.shape[0]
    if mode == "raw":
        coef, members = raw_coefficients(n), [(k,) for k in range(n)]
    elif mode == "displacement":
        coef = displacement_coefficients(n, reference_idx, keep_reference)
        members = [(k, reference_idx) for k in range(n) if keep_reference or k != reference_idx]
    elif mode == "update":
        coef, members = update_coefficients(n), [(k, k + 1) for k in range(n - 1)]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    gram = coef @ basis @ coef.T
    bound = np.abs(coef) @ np.abs(basis) @ np.abs(coef).T
    diag = np.diagonal(gram)
    zero = diag <= ZERO_TOLERANCE * np.diagonal(bound)
    bad = np.array([any(k in bad_ckpts for k in m) for m in members], dtype=bool)
    return ModeVectors(gram, zero, bad, members)


def cosine_matrix(vectors: ModeVectors) -> np.ndarray:
    """C_ij = <x_i, x_j> / (|x_i| |x_j|); NaN where a vector is zero or built from bad values."""
    undefined = vectors.zero | vectors.bad
    norms = np.sqrt(np.clip(np.diagonal(vectors.gram), 0.0, None))
    safe = np.where(undefined, 1.0, norms)
    cos = vectors.gram / np.outer(safe, safe)
    cos = np.clip(cos, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)
    cos[undefined, :] = np.nan
    cos[:, undefined] = np.nan
    return cos


def mean_directional_similarity(cos: np.ndarray) -> float | None:
    """ω: the mean of the defined off-diagonal entries; None when there is none."""
    n = cos.shape[0]
    off = cos[~np.eye(n, dtype=bool)]
    off = off[np.isfinite(off)]
    return float(off.mean()) if off.size else None


def degrees(cos: np.ndarray | float) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def spectrum(cos: np.ndarray) -> dict:
    """Eigenvalues of C, the fraction of its trace in the top one, and its effective rank."""
    if not np.isfinite(cos).all():
        return {"eigenvalues": None, "top_fraction": None, "effective_rank": None}
    eig = np.clip(np.linalg.eigvalsh(cos)[::-1], 0.0, None)
    total = eig.sum()
    p = eig / total
    p = p[p > 0]
    return {
        "eigenvalues": eig.tolist(),
        "top_fraction": float(eig[0] / total),
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
    }


def trajectory_pca(basis: np.ndarray, n_components: int = 2) -> dict:
    """Classical MDS of the checkpoints: coordinates on the top principal directions of the centred
    Gram of θ_k − θ_0 (translation-free, so no raw Gram is subtracted), with explained variance."""
    n = basis.shape[0]
    coef = displacement_coefficients(n, 0, keep_reference=True)
    gram = coef @ basis @ coef.T
    centre = np.eye(n) - np.full((n, n), 1.0 / n)
    centred = centre @ gram @ centre
    eig, vec = np.linalg.eigh((centred + centred.T) / 2)
    order = np.argsort(eig)[::-1]
    eig, vec = eig[order], vec[:, order]
    positive = np.clip(eig, 0.0, None)
    total = positive.sum()
    k = min(n_components, n)
    coords = vec[:, :k] * np.sqrt(positive[:k])
    # Deterministic signs: the last checkpoint lies on the positive side of each axis.
    signs = np.where(coords[-1] < 0, -1.0, 1.0)
    coords = coords * signs
    return {
        "coords": coords.tolist(),
        "explained_variance_ratio": (positive[:k] / total).tolist() if total > 0 else [None] * k,
    }


def _nan_to_none(values) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=float).ravel()]


def lengths_and_bends(basis: np.ndarray, reference_idx: int = 0, bad_ckpts: set[int] = frozenset()) -> dict:
    """Norms, distances, angles, path length, straightness, turning angles, cone apex (METRICS.md)."""
    n = basis.shape[0]
    raw = mode_vectors(basis, "raw", bad_ckpts=bad_ckpts)
    disp = mode_vectors(basis, "displacement", reference_idx, bad_ckpts, keep_reference=True)
    upd = mode_vectors(basis, "update", bad_ckpts=bad_ckpts)
    raw_cos, upd_cos = cosine_matrix(raw), cosine_matrix(upd)
    disp_excl = mode_vectors(basis, "displacement", reference_idx, bad_ckpts)

    def norms(v: ModeVectors) -> np.ndarray:
        out = np.sqrt(np.clip(np.diagonal(v.gram), 0.0, None))
        out[v.zero] = 0.0
        out[v.bad] = np.nan
        return out

    update_norms = norms(upd)
    path_length = float(update_norms.sum())
    ones = np.ones(n - 1)
    end_to_end2 = float(ones @ basis[1:, 1:] @ ones)
    end_to_end = np.sqrt(max(end_to_end2, 0.0)) if not ({0, n - 1} & bad_ckpts) else np.nan
    straightness = end_to_end / path_length if path_length > 0 and np.isfinite(path_length) else np.nan
    step_angles = [raw_cos[k, k + 1] for k in range(n - 1)]
    turning = [upd_cos[k - 1, k] for k in range(1, n - 1)]
    disp_cos = cosine_matrix(disp_excl)
    off = disp_cos[~np.eye(disp_cos.shape[0], dtype=bool)]
    off = off[np.isfinite(off)]
    return {
        "reference": reference_idx,
        "norm": _nan_to_none(norms(raw)),
        "distance_to_reference": _nan_to_none(norms(disp)),
        "update_norm": _nan_to_none(update_norms),
        "angle_to_reference_deg": _nan_to_none(degrees(raw_cos[reference_idx])),
        "step_angle_deg": _nan_to_none(degrees(np.array(step_angles))),
        "turning_angle_deg": _nan_to_none(degrees(np.array(turning))),
        "path_length": _nan_to_none([path_length])[0],
        "end_to_end_distance": _nan_to_none([end_to_end])[0],
        "straightness": _nan_to_none([straightness])[0],
        "cone_apex_angle_deg": float(degrees(off.min())) if off.size else None,
    }


def matrix_to_json(cos: np.ndarray) -> list[list[float | None]]:
    """Rows of Python floats, None where undefined (converted by numpy: a large run has hundreds of
    N × N maps)."""
    out = cos.astype(object)
    out[~np.isfinite(cos)] = None
    return out.tolist()


def identical_pairs(basis: np.ndarray, bad_ckpts: set[int] = frozenset()) -> list[tuple[int, int]]:
    """Checkpoint pairs (i < j) whose difference θ_j − θ_i is zero.

    ‖θ_j − θ_i‖² = Σ_{i<a,b≤j} G_B[a, b] is summed from the local block only, so rounding stays
    relative to the steps between i and j, never to the whole path (O(N³), no N⁴ mode sweep).
    """
    n = basis.shape[0]
    pairs = []
    for i in range(n - 1):
        block = basis[i + 1:, i + 1:]
        dist2 = np.diagonal(block.cumsum(0).cumsum(1))
        bound = np.diagonal(np.abs(block).cumsum(0).cumsum(1))
        for offset in np.flatnonzero(dist2 <= ZERO_TOLERANCE * bound):
            j = i + 1 + int(offset)
            if i not in bad_ckpts and j not in bad_ckpts:
                pairs.append((i, j))
    return pairs
