"""Saved Grams (grams.npz): reused by later commands on the same trajectory, never when stale; the
torch products path (used for --device cuda) equals the numpy one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import random_trajectory, run, run_json, save_safetensors_dir
from test_qkv import write_trajectory

from trajcli.engine import gram
from trajcli.io import sources
from trajcli.io.discover import discover_checkpoints
from trajcli.io.inventory import Selection, take_inventory


@pytest.fixture
def count_reads(monkeypatch):
    calls = []
    original = sources.CheckpointReader.read_into

    def counting(self, *args):
        calls.append(args[0])
        return original(self, *args)

    monkeypatch.setattr(sources.CheckpointReader, "read_into", counting)
    return calls


def test_answers_from_saved_grams_and_inspect_do_not_import_torch(tmp_path):
    import subprocess
    import sys

    write_trajectory("gpt_neox", tmp_path / "run", n=3)
    out = tmp_path / "out"
    assert run(["layers", tmp_path / "run", "--out", out]).exit_code == 0  # reads: writes grams.npz
    probe = ("import sys; from trajcli.launch import main; sys.argv = ['trajcli', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('torch' in sys.modules)")
    for args in (["similarity", str(tmp_path / "run"), "--out", str(out), "--quiet"],
                 ["inspect", str(tmp_path / "run")]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "False", args  # ~1.5 s of start-up saved


def test_grams_file_is_a_plain_npz_of_every_leaf_basis_gram(tmp_path):
    """grams.npz opens with np.load alone: basis (leaves × N(N+1)/2, the upper triangle of each leaf's
    basis Gram, row by row; the Grams sum to the whole model's) and meta (labels, leaves, where they
    came from)."""
    import json

    from helpers import flatten

    sds = random_trajectory(4, seed=8)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    assert run(["similarity", tmp_path / "run", "--out", tmp_path / "out", "--quiet"]).exit_code == 0
    with np.load(tmp_path / "out" / "grams.npz", allow_pickle=False) as data:
        packed, meta = data["basis"], json.loads(str(data["meta"]))
    assert packed.shape == (len(meta["leaves"]), 10) and meta["labels"] == [f"step{k}" for k in range(4)]
    upper = np.triu_indices(4)
    basis = np.zeros((len(packed), 4, 4))
    basis[:, upper[0], upper[1]] = packed
    basis[:, upper[1], upper[0]] = packed
    x = np.stack([flatten(sd) for sd in sds])
    b = np.concatenate([x[:1], np.diff(x, axis=0)])
    np.testing.assert_allclose(basis.sum(0), b @ b.T, rtol=1e-12)
    for leaf, saved in zip(meta["leaves"], basis):
        v = np.stack([sd[leaf].to(torch.float64).reshape(-1).numpy() for sd in sds])
        steps = np.concatenate([v[:1], np.diff(v, axis=0)])
        np.testing.assert_allclose(saved, steps @ steps.T, rtol=1e-12, atol=1e-12 * np.abs(steps @ steps.T).max())


def test_saved_grams_load_back_bit_for_bit_and_read_only(tmp_path):
    """Each leaf's Gram comes back from its saved upper triangle exactly as the pass made it; the loaded
    arrays are read-only (a derived cut shares them instead of copying)."""
    from trajcli.engine.store import load_grams, save_grams

    for k, sd in enumerate(random_trajectory(5, seed=3)):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    inv = take_inventory(discover_checkpoints([str(tmp_path / "run")]), Selection())
    try:
        grams = gram.accumulate(inv)
        save_grams(tmp_path / "grams.npz", inv, grams, {})
        loaded = load_grams(tmp_path / "grams.npz", inv, {})
    finally:
        inv.close()
    assert list(loaded.basis) == list(grams.basis) and len(grams.basis) > 1
    for leaf, saved in grams.basis.items():
        assert np.array_equal(loaded.basis[leaf], saved), leaf
        assert not loaded.basis[leaf].flags.writeable
        with pytest.raises(ValueError):
            loaded.basis[leaf][0, 0] = 0.0


def test_later_commands_reuse_the_saved_grams(tmp_path, count_reads):
    write_trajectory("llama", tmp_path / "run")
    out = tmp_path / "out"
    first = run_json(["qkv", tmp_path / "run", "--per-head", "--out", out])
    assert count_reads and (out / "grams.npz").exists()
    count_reads.clear()
    # heads -> parts, parts -> tensors, tensors -> blocks: all derived from the saved per-head Grams
    for args in (["qkv"], ["similarity", "--mode", "update"], ["layers", "--by", "block"], ["layers", "--by", "role"]):
        result = run([args[0], tmp_path / "run", *args[1:], "--out", out, "--json"])
        assert result.exit_code == 0, result.stderr
        assert "reusing the Grams saved" in result.stderr
    assert count_reads == []
    again = run_json(["qkv", tmp_path / "run", "--out", out])
    fresh = run_json(["qkv", tmp_path / "run"])  # no --out: reads the checkpoints
    for a, b, c in zip(again["layers"], fresh["layers"], first["layers"]):
        for part in "qkv":
            np.testing.assert_allclose(np.array(a[part]["matrix"], float), np.array(b[part]["matrix"], float), atol=1e-12)
            assert a[part]["mds"] == pytest.approx(c[part]["mds"], abs=1e-12)


def test_a_coarser_saved_cut_is_read_again(tmp_path, count_reads):
    write_trajectory("gpt_neox", tmp_path / "run")
    out = tmp_path / "out"
    run_json(["similarity", tmp_path / "run", "--out", out])
    count_reads.clear()
    result = run(["qkv", tmp_path / "run", "--out", out, "--json"])  # parts cannot come from whole tensors
    assert result.exit_code == 0 and "reusing" not in result.stderr and count_reads
    count_reads.clear()
    run_json(["similarity", tmp_path / "run", "--out", out, "--mode", "displacement"])  # now parts -> whole
    assert count_reads == []


def test_changed_checkpoints_or_selection_are_read_again(tmp_path, count_reads):
    sds = random_trajectory(4, seed=8)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    out = tmp_path / "out"
    run_json(["similarity", tmp_path / "run", "--out", out])
    count_reads.clear()
    run_json(["similarity", tmp_path / "run", "--out", out, "--every", "2"])  # other checkpoints
    assert count_reads
    count_reads.clear()
    run_json(["similarity", tmp_path / "run", "--out", out, "--exclude", "bias"])  # other tensors
    assert count_reads
    run_json(["similarity", tmp_path / "run", "--out", out])
    count_reads.clear()
    save_safetensors_dir(tmp_path / "run" / "step3", sds[0])  # rewritten: new size/mtime
    os.utime(tmp_path / "run" / "step3" / "model.safetensors", ns=(1, 1))
    doc = run_json(["similarity", tmp_path / "run", "--out", out])
    assert count_reads and doc["identical"] == [["step0", "step3"]]
    count_reads.clear()
    run_json(["similarity", tmp_path / "run", "--out", out, "--recompute"])
    assert count_reads


def test_a_damaged_grams_file_is_read_again(tmp_path, count_reads):
    """A grams.npz cut short (a full disk, a copy that stopped), empty or not ours: the checkpoints
    are read again and the file replaced, without a traceback."""
    for k, sd in enumerate(random_trajectory(3, seed=2)):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    out = tmp_path / "out"
    expected = run_json(["similarity", tmp_path / "run", "--out", out])
    whole = (out / "grams.npz").read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"not a zip file"):
        (out / "grams.npz").write_bytes(damaged)
        count_reads.clear()
        assert run_json(["similarity", tmp_path / "run", "--out", out]) == expected
        assert count_reads and (out / "grams.npz").read_bytes() == whole


def _qkv_grams(tmp_path, devices: tuple[str, ...]) -> list:
    """A GPT-2 trajectory's Grams cut into Q/K/V heads (its Conv1D columns exercise the copying slice
    path), accumulated once per device."""
    write_trajectory("gpt2", tmp_path / "run")
    from trajcli.arch.families import family_by_name
    from trajcli.arch.grouping import plan_qkv
    from trajcli.arch.layouts import HeadCounts

    inv = take_inventory(discover_checkpoints([str(tmp_path / "run")]), Selection())
    try:
        plan, _ = plan_qkv(inv.tensors, family_by_name("gpt2"), HeadCounts(4, 4, 4, "test"), per_head=True, include_bias=True)
        return [gram.accumulate(inv, 1 << 20, segments=plan.segments, device=d) for d in devices]
    finally:
        inv.close()


def _assert_same_grams(got, expected) -> None:
    assert got.basis.keys() == expected.basis.keys()
    for leaf in expected.basis:
        np.testing.assert_allclose(got.basis[leaf], expected.basis[leaf], rtol=1e-12, atol=1e-12)


def test_torch_products_equal_numpy_products(tmp_path, monkeypatch):
    monkeypatch.setattr(gram, "_products_for",
                        lambda device: gram._TorchProducts("cpu") if device == "cuda" else gram.NumpyProducts())
    by_numpy, by_torch = _qkv_grams(tmp_path, ("cpu", "cuda"))
    _assert_same_grams(by_torch, by_numpy)


def test_cuda_without_a_device_is_a_usage_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; this checks the message on machines without one")
    for k, sd in enumerate(random_trajectory(2)):
        save_safetensors_dir(tmp_path / f"s{k}", sd)
    result = run(["similarity", tmp_path, "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device" in result.stderr
    assert run(["similarity", tmp_path, "--device", "auto", "--json"]).exit_code == 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device: run on a GPU machine")
def test_cuda_products_equal_the_cpu_ones(tmp_path):
    """On a GPU: the float64 products on the device give the CPU's Grams (1e-12) and maps (1e-9)."""
    on_cpu, on_cuda = _qkv_grams(tmp_path, ("cpu", "cuda"))
    _assert_same_grams(on_cuda, on_cpu)
    for mode in ("raw", "displacement", "update"):
        cpu = run_json(["similarity", tmp_path / "run", "--mode", mode, "--device", "cpu"])
        cuda = run_json(["similarity", tmp_path / "run", "--mode", mode, "--device", "cuda"])
        a, b = (np.array(d["matrix"], dtype=float) for d in (cpu, cuda))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-9)
        assert abs(cuda["mds"] - cpu["mds"]) <= 1e-9


