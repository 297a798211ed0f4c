"""`trajcli dynamics`: known answers for the three regimes, effective learning rates, and the learning
rate read from what real runs save."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import run, run_json, save_lightning, save_nanogpt, save_safetensors_dir, write_trainer_state


def _group(doc, name):
    return next(g for g in doc["groups"] if g["name"] == name)


def _save_run(root, weights: list[torch.Tensor], steps: list[int]):
    for w, step in zip(weights, steps):
        folder = save_safetensors_dir(root / f"checkpoint-{step}", {"w": w.to(torch.float64)})
        write_trainer_state(folder, step)


def _rotation(angles_deg: list[float], dim: int = 8) -> list[torch.Tensor]:
    """Unit vectors in a plane, turned by the given angles one after another."""
    total, out = 0.0, []
    for a in [0.0] + angles_deg:
        total += math.radians(a)
        w = torch.zeros(dim, dtype=torch.float64)
        w[0], w[1] = math.cos(total), math.sin(total)
        out.append(w)
    return out


def _verdicts(folder, *extra) -> dict:
    """The regime of the scale-invariant group (the tensor `w` named so) and of the whole model."""
    doc = run_json(["dynamics", folder, "--scale-invariant", "^w$", *extra])
    return {name: _group(doc, name)["regime"] for name in ("scale_invariant", "model")}


def test_constant_rotation_is_equilibrium_at_that_angle(tmp_path):
    steps = [100 * k for k in range(9)]
    _save_run(tmp_path, _rotation([3.0] * 8), steps)
    doc = run_json(["dynamics", tmp_path, "--lr", "0.1", "--scale-invariant", "^w$"])
    g = _group(doc, "scale_invariant")
    assert g["regime"]["verdict"] == "equilibrium"
    assert g["regime"]["median_angle_deg"] == pytest.approx(3.0, abs=1e-9)
    np.testing.assert_allclose(g["angle_deg"], 3.0, atol=1e-9)
    np.testing.assert_allclose(g["angle_per_step_deg"], 0.03, atol=1e-11)
    np.testing.assert_allclose(g["angle_per_sqrt_step_deg"], 0.3, atol=1e-10)
    np.testing.assert_allclose(g["norm"], 1.0, atol=1e-12)
    assert g["regime"]["rate_change_factor"] == pytest.approx(1.0, abs=1e-9)


def test_shrinking_steps_at_a_constant_learning_rate_are_convergence(tmp_path):
    steps = [10 * k for k in range(9)]
    _save_run(tmp_path, _rotation([8.0 * 0.6 ** k for k in range(8)]), steps)
    regimes = _verdicts(tmp_path, "--lr", "0.01")
    assert regimes["scale_invariant"]["verdict"] == "convergence"
    assert regimes["scale_invariant"]["rate_change_factor"] < 0.5
    # no verdict for what the theory does not cover; without a learning rate, no convergence either
    assert regimes["model"]["verdict"] is None and "not classified" in regimes["model"]["reason"]
    unknown = _verdicts(tmp_path)["scale_invariant"]
    assert unknown["verdict"] == "undetermined" and unknown["reason"].startswith("no learning rate")


def test_a_decaying_schedule_at_constant_effective_rate_is_not_convergence(tmp_path):
    """The angle per step falls with the learning rate (×0.6 per interval) while η/‖w‖² × Δsteps falls
    with it: on the sphere the run moves as much per effective step throughout."""
    steps = [10 * k for k in range(9)]
    lrs = [0.1 * 0.6 ** k for k in range(9)]
    _save_run(tmp_path, _rotation([8.0 * 0.6 ** k for k in range(8)]), steps)
    (tmp_path / "lr.csv").write_text("step,lr\n" + "".join(f"{s},{r!r}\n" for s, r in zip(steps, lrs)))
    regime = _verdicts(tmp_path, "--lr-file", tmp_path / "lr.csv")["scale_invariant"]
    assert regime["verdict"] == "equilibrium" and regime["rate_change_factor"] == pytest.approx(1.0, rel=1e-9)


def test_the_verdict_does_not_depend_on_checkpoint_spacing(tmp_path):
    steps = [50 * k for k in range(17)]
    _save_run(tmp_path / "all", _rotation([2.0] * 16), steps)
    for every in (1, 2, 4):
        regime = _verdicts(tmp_path / "all", "--lr", "0.1", "--every", str(every))["scale_invariant"]
        assert regime["verdict"] == "equilibrium", (every, regime)


def test_independent_random_directions_are_divergence(tmp_path):
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(4000, generator=gen, dtype=torch.float64) for _ in range(8)]
    _save_run(tmp_path, weights, [k for k in range(8)])
    regime = _verdicts(tmp_path)["scale_invariant"]  # a random walk needs no learning rate to be seen
    assert regime["verdict"] == "divergence"
    assert 80 < regime["median_angle_deg"] < 100


def test_effective_learning_rate_follows_a_known_schedule(tmp_path):
    steps = [0, 10, 20, 40, 80]
    norms = [1.0, 2.0, 3.0, 2.0, 4.0]
    weights = [n * w for n, w in zip(norms, _rotation([5.0] * 4))]
    _save_run(tmp_path, weights, steps)
    lr_file = tmp_path / "lr.csv"
    lr_file.write_text("step,lr\n0,1.0\n40,0.5\n80,0.1\n")  # linear between the points
    doc = run_json(["dynamics", tmp_path, "--lr-file", lr_file])
    lr = [1.0, 0.875, 0.75, 0.5, 0.1]
    assert doc["lr"] == pytest.approx(lr)
    g = _group(doc, "model")
    np.testing.assert_allclose(g["effective_lr"], [r / n ** 2 for r, n in zip(lr, norms)], rtol=1e-12)
    np.testing.assert_allclose(g["effective_step"], [lr[k] / norms[k] ** 2 * (steps[k + 1] - steps[k]) for k in range(4)],
                               rtol=1e-12)
    assert doc["lr_source"].startswith("--lr-file")


def test_learning_rate_from_a_real_trainer_run(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(3)
    config = transformers.GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=32, max_position_embeddings=32)
    model = transformers.GPTNeoXForCausalLM(config)
    data = [{"input_ids": torch.randint(0, 50, (12,)), "labels": torch.randint(0, 50, (12,))} for _ in range(16)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=12,
                                          save_steps=4, logging_steps=4, learning_rate=1e-2, lr_scheduler_type="linear",
                                          report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    transformers.Trainer(model=model, args=args, train_dataset=data).train()
    state = json.loads((tmp_path / "out" / "checkpoint-12" / "trainer_state.json").read_text())
    logged = {e["step"]: e["learning_rate"] for e in state["log_history"] if "learning_rate" in e}
    doc = run_json(["dynamics", tmp_path / "out"])
    assert doc["lr_source"] == "trainer_state.json log_history"
    assert doc["steps"] == [4, 8, 12]
    assert doc["lr"] == pytest.approx([logged[4], logged[8], logged[12]], rel=1e-12)
    g = _group(doc, "model")
    assert g["effective_lr"][1] == pytest.approx(logged[8] / g["norm"][1] ** 2, rel=1e-12)


@pytest.mark.parametrize("producer", ["nanogpt", "lightning"])
def test_learning_rate_from_optimizer_states(tmp_path, producer):
    gen = torch.Generator().manual_seed(4)
    lrs = [6e-4, 5e-4, 2e-4]
    for k, lr in enumerate(lrs):
        sd = {"w": torch.randn(3, 3, generator=gen)}
        path = tmp_path / f"ckpt_{k}.pt"
        if producer == "nanogpt":
            save_nanogpt(path, sd, iter_num=100 * k)
            blob = torch.load(path, weights_only=True)
            blob["optimizer"]["param_groups"][0]["lr"] = lr
        else:
            save_lightning(path, sd, global_step=100 * k)
            blob = torch.load(path, weights_only=True)
            blob["optimizer_states"][0]["param_groups"][0]["lr"] = lr
        torch.save(blob, path)
    doc = run_json(["dynamics", tmp_path])
    assert doc["lr_source"] == "optimizer param_groups in the checkpoints"
    assert doc["lr"] == pytest.approx(lrs)


def test_scale_invariant_set_and_outputs(tmp_path):
    gen = torch.Generator().manual_seed(5)
    for k in range(4):
        sd = {"layer1.0.conv1.weight": torch.randn(4, 3, 3, 3, generator=gen),
              "layer1.0.bn1.weight": torch.ones(4), "layer1.0.bn1.running_mean": torch.zeros(4),
              "fc.weight": torch.randn(2, 4, generator=gen)}
        save_safetensors_dir(tmp_path / "run" / f"step{k}", sd)
    result = run(["dynamics", tmp_path / "run", "--out", tmp_path / "out", "--json"])
    assert result.exit_code == 0, result.stderr
    assert "no learning rate found" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["scale_invariant"] == ["layer1.0.conv1.weight"]
    assert _group(doc, "scale_invariant")["n_params"] == 108
    assert _group(doc, "model")["effective_lr"] is None
    rows = (tmp_path / "out" / "dynamics.csv").read_text().splitlines()
    assert rows[0].startswith("group,kind,checkpoint,step,norm,distance_to_first,effective_lr,angle_deg")
    assert len(rows) == 1 + 4 * len(doc["groups"])
    assert (tmp_path / "out" / "dynamics.png").read_bytes()[:4] == b"\x89PNG"
    summary = run(["dynamics", tmp_path / "run"])  # the table's title says what was found
    assert summary.exit_code == 0 and "— no learning rate found" in summary.stdout
    assert "from nowhere" not in summary.stdout
    doc = run_json(["dynamics", tmp_path / "run", "--scale-invariant", r"^fc\."])
    assert doc["scale_invariant"] == ["fc.weight"]
    assert run(["dynamics", tmp_path / "run", "--lr", "1", "--lr-file", tmp_path / "x.csv"]).exit_code == 2


@pytest.mark.parametrize("falling", [True, False])
def test_settled_steps_with_a_loss_still_falling_are_no_equilibrium_yet(tmp_path, falling):
    """Constant rotation at a constant learning rate reads as equilibrium, unless the run's logged
    training loss still falls across the window (the theory's equilibrium has the loss plateau)."""
    steps = [100 * k for k in range(9)]
    _save_run(tmp_path, _rotation([3.0] * 8), steps)
    history = [{"step": s, "loss": (2.0 * 0.8 ** k if falling else 1.0), "learning_rate": 0.1}
               for k, s in enumerate(steps)]
    for step in steps:
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "log_history": history}))
    regime = _verdicts(tmp_path)["scale_invariant"]
    if falling:
        assert regime["verdict"] == "undetermined" and "the training loss still falls" in regime["reason"]
        assert regime["loss_change_factor"] == pytest.approx(0.8 ** 4, rel=1e-12)  # steps 400 → 800
    else:
        assert regime["verdict"] == "equilibrium" and regime["loss_change_factor"] == pytest.approx(1.0)


