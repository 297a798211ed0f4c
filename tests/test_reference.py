"""A fine-tune against its pretrained base: --reference PATH from outside the folder, and tensor names
that differ by a wrapper prefix (`bert.`) aligned when unambiguous, forced with --strip-prefix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import as_array, run, run_json, write_trainer_state
from safetensors import safe_open
from safetensors.torch import save_file


def _bert_base_and_finetune(root, steps=(5, 10)):
    """A BertModel saved as a base, and a BertForSequenceClassification started from it (as the
    Trainer does) whose checkpoints move every weight a little: names `bert.…` + `classifier.…`."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(root / "base")
    model = transformers.BertForSequenceClassification.from_pretrained(root / "base", num_labels=3)
    gen = torch.Generator().manual_seed(1)
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
        folder = root / "ft" / f"checkpoint-{step}"
        model.save_pretrained(folder)
        write_trainer_state(folder, step)
    return root / "base", root / "ft"


def _tensors(path) -> dict[str, np.ndarray]:
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}


def test_a_finetune_is_measured_from_its_base_with_names_aligned(tmp_path):
    base, ft = _bert_base_and_finetune(tmp_path)
    doc = run_json(["similarity", ft, "--reference", base, "--mode", "displacement"])
    assert [c["name"] for c in doc["checkpoints"]] == ["base", "checkpoint-5", "checkpoint-10"]
    assert [c["step"] for c in doc["checkpoints"]] == [0, 5, 10]
    assert doc["reference"] == "base" and doc["labels"] == ["checkpoint-5", "checkpoint-10"]
    assert doc["name_alignment"] == [{"strip_prefix": "bert.", "checkpoints": ["checkpoint-5", "checkpoint-10"]}]
    # the explicit float64 computation: every base tensor against its `bert.` namesake; the new head is left out
    base_sd = _tensors(base)
    names = sorted(base_sd)
    x = [np.concatenate([base_sd[n].ravel() for n in names])]
    for step in (5, 10):
        sd = _tensors(ft / f"checkpoint-{step}")
        assert set(sd) == {f"bert.{n}" for n in names} | {"classifier.weight", "classifier.bias"}
        x.append(np.concatenate([sd[f"bert.{n}"].ravel() for n in names]))
    d = np.stack(x[1:]) - x[0]
    expected = (d @ d.T) / np.outer(np.linalg.norm(d, axis=1), np.linalg.norm(d, axis=1))
    np.testing.assert_allclose(as_array(doc["matrix"]), expected, rtol=0, atol=1e-12)
    assert doc["n_params"] == sum(base_sd[n].size for n in names)

    listed = run_json(["inspect", ft, "--reference", base])
    left = {d["tensor"] for d in listed["left_out"] if "checkpoint" in d}
    assert left == {"classifier.weight", "classifier.bias"}
    result = run(["inspect", ft, "--reference", base])
    assert "tensor names aligned: 'bert.' removed" in result.stderr and "classifier" in result.stderr

    dyn = run_json(["dynamics", ft, "--reference", base])
    model = next(g for g in dyn["groups"] if g["name"] == "model")
    assert dyn["steps"] == [0, 5, 10] and model["distance_to_first"][0] == 0.0
    assert model["distance_to_first"][2] == pytest.approx(np.linalg.norm(d[1]), rel=1e-12)


def test_the_report_starts_from_the_base(tmp_path):
    base, ft = _bert_base_and_finetune(tmp_path)
    result = run(["report", ft, "--reference", base, "--out", tmp_path / "out", "-q"])
    assert result.exit_code == 0, result.stderr
    disp = json.loads((tmp_path / "out" / "similarity_displacement.json").read_text())
    alone = run_json(["similarity", ft, "--reference", base, "--mode", "displacement"])
    assert disp["reference"] == "base" and disp["labels"] == alone["labels"]
    np.testing.assert_allclose(as_array(disp["matrix"]), as_array(alone["matrix"]), rtol=0, atol=1e-12)  # another cut


