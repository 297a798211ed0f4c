"""Encoder-decoder models (BART and the models named like it): block N of the encoder is never merged
with block N of the decoder, in `layers` or in `qkv` (encoder self-, decoder self- and cross-attention
are three blocks); a layout that cannot tell them apart refuses instead of merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import as_array, run, run_json
from safetensors import safe_open


@pytest.fixture(scope="module")
def bart_run(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("bart")
    cfg = transformers.BartConfig(vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                  decoder_ffn_dim=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(cfg)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / "run" / f"step{step}")
    return root / "run"


def _tensors(folder) -> dict[str, np.ndarray]:
    with safe_open(str(folder / "model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}


def test_encoder_and_decoder_blocks_stay_apart_with_exact_maps(bart_run):
    doc = run_json(["layers", bart_run, "--by", "block", "--mode", "displacement"])
    by_name = {g["name"]: g for g in doc["groups"]}
    assert {"encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"} <= set(by_name)
    assert "block.0" not in by_name
    assert by_name["encoder.block.0"]["stack"] == "encoder" and by_name["decoder.block.1"]["stack"] == "decoder"
    saved = [_tensors(bart_run / f"step{k}") for k in range(3)]
    for group in ("encoder.block.0", "decoder.block.0"):
        stack, _, layer = group.split(".")
        names = sorted(n for n in saved[0] if f"{stack}.layers.{layer}." in n)
        assert by_name[group]["n_params"] == sum(saved[0][n].size for n in names)
        x = np.stack([np.concatenate([sd[n].ravel() for n in names]) for sd in saved])
        d = x[1:] - x[0]
        expected = (d @ d.T) / np.outer(np.linalg.norm(d, axis=1), np.linalg.norm(d, axis=1))
        np.testing.assert_allclose(as_array(by_name[group]["matrix"]), expected, rtol=0, atol=1e-12)
    roles = run_json(["layers", bart_run, "--by", "role"])["groups"]
    q = [g["name"] for g in roles if g.get("role") == "attn_q"]
    assert "encoder.block.0.attn_q" in q and "decoder.block.0.attn_q" in q


def test_qkv_keeps_encoder_decoder_and_cross_attention_apart(bart_run):
    doc = run_json(["qkv", bart_run, "--per-head"])
    assert doc["architecture"] == "bart"
    assert [(e["block"], e["layer"]) for e in doc["layers"]] == [
        ("encoder", 0), ("encoder", 1), ("decoder", 0), ("decoder", 1), ("decoder.cross", 0), ("decoder.cross", 1)]
    assert [e["depth"] for e in doc["layers"]] == [0.25, 0.75] * 3  # depth within each block
    saved = [_tensors(bart_run / f"step{k}") for k in range(3)]
    for entry in doc["layers"]:
        stack, _, cross = entry["block"].partition(".")
        module = "encoder_attn" if cross else "self_attn"
        for part in "qkv":
            names = [f"model.{stack}.layers.{entry['layer']}.{module}.{part}_proj.{p}" for p in ("weight", "bias")]
            x = np.stack([np.concatenate([sd[n].ravel() for n in names]) for sd in saved])
            d = x[1:] - x[0]
            expected = (d @ d.T) / np.outer(np.linalg.norm(d, axis=1), np.linalg.norm(d, axis=1))
            np.testing.assert_allclose(as_array(entry[part]["matrix"]), expected, rtol=0, atol=1e-12)
        assert len(entry["heads"]["q"]) == 2


def test_a_layout_that_cannot_tell_the_blocks_apart_refuses_to_merge_them(bart_run):
    contradicted = run(["qkv", bart_run, "--arch", "llama"])
    assert contradicted.exit_code == 2 and "--arch llama contradicts config.json, whose model is bart" in contradicted.stderr
    result = run(["qkv", bart_run, "--arch", "llama", "--force-layout"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "model.decoder.layers.0.self_attn" in result.stderr and "model.encoder.layers.0.self_attn" in result.stderr
    assert "would both be layer 0's" in result.stderr and "encoder-decoder models" in result.stderr


def test_a_report_on_an_encoder_decoder_model_keeps_its_blocks(bart_run, tmp_path):
    result = run(["report", bart_run, "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.stderr
    qkv = __import__("json").loads((tmp_path / "out" / "qkv.json").read_text())
    assert {e["block"] for e in qkv["layers"]} == {"encoder", "decoder", "decoder.cross"}
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<td class='num'>decoder.cross 1</td>" in page


def test_attention_tensors_the_layout_does_not_place_are_named_never_dropped_silently(tmp_path):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(3)
    names = ["layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight",
             "layers.0.cross_attn.q_proj.weight", "layers.0.mlp.up_proj.weight"]
    for k in range(3):
        (tmp_path / "run" / f"step{k}").mkdir(parents=True)
        save_file({n: torch.randn(4, 4, generator=gen) for n in names}, str(tmp_path / "run" / f"step{k}" / "model.safetensors"))
    result = run(["qkv", tmp_path / "run", "--arch", "llama", "--json"])
    assert result.exit_code == 0, result.stderr
    assert ("1 tensor(s) look like attention projections but are not placed by the llama layout, and are not in any "
            "Q/K/V group: layers.0.cross_attn.q_proj.weight") in result.stderr
    import json

    assert json.loads(result.stdout)["unclaimed"] == ["layers.0.cross_attn.q_proj.weight"]
    strict = run(["qkv", tmp_path / "run", "--arch", "llama", "--strict"])
    assert strict.exit_code == 1 and "(--strict), e.g. layers.0.cross_attn.q_proj.weight" in strict.stderr


def test_a_flag_that_contradicts_a_fixed_fact_of_the_layout_is_refused(tmp_path):
    """GPT-BigCode multi-query has one K/V head: --num-kv-heads 4 would cut K and V where they are not."""
    from test_qkv import write_trajectory

    write_trajectory("gpt_bigcode", tmp_path / "run", n=3, seed=4)
    result = run(["qkv", tmp_path / "run", "--num-kv-heads", "4"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "--num-kv-heads gives 4 key/value heads, but the gpt_bigcode layout has 1" in result.stderr
    assert run(["qkv", tmp_path / "run", "--num-kv-heads", "1", "-q"]).exit_code == 0


def test_names_that_fit_several_layouts_list_only_those_the_shapes_allow(tmp_path):
    """GPT-BigCode with multi_query=false and no config.json: its names fit gpt2, gpt_bigcode,
    gpt_bigcode_mha, nanogpt and qwen; the shapes ([3d, d]) rule out GPT-2's Conv1D and the
    multi-query rows, and the refusal says what decides."""
    from test_qkv import write_trajectory

    write_trajectory("gpt_bigcode_mha", tmp_path / "run", n=3, seed=5)
    for folder in (tmp_path / "run").iterdir():
        (folder / "config.json").unlink()
    result = run(["qkv", tmp_path / "run", "--num-heads", "4"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "(fits gpt_bigcode_mha, nanogpt, qwen)" in result.stderr
    assert "config.json (model_type, architectures and flags such as multi_query) decides" in result.stderr


def test_flags_that_contradict_config_json_need_force_layout(tmp_path):
    """GPT-BigCode with multi_query=false: `--arch nanogpt` (row thirds) gave wrong maps silently;
    config.json is the model's own record, so a contradicting flag is refused unless forced."""
    from test_qkv import write_trajectory

    write_trajectory("gpt_bigcode_mha", tmp_path / "run", n=3, seed=6)
    arch = run(["qkv", tmp_path / "run", "--arch", "nanogpt"])
    assert arch.exit_code == 2 and "--arch nanogpt contradicts config.json, whose model is gpt_bigcode_mha" in arch.stderr
    heads = run(["qkv", tmp_path / "run", "--num-heads", "8"])
    assert heads.exit_code == 2 and "--num-heads 8 contradicts n_head in config.json, which says 4" in heads.stderr
    assert run(["qkv", tmp_path / "run", "--num-heads", "4", "-q"]).exit_code == 0  # agreeing is fine
    forced = run(["qkv", tmp_path / "run", "--arch", "nanogpt", "--force-layout", "-q", "--json"])
    assert forced.exit_code == 0 and '"architecture": "nanogpt"' in forced.stdout  # the user's word, taken
