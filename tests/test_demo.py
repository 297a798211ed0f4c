"""The built-in demo trajectory: a real GPT-NeoX layout, sharded safetensors, analysed end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import as_array, explicit_matrix, run
from safetensors.torch import load_file

from trajcli.demo import DEMO_CONFIG, TinyNeoX, make_demo_trajectory


def _load(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    sd = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd.update(load_file(str(folder / shard)))
    assert set(sd) == set(index["weight_map"])
    return sd


def test_demo_model_is_gpt_neox_by_its_forward_pass(tmp_path):
    """transformers' GPTNeoXForCausalLM loads a demo checkpoint and computes the same logits."""
    transformers = pytest.importorskip("transformers")
    folders = make_demo_trajectory(tmp_path, steps=[0, 3])
    ours = TinyNeoX()
    ours.load_state_dict(_load(folders[-1]))
    theirs = transformers.GPTNeoXForCausalLM.from_pretrained(folders[-1])
    ours.eval(), theirs.eval()
    x = torch.randint(0, DEMO_CONFIG["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(ours(x).numpy(), theirs(x).logits.numpy(), atol=1e-4)


def test_demo_trajectory_is_sharded_and_read_exactly(tmp_path):
    folders = make_demo_trajectory(tmp_path / "ck", steps=[0, 1, 2, 4, 8])
    assert [f.name for f in folders] == ["step0", "step1", "step2", "step4", "step8"]
    assert len(list(folders[0].glob("model-*-of-*.safetensors"))) == 2
    sds = [_load(f) for f in folders]
    result = run(["similarity", tmp_path / "ck", "--mode", "update", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(sds, "update"), atol=1e-9)


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path):
    result = run(["demo", tmp_path / "demo", "--quiet"])
    assert result.exit_code == 0, result.stderr
    report = tmp_path / "demo" / "report"
    document = json.loads((report / "report.json").read_text())
    assert document["headline"]["n_checkpoints"] == 16
    assert document["architecture"]["name"] == "gpt_neox"
    assert {"report.html", "qkv.json", "similarity_displacement.png", "pca.png", "curvature.json",
            "sharpness.png"} <= set(document["files"])
    assert (tmp_path / "demo" / "tokens.npy").is_file()
    assert document["headline"]["sharpness_last"] > 0
    assert all((report / name).is_file() for name in document["files"])
    assert "MDS ω, displacement" in result.stdout
    again = run(["demo", tmp_path / "demo", "--quiet", "--no-curvature"])
    assert again.exit_code == 0 and "already in" in again.stderr


def test_the_sweep_pins_its_numbers_and_states_them(tmp_path, monkeypatch):
    """`trajcli demo --sweep` on 64 steps (the full sweep runs 512): the four settings × two seeds,
    compared; the numbers are fixed by the seeds, and the page's sentences follow from them."""
    import functools

    import trajcli.demo as demo

    monkeypatch.setattr(demo, "make_sweep", functools.partial(demo.make_sweep, steps=[0, 1, 2, 4, 8, 16, 32, 64]))
    result = run(["demo", tmp_path / "d", "--sweep", "-q"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads((tmp_path / "d" / "sweep-report" / "compare.json").read_text())
    assert [r["name"] for r in doc["runs"]] == [f"{s}-seed{k}" for s in demo.SWEEP_SETTINGS for k in (0, 1)]
    pinned = {"sgd": (0.9983488267144216, 0.6877611309092087), "sgd+wd": (0.9981918851599803, 0.7037878955021111),
              "momentum": (0.9832858565613881, 0.6822938903134274),
              "momentum+wd": (0.9696486838934106, 0.6684654425027861)}
    for g in doc["groups"]:
        assert (g["mds_raw"]["mean"], g["mds_displacement"]["mean"]) == pytest.approx(pinned[g["name"]], rel=1e-5)
    assert doc["differing_hyperparameters"] == ["momentum", "seed", "weight_decay"]
    assert doc["findings"][0] == ("ω (raw), lowest (most exploration) to highest: momentum+wd 0.9696 < momentum 0.9833 "
                                  "< sgd+wd 0.9982 < sgd 0.9983.")
    assert doc["findings"][-1].endswith("This sweep agrees: momentum with weight decay explores most (lowest raw ω).")
    assert "This sweep agrees" in (tmp_path / "d" / "sweep-report" / "compare.html").read_text()


def test_the_sweep_finding_says_when_it_disagrees():
    from trajcli.demo import SWEEP_SETTINGS, sweep_finding

    doc = {"groups": [{"name": n, "mds_raw": {"mean": m}} for n, m in zip(SWEEP_SETTINGS, (0.5, 0.9, 0.8, 0.7))]}
    assert sweep_finding(doc).endswith("This sweep does not agree: sgd, not momentum+wd, has the lowest raw ω.")
