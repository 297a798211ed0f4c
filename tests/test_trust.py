"""Saved and journaled Grams serve only the files they were computed from: identities taken before
the pass (with inode and ctime), checked again after it, a plan digest in every journal part, shapes
checked on reuse, and one trajcli at a time in an output folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from helpers import random_trajectory, run, run_json, save_safetensors_dir
from test_resume import _PAUSE_AT

from trajcli.engine import gram
from trajcli.engine.journal import JOURNAL_DIR, PassJournal
from trajcli.engine.store import pass_plan
from trajcli.io.discover import discover_checkpoints
from trajcli.io.inventory import Selection, take_inventory


def _write(folder, seed, n=3):
    for k, sd in enumerate(random_trajectory(n, seed=seed)):
        save_safetensors_dir(folder / f"step{k}", sd)


def _mds(folder, *extra):
    return run_json(["similarity", folder, "-q", *extra])["mds"]


def test_an_out_folder_in_use_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    _write(tmp_path / "runA", seed=1)
    _write(tmp_path / "runB", seed=2)
    out, ready = tmp_path / "shared", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", _PAUSE_AT, "layers.0.norm.weight", str(ready),
                               "similarity", str(tmp_path / "runA"), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = run(["similarity", tmp_path / "runB", "--out", out])
        assert refused.exit_code == 1 and "Traceback" not in refused.stderr
        assert f"--out {out} is in use by another trajcli (pid {holder.pid} on " in refused.stderr
    finally:
        holder.kill()  # SIGKILL: its lock stays behind, its holder gone
        holder.communicate(timeout=60)
    assert (out / ".trajcli-lock").exists()
    taken = run(["similarity", tmp_path / "runB", "--out", out, "--json"])
    assert taken.exit_code == 0, taken.stderr
    assert f"trajcli: note: took over the lock of a trajcli that is gone (pid {holder.pid})" in taken.stderr
    assert json.loads(taken.stdout)["mds"] == _mds(tmp_path / "runB")
    assert not (out / ".trajcli-lock").exists()  # let go when the command ended


def test_a_journal_part_computed_under_another_plan_is_never_used(tmp_path):
    """Run B's finished tensors kept in a folder whose plan.json is run A's (two runs, one --out):
    the part carries B's plan digest, so A's resume takes nothing from it."""
    _write(tmp_path / "runA", seed=1)
    _write(tmp_path / "runB", seed=2)
    inv_a = take_inventory(discover_checkpoints([str(tmp_path / "runA")]), Selection())
    inv_b = take_inventory(discover_checkpoints([str(tmp_path / "runB")]), Selection())
    plan_a, plan_b = pass_plan(inv_a, {}), pass_plan(inv_b, {})
    tensor = inv_b.tensors[0].name
    journal_b = PassJournal.open(tmp_path / "out", plan_b, every_s=0.0)
    journal_b.finished(tensor, {tensor: np.eye(3)}, {})
    journal_b.flush()
    assert PassJournal.open(tmp_path / "out", plan_b).done.keys() == {tensor}  # B itself would resume
    plan_file = tmp_path / "out" / JOURNAL_DIR / "plan.json"
    plan_file.write_text(json.dumps({"format": json.loads(plan_file.read_text())["format"], **plan_a}))
    assert PassJournal.open(tmp_path / "out", plan_a).done == {}
    inv_a.close()
    inv_b.close()


def test_a_file_replaced_during_the_pass_fails_it_and_nothing_is_saved(tmp_path, monkeypatch):
    _write(tmp_path / "run", seed=3)
    _write(tmp_path / "other", seed=4)
    target = tmp_path / "run" / "step2" / "model.safetensors"
    original = gram._read_chunk
    done = []

    def read(inv, chunk, x, pool=None):
        if not done:  # a trainer saving `step2` again, the moment the pass began
            shutil.copy(tmp_path / "other" / "step2" / "model.safetensors", tmp_path / "new.safetensors")
            os.replace(tmp_path / "new.safetensors", target)
            done.append(True)
        return original(inv, chunk, x, pool)

    monkeypatch.setattr(gram, "_read_chunk", read)
    result = run(["similarity", tmp_path / "run", "--out", tmp_path / "out"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert f"{target} of checkpoint step2 changed while it was read" in result.stderr
    assert not (tmp_path / "out" / "grams.npz").exists()
    monkeypatch.undo()
    doc = run_json(["similarity", tmp_path / "run", "--out", tmp_path / "out"])
    assert doc["mds"] == _mds(tmp_path / "run")


@pytest.mark.parametrize("how", ["copied over, mtime kept", "written in place, mtime set back"])
def test_another_file_with_the_same_size_and_mtime_is_read_again(tmp_path, how):
    _write(tmp_path / "run", seed=5)
    _write(tmp_path / "other", seed=6)
    run(["similarity", tmp_path / "run", "--out", tmp_path / "out", "-q"])
    target = tmp_path / "run" / "step2" / "model.safetensors"
    source = tmp_path / "other" / "step2" / "model.safetensors"
    before = target.stat()
    if how.startswith("copied"):  # cp -p / rsync -t into a new file, renamed over the old one
        shutil.copy2(source, tmp_path / "new.safetensors")
        os.utime(tmp_path / "new.safetensors", ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(tmp_path / "new.safetensors", target)
    else:
        with open(target, "r+b") as f:
            f.write(source.read_bytes())
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = run(["similarity", tmp_path / "run", "--out", tmp_path / "out", "--json"])
    assert again.exit_code == 0 and "reusing" not in again.stderr
    assert json.loads(again.stdout)["mds"] == _mds(tmp_path / "run")


def test_a_grams_file_whose_arrays_do_not_fit_its_record_is_not_used(tmp_path):
    _write(tmp_path / "run", seed=7, n=4)
    out = tmp_path / "out"
    run(["similarity", out.parent / "run", "--out", out, "-q"])
    with np.load(out / "grams.npz", allow_pickle=False) as data:
        meta, basis = data["meta"], data["basis"]
    for wrong in (basis[:-1], basis[:, :3, :3], basis[0], basis.astype(np.float32)):
        with zipfile.ZipFile(out / "grams.npz", "w") as z:
            with z.open("meta.npy", "w") as member:
                np.lib.format.write_array(member, meta, allow_pickle=False)
            with z.open("basis.npy", "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(wrong), allow_pickle=False)
        result = run(["similarity", tmp_path / "run", "--out", out, "--json"])
        assert result.exit_code == 0 and "reusing" not in result.stderr and "Traceback" not in result.stderr
        assert json.loads(result.stdout)["mds"] == _mds(tmp_path / "run")
    assert "reusing" in run(["similarity", tmp_path / "run", "--out", out]).stderr  # the rewritten one serves
