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


def _rotation(angles_deg: list[float], dim: int = 64) -> list[torch.Tensor]:
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


def _train_sphere_toy(root, elr: float, steps: int, every: int, batch: int | None, decay: float = 0.0):
    """A scale-invariant classifier — logits 4·x·w/‖w‖, w of 64×8, cross-entropy on a fixed 8-class
    Gaussian mixture — trained by SGD (`batch` rows, None: full batch) at the effective learning rate
    `elr`: after each step w is put back on the sphere of radius √(lr/elr), so that lr/‖w‖² = elr
    whatever the schedule lr = elr · exp(−decay · step). A checkpoint every `every` steps, with the
    training loss (mean over the steps since the last log) and lr in trainer_state.json."""
    gen = torch.Generator().manual_seed(0)
    means = 0.6 * torch.randn(8, 64, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 8, (512,), generator=gen)
    x = means[y] + torch.randn(512, 64, generator=gen, dtype=torch.float64)
    w = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    w /= w.norm()
    history, losses = [], []
    for step in range(steps + 1):
        lr = elr * math.exp(-decay * step)
        w = w * math.sqrt(lr / elr) / w.norm()
        if step % every == 0:
            loss = sum(losses) / len(losses) if losses else float("nan")
            history.append({"step": step, "learning_rate": lr, **({"loss": loss} if losses else {})})
            losses = []
            folder = save_safetensors_dir(root / f"checkpoint-{step}", {"w": w.clone()})
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
        rows = torch.randint(0, 512, (batch,), generator=gen) if batch else slice(None)
        w.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(4.0 * x[rows] @ (w / w.norm()), y[rows])
        (grad,) = torch.autograd.grad(loss, w)
        losses.append(float(loss.detach()))
        w = w.detach() - lr * grad


@pytest.mark.parametrize("elr, steps, every, batch, verdicts", [
    # small ELR, full batch: the steps shrink towards the minimum
    (0.03, 640, 10, None, {1: {"convergence"}, 2: {"convergence"}, 8: {"convergence"}}),
    # medium ELR, 16-row batches: the angle per step settles, the loss plateaus, the weights stay near one direction
    (0.1, 640, 10, 16, {1: {"equilibrium"}, 2: {"equilibrium"}, 8: {"equilibrium"}}),
    # large ELR: every step turns w by ~90°; one step apart that is seen; further apart big steps cannot
    # be told from a wide equilibrium unless the checkpoints are uncorrelated (here near the noise floor)
    (300.0, 64, 1, 16, {1: {"divergence"}, 2: {"divergence", "undetermined"}, 8: {"divergence", "undetermined"}}),
])
def test_a_trained_scale_invariant_toy_gets_its_regime_at_any_checkpoint_spacing(tmp_path, elr, steps, every, batch,
                                                                                    verdicts):
    _train_sphere_toy(tmp_path, elr, steps, every, batch)
    for subsample, expected in verdicts.items():
        regimes = _verdicts(tmp_path, "--every", str(subsample))
        regime = regimes["scale_invariant"]
        assert regime["verdict"] in expected, (subsample, regime)
        if regime["verdict"] == "undetermined":
            assert "checkpoints one optimizer step apart can tell" in regime["reason"]
        assert regimes["model"]["verdict"] is None  # the same tensor, but "the model" is not a group the theory covers


def test_a_decaying_schedule_at_constant_effective_rate_is_not_convergence(tmp_path):
    """lr falls ×e^-3 over the run while ‖w‖² falls with it: the same trajectory on the sphere as at a
    constant rate, so the same verdict — read through η/‖w‖² from the measured norms."""
    _train_sphere_toy(tmp_path / "decay", 0.1, 640, 10, 16, decay=3.0 / 640)
    _train_sphere_toy(tmp_path / "flat", 0.1, 640, 10, 16)
    decayed, flat = (_verdicts(tmp_path / name)["scale_invariant"] for name in ("decay", "flat"))
    assert decayed["verdict"] == flat["verdict"] == "equilibrium"
    assert decayed["rate_change_factor"] == pytest.approx(flat["rate_change_factor"], rel=1e-6)
    assert decayed["norm_change_factor"] == pytest.approx(math.exp(-1.5 * 320 / 640), rel=1e-9)


def test_a_steady_rotation_is_a_drift_not_an_equilibrium(tmp_path):
    """3° per interval in one plane: the angles are constant, but the weights travel in one direction
    (cos first–last below what a random walk of these steps keeps), which is not a settled state."""
    steps = [100 * k for k in range(9)]
    _save_run(tmp_path, _rotation([3.0] * 8, dim=4000), steps)
    doc = run_json(["dynamics", tmp_path, "--lr", "0.1", "--scale-invariant", "^w$"])
    g = _group(doc, "scale_invariant")
    assert g["regime"]["verdict"] == "undetermined" and "drift in one direction" in g["regime"]["reason"]
    assert g["regime"]["median_angle_deg"] == pytest.approx(3.0, abs=1e-9)
    assert g["regime"]["cos_first_last"] == pytest.approx(math.cos(math.radians(12.0)), abs=1e-12)
    assert g["regime"]["random_walk_cos"] == pytest.approx(math.cos(math.radians(3.0)) ** 4, abs=1e-12)
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
    assert regimes["scale_invariant"]["rate_change_factor"] == pytest.approx(0.6 ** 3, rel=1e-9)  # intervals 4 → 7
    # no verdict for what the theory does not cover; without a learning rate, no convergence either
    assert regimes["model"]["verdict"] is None and "not classified" in regimes["model"]["reason"]
    unknown = _verdicts(tmp_path)["scale_invariant"]
    assert unknown["verdict"] == "undetermined" and unknown["reason"].startswith("no learning rate")


