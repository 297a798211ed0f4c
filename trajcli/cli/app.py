"""The Typer application and its one error edge: every command runs inside `_Commands.invoke`, which
maps each known error to one line and a hint on stderr and its exit code, so a new command cannot
forget it. stdout carries the result only (a summary, or one JSON document with --json); warnings,
errors and progress go to stderr. Exit codes: 0 success, 1 bad data or a failed run, 2 bad usage,
130 interrupted."""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from trajcli import __version__
from trajcli.errors import Terminated, TrajcliError, raise_terminated

_STATE = {"debug": False}

# Writing failed for want of room or of a working device: the user's to mend, not a bug of trajcli.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def _discard_stdout() -> None:
    """What is still buffered for a stdout that is full or closed goes nowhere (no second error at exit)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Commands(TyperGroup):
    """trajcli's command group: runs the chosen command inside the error edge."""

    def invoke(self, ctx):
        previous = signal.signal(signal.SIGTERM, raise_terminated)
        try:
            return super().invoke(ctx)
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


app = typer.Typer(
    name="trajcli",
    cls=_Commands,
    help="Analyse the optimization trajectory stored in a folder of checkpoints.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


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


def warn_all(messages: list[str], quiet: bool) -> None:
    if not quiet:
        for message in messages:
            warn(message)
