"""Bad input, damaged files and hostile files: one clear line, the right exit code, nothing executed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import random_trajectory, run, save_hub_sharded, save_safetensors_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajcli.report.writers import OutputSet


def _assert_one_error(result, exit_code: int, *needles: str) -> str:
    """stderr holds exactly one error line (plus its hint), no traceback; stdout is empty."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("trajcli: error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _trajectory(folder, n=3, seed=0, **kw):
    sds = random_trajectory(n, seed=seed, **kw)
    for k, sd in enumerate(sds):
        save_safetensors_dir(folder / f"checkpoint-{k}", sd)
    return sds


def test_missing_path(tmp_path):
    _assert_one_error(run(["similarity", tmp_path / "nope"]), 1, "no such file or folder", "nope")


def test_no_checkpoints_under_path(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    _assert_one_error(run(["similarity", tmp_path]), 1, "no checkpoints found", str(tmp_path))
    assert "hint" in run(["similarity", tmp_path]).stderr


def test_one_checkpoint_is_not_a_trajectory(tmp_path):
    _trajectory(tmp_path, n=1)
    _assert_one_error(run(["similarity", tmp_path]), 1, "at least 2 checkpoints")


def test_mismatched_shapes_name_checkpoint_tensor_and_both_shapes(tmp_path):
    _trajectory(tmp_path, n=2)
    save_safetensors_dir(tmp_path / "checkpoint-9", {**random_trajectory(1, seed=1)[0], "embed.weight": torch.zeros(12, 6)})
    _assert_one_error(run(["similarity", tmp_path]), 1, "checkpoint-9", "embed.weight", "[12, 6]", "[11, 6]")
    result = run(["similarity", tmp_path, "--on-mismatch", "skip", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["n_tensors"] == 5
    assert any(d["tensor"] == "embed.weight" and d["checkpoint"] == "checkpoint-9" for d in doc["left_out"])
    assert "left out 1 tensor" in result.stderr


def test_missing_tensor_is_a_mismatch(tmp_path):
    _trajectory(tmp_path, n=2)
    sd = random_trajectory(1, seed=2)[0]
    del sd["head.scale"]
    save_safetensors_dir(tmp_path / "checkpoint-5", sd)
    _assert_one_error(run(["similarity", tmp_path]), 1, "head.scale", "missing from checkpoint-5")


def test_truncated_safetensors(tmp_path):
    _trajectory(tmp_path)
    path = tmp_path / "checkpoint-1" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    _assert_one_error(run(["similarity", tmp_path]), 1, str(path))


def test_a_checkpoint_the_selection_leaves_out_is_never_opened(tmp_path):
    """A damaged (or still being written) checkpoint outside --steps / --every / --max-checkpoints does
    not fail the run: only chosen checkpoints are opened (safetensors steps come from the names)."""
    _trajectory(tmp_path, n=5)
    path = tmp_path / "checkpoint-4" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    _assert_one_error(run(["similarity", tmp_path]), 1, str(path))
    for selection in (["--steps", ":3"], ["--every", "2", "--steps", "0:2"], ["--max-checkpoints", "2", "--steps", ":3"]):
        result = run(["similarity", tmp_path, "--json", *selection])
        assert result.exit_code == 0, (selection, result.stderr)
        assert "checkpoint-4" not in json.loads(result.stdout)["labels"]


def test_torch_files_are_ordered_by_their_own_step_before_the_selection(tmp_path):
    """nanoGPT files named against their order: iter_num inside each decides it, so they are opened
    first; --every then picks by that order."""
    from helpers import save_nanogpt

    names = ["ckpt_d.pt", "ckpt_a.pt", "ckpt_c.pt", "ckpt_b.pt"]  # iter_num 0, 100, 200, 300
    for k, (name, sd) in enumerate(zip(names, random_trajectory(4, seed=3))):
        save_nanogpt(tmp_path / name, sd, iter_num=100 * k)
    result = run(["similarity", tmp_path, "--json", "--every", "2"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [c["step"] for c in doc["checkpoints"]] == [0, 200] and doc["labels"] == ["ckpt_d.pt", "ckpt_c.pt"]


def test_corrupt_torch_file(tmp_path):
    for k, sd in enumerate(random_trajectory(2)):
        torch.save(sd, tmp_path / f"ckpt_{k}.pt")
    bad = tmp_path / "ckpt_1.pt"
    bad.write_bytes(bad.read_bytes()[:200])
    _assert_one_error(run(["similarity", tmp_path]), 1, "ckpt_1.pt")


def test_corrupt_index(tmp_path):
    for k, sd in enumerate(random_trajectory(2)):
        save_hub_sharded(tmp_path / f"step{k}", sd)
    (tmp_path / "step1" / "model.safetensors.index.json").write_text("{not json")
    _assert_one_error(run(["similarity", tmp_path]), 1, "step1", "index")


@pytest.mark.parametrize("shard", ["../step0/model-00001-of-00002.safetensors", "/etc/passwd", ".."])
def test_index_pointing_outside_the_folder_is_refused(tmp_path, shard):
    for k, sd in enumerate(random_trajectory(2)):
        save_hub_sharded(tmp_path / f"step{k}", sd)
    index = tmp_path / "step1" / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    first = next(iter(doc["weight_map"]))
    doc["weight_map"][first] = shard
    index.write_text(json.dumps(doc))
    _assert_one_error(run(["similarity", tmp_path]), 1, "outside the checkpoint folder", repr(shard))


def test_git_lfs_pointer(tmp_path):
    _trajectory(tmp_path, n=2)
    (tmp_path / "checkpoint-1" / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    result = run(["similarity", tmp_path])
    _assert_one_error(result, 1, "Git-LFS pointer", "checkpoint-1")
    assert "git lfs pull" in result.stderr


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_runs_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    data = tmp_path / "data"
    data.mkdir()
    torch.save(random_trajectory(1)[0], data / "model_0.pt")
    torch.save({"w": torch.zeros(2), "payload": _Evil(str(marker))}, data / "model_1.pt")
    result = run(["similarity", data])
    _assert_one_error(result, 1, "model_1.pt", "nothing was executed", "it asks for posix.mkdir")
    assert not marker.exists()
    # also through the nanoGPT/Lightning metadata read of a checkpoint folder
    folder = tmp_path / "lightning"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 1, "hyper_parameters": _Evil(str(marker))},
               folder / "epoch=0-step=1.ckpt")
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 2}, folder / "epoch=0-step=2.ckpt")
    _assert_one_error(run(["inspect", folder]), 1, "epoch=0-step=1.ckpt")
    assert not marker.exists()


def test_nan_and_inf_warn_and_null_the_affected_entries(tmp_path):
    sds = _trajectory(tmp_path, n=4)
    bad = {k: v.clone() for k, v in sds[2].items()}
    bad["layers.0.attn.weight"][0, :3] = float("nan")
    bad["layers.0.attn.weight"][1, 0] = float("inf")
    save_safetensors_dir(tmp_path / "checkpoint-2", bad)
    result = run(["similarity", tmp_path, "--json"])
    assert result.exit_code == 0
    assert "checkpoint-2: tensor layers.0.attn.weight has 4 NaN/Inf value(s)" in result.stderr
    doc = json.loads(result.stdout)
    m = np.array([[np.nan if v is None else v for v in row] for row in doc["matrix"]])
    assert np.isnan(m[2]).all() and np.isnan(m[:, 2]).all()
    from helpers import explicit_matrix

    expected = explicit_matrix(sds[:2] + sds[3:], "raw")  # the other entries stay exact
    keep = [0, 1, 3]
    np.testing.assert_allclose(m[np.ix_(keep, keep)], expected, atol=1e-9)
    assert doc["nonfinite"] == [{"checkpoint": "checkpoint-2", "tensor": "layers.0.attn.weight", "count": 4}]
    _assert_one_error(run(["similarity", tmp_path, "--strict"]), 1, "NaN/Inf", "--strict")
    out = tmp_path.parent / f"{tmp_path.name}-out"
    for command in (["layers"], ["dynamics"], ["report", "--out", out]):
        _assert_one_error(run([command[0], tmp_path, *command[1:], "--strict"]), 1,
                          "1 tensor(s) hold NaN/Inf values (--strict), e.g. tensor layers.0.attn.weight of checkpoint "
                          "checkpoint-2 (4)")
    assert not (out / "report.html").exists() and not (out / "similarity_raw.json").exists()


def test_strict_refuses_nan_in_qkv_and_curvature(tmp_path):
    from safetensors.torch import load_file, save_file
    from test_qkv import write_trajectory

    write_trajectory("gpt_neox", tmp_path / "run", n=3, seed=1)
    shard = next((tmp_path / "run" / "step1").glob("*.safetensors"))
    sd = load_file(shard)
    name = next(k for k in sd if k.endswith("query_key_value.weight"))
    sd[name][0, 0] = float("nan")
    save_file(sd, shard)
    assert run(["qkv", tmp_path / "run", "-q"]).exit_code == 0
    _assert_one_error(run(["qkv", tmp_path / "run", "--strict"]), 1, "(--strict)", name)


def test_out_inside_an_input_checkpoint_is_refused(tmp_path):
    _trajectory(tmp_path)
    target = tmp_path / "checkpoint-1" / "results"
    _assert_one_error(run(["similarity", tmp_path, "--out", target]), 1, "inside the input checkpoint")
    assert not target.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoint-1").iterdir()) == ["model.safetensors"]


def test_out_not_writable(tmp_path):
    _trajectory(tmp_path / "run")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _assert_one_error(run(["similarity", tmp_path / "run", "--out", blocker / "sub"]), 1, "cannot write to --out")


def test_inputs_are_never_modified(tmp_path):
    _trajectory(tmp_path / "run")
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
              for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert run(["similarity", tmp_path / "run", "--out", tmp_path / "out"]).exit_code == 0
    after = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
             for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert before == after


def test_output_set_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with OutputSet(tmp_path) as files:
            files.text("similarity.json", "{}")
            files.text("similarity.csv", "a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_sigterm_exits_cleanly_without_output(tmp_path):
    """SIGTERM while the command waits for its input: exit 130, a message, no traceback, no files."""
    proc = subprocess.Popen([sys.executable, "-m", "trajcli", "similarity", "-", "--out", str(tmp_path / "out")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["similarity", "--bogus"], ["similarity", ".", "--mode", "sideways"],
                                  ["similarity", ".", "--every", "0"], ["similarity", ".", "--memory-budget", "lots"],
                                  ["similarity", ".", "--on-mismatch", "maybe"], ["frobnicate"]])
def test_bad_usage_exits_2(args):
    result = run(args)
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "Usage" in result.stderr or "trajcli: error" in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "TRAJCLI_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "trajcli", "similarity", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "DataError" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "trajcli", "--debug", "similarity", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert "Traceback" in proc.stderr


# ---- fuzzing: damaged headers, indexes and torch files ----------------------------------------

@pytest.fixture(scope="module")
def fuzz_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-src")
    sd = random_trajectory(1, seed=9, shapes={"a": (4, 3), "b": (5,)})[0]
    save_safetensors_dir(root / "st", sd)
    save_hub_sharded(root / "sharded", sd, shard_bytes=60)
    torch.save(sd, root / "model.pt")
    return {
        "safetensors": (root / "st" / "model.safetensors").read_bytes(),
        "index": (root / "sharded" / "model.safetensors.index.json").read_bytes(),
        "torch": (root / "model.pt").read_bytes(),
        "sharded": root / "sharded",
    }


def _mutate(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    limit = len(data) - 1
    if kind == "header":
        limit = min(limit, 8 + struct.unpack("<Q", data[:8])[0] if len(data) > 8 and data[:1] != b"{" else limit)
        limit = min(limit, len(data) - 1)
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(0, limit))] = draw(st.integers(0, 255))
    return bytes(out)


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["safetensors", "index", "torch"]), data=st.data())
def test_fuzzed_files_fail_cleanly(tmp_path_factory, fuzz_sources, target, data):
    import shutil

    root = tmp_path_factory.mktemp("fuzz")
    good = fuzz_sources
    if target == "safetensors":
        (root / "s0").mkdir()
        (root / "s0" / "model.safetensors").write_bytes(good["safetensors"])
        (root / "s1").mkdir()
        (root / "s1" / "model.safetensors").write_bytes(_mutate(good["safetensors"], data.draw))
    elif target == "index":
        shutil.copytree(good["sharded"], root / "s0")
        shutil.copytree(good["sharded"], root / "s1")
        (root / "s1" / "model.safetensors.index.json").write_bytes(_mutate(good["index"], data.draw))
    else:
        (root / "m_0.pt").write_bytes(good["torch"])
        (root / "m_1.pt").write_bytes(_mutate(good["torch"], data.draw))
    result = run(["similarity", root, "--json"])
    if result.exit_code == 0:
        json.loads(result.stdout)  # a mutation that keeps the file valid is just other numbers
    else:
        _assert_one_error(result, 1)


