"""Options shared by the commands, declared once. `@reads(...)` adds a group of them to a command's
signature and hands the command one object instead: `selection` (which checkpoints and tensors),
`options` (how the pass reads), `heads` (architecture and head counts). Choices are `Literal`s, so
`--help` lists the allowed values and Typer refuses others (exit 2)."""

from __future__ import annotations

import functools
import inspect
import math
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from trajcli.errors import DataError
from trajcli.options import PassOptions


def out_folder(value: str) -> Path:
    """--out: an empty value would mean the current folder, which nobody types on purpose."""
    if not value.strip():
        raise typer.BadParameter("an empty folder name would write into the current folder; name a folder (. if you mean it)")
    return Path(value)


Mode = Literal["raw", "displacement", "update"]
PlotFormat = Literal["png", "svg", "pdf"]
Device = Literal["auto", "cpu", "cuda"]

PathsArg = Annotated[list[str], typer.Argument(
    help="A folder of checkpoints, several checkpoint paths, or '-' to read paths from stdin.", show_default=False,
    metavar="PATH")]
ModeOpt = Annotated[Mode, typer.Option("--mode", "-m", help="raw: θ_k; displacement: θ_k − θ_ref; update: θ_{k+1} − θ_k.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", parser=out_folder, help="Write result files into this folder (created if needed).")]
FormatOpt = Annotated[PlotFormat, typer.Option("--format", help="Plot file format.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one strict JSON document on stdout instead of a summary.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no warnings on stderr.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 1 when weights hold NaN/Inf values.")]
BudgetOpt = Annotated[Optional[str], typer.Option("--memory-budget", help="Bound for the chunk buffers, e.g. 256MiB, 2GiB [default: 512MiB or 1/4 of free RAM].")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where the float64 products run: auto (CUDA when available), cpu or cuda.")]
EveryOpt = Annotated[int, typer.Option("--every", min=1, help="Keep every K-th checkpoint.")]
MaxOpt = Annotated[Optional[int], typer.Option("--max-checkpoints", min=2, help="Subsample uniformly to at most M checkpoints (first and last kept).")]
StepsOpt = Annotated[Optional[str], typer.Option("--steps", help="Keep checkpoints with step in A:B (inclusive; either side may be empty).")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="A constant learning rate [default: from trainer_state.json or the optimizer state].")]
LrFileOpt = Annotated[Optional[Path], typer.Option("--lr-file", help="CSV of step,lr (a header line is allowed).")]
LossFileOpt = Annotated[Optional[Path], typer.Option("--loss-file", help="CSV of step,training loss, for the regime's plateau check [default: trainer_state.json log_history].")]

# The groups `@reads` adds: (parameter name, annotation, default).
SELECTION = (
    ("reference", Annotated[Optional[str], typer.Option("--reference", help="Reference checkpoint for displacement: a name or step of the trajectory, or the path of a checkpoint outside it (e.g. the base model of a fine-tune, which then starts the trajectory) [default: the first].")], None),
    ("every", EveryOpt, 1),
    ("max_checkpoints", MaxOpt, None),
    ("steps", StepsOpt, None),
    ("include", Annotated[Optional[str], typer.Option("--include", help="Analyse only tensors whose name matches this regex.")], None),
    ("exclude", Annotated[Optional[str], typer.Option("--exclude", help="Leave out tensors whose name matches this regex.")], None),
    ("on_mismatch", Annotated[Literal["error", "skip"], typer.Option("--on-mismatch", help="error: stop when checkpoints differ in tensors/shapes; skip: analyse the common tensors.")], "error"),
    ("strip_prefix", Annotated[Optional[list[str]], typer.Option("--strip-prefix", help="Remove this prefix from every tensor name (repeatable), e.g. bert. to compare a fine-tune with its base [default: detected when unambiguous].")], None),
)
PASS = (
    ("memory_budget", BudgetOpt, None),
    ("device", DeviceOpt, "auto"),
    ("scheduler", Annotated[Optional[str], typer.Option("--scheduler", help="Run the pass on the Dask cluster at this address, e.g. tcp://host:8786; it must answer within 20 s (pip install 'trajcli[dask]').")], None),
    ("workers", Annotated[Optional[int], typer.Option("--workers", min=1, help="Run the pass on a local Dask cluster of N worker processes.")], None),
    ("recompute", Annotated[bool, typer.Option("--recompute", help="Read the checkpoints even when --out holds Grams saved from them (or kept by a stopped pass).")], False),
    ("quiet", QuietOpt, False),
    ("read_threads", Annotated[Optional[int], typer.Option("--read-threads", min=0, help="Threads that read the next chunk while the current one is multiplied (0: read in place) [default: 0 on two cores or fewer, else 2].")], None),
)
HEADS = (
    ("arch", Annotated[Optional[str], typer.Option("--arch", help="Architecture family (see 'trajcli archs') [default: detected].")], None),
    ("num_heads", Annotated[Optional[int], typer.Option("--num-heads", min=1, help="Query heads [default: from config.json / model_args].")], None),
    ("num_kv_heads", Annotated[Optional[int], typer.Option("--num-kv-heads", min=1, help="Key/value heads (grouped-query attention) [default: from config, else = heads].")], None),
    ("head_dim", Annotated[Optional[int], typer.Option("--head-dim", min=1, help="Head dimension [default: from config, else hidden size / heads].")], None),
    ("force_layout", Annotated[bool, typer.Option("--force-layout", help="Let --arch and the head-count flags override what config.json says (refused otherwise: config.json is the model's own record).")], False),
)


