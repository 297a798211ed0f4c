"""The `trajcli` command line: parse, call, render. No numerics and no file parsing here.

stdout carries the result only (a summary, or one JSON document with --json); warnings, errors and
progress go to stderr. Exit codes: 0 success, 1 bad data or a failed run, 2 bad usage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
import os
import signal
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
def _import_plotting_in_background() -> None:
    """matplotlib takes about half a second to import; a thread does it while the pass reads."""
    import threading

    from trajcli.report import plots

    threading.Thread(target=plots.prepare, name="trajcli-import-matplotlib", daemon=True).start()


ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture family (see 'trajcli archs') [default: detected].")]
HeadsOpt = Annotated[Optional[int], typer.Option("--num-heads", min=1, help="Query heads [default: from config.json / model_args].")]
KvHeadsOpt = Annotated[Optional[int], typer.Option("--num-kv-heads", min=1, help="Key/value heads (grouped-query attention) [default: from config, else = heads].")]
HeadDimOpt = Annotated[Optional[int], typer.Option("--head-dim", min=1, help="Head dimension [default: from config, else hidden size / heads].")]
ModeOpt = Annotated[str, typer.Option("--mode", "-m", help="raw: θ_k; displacement: θ_k − θ_ref; update: θ_{k+1} − θ_k.")]
ReferenceOpt = Annotated[Optional[str], typer.Option("--reference", help="Reference checkpoint (name or step) for displacement [default: the first].")]
FormatOpt = Annotated[str, typer.Option("--format", help="Plot file format: png, svg or pdf.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where the float64 products run: auto (CUDA when available), cpu or cuda.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="A constant learning rate [default: from trainer_state.json or the optimizer state].")]
LrFileOpt = Annotated[Optional[Path], typer.Option("--lr-file", help="CSV of step,lr (a header line is allowed).")]
SchedulerOpt = Annotated[Optional[str], typer.Option("--scheduler", help="Run the pass on the Dask cluster at this address, e.g. tcp://host:8786 (pip install 'trajcli[dask]').")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Run the pass on a local Dask cluster of N worker processes.")]
RecomputeOpt = Annotated[bool, typer.Option("--recompute", help="Read the checkpoints even when --out holds Grams saved from them.")]


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
    from trajcli.pipeline import load_inventory
    from trajcli.report import render

    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    inv = load_inventory(paths, selection, min_checkpoints=1)
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
    mode: ModeOpt = "raw",
    reference: ReferenceOpt = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    memory_budget: BudgetOpt = None,
    out: OutOpt = None,
    plot_format: FormatOpt = "png",
    json_output: JsonOpt = False,
    device: DeviceOpt = "auto",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    recompute: RecomputeOpt = False,
    quiet: QuietOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Trajectory map (cosine similarity between checkpoints), its MDS, and lengths and bends.

    One streaming pass over the checkpoints. Examples:

      trajcli similarity runs/out --mode displacement --out results/

      trajcli similarity pythia-160m/ --every 4 --json | jq .mds
    """
    from trajcli.analysis import similarity_result
    from trajcli.errors import DataError
    from trajcli.report import render

    _check_choice(mode, "--mode", _modes())
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    inv, grams, out_dir, _ = _read_pass(paths, selection, out, options)
    doc, matrix, warnings = similarity_result(inv, grams, mode, reference)
    _warn_all(inv.warnings + warnings, quiet)
    if strict and doc["nonfinite"]:
        raise DataError(f"{len(doc['nonfinite'])} tensor(s) hold NaN/Inf values (--strict); nothing was written",
                        "see the warnings above; drop --strict to analyse the remaining entries")
    written = render.write_similarity(out_dir, doc, matrix, plot_format) if out_dir is not None else []
    if json_output:
        render.print_json(doc)
    else:
        render.print_similarity(doc, written)


PLOT_FORMATS = ("png", "svg", "pdf")


def _modes() -> tuple[str, ...]:
    from trajcli.metrics.trajectory import MODES

    return MODES


def _check_choice(value: str, flag: str, choices) -> None:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=f"'{flag}'")


def _warn_all(messages: list[str], quiet: bool) -> None:
    if not quiet:
        for message in messages:
            warn(message)


@dataclass
class PassOptions:
    """How a command reads its checkpoints: the flags every reading command shares."""

    memory_budget: str | None = None
    device: str = "auto"
    scheduler: str | None = None
    workers: int | None = None
    recompute: bool = False
    quiet: bool = False


