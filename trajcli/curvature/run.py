"""The curvature walk: one model, one fixed batch, every checkpoint in order (each read once).

At checkpoint k: loss and gradient; the top Hessian eigenvalues (Lanczos) and trace (Hutchinson) on
Hessian-vector products; the gradient glass on a grid of σ, per block; and the curvature along the
run's own next step θ_{k+1} − θ_k. The model is built once; each checkpoint's weights are copied
into it. The same random directions are used at every checkpoint (the generator is re-seeded), so
that changes along the trajectory are not sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trajcli.arch.grouping import plan_layers
from trajcli.curvature.batch import Batch
from trajcli.curvature.model import ProbeModel
from trajcli.curvature.probes import Objective, along_direction, glass, hessian_trace, lanczos
from trajcli.errors import DataError
from trajcli.io.inventory import Inventory
from trajcli.metrics.curvature import finite_or_none, glass_groups
from trajcli.types import TensorSpec

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class CurvatureSettings:
    top_k: int = 3
    lanczos_iters: int = 40
    tol: float = 1e-3
    trace_samples: int = 16
    exact_trace_max: int = 2048  # tr H exactly, from n unit vectors, for models of at most this many parameters
    glass_samples: int = 2
    sigmas: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
    step_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seed: int = 0
    dtype: str = "float64"
    device: str = "cpu"

    def to_json(self) -> dict:
        return {"top_k": self.top_k, "lanczos_max_iterations": self.lanczos_iters, "lanczos_tol": self.tol,
                "trace_samples": self.trace_samples, "exact_trace_max": self.exact_trace_max,
                "glass_samples": self.glass_samples, "sigmas": list(self.sigmas),
                "step_fractions": list(self.step_fractions), "seed": self.seed, "dtype": self.dtype,
                "device": self.device}


def _flat(tensors: list[torch.Tensor], dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.cat([t.to(dtype).reshape(-1) for t in tensors]).to(device)


@torch.no_grad()
def _load_buffers(module: torch.nn.Module, buffers: dict[str, torch.Tensor], where: str) -> None:
    own = dict(module.named_buffers())
    for name, value in buffers.items():
        if name not in own or not own[name].is_floating_point():
            continue
        if tuple(value.shape) != tuple(own[name].shape):
            raise DataError(f"{where}: buffer {name} has shape {list(value.shape)}, the model's has "
                            f"{list(own[name].shape)}", "the model does not match the checkpoints")
        own[name].copy_(value)


def _block_groups(probe: ProbeModel) -> tuple[list[str], list[int], torch.Tensor]:
    """Blocks (embedding, block.0 …, final) of the parameters; each coordinate's block index."""
    specs = [TensorSpec(n, tuple(p.shape), ()) for n, p in zip(probe.names, probe.params)]
    groups = plan_layers(specs, "block", None, None).groups
    index = {leaf: i for i, g in enumerate(groups) for leaf in g.leaves}
    group_of = torch.cat([torch.full((p.numel(),), index[n], dtype=torch.long) for n, p in zip(probe.names, probe.params)])
    return [g.name for g in groups], [g.n_params for g in groups], group_of


