"""`trajcli compare`: per-run rows, groups, the joint map of runs read in one pass, scale tables,
saved result folders — against explicit float64 computations from the saved files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import explicit_matrix, flatten, random_trajectory, run, run_json, save_safetensors_dir, write_trainer_state

from trajcli.comparison import findings
from trajcli.io import sources


def _save_run(folder, sds, steps=None):
    for k, sd in enumerate(sds):
        step = steps[k] if steps else 10 * k
        write_trainer_state(save_safetensors_dir(folder / f"checkpoint-{step}", sd), step)


def _joint_explicit(runs: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """Raw cosines of every checkpoint of every run, and displacement cosines from each run's first."""
    x = np.stack([flatten(sd) for sds in runs for sd in sds])
    disp = np.concatenate([np.stack([flatten(sd) for sd in sds[1:]]) - flatten(sds[0]) for sds in runs])

    def cos(v):
        n = np.linalg.norm(v, axis=1)
        return v @ v.T / np.outer(n, n)

    return cos(x), cos(disp)


@pytest.fixture
def reads(monkeypatch):
    """(file, tensor) -> how many times its elements were read."""
    count: dict = {}
    real = sources.SafetensorsReader.read_into

    def counting(self, name, start, stop, out):
        key = (str(self.checkpoint.path), name)
        count[key] = count.get(key, 0) + (stop - start)
        return real(self, name, start, stop, out)

    monkeypatch.setattr(sources.SafetensorsReader, "read_into", counting)
    return count


@pytest.mark.parametrize("shared", [False, True])
def test_the_joint_map_equals_explicit_float64_and_reads_each_file_once(tmp_path, reads, shared):
    runs = [random_trajectory(4, seed=s) for s in (1, 2, 3)]
    if shared:  # the same initial weights, then different steps
        for sds in runs[1:]:
            sds[0] = {k: v.clone() for k, v in runs[0][0].items()}
    for i, sds in enumerate(runs):
        _save_run(tmp_path / f"run{i}", sds)
    doc = run_json(["compare", *(f"r{i}={tmp_path / f'run{i}'}" for i in range(3))])
    raw, disp = _joint_explicit(runs)
    joint = doc["joint"]
    assert joint["labels"][:2] == ["r0/checkpoint-0", "r0/checkpoint-10"] and len(joint["labels"]) == 12
    np.testing.assert_allclose(np.array(joint["raw"]["matrix"], dtype=float), raw, atol=1e-12)
    np.testing.assert_allclose(np.array(joint["displacement"]["matrix"], dtype=float), disp, atol=1e-12)
    assert joint["shared_init"] is shared
    assert joint["reference"] == ("the shared initial checkpoint" if shared else "each run's first checkpoint")
    sizes = {name: t.numel() for name, t in runs[0][0].items()}
    assert reads and all(n == sizes[name] for (_, name), n in reads.items())  # every element once
    assert len(reads) == 12 * len(sizes)
    for i, sds in enumerate(runs):  # each run's own row, as from its own pass
        row = doc["runs"][i]
        for mode in ("raw", "displacement", "update"):
            expected = explicit_matrix(sds, mode)
            omega = expected[~np.eye(expected.shape[0], dtype=bool)].mean()
            assert row["mds"][mode] == pytest.approx(omega, abs=1e-12), (i, mode)


def test_groups_hold_the_mean_and_spread_of_their_seeds(tmp_path):
    names = []
    for setting, scale in (("slow", 0.05), ("fast", 0.5)):
        for seed in (0, 1, 2):
            name = f"{setting}-seed{seed}"
            _save_run(tmp_path / name, random_trajectory(5, seed=seed + (10 if setting == "fast" else 0), step_scale=scale))
            names.append(name)
    doc = run_json(["compare", *(str(tmp_path / n) for n in names), "--group", r"^(.*)-seed\d+$"])
    assert [g["name"] for g in doc["groups"]] == ["slow", "fast"]
    for g in doc["groups"]:
        values = np.array([r["mds_displacement"] for r in doc["runs"] if r["group"] == g["name"]])
        stat = g["mds_displacement"]
        assert g["runs"] == [f"{g['name']}-seed{s}" for s in range(3)]
        assert stat["mean"] == pytest.approx(values.mean(), abs=1e-15)
        assert stat["std"] == pytest.approx(values.std(ddof=1), abs=1e-15)
        assert (stat["min"], stat["max"], stat["n"]) == (values.min(), values.max(), 3)
    assert doc["findings"][0].startswith("ω (raw), lowest (most exploration) to highest: ")
    assert any(f.startswith("ω (displacement), lowest (most exploration) to highest: ") for f in doc["findings"])