def _read_pass(paths, selection, out, options: PassOptions, plan_for=None):
    """Inventory, output folder check, the plan (which needs the inventory), then the single pass —
    or, when --out holds Grams saved from these very checkpoints, no pass at all.

    `plan_for(inv)` returns (segments: how tensors are cut into leaves, anything the command needs
    later); the result is (inventory, Gram set, output folder or None, that second item)."""
    from trajcli.engine.budget import available_memory_bytes, parse_budget
    from trajcli.engine.gram import resolve_device
    from trajcli.engine.store import GRAMS_FILE, load_grams, save_grams
    from trajcli.pipeline import load_inventory, read_trajectory
    from trajcli.report import render

    _check_choice(options.device, "--device", ("auto", "cpu", "cuda"))
    budget = parse_budget(options.memory_budget)
    available = available_memory_bytes()
    if options.memory_budget is not None and available and budget > available // 2 and not options.quiet:
        warn(f"--memory-budget {options.memory_budget} is more than half of the {available >> 20} MiB available now")
    if out is not None:
        _import_plotting_in_background()  # plots follow; matplotlib loads while the checkpoints are read
    inv = load_inventory(paths, selection)
    try:
        out_dir = render.prepare_out(out, inv) if out is not None else None
        segments, planned = plan_for(inv) if plan_for is not None else ({}, None)
        grams = None
        if out_dir is not None and not options.recompute:
            grams = load_grams(out_dir / GRAMS_FILE, inv, segments)
            if grams is not None and not options.quiet:
                typer.echo(f"trajcli: reusing the Grams saved in {out_dir / GRAMS_FILE} (--recompute reads again)", err=True)
        if grams is None:
            grams = read_trajectory(inv, budget, quiet=options.quiet, segments=segments,
                                    device=resolve_device(options.device), scheduler=options.scheduler,
                                    workers=options.workers)
            if out_dir is not None:
                save_grams(out_dir / GRAMS_FILE, inv, grams, segments)
    finally:
        inv.close()
    return inv, grams, out_dir, planned


