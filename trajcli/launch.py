"""The `trajcli` entry point, kept light: it looks at the command line before anything heavy is
imported, so that a command that will draw figures forks its drawing process at once (matplotlib
then loads in it while this process imports Typer and trajcli, parses and reads)."""

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


def main() -> None:
    from trajcli.report import drawing

    if will_draw(sys.argv[1:]):
        drawing.start()
    try:
        from trajcli.cli import app

        app()
    finally:
        drawing.stop()
