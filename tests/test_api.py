"""The library API: `trajcli.open` → Run → typed results equal to the command line's documents, from
one pass over the files."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import explicit_matrix, random_trajectory, run_json, save_safetensors_dir

import trajcli
from trajcli import pipeline
from trajcli.demo import make_demo_trajectory


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """The demo's GPT-NeoX-style model (config.json: Q/K/V fused per head) at five steps."""
    folder = tmp_path_factory.mktemp("api") / "ck"
    make_demo_trajectory(folder, steps=[0, 1, 2, 4, 8])
    return folder


@pytest.fixture
def passes(monkeypatch):
    """How many passes over the checkpoint files were made (each reads every file once)."""
    count = []
    real = pipeline.read_trajectory

    def counting(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "read_trajectory", counting)
    return count


def test_the_snippet_runs_as_written_and_equals_the_command_line(demo_folder, passes):
    cli = run_json(["similarity", demo_folder, "--mode", "displacement"])
    commands = {args[0]: run_json([args[0], demo_folder, *args[1:]])
                for args in (["layers", "--by", "role"], ["qkv", "--per-head"], ["dynamics", "--lr", "3e-4"],
                             ["similarity"])}
    passes.clear()
    run = trajcli.open(demo_folder)
    assert [c.step for c in run.checkpoints] == [0, 1, 2, 4, 8] and not passes  # headers only so far
    sim = run.similarity(mode="displacement")
    assert sim.matrix.dtype == np.float64 and sim.labels == cli["labels"] == ["step1", "step2", "step4", "step8"]
    assert np.array_equal(sim.matrix, np.array(cli["matrix"], dtype=float))  # bit for bit
    assert sim.mds == cli["mds"] and sim.to_dict() == cli and sim.schema == "trajcli.similarity/1"
    # five analyses, one pass
    layers = run.layers(by="role")
    qkv = run.qkv(per_head=True)
    dynamics = run.dynamics(lr=3e-4)
    raw = run.similarity()
    files = run.report(demo_folder.parent / "report")
    assert len(passes) == 1 and run.passes == 1
    assert demo_folder.parent / "report" / "report.html" in files
    # each equals its command's document (the command cuts its own pass: equal to rounding)
    for result, command in ((layers, "layers"), (qkv, "qkv"), (dynamics, "dynamics"), (raw, "similarity")):
        _assert_close_documents(result.to_dict(), commands[command])
    assert set(layers.matrices) == {g["name"] for g in layers.document["groups"]}
    for group in layers.document["groups"]:  # raw mode: every checkpoint, NaN where the document says null
        np.testing.assert_array_equal(layers.matrices[group["name"]],
                                      np.array(group["matrix"], dtype=float))
        assert layers.mds[group["name"]] == group["mds"] or (group["mds"] is None and np.isnan(layers.mds[group["name"]]))


def _assert_close_documents(a, b, where="document"):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            _assert_close_documents(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_documents(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-10), where  # angles from arccos near 1: ~1e-12
    else:
        assert a == b, where


def test_results_against_explicit_float64(tmp_path):
    sds = random_trajectory(5, seed=3)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"checkpoint-{k}", sd)
    run = trajcli.open(tmp_path / "run", every=1)
    for mode, ref in (("raw", 0), ("displacement", 0), ("update", 0)):
        sim = run.similarity(mode=mode)
        np.testing.assert_allclose(sim.matrix, explicit_matrix(sds, mode, ref), atol=1e-12)
    per_tensor = run.layers(by="tensor")
    for name, matrix in per_tensor.matrices.items():
        np.testing.assert_allclose(matrix, explicit_matrix(sds, "raw", names=[name]), atol=1e-12)
    assert run.passes == 1
    with pytest.raises(ValueError, match="mode must be one of raw, displacement, update"):
        run.similarity(mode="cosine")
    with pytest.raises(ValueError, match="by must be one of"):
        run.layers(by="head")


def test_a_cache_folder_is_reused_while_the_files_are_unchanged(tmp_path, passes):
    sds = random_trajectory(4, seed=1)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"checkpoint-{k}", sd)
    first = trajcli.open(tmp_path / "run", cache=tmp_path / "cache").similarity().matrix
    assert len(passes) == 1 and (tmp_path / "cache" / "grams.npz").is_file()
    cached = trajcli.open(tmp_path / "run", cache=tmp_path / "cache")
    again = cached.similarity().matrix
    assert len(passes) == 1 and np.array_equal(first, again, equal_nan=True)  # no second read
    assert cached.passes == 0
    save_safetensors_dir(tmp_path / "run" / "checkpoint-3", random_trajectory(4, seed=9)[3])
    trajcli.open(tmp_path / "run", cache=tmp_path / "cache").similarity()
    assert len(passes) == 2  # a file written again: read again


def test_frames_when_pandas_is_there(demo_folder):
    pd = pytest.importorskip("pandas")
    run = trajcli.open(demo_folder)
    frame = run.qkv().to_frame()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns[:3]) == ["layer", "block", "depth"]
    assert len(frame) == len(run.qkv().document["layers"])
    sim = run.similarity().to_frame()
    assert list(sim.index) == [c.name for c in run.checkpoints]


def test_importing_trajcli_stays_light():
    import subprocess
    import sys

    code = "import sys, trajcli; print('torch' in sys.modules, 'numpy' in sys.modules, callable(trajcli.open))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "True"]