@app.command()
@handles_errors
def layers(
    paths: PathsArg,
    by: Annotated[str, typer.Option("--by", help="tensor: each parameter tensor; block: embedding, each block, final; role: attention q/k/v/o, mlp, norm … per block.")] = "block",
    mode: ModeOpt = "raw",
    reference: ReferenceOpt = None,
    arch: ArchOpt = None,
    num_heads: HeadsOpt = None,
    num_kv_heads: KvHeadsOpt = None,
    head_dim: HeadDimOpt = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    memory_budget: BudgetOpt = None,
    out: OutOpt = None,
    plot_format: FormatOpt = "png",
    json_output: JsonOpt = False,
    device: DeviceOpt = "auto",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    recompute: RecomputeOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Trajectory map, MDS and lengths and bends of every group: tensor, block or role.

    All groups come from one pass. With --by role and a known architecture, fused Q/K/V projections
    are split into their q, k and v parts. Examples:

      trajcli layers runs/out --by block --mode displacement --out results/

      trajcli layers pythia-70m/ --by role --json | jq '.groups[] | [.name, .mds]'
    """
    from trajcli.analysis import Architecture, detect_architecture, layers_result
    from trajcli.arch.grouping import plan_layers
    from trajcli.errors import DataError
    from trajcli.report import render

    _check_choice(by, "--by", ("tensor", "block", "role"))
    _check_choice(mode, "--mode", _modes())
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    head_flags = {"num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim}

    def plan_for(inv):
        try:
            architecture = detect_architecture(inv, arch, head_flags)
        except DataError:
            if by == "role" or arch:  # the role split needs the layout; blocks and tensors do not
                raise
            architecture = Architecture(None, "not detected", None, None)
        plan = plan_layers(inv.tensors, by, architecture.family, architecture.heads)
        return plan.segments, (plan, architecture)

    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    inv, grams, out_dir, (plan, architecture) = _read_pass(paths, selection, out, options, plan_for)
    doc, matrices, warnings = layers_result(inv, grams, plan, by, mode, reference, architecture)
    _warn_all(inv.warnings + warnings, quiet)
    written = render.write_layers(out_dir, doc, matrices, plot_format) if out_dir is not None else []
    if json_output:
        render.print_json(doc)
    else:
        render.print_layers(doc, written)


@app.command()
@handles_errors
def qkv(
    paths: PathsArg,
    mode: ModeOpt = "displacement",
    reference: ReferenceOpt = None,
    per_head: Annotated[bool, typer.Option("--per-head", help="Also each attention head (K/V heads under grouped-query attention).")] = False,
    bias: Annotated[bool, typer.Option("--bias/--no-bias", help="Include each part's bias with its weight.")] = True,
    arch: ArchOpt = None,
    num_heads: HeadsOpt = None,
    num_kv_heads: KvHeadsOpt = None,
    head_dim: HeadDimOpt = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    memory_budget: BudgetOpt = None,
    out: OutOpt = None,
    plot_format: FormatOpt = "png",
    json_output: JsonOpt = False,
    device: DeviceOpt = "auto",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    recompute: RecomputeOpt = False,
    quiet: QuietOpt = False,
) -> None:
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

    _check_choice(mode, "--mode", _modes())
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    head_flags = {"num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim}

    def plan_for(inv):
        architecture = detect_architecture(inv, arch, head_flags)
        if architecture.family is None:
            fits = f" (fits {', '.join(architecture.ambiguous)})" if architecture.ambiguous else ""
            raise DataError(f"cannot tell how Q, K and V are stored: {architecture.source}{fits}",
                            "pass --arch NAME (trajcli archs lists them), with --num-heads N where config.json is missing")
        plan, layer_ids = plan_qkv(inv.tensors, architecture.family, architecture.heads, per_head, bias)
        return plan.segments, (plan, architecture, layer_ids)

    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    inv, grams, out_dir, (plan, architecture, layer_ids) = _read_pass(paths, selection, out, options, plan_for)
    doc, warnings = qkv_result(inv, grams, plan, layer_ids, mode, reference, architecture, bias, per_head)
    _warn_all(inv.warnings + warnings, quiet)
    written = render.write_qkv(out_dir, doc, plot_format) if out_dir is not None else []
    if json_output:
        render.print_json(doc)
    else:
        render.print_qkv(doc, written)


@app.command()
@handles_errors
def report(
    paths: PathsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the report and every result file (created if needed).")],
    reference: ReferenceOpt = None,
    lr: LrOpt = None,
    lr_file: LrFileOpt = None,
    arch: ArchOpt = None,
    num_heads: HeadsOpt = None,
    num_kv_heads: KvHeadsOpt = None,
    head_dim: HeadDimOpt = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    memory_budget: BudgetOpt = None,
    plot_format: FormatOpt = "png",
    device: DeviceOpt = "auto",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    recompute: RecomputeOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Everything from one pass: trajectory maps in three modes, layers by block and role, Q/K/V
    (with heads) when the architecture is known, lengths and bends, the 2-D trajectory; every
    JSON/CSV/NPY file, the plots and a self-contained report.html.

    Examples:

      trajcli report runs/out --out report/

      trajcli report pythia-160m/ --every 4 --out pythia-160m-report/ --format svg
    """
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    head_flags = {"num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim}
    if lr is not None and lr_file is not None:
        raise typer.BadParameter("give --lr or --lr-file, not both", param_hint="'--lr'")
    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    _run_report(paths, out, selection, options, arch=arch, head_flags=head_flags, reference=reference,
                plot_format=plot_format, json_output=json_output, lr=lr, lr_file=lr_file)


def _run_report(paths, out, selection, options: PassOptions, *, arch=None, head_flags=None, reference=None,
                plot_format="png", json_output=False, lr=None, lr_file=None) -> None:
    """The report flow, shared by `report` and `demo`: plan the finest cut, one pass (or saved Grams),
    every analysis, every file."""
    from trajcli.analysis import plan_report, report_result
    from trajcli.io.lr import learning_rate_points
    from trajcli.report import render

    def plan_for(inv):
        plans = plan_report(inv, arch, head_flags or {})
        return plans.segments, plans

    inv, grams, out_dir, plans = _read_pass(paths, selection, out, options, plan_for)
    points, source = learning_rate_points(inv, lr, lr_file)
    result = report_result(inv, grams, plans, reference, points, source)
    _warn_all(result["warnings"], options.quiet)
    document, written = render.write_report(out_dir, result, plot_format)
    if json_output:
        render.print_json(document)
    else:
        render.print_report(document, written)


@app.command()
@handles_errors
def dynamics(
    paths: PathsArg,
    lr: LrOpt = None,
    lr_file: LrFileOpt = None,
    scale_invariant: Annotated[Optional[str], typer.Option("--scale-invariant", help="Regex of the weights a normalization follows [default: ResNet-style conv + batch norm].")] = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    memory_budget: BudgetOpt = None,
    out: OutOpt = None,
    plot_format: FormatOpt = "png",
    device: DeviceOpt = "auto",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    recompute: RecomputeOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Norms, angular steps and effective learning rates η/‖w‖² per group, and the regime
    (convergence, equilibrium or divergence — a heuristic) over the later half of the run.

    Groups: the whole model, the scale-invariant set, each block, each tensor. Examples:

      trajcli dynamics runs/out --out results/

      trajcli dynamics resnet-run/ --lr-file lr.csv --scale-invariant 'conv\\d\\.weight$' --json
    """
    from trajcli.analysis import dynamics_result
    from trajcli.arch.grouping import scale_invariant_tensors
    from trajcli.io.inventory import compile_regex
    from trajcli.io.lr import learning_rate_points
    from trajcli.report import render
    from trajcli.report.writers import OutputSet

    if lr is not None and lr_file is not None:
        raise typer.BadParameter("give --lr or --lr-file, not both", param_hint="'--lr'")
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    pattern = compile_regex(scale_invariant, "--scale-invariant")

    def plan_for(inv):
        names = {t.name for t in inv.tensors} | {d["tensor"] for d in inv.left_out}
        return {}, scale_invariant_tensors(inv.tensors, names, pattern)

    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    inv, grams, out_dir, invariant = _read_pass(paths, selection, out, options, plan_for)
    points, source = learning_rate_points(inv, lr, lr_file)
    doc, warnings = dynamics_result(inv, grams, points, source, invariant)
    _warn_all(inv.warnings + warnings, quiet)
    written = []
    if out_dir is not None:
        with OutputSet(out_dir) as files:
            written = [out_dir / n for n in render.add_dynamics(files, doc, plot_format)]
    if json_output:
        render.print_json(doc)
    else:
        render.print_dynamics(doc, written)


@app.command()
@handles_errors
def archs(json_output: JsonOpt = False) -> None:
    """List the architecture families whose Q/K/V layout trajcli knows.

    Example:

      trajcli archs
    """
    from trajcli.arch.families import load_families
    from trajcli.report import render

    families = [{"name": f.name, "title": f.title, "layout": f.layout, "model_types": list(f.model_types),
                 "architectures": list(f.architectures)} for f in load_families()]
    if json_output:
        render.print_json({"schema": "trajcli.archs/1", "families": families})
        return
    for f in families:
        typer.echo(f"{f['name']:<12} {f['layout']:<12} {f['title']}")


@app.command()
@handles_errors
def plot(
    results: Annotated[list[Path], typer.Argument(help="Saved result files: similarity.json, layers.json, qkv.json.", show_default=False, metavar="RESULT.json")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the plots.")] = Path("."),
    label: Annotated[Optional[list[str]], typer.Option("--label", help="A name per result file for legends [default: its folder's name].")] = None,
    plot_format: FormatOpt = "png",
) -> None:
    """Redraw saved results, or overlay several runs, without reading any checkpoint.

    One file: its plots again. Several qkv.json: ω_Q/ω_K/ω_V of every run on normalized depth in one
    figure; several layers.json: their MDS along depth. Examples:

      trajcli plot results/qkv.json --format svg

      trajcli plot small/qkv.json large/qkv.json --label 70m --label 1b --out compare/
    """
    from trajcli.report import render

    _check_choice(plot_format, "--format", PLOT_FORMATS)
    written = render.replot(results, out, label, plot_format)
    for p in written:
        typer.echo(f"wrote {p}")




@app.command()
@handles_errors
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to put the demo trajectory and its results.")] = Path("trajcli-demo"),
    memory_budget: BudgetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a tiny GPT-NeoX-layout model, save a Pythia-like trajectory, and report on it.

    Writes FOLDER/checkpoints/step*/ (sharded safetensors + config.json) and then runs `trajcli report`
    on them into FOLDER/report/ (open report.html). About a minute on 2 CPU cores; an existing complete
    trajectory in FOLDER is reused. Example:

      trajcli demo && trajcli inspect trajcli-demo/checkpoints
    """
    from trajcli.demo import DEMO_STEPS, make_demo_trajectory
    from trajcli.io.inventory import Selection

    checkpoints = folder / "checkpoints"
    complete = all((checkpoints / f"step{s}" / "model.safetensors.index.json").is_file() for s in DEMO_STEPS)
    if complete:
        typer.echo(f"using the demo trajectory already in {checkpoints}", err=True)
    else:
        typer.echo(f"training a tiny GPT-NeoX-layout model; checkpoints go to {checkpoints}", err=True)
        make_demo_trajectory(checkpoints, log=None if quiet else (lambda m: typer.echo(f"  {m}", err=True)))
    _run_report([str(checkpoints)], folder / "report", Selection(), PassOptions(memory_budget, quiet=quiet))

def main() -> None:
    app()
