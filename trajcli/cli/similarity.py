"""`trajcli similarity`: the trajectory map of the whole model."""

from __future__ import annotations

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


@reads("selection", "options")
def similarity(paths: PathsArg, mode: ModeOpt = "raw", out: OutOpt = None, plot_format: FormatOpt = "png",
               json_output: JsonOpt = False, strict: StrictOpt = False, *, selection, options) -> None:
    """Trajectory map (cosine similarity between checkpoints), its MDS, and lengths and bends.

    One streaming pass over the checkpoints. Examples:

      trajcli similarity runs/out --mode displacement --out results/

      trajcli similarity pythia-160m/ --every 4 --json | jq .mds
    """
    from trajcli.analysis import similarity_result
    from trajcli.report import render

    inv, grams, out_dir, _ = read_pass(paths, selection, out, options)
    doc, matrix, warnings = similarity_result(inv, grams, mode)
    warn_all(inv.warnings + warnings, options.quiet)
    refuse_nonfinite(strict, grams)
    written = render.write(out_dir, render.add_similarity, doc, matrix, plot_format) if out_dir is not None else []
    finish(doc, written, json_output, render.print_similarity)