class Heads(typing.NamedTuple):
    """--arch and the head-count flags."""

    arch: str | None
    flags: dict  # for trajcli.analysis.detect_architecture


def _selection(reference, every, max_checkpoints, steps, include, exclude, on_mismatch, strip_prefix):
    from trajcli.io.inventory import Selection

    for prefix in strip_prefix or ():
        if not prefix:
            raise typer.BadParameter("an empty prefix strips nothing", param_hint="'--strip-prefix'")
    return Selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, tuple(strip_prefix or ()))


def _heads(arch, num_heads, num_kv_heads, head_dim, force_layout) -> Heads:
    return Heads(arch, {"num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
                        "force_layout": force_layout})


_GROUPS = {"selection": (SELECTION, _selection), "options": (PASS, PassOptions), "heads": (HEADS, _heads)}


def reads(*names: str):
    """Add the option groups `names` (selection, options, heads) to the decorated command's flags;
    the command receives each group as one argument of that name."""

    def decorate(fn):
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name not in names]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                 for group in names for name, annotation, default in _GROUPS[group][0]]

        @functools.wraps(fn)
        def command(**kwargs):
            for group in names:
                fields, build = _GROUPS[group]
                kwargs[group] = build(*(kwargs.pop(name) for name, _, _ in fields))
            return fn(**kwargs)

        params = own + added
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def read_pass(paths, selection, out, options: PassOptions, plan_for=None):
    """trajcli.pipeline.read_pass, its messages on stderr."""
    from trajcli.pipeline import read_pass as pipeline_read_pass

    return pipeline_read_pass(paths, selection, out, options, plan_for,
                              notify=lambda message: None if options.quiet else typer.echo(f"trajcli: {message}", err=True))


def refuse_nonfinite(strict: bool, grams) -> None:
    """--strict: weights holding NaN/Inf stop the command before anything is written."""
    if strict and grams.nonfinite:
        found = [(grams.labels[k], name, count) for name, per_ckpt in grams.nonfinite.items()
                 for k, count in sorted(per_ckpt.items())]
        ckpt, name, count = found[0]
        raise DataError(f"{len(found)} tensor(s) hold NaN/Inf values (--strict), e.g. tensor {name} of checkpoint "
                        f"{ckpt} ({count}); nothing was written",
                        "drop --strict to analyse the rest (entries involving those checkpoints are null)")


def check_lr(lr: float | None, lr_file: Path | None) -> None:
    if lr is not None and lr_file is not None:
        raise typer.BadParameter("give --lr or --lr-file, not both", param_hint="'--lr'")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise typer.BadParameter(f"{lr} is not a learning rate (a positive finite number)", param_hint="'--lr'")


def finish(doc: dict, written: list, json_output: bool, print_summary) -> None:
    """A command's result on stdout: the JSON document, or the summary and the files written."""
    from trajcli.report import render

    if json_output:
        render.print_json(doc)
    else:
        print_summary(doc, written)