def test_findings_say_the_ordering_its_spread_and_since_when():
    def row(name, group, curve):
        return {"name": name, "group": group, "mds_displacement": curve[-1],
                "mds_curve": {"displacement": [{"step": s, "mds": v} for s, v in zip((2, 4, 8, 16), curve)]}}

    rows = [row("a0", "a", [0.9, 0.7, 0.60, 0.50]), row("a1", "a", [0.9, 0.72, 0.61, 0.52]),
            row("b0", "b", [0.8, 0.8, 0.70, 0.70]), row("b1", "b", [0.8, 0.8, 0.71, 0.72])]
    said = findings(rows, "displacement")
    assert said[0] == "ω (displacement), lowest (most exploration) to highest: a 0.5100 < b 0.7100."
    assert said[1] == ("The seeds of each group spread ω (displacement) by at most 0.0200; every neighbouring pair "
                       "of groups is further apart than that.")
    assert said[2] == ("This ordering of ω (displacement) holds, beyond the seeds' spread, at every checkpoint from "
                       "step 4 on (ω of the checkpoints up to each step).")  # step 4: apart by 0.09, spread 0.02
    rows[1]["mds_curve"]["displacement"][1]["mds"] = 0.79  # now at step 4 a's seeds spread by 0.09 > the gap 0.055
    assert "from step 8 on" in findings(rows, "displacement")[2]
    close = [row("a0", "a", [0.5] * 4), row("a1", "a", [0.6] * 4), row("b0", "b", [0.55] * 4), row("b1", "b", [0.62] * 4)]
    assert "not settled by these seeds" in findings(close, "displacement")[1]


