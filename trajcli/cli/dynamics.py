"""`trajcli dynamics`: norms, angular steps, effective learning rates and regimes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from trajcli.cli.app import warn_all
from trajcli.cli.options import (
    FormatOpt,
    JsonOpt,
    LossFileOpt,
    LrFileOpt,
    LrOpt,
    OutOpt,
    PathsArg,
    StrictOpt,
    check_lr,
    finish,
    read_pass,
    reads,
    refuse_nonfinite,
)

ScaleInvariantOpt = Annotated[Optional[str], typer.Option("--scale-invariant", help="Regex of the weights a normalization follows [default: ResNet-style conv + batch norm].")]


@reads("selection", "options")
def dynamics(paths: PathsArg, lr: LrOpt = None, lr_file: LrFileOpt = None, loss_file: LossFileOpt = None,
             scale_invariant: ScaleInvariantOpt = None, out: OutOpt = None, plot_format: FormatOpt = "png",
             json_output: JsonOpt = False, strict: StrictOpt = False, *, selection, options) -> None:
    """Norms, angular steps and effective learning rates η/‖w‖² per group, and the regime
    (convergence, equilibrium, divergence or undetermined) of scale-invariant weights over the later
    half of the run.

    Groups: the whole model, the scale-invariant set, each block, each tensor. Examples:

      trajcli dynamics runs/out --out results/

      trajcli dynamics resnet-run/ --lr-file lr.csv --scale-invariant 'conv\\d\\.weight$' --json
    """
    from trajcli.analysis import dynamics_result
    from trajcli.arch.grouping import scale_invariant_tensors
    from trajcli.errors import UsageError
    from trajcli.io.inventory import compile_regex
    from trajcli.io.lr import learning_rate_points
    from trajcli.report import render

    check_lr(lr, lr_file)
    pattern = compile_regex(scale_invariant, "--scale-invariant")

    def plan_for(inv):
        if inv.reference_idx != 0:
            raise UsageError(f"dynamics measures from the first checkpoint; --reference {selection.reference} is "
                             f"checkpoint {inv.reference_idx} of the trajectory",
                             "give the path of a checkpoint outside the trajectory (e.g. the base model), or "
                             "select a later start with --steps")
        names = {t.name for t in inv.tensors} | {d["tensor"] for d in inv.left_out}
        return {}, scale_invariant_tensors(inv.tensors, names, pattern)

    inv, grams, out_dir, invariant = read_pass(paths, selection, out, options, plan_for)
    points, source = learning_rate_points(inv, lr, lr_file)
    doc, warnings = dynamics_result(inv, grams, points, source, invariant, loss_file)
    warn_all(inv.warnings + warnings, options.quiet)
    refuse_nonfinite(strict, grams)
    written = render.write(out_dir, render.add_dynamics, doc, plot_format) if out_dir is not None else []
    finish(doc, written, json_output, render.print_dynamics)