def _save(folder, tensors: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.as_tensor(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))


def test_an_ambiguous_prefix_is_refused_with_the_candidates_and_forced_with_strip_prefix(tmp_path):
    rng = np.random.default_rng(3)
    def w():
        return rng.standard_normal((4, 4)).astype(np.float32)

    _save(tmp_path / "base", {"a.weight": w()})
    run_sds = [{"x.a.weight": w(), "y.a.weight": w()} for _ in range(2)]
    for k, sd in enumerate(run_sds):
        _save(tmp_path / "run" / f"step{k + 1}", sd)
    refused = run(["similarity", tmp_path / "run", "--reference", tmp_path / "base"])
    assert refused.exit_code == 1 and "Traceback" not in refused.stderr
    assert "can be aligned in 2 ways" in refused.stderr
    assert "'x.' removed from step1 … step2" in refused.stderr and "'y.' removed from step1 … step2" in refused.stderr
    assert "--strip-prefix" in refused.stderr

    doc = run_json(["similarity", tmp_path / "run", "--reference", tmp_path / "base", "--strip-prefix", "x.",
                    "--mode", "displacement"])
    assert doc["name_alignment"] == [] and doc["n_params"] == 16
    x0 = _tensors(tmp_path / "base")["a.weight"].ravel()
    d = np.stack([sd["x.a.weight"].astype(np.float64).ravel() - x0 for sd in run_sds])
    expected = (d @ d.T) / np.outer(np.linalg.norm(d, axis=1), np.linalg.norm(d, axis=1))
    np.testing.assert_allclose(as_array(doc["matrix"]), expected, rtol=0, atol=1e-12)


def test_no_alignment_unless_one_side_maps_whole(tmp_path):
    """A base with a head the fine-tune lacks (`cls.`) and a fine-tune with one the base lacks: no side
    maps whole, so nothing is guessed; --strip-prefix says what the user means."""
    rng = np.random.default_rng(4)
    def w():
        return rng.standard_normal((3, 3)).astype(np.float32)

    _save(tmp_path / "base", {"enc.weight": w(), "cls.weight": w()})
    for k in range(2):
        _save(tmp_path / "run" / f"step{k + 1}", {"bert.enc.weight": w(), "classifier.weight": w()})
    refused = run(["similarity", tmp_path / "run", "--reference", tmp_path / "base"])
    assert refused.exit_code == 1 and "no tensor to analyse" in refused.stderr and "--strip-prefix" in refused.stderr
    doc = run_json(["similarity", tmp_path / "run", "--reference", tmp_path / "base", "--strip-prefix", "bert."])
    assert doc["n_params"] == 9


def test_a_reference_after_the_first_checkpoint_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    for step in (1, 2):
        _save(tmp_path / "run" / f"step{step}", {"w": rng.standard_normal(3).astype(np.float32)})
    _save(tmp_path / "other" / "step7", {"w": rng.standard_normal(3).astype(np.float32)})
    result = run(["similarity", tmp_path / "run", "--reference", tmp_path / "other" / "step7"])
    assert result.exit_code == 1 and "is at step 7, after the trajectory's first checkpoint step1" in result.stderr
    missing = run(["similarity", tmp_path / "run", "--reference", "nowhere"])
    assert missing.exit_code == 2 and "names no checkpoint of this trajectory and no file or folder" in missing.stderr


def test_curvature_names_an_architecture_that_is_not_a_causal_lm(tmp_path):
    _, ft = _bert_base_and_finetune(tmp_path)
    np.save(tmp_path / "tokens.npy", np.arange(64) % 30)
    result = run(["curvature", ft, "--data", tmp_path / "tokens.npy"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert ("describes BertForSequenceClassification (model_type 'bert'), not a causal language model"
            in result.stderr)
    assert "--model MODULE:FUNCTION that builds BertForSequenceClassification" in result.stderr
