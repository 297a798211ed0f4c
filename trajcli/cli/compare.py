"""`trajcli compare`: runs side by side, and their joint trajectory map."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from trajcli.cli.options import FormatOpt, JsonOpt, OutOpt, finish, reads

RunsArg = Annotated[list[str], typer.Argument(help="Runs: checkpoint folders (or result folders of `trajcli report`), each PATH or NAME=PATH.", show_default=False, metavar="RUN")]
GroupOpt = Annotated[Optional[str], typer.Option("--group", help="Regex on run names whose first group is the setting (seeds of one setting form a group), e.g. '^(.*)-seed\\d+$'.")]


@reads("heads", "selection", "options")
def compare(runs: RunsArg, group: GroupOpt = None, out: OutOpt = None, plot_format: FormatOpt = "png",
            json_output: JsonOpt = False, *, heads, selection, options) -> None:
    """Compare runs: each run's MDS in three modes, lengths and bends, Q/K/V heterogeneity and the
    hyperparameters it saved; groups (seeds of one setting) with mean and spread; and, when the runs
    share an architecture, the joint trajectory map of every checkpoint of every run from one pass.

    Examples:

      trajcli compare sgd=runs/sgd momentum=runs/momentum --out compare/

      trajcli compare runs/*-seed* --group '^(.*)-seed\\d+$' --json
    """
    run_compare(runs, group, out, plot_format, json_output, selection, options, heads.arch, heads.flags)


def run_compare(runs, group, out, plot_format, json_output, selection, options, arch=None, head_flags=None,
                more_findings=None) -> dict:
    """The compare flow, shared by `compare` and `demo --sweep` (whose `more_findings(doc)` adds its
    sentences); returns the document."""
    from trajcli.cli.app import warn_all
    from trajcli.comparison import compare as compare_runs
    from trajcli.comparison import run_sources
    from trajcli.report import compare_files, render

    sources = run_sources(runs, group)
    out_dir = None
    if out is not None:
        out_dir = render.prepare_out_for(out, [s.path for s in sources])
    doc, matrices = compare_runs(sources, selection, options, arch, head_flags or {},
                                 notify=lambda message: None if options.quiet else typer.echo(f"trajcli: {message}", err=True))
    if more_findings is not None:
        doc["findings"].append(more_findings(doc))
    warn_all([] if doc["joint"] is not None else [f"no joint map: {doc['joint_not_computed']}"], options.quiet)
    written = render.write(out_dir, compare_files.add_compare, doc, matrices, plot_format) if out_dir is not None else []
    finish(doc, written, json_output, compare_files.print_compare)
    return doc
