"""The single-pass engine and the trajectory-map numerics: chunking, properties, known answers."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from helpers import explicit_matrix, flatten, random_trajectory, save_safetensors_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from trajcli.engine.gram import accumulate
from trajcli.io.discover import discover_checkpoints
from trajcli.io.inventory import Selection, take_inventory
from trajcli.metrics import trajectory as tm


def _grams(folder, budget_bytes):
    inv = take_inventory(discover_checkpoints([str(folder)]), Selection())
    try:
        return accumulate(inv, budget_bytes)
    finally:
        inv.close()


def _explicit_basis(sds) -> np.ndarray:
    x = np.stack([flatten(sd) for sd in sds])
    b = np.concatenate([x[:1], np.diff(x, axis=0)])
    return b @ b.T


@pytest.fixture(scope="module")
def saved_trajectory(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traj")
    sds = random_trajectory(5, seed=11)
    for k, sd in enumerate(sds):
        save_safetensors_dir(folder / f"step{k}", sd)
    return folder, sds


@settings(max_examples=25, deadline=None)
@given(chunk_elems=st.integers(min_value=1, max_value=200))
def test_chunked_gram_equals_one_shot_for_every_chunk_size(saved_trajectory, chunk_elems):
    folder, sds = saved_trajectory
    n = len(sds)
    grams = _grams(folder, chunk_elems * 2 * 8 * n)
    basis, bad = grams.whole()
    assert not bad
    np.testing.assert_allclose(basis, _explicit_basis(sds), rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 10_000), mode=st.sampled_from(tm.MODES), data=st.data())
def test_map_properties(n, seed, mode, data):
    """Symmetric, unit diagonal, entries in [−1, 1], equal to the explicit map."""
    sds = random_trajectory(n, seed=seed, shapes={"w": (5, 3), "b": (4,)})
    ref = data.draw(st.integers(0, n - 1)) if mode == "displacement" else 0
    if mode != "raw" and n < 2:
        return
    cos = tm.cosine_matrix(tm.mode_vectors(_explicit_basis(sds), mode, ref))
    np.testing.assert_array_equal(cos, cos.T)  # exactly
    assert np.all(np.diagonal(cos) == 1.0)
    assert np.all((cos >= -1.0) & (cos <= 1.0))
    np.testing.assert_allclose(cos, explicit_matrix(sds, mode, ref), rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scales=st.lists(st.floats(0.1, 10.0), min_size=4, max_size=4))
def test_raw_map_is_invariant_to_positive_rescaling(seed, scales):
    # Raw vectors are rebuilt from the basis (θ_k = b_0 + … + b_k): rounding grows with the ratio of
    # the norms, about eps·ratio², so 1e-10 holds up to a 100× spread of checkpoint norms.
    sds = random_trajectory(4, seed=seed, shapes={"w": (6, 2)}, dtype=torch.float64)
    scaled = [{k: v * s for k, v in sd.items()} for sd, s in zip(sds, scales)]
    a = tm.cosine_matrix(tm.mode_vectors(_explicit_basis(sds), "raw"))
    b = tm.cosine_matrix(tm.mode_vectors(_explicit_basis(scaled), "raw"))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), perm=st.permutations(range(5)))
def test_permuting_checkpoints_permutes_the_raw_map(seed, perm):
    sds = random_trajectory(5, seed=seed, shapes={"w": (3, 3)})
    a = tm.cosine_matrix(tm.mode_vectors(_explicit_basis(sds), "raw"))
    b = tm.cosine_matrix(tm.mode_vectors(_explicit_basis([sds[i] for i in perm]), "raw"))
    np.testing.assert_allclose(b, a[np.ix_(perm, perm)], rtol=0, atol=1e-12)


def test_known_answer_scaled_copies_have_cosine_one(tmp_path):
    base = random_trajectory(1, seed=5)[0]
    sds = [{k: (j + 1) * v for k, v in base.items()} for j in range(4)]
    for j, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / f"step{j}", sd)
    grams = _grams(tmp_path, 1 << 20)
    basis, _ = grams.whole()
    for mode in tm.MODES:
        cos = tm.cosine_matrix(tm.mode_vectors(basis, mode))
        np.testing.assert_allclose(cos, 1.0, rtol=0, atol=1e-12)
        assert tm.mean_directional_similarity(cos) == pytest.approx(1.0, abs=1e-12)


def test_known_answer_orthogonal_checkpoints_have_cosine_zero(tmp_path):
    for j in range(4):
        w = torch.zeros(4, 3)
        w[j] = torch.tensor([1.0, -2.0, 0.5]) * (j + 1)
        save_safetensors_dir(tmp_path / f"step{j}", {"w": w})
    grams = _grams(tmp_path, 1 << 20)
    basis, _ = grams.whole()
    cos = tm.cosine_matrix(tm.mode_vectors(basis, "raw"))
    np.testing.assert_allclose(cos, np.eye(4), rtol=0, atol=1e-15)
    assert tm.mean_directional_similarity(cos) == 0.0


@pytest.mark.parametrize("budget, shapes", [
    # a model eight times larger than the budget (1.2 MiB fp32 per tensor, 1 MiB budget)
    (1 << 20, {"big.weight": (1024, 256), "other.weight": (512, 128), "bias": (1024,)}),
    # fused MoE experts (E, d, 2f): one row along the first axis, as float64 for 4 checkpoints, is 8×
    # the budget; it is read in pieces of the row
    (1 << 18, {"experts.w": (2, 256, 256), "gate.weight": (3, 256)}),
], ids=["model larger than the budget", "row wider than the budget"])
def test_memory_follows_the_budget_not_the_model(tmp_path, budget, shapes):
    """numpy allocations during the pass (traced by tracemalloc) stay within the budget, and the
    Grams are exact."""
    sds = random_trajectory(4, seed=6, shapes=shapes)
    for j, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / f"step{j}", sd)
    inv = take_inventory(discover_checkpoints([str(tmp_path)]), Selection())
    assert inv.n_params * 8 * 4 > 8 * budget
    tracemalloc.start()
    try:
        grams = accumulate(inv, budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        inv.close()
    assert peak <= budget
    basis, _ = grams.whole()
    np.testing.assert_allclose(basis, _explicit_basis(sds), rtol=1e-12)


@pytest.mark.parametrize("read_threads", [1, 2])
def test_overlapped_reading_equals_reading_in_place(tmp_path, read_threads):
    sds = random_trajectory(5, seed=13)
    bad = {k: v.clone() for k, v in sds[3].items()}
    bad["embed.weight"][2, 1] = float("nan")
    sds[3] = bad
    for j, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / f"step{j}", sd)
    inv = take_inventory(discover_checkpoints([str(tmp_path)]), Selection())
    try:
        alone = accumulate(inv, 1 << 14, read_threads=0)
        overlapped = accumulate(inv, 1 << 14, read_threads=read_threads)
    finally:
        inv.close()
    assert overlapped.nonfinite == alone.nonfinite == {"embed.weight": {3: 1}}
    for leaf in alone.basis:
        np.testing.assert_array_equal(overlapped.basis[leaf], alone.basis[leaf])


@settings(max_examples=25, deadline=None)
@given(chunk_elems=st.integers(min_value=1, max_value=40))
def test_leaves_of_pieces_of_rows_are_exact_for_every_chunk_size(tmp_path_factory, chunk_elems):
    """Row cuts (Q/K/V parts of a fused [3d, d] projection) and column cuts (GPT-2's Conv1D [d, 3d])
    stay exact when chunks are pieces of rows."""
    from trajcli.engine.gram import chunk_elems_for
    from trajcli.types import Segment

    folder = tmp_path_factory.mktemp("cuts")
    shapes = {"rows.weight": (6, 10), "cols.weight": (4, 9)}
    sds = random_trajectory(3, seed=2, shapes=shapes)
    for j, sd in enumerate(sds):
        save_safetensors_dir(folder / f"step{j}", sd)
    segments = {"rows.weight": Segment(0, ((0, 2, "r.q"), (2, 5, "r.k"), (5, 6, "r.v"))),
                "cols.weight": Segment(1, ((0, 3, "c.q"), (3, 7, "c.k"), (7, 9, "c.v")))}
    inv = take_inventory(discover_checkpoints([str(folder)]), Selection())
    budget = chunk_elems * 4 * 8 * 3
    assert chunk_elems_for(3, budget) == chunk_elems
    try:
        grams = accumulate(inv, budget, segments=segments)
    finally:
        inv.close()
    picks = {"r.q": ("rows.weight", np.s_[0:2, :]), "r.k": ("rows.weight", np.s_[2:5, :]),
             "r.v": ("rows.weight", np.s_[5:6, :]), "c.q": ("cols.weight", np.s_[:, 0:3]),
             "c.k": ("cols.weight", np.s_[:, 3:7]), "c.v": ("cols.weight", np.s_[:, 7:9])}
    for leaf, (tensor, where) in picks.items():
        x = np.stack([sd[tensor].to(torch.float64).numpy()[where].ravel() for sd in sds])
        b = np.concatenate([x[:1], np.diff(x, axis=0)])
        np.testing.assert_allclose(grams.basis[leaf], b @ b.T, rtol=1e-12, atol=1e-12, err_msg=leaf)


def test_cpu_pass_cuts_wide_tensors_at_the_cache_cap_and_stays_exact(tmp_path, monkeypatch):
    """However large the budget, a CPU chunk holds at most CPU_CHUNK_ELEMS elements per checkpoint
    (a row that stays in cache); a tensor wider than that is summed from pieces, exactly."""
    from trajcli.engine import gram

    sds = random_trajectory(3, seed=4, shapes={"wide.weight": (2, gram.CPU_CHUNK_ELEMS + 37), "small.weight": (5, 3)})
    for j, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / f"step{j}", sd)
    planned = []
    plan = gram.plan_chunks
    monkeypatch.setattr(gram, "plan_chunks", lambda *a, **k: planned.extend(plan(*a, **k)) or planned)
    inv = take_inventory(discover_checkpoints([str(tmp_path)]), Selection())
    try:
        grams = accumulate(inv, 1 << 30)
    finally:
        inv.close()
    assert max(c.n_elems for c in planned) == gram.CPU_CHUNK_ELEMS
    assert len([c for c in planned if c.spec.name == "wide.weight"]) == 4  # two pieces per row
    total = grams.whole()[0]
    np.testing.assert_allclose(total, _explicit_basis(sds), rtol=1e-12, atol=1e-12)
