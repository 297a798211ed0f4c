"""A pass that stops (Ctrl-C, an error) keeps the tensors it finished in --out; the next pass over the
same checkpoints reads only the others and gives the same Grams, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import SHAPES, random_trajectory, run, save_safetensors_dir

from trajcli.engine import gram
from trajcli.engine.journal import JOURNAL_DIR, PassJournal
from trajcli.engine.store import pass_plan
from trajcli.io.discover import discover_checkpoints
from trajcli.io.inventory import Selection, take_inventory
from trajcli.types import Segment

TENSORS = sorted(SHAPES)  # the order of the pass (the inventory sorts tensor names)
# one tensor cut into two leaves by rows, as a Q/K/V plan cuts a fused projection
SEGMENTS = {"layers.0.attn.weight": Segment(0, ((0, 6, "attn.q"), (6, 18, "attn.kv")))}


def _write(folder, n=5, nan_at=None):
    for k, sd in enumerate(random_trajectory(n, seed=4)):
        if nan_at is not None and k == nan_at[1]:
            sd[nan_at[0]].view(-1)[:3] = float("nan")
        save_safetensors_dir(folder / f"step{k}", sd)


def _inventory(folder):
    return take_inventory(discover_checkpoints([str(folder)]), Selection())


def _stop_at(monkeypatch, tensor, exc=KeyboardInterrupt, products_class=gram.NumpyProducts):
    """The products raise `exc` on the first chunk of `tensor` (a Ctrl-C, an error in the middle)."""
    original = products_class.__call__

    def products(self, x, chunk):
        if chunk.spec.name == tensor:
            raise exc()
        return original(self, x, chunk)

    monkeypatch.setattr(products_class, "__call__", products)


def _reads(monkeypatch) -> list[str]:
    """The tensor of every chunk read from the checkpoints, in order."""
    seen: list[str] = []
    original = gram.read_chunk

    def read(readers, chunk, x, pool=None):
        seen.append(chunk.spec.name)
        return original(readers, chunk, x, pool)

    monkeypatch.setattr(gram, "read_chunk", read)
    return seen


def _assert_identical(a, b):
    assert a.basis.keys() == b.basis.keys()
    assert a.n_params == b.n_params and a.tensor_of == b.tensor_of and a.nonfinite == b.nonfinite
    for leaf in a.basis:
        assert np.array_equal(a.basis[leaf], b.basis[leaf]), leaf  # bit for bit


def test_a_stopped_pass_goes_on_where_it_stopped(tmp_path, monkeypatch):
    assert TENSORS.index("layers.0.norm.weight") == 4
    _write(tmp_path / "run", nan_at=("layers.0.attn.bias", 3))
    inv = _inventory(tmp_path / "run")
    assert [t.name for t in inv.tensors] == TENSORS
    budget = 5 * 8 * 4 * 8  # 40 elements a chunk: most tensors take several
    whole = gram.accumulate(inv, budget, segments=SEGMENTS, read_threads=0)
    plan = pass_plan(inv, SEGMENTS)

    with monkeypatch.context() as patch:
        _stop_at(patch, "layers.0.norm.weight")
        journal = PassJournal.open(tmp_path / "out", plan)  # flushes every 30 s: only at the stop here
        with pytest.raises(KeyboardInterrupt):
            gram.accumulate(inv, budget, segments=SEGMENTS, read_threads=0, journal=journal)
    assert journal.n_kept == 4 and len(list((tmp_path / "out" / JOURNAL_DIR).glob("part-*.npz"))) == 1

    journal = PassJournal.open(tmp_path / "out", plan)
    assert sorted(journal.done) == TENSORS[:4]
    assert journal.done["layers.0.attn.bias"][1] == {3: 3}  # NaN counts are kept with the Grams
    with monkeypatch.context() as patch:
        reads = _reads(patch)
        resumed = gram.accumulate(inv, budget, segments=SEGMENTS, read_threads=0, journal=journal)
    assert sorted(set(reads)) == TENSORS[4:]  # only the tensors not finished before
    _assert_identical(whole, resumed)
    assert resumed.nonfinite == {"layers.0.attn.bias": {3: 3}}
    inv.close()


def test_grams_kept_from_the_device_path(tmp_path, monkeypatch):
    """The torch products of --device cuda (torch on the CPU here) keep their sums as tensors: the
    journal writes them as arrays, and a numpy pass goes on from them."""
    _write(tmp_path / "run")
    inv = _inventory(tmp_path / "run")
    plan = pass_plan(inv, SEGMENTS)
    with monkeypatch.context() as patch:
        patch.setattr(gram, "_products_for", lambda device: gram._TorchProducts("cpu"))
        _stop_at(patch, "layers.1.mlp.weight", products_class=gram._TorchProducts)
        journal = PassJournal.open(tmp_path / "out", plan, every_s=0)
        with pytest.raises(KeyboardInterrupt):
            gram.accumulate(inv, 1 << 10, segments=SEGMENTS, read_threads=0, device="cuda", journal=journal)
    journal = PassJournal.open(tmp_path / "out", plan)
    assert sorted(journal.done) == TENSORS[:5]
    assert all(type(g) is np.ndarray for leaves, _ in journal.done.values() for g in leaves.values())
    resumed = gram.accumulate(inv, 1 << 10, segments=SEGMENTS, read_threads=0, journal=journal)
    whole = gram.accumulate(inv, 1 << 10, segments=SEGMENTS, read_threads=0)
    inv.close()
    for leaf in whole.basis:
        np.testing.assert_allclose(resumed.basis[leaf], whole.basis[leaf], rtol=1e-12, atol=1e-12)


def test_the_journal_is_written_as_the_pass_goes_and_serves_only_its_own_plan(tmp_path, monkeypatch):
    _write(tmp_path / "run")
    inv = _inventory(tmp_path / "run")
    plan = pass_plan(inv, SEGMENTS)
    with monkeypatch.context() as patch:
        _stop_at(patch, "layers.1.mlp.weight", exc=MemoryError)
        journal = PassJournal.open(tmp_path / "out", plan, every_s=0)  # a part per finished tensor
        with pytest.raises(MemoryError):
            gram.accumulate(inv, 1 << 12, segments=SEGMENTS, read_threads=0, journal=journal)
    folder = tmp_path / "out" / JOURNAL_DIR
    assert len(list(folder.glob("part-*.npz"))) == TENSORS.index("layers.1.mlp.weight")
    assert not list(folder.glob(".*"))  # no temp file left behind
    assert len(PassJournal.open(tmp_path / "out", plan).done) == 5

    # another cut of the tensors, another selection: not this journal's plan, which is removed
    assert not PassJournal.open(tmp_path / "out", pass_plan(inv, {})).done and not folder.exists()
    with monkeypatch.context() as patch:
        _stop_at(patch, "layers.1.mlp.weight")
        journal = PassJournal.open(tmp_path / "out", plan)
        with pytest.raises(KeyboardInterrupt):
            gram.accumulate(inv, 1 << 12, segments=SEGMENTS, read_threads=0, journal=journal)
    inv.close()
    assert len(PassJournal.open(tmp_path / "out", plan).done) == 5
    assert not PassJournal.open(tmp_path / "out", {**plan, "tensors": plan["tensors"][1:]}).done

    # a checkpoint rewritten since (another mtime): read again
    shard = tmp_path / "run" / "step2" / "model.safetensors"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    inv = _inventory(tmp_path / "run")
    assert not PassJournal.open(tmp_path / "out", pass_plan(inv, SEGMENTS)).done
    inv.close()


def test_an_unreadable_part_is_read_again(tmp_path, monkeypatch):
    _write(tmp_path / "run")
    inv = _inventory(tmp_path / "run")
    plan = pass_plan(inv, {})
    with monkeypatch.context() as patch:
        _stop_at(patch, "layers.0.norm.weight")
        journal = PassJournal.open(tmp_path / "out", plan, every_s=0)
        with pytest.raises(KeyboardInterrupt):
            gram.accumulate(inv, 1 << 12, read_threads=0, journal=journal)
    folder = tmp_path / "out" / JOURNAL_DIR
    (folder / "part-1.npz").write_bytes(b"PK\x03\x04 cut short")
    with np.load(folder / "part-3.npz") as data:  # a Gram of the wrong size: not the plan's
        meta = data["meta"]
    np.savez(folder / "part-3.npz", meta=meta, g0=np.zeros((2, 2)))
    journal = PassJournal.open(tmp_path / "out", plan)
    assert sorted(journal.done) == [TENSORS[0], TENSORS[2]]
    with monkeypatch.context() as patch:
        reads = _reads(patch)
        resumed = gram.accumulate(inv, 1 << 12, read_threads=0, journal=journal)
    assert sorted(set(reads)) == [TENSORS[1], *TENSORS[3:]]
    _assert_identical(gram.accumulate(inv, 1 << 12, read_threads=0), resumed)
    inv.close()


def test_commands_resume_an_interrupted_pass(tmp_path, monkeypatch):
    _write(tmp_path / "run")
    fresh = run(["similarity", tmp_path / "run", "--out", tmp_path / "fresh", "--json"])
    assert fresh.exit_code == 0, fresh.stderr
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _stop_at(patch, "layers.0.norm.weight")
        stopped = run(["similarity", tmp_path / "run", "--out", out, "--json"])
    assert stopped.exit_code == 130 and stopped.stdout == ""
    assert f"4 of 6 tensors are read and kept in {out / JOURNAL_DIR}" in stopped.stderr
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL_DIR]  # no result, no grams.npz

    with monkeypatch.context() as patch:
        reads = _reads(patch)
        resumed = run(["similarity", tmp_path / "run", "--out", out, "--json"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming an interrupted pass: 4 of 6 tensors were read before" in resumed.stderr
    assert sorted(set(reads)) == TENSORS[4:]
    assert resumed.stdout == fresh.stdout  # the same document, bit for bit
    assert (out / "grams.npz").is_file() and not (out / JOURNAL_DIR).exists()  # complete: forgotten

    # --recompute starts over: a journal left by another stopped pass is not used, and is removed
    with monkeypatch.context() as patch:
        _stop_at(patch, "layers.0.norm.weight")
        assert run(["similarity", tmp_path / "run", "--out", out, "--recompute"]).exit_code == 130
    assert (out / JOURNAL_DIR).is_dir()
    with monkeypatch.context() as patch:
        reads = _reads(patch)
        again = run(["similarity", tmp_path / "run", "--out", out, "--recompute", "--json"])
    assert again.exit_code == 0 and "resuming" not in again.stderr and sorted(set(reads)) == TENSORS
    assert again.stdout == fresh.stdout and not (out / JOURNAL_DIR).exists()


_PAUSE_AT = """
import os, sys, time
from trajcli.engine import gram
from trajcli.launch import main
original = gram.NumpyProducts.__call__
tensor, ready = sys.argv[1:3]
def products(self, x, chunk):
    if chunk.spec.name == tensor:
        open(ready, "w").close()  # the test sends its signal now
        time.sleep(60)
    return original(self, x, chunk)
