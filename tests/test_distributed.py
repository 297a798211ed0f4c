"""The pass on a Dask LocalCluster (two worker processes on loopback) against the single-process pass."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
import torch
from helpers import random_trajectory, run, save_nanogpt, save_safetensors_dir
from test_qkv import write_trajectory

from trajcli.engine.gram import accumulate
from trajcli.errors import DataError, UsageError
from trajcli.io.discover import discover_checkpoints
from trajcli.io.inventory import Selection, take_inventory

distributed = pytest.importorskip("dask.distributed", reason="dask is a test dependency (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import Client, LocalCluster

    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1")
    client = Client(local)
    yield local, client
    client.close()
    local.close()


def _inventory(folder):
    return take_inventory(discover_checkpoints([str(folder)]), Selection())


def _assert_same(a, b, rel=1e-12):
    assert a.basis.keys() == b.basis.keys() and a.nonfinite == b.nonfinite and a.n_params == b.n_params
    for leaf in a.basis:
        scale = np.abs(a.basis[leaf]).max()
        np.testing.assert_allclose(b.basis[leaf], a.basis[leaf], rtol=0, atol=rel * scale)


def test_same_grams_as_one_process_with_heads_and_nan(tmp_path, cluster):
    from trajcli.arch.families import family_by_name
    from trajcli.arch.grouping import plan_qkv
    from trajcli.arch.layouts import HeadCounts
    from trajcli.engine.distributed import accumulate_distributed

    write_trajectory("falcon_new", tmp_path / "run", n=5)
    from safetensors.torch import load_file, save_file

    shard = tmp_path / "run" / "step2" / "model.safetensors"
    state = load_file(str(shard))
    state["transformer.h.0.mlp.dense_h_to_4h.weight"][0, :2] = float("nan")
    save_file(state, str(shard), metadata={"format": "pt"})
    inv = _inventory(tmp_path / "run")
    try:
        plan, _ = plan_qkv(inv.tensors, family_by_name("falcon_new"), HeadCounts(4, 2, 4, "test"), True, True)
        alone = accumulate(inv, 1 << 14, segments=plan.segments)
        spread = accumulate_distributed(inv, cluster[1], 1 << 14, plan.segments)
    finally:
        inv.close()
    assert alone.nonfinite == {"transformer.h.0.mlp.dense_h_to_4h.weight": {2: 2}}
    _assert_same(alone, spread)


def test_the_cluster_resumes_a_stopped_pass_and_keeps_what_it_finishes(tmp_path, cluster, monkeypatch):
    """Tensors a stopped pass kept are not sent to the workers; each tensor the workers finish is
    handed to the journal once all its chunks are in (every one of them here: a part per tensor)."""
    from test_resume import SEGMENTS, TENSORS, _stop_at, _write

    from trajcli.engine.distributed import accumulate_distributed
    from trajcli.engine.journal import PassJournal
    from trajcli.engine.store import pass_plan

    _write(tmp_path / "run", nan_at=("layers.1.mlp.weight", 2))
    inv = _inventory(tmp_path / "run")
    try:
        alone = accumulate(inv, 1 << 10, segments=SEGMENTS)
        plan = pass_plan(inv, SEGMENTS)
        with monkeypatch.context() as patch:
            _stop_at(patch, "layers.0.attn.weight")
            with pytest.raises(KeyboardInterrupt):
                accumulate(inv, 1 << 10, segments=SEGMENTS, journal=PassJournal.open(tmp_path / "out", plan))
        journal = PassJournal.open(tmp_path / "out", plan, every_s=0)
        assert sorted(journal.done) == TENSORS[:3]
        sent = []
        monkeypatch.setattr(cluster[1], "submit", _recording(cluster[1].submit, sent))
        spread = accumulate_distributed(inv, cluster[1], 1 << 10, SEGMENTS, journal=journal)
    finally:
        inv.close()
    assert sorted({chunk.spec.name for task in sent for chunk in task}) == TENSORS[3:]
    _assert_same(alone, spread)
    for leaf in ("embed.weight", "head.scale", "layers.0.attn.bias"):  # read back, not recomputed
        assert np.array_equal(spread.basis[leaf], alone.basis[leaf])
    kept = PassJournal.open(tmp_path / "out", plan)
    assert sorted(kept.done) == TENSORS and kept.done["layers.1.mlp.weight"][1] == {2: 3}
    for tensor, (leaves, _) in kept.done.items():
        for leaf, gram in leaves.items():
            assert np.array_equal(gram, spread.basis[leaf]), leaf


def _recording(submit, sent):
    def recording(fn, checkpoints, task, **kwargs):
        sent.append(task)
        return submit(fn, checkpoints, task, **kwargs)

    return recording


def test_a_killed_worker_does_not_change_the_result(tmp_path, cluster):
    from trajcli.engine.distributed import accumulate_distributed

    for k, sd in enumerate(random_trajectory(4, seed=7, shapes={"w": (4000, 8), "b": (300,)})):
        save_safetensors_dir(tmp_path / f"step{k}", sd)
    local, client = cluster
    killed = []

    def kill_one_worker(_):
        if not killed:  # SIGKILL one worker process after the first results are in
            victim = sorted(client.scheduler_info()["workers"])[0]
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            killed.append(victim)

    inv = _inventory(tmp_path)
    try:
        alone = accumulate(inv, 1 << 15)
        spread = accumulate_distributed(inv, client, 1 << 15, on_bytes=kill_one_worker)  # ~250 small tasks
    finally:
        inv.close()
    assert killed
    _assert_same(alone, spread)


def test_torch_files_and_half_precision_on_the_cluster(tmp_path, cluster):
    """nanoGPT files (the workers import torch for them) and bfloat16/float16 safetensors (read
    without it): the same Grams as one process."""
    from trajcli.engine.distributed import accumulate_distributed

    sds = random_trajectory(3, seed=12)
    (tmp_path / "pt").mkdir()
    for k, sd in enumerate(sds):
        save_nanogpt(tmp_path / "pt" / f"ckpt_{k}.pt", sd, iter_num=100 * k)
        dtype = (torch.bfloat16, torch.float16, torch.bfloat16)[k]
        save_safetensors_dir(tmp_path / "half" / f"step{k}", {name: t.to(dtype) for name, t in sd.items()})
    for folder in ("pt", "half"):
        inv = _inventory(tmp_path / folder)
        try:
            _assert_same(accumulate(inv, 1 << 12), accumulate_distributed(inv, cluster[1], 1 << 12))
        finally:
            inv.close()


def test_a_failed_read_names_the_file(tmp_path, cluster):
    from trajcli.engine.distributed import accumulate_distributed

    for k, sd in enumerate(random_trajectory(3, seed=8)):
        save_safetensors_dir(tmp_path / f"step{k}", sd)
    inv = _inventory(tmp_path)
    bad = tmp_path / "step1" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:-16])  # damaged after the inventory: the workers find out
    try:
        with pytest.raises(DataError, match="step1/model.safetensors"):
            accumulate_distributed(inv, cluster[1], 1 << 20)
    finally:
        inv.close()


def test_cli_on_the_cluster_equals_one_process(tmp_path, cluster):
    write_trajectory("gpt_neox", tmp_path / "run", n=4)
    address = cluster[0].scheduler_address
    for command in (["similarity", "--mode", "update"], ["qkv", "--per-head"]):
        alone = run([command[0], tmp_path / "run", *command[1:], "--json"])
        spread = run([command[0], tmp_path / "run", *command[1:], "--json", "--scheduler", address])
        assert alone.exit_code == 0 and spread.exit_code == 0, spread.stderr
        a, b = json.loads(alone.stdout), json.loads(spread.stdout)
        if command[0] == "similarity":
            np.testing.assert_allclose(np.array(b["matrix"], float), np.array(a["matrix"], float), atol=1e-12)
        else:
            assert len(a["layers"]) == len(b["layers"]) > 0
            for x, y in zip(a["layers"], b["layers"]):
                assert y["heads"].keys() == x["heads"].keys() == {"q", "k", "v"}
                for part in "qkv":  # None (undefined) reads as NaN, and NaN must meet NaN
                    np.testing.assert_allclose(np.array(y["heads"][part], float), np.array(x["heads"][part], float),
                                               rtol=0, atol=1e-12)


@pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(), reason="no fork server here")
def test_workers_flag_forks_a_local_cluster_from_the_fork_server_with_one_thread_each(tmp_path):
    from multiprocessing import forkserver as mp_forkserver

    from trajcli.engine.distributed import accumulate_distributed, connect

    write_trajectory("gpt_neox", tmp_path / "run", n=4)
    alone = run(["similarity", tmp_path / "run", "--mode", "displacement", "--json"])
    spread = run(["similarity", tmp_path / "run", "--mode", "displacement", "--json", "--workers", "2"])
    assert alone.exit_code == 0 and spread.exit_code == 0, spread.stderr
    np.testing.assert_allclose(np.array(json.loads(spread.stdout)["matrix"], float),
                               np.array(json.loads(alone.stdout)["matrix"], float), atol=1e-12)
    with pytest.raises(UsageError, match="--device cuda is for the pass in this process"):
        from trajcli.options import PassOptions
        from trajcli.pipeline import read_pass

        read_pass([str(tmp_path / "run")], Selection(), None, PassOptions(device="cuda", workers=2))
    client = connect(None, 2)
    inv = _inventory(tmp_path / "run")
    try:
        # forked from the fork server (which imported Dask's worker and the task code once), not spawned
        server = mp_forkserver._forkserver._forkserver_pid
        assert list(client.run(lambda: __import__("os").getppid()).values()) == [server, server]
        _assert_same(accumulate(inv, 1 << 16), accumulate_distributed(inv, client, 1 << 16))
        # safetensors rows are read and differenced without torch; imported later, it runs one thread
        assert list(client.run(lambda: "torch" in sys.modules).values()) == [False, False]
        assert list(client.run(lambda: __import__("torch").get_num_threads()).values()) == [1, 1]
        blas = client.run(lambda: {p["num_threads"] for p in __import__("threadpoolctl").threadpool_info()})
        assert list(blas.values()) == [{1}, {1}]  # numpy's BLAS (and OpenMP) pools, one thread each
    finally:
        inv.close()
        cluster = client.cluster
        client.close()
        cluster.close()


def test_the_fork_server_preloads_what_workers_need_and_not_torch():
    from trajcli.engine import forkserver

    # what the workers import once, in the server (not torch: safetensors rows need none)
    assert {"distributed", "trajcli.engine.distributed"} <= set(forkserver.PRELOAD)
    assert "torch" not in forkserver.PRELOAD


def test_small_chunks_share_tasks_in_order(tmp_path):
    from trajcli.engine.distributed import _tasks
    from trajcli.engine.gram import plan_chunks

    shapes = {"norm1.bias": (64,), "norm2.bias": (40,), "norm3.bias": (8,), "proj.weight": (64, 8)}
    for k, sd in enumerate(random_trajectory(2, seed=3, shapes=shapes)):
        save_safetensors_dir(tmp_path / f"step{k}", sd)
    inv = _inventory(tmp_path)
    try:
        chunks = plan_chunks(inv, {}, 128)
    finally:
        inv.close()
    tasks = _tasks(chunks, 128)
    assert [c for t in tasks for c in t] == chunks  # every chunk once, in the planned (on-disk) order
    assert all(sum(c.n_elems for c in t) <= 128 for t in tasks)
    assert len(chunks) == 7 and len(tasks) == 5  # the three biases ride together (64 + 40 + 8 ≤ 128)


def test_missing_files_are_listed():
    from trajcli.engine.distributed import _missing_files

    assert _missing_files([sys.executable, "/nonexistent/model.safetensors"]) == ["/nonexistent/model.safetensors"]


def test_without_dask_the_flag_says_what_to_install(monkeypatch):
    from trajcli.engine import distributed as d

    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(UsageError, match="need Dask") as caught:
        d.connect(None, 2)
    assert "pip install 'trajcli[dask]'" in caught.value.hint
    monkeypatch.setitem(sys.modules, "dask.distributed", distributed)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    with pytest.raises(UsageError, match="needs threadpoolctl") as caught:
        d.connect(None, 2)
    assert "pip install 'trajcli[dask]'" in caught.value.hint


def test_a_workers_open_checkpoints_are_keyed_by_file_identity_and_bounded(tmp_path, monkeypatch):
    """A worker of a long-lived cluster: a file written again is opened again (not read through the
    old handle), and only the last OPEN_TRAJECTORIES trajectories stay open."""
    from trajcli.engine import distributed

    monkeypatch.setattr(distributed, "_OPEN", distributed.OrderedDict())
    runs = []
    for r in range(3):
        for k, sd in enumerate(random_trajectory(2, seed=r)):
            save_safetensors_dir(tmp_path / f"run{r}" / f"step{k}", sd)
        runs.append(tuple(_inventory(tmp_path / f"run{r}").checkpoints))
    first = distributed._readers_for(runs[0])
    assert distributed._readers_for(runs[0]) is first  # reused while unchanged
    sd = random_trajectory(2, seed=7)[1]
    save_safetensors_dir(tmp_path / "run0" / "step1", sd)  # written again: another identity
    again = distributed._readers_for(runs[0])
    assert again is not first
    name = sorted(sd)[0]
    row = np.empty(sd[name][0].numel())
    again[1].read_into(name, 0, row.size, row)  # the new file's values
    np.testing.assert_array_equal(row, sd[name].reshape(-1)[: row.size].double().numpy())
    distributed._readers_for(runs[1])
    distributed._readers_for(runs[2])
    assert len(distributed._OPEN) == distributed.OPEN_TRAJECTORIES