def measure_curvature(inv: Inventory, probe: ProbeModel, batch: Batch, settings: CurvatureSettings,
                      on_checkpoint: Callable[[int], None] | None = None, strict: bool = False) -> dict:
    """Every checkpoint's curvature measurements, in the order of the inventory; `strict`: weights
    holding NaN/Inf are refused (else only a loss that is not finite is)."""
    dtype, device = DTYPES[settings.dtype], settings.device
    module = probe.module.to(device=device, dtype=dtype).eval()  # eval: no dropout, a deterministic loss
    for p in probe.params:
        p.requires_grad_(True)
    data = batch.to(device, dtype)
    objective = Objective(module, probe.loss_fn, data.data, probe.params, str(inv.checkpoints[0].path))
    names, sizes, group_of = _block_groups(probe)
    group_of = group_of.to(device)
    points = []
    params, buffers = probe.snapshot(0)
    theta_next = _flat(params, dtype, device)
    for k, ckpt in enumerate(inv.checkpoints):
        theta, these_buffers = theta_next, buffers
        last = k + 1 == len(inv.checkpoints)
        if not last:  # each checkpoint is read once: the next one now, for the step θ_{k+1} − θ_k
            params, buffers = probe.snapshot(k + 1)
            theta_next = _flat(params, dtype, device)
        objective.where = str(ckpt.path)
        if strict and not bool(torch.isfinite(theta).all()):
            n_bad = int((~torch.isfinite(theta)).sum())
            raise DataError(f"{ckpt.path}: {n_bad} weight(s) hold NaN/Inf values (--strict)",
                            "drop --strict to measure where the loss is still finite")
        _load_buffers(module, these_buffers, str(ckpt.path))
        objective.set(theta)
        loss, g0 = objective.gradient()
        if not np.isfinite(loss):
            raise DataError(f"{ckpt.path}: the loss on the batch is {loss}", "the weights or the data hold NaN/Inf values")
        gen = torch.Generator().manual_seed(settings.seed)
        start = torch.randn(objective.n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        with objective.hessian() as hvp:
            eig = lanczos(hvp, objective.n, start, settings.top_k, settings.lanczos_iters, settings.tol)
            # fresh probes at every checkpoint: the same ones would make their error move together along
            # the run and look like a trend (the glass keeps its directions: there the comparison is the point)
            probes = torch.Generator().manual_seed(settings.seed * 1_000_003 + k + 1)
            trace = hessian_trace(hvp, objective.n, settings.trace_samples, probes, theta,
                                  exact_max=settings.exact_trace_max)
            direction = None if last else along_direction(objective, hvp, theta, loss, theta_next - theta,
                                                          list(settings.step_fractions))
        sums = glass(objective, theta, g0, list(settings.sigmas), settings.glass_samples, group_of, len(names), gen,
                     loss0=loss)
        glass_doc = glass_groups(["model"] + names, [objective.n] + sizes, sums.d2, sums.h_abs, list(settings.sigmas),
                                 sums.d2_stderr, sums.h_abs_stderr)
        curvature = [{"sigma": s, "value": finite_or_none(v), "stderr": finite_or_none(e)}
                     for s, v, e in zip(settings.sigmas, sums.loss_curvature, sums.loss_curvature_stderr)]
        points.append({"loss": loss, "grad_norm": float(torch.linalg.vector_norm(g0)), "lanczos": eig,
                       "trace": trace, "direction": direction, "glass": glass_doc, "loss_curvature": curvature})
        if on_checkpoint is not None:
            on_checkpoint(k)
    return {"model": {"source": probe.source, "n_params": objective.n, "n_tensors": len(probe.names)},
            "points": points}


def curvature_pass(inv: Inventory, data: Path, model: str | None, batch_size: int, seq_len: int | None,
                   settings: CurvatureSettings, on_checkpoint: Callable[[int], None] | None = None,
                   strict: bool = False) -> tuple[dict, dict]:
    """Build the model (config.json via transformers, or --model), draw the batch, walk the checkpoints.
    Returns the measurements and the batch's description."""
    from trajcli.curvature.batch import load_batch
    from trajcli.curvature.model import hf_model, user_model
    from trajcli.io.config import find_model_config

    config, _ = find_model_config(inv.checkpoints)
    probe = user_model(model, config, inv) if model else hf_model(inv)
    folders = [c.path if c.path.is_dir() else c.path.parent for c in inv.checkpoints[:1]]
    batch = load_batch(data, batch_size, settings.seed, seq_len, tokenizer_dirs=folders + [f.parent for f in folders],
                       vocab_size=probe.vocab_size, max_positions=probe.max_positions)
    return measure_curvature(inv, probe, batch, settings, on_checkpoint, strict), batch.description
