"""Trajectories written by the real libraries: transformers' save_pretrained and Trainer."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from helpers import as_array, explicit_matrix, run, run_json

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (pip install -e '.[test]')")


def _tiny_neox(seed: int):
    torch.manual_seed(seed)
    config = transformers.GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=32, max_position_embeddings=32)
    return transformers.GPTNeoXForCausalLM(config)


def _stored(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_save_pretrained_sharded_trajectory(tmp_path):
    model = _tiny_neox(0)
    sds = []
    for step in (0, 8, 64, 512):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.save_pretrained(tmp_path / f"step{step}", max_shard_size="5KB")
        sds.append(_stored(model))
    assert (tmp_path / "step0" / "model.safetensors.index.json").exists()
    inspect = run_json(["inspect", tmp_path])
    assert inspect["checkpoints"][0]["format"] == "safetensors-sharded"
    assert len(inspect["checkpoints"][0]["files"]) > 1
    for mode in ("raw", "displacement", "update"):
        doc = run_json(["similarity", tmp_path, "--mode", mode])
        assert [c["step"] for c in doc["checkpoints"]] == [0, 8, 64, 512]
        np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(sds, mode), rtol=0, atol=1e-9)


def test_gpt2_tied_weights_are_counted_once(tmp_path):
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    sds = []
    for k in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        state = model.state_dict()
        assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
        folder = tmp_path / f"checkpoint-{k}"
        folder.mkdir()
        torch.save(state, folder / "pytorch_model.bin")  # legacy save: both names, one storage
        sds.append({n: t.clone() for n, t in state.items() if n != "lm_head.weight" and not re.search(r"(^|\.)attn\.bias$", n)})
    inspect = run_json(["inspect", tmp_path])
    why = {d["tensor"]: d["why"] for d in inspect["left_out"]}
    assert "tied to transformer.wte.weight" in why["lm_head.weight"]
    doc = run_json(["similarity", tmp_path])
    assert doc["n_params"] == sum(t.numel() for t in sds[0].values())
    np.testing.assert_allclose(as_array(doc["matrix"]), explicit_matrix(sds, "raw"), rtol=0, atol=1e-9)


def test_trainer_output_folder(tmp_path):
    """A real `Trainer` run: checkpoint-N folders with optimizer, scheduler, RNG and arguments files."""
    pytest.importorskip("accelerate")
    model = _tiny_neox(2)
    data = [{"input_ids": torch.randint(0, 50, (12,)), "labels": torch.randint(0, 50, (12,))} for _ in range(16)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=12, save_steps=3,
        learning_rate=1e-2, report_to=[], logging_steps=3, use_cpu=True, save_total_limit=None,
        disable_tqdm=True, seed=0,
    )
    transformers.Trainer(model=model, args=args, train_dataset=data).train()
    out = tmp_path / "out"
    folders = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in folders] == ["checkpoint-3", "checkpoint-6", "checkpoint-9", "checkpoint-12"]
    assert (folders[0] / "optimizer.pt").exists() and (folders[0] / "trainer_state.json").exists()
    from safetensors.torch import load_file

    sds = [load_file(str(f / "model.safetensors")) for f in folders]
    result = run(["inspect", out, "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [c["name"] for c in doc["checkpoints"]] == [p.name for p in folders]
    assert all(c["step_source"] == "trainer_state.json" for c in doc["checkpoints"])
    assert all(len(c["files"]) == 1 and c["files"][0].endswith("model.safetensors") for c in doc["checkpoints"])
    for mode in ("raw", "displacement", "update"):
        sim = run_json(["similarity", out, "--mode", mode])
        np.testing.assert_allclose(as_array(sim["matrix"]), explicit_matrix(sds, mode), rtol=0, atol=1e-9)
