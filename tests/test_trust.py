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
    original = gram.read_chunk
    done = []

    def read(readers, chunk, x, pool=None):
        if not done:  # a trainer saving `step2` again, the moment the pass began
            shutil.copy(tmp_path / "other" / "step2" / "model.safetensors", tmp_path / "new.safetensors")
            os.replace(tmp_path / "new.safetensors", target)
            done.append(True)
        return original(readers, chunk, x, pool)

    monkeypatch.setattr(gram, "read_chunk", read)
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
    for wrong in (basis[:-1], basis[:, :6], basis[0], basis.astype(np.float32), basis.reshape(len(basis), 2, 5)):
        with zipfile.ZipFile(out / "grams.npz", "w") as z:
            with z.open("meta.npy", "w") as member:
                np.lib.format.write_array(member, meta, allow_pickle=False)
            with z.open("basis.npy", "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(wrong), allow_pickle=False)
        result = run(["similarity", tmp_path / "run", "--out", out, "--json"])
        assert result.exit_code == 0 and "reusing" not in result.stderr and "Traceback" not in result.stderr
        assert json.loads(result.stdout)["mds"] == _mds(tmp_path / "run")
    assert "reusing" in run(["similarity", tmp_path / "run", "--out", out]).stderr  # the rewritten one serves
    record = json.loads(str(meta))
    tensor = next(iter(record["segments"]))
    for broken in (5, {"ranges": 5}, {"axis": 0, "ranges": [[0, 1]]}, {"ranges": [[0, 1, "x"]]}):  # hand-edited records
        with zipfile.ZipFile(out / "grams.npz", "w") as z:
            with z.open("meta.npy", "w") as member:
                edited = dict(record, segments=dict(record["segments"], **{tensor: broken}))
                np.lib.format.write_array(member, np.array(json.dumps(edited)), allow_pickle=False)
            with z.open("basis.npy", "w") as member:
                np.lib.format.write_array(member, basis, allow_pickle=False)
        result = run(["similarity", tmp_path / "run", "--out", out, "--json"])
        assert result.exit_code == 0 and "reusing" not in result.stderr and "Traceback" not in result.stderr, broken
        assert json.loads(result.stdout)["mds"] == _mds(tmp_path / "run")
    # a flipped bit in the Grams (the zip's CRC no longer matches), then bytes beyond the array
    data = (out / "grams.npz").read_bytes()
    at = data.index(basis[-1].tobytes()) + 5
    (out / "grams.npz").write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
    result = run(["similarity", tmp_path / "run", "--out", out, "--json"])
    assert result.exit_code == 0 and "reusing" not in result.stderr and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["mds"] == _mds(tmp_path / "run")
    with zipfile.ZipFile(out / "grams.npz", "w") as z:
        with z.open("meta.npy", "w") as member:
            np.lib.format.write_array(member, meta, allow_pickle=False)
        with z.open("basis.npy", "w") as member:
            np.lib.format.write_array(member, basis, allow_pickle=False)
            member.write(b"\0" * 8)
    result = run(["similarity", tmp_path / "run", "--out", out, "--json"])
    assert result.exit_code == 0 and "reusing" not in result.stderr
    assert json.loads(result.stdout)["mds"] == _mds(tmp_path / "run")


# ---- hostile or broken inputs: one line, never a traceback, a hang or a runaway allocation ----------

def _one_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("trajcli: error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_a_stride_zero_tensor_is_refused_before_anything_is_read(tmp_path):
    import torch

    for i in range(3):  # 2 KB on disk, 10¹² values
        torch.save({"w": torch.full((1, 1), float(i + 1)).expand(2**20, 2**20)}, tmp_path / f"m_{i}.pt")
    _one_error(run(["similarity", tmp_path]), 1, "m_0.pt: tensor w [1048576, 1048576] stands for 4398046511104 bytes",
               "its storage holds 4")
    from trajcli.report.render import human_count

    assert human_count(1_099_511_627_776) == "1.1T" and human_count(208_300) == "208.3k"


def test_absurd_head_counts_are_checked_against_the_shape_before_any_range_is_built(tmp_path, monkeypatch):
    from test_qkv import write_trajectory

    from trajcli.arch import layouts

    write_trajectory("gpt_neox", tmp_path / "run", n=3, seed=1)

    def never(*args):
        raise AssertionError("ranges built before the shape was checked")

    monkeypatch.setattr(layouts, "fused_ranges", never)
    _one_error(run(["qkv", tmp_path / "run", "--num-heads", "10000000", "--head-dim", "16", "--force-layout"]), 1,
               "H=10000000", "expects 3·H·hd = 480000000 along axis 0")
    config = json.loads((tmp_path / "run" / "step0" / "config.json").read_text())
    for k in range(3):
        (tmp_path / "run" / f"step{k}" / "config.json").write_text(json.dumps({**config, "num_attention_heads": 0}))
    _one_error(run(["qkv", tmp_path / "run"]), 1, "num_attention_heads in config.json is 0")


_DEEP = "[" * 100_000 + "]" * 100_000
_SIDE_FILES = {  # what a careless tool, a disk error or a hostile user leaves beside the weights
    "deeply nested JSON": _DEEP.encode(),
    "not UTF-8": b"\xff\xfe{\x00",
    "a list, not an object": b"[1, 2, 3]",
    "wrong types": json.dumps({"weight_map": 7, "global_step": "ten", "num_attention_heads": "4",
                               "log_history": {"step": 1}, "architectures": 5}).encode(),
    "zeros and negatives": json.dumps({"global_step": -3, "num_attention_heads": -2, "hidden_size": 0,
                                       "log_history": [{"step": -1, "learning_rate": True}]}).encode(),
    "empty": b"",
}


@pytest.mark.parametrize("content", list(_SIDE_FILES), ids=list(_SIDE_FILES))
@pytest.mark.parametrize("side_file", ["config.json", "trainer_state.json", "model.safetensors.index.json"])
def test_broken_side_files_give_one_line_or_are_ignored(tmp_path, side_file, content):
    for k, sd in enumerate(random_trajectory(3, seed=9)):
        folder = save_safetensors_dir(tmp_path / "run" / f"checkpoint-{k + 1}", sd)
        (folder / side_file).write_bytes(_SIDE_FILES[content])
    for args in (["inspect"], ["similarity"], ["dynamics", "--lr", "0.1"], ["layers", "--by", "role"]):
        result = run([args[0], tmp_path / "run", *args[1:], "-q"] if args[0] != "inspect" else [*args, tmp_path / "run"])
        assert result.exit_code in (0, 1), (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        if result.exit_code:
            _one_error(result, 1, side_file)


@pytest.mark.parametrize("content", ["deeply nested JSON", "not UTF-8", "empty"])
def test_broken_lr_files_and_hub_refs_give_one_line(tmp_path, content):
    from helpers import save_hub_cache

    for k, sd in enumerate(random_trajectory(3, seed=9)):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    (tmp_path / "lr.csv").write_bytes(_SIDE_FILES[content])
    result = run(["dynamics", tmp_path / "run", "--lr-file", tmp_path / "lr.csv"])
    _one_error(result, 2 if content == "not UTF-8" else 1, "--lr-file")
    repo = save_hub_cache(tmp_path / "hub", {"step1": random_trajectory(1)[0], "step2": random_trajectory(1)[0]})
    (repo / "refs" / "step2").write_bytes(_SIDE_FILES[content])
    _one_error(run(["similarity", repo]), 1, "hub ref", "does not hold a commit hash")


def test_hand_edited_result_files_give_one_line_in_plot(tmp_path):
    _write(tmp_path / "run", seed=8)
    run(["similarity", tmp_path / "run", "--out", tmp_path / "out", "-q"])
    saved = json.loads((tmp_path / "out" / "similarity.json").read_text())
    for k, edit in enumerate((lambda d: d.pop("labels"), lambda d: d.update(mode=5), lambda d: d.pop("checkpoints"))):
        doc = json.loads(json.dumps(saved))
        edit(doc)
        (tmp_path / f"edited{k}.json").write_text(json.dumps(doc))
        _one_error(run(["plot", tmp_path / f"edited{k}.json", "--out", tmp_path / f"plots{k}"]), 1,
                   f"cannot draw {tmp_path / f'edited{k}.json'}")
    (tmp_path / "deep.json").write_text(_DEEP)
    _one_error(run(["plot", tmp_path / "deep.json", "--out", tmp_path / "plots"]), 1, "cannot read result file")


def test_a_tensor_stored_as_integers_in_one_checkpoint_is_named_as_such(tmp_path):
    import torch

    sds = random_trajectory(3, seed=10)
    sds[2]["embed.weight"] = sds[2]["embed.weight"].to(torch.int32)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    _one_error(run(["similarity", tmp_path / "run"]), 1,
               "tensor embed.weight, a parameter in step0, is left out of step2: int32 tensor (not a trainable parameter)")


def test_temp_files_of_a_killed_trajcli_are_cleaned_by_the_next_run(tmp_path):
    _write(tmp_path / "run", seed=11)
    out = tmp_path / "out"
    (out / ".trajcli-pass").mkdir(parents=True)
    stale = [out / ".grams.npz.k2j4_x9a.tmp", out / ".similarity.json.abcdefgh.tmp",
             out / ".trajcli-pass" / ".part-0.npz.a1b2c3d4.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 64)
    (out / "notes.tmp").write_text("mine")
    (out / ".mine.tmp").write_text("mine too")
    assert run(["similarity", tmp_path / "run", "--out", out, "-q"]).exit_code == 0
    assert not any(p.exists() for p in stale)
    assert (out / "notes.tmp").exists() and (out / ".mine.tmp").exists()


def test_a_learning_rate_must_be_a_positive_finite_number(tmp_path):
    _write(tmp_path / "run", seed=12)
    for bad in ("nan", "inf", "0", "-1e-3"):
        result = run(["dynamics", tmp_path / "run", "--lr", bad])
        assert result.exit_code == 2 and "is not a learning rate" in result.stderr, (bad, result.stderr)
    huge = run(["dynamics", tmp_path / "run", "--lr", "1e308", "--json"])
    assert huge.exit_code == 0 and "RuntimeWarning" not in huge.stderr, huge.stderr


_TRUNCATE_AT_FIRST_PRODUCT = """
import os, sys
from trajcli.engine import gram
from trajcli.launch import main
original = gram.NumpyProducts.__call__
target = sys.argv[1]
def products(self, x, chunk):
    if os.path.getsize(target) > 1024:
        os.truncate(target, 1024)  # a trainer re-saving the file, a full disk: cut short mid-pass
    return original(self, x, chunk)
gram.NumpyProducts.__call__ = products
sys.argv = ["trajcli", *sys.argv[2:]]
main()
"""


def test_a_file_cut_short_while_it_is_read_fails_with_one_line_not_sigbus(tmp_path):
    """In a separate process: with reads through a mapping, touching a page past the new end killed
    the process with SIGBUS (exit 135, nothing on stderr)."""
    shapes = {"w": (512, 512), "v": (512, 512)}  # two chunks each under the smallest budget
    for k, sd in enumerate(random_trajectory(3, seed=13, shapes=shapes)):
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    target = tmp_path / "run" / "step2" / "model.safetensors"
    done = subprocess.run([sys.executable, "-c", _TRUNCATE_AT_FIRST_PRODUCT, str(target), "similarity",
                           str(tmp_path / "run"), "--memory-budget", "16MiB", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert f"of {target}: it ends before them (truncated, or cut short while it was read)" in done.stderr
    assert not (tmp_path / "out" / "grams.npz").exists()


@pytest.mark.parametrize("address", ["", "bogus", ":notaport", "tls://", "inproc://x", "tcp://host:99999"])
def test_a_scheduler_address_that_is_none_is_refused_before_anything_is_read(tmp_path, address):
    _write(tmp_path / "run", seed=14)
    _one_error(run(["similarity", tmp_path / "run", "--scheduler", address]), 2, "is not the address of a Dask scheduler")


@pytest.mark.parametrize("peer", ["silent", "garbage"])
def test_a_port_that_is_no_dask_scheduler_fails_within_the_timeout(tmp_path, monkeypatch, peer):
    """An HTTP server, the dashboard's port, anything that accepts: one line after the timeout, never
    a wait without end, a traceback or an allocation of exabytes."""
    import socket
    import threading

    pytest.importorskip("distributed")
    from trajcli.engine import distributed

    _write(tmp_path / "run", seed=15)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)
            if peer == "garbage":
                conn.sendall(b"\xff" * 64 + b"HTTP/1.0 400 Bad Request\r\n\r\n")
        for conn in held:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setattr(distributed, "SCHEDULER_TIMEOUT_S", 3.0)
    try:
        result = run(["similarity", tmp_path / "run", "--scheduler", f"tcp://127.0.0.1:{port}", "-q"])
    finally:
        stop.set()
        thread.join(5)
        server.close()
    line = _one_error(result, 1, f"tcp://127.0.0.1:{port}")
    assert "no Dask scheduler answered" in line or "cannot connect to a Dask scheduler" in line


def test_a_full_disk_or_stdout_gives_one_line(tmp_path, monkeypatch):
    _write(tmp_path / "run", seed=16)
    done = subprocess.run([sys.executable, "-m", "trajcli", "similarity", str(tmp_path / "run"), "--json", "-q"],
                          stdout=open("/dev/full", "w") if os.path.exists("/dev/full") else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    if os.path.exists("/dev/full"):
        assert done.returncode == 1 and "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
        assert done.stderr.startswith("trajcli: error: cannot write standard output: No space left on device")

    import errno

    from trajcli.report import writers

    def full(self, name, doc):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.out / name))

    monkeypatch.setattr(writers.OutputSet, "json", full)
    _one_error(run(["similarity", tmp_path / "run", "--out", tmp_path / "out"]), 1,
               f"cannot write {tmp_path / 'out' / 'similarity.json'}: No space left on device")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grams.npz"]  # no temp file, no journal


def test_an_unreadable_folder_gives_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    _write(tmp_path / "run", seed=17)
    original = Path.iterdir

    def denied(self):
        if self.name == "run":
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    _one_error(run(["similarity", tmp_path / "run"]), 1, f"cannot read {tmp_path / 'run'}: Permission denied")


def test_an_empty_out_is_a_usage_error_not_the_current_folder(tmp_path, monkeypatch):
    _write(tmp_path / "run", seed=18)
    monkeypatch.chdir(tmp_path)
    for command in (["similarity", tmp_path / "run"], ["report", tmp_path / "run"], ["plot", tmp_path / "x.json"]):
        result = run([*command, "--out", ""])
        assert result.exit_code == 2 and "an empty folder name would write into the current folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_checkpoint_folder_whose_file_links_to_another_counts_once(tmp_path):
    _write(tmp_path / "run", seed=19)
    copy = tmp_path / "run" / "step3"
    copy.mkdir()
    (copy / "model.safetensors").symlink_to(tmp_path / "run" / "step1" / "model.safetensors")
    doc = run_json(["inspect", tmp_path / "run"])
    assert [c["name"] for c in doc["checkpoints"]] == ["step0", "step1", "step2"]
    assert {"path": str(copy), "why": "same files as checkpoint step1"} in doc["left_out_paths"]


def test_global_step_true_is_no_step(tmp_path):
    for k, sd in enumerate(random_trajectory(2, seed=20)):
        folder = save_safetensors_dir(tmp_path / "run" / f"checkpoint-{k + 5}", sd)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": True}))
    doc = run_json(["inspect", tmp_path / "run"])
    assert [(c["step"], c["step_source"]) for c in doc["checkpoints"]] == [(5, "name"), (6, "name")]


def test_a_journal_that_cannot_be_written_leaves_no_empty_folder(tmp_path, monkeypatch):
    import errno

    from trajcli import atomic
    from trajcli.errors import DataError

    def full(self, name):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.AtomicFiles, "path_for", full)
    journal = PassJournal.open(tmp_path, {"labels": [], "segments": {}}, every_s=0.0)
    with pytest.raises(DataError, match="cannot write the pass journal"):
        journal.finished("w", {"w": np.eye(2)}, {})  # every_s=0: written at once
    assert list(tmp_path.iterdir()) == []


def test_a_reader_that_closes_the_pipe_early_gets_silence_not_a_traceback(tmp_path):
    """`trajcli similarity … --json | head -c 1`: the pipe is closed before trajcli writes."""
    _write(tmp_path / "run", seed=21)
    proc = subprocess.Popen([sys.executable, "-m", "trajcli", "similarity", str(tmp_path / "run"), "--json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 1 and stderr == "", stderr
