"""What the commands print and write: documents, summaries on stdout, result files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from trajcli import __version__
from trajcli.analysis import checkpoints_json
from trajcli.io.inventory import Inventory
from trajcli.report import plots
from trajcli.report.writers import OutputSet, dumps_json, matrix_csv, prepare_out_dir

INSPECT_SCHEMA = "trajcli.inspect/1"


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _console():
    from rich.console import Console

    # Wide enough not to cut names when stdout is a pipe or a file (rich assumes 80 columns there).
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160)


def print_json(doc: dict) -> None:
    sys.stdout.write(dumps_json(doc))
    sys.stdout.flush()


def inspect_document(inv: Inventory) -> dict:
    analysed = {t.name for t in inv.tensors}
    checkpoints = []
    for base, reader in zip(checkpoints_json(inv), inv.readers):
        tensors = [t for t in reader.tensors.values() if t.name in analysed]
        checkpoints.append({
            **base,
            "step_source": reader.checkpoint.step_source,
            "files": [str(p) for p in reader.checkpoint.files],
            "n_tensors": len(tensors),
            "n_params": sum(t.numel for t in tensors),
            "dtypes": sorted({t.dtype for t in tensors}),
            "size_bytes": reader.size_bytes,
        })
    return {
        "schema": INSPECT_SCHEMA,
        "trajcli_version": __version__,
        "checkpoints": checkpoints,
        "n_checkpoints": len(checkpoints),
        "n_tensors": len(inv.tensors),
        "n_params": inv.n_params,
        "tensors": [{"name": t.name, "shape": list(t.shape), "dtypes": list(t.dtypes)} for t in inv.tensors],
        "left_out": inv.left_out,
        "left_out_paths": [{"path": p, "why": why} for p, why in inv.left_out_paths],
        "warnings": inv.warnings,
    }


def print_inspect(doc: dict) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"{doc['n_checkpoints']} checkpoint(s) in training order", title_justify="left")
    for col in ("#", "name", "step", "format", "files", "tensors", "params", "dtypes", "size"):
        table.add_column(col, justify="right" if col in ("#", "step", "files", "tensors", "params", "size") else "left")
    for i, c in enumerate(doc["checkpoints"]):
        step = "" if c["step"] is None else f"{c['step']}" + ("" if c["step_source"] == "name" else "*")
        table.add_row(str(i), c["name"], step, c["format"], str(len(c["files"])), str(c["n_tensors"]),
                      human_count(c["n_params"]), ",".join(c["dtypes"]), human_bytes(c["size_bytes"]))
    console.print(table)
    if any(c["step_source"] not in (None, "name") for c in doc["checkpoints"]):
        console.print("* step read from the checkpoint's metadata")
    console.print(f"analysed: {doc['n_tensors']} tensors, {human_count(doc['n_params'])} parameters per checkpoint")
    if doc["left_out"]:
        console.print(f"left out ({len(doc['left_out'])}):")
        for item in doc["left_out"]:
            console.print(f"  {item['tensor']}: {item['why']}")
    for item in doc["left_out_paths"]:
        console.print(f"not a checkpoint: {item['path']}: {item['why']}")


def prepare_out(out: Path, inv: Inventory) -> Path:
    return prepare_out_dir(out, [c.path for c in inv.checkpoints])


def tick_labels(doc: dict) -> list[str]:
    """Axis labels: the step where known (compact for log-spaced runs), else the checkpoint name."""
    by_name = {c["name"]: c for c in doc["checkpoints"]}

    def short(name: str) -> str:
        step = by_name[name]["step"] if name in by_name else None
        return str(step) if step is not None else name

    if doc["mode"] == "update":
        pairs = zip(doc["checkpoints"][:-1], doc["checkpoints"][1:])
        return [f"{short(a['name'])}→{short(b['name'])}" for a, b in pairs]
    return [short(label) for label in doc["labels"]]


def write_similarity(out: Path, doc: dict, matrix: np.ndarray, plot_format: str = "png") -> list[Path]:
    mds = "undefined" if doc["mds"] is None else f"{doc['mds']:.4f}"
    ref = f", reference {doc['reference']}" if doc["reference"] else ""
    title = f"trajectory map ({doc['mode']}{ref}) — MDS ω = {mds}"
    with OutputSet(out) as files:
        files.text("similarity.json", dumps_json(doc))
        files.text("similarity.csv", matrix_csv(doc["labels"], matrix))
        files.npy("similarity.npy", matrix)
        plots.trajectory_map(files.path_for(f"similarity.{plot_format}"), matrix, tick_labels(doc), title, plot_format)
    return [out / n for n in ("similarity.json", "similarity.csv", "similarity.npy", f"similarity.{plot_format}")]


def _fmt(value, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def print_similarity(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = _console()
    steps = [c["step"] for c in doc["checkpoints"] if c["step"] is not None]
    span = f" (step {steps[0]} … {steps[-1]})" if steps else ""
    path = doc["path"]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("checkpoints", f"{doc['n_checkpoints']}{span}")
    table.add_row("parameters", f"{human_count(doc['n_params'])} in {doc['n_tensors']} tensors")
    table.add_row("mode", doc["mode"] + (f" (reference {doc['reference']})" if doc["reference"] else ""))
    table.add_row("MDS ω", f"{_fmt(doc['mds'])}   early {_fmt(doc['mds_early'])}, late {_fmt(doc['mds_late'])}")
    for key, label in (("most_similar", "most similar"), ("least_similar", "least similar")):
        item = doc[key]
        if item:
            table.add_row(label, f"{item['pair'][0]} ~ {item['pair'][1]}: {item['cosine']:.6f}")
    table.add_row("path length", f"{_fmt(path['path_length'], '.6g')}   straightness {_fmt(path['straightness'])}")
    table.add_row("cone apex", f"{_fmt(path['cone_apex_angle_deg'], '.2f')}°")
    spec = doc["spectrum"]
    if spec["top_fraction"] is not None:
        table.add_row("spectrum", f"top eigenvalue {spec['top_fraction']:.1%} of trace, effective rank {spec['effective_rank']:.2f}")
    console.print(table)
    for p in written:
        console.print(f"wrote {p}")