def _random_walk(n_ckpt: int, steps_between: int, step_deg: float, dim: int = 4000, seed: int = 0):
    """Checkpoints of a walk on the sphere: every optimizer step turns w by `step_deg` towards a fresh
    random direction (what an equilibrium, and at large angles divergence, looks like)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=gen, dtype=torch.float64)
    w /= w.norm()
    out = [w.clone()]
    for _ in range(n_ckpt - 1):
        for _ in range(steps_between):
            r = torch.randn(dim, generator=gen, dtype=torch.float64)
            r -= (r @ w) * w
            r /= r.norm()
            a = math.radians(step_deg)
            w = math.cos(a) * w + math.sin(a) * r
        out.append(w.clone())
    return out


def test_many_small_steps_adding_up_are_not_called_divergence(tmp_path):
    """12° per step, checkpoints 40 steps apart: ~66° between checkpoints, as a random walk would give;
    the spacing cannot tell them apart, so undetermined — with steps of 80° one apart, divergence."""
    _save_run(tmp_path / "sparse", _random_walk(8, 40, 12.0), [40 * k for k in range(8)])
    sparse = _verdicts(tmp_path / "sparse", "--lr", "0.1")["scale_invariant"]
    assert sparse["median_angle_deg"] > 60
    assert sparse["verdict"] == "undetermined" and "cannot tell a random walk" in sparse["reason"]
    _save_run(tmp_path / "walk", _random_walk(8, 1, 80.0, seed=1), list(range(8)))
    assert _verdicts(tmp_path / "walk", "--lr", "0.1")["scale_invariant"]["verdict"] == "divergence"
