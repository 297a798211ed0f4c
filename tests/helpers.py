"""Builders of tiny real checkpoints, and the explicit float64 computations tests compare against."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from trajcli.cli import app

SHAPES = {
    "embed.weight": (11, 6),
    "layers.0.attn.weight": (18, 6),
    "layers.0.attn.bias": (18,),
    "layers.0.norm.weight": (6,),
    "layers.1.mlp.weight": (7, 6, 2),
    "head.scale": (),
}


def random_trajectory(n: int, seed: int = 0, shapes: dict = SHAPES, step_scale: float = 0.3,
                      dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    """N state dicts: a random start and random steps of relative size `step_scale`."""
    gen = torch.Generator().manual_seed(seed)
    theta = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    out = []
    for _ in range(n):
        out.append({k: v.to(dtype).clone() for k, v in theta.items()})
        theta = {k: v + step_scale * torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in theta.items()}
    return out


def flatten(sd: dict[str, torch.Tensor], names: list[str] | None = None) -> np.ndarray:
    names = sorted(sd) if names is None else names
    return np.concatenate([sd[k].to(torch.float64).reshape(-1).numpy() for k in names])


def explicit_matrix(sds: list[dict], mode: str, reference_idx: int = 0, names: list[str] | None = None) -> np.ndarray:
    """The trajectory map computed the obvious way: stack the flattened float64 vectors, take cosines."""
    x = np.stack([flatten(sd, names) for sd in sds])  # (n_ckpt, n_params)
    if mode == "displacement":
        x = np.delete(x - x[reference_idx], reference_idx, axis=0)
    elif mode == "update":
        x = x[1:] - x[:-1]
    norms = np.linalg.norm(x, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero vector gives NaN, as it should
        return (x @ x.T) / np.outer(norms, norms)


def as_array(matrix: list[list]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)


# ---- writers: one per producer -------------------------------------------------------------

def save_safetensors_dir(folder: Path, sd: dict, **extra_files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    for name, content in extra_files.items():
        (folder / name).write_text(content)
    return folder


def save_hub_sharded(folder: Path, sd: dict, safe: bool = True, shard_bytes: int = 400) -> Path:
    """huggingface_hub's own sharded writer (model-0000i-of-0000n.* + index)."""
    from huggingface_hub import save_torch_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict({k: v.contiguous() for k, v in sd.items()}, folder, max_shard_size=shard_bytes,
                          safe_serialization=safe)
    return folder


def write_trainer_state(folder: Path, step: int) -> None:
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))


def save_nanogpt(path: Path, sd: dict, iter_num: int, compiled: bool = True) -> Path:
    prefix = "_orig_mod." if compiled else ""
    torch.save({
        "model": {prefix + k: v for k, v in sd.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 6e-4, "params": [0]}]},
        "model_args": {"n_layer": 2, "n_head": 2, "n_embd": 6},
        "iter_num": iter_num,
        "best_val_loss": torch.tensor(2.5),
        "config": {"batch_size": 12, "learning_rate": 6e-4},
    }, path)
    return path


def save_lightning(path: Path, sd: dict, global_step: int, attribute: str = "model") -> Path:
    torch.save({
        "epoch": 0,
        "global_step": global_step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"{attribute}.{k}": v for k, v in sd.items()},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 1e-3},
    }, path)
    return path


def save_deepspeed(folder: Path, sd: dict, step: int) -> Path:
    ckpt = folder / f"global_step{step}"
    ckpt.mkdir(parents=True)
    torch.save({"module": dict(sd), "global_steps": step, "dp_world_size": 1}, ckpt / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (folder / "latest").write_text(f"global_step{step}")
    return ckpt


def save_hub_cache(root: Path, sds: dict[str, dict], repo_id: str = "org/tiny") -> Path:
    """models--org--name/ with blobs, snapshots/<hash>/ (symlinks to blobs) and refs/<revision>."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    for i, (revision, sd) in enumerate(sds.items()):
        commit = f"{i:040x}"
        blob = repo / "blobs" / f"blob{i}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(blob))
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        os.symlink(os.path.relpath(blob, snap), snap / "model.safetensors")
        ref = repo / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return repo


# ---- running the CLI -----------------------------------------------------------------------

def run(args: list[str], input: str | None = None):
    """Invoke the CLI in-process; stdout and stderr are kept apart."""
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def run_json(args: list[str], input: str | None = None) -> dict:
    result = run([*args, "--json"], input=input)
    assert result.exit_code == 0, result.stderr
    return loads_strict(result.stdout)


def loads_strict(text: str):
    """json.loads that fails on NaN/Infinity, which strict JSON does not have."""
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str):
    raise AssertionError(f"non-strict JSON constant {name}")
