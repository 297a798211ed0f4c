"""`trajcli plot`: figures again from saved results, or several runs overlaid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from trajcli.cli.options import FormatOpt, out_folder

ResultsArg = Annotated[list[Path], typer.Argument(help="Saved result files: similarity.json, layers.json, qkv.json.", show_default=False, metavar="RESULT.json")]
PlotOutOpt = Annotated[Path, typer.Option("--out", "-o", parser=out_folder, help="Folder for the plots.")]
LabelOpt = Annotated[Optional[list[str]], typer.Option("--label", help="A name per result file for legends [default: its folder's name].")]


def plot(results: ResultsArg, out: PlotOutOpt = Path("."), label: LabelOpt = None, plot_format: FormatOpt = "png") -> None:
    """Redraw saved results, or overlay several runs, without reading any checkpoint.

    One file: its plots again. Several qkv.json: ω_Q/ω_K/ω_V of every run on normalized depth in one
    figure; several layers.json: their MDS along depth. Examples:

      trajcli plot results/qkv.json --format svg

      trajcli plot small/qkv.json large/qkv.json --label 70m --label 1b --out compare/
    """
    from trajcli.report import render

    for path in render.replot(results, out, label, plot_format):
        typer.echo(f"wrote {path}")
