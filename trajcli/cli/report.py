"""`trajcli report`: every analysis from one pass, every file, and report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trajcli.cli.app import warn_all
from trajcli.cli.curvature import (
    BatchSizeOpt,
    CurvatureRequest,
    DataOpt,
    DtypeOpt,
    ModelOpt,
    MomentumOpt,
    SeedOpt,
    SeqLenOpt,
    TopKOpt,
    curvature_settings,
    measure,
)
from trajcli.cli.options import (
    FormatOpt,
    JsonOpt,
    LossFileOpt,
    LrFileOpt,
    LrOpt,
    PathsArg,
    StrictOpt,
    check_lr,
    out_folder,
    read_pass,
    reads,
    refuse_nonfinite,
)

ReportOutOpt = Annotated[Path, typer.Option("--out", "-o", parser=out_folder, help="Folder for the report and every result file (created if needed).")]


@reads("heads", "selection", "options")
def report(
    paths: PathsArg,
    out: ReportOutOpt,
    lr: LrOpt = None,
    lr_file: LrFileOpt = None,
    loss_file: LossFileOpt = None,
    plot_format: FormatOpt = "png",
    data: DataOpt = None,
    model: ModelOpt = None,
    batch_size: BatchSizeOpt = None,
    seq_len: SeqLenOpt = None,
    seed: SeedOpt = 0,
    top_k: TopKOpt = 3,
    momentum: MomentumOpt = None,
    dtype: DtypeOpt = "float64",
    json_output: JsonOpt = False,
    strict: StrictOpt = False,
    *, heads, selection, options,
) -> None:
    """Everything from one pass: trajectory maps in three modes, layers by block and role, Q/K/V
    (with heads) when the architecture is known, lengths and bends, the 2-D trajectory, dynamics;
    every JSON/CSV/NPY file, the plots and a self-contained report.html. With --data, also the
    curvature along the trajectory (as `trajcli curvature`, default settings).

    Examples:

      trajcli report runs/out --out report/

      trajcli report pythia-160m/ --every 4 --out pythia-160m-report/ --format svg
    """
    check_lr(lr, lr_file)
    probe = None
    if data is not None:
        settings = curvature_settings(seed=seed, top_k=top_k, dtype=dtype, device=options.device)
        probe = CurvatureRequest(data, model, batch_size, seq_len, settings, momentum, strict)
    elif model is not None:
        raise typer.BadParameter("--model needs --data (the batch the curvature is measured on)", param_hint="'--model'")
    run_report(paths, out, selection, options, heads=heads, plot_format=plot_format, json_output=json_output, lr=lr,
               lr_file=lr_file, curvature=probe, strict=strict, loss_file=loss_file)


def run_report(paths, out, selection, options, *, heads=None, plot_format="png", json_output=False, lr=None,
               lr_file=None, curvature=None, strict=False, loss_file=None) -> None:
    """The report flow, shared by `report` and `demo`: plan the finest cut, one pass (or saved Grams),
    every analysis, every file; with a `CurvatureRequest`, the curvature walk too."""
    from trajcli.analysis import curvature_headline, report_plan_for, report_result
    from trajcli.io.lr import learning_rate_points
    from trajcli.report import render
    from trajcli.report.drawing import Drawer

    plan_for = report_plan_for(heads.arch if heads else None, heads.flags if heads else {})
    # The drawing workers start now and import matplotlib while the pass reads; a dozen figures are
    # then drawn beside the analyses (see trajcli.report.drawing)
    with Drawer() as drawer:
        inv, grams, out_dir, plans = read_pass(paths, selection, out, options, plan_for)
        refuse_nonfinite(strict, grams)
        points, source = learning_rate_points(inv, lr, lr_file)
        with render.ReportWriter(out_dir, plot_format, drawer) as writer:
            result = report_result(inv, grams, plans, points, source, on_part=writer.add, loss_file=loss_file)
            warn_all(result["warnings"], options.quiet)
            if curvature is not None:
                writer.publish()  # the pass's results are on disk while the curvature is measured
                result["curvature"], _, warnings = measure(paths, selection, curvature, lr, lr_file, options.quiet)
                result["warnings"] += warnings  # on the page and in report.json with the others
                result["headline"].update(curvature_headline(result["curvature"]))
                writer.add(result, "curvature")
            document, written = writer.finish(result)
    if json_output:
        render.print_json(document)
    else:
        render.print_report(document, written)
