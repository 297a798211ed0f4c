"""The `trajcli` command line: parse, call, render. No numerics and no file parsing here.

stdout carries the result only (a summary, or one JSON document with --json); warnings, errors and
progress go to stderr. Exit codes: 0 success, 1 bad data or a failed run, 2 bad usage.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from trajcli import __version__
from trajcli.errors import TrajcliError

app = typer.Typer(
    name="trajcli",
    help="Analyse the optimization trajectory stored in a folder of checkpoints.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trajcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of a known error (also TRAJCLI_DEBUG=1).")] = False,
) -> None:
    """trajcli reads each checkpoint once, tensor by tensor, and derives every measure from float64 Grams."""
    _STATE["debug"] = debug or os.environ.get("TRAJCLI_DEBUG", "") not in ("", "0")


def warn(message: str) -> None:
    typer.echo(f"trajcli: warning: {message}", err=True)


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that cleanup (finally, OutputSet) runs as for Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated


def handles_errors(fn):
    """Known errors become one line + hint on stderr and their exit code; Ctrl-C/SIGTERM exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except TrajcliError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"trajcli: error: {exc.message}", err=True)
            if exc.hint:
                typer.echo(f"  hint: {exc.hint}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except (KeyboardInterrupt, Terminated):
            typer.echo("trajcli: interrupted; no output was left half-written", err=True)
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


# Options shared by every command that reads a trajectory.
PathsArg = Annotated[list[str], typer.Argument(
    help="A folder of checkpoints, several checkpoint paths, or '-' to read paths from stdin.", show_default=False,
    metavar="PATH")]
EveryOpt = Annotated[int, typer.Option("--every", min=1, help="Keep every K-th checkpoint.")]
MaxOpt = Annotated[Optional[int], typer.Option("--max-checkpoints", min=2, help="Subsample uniformly to at most M checkpoints (first and last kept).")]
StepsOpt = Annotated[Optional[str], typer.Option("--steps", help="Keep checkpoints with step in A:B (inclusive; either side may be empty).")]
IncludeOpt = Annotated[Optional[str], typer.Option("--include", help="Analyse only tensors whose name matches this regex.")]
ExcludeOpt = Annotated[Optional[str], typer.Option("--exclude", help="Leave out tensors whose name matches this regex.")]
MismatchOpt = Annotated[str, typer.Option("--on-mismatch", help="error: stop when checkpoints differ in tensors/shapes; skip: analyse the common tensors.")]
BudgetOpt = Annotated[Optional[str], typer.Option("--memory-budget", help="Bound for the chunk buffers, e.g. 256MiB, 2GiB [default: 512MiB or 1/4 of free RAM].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one strict JSON document on stdout instead of a summary.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write result files into this folder (created if needed).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no warnings on stderr.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 1 when weights hold NaN/Inf values.")]


def _selection(every, max_checkpoints, steps, include, exclude, on_mismatch):
    from trajcli.io.inventory import Selection

    if on_mismatch not in ("error", "skip"):
        raise typer.BadParameter(f"{on_mismatch!r} is not one of 'error', 'skip'", param_hint="'--on-mismatch'")
    return Selection(every, max_checkpoints, steps, include, exclude, on_mismatch)


@app.command()
@handles_errors
def inspect(
    paths: PathsArg,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    json_output: JsonOpt = False,
) -> None:
    """List the checkpoints in training order, their tensors, and what is left out and why.

    Reads headers only. Examples:

      trajcli inspect runs/out

      ls -d runs/out/checkpoint-* | trajcli inspect - --json
    """
    from trajcli.io.discover import discover_checkpoints
    from trajcli.io.inventory import take_inventory
    from trajcli.report import render

    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    stdin_text = sys.stdin.read() if "-" in paths else None
    inv = take_inventory(discover_checkpoints(paths, stdin_text), selection, min_checkpoints=1)
    try:
        doc = render.inspect_document(inv)
    finally:
        inv.close()
    for w in inv.warnings:
        warn(w)
    if json_output:
        render.print_json(doc)
    else:
        render.print_inspect(doc)


@app.command()
@handles_errors
def similarity(
    paths: PathsArg,
    mode: Annotated[str, typer.Option("--mode", "-m", help="raw: θ_k; displacement: θ_k − θ_ref; update: θ_{k+1} − θ_k.")] = "raw",
    reference: Annotated[Optional[str], typer.Option("--reference", help="Reference checkpoint (name or step) for displacement [default: the first].")] = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    memory_budget: BudgetOpt = None,
    out: OutOpt = None,
    plot_format: Annotated[str, typer.Option("--format", help="Plot file format: png, svg or pdf.")] = "png",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Trajectory map (cosine similarity between checkpoints), its MDS, and lengths and bends.

    One streaming pass over the checkpoints. Examples:

      trajcli similarity runs/out --mode displacement --out results/

      trajcli similarity pythia-160m/ --every 4 --json | jq .mds
    """
    from trajcli.analysis import similarity_result
    from trajcli.engine.budget import parse_budget
    from trajcli.errors import DataError
    from trajcli.metrics.trajectory import MODES
    from trajcli.pipeline import load_inventory, read_trajectory
    from trajcli.report import render

    if mode not in MODES:
        raise typer.BadParameter(f"{mode!r} is not one of {', '.join(MODES)}", param_hint="'--mode'")
    if plot_format not in ("png", "svg", "pdf"):
        raise typer.BadParameter(f"{plot_format!r} is not one of png, svg, pdf", param_hint="'--format'")
    budget = parse_budget(memory_budget)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    inv = load_inventory(paths, selection)
    try:
        out_dir = render.prepare_out(out, inv) if out is not None else None
        trajectory = read_trajectory(inv, budget, quiet=quiet)
    finally:
        inv.close()
    doc, matrix, warnings = similarity_result(inv, trajectory.grams, mode, reference)
    if not quiet:
        for w in inv.warnings + warnings:
            warn(w)
    if strict and doc["nonfinite"]:
        raise DataError(f"{len(doc['nonfinite'])} tensor(s) hold NaN/Inf values (--strict); nothing was written",
                        "see the warnings above; drop --strict to analyse the remaining entries")
    written = render.write_similarity(out_dir, doc, matrix, plot_format) if out_dir is not None else []
    if json_output:
        render.print_json(doc)
    else:
        render.print_similarity(doc, written)


def main() -> None:
    app()


@app.command()
@handles_errors
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to put the demo trajectory and its results.")] = Path("trajcli-demo"),
    memory_budget: BudgetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a tiny GPT-NeoX-layout model, save a Pythia-like trajectory, and analyse it.

    Writes FOLDER/checkpoints/step*/ (sharded safetensors + config.json) and, from one pass over them,
    FOLDER/results/{raw,displacement,update}/similarity.*. About half a minute on 2 CPU cores; an
    existing complete trajectory in FOLDER is reused. Example:

      trajcli demo && trajcli inspect trajcli-demo/checkpoints
    """
    from trajcli.analysis import similarity_result
    from trajcli.demo import DEMO_STEPS, make_demo_trajectory
    from trajcli.engine.budget import parse_budget
    from trajcli.io.inventory import Selection
    from trajcli.metrics.trajectory import MODES
    from trajcli.pipeline import load_inventory, read_trajectory
    from trajcli.report import render

    budget = parse_budget(memory_budget)
    checkpoints = folder / "checkpoints"
    complete = all((checkpoints / f"step{s}" / "model.safetensors.index.json").is_file() for s in DEMO_STEPS)
    if complete:
        typer.echo(f"using the demo trajectory already in {checkpoints}", err=True)
    else:
        typer.echo(f"training a tiny GPT-NeoX-layout model; checkpoints go to {checkpoints}", err=True)
        make_demo_trajectory(checkpoints, log=None if quiet else (lambda m: typer.echo(f"  {m}", err=True)))
    inv = load_inventory([str(checkpoints)], Selection())
    try:
        trajectory = read_trajectory(inv, budget, quiet=quiet)
    finally:
        inv.close()
    for mode in MODES:
        doc, matrix, _ = similarity_result(inv, trajectory.grams, mode, None)
        out_dir = render.prepare_out(folder / "results" / mode, inv)
        written = render.write_similarity(out_dir, doc, matrix)
        typer.echo(f"\n── {mode} ──")
        render.print_similarity(doc, written)
