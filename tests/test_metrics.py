"""Lengths and bends, spectrum and trajectory PCA against explicit float64 computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import as_array, explicit_matrix, flatten, random_trajectory, run_json, save_safetensors_dir

from trajcli.metrics import trajectory as tm


def _angle(u, v) -> float:
    return float(np.degrees(np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1))))


@pytest.fixture
def run_folder(tmp_path):
    sds = random_trajectory(6, seed=21, step_scale=0.4)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / f"checkpoint-{10 * k}", sd)
    return tmp_path, np.stack([flatten(sd) for sd in sds]), sds


def test_lengths_and_bends_match_explicit(run_folder):
    folder, x, _ = run_folder
    ref = 2
    doc = run_json(["similarity", folder, "--mode", "displacement", "--reference", "checkpoint-20"])
    path = doc["path"]
    n = len(x)
    updates = np.diff(x, axis=0)
    assert path["reference"] == "checkpoint-20"
    np.testing.assert_allclose(path["norm"], np.linalg.norm(x, axis=1), rtol=1e-12)
    np.testing.assert_allclose(path["distance_to_reference"], np.linalg.norm(x - x[ref], axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(path["update_norm"], np.linalg.norm(updates, axis=1), rtol=1e-12)
    np.testing.assert_allclose(path["angle_to_reference_deg"], [_angle(x[ref], x[k]) for k in range(n)], atol=1e-6)
    np.testing.assert_allclose(path["step_angle_deg"], [_angle(x[k], x[k + 1]) for k in range(n - 1)], atol=1e-9)
    np.testing.assert_allclose(path["turning_angle_deg"], [_angle(updates[k - 1], updates[k]) for k in range(1, n - 1)], atol=1e-9)
    length = np.linalg.norm(updates, axis=1).sum()
    assert path["path_length"] == pytest.approx(length, rel=1e-12)
    assert path["straightness"] == pytest.approx(np.linalg.norm(x[-1] - x[0]) / length, rel=1e-12)
    disp = [x[k] - x[ref] for k in range(n) if k != ref]
    apex = max(_angle(disp[i], disp[j]) for i in range(len(disp)) for j in range(i + 1, len(disp)))
    assert path["cone_apex_angle_deg"] == pytest.approx(apex, abs=1e-9)


def test_spectrum_and_pca_match_explicit(run_folder):
    folder, x, sds = run_folder
    doc = run_json(["similarity", folder])
    cos = explicit_matrix(sds, "raw")
    eig = np.linalg.eigvalsh(cos)[::-1]
    spec = doc["spectrum"]
    np.testing.assert_allclose(spec["eigenvalues"], eig, atol=1e-10)
    assert spec["top_fraction"] == pytest.approx(eig[0] / eig.sum(), rel=1e-10)
    p = eig / eig.sum()
    assert spec["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
    # PCA: the SVD of the explicitly centred N × P matrix.
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = u[:, :2] * s[:2]
    coords *= np.where(coords[-1] < 0, -1.0, 1.0)
    np.testing.assert_allclose(doc["pca"]["coords"], coords, atol=1e-9)
    np.testing.assert_allclose(doc["pca"]["explained_variance_ratio"], (s[:2] ** 2) / (s ** 2).sum(), rtol=1e-10)


def test_mds_is_the_mean_of_off_diagonal_entries_and_windows(run_folder):
    folder, _, sds = run_folder
    doc = run_json(["similarity", folder, "--mode", "update"])
    cos = explicit_matrix(sds, "update")
    n = len(cos)
    off = cos[~np.eye(n, dtype=bool)]
    assert doc["mds"] == pytest.approx(off.mean(), abs=1e-12)
    early = cos[: n - n // 2, : n - n // 2]
    assert doc["mds_early"] == pytest.approx(early[~np.eye(len(early), dtype=bool)].mean(), abs=1e-12)
    hi = np.unravel_index(np.argmax(np.where(np.eye(n, dtype=bool), -np.inf, cos)), cos.shape)
    assert doc["most_similar"]["cosine"] == pytest.approx(cos[hi], abs=1e-12)
    assert doc["labels"][0] == "checkpoint-0→checkpoint-10"


def test_identical_checkpoints_are_reported_and_undefined_entries_null(tmp_path):
    sds = random_trajectory(4, seed=22)
    sds.insert(2, {k: v.clone() for k, v in sds[1].items()})  # a duplicate revision
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / f"step{k}", sd)
    from helpers import run

    result = run(["similarity", tmp_path, "--mode", "update", "--json"])
    assert result.exit_code == 0
    assert "step1 and step2 are identical" in result.stderr
    doc = __import__("json").loads(result.stdout)
    assert doc["identical"] == [["step1", "step2"]]
    m = as_array(doc["matrix"])
    assert np.isnan(m[1]).all() and np.isnan(m[:, 1]).all()  # update step1→step2 has no direction
    expected = explicit_matrix(sds, "update")  # nan row from 0/0, same places
    np.testing.assert_allclose(m[np.isfinite(m)], expected[np.isfinite(m)], atol=1e-12)
    # raw mode: defined (cosine 1 between the two), displacement from step1: step2 undefined
    disp = run_json(["similarity", tmp_path, "--mode", "displacement", "--reference", "step1"])
    assert disp["labels"][1] == "step2" and all(v is None for v in disp["matrix"][1])


def test_identical_pairs_detects_a_return_to_an_earlier_point():
    x = np.random.default_rng(0).normal(size=(5, 30))
    x[3] = x[1]  # A, B, C, B, D
    b = np.concatenate([x[:1], np.diff(x, axis=0)])
    assert tm.identical_pairs(b @ b.T) == [(1, 3)]


def test_frozen_group_is_undefined_not_zero_or_one(tmp_path):
    for k in range(3):
        save_safetensors_dir(tmp_path / f"step{k}", {"frozen": torch.ones(4), "moving": torch.randn(3)})
    doc = run_json(["similarity", tmp_path, "--include", "frozen", "--mode", "displacement"])
    assert all(v is None for row in doc["matrix"] for v in row)
    assert doc["mds"] is None


def _coefficients(n: int, origin: int) -> np.ndarray:
    """Rows of d_k = θ_k − θ_origin over the basis, written out: θ_k = b_0 + … + b_k (origin −1: θ_k)."""
    raw = np.tril(np.ones((n, n)))
    return raw if origin < 0 else raw - raw[origin]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
def test_interval_gram_is_the_coefficient_product_it_replaces(n):
    rng = np.random.default_rng(n)
    for origin in range(-1, n):
        m = _coefficients(n, origin)
        # Integer vectors: every sum is exact, so the running sums must equal M G Mᵀ bit for bit.
        whole = rng.integers(-50, 50, size=(n, 9)).astype(float)
        basis = whole @ whole.T
        gram, bound = tm.interval_gram(basis, origin)
        np.testing.assert_array_equal(gram, m @ basis @ m.T)
        np.testing.assert_array_equal(bound, np.diagonal(np.abs(m) @ np.abs(basis) @ np.abs(m).T))
        # Real vectors, a long path far from its origin: the same terms in another order, so the
        # difference stays within the summation error of the absolute terms (bound).
        x = np.cumsum(rng.normal(size=(n, 40)) * 1e-3, axis=0) + rng.normal(size=40)
        b = np.concatenate([x[:1], np.diff(x, axis=0)])
        basis = b @ b.T
        gram, bound = tm.interval_gram(basis, origin)
        terms = np.abs(m) @ np.abs(basis) @ np.abs(m).T  # what each entry is summed from
        assert np.all(np.abs(gram - m @ basis @ m.T) <= 4 * n * np.finfo(float).eps * terms)
        np.testing.assert_allclose(bound, np.diagonal(terms), rtol=1e-13)

def test_mode_vectors_match_the_explicit_vectors_of_each_mode():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 25))
    x[4] = x[2]  # a return: θ_4 − θ_2 is a true zero in displacement from 2
    b = np.concatenate([x[:1], np.diff(x, axis=0)])
    basis = b @ b.T
    cases = {("raw", 0, True): x, ("update", 0, True): np.diff(x, axis=0),
             ("displacement", 2, True): x - x[2], ("displacement", 2, False): np.delete(x - x[2], 2, 0)}
    for (mode, ref, keep), vectors in cases.items():
        got = tm.mode_vectors(basis, mode, ref, keep_reference=keep)
        np.testing.assert_allclose(got.gram, vectors @ vectors.T, rtol=0, atol=1e-12)
        assert got.zero.tolist() == [bool(np.allclose(v, 0)) for v in vectors]
    assert tm.mode_vectors(basis, "displacement", 2).zero.tolist() == [False, False, False, True, False]
    # A checkpoint with NaN/Inf values (1) spoils every vector built from it.
    flags = {m: tm.mode_vectors(basis, m, 2, {1}).bad.tolist() for m in tm.MODES}
    assert flags == {"raw": [False, True, False, False, False, False],
                     "displacement": [False, True, False, False, False],
                     "update": [True, True, False, False, False]}
    assert tm.mode_vectors(basis, "displacement", 1, {1}).bad.all()


@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_pair_distances_sum_each_pair_from_its_own_steps(n):
    rng = np.random.default_rng(n)
    whole = rng.integers(-40, 40, size=(n, 7)).astype(float)  # exact sums: equal bit for bit
    b = np.concatenate([whole[:1], np.diff(whole, axis=0)])
    dist2, bound = tm.pair_distances(b @ b.T)
    for i in range(n):
        for j in range(n):
            d = whole[j] - whole[i]
            expected = d @ d if i < j else 0.0
            steps = np.abs(b[i + 1: j + 1] @ b[i + 1: j + 1].T).sum() if i < j else 0.0
            assert dist2[i, j] == expected and bound[i, j] == steps
    # far from the origin, tiny steps: the distances keep their own precision
    x = rng.normal(size=30) * 1e3 + np.cumsum(rng.normal(size=(n, 30)) * 1e-6, axis=0)
    b = np.concatenate([x[:1], np.diff(x, axis=0)])
    dist2, _ = tm.pair_distances(b @ b.T)
    for i in range(n):
        for j in range(i + 1, n):
            steps = b[i + 1: j + 1].sum(0)  # θ_j − θ_i from the same rounded steps
            assert dist2[i, j] == pytest.approx(steps @ steps, rel=1e-12)
