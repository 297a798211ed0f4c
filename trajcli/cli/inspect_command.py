"""`trajcli inspect`: what is there (headers only)."""

from __future__ import annotations

from trajcli.cli.app import warn_all
from trajcli.cli.options import JsonOpt, PathsArg, finish, reads


@reads("selection")
def inspect(paths: PathsArg, json_output: JsonOpt = False, *, selection) -> None:
    """List the checkpoints in training order, their tensors, and what is left out and why.

    Reads headers only. Examples:

      trajcli inspect runs/out

      ls -d runs/out/checkpoint-* | trajcli inspect - --json
    """
    from trajcli.pipeline import load_inventory
    from trajcli.report import render

    inv = load_inventory(paths, selection, min_checkpoints=1)
    try:
        doc = render.inspect_document(inv)
    finally:
        inv.close()
    warn_all(inv.warnings, False)
    finish(doc, [], json_output, lambda doc, _: render.print_inspect(doc))
