"""The `trajcli` command line: parse, call, render. No numerics and no file parsing here.

stdout carries the result only (a summary, or one JSON document with --json); warnings, errors and
progress go to stderr. Exit codes: 0 success, 1 bad data or a failed run, 2 bad usage.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from trajcli import __version__
from trajcli.errors import DataError, Terminated, TrajcliError, UsageError, raise_terminated
from trajcli.options import PassOptions

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


# Writing failed for want of room or of a working device: the user's to mend, not a bug of trajcli.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def _discard_stdout() -> None:
    """What is still buffered for a stdout that is full or closed goes nowhere (no second error at exit)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def handles_errors(fn):
    """Known errors become one line + hint on stderr and their exit code; Ctrl-C/SIGTERM exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, raise_terminated)
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
        except BrokenPipeError:  # `trajcli … | head`: the reader has all it wanted; nothing to say
            _discard_stdout()
            raise typer.Exit(1) from None
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS or _STATE["debug"]:
                raise
            where = exc.filename or "standard output"
            if exc.filename is None:  # stdout is full or gone
                _discard_stdout()
            typer.echo(f"trajcli: error: cannot write {where}: {exc.strerror}", err=True)
            typer.echo("  hint: free some space there (or write elsewhere); no half-written result was left", err=True)
            raise typer.Exit(1) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            from trajcli.report import writers

            writers.release_out_dirs()

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
def _folder(value: str) -> Path:
    """--out: an empty value would mean the current folder, which nobody types on purpose."""
    if not value.strip():
        raise typer.BadParameter("an empty folder name would write into the current folder; name a folder (. if you mean it)")
    return Path(value)


OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", parser=_folder, help="Write result files into this folder (created if needed).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no warnings on stderr.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 1 when weights hold NaN/Inf values.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture family (see 'trajcli archs') [default: detected].")]
HeadsOpt = Annotated[Optional[int], typer.Option("--num-heads", min=1, help="Query heads [default: from config.json / model_args].")]
KvHeadsOpt = Annotated[Optional[int], typer.Option("--num-kv-heads", min=1, help="Key/value heads (grouped-query attention) [default: from config, else = heads].")]
HeadDimOpt = Annotated[Optional[int], typer.Option("--head-dim", min=1, help="Head dimension [default: from config, else hidden size / heads].")]
ForceOpt = Annotated[bool, typer.Option("--force-layout", help="Let --arch and the head-count flags override what config.json says (refused otherwise: config.json is the model's own record).")]
ModeOpt = Annotated[str, typer.Option("--mode", "-m", help="raw: θ_k; displacement: θ_k − θ_ref; update: θ_{k+1} − θ_k.")]
ReferenceOpt = Annotated[Optional[str], typer.Option("--reference", help="Reference checkpoint for displacement: a name or step of the trajectory, or the path of a checkpoint outside it (e.g. the base model of a fine-tune, which then starts the trajectory) [default: the first].")]
StripOpt = Annotated[Optional[list[str]], typer.Option("--strip-prefix", help="Remove this prefix from every tensor name (repeatable), e.g. bert. to compare a fine-tune with its base [default: detected when unambiguous].")]
FormatOpt = Annotated[str, typer.Option("--format", help="Plot file format: png, svg or pdf.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where the float64 products run: auto (CUDA when available), cpu or cuda.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="A constant learning rate [default: from trainer_state.json or the optimizer state].")]
LrFileOpt = Annotated[Optional[Path], typer.Option("--lr-file", help="CSV of step,lr (a header line is allowed).")]
LossFileOpt = Annotated[Optional[Path], typer.Option("--loss-file", help="CSV of step,training loss, for the regime's plateau check [default: trainer_state.json log_history].")]
SchedulerOpt = Annotated[Optional[str], typer.Option("--scheduler", help="Run the pass on the Dask cluster at this address, e.g. tcp://host:8786; it must answer within 20 s (pip install 'trajcli[dask]').")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Run the pass on a local Dask cluster of N worker processes.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Token ids (.npy/.pt), a text file (tokenized with the checkpoints' tokenizer), or arrays (.npz/.pt) for a --model loss.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="MODULE:FUNCTION (or FILE.py:FUNCTION) returning (nn.Module, loss_fn(module, batch)) [default: the causal LM of config.json, pip install 'trajcli[models]'].")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Rows (sequences) in the one fixed batch used at every checkpoint [default: every row of --data, at most 256].")]
SeqLenOpt = Annotated[Optional[int], typer.Option("--seq-len", min=2, help="Tokens per sequence [default: 128, at most the model's context].")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the batch rows and of every random direction.")]
TopKOpt = Annotated[int, typer.Option("--top-k", min=1, help="How many of the largest Hessian eigenvalues.")]
MomentumOpt = Annotated[Optional[float], typer.Option("--momentum", min=0.0, max=1.0, help="The run's momentum (SGD) or Adam beta1, for the momentum edge-of-stability line [default: the optimizer state].")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Precision of the model during the probes: float64 (exact finite differences) or float32.")]
RecomputeOpt = Annotated[bool, typer.Option("--recompute", help="Read the checkpoints even when --out holds Grams saved from them (or kept by a stopped pass).")]


def _head_flags(num_heads, num_kv_heads, head_dim, force_layout) -> dict:
    """What the head-count flags say, for `detect_architecture`."""
    return {"num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim, "force_layout": force_layout}


def _selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference=None, strip_prefix=None):
    from trajcli.io.inventory import Selection

    if on_mismatch not in ("error", "skip"):
        raise typer.BadParameter(f"{on_mismatch!r} is not one of 'error', 'skip'", param_hint="'--on-mismatch'")
    for prefix in strip_prefix or ():
        if not prefix:
            raise typer.BadParameter("an empty prefix strips nothing", param_hint="'--strip-prefix'")
    return Selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, tuple(strip_prefix or ()))


@app.command()
@handles_errors
def inspect(
    paths: PathsArg,
    reference: ReferenceOpt = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    strip_prefix: StripOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List the checkpoints in training order, their tensors, and what is left out and why.

    Reads headers only. Examples:

      trajcli inspect runs/out

      ls -d runs/out/checkpoint-* | trajcli inspect - --json
    """
    from trajcli.pipeline import load_inventory
    from trajcli.report import render

    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, strip_prefix)
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
    strip_prefix: StripOpt = None,
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
    from trajcli.report import render

    _check_choice(mode, "--mode", _modes())
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, strip_prefix)
    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    inv, grams, out_dir, _ = _read_pass(paths, selection, out, options)
    doc, matrix, warnings = similarity_result(inv, grams, mode)
    _warn_all(inv.warnings + warnings, quiet)
    _refuse_nonfinite(strict, grams)
    written = render.write(out_dir, render.add_similarity, doc, matrix, plot_format) if out_dir is not None else []
    if json_output:
        render.print_json(doc)
    else:
        render.print_similarity(doc, written)


