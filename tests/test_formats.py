"""Every producer in the README's "Checkpoints it reads": checkpoints found, put in training order, and every entry of the
trajectory map equal to an explicit float64 computation on the stored tensors, in all three modes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import (
    as_array,
    explicit_matrix,
    random_trajectory,
    run_json,
    save_deepspeed,
    save_hub_cache,
    save_hub_sharded,
    save_lightning,
    save_nanogpt,
    save_safetensors_dir,
    write_trainer_state,
)

STEPS = [0, 20, 100, 1000]  # as text, "checkpoint-100" < "checkpoint-20": the order must be numeric
MODES = ("raw", "displacement", "update")


def _hf_trainer_like(root, sds):
    for step, sd in zip(STEPS, sds):
        folder = save_safetensors_dir(root / f"checkpoint-{step}", sd)
        write_trainer_state(folder, step)
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
        torch.save({"last_epoch": step}, folder / "scheduler.pt")
        torch.save({"python": 1}, folder / "rng_state.pth")
        torch.save({"lr": 1.0}, folder / "training_args.bin")
    return root, [f"checkpoint-{s}" for s in STEPS]


def _sharded_safetensors(root, sds):
    for step, sd in zip(STEPS, sds):
        save_hub_sharded(root / f"step{step}", sd, safe=True)
    assert (root / "step0" / "model.safetensors.index.json").exists()
    return root, [f"step{s}" for s in STEPS]


def _sharded_bin(root, sds):
    for step, sd in zip(STEPS, sds):
        save_hub_sharded(root / f"step{step}", sd, safe=False)
    assert (root / "step0" / "pytorch_model.bin.index.json").exists()
    return root, [f"step{s}" for s in STEPS]


def _single_bin(root, sds):
    for step, sd in zip(STEPS, sds):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        torch.save(sd, root / f"checkpoint-{step}" / "pytorch_model.bin")
    return root, [f"checkpoint-{s}" for s in STEPS]


def _nanogpt(root, sds):
    root.mkdir()
    # Names carry no order; iter_num inside each file does.
    names = ["ckpt_b.pt", "ckpt_d.pt", "ckpt_a.pt", "ckpt_c.pt"]
    for name, step, sd in zip(names, STEPS, sds):
        save_nanogpt(root / name, sd, iter_num=step)
    return root, names


def _lightning(root, sds):
    root.mkdir()
    for step, sd in zip(STEPS, sds):
        save_lightning(root / f"epoch=0-step={step}.ckpt", sd, step)
    (root / "last.ckpt").symlink_to(root / f"epoch=0-step={STEPS[-1]}.ckpt")
    return root, [f"epoch=0-step={s}.ckpt" for s in STEPS]  # last.ckpt: the same file, counted once


def _deepspeed(root, sds):
    for step, sd in zip(STEPS, sds):
        save_deepspeed(root, sd, step)
    return root, [f"global_step{s}" for s in STEPS]


def _plain_flat(root, sds):
    root.mkdir()
    for step, sd in zip(STEPS, sds):
        torch.save({f"module.{k}": v for k, v in sd.items()}, root / f"model_{step}.pth")  # DDP prefix
    (root / "notes.txt").write_text("lr sweep 3")
    (root / "events.out.tfevents.1").write_bytes(b"\x00\x01")
    torch.save({"state": {}}, root / "optimizer.pt")
    return root, [f"model_{s}.pth" for s in STEPS]


def _hub_cache(root, sds):
    repo = save_hub_cache(root, {f"step{s}": sd for s, sd in zip(STEPS, sds)})
    return repo, [f"step{s}" for s in STEPS]


PRODUCERS = {
    "trainer-safetensors": _hf_trainer_like,
    "sharded-safetensors": _sharded_safetensors,
    "sharded-bin": _sharded_bin,
    "single-bin": _single_bin,
    "nanogpt": _nanogpt,
    "lightning": _lightning,
    "deepspeed": _deepspeed,
    "plain-flat": _plain_flat,
    "hub-cache": _hub_cache,
}


@pytest.mark.parametrize("producer", list(PRODUCERS))
def test_every_producer_matches_explicit_float64(tmp_path, producer):
    sds = random_trajectory(len(STEPS), seed=1)
    root, names = PRODUCERS[producer](tmp_path / "run", sds)
    for mode in MODES:
        doc = run_json(["similarity", root, "--mode", mode])
        assert [c["name"] for c in doc["checkpoints"]] == names, producer
        assert [c["step"] for c in doc["checkpoints"]] == STEPS
        np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(sds, mode), rtol=0, atol=1e-9)


def test_bf16_and_mixed_dtypes_match_the_stored_values(tmp_path):
    sds = random_trajectory(4, seed=2)
    stored = []
    for k, sd in enumerate(sds):
        dtype = [torch.bfloat16, torch.float16, torch.float32, torch.bfloat16][k]
        stored.append({name: t.to(dtype) for name, t in sd.items()})
        save_safetensors_dir(tmp_path / f"step{k}", stored[-1])
    for mode in MODES:
        doc = run_json(["similarity", tmp_path, "--mode", mode])
        np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(stored, mode), rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_rows_are_the_stored_values_bit_for_bit(tmp_path, dtype):
    """Ranges are read and converted by numpy (no torch): every value exactly as torch converts it,
    for row ranges and pieces of rows of matrices, slices of vectors and scalars (extreme values)."""
    from trajcli.io.discover import discover_checkpoints
    from trajcli.io.sources import open_checkpoint

    gen = torch.Generator().manual_seed(11)
    sd = {"m.weight": torch.randn(7, 5, generator=gen, dtype=torch.float64) * 1e3,
          "v.bias": torch.randn(9, generator=gen, dtype=torch.float64), "s.scale": torch.tensor(-0.3, dtype=torch.float64),
          "e.weight": torch.tensor([[torch.finfo(dtype).max, torch.finfo(dtype).tiny, -0.0, 1 / 3]], dtype=torch.float64)}
    stored = {k: v.to(dtype) for k, v in sd.items()}
    save_safetensors_dir(tmp_path / "step0", stored)
    reader = open_checkpoint(discover_checkpoints([str(tmp_path / "step0")]).checkpoints[0])
    try:
        for name, start, stop in (("m.weight", 0, 7 * 5), ("m.weight", 2 * 5, 5 * 5), ("m.weight", 3, 9),
                                  ("v.bias", 3, 9), ("s.scale", 0, 1), ("e.weight", 1, 3)):
            want = stored[name].reshape(-1)[start:stop]  # elements of the flattened tensor
            out = np.full(want.numel(), np.nan)
            reader.read_into(name, start, stop, out)
            assert out.tobytes() == want.to(torch.float64).reshape(-1).numpy().tobytes(), name
    finally:
        reader.close()


def test_a_safetensors_file_cut_short_after_opening_names_file_and_tensor(tmp_path):
    from trajcli.errors import DataError
    from trajcli.io.discover import discover_checkpoints
    from trajcli.io.sources import open_checkpoint

    path = save_safetensors_dir(tmp_path / "step0", {"a.weight": torch.ones(64, 4), "b.weight": torch.ones(64, 4)})
    reader = open_checkpoint(discover_checkpoints([str(tmp_path / "step0")]).checkpoints[0])
    path = path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-600])  # the second tensor's rows are gone
    try:
        last = max(reader.tensors, key=lambda n: reader.tensors[n].stored_name)
        with pytest.raises(DataError, match=f"{last}.*elements 128:256 of {path}.*truncated"):
            reader.read_into(last, 128, 256, np.empty(128))
    finally:
        reader.close()


def test_near_identical_finetune_displacements_are_exact(tmp_path):
    """Updates of 1e-9 of ‖θ‖ in float64 checkpoints: a raw Gram minus its rows would lose every digit;
    forming the differences per chunk keeps the displacement and update maps exact."""
    sds = random_trajectory(5, seed=3, step_scale=1e-9, dtype=torch.float64)
    for k, sd in enumerate(sds):
        save_safetensors_dir(tmp_path / f"checkpoint-{k}", sd)
    raw = run_json(["similarity", tmp_path])
    assert min(v for row in raw["matrix"] for v in row) > 1 - 1e-15
    for mode in ("displacement", "update"):
        doc = run_json(["similarity", tmp_path, "--mode", mode, "--memory-budget", "16MiB"])
        np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(sds, mode), rtol=0, atol=1e-9)


def test_hub_cache_refs_name_the_revisions(tmp_path):
    sds = random_trajectory(3, seed=4)
    repo = save_hub_cache(tmp_path, {"step2": sds[1], "step512": sds[2], "step1": sds[0]})
    doc = run_json(["similarity", repo.parent / repo.name])
    assert [c["name"] for c in doc["checkpoints"]] == ["step1", "step2", "step512"]
    assert all(os.path.islink(os.path.join(c["path"], "model.safetensors")) for c in doc["checkpoints"])


def test_the_hub_cache_root_serves_its_one_model_and_lists_several(tmp_path):
    """~/.cache/huggingface/hub itself: one model's revisions are the trajectory; with several models,
    one line names them and the hint shows a folder to pass."""
    from helpers import run

    sds = random_trajectory(3, seed=6)
    save_hub_cache(tmp_path, {"step1": sds[0], "step2": sds[1], "step4": sds[2]})
    (tmp_path / ".locks").mkdir()
    (tmp_path / "version.txt").write_text("1")
    doc = run_json(["similarity", tmp_path, "--mode", "update"])
    assert [c["name"] for c in doc["checkpoints"]] == ["step1", "step2", "step4"]
    np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(sds, "update"), rtol=0, atol=1e-9)
    save_hub_cache(tmp_path, {"main": sds[0]}, repo_id="EleutherAI/pythia-14m")
    result = run(["similarity", tmp_path])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "is a Hugging Face cache of 2 models (EleutherAI/pythia-14m, org/tiny)" in result.stderr
    assert f"pass one model's folder, e.g. {tmp_path / 'models--EleutherAI--pythia-14m'}" in result.stderr


def test_legacy_non_zip_torch_files_are_read(tmp_path):
    """Files saved before torch 1.6's zip format cannot be mapped; they are read whole, still weights-only."""
    sds = random_trajectory(3, seed=5)
    for k, sd in enumerate(sds):
        torch.save(sd, tmp_path / f"model_{k}.bin", _use_new_zipfile_serialization=False)
    doc = run_json(["similarity", tmp_path, "--mode", "update"])
    np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(sds, "update"), rtol=0, atol=1e-9)
    from helpers import run

    assert "pre-1.6 torch format" in run(["similarity", tmp_path]).stderr
