"""The `trajcli` command line: a thin skin over trajcli.pipeline, trajcli.analysis and
trajcli.report — one module per command, options shared through trajcli.cli.options, every error
mapped in one place (trajcli.cli.app). No numerics and no file parsing here."""

from trajcli.cli import archs, compare, curvature, demo, dynamics, inspect_command, layers, plot, qkv, report, similarity
from trajcli.cli.app import app

# `trajcli --help` lists the commands in this order
for command in (inspect_command.inspect, similarity.similarity, layers.layers, qkv.qkv, report.report,
                dynamics.dynamics, curvature.curvature, compare.compare, archs.archs, plot.plot, demo.demo):
    app.command()(command)

__all__ = ["app"]
