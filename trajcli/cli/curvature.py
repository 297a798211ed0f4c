"""`trajcli curvature` (and the curvature part of `report`): the model at every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from trajcli.cli.app import warn_all
from trajcli.cli.options import (
    DeviceOpt,
    EveryOpt,
    FormatOpt,
    JsonOpt,
    LrFileOpt,
    LrOpt,
    MaxOpt,
    OutOpt,
    PathsArg,
    QuietOpt,
    StepsOpt,
    StrictOpt,
    check_lr,
    finish,
)

DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Token ids (.npy/.pt), a text file (tokenized with the checkpoints' tokenizer), or arrays (.npz/.pt) for a --model loss.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="MODULE:FUNCTION (or FILE.py:FUNCTION) returning (nn.Module, loss_fn(module, batch)) [default: the causal LM of config.json, pip install 'trajcli[models]'].")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Rows (sequences) in the one fixed batch used at every checkpoint [default: every row of --data, at most 256].")]
SeqLenOpt = Annotated[Optional[int], typer.Option("--seq-len", min=2, help="Tokens per sequence [default: 128, at most the model's context].")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the batch rows and of every random direction.")]
TopKOpt = Annotated[int, typer.Option("--top-k", min=1, help="How many of the largest Hessian eigenvalues.")]
MomentumOpt = Annotated[Optional[float], typer.Option("--momentum", min=0.0, max=1.0, help="The run's momentum (SGD) or Adam beta1, for the momentum edge-of-stability line [default: the optimizer state].")]
DtypeOpt = Annotated[Literal["float64", "float32"], typer.Option("--dtype", help="Precision of the model during the probes: float64 (exact finite differences) or float32.")]


@dataclass
class CurvatureRequest:
    """What `curvature` (and `report --data`) measures on: data, model, batch, probe settings."""

    data: Path
    model: str | None
    batch_size: int | None  # None: every row of the data file (at most 256)
    seq_len: int | None
    settings: object  # trajcli.curvature.run.CurvatureSettings (imported lazily)
    momentum: float | None = None
    strict: bool = False  # weights holding NaN/Inf stop the walk


def curvature_settings(**kwargs):
    from trajcli.curvature.run import CurvatureSettings
    from trajcli.engine.gram import resolve_device

    kwargs["device"] = resolve_device(kwargs["device"])
    return CurvatureSettings(**kwargs)


def measure(paths, selection, request: CurvatureRequest, lr, lr_file, quiet: bool, out=None):
    """Inventory (headers), the --out check, the model and the batch, the walk over the checkpoints;
    returns the document, the output folder (None without `out`) and the curvature's own warnings
    (already shown, with the inventory's)."""
    from trajcli.analysis import curvature_result
    from trajcli.curvature.run import curvature_pass
    from trajcli.io.lr import learning_rate_points, momentum_of
    from trajcli.pipeline import load_inventory, progress_bar
    from trajcli.report import render

    inv = load_inventory(paths, selection, min_checkpoints=1)
    try:
        out_dir = render.prepare_out(out, inv) if out is not None else None
        with progress_bar(len(inv.checkpoints), quiet, "curvature", "checkpoints") as advance:
            measured, data = curvature_pass(inv, request.data, request.model, request.batch_size, request.seq_len,
                                            request.settings, (lambda k: advance(1)) if advance else None,
                                            request.strict)
        points, source = learning_rate_points(inv, lr, lr_file)
        momentum, momentum_source = momentum_of(inv, request.momentum)
    finally:
        inv.close()
    doc, warnings = curvature_result(inv, measured, data, request.settings.to_json(), points, source,
                                     momentum, momentum_source)
    warn_all(inv.warnings + warnings, quiet)
    return doc, out_dir, warnings


def positive_floats(text: str, flag: str, at_least: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=f"'{flag}'") from None
    if len(values) < at_least or any(not v > 0 for v in values):
        raise typer.BadParameter(f"{text!r}: give at least {at_least} positive numbers", param_hint=f"'{flag}'")
    return tuple(sorted(set(values)))


def curvature(
    paths: PathsArg,
    data: DataOpt,  # required here (no default); optional on `report`
    model: ModelOpt = None,
    batch_size: BatchSizeOpt = None,
    seq_len: SeqLenOpt = None,
    seed: SeedOpt = 0,
    top_k: TopKOpt = 3,
    lanczos_iters: Annotated[int, typer.Option("--lanczos-iters", min=1, help="Most Hessian-vector products per checkpoint for the eigenvalues (memory: this many model-sized vectors).")] = 40,
    tol: Annotated[float, typer.Option("--tol", min=0.0, help="Lanczos stops when every top-k residual ‖Hy − λy‖ is below tol·|λ_max|.")] = 1e-3,
    trace_samples: Annotated[int, typer.Option("--trace-samples", min=1, help="Rademacher vectors for Hutchinson's trace, fresh at each checkpoint.")] = 16,
    exact_trace_max: Annotated[int, typer.Option("--exact-trace-max", min=0, help="The trace is exact (one Hessian-vector product per parameter) for models of at most this many parameters.")] = 2048,
    glass_samples: Annotated[int, typer.Option("--glass-samples", min=1, help="Rademacher directions z for the glass diagnostics.")] = 2,
    sigmas: Annotated[str, typer.Option("--sigmas", help="Comma-separated perturbation sizes σ for the glass (absolute, in parameter units).")] = "1e-5,3e-5,1e-4,3e-4,1e-3",
    step_fractions: Annotated[str, typer.Option("--step-fractions", help="Comma-separated h/‖θ_k+1 − θ_k‖ for the finite-difference curvature along the step.")] = "0.01,0.1,1",
    dtype: DtypeOpt = "float64",
    lr: LrOpt = None,
    lr_file: LrFileOpt = None,
    momentum: MomentumOpt = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    out: OutOpt = None,
    plot_format: FormatOpt = "png",
    device: DeviceOpt = "auto",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Curvature at every checkpoint on one fixed batch: loss, gradient norm, top Hessian eigenvalues
    (Lanczos) against 2/η, Hessian trace (Hutchinson), curvature along the run's own next step, and
    the gradient "glass" per block (the exponent p of E[((g⁺+g⁻)/2 − g⁰)²] ∝ σ^p: ≈4 smooth, ≈1 where
    gradient jumps dominate).

    Needs the model: a Hugging Face causal LM from each checkpoint's config.json (pip install
    'trajcli[models]'), or --model MODULE:FUNCTION. Examples:

      trajcli curvature runs/out --data val_tokens.npy --batch-size 16 --out results/

      trajcli curvature trajcli-demo/checkpoints --data trajcli-demo/tokens.npy --model trajcli.demo:curvature_model
    """
    from trajcli.io.inventory import Selection
    from trajcli.report import render

    check_lr(lr, lr_file)
    settings = curvature_settings(top_k=top_k, lanczos_iters=lanczos_iters, tol=tol, trace_samples=trace_samples,
                                  exact_trace_max=exact_trace_max, glass_samples=glass_samples,
                                  sigmas=positive_floats(sigmas, "--sigmas", 2),
                                  step_fractions=positive_floats(step_fractions, "--step-fractions", 1),
                                  seed=seed, dtype=dtype, device=device)
    request = CurvatureRequest(data, model, batch_size, seq_len, settings, momentum, strict)
    doc, out_dir, _ = measure(paths, Selection(every, max_checkpoints, steps), request, lr, lr_file, quiet, out)
    written = render.write(out_dir, render.add_curvature, doc, plot_format) if out_dir is not None else []
    finish(doc, written, json_output, render.print_curvature)