def _refuse_nonfinite(strict: bool, grams) -> None:
    """--strict: weights holding NaN/Inf stop the command before anything is written."""
    if strict and grams.nonfinite:
        found = [(grams.labels[k], name, count) for name, per_ckpt in grams.nonfinite.items()
                 for k, count in sorted(per_ckpt.items())]
        ckpt, name, count = found[0]
        raise DataError(f"{len(found)} tensor(s) hold NaN/Inf values (--strict), e.g. tensor {name} of checkpoint "
                        f"{ckpt} ({count}); nothing was written",
                        "drop --strict to analyse the rest (entries involving those checkpoints are null)")


PLOT_FORMATS = ("png", "svg", "pdf")
DEVICES = ("auto", "cpu", "cuda")


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


def _read_pass(paths, selection, out, options, plan_for=None):
    """pipeline.read_pass with this command line's messages on stderr."""
    from trajcli.pipeline import read_pass

    _check_choice(options.device, "--device", DEVICES)
    return read_pass(paths, selection, out, options, plan_for,
                     notify=lambda message: None if options.quiet else typer.echo(f"trajcli: {message}", err=True))


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
    force_layout: ForceOpt = False,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    strip_prefix: StripOpt = None,
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
    """Trajectory map, MDS and lengths and bends of every group: tensor, block or role.

    All groups come from one pass. With --by role and a known architecture, fused Q/K/V projections
    are split into their q, k and v parts. Examples:

      trajcli layers runs/out --by block --mode displacement --out results/

      trajcli layers pythia-70m/ --by role --json | jq '.groups[] | [.name, .mds]'
    """
    from trajcli.analysis import Architecture, detect_architecture, layers_result
    from trajcli.arch.grouping import plan_layers
    from trajcli.report import render

    _check_choice(by, "--by", ("tensor", "block", "role"))
    _check_choice(mode, "--mode", _modes())
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, strip_prefix)
    head_flags = _head_flags(num_heads, num_kv_heads, head_dim, force_layout)

    def plan_for(inv):
        from trajcli.arch.grouping import MergedBlocksError

        try:
            architecture = detect_architecture(inv, arch, head_flags)
        except DataError as exc:
            # the role split of a fused projection needs the layout; blocks, tensors and separate
            # q/k/v projections (an encoder-decoder model's) do not
            if arch or (by == "role" and not isinstance(exc, MergedBlocksError)):
                raise
            architecture = Architecture(None, "not detected", None, None)
        plan = plan_layers(inv.tensors, by, architecture.family, architecture.heads)
        return plan.segments, (plan, architecture)

    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    inv, grams, out_dir, (plan, architecture) = _read_pass(paths, selection, out, options, plan_for)
    doc, matrices, warnings = layers_result(inv, grams, plan, by, mode, architecture)
    _warn_all(inv.warnings + warnings, quiet)
    _refuse_nonfinite(strict, grams)
    written = render.write(out_dir, render.add_layers, doc, matrices, plot_format) if out_dir is not None else []
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
    force_layout: ForceOpt = False,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    strip_prefix: StripOpt = None,
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
    """Q/K/V heterogeneity: the query, key and value parts of every attention layer as separate groups.

    Fused projections are split exactly as the model's forward pass does (interleaved per head for
    GPT-NeoX, BLOOM and Falcon). Reports ω_Q, ω_K, ω_V, heterogeneity and map distance per layer.
    Examples:

      trajcli qkv pythia-160m/ --out results/

      trajcli qkv runs/nanogpt/ --per-head --mode update --json > qkv.json
    """
    from trajcli.analysis import detect_architecture, qkv_result
    from trajcli.arch.grouping import plan_qkv
    from trajcli.report import render

    _check_choice(mode, "--mode", _modes())
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, strip_prefix)
    head_flags = _head_flags(num_heads, num_kv_heads, head_dim, force_layout)

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
    doc, warnings = qkv_result(inv, grams, plan, layer_ids, mode, architecture, bias, per_head)
    _warn_all(inv.warnings + warnings, quiet)
    _refuse_nonfinite(strict, grams)
    if strict and plan.unclaimed:
        raise DataError(f"{len(plan.unclaimed)} attention-like tensor(s) are not placed by the "
                        f"{architecture.family.name} layout (--strict), e.g. {plan.unclaimed[0]}; nothing was written",
                        "drop --strict to analyse the tensors the layout places, or pass the --arch that places them")
    written = render.write(out_dir, render.add_qkv, doc, plot_format) if out_dir is not None else []
    if json_output:
        render.print_json(doc)
    else:
        render.print_qkv(doc, written)