def test_runs_of_different_sizes_give_a_scale_table_and_no_joint_map(tmp_path):
    small = random_trajectory(3, seed=1, shapes={"w": (4, 4)})
    large = random_trajectory(3, seed=2, shapes={"w": (16, 16)})
    _save_run(tmp_path / "small", small)
    _save_run(tmp_path / "large", large)
    result = run(["compare", str(tmp_path / "large"), str(tmp_path / "small"), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["joint"] is None and "differ in their tensors" in doc["joint_not_computed"]
    assert "2 model sizes" in doc["joint_not_computed"] and "no joint map" in result.stderr
    assert [(r["name"], r["n_params"]) for r in doc["scale"]] == [("small", 16), ("large", 256)]
    expected = explicit_matrix(large, "displacement")
    assert doc["runs"][0]["mds_displacement"] == pytest.approx(expected[~np.eye(2, dtype=bool)].mean(), abs=1e-12)


def test_mismatched_runs_never_get_a_joint_map(tmp_path):
    a = random_trajectory(3, seed=1, shapes={"w": (4, 4)})
    b = [{"v": sd["w"]} for sd in random_trajectory(3, seed=2, shapes={"w": (4, 4)})]  # same size, other name
    _save_run(tmp_path / "a", a)
    _save_run(tmp_path / "b", b)
    doc = run_json(["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert doc["joint"] is None and doc["scale"] is None and "differ in their tensors" in doc["joint_not_computed"]


def test_hyperparameters_from_a_real_trainer_run(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    data = [{"input_ids": torch.randint(0, 50, (12,)), "labels": torch.randint(0, 50, (12,))} for _ in range(16)]
    for name, wd in (("plain", 0.0), ("decay", 0.1)):
        torch.manual_seed(3)
        config = transformers.GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                            intermediate_size=32, max_position_embeddings=32)
        args = transformers.TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=4,
                                              max_steps=8, save_steps=4, logging_steps=4, learning_rate=1e-2,
                                              weight_decay=wd, report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
        transformers.Trainer(model=transformers.GPTNeoXForCausalLM(config), args=args, train_dataset=data).train()
        (tmp_path / name / "training_args.json").write_text(args.to_json_string())  # as users save them
    doc = run_json(["compare", str(tmp_path / "plain"), str(tmp_path / "decay")])
    plain, decay = (r["hyperparameters"] for r in doc["runs"])
    assert plain["weight_decay"] == {"value": 0.0, "source": "training_args.json"}
    assert decay["weight_decay"]["value"] == 0.1 and decay["lr"]["value"] == 1e-2
    assert plain["batch_size"]["value"] == 4 and plain["beta1"]["value"] == 0.9
    assert doc["differing_hyperparameters"] == ["weight_decay"]
    assert doc["joint"] is not None  # the same architecture: one pass, one joint map


def test_saved_report_folders_are_compared_without_reading_a_checkpoint(tmp_path, monkeypatch):
    from trajcli import pipeline

    for i in range(2):
        _save_run(tmp_path / f"run{i}", random_trajectory(4, seed=i))
        assert run(["report", tmp_path / f"run{i}", "--out", tmp_path / f"rep{i}"]).exit_code == 0
    expected = run_json(["compare", str(tmp_path / "run0"), str(tmp_path / "run1")])

    def no_reading(*args, **kwargs):
        raise AssertionError("a checkpoint was read")

    monkeypatch.setattr(pipeline, "read_trajectory", no_reading)
    doc = run_json(["compare", f"run0={tmp_path / 'rep0'}", f"run1={tmp_path / 'rep1'}"])
    assert all(r["saved_result"] for r in doc["runs"])
    for got, want in zip(doc["runs"], expected["runs"]):
        for key in ("mds_raw", "mds_displacement", "mds_update", "path_length", "straightness"):
            assert got[key] == pytest.approx(want[key], rel=1e-12), key
    assert doc["joint"] is None and "saved results" in doc["joint_not_computed"]


def test_compare_writes_its_files_and_refuses_a_bad_call(tmp_path):
    for i in range(2):
        _save_run(tmp_path / f"run{i}", random_trajectory(4, seed=i))
    result = run(["compare", str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["compare.csv", "compare.html", "compare.json", "compare_joint_displacement.png",
                     "compare_joint_raw.png", "compare_mds.png", "compare_pca.png"]
    assert (tmp_path / "out" / "compare.csv").read_text().splitlines()[0].startswith("name,group,n_checkpoints")
    page = (tmp_path / "out" / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "ω (raw), lowest" in page
    assert run(["compare", str(tmp_path / "run0")]).exit_code == 2  # one run
    twice = run(["compare", str(tmp_path / "run0"), f"run0={tmp_path / 'run1'}"])
    assert twice.exit_code == 2 and "named run0 more than once" in twice.stderr


def test_the_python_api_compares_too(tmp_path):
    import trajcli

    runs = [random_trajectory(3, seed=s) for s in (4, 5)]
    for i, sds in enumerate(runs):
        _save_run(tmp_path / f"run{i}", sds)
    result = trajcli.compare([tmp_path / "run0", tmp_path / "run1"])
    raw, _ = _joint_explicit(runs)
    np.testing.assert_allclose(result.joint_raw, raw, atol=1e-12)
    assert result.schema == "trajcli.compare/1" and [r["name"] for r in result.to_dict()["runs"]] == ["run0", "run1"]
    assert math.isfinite(result.to_frame()["mds_displacement"].iloc[0])


def test_effective_learning_rates_and_sharpness_where_the_runs_carry_them(tmp_path):
    from trajcli.comparison import _curvature_columns

    runs = [random_trajectory(3, seed=s) for s in (6, 7)]
    for i, sds in enumerate(runs):
        for k, sd in enumerate(sds):
            folder = save_safetensors_dir(tmp_path / f"run{i}" / f"checkpoint-{10 * k}", sd)
            history = [{"step": 10 * j, "learning_rate": 0.1 * (i + 1)} for j in range(k + 1)]
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10 * k, "log_history": history}))
    doc = run_json(["compare", str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", tmp_path / "out"])
    for i, (row, sds) in enumerate(zip(doc["runs"], runs)):
        norm2 = float(flatten(sds[-1]) @ flatten(sds[-1]))
        assert row["effective_lr_last"] == pytest.approx(0.1 * (i + 1) / norm2, rel=1e-12)
        assert [p["step"] for p in row["effective_lr"]] == [0, 10, 20] and row["regime"] is None
    assert doc["groups"] == [] and (tmp_path / "out" / "compare_elr.png").is_file()
    curvature = {"edge_of_stability": {"gd": {"values": [20.0, 40.0]}},
                 "points": [{"step": 0, "eigenvalues": [3.0, 1.0]}, {"step": 10, "eigenvalues": [5.0, 2.0]}]}
    assert _curvature_columns(curvature) == {
        "sharpness": [{"step": 0, "lambda_max": 3.0, "two_over_lr": 20.0}, {"step": 10, "lambda_max": 5.0, "two_over_lr": 40.0}],
        "sharpness_last": 5.0}
