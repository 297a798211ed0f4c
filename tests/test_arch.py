"""Every Q/K/V layout proved by the forward pass of a real module, not by re-stating the split.

With the K rows of one key/value head zeroed (weight and bias), every query head that attends with
that key sees q·k = 0 — uniform attention — so moving those query heads' rows, as trajcli locates them,
must leave the output unchanged; moving the V rows of that head (or query heads of another group) must
change it. A layout that mixed Q, K and V or mislabelled heads fails one of the two.
"""

from __future__ import annotations

import pytest
import torch
from arch_models import reference_models, transformers_models

from trajcli.arch.families import detect_family, family_by_name, load_families, parse_family
from trajcli.arch.grouping import hidden_size_from, qkv_tensors
from trajcli.arch.layouts import HeadCounts, axis_ranges
from trajcli.types import TensorSpec

transformers = pytest.importorskip("transformers")
MODELS = {**transformers_models(), **reference_models()}


def test_every_family_file_has_a_forward_pass_test():
    assert {f.name for f in load_families()} == set(MODELS)


def _specs(model) -> list[TensorSpec]:
    return [TensorSpec(n, tuple(t.shape), (str(t.dtype),)) for n, t in model.state_dict().items()]


def _layer0_ranges(model, family, heads):
    params = dict(model.state_dict(keep_vars=True))
    matched = qkv_tensors(_specs(model), family)
    out = []
    for name, (part, layer, param) in matched.items():
        if (layer[1] if isinstance(layer, tuple) else layer) != 0:  # layer 0 of every block (encoder-decoder)
            continue
        t = params[name]
        axis = family.weight_axis if (param == "weight" and t.dim() == 2) else 0
        for start, stop, p, head in axis_ranges(family.name, family.layout, part, heads, name, tuple(t.shape), axis):
            out.append((t, axis, start, stop, p, head))
    assert out, "no layer-0 Q/K/V tensors matched"
    return out


def _edit(ranges, part: str, heads: set[int], fn) -> None:
    with torch.no_grad():
        for t, axis, start, stop, p, head in ranges:
            if p == part and head in heads:
                view = t[start:stop] if axis == 0 else t[:, start:stop]
                view.copy_(fn(view))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_layout_matches_the_forward_pass(name):
    build, (n_heads, n_kv, *head_dim) = MODELS[name]
    model, forward = build()
    family = family_by_name(name)
    specs = _specs(model)
    d_in = hidden_size_from(specs, family, qkv_tensors(specs, family))
    heads = HeadCounts(n_heads, n_kv, head_dim[0] if head_dim else d_in // n_heads, "test")
    x = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(1))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    per_group = n_heads // n_kv
    gen = torch.Generator().manual_seed(2)
    def noise(v):
        return v + torch.randn(v.shape, generator=gen)

    for group in range(n_kv):
        model.load_state_dict(original)
        ranges = _layer0_ranges(model, family, heads)
        _edit(ranges, "k", {group}, torch.zeros_like)
        with torch.no_grad():
            base = forward(x)
            own = set(range(group * per_group, (group + 1) * per_group))
            _edit(ranges, "q", own, noise)
            torch.testing.assert_close(forward(x), base, atol=1e-5, rtol=0,
                                       msg=f"{name}: query heads {sorted(own)} still matter with K head {group} zeroed")
            if n_kv > 1:
                other = set(range(n_heads)) - own
                _edit(ranges, "q", other, noise)
                assert not torch.allclose(forward(x), base, atol=1e-4), f"{name}: other query heads do not matter"
            model.load_state_dict(original)
            ranges = _layer0_ranges(model, family, heads)
            _edit(ranges, "k", {group}, torch.zeros_like)
            _edit(ranges, "v", {group}, noise)
            assert not torch.allclose(forward(x), base, atol=1e-4), f"{name}: V head {group} does not matter"


def test_family_files_are_loaded_strictly():
    good = {"name": "x", "title": "x", "qkv": {"fused": "h\\.(?P<layer>\\d+)\\.qkv\\.(?P<param>weight|bias)$",
                                                "layout": "contiguous", "weight_axis": 0}}
    assert parse_family(good, "x").layout == "contiguous"
    with pytest.raises(ValueError, match="unknown key"):
        parse_family({**good, "colour": "blue"}, "x")
    with pytest.raises(ValueError, match="unknown key"):
        parse_family({**good, "qkv": {**good["qkv"], "order": "qvk"}}, "x")
    with pytest.raises(ValueError, match="layout"):
        parse_family({**good, "qkv": {**good["qkv"], "layout": "thirds"}}, "x")
    with pytest.raises(ValueError, match="groups"):
        parse_family({**good, "qkv": {**good["qkv"], "fused": "qkv\\.weight$"}}, "x")


@pytest.mark.parametrize("config, expected", [
    ({"architectures": ["FalconForCausalLM"], "multi_query": False, "new_decoder_architecture": False}, "falcon"),
    ({"architectures": ["FalconForCausalLM"], "multi_query": True, "new_decoder_architecture": False}, "falcon_mq"),
    ({"architectures": ["FalconForCausalLM"], "new_decoder_architecture": True}, "falcon_new"),
    ({"model_type": "falcon"}, "falcon_mq"),  # FalconConfig's defaults
    ({"architectures": ["GPT2LMHeadModel"]}, "gpt2"),
    ({"model_type": "gpt_bigcode"}, "gpt_bigcode"),
    ({"architectures": ["MistralForCausalLM"]}, "llama"),
])
def test_detection_from_config(config, expected):
    assert detect_family(config, "safetensors", []).family.name == expected


def test_detection_from_names_and_format():
    neox = ["gpt_neox.layers.0.attention.query_key_value.weight"]
    assert detect_family(None, "safetensors", neox).source == "tensor names"
    assert detect_family(None, "safetensors", neox).family.name == "gpt_neox"
    c_attn = ["transformer.h.0.attn.c_attn.weight"]
    ambiguous = detect_family(None, "safetensors", c_attn)
    assert ambiguous.family is None and {"gpt2", "nanogpt", "gpt_bigcode", "qwen"} <= set(ambiguous.ambiguous)
    assert detect_family(None, "nanogpt", c_attn).family.name == "nanogpt"
    assert detect_family(None, "torch-file", ["model.layers.3.self_attn.q_proj.weight"]).family.name == "llama"
    assert detect_family(None, "safetensors", ["fc.weight"]).family is None