@app.command()
@handles_errors
def report(
    paths: PathsArg,
    out: Annotated[Path, typer.Option("--out", "-o", parser=_folder, help="Folder for the report and every result file (created if needed).")],
    reference: ReferenceOpt = None,
    lr: LrOpt = None,
    lr_file: LrFileOpt = None,
    loss_file: LossFileOpt = None,
    arch: ArchOpt = None,
    num_heads: HeadsOpt = None,
    num_kv_heads: KvHeadsOpt = None,
    head_dim: HeadDimOpt = None,
    force_layout: ForceOpt = False,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    strip_prefix: StripOpt = None,
    memory_budget: BudgetOpt = None,
    plot_format: FormatOpt = "png",
    device: DeviceOpt = "auto",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    recompute: RecomputeOpt = False,
    data: DataOpt = None,
    model: ModelOpt = None,
    batch_size: BatchSizeOpt = None,
    seq_len: SeqLenOpt = None,
    seed: SeedOpt = 0,
    top_k: TopKOpt = 3,
    momentum: MomentumOpt = None,
    dtype: DtypeOpt = "float64",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Everything from one pass: trajectory maps in three modes, layers by block and role, Q/K/V
    (with heads) when the architecture is known, lengths and bends, the 2-D trajectory, dynamics;
    every JSON/CSV/NPY file, the plots and a self-contained report.html. With --data, also the
    curvature along the trajectory (as `trajcli curvature`, default settings).

    Examples:

      trajcli report runs/out --out report/

      trajcli report pythia-160m/ --every 4 --out pythia-160m-report/ --format svg
    """
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, strip_prefix)
    head_flags = _head_flags(num_heads, num_kv_heads, head_dim, force_layout)
    _check_lr(lr, lr_file)
    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    probe = None
    if data is not None:
        probe = CurvatureRequest(data, model, batch_size, seq_len,
                                 _curvature_settings(seed=seed, top_k=top_k, dtype=dtype, device=device), momentum,
                                 strict)
    elif model is not None:
        raise typer.BadParameter("--model needs --data (the batch the curvature is measured on)", param_hint="'--model'")
    _run_report(paths, out, selection, options, arch=arch, head_flags=head_flags,
                plot_format=plot_format, json_output=json_output, lr=lr, lr_file=lr_file, curvature=probe, strict=strict,
                loss_file=loss_file)


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


def _check_lr(lr: float | None, lr_file: Path | None) -> None:
    if lr is not None and lr_file is not None:
        raise typer.BadParameter("give --lr or --lr-file, not both", param_hint="'--lr'")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise typer.BadParameter(f"{lr} is not a learning rate (a positive finite number)", param_hint="'--lr'")


def _curvature_settings(**kwargs):
    from trajcli.curvature.run import DTYPES, CurvatureSettings
    from trajcli.engine.gram import resolve_device

    _check_choice(kwargs["dtype"], "--dtype", tuple(DTYPES))
    _check_choice(kwargs["device"], "--device", DEVICES)
    kwargs["device"] = resolve_device(kwargs["device"])
    return CurvatureSettings(**kwargs)


def _measure_curvature(paths, selection, request: CurvatureRequest, lr, lr_file, quiet: bool, out=None):
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
    _warn_all(inv.warnings + warnings, quiet)
    return doc, out_dir, warnings


def _run_report(paths, out, selection, options: PassOptions, *, arch=None, head_flags=None,
                plot_format="png", json_output=False, lr=None, lr_file=None, curvature=None, strict=False,
                loss_file=None) -> None:
    """The report flow, shared by `report` and `demo`: plan the finest cut, one pass (or saved Grams),
    every analysis, every file; with a `CurvatureRequest`, the curvature walk too."""
    from trajcli.analysis import plan_report
    from trajcli.report.drawing import Drawer

    def plan_for(inv):
        plans = plan_report(inv, arch, head_flags or {})
        return plans.segments, plans

    # The drawing workers start now and import matplotlib while the pass reads; a dozen figures are
    # then drawn beside the analyses (see trajcli.report.drawing)
    with Drawer() as drawer:
        _report_with(drawer, paths, out, selection, options, plan_for, plot_format, json_output, lr, lr_file, curvature,
                     strict, loss_file)


def _report_with(drawer, paths, out, selection, options, plan_for, plot_format, json_output, lr, lr_file, curvature,
                 strict, loss_file) -> None:
    from trajcli.analysis import report_result
    from trajcli.io.lr import learning_rate_points
    from trajcli.report import render

    inv, grams, out_dir, plans = _read_pass(paths, selection, out, options, plan_for)
    _refuse_nonfinite(strict, grams)
    points, source = learning_rate_points(inv, lr, lr_file)
    with render.ReportWriter(out_dir, plot_format, drawer) as report:
        # each part's files are written, and its figures drawn, while the next part is computed
        result = report_result(inv, grams, plans, points, source, on_part=report.add, loss_file=loss_file)
        _warn_all(result["warnings"], options.quiet)
        if curvature is not None:
            from trajcli.analysis import curvature_headline

            report.publish()  # the pass's results are on disk while the curvature is measured
            result["curvature"], _, warnings = _measure_curvature(paths, selection, curvature, lr, lr_file,
                                                                  options.quiet)
            result["warnings"] += warnings  # on the page and in report.json with the others
            result["headline"].update(curvature_headline(result["curvature"]))
            report.add(result, "curvature")
        document, written = report.finish(result)
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
    loss_file: LossFileOpt = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="A checkpoint outside the trajectory to start it from (e.g. the base model of a fine-tune): its path.")] = None,
    scale_invariant: Annotated[Optional[str], typer.Option("--scale-invariant", help="Regex of the weights a normalization follows [default: ResNet-style conv + batch norm].")] = None,
    every: EveryOpt = 1,
    max_checkpoints: MaxOpt = None,
    steps: StepsOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    on_mismatch: MismatchOpt = "error",
    strip_prefix: StripOpt = None,
    memory_budget: BudgetOpt = None,
    out: OutOpt = None,
    plot_format: FormatOpt = "png",
    device: DeviceOpt = "auto",
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    recompute: RecomputeOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    strict: StrictOpt = False,
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

    _check_lr(lr, lr_file)
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    selection = _selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, strip_prefix)
    pattern = compile_regex(scale_invariant, "--scale-invariant")

    def plan_for(inv):
        if inv.reference_idx != 0:
            raise UsageError(f"dynamics measures from the first checkpoint; --reference {reference} is checkpoint "
                             f"{inv.reference_idx} of the trajectory",
                             "give the path of a checkpoint outside the trajectory (e.g. the base model), or "
                             "select a later start with --steps")
        names = {t.name for t in inv.tensors} | {d["tensor"] for d in inv.left_out}
        return {}, scale_invariant_tensors(inv.tensors, names, pattern)

    options = PassOptions(memory_budget, device, scheduler, workers, recompute, quiet)
    inv, grams, out_dir, invariant = _read_pass(paths, selection, out, options, plan_for)
    points, source = learning_rate_points(inv, lr, lr_file)
    doc, warnings = dynamics_result(inv, grams, points, source, invariant, loss_file)
    _warn_all(inv.warnings + warnings, quiet)
    _refuse_nonfinite(strict, grams)
    written = render.write(out_dir, render.add_dynamics, doc, plot_format) if out_dir is not None else []
    if json_output:
        render.print_json(doc)
    else:
        render.print_dynamics(doc, written)


@app.command()
@handles_errors
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
    from trajcli.report import render

    _check_lr(lr, lr_file)
    _check_choice(plot_format, "--format", PLOT_FORMATS)
    settings = _curvature_settings(top_k=top_k, lanczos_iters=lanczos_iters, tol=tol, trace_samples=trace_samples,
                                   exact_trace_max=exact_trace_max, glass_samples=glass_samples, sigmas=_positive_floats(sigmas, "--sigmas", 2),
                                   step_fractions=_positive_floats(step_fractions, "--step-fractions", 1),
                                   seed=seed, dtype=dtype, device=device)
    selection = _selection(every, max_checkpoints, steps, None, None, "error")
    request = CurvatureRequest(data, model, batch_size, seq_len, settings, momentum, strict)
    doc, out_dir, _ = _measure_curvature(paths, selection, request, lr, lr_file, quiet, out)
    written = render.write(out_dir, render.add_curvature, doc, plot_format) if out_dir is not None else []
    if json_output:
        render.print_json(doc)
    else:
        render.print_curvature(doc, written)


def _positive_floats(text: str, flag: str, at_least: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=f"'{flag}'") from None
    if len(values) < at_least or any(not v > 0 for v in values):
        raise typer.BadParameter(f"{text!r}: give at least {at_least} positive numbers", param_hint=f"'{flag}'")
    return tuple(sorted(set(values)))


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
                 "architectures": list(f.architectures), "when": dict(f.when),
                 "proof": f"tests/test_arch.py::test_layout_matches_the_forward_pass[{f.name}]"}
                for f in load_families()]
    if json_output:
        render.print_json({"schema": "trajcli.archs/1", "families": families})
        return
    for f in families:
        covers = ", ".join(f["model_types"]) or "by checkpoint format"
        when = "".join(f" {k}={str(v).lower()}" for k, v in f["when"].items())
        typer.echo(f"{f['name']:<16} {f['layout']:<12} {f['title']}\n{'':<16} model types: {covers}{when}")
    typer.echo("each layout is proved against its model's own forward pass by the test named in --json (proof)")


@app.command()
@handles_errors
def plot(
    results: Annotated[list[Path], typer.Argument(help="Saved result files: similarity.json, layers.json, qkv.json.", show_default=False, metavar="RESULT.json")],
    out: Annotated[Path, typer.Option("--out", "-o", parser=_folder, help="Folder for the plots.")] = Path("."),
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
    curvature: Annotated[bool, typer.Option("--curvature/--no-curvature", help="Also measure the curvature at every checkpoint.")] = True,
    memory_budget: BudgetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a tiny GPT-NeoX-layout model, save a Pythia-like trajectory, and report on it.

    Writes FOLDER/checkpoints/step*/ (sharded safetensors + config.json), FOLDER/tokens.npy (held-out
    sequences for the curvature) and then runs `trajcli report` on them into FOLDER/report/ (open
    report.html), curvature included (benchmarks/RESULTS.md says how long it takes); an existing complete
    trajectory in FOLDER is reused. Example:

      trajcli demo && trajcli inspect trajcli-demo/checkpoints
    """
    from trajcli.demo import DEMO_STEPS, DEMO_TOKENS, make_demo_trajectory, write_demo_tokens
    from trajcli.io.inventory import Selection

    checkpoints = folder / "checkpoints"
    complete = all((checkpoints / f"step{s}" / "model.safetensors.index.json").is_file() for s in DEMO_STEPS)
    if complete:
        typer.echo(f"using the demo trajectory already in {checkpoints}", err=True)
    else:
        typer.echo(f"training a tiny GPT-NeoX-layout model; checkpoints go to {checkpoints}", err=True)
        make_demo_trajectory(checkpoints, log=None if quiet else (lambda m: typer.echo(f"  {m}", err=True)))
    request = None
    if curvature:
        write_demo_tokens(folder / DEMO_TOKENS)
        if not quiet:
            typer.echo(f"measuring the curvature on the 8 sequences of {folder / DEMO_TOKENS}", err=True)
        request = CurvatureRequest(folder / DEMO_TOKENS, "trajcli.demo:curvature_model", None, None,
                                   _curvature_settings(dtype="float64", device="cpu"))
    _run_report([str(checkpoints)], folder / "report", Selection(), PassOptions(memory_budget, quiet=quiet),
                curvature=request)