def members_opened(monkeypatch) -> list[str]:
    """The names of the zip members (of grams.npz) opened for reading from now on."""
    import zipfile

    opened = []
    original = zipfile.ZipFile.open

    def spy(self, name, mode="r", **kwargs):
        if mode == "r":
            opened.append(name)
        return original(self, name, mode, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return opened


def test_a_stale_grams_file_is_judged_by_its_record_alone(tmp_path, monkeypatch):
    """Changed checkpoints: only the record (meta) of grams.npz is read, not its Grams, which can be
    gigabytes. A record that is not a JSON object is not ours: read again, no traceback."""
    import json
    import zipfile

    sds = random_trajectory(3, seed=6)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    out = tmp_path / "out"
    expected = run_json(["similarity", tmp_path / "run", "--out", out])
    opened = members_opened(monkeypatch)
    save_safetensors_dir(tmp_path / "run" / "step2", sds[1])  # rewritten
    changed = run_json(["similarity", tmp_path / "run", "--out", out])
    assert opened == ["meta.npy"]
    assert changed["identical"] == [["step1", "step2"]]
    with zipfile.ZipFile(out / "grams.npz", "w") as z:
        with z.open("meta.npy", "w") as member:
            np.lib.format.write_array(member, np.array(json.dumps([1, 2])), allow_pickle=False)
    save_safetensors_dir(tmp_path / "run" / "step2", sds[2])
    assert run_json(["similarity", tmp_path / "run", "--out", out]) == expected


def test_a_coarser_cut_loads_summed_from_the_saved_leaves_bit_for_bit(tmp_path, monkeypatch):
    """Saved per-head Grams serve the Q/K/V parts and whole tensors with the same values, bit for bit,
    as summing the loaded per-head Grams in memory; a cut the saved one cannot serve is refused from the
    record, without opening the Grams."""
    import json
    import zipfile

    from trajcli.engine.store import derive_gramset, load_grams
    from trajcli.types import Segment

    write_trajectory("gpt_neox", tmp_path / "run", n=4)
    out = tmp_path / "out"
    run_json(["qkv", tmp_path / "run", "--per-head", "--out", out])
    with zipfile.ZipFile(out / "grams.npz") as z, z.open("meta.npy") as member:
        meta = json.loads(str(np.lib.format.read_array(member)))
    have = {name: Segment(raw["axis"], tuple(map(tuple, raw["ranges"]))) for name, raw in meta["segments"].items()}
    assert any(len(s.ranges) > 3 for s in have.values())  # heads
    inv = take_inventory(discover_checkpoints([str(tmp_path / "run")]), Selection())
    try:
        saved = load_grams(out / "grams.npz", inv, have)
        parts = {name: Segment(s.axis, tuple((a, b, leaf.rsplit(".h", 1)[0] + "]") for a, b, leaf in s.ranges))
                 for name, s in have.items()}
        for want in (parts, {}):
            loaded = load_grams(out / "grams.npz", inv, want)
            expected = derive_gramset(saved, have, want, inv.tensors)
            assert list(loaded.basis) == list(expected.basis) and loaded.n_params == expected.n_params
            assert loaded.tensor_of == expected.tensor_of
            for leaf, basis in expected.basis.items():
                assert np.array_equal(loaded.basis[leaf], basis), leaf
        opened = members_opened(monkeypatch)
        name, segment = next((n, s) for n, s in have.items() if len(s.ranges) > 1)
        finer = dict(have, **{name: Segment(segment.axis, ((0, 1, "row0"), (1, segment.ranges[-1][1], "rest")))})
        assert load_grams(out / "grams.npz", inv, finer) is None
        assert opened == ["meta.npy"]
    finally:
        inv.close()
