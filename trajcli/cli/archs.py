"""`trajcli archs`: the architecture families whose Q/K/V layout is known."""

from __future__ import annotations

import typer

from trajcli.cli.options import JsonOpt


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
