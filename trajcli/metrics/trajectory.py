"""Trajectory maps and lengths-and-bends measures, as pure functions of a basis Gram (numpy only).

A basis Gram G_B (N × N) holds the inner products of b_0 = θ_0 and b_k = θ_k − θ_{k−1}. A *mode*
picks vectors x = M b (M a small coefficient matrix); their Gram is M G_B Mᵀ, and |M| |G_B| |M|ᵀ
bounds the magnitude of the terms summed, which tells a true zero vector from rounding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

MODES = ("raw", "displacement", "update")

# A vector whose squared norm is below this fraction of the terms it was summed from is treated as
# zero (an identical checkpoint pair, a frozen group): its direction is undefined.
ZERO_TOLERANCE = 1e-10


def _corner_sums(x: np.ndarray) -> np.ndarray:
    """S[p, q] = Σ_{i ≤ p, j ≤ q} x[i, j]."""
    return x.cumsum(0).cumsum(1)


def _diagonal_corner_sums(x: np.ndarray) -> np.ndarray:
    """The diagonal of _corner_sums for a symmetric x: S[p, p] = S[p−1, p−1] + 2 Σ_{j<p} x[p, j] + x[p, p]."""
    below = np.diagonal(x.cumsum(1), -1)  # Σ_{j ≤ p−1} x[p, j], p ≥ 1
    return np.cumsum(np.concatenate([[0.0], 2.0 * below]) + np.diagonal(x))


def interval_gram(basis: np.ndarray, origin: int) -> tuple[np.ndarray, np.ndarray]:
    """Gram of d_k = θ_k − θ_o for every k (o = −1: θ_k itself; row o is zero), and its diagonal's
    rounding bound: the sum of the absolute terms summed into each ‖d_k‖².

    d_k is a run of basis vectors: b_{o+1} + … + b_k for k > o, −(b_{k+1} + … + b_o) for k < o, so
    each block of the Gram (both after o, both before, one each side) is a 2-D running sum of a block
    of G_B, read outward from o: the terms of M G_B Mᵀ for the 0/±1 coefficient rows M, in O(N²)
    instead of two N³ products, and never a difference of raw Grams.
    """
    n = basis.shape[0]
    gram, bound = np.zeros((n, n)), np.zeros(n)
    ahead = slice(origin + 1, n)
    after = basis[ahead, ahead]
    gram[ahead, ahead] = _corner_sums(after)
    bound[ahead] = _diagonal_corner_sums(np.abs(after))
    if origin > 0:
        back = slice(1, origin + 1)  # b_1 … b_o, read from b_o down: [::-1]
        before = basis[back, back][::-1, ::-1]
        gram[:origin, :origin] = _corner_sums(before)[::-1, ::-1]
        gram[:origin, ahead] = -_corner_sums(basis[back, ahead][::-1])[::-1]
        gram[ahead, :origin] = gram[:origin, ahead].T
        bound[:origin] = _diagonal_corner_sums(np.abs(before))[::-1]
    return gram, bound


@dataclass
class ModeVectors:
    """The vectors of one mode: their Gram, which are zero, which touch bad checkpoints."""

    gram: np.ndarray  # (n_vec, n_vec)
    zero: np.ndarray  # (n_vec,) bool: no direction
    bad: np.ndarray  # (n_vec,) bool: built from a checkpoint with NaN/Inf values


def mode_vectors(basis: np.ndarray, mode: str, reference_idx: int = 0, bad_ckpts: set[int] = frozenset(),
                 keep_reference: bool = False) -> ModeVectors:
    n = basis.shape[0]
    is_bad = np.zeros(n, dtype=bool)
    is_bad[list(bad_ckpts)] = True
    if mode == "raw":  # θ_k
        gram, bound = interval_gram(basis, -1)
        bad = is_bad
    elif mode == "displacement":  # θ_k − θ_r
        gram, bound = interval_gram(basis, reference_idx)
        bad = is_bad | is_bad[reference_idx]
        if not keep_reference:
            keep = np.arange(n) != reference_idx
            gram, bound, bad = gram[np.ix_(keep, keep)], bound[keep], bad[keep]
    elif mode == "update":  # θ_{k+1} − θ_k = b_{k+1}
        gram, bound = basis[1:, 1:].copy(), np.abs(np.diagonal(basis)[1:])
        bad = is_bad[:-1] | is_bad[1:]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    zero = np.diagonal(gram) <= ZERO_TOLERANCE * bound
    return ModeVectors(gram, zero, bad)


@functools.lru_cache(maxsize=8)
def _lower(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tril_indices(n, -1)


def mirror_upper(gram: np.ndarray) -> np.ndarray:
    """`gram` made exactly symmetric in place: its strict lower triangle replaced by the upper one."""
    lower = _lower(gram.shape[0])
    gram[lower] = gram.T[lower]
    return gram


def cosine_matrix(vectors: ModeVectors) -> np.ndarray:
    """C_ij = <x_i, x_j> / (|x_i| |x_j|); NaN where a vector is zero or built from bad values. Exactly
    symmetric: the upper triangle, mirrored (sums in another order differ in the last bits)."""
    undefined = vectors.zero | vectors.bad
    gram = mirror_upper(vectors.gram.copy())
    norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
    safe = np.where(undefined, 1.0, norms)
    cos = gram / np.outer(safe, safe)
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
    gram, _ = interval_gram(basis, 0)
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


def finite_or_none(values) -> list:
    """Python floats, None where a value is NaN, ±Inf or None: how the documents hold a series."""
    array = np.asarray(values, dtype=float).ravel()
    out = array.astype(object)
    out[~np.isfinite(array)] = None
    return out.tolist()


def lengths_and_bends(basis: np.ndarray, reference_idx: int = 0, bad_ckpts: set[int] = frozenset()) -> dict:
    """Norms, distances, angles, path length, straightness, turning angles, cone apex (defined in docs/measures.md)."""
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
        "norm": finite_or_none(norms(raw)),
        "distance_to_reference": finite_or_none(norms(disp)),
        "update_norm": finite_or_none(update_norms),
        "angle_to_reference_deg": finite_or_none(degrees(raw_cos[reference_idx])),
        "step_angle_deg": finite_or_none(degrees(np.array(step_angles))),
        "turning_angle_deg": finite_or_none(degrees(np.array(turning))),
        "path_length": finite_or_none([path_length])[0],
        "end_to_end_distance": finite_or_none([end_to_end])[0],
        "straightness": finite_or_none([straightness])[0],
        "cone_apex_angle_deg": float(degrees(off.min())) if off.size else None,
    }


def json_matrix(cos: np.ndarray) -> np.ndarray:
    """A map as its documents hold it: float64, C-contiguous, NaN where undefined. The JSON writer
    (orjson) writes it as rows of numbers and NaN as null, at native speed and without a Python
    object per entry (a long run's documents hold hundreds of N × N maps)."""
    return np.ascontiguousarray(cos, dtype=np.float64)


def pair_distances(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D[i, j] = ‖θ_j − θ_i‖² for every pair i < j (zero on and below the diagonal), and the sum of the
    absolute terms in each, which bounds its rounding.

    D[i, j] = Σ_{i<a,b≤j} G_B[a, b] grows one step at a time, D[i, j] = D[i, j−1] + G_B[j, j] +
    2 Σ_{i<a<j} G_B[a, j], and the inner sums of every i come from one running sum up each column of
    G_B's strict upper triangle: all pairs in O(N²), each summed from the steps between i and j only
    (no difference of longer sums, so rounding stays relative to those steps)."""

    def grow(g: np.ndarray) -> np.ndarray:
        inner = np.zeros_like(g)
        inner[:-1] = np.triu(g, 1)[::-1].cumsum(0)[::-1][1:]  # inner[i, j] = Σ_{i<a<j} g[a, j]
        return np.triu(2.0 * inner + np.diagonal(g), 1).cumsum(1)

    return grow(basis), grow(np.abs(basis))


def identical_pairs(basis: np.ndarray, bad_ckpts: set[int] = frozenset()) -> list[tuple[int, int]]:
    """Checkpoint pairs (i < j) whose difference θ_j − θ_i is zero (see pair_distances)."""
    dist2, bound = pair_distances(basis)
    first, second = np.nonzero(np.triu(dist2 <= ZERO_TOLERANCE * bound, 1))
    return [(i, j) for i, j in zip(first.tolist(), second.tolist()) if i not in bad_ckpts and j not in bad_ckpts]