gram.NumpyProducts.__call__ = products
sys.argv = ["trajcli", *sys.argv[3:]]
main()
"""


def test_sigterm_mid_pass_keeps_the_finished_tensors(tmp_path):
    """A real signal to a real process, in the middle of its pass (held on a tensor until then)."""
    _write(tmp_path / "run")
    out, ready = tmp_path / "out", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSE_AT, "layers.0.norm.weight", str(ready),
                             "similarity", str(tmp_path / "run"), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "4 of 6 tensors are read and kept" in stderr and "Traceback" not in stderr and stdout == ""
    inv = _inventory(tmp_path / "run")
    assert sorted(PassJournal.open(out, pass_plan(inv, {})).done) == TENSORS[:4]
    inv.close()


def test_stopped_while_saving_the_grams_keeps_the_whole_pass(tmp_path, monkeypatch):
    """The pass is complete but grams.npz is not yet written: every tensor is kept, none read again."""
    _write(tmp_path / "run")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr("trajcli.engine.store.save_grams", _raise(KeyboardInterrupt))
        stopped = run(["similarity", tmp_path / "run", "--out", out])
    assert stopped.exit_code == 130 and "6 of 6 tensors are read and kept" in stopped.stderr
    with monkeypatch.context() as patch:
        reads = _reads(patch)
        resumed = run(["similarity", tmp_path / "run", "--out", out])
    assert resumed.exit_code == 0 and "6 of 6 tensors were read before" in resumed.stderr and reads == []
    assert (out / "grams.npz").is_file() and not (out / JOURNAL_DIR).exists()


def _raise(exc):
    def raising(*args, **kwargs):
        raise exc()

    return raising


def test_a_quick_pass_writes_no_journal(tmp_path, monkeypatch):
    """Parts are written every 30 s: a pass that ends sooner, and well, never touches the disk for it."""
    _write(tmp_path / "run")
    calls = []
    monkeypatch.setattr(PassJournal, "flush", lambda self: calls.append(len(self._pending)))
    assert run(["layers", tmp_path / "run", "--out", tmp_path / "out"]).exit_code == 0
    assert calls == [] and not (tmp_path / "out" / JOURNAL_DIR).exists()
