"""The `trajcli` entry point, kept light: it looks at the command line before anything heavy is
imported, so that a command that will draw figures forks its drawing process at once (matplotlib
then loads in it while this process imports Typer and trajcli, parses and reads), and one that asks
for local Dask workers starts their fork server at once (it imports Dask's worker meanwhile)."""

from __future__ import annotations

import sys

# Commands that draw figures: always, or when given an output folder.
_ALWAYS_DRAW = {"plot", "demo"}
_DRAW_WITH_OUT = {"similarity", "layers", "qkv", "dynamics", "report", "curvature"}


def will_draw(argv: list[str]) -> bool:
    """Whether a command line will draw figures (read before parsing). A wrong guess costs an idle
    process that is stopped at exit."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or any(a in ("-h", "--help", "--workers") or a.startswith("--workers=") for a in argv):
        return False  # --workers: see trajcli.cli._read_pass (figures are then drawn after the pass)
    gives_out = any(a in ("--out", "-o") or a.startswith("--out=") or (a.startswith("-o") and a[1:2] != "-")
                    for a in argv)
    return command in _ALWAYS_DRAW or (command in _DRAW_WITH_OUT and gives_out)


def wants_workers(argv: list[str]) -> bool:
    """Whether a command line asks for a local Dask cluster (read before parsing, as `will_draw`)."""
    return (any(a == "--workers" or a.startswith("--workers=") for a in argv)
            and not any(a in ("-h", "--help") for a in argv))


def main() -> None:
    import gc
    import signal

    from trajcli.errors import Terminated, raise_terminated

    # From the first instant: SIGTERM and Ctrl-C while the heavy modules load end as they do later
    # (exit 130, one line), not with 143 or a KeyboardInterrupt traceback.
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        _run()
    except (KeyboardInterrupt, Terminated):  # before the command's own handling, or a second Ctrl-C
        print("trajcli: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        # The command is over: a Ctrl-C now would only interrupt the exit handlers (Dask's, the
        # drawing process's) with an "Exception ignored" traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # What is left is freed with the process. Frozen, the objects of torch, Dask and the run are
        # not traversed by the collections of interpreter shutdown: ~0.3 s off every command that
        # read checkpoints, ~0.5 s with --workers (exit handlers still run, files are still closed).
        gc.freeze()


def _run() -> None:
    from trajcli.report import drawing

    if will_draw(sys.argv[1:]):
        drawing.start()
    elif wants_workers(sys.argv[1:]):
        from trajcli.engine import forkserver

        forkserver.start()  # the workers' fork server imports Dask's worker while this process imports the rest
    try:
        from trajcli.cli import app

        app()
    finally:
        drawing.stop()
