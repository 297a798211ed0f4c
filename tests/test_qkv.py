"""`trajcli qkv` on trajectories written by the real producers of every family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from arch_models import reference_models, transformers_models
from helpers import as_array, run, run_json
from safetensors.torch import save_file

from trajcli.arch.families import family_by_name
from trajcli.arch.grouping import hidden_size_from, qkv_tensors
from trajcli.arch.layouts import HeadCounts, axis_ranges
from trajcli.types import TensorSpec

pytest.importorskip("transformers")
MODELS = {**transformers_models(), **reference_models()}
REFERENCE_CONFIGS = {  # the configs these projects write (nanoGPT keeps model_args in the file instead)
    "qwen": {"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "num_attention_heads": 4, "hidden_size": 16},
    "olmo": {"architectures": ["OLMoForCausalLM"], "model_type": "olmo_v1", "n_heads": 4, "d_model": 16},
}


def _views(model, family, heads):
    """(tensor name, axis, start, stop, part, head, layer) of every Q/K/V range, as trajcli locates them."""
    state = model.state_dict()
    specs = [TensorSpec(n, tuple(t.shape), (str(t.dtype),)) for n, t in state.items()]
    out = []
    for name, (part, layer, param) in qkv_tensors(specs, family).items():
        shape = tuple(state[name].shape)
        axis = family.weight_axis if (param == "weight" and len(shape) == 2) else 0
        for start, stop, p, head in axis_ranges(family.name, family.layout, part, heads, name, shape, axis):
            out.append((name, axis, start, stop, p, head, layer, param))
    return out


def _heads_of(name, model):
    family = family_by_name(name)
    n_heads, n_kv, *head_dim = MODELS[name][1]
    specs = [TensorSpec(n, tuple(t.shape), (str(t.dtype),)) for n, t in model.state_dict().items()]
    d_in = hidden_size_from(specs, family, qkv_tensors(specs, family))
    return family, HeadCounts(n_heads, n_kv, head_dim[0] if head_dim else d_in // n_heads, "test")


def _slice(t: torch.Tensor, axis: int, start: int, stop: int) -> torch.Tensor:
    return t[start:stop] if axis == 0 else t[:, start:stop]


def write_trajectory(name: str, root, n: int = 5, k_v: str = "ray", seed: int = 0):
    """Checkpoints where Q random-walks and K, V move along one fixed direction each (k_v='ray') or
    stay frozen (k_v='frozen'); every other tensor random-walks too. Returns the saved state dicts."""
    model, _ = MODELS[name][0]()
    family, heads = _heads_of(name, model)
    views = _views(model, family, heads)
    gen = torch.Generator().manual_seed(seed)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    qkv_names = {v[0] for v in views}
    ray = {k: torch.randn(v.shape, generator=gen) for k, v in base.items() if k in qkv_names}
    saved = []
    current = {k: v.clone() for k, v in base.items()}
    for step in range(n):
        state = {k: v.clone() for k, v in current.items()}
        for tensor, axis, start, stop, part, head, layer, param in views:
            target = _slice(state[tensor], axis, start, stop)
            if part in "kv":
                offset = step * 0.05 * _slice(ray[tensor], axis, start, stop) if k_v == "ray" else 0.0
                target.copy_(_slice(base[tensor], axis, start, stop) + offset)
        folder = root / f"step{step}"
        if name in REFERENCE_CONFIGS or name == "nanogpt":
            folder.mkdir(parents=True)
            if name == "nanogpt":
                torch.save({"model": state, "model_args": {"n_head": 4, "n_embd": 16, "n_layer": 2},
                            "iter_num": step, "config": {}}, folder / "ckpt.pt")
            else:
                save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
                (folder / "config.json").write_text(json.dumps(REFERENCE_CONFIGS[name]))
        else:
            model.load_state_dict(state)
            model.save_pretrained(folder)
        saved.append(state)
        # next checkpoint: random walk of every tensor except the K/V ranges (set above from base/ray)
        current = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    return saved, views


@pytest.mark.parametrize("name", sorted(MODELS))
def test_only_query_moving_freely_shows_in_q_not_k_v(tmp_path, name):
    saved, views = write_trajectory(name, tmp_path / "run")
    doc = run_json(["qkv", tmp_path / "run", "--mode", "displacement"])
    assert doc["architecture"] == name
    # two layers; three attention blocks of two layers each in an encoder-decoder model (encoder self,
    # decoder self, decoder cross), never merged
    blocks = [None] if doc["layers"][0]["block"] is None else ["encoder", "decoder", "decoder.cross"]
    assert [(e["block"], e["layer"]) for e in doc["layers"]] == [(b, n) for b in blocks for n in (0, 1)]
    assert doc["n_layers"] == 2 * len(blocks)
    for entry in doc["layers"]:
        assert entry["k"]["mds"] == pytest.approx(1.0, abs=1e-6), name
        assert entry["v"]["mds"] == pytest.approx(1.0, abs=1e-6), name
        assert entry["q"]["mds"] < 0.9, name
        assert entry["heterogeneity"] == pytest.approx(1.0 - entry["q"]["mds"], abs=1e-6)
    # every per-part matrix equals an explicit float64 computation on the stored slices
    for entry in doc["layers"]:
        for part in "qkv":
            rows = []
            for state in saved:
                key = (entry["block"], entry["layer"]) if entry["block"] else entry["layer"]
                pieces = [_slice(state[t], axis, a, b).to(torch.float64).reshape(-1)
                          for t, axis, a, b, p, h, layer, param in views if layer == key and p == part]
                rows.append(torch.cat(pieces).numpy())
            x = np.stack(rows)
            d = x[1:] - x[0]
            expected = (d @ d.T) / np.outer(np.linalg.norm(d, axis=1), np.linalg.norm(d, axis=1))
            np.testing.assert_allclose(as_array(entry[part]["matrix"]), expected, atol=1e-6)
            assert entry[part]["n_params"] == x.shape[1]


def test_frozen_k_and_v_are_undefined_not_one(tmp_path):
    write_trajectory("gpt_neox", tmp_path / "run", k_v="frozen")
    result = run(["qkv", tmp_path / "run", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    for entry in doc["layers"]:
        assert entry["k"]["mds"] is None and entry["v"]["mds"] is None and entry["heterogeneity"] is None
        assert entry["q"]["mds"] is not None
    assert "have vectors with no direction" in result.stderr
    raw = run_json(["qkv", tmp_path / "run", "--mode", "raw"])
    assert all(e["k"]["mds"] == pytest.approx(1.0, abs=1e-12) for e in raw["layers"])


def test_per_head_under_grouped_query_attention(tmp_path):
    saved, views = write_trajectory("llama", tmp_path / "run")
    doc = run_json(["qkv", tmp_path / "run", "--per-head", "--mode", "update"])
    for entry in doc["layers"]:
        assert len(entry["heads"]["q"]) == 4 and len(entry["heads"]["k"]) == 2 and len(entry["heads"]["v"]) == 2
        for part in "qkv":
            for head, omega in enumerate(entry["heads"][part]):
                x = np.stack([torch.cat([_slice(s[t], ax, a, b).to(torch.float64).reshape(-1)
                                         for t, ax, a, b, p, h, layer, param in views
                                         if layer == entry["layer"] and p == part and h == head]).numpy() for s in saved])
                u = np.diff(x, axis=0)
                cos = (u @ u.T) / np.outer(np.linalg.norm(u, axis=1), np.linalg.norm(u, axis=1))
                assert omega == pytest.approx(cos[~np.eye(len(cos), dtype=bool)].mean(), abs=1e-9)


def test_no_bias_leaves_biases_out(tmp_path):
    write_trajectory("gpt_neox", tmp_path / "run")
    with_bias = run_json(["qkv", tmp_path / "run"])
    without = run_json(["qkv", tmp_path / "run", "--no-bias"])
    assert with_bias["layers"][0]["q"]["n_params"] - without["layers"][0]["q"]["n_params"] == 16
    assert without["include_bias"] is False


def test_fused_layout_without_head_counts_names_the_flag(tmp_path):
    saved, _ = write_trajectory("gpt_neox", tmp_path / "run")
    for folder in (tmp_path / "run").iterdir():
        (folder / "config.json").unlink()
    result = run(["qkv", tmp_path / "run"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "cannot be split without the number of heads" in result.stderr and "--num-heads" in result.stderr
    assert "Traceback" not in result.stderr
    doc = run_json(["qkv", tmp_path / "run", "--num-heads", "4"])
    assert doc["layout"]["source"] == "tensor names" and doc["layout"]["num_heads"] == 4


def test_shape_that_does_not_fit_the_layout_is_explained(tmp_path):
    write_trajectory("gpt_neox", tmp_path / "run")
    result = run(["qkv", tmp_path / "run", "--head-dim", "5"])
    assert result.exit_code == 1
    line = result.stderr.splitlines()[0]
    assert "layers.0.attention.query_key_value" in line and "has shape [48" in line
    assert "H=4, KV=4, hd=5" in line and "3·H·hd = 60" in line and "found 48" in line


def test_ambiguous_names_ask_for_arch(tmp_path):
    saved, _ = write_trajectory("gpt2", tmp_path / "run")
    for folder in (tmp_path / "run").iterdir():
        (folder / "config.json").unlink()
    result = run(["qkv", tmp_path / "run"])
    assert result.exit_code == 1 and "--arch" in result.stderr and "gpt2" in result.stderr
    doc = run_json(["qkv", tmp_path / "run", "--arch", "gpt2", "--num-heads", "4"])
    assert doc["architecture"] == "gpt2"
    assert run(["qkv", tmp_path / "run", "--arch", "gpt9"]).exit_code == 2


def test_qkv_files_and_plots(tmp_path):
    write_trajectory("falcon_new", tmp_path / "run")
    out = tmp_path / "out"
    result = run(["qkv", tmp_path / "run", "--per-head", "--out", out])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["grams.npz", "qkv.csv", "qkv.json", "qkv_heads.csv", "qkv_heads.png",
                                                     "qkv_heterogeneity.png", "qkv_mds.png"]
    header = (out / "qkv.csv").read_text().splitlines()[0]
    assert header.startswith("layer,depth,mds_q,mds_k,mds_v,heterogeneity,map_distance")
    doc = json.loads((out / "qkv.json").read_text())
    assert doc["schema"] == "trajcli.qkv/1" and doc["layout"]["num_kv_heads"] == 2
    assert [e["depth"] for e in doc["layers"]] == [0.25, 0.75]


def test_archs_lists_every_family():
    doc = run_json(["archs"])
    assert {f["name"] for f in doc["families"]} == set(MODELS)
    assert "interleaved" in run(["archs"]).stdout
    import inspect

    import test_arch

    proved = {f["name"]: f["proof"] for f in doc["families"]}
    assert all(p == f"tests/test_arch.py::test_layout_matches_the_forward_pass[{n}]" for n, p in proved.items())
    assert callable(getattr(test_arch, "test_layout_matches_the_forward_pass"))  # the named proof exists
    assert "model types: gpt_bigcode multi_query=false" in run(["archs"]).stdout
    assert inspect.signature(test_arch.test_layout_matches_the_forward_pass).parameters.keys() == {"name"}


def test_nanogpt_without_model_args_splits_its_thirds_and_asks_heads_only_per_head(tmp_path):
    saved, views = write_trajectory("nanogpt", tmp_path / "run")
    for folder in (tmp_path / "run").iterdir():
        ckpt = torch.load(folder / "ckpt.pt", weights_only=True)
        del ckpt["model_args"]
        torch.save(ckpt, folder / "ckpt.pt")
    doc = run_json(["qkv", tmp_path / "run", "--mode", "displacement"])
    with_heads = run_json(["qkv", tmp_path / "run", "--mode", "displacement", "--num-heads", "4"])
    for a, b in zip(doc["layers"], with_heads["layers"]):  # the same parts, with or without head counts
        for part in "qkv":
            np.testing.assert_array_equal(as_array(a[part]["matrix"]), as_array(b[part]["matrix"]))
            assert a[part]["n_params"] == b[part]["n_params"] == 16 * 16 + 16
    result = run(["qkv", tmp_path / "run", "--per-head"])
    assert result.exit_code == 1 and "--num-heads" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["bart", "t5", "persimmon", "gpt_bigcode_mha"])
def test_per_head_omega_of_the_new_families_equals_an_explicit_computation(tmp_path, name):
    saved, views = write_trajectory(name, tmp_path / "run")
    doc = run_json(["qkv", tmp_path / "run", "--mode", "displacement", "--per-head"])
    for entry in doc["layers"]:
        key = (entry["block"], entry["layer"]) if entry["block"] else entry["layer"]
        for part in "qkv":
            heads = sorted({h for t, axis, a, b, p, h, layer, param in views if layer == key and p == part})
            assert len(entry["heads"][part]) == len(heads), (name, key, part)
            for h in heads:
                x = np.stack([torch.cat([_slice(state[t], axis, a, b).to(torch.float64).reshape(-1)
                                         for t, axis, a, b, p, hh, layer, param in views
                                         if layer == key and p == part and hh == h]).numpy() for state in saved])
                d = x[1:] - x[0]
                cos = (d @ d.T) / np.outer(np.linalg.norm(d, axis=1), np.linalg.norm(d, axis=1))
                omega = cos[~np.eye(len(cos), dtype=bool)].mean()
                assert entry["heads"][part][h] == pytest.approx(omega, abs=1e-9), (name, key, part, h)
