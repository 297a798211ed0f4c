"""`trajcli layers`: the trajectory map of every group of tensors."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from trajcli.cli.app import warn_all
from trajcli.cli.options import (
    FormatOpt,
    JsonOpt,
    ModeOpt,
    OutOpt,
    PathsArg,
    StrictOpt,
    finish,
    read_pass,
    reads,
    refuse_nonfinite,
)

ByOpt = Annotated[Literal["tensor", "block", "role"], typer.Option("--by", help="tensor: each parameter tensor; block: embedding, each block, final; role: attention q/k/v/o, mlp, norm … per block.")]


@reads("heads", "selection", "options")
def layers(paths: PathsArg, by: ByOpt = "block", mode: ModeOpt = "raw", out: OutOpt = None,
           plot_format: FormatOpt = "png", json_output: JsonOpt = False, strict: StrictOpt = False, *,
           heads, selection, options) -> None:
    """Trajectory map, MDS and lengths and bends of every group: tensor, block or role.

    All groups come from one pass. With --by role and a known architecture, fused Q/K/V projections
    are split into their q, k and v parts. Examples:

      trajcli layers runs/out --by block --mode displacement --out results/

      trajcli layers pythia-70m/ --by role --json | jq '.groups[] | [.name, .mds]'
    """
    from trajcli.analysis import Architecture, detect_architecture, layers_result
    from trajcli.arch.grouping import MergedBlocksError, plan_layers
    from trajcli.errors import DataError
    from trajcli.report import render

    def plan_for(inv):
        try:
            architecture = detect_architecture(inv, heads.arch, heads.flags)
        except DataError as exc:
            # the role split of a fused projection needs the layout; blocks, tensors and separate
            # q/k/v projections (an encoder-decoder model's) do not
            if heads.arch or (by == "role" and not isinstance(exc, MergedBlocksError)):
                raise
            architecture = Architecture(None, "not detected", None, None)
        plan = plan_layers(inv.tensors, by, architecture.family, architecture.heads)
        return plan.segments, (plan, architecture)

    inv, grams, out_dir, (plan, architecture) = read_pass(paths, selection, out, options, plan_for)
    doc, matrices, warnings = layers_result(inv, grams, plan, by, mode, architecture)
    warn_all(inv.warnings + warnings, options.quiet)
    refuse_nonfinite(strict, grams)
    written = render.write(out_dir, render.add_layers, doc, matrices, plot_format) if out_dir is not None else []
    finish(doc, written, json_output, render.print_layers)
