"""`trajcli qkv`: the query, key and value parts of every attention layer."""

from __future__ import annotations

from typing import Annotated

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

PerHeadOpt = Annotated[bool, typer.Option("--per-head", help="Also each attention head (K/V heads under grouped-query attention).")]
BiasOpt = Annotated[bool, typer.Option("--bias/--no-bias", help="Include each part's bias with its weight.")]


@reads("heads", "selection", "options")
def qkv(paths: PathsArg, mode: ModeOpt = "displacement", per_head: PerHeadOpt = False, bias: BiasOpt = True,
        out: OutOpt = None, plot_format: FormatOpt = "png", json_output: JsonOpt = False, strict: StrictOpt = False, *,
        heads, selection, options) -> None:
    """Q/K/V heterogeneity: the query, key and value parts of every attention layer as separate groups.

    Fused projections are split exactly as the model's forward pass does (interleaved per head for
    GPT-NeoX, BLOOM and Falcon). Reports ω_Q, ω_K, ω_V, heterogeneity and map distance per layer.
    Examples:

      trajcli qkv pythia-160m/ --out results/

      trajcli qkv runs/nanogpt/ --per-head --mode update --json > qkv.json
    """
    from trajcli.analysis import detect_architecture, qkv_result
    from trajcli.arch.grouping import plan_qkv
    from trajcli.errors import DataError
    from trajcli.report import render

    def plan_for(inv):
        architecture = detect_architecture(inv, heads.arch, heads.flags)
        if architecture.family is None:
            fits = f" (fits {', '.join(architecture.ambiguous)})" if architecture.ambiguous else ""
            raise DataError(f"cannot tell how Q, K and V are stored: {architecture.source}{fits}",
                            "pass --arch NAME (trajcli archs lists them), with --num-heads N where config.json is missing")
        plan, layer_ids = plan_qkv(inv.tensors, architecture.family, architecture.heads, per_head, bias)
        return plan.segments, (plan, architecture, layer_ids)

    inv, grams, out_dir, (plan, architecture, layer_ids) = read_pass(paths, selection, out, options, plan_for)
    doc, warnings = qkv_result(inv, grams, plan, layer_ids, mode, architecture, bias, per_head)
    warn_all(inv.warnings + warnings, options.quiet)
    refuse_nonfinite(strict, grams)
    if strict and plan.unclaimed:
        raise DataError(f"{len(plan.unclaimed)} attention-like tensor(s) are not placed by the "
                        f"{architecture.family.name} layout (--strict), e.g. {plan.unclaimed[0]}; nothing was written",
                        "drop --strict to analyse the tensors the layout places, or pass the --arch that places them")
    written = render.write(out_dir, render.add_qkv, doc, plot_format) if out_dir is not None else []
    finish(doc, written, json_output, render.print_qkv)