def test_python_m_trajcli_beside_a_clone_named_trajcli_says_what_hides_it(tmp_path):
    """`python -m trajcli` in the folder that holds a clone named trajcli: the clone's root (no
    __init__.py) shadows an editable install; one line says so instead of an ImportError traceback."""
    import subprocess
    import sys

    (tmp_path / "trajcli" / "trajcli").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "trajcli", "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert "Traceback" not in done.stderr
    if done.returncode == 0:  # a regular (non-editable) install is found before a namespace folder
        assert done.stdout.startswith("trajcli ")
    else:
        assert done.returncode == 2 and f"the folder {tmp_path / 'trajcli'} hides the installed" in done.stderr



@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_a_stop_while_trajcli_starts_up_exits_130_with_one_line(monkeypatch, capsys, stop):
    """SIGTERM or Ctrl-C while the modules still load (before any command runs) ends as later:
    exit 130 and one line, not 143 or a KeyboardInterrupt traceback."""

    from trajcli import launch

    def loading():
        if stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the handler main() set raises at once
            time.sleep(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "_run", loading)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stopped:
            launch.main()
        exiting = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "trajcli: interrupted\n"
    assert exiting == signal.SIG_IGN  # a second Ctrl-C cannot break into the exit handlers


def test_a_torch_file_whose_zip_record_claims_several_disks_gives_one_line(tmp_path):
    """Found by the fuzz test above: zipfile raises BadZipFile from is_zipfile itself there."""
    torch.save(random_trajectory(1)[0], tmp_path / "m_0.pt")
    good = (tmp_path / "m_0.pt").read_bytes()
    at = good.rfind(b"PK\x06\x07")  # the zip64 end-of-central-directory locator
    bad = bytearray(good)
    bad[at + 16] = 2  # its total number of disks
    (tmp_path / "m_1.pt").write_bytes(bytes(bad))
    _assert_one_error(run(["similarity", tmp_path]), 1, "m_1.pt")


def test_debug_keeps_the_cause_of_a_known_error(tmp_path):
    """Without --debug one line; with it the DataError propagates with the library's own exception as
    its cause (not hidden by `from None`)."""
    from trajcli.errors import DataError

    for k in range(2):
        (tmp_path / f"step{k}").mkdir()
        (tmp_path / f"step{k}" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    plain = run(["inspect", tmp_path])
    assert plain.exit_code == 1 and plain.stderr.startswith("trajcli: error: cannot read safetensors file")
    with pytest.raises(DataError, match="cannot read safetensors file") as raised:
        run(["--debug", "inspect", tmp_path])
    assert raised.value.__cause__ is not None
