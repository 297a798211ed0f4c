"""`trajcli demo`: train the tiny demo run and report on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trajcli.cli.options import BudgetOpt, QuietOpt
from trajcli.options import PassOptions

FolderArg = Annotated[Path, typer.Argument(help="Where to put the demo trajectory and its results.")]
CurvatureOpt = Annotated[bool, typer.Option("--curvature/--no-curvature", help="Also measure the curvature at every checkpoint.")]
SweepOpt = Annotated[bool, typer.Option("--sweep", help="Instead: train the model under SGD, SGD + weight decay, momentum, momentum + weight decay (two seeds each) and compare them (about a minute on two cores).")]


def demo(folder: FolderArg = Path("trajcli-demo"), curvature: CurvatureOpt = True, sweep: SweepOpt = False,
         memory_budget: BudgetOpt = None, quiet: QuietOpt = False) -> None:
    """Train a tiny GPT-NeoX-layout model, save a Pythia-like trajectory, and report on it.

    Writes FOLDER/checkpoints/step*/ (sharded safetensors + config.json), FOLDER/tokens.npy (held-out
    sequences for the curvature) and then runs `trajcli report` on them into FOLDER/report/ (open
    report.html), curvature included (benchmarks/RESULTS.md says how long it takes); an existing
    complete trajectory in FOLDER is reused. With --sweep: FOLDER/sweep/<setting>-seed<k>/ and
    `trajcli compare` on them into FOLDER/sweep-report/ (open compare.html). Examples:

      trajcli demo && trajcli inspect trajcli-demo/checkpoints

      trajcli demo --sweep
    """
    from trajcli.cli.curvature import CurvatureRequest, curvature_settings
    from trajcli.cli.report import run_report
    from trajcli.demo import DEMO_STEPS, DEMO_TOKENS, make_demo_trajectory, write_demo_tokens
    from trajcli.io.inventory import Selection

    if sweep:
        _sweep(folder, memory_budget, quiet)
        return
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
                                   curvature_settings(dtype="float64", device="cpu"))
    run_report([str(checkpoints)], folder / "report", Selection(), PassOptions(memory_budget, quiet=quiet),
               curvature=request)


def _sweep(folder: Path, memory_budget, quiet: bool) -> None:
    from trajcli.cli.compare import run_compare
    from trajcli.demo import make_sweep, sweep_finding
    from trajcli.io.inventory import Selection

    typer.echo(f"training the tiny model under four optimizer settings, two seeds each, into {folder / 'sweep'}",
               err=True)
    runs = make_sweep(folder / "sweep", log=None if quiet else (lambda m: typer.echo(f"  {m}", err=True)))
    run_compare(runs, r"^(.*)-seed\d+$", folder / "sweep-report", "png", False, Selection(),
                PassOptions(memory_budget, quiet=quiet), more_findings=sweep_finding)