def test_a_group_too_small_to_tell_random_from_learnt_gets_no_verdict(tmp_path):
    steps = [10 * k for k in range(9)]
    _save_run(tmp_path, _rotation([8.0 * 0.6 ** k for k in range(8)], dim=8), steps)
    regime = _verdicts(tmp_path, "--lr", "0.01")["scale_invariant"]
    assert regime["verdict"] == "undetermined" and "too few parameters (8)" in regime["reason"]


def test_frozen_weights_are_not_called_converged(tmp_path):
    steps = [10 * k for k in range(9)]
    _save_run(tmp_path, _rotation([5.0] * 4 + [0.0] * 4), steps)
    regime = _verdicts(tmp_path, "--lr", "0.01")["scale_invariant"]
    assert regime["verdict"] == "undetermined" and "did not move" in regime["reason"]


def test_independent_random_directions_are_divergence(tmp_path):
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(4000, generator=gen, dtype=torch.float64) for _ in range(8)]
    _save_run(tmp_path / "dense", weights, [k for k in range(8)])
    regime = _verdicts(tmp_path / "dense")["scale_invariant"]  # a random walk needs no learning rate to be seen
    assert regime["verdict"] == "divergence" and "mutually uncorrelated" in regime["reason"]
    # uncorrelated checkpoints are seen at any spacing
    _save_run(tmp_path / "sparse", weights, [100 * k for k in range(8)])
    assert _verdicts(tmp_path / "sparse")["scale_invariant"]["verdict"] == "divergence"
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
    """The toy's equilibrium stays one, unless the run's logged training loss still falls across the
    window (the theory's equilibrium has the loss plateau): a line fitted to log loss over the window."""
    _train_sphere_toy(tmp_path, 0.1, 640, 10, 16)
    steps = list(range(0, 641, 10))
    history = [{"step": s, "loss": (2.0 * math.exp(-s / 400) if falling else 1.0 + 0.05 * (-1) ** k),
                "learning_rate": 0.1} for k, s in enumerate(steps)]
    for step in steps:
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "log_history": history}))
    regime = _verdicts(tmp_path)["scale_invariant"]
    if falling:
        assert regime["verdict"] == "undetermined" and "the training loss still falls" in regime["reason"]
        assert regime["loss_change_factor"] == pytest.approx(math.exp(-320 / 400), rel=1e-9)  # steps 320 → 640
    else:  # a noisy plateau: the fitted factor stays near 1 and its upper bound above 1
        assert regime["verdict"] == "equilibrium", regime
        assert regime["loss_change_factor"] == pytest.approx(1.0, abs=0.01) and regime["loss_change_upper"] > 1


def test_a_loss_file_gives_the_training_loss(tmp_path):
    """--loss-file step,loss (a run that logged elsewhere than trainer_state.json) feeds the same check."""
    _train_sphere_toy(tmp_path / "run", 0.1, 640, 10, 16)
    (tmp_path / "loss.csv").write_text("step,loss\n" + "".join(f"{s},{2.0 * math.exp(-s / 400)!r}\n"
                                                              for s in range(0, 641, 20)))
    doc = run_json(["dynamics", tmp_path / "run", "--scale-invariant", "^w$", "--loss-file", tmp_path / "loss.csv"])
    regime = _group(doc, "scale_invariant")["regime"]
    assert doc["loss_source"] == f"--loss-file {tmp_path / 'loss.csv'}"
    assert regime["verdict"] == "undetermined" and regime["loss_change_factor"] == pytest.approx(math.exp(-0.8))
    assert run_json(["dynamics", tmp_path / "run", "--scale-invariant", "^w$"])["loss_source"] == \
        "trainer_state.json log_history"
    (tmp_path / "bad.csv").write_text("step,loss\n10,abc\n")
    bad = run(["dynamics", tmp_path / "run", "--loss-file", tmp_path / "bad.csv"])
    assert bad.exit_code == 1 and "--loss-file" in bad.stderr and "line 2" in bad.stderr


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
    """12° per step, checkpoints 40 steps apart: ~66° between checkpoints, as big single steps would
    give; the spacing cannot tell them apart, so undetermined — with steps of 80° one apart, divergence;
    with 2° steps one apart over too short a window, no equilibrium either (nothing holds them yet)."""
    _save_run(tmp_path / "sparse", _random_walk(8, 40, 12.0), [40 * k for k in range(8)])
    sparse = _verdicts(tmp_path / "sparse", "--lr", "0.1")["scale_invariant"]
    assert sparse["median_angle_deg"] > 60
    assert sparse["verdict"] == "undetermined" and "checkpoints one optimizer step apart can tell" in sparse["reason"]
    _save_run(tmp_path / "walk", _random_walk(8, 1, 80.0, seed=1), list(range(8)))
    assert _verdicts(tmp_path / "walk", "--lr", "0.1")["scale_invariant"]["verdict"] == "divergence"
    _save_run(tmp_path / "short", _random_walk(9, 1, 2.0, seed=2), list(range(9)))
    short = _verdicts(tmp_path / "short", "--lr", "0.1")["scale_invariant"]
    assert short["verdict"] == "undetermined" and "cannot tell an equilibrium from a random walk" in short["reason"]


def test_report_takes_the_loss_file_too(tmp_path):
    _train_sphere_toy(tmp_path / "run", 0.1, 64, 8, 16)
    (tmp_path / "loss.csv").write_text("step,loss\n0,2.0\n32,1.0\n64,0.5\n")
    result = run(["report", tmp_path / "run", "--out", tmp_path / "out", "--loss-file", tmp_path / "loss.csv", "-q"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads((tmp_path / "out" / "dynamics.json").read_text())
    assert doc["loss_source"] == f"--loss-file {tmp_path / 'loss.csv'}"
