"""What the commands print and write: documents, summaries on stdout, result files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from trajcli import __version__
from trajcli.analysis import LAYERS_SCHEMA, QKV_SCHEMA, SIMILARITY_SCHEMA, checkpoints_json
from trajcli.errors import DataError, UsageError
from trajcli.io.inventory import Inventory
from trajcli.report import plots
from trajcli.report.writers import OutputSet, dumps_json, matrix_csv, prepare_out_dir, rows_csv

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


LAYER_COLUMNS = ["name", "kind", "layer", "role", "n_params", "mds", "mds_early", "mds_late", "final_distance",
                 "final_angle_to_reference_deg", "path_length", "straightness", "cone_apex_angle_deg"]


def _mode_text(doc: dict) -> str:
    return doc["mode"] + (f", reference {doc['reference']}" if doc["reference"] else "")


def write_layers(out: Path, doc: dict, matrices: dict[str, np.ndarray], plot_format: str = "png") -> list[Path]:
    rows = [[g.get(c) for c in LAYER_COLUMNS] for g in doc["groups"]]
    names = ["layers.json", "layers.csv", f"layers_mds.{plot_format}", f"layers_maps.{plot_format}"]
    with OutputSet(out) as files:
        files.text(names[0], dumps_json(doc))
        files.text(names[1], rows_csv(LAYER_COLUMNS, rows))
        plots.layers_mds(files.path_for(names[2]), doc["groups"], f"MDS per {doc['by']} ({_mode_text(doc)})", plot_format)
        plots.map_grid(files.path_for(names[3]), list(matrices.items()),
                       f"trajectory maps per {doc['by']} ({_mode_text(doc)})", plot_format)
    return [out / n for n in names]


def print_layers(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = _console()
    arch = doc["architecture"]
    table = Table(title=f"{len(doc['groups'])} groups by {doc['by']}, {doc['n_checkpoints']} checkpoints, "
                        f"{_mode_text(doc)}" + (f" — {arch['name']}" if arch["name"] else ""), title_justify="left")
    for col, justify in (("group", "left"), ("layer", "right"), ("params", "right"), ("MDS ω", "right"),
                         ("straightness", "right"), ("path length", "right")):
        table.add_column(col, justify=justify)
    for g in doc["groups"]:
        table.add_row(g["name"], "" if g["layer"] is None else str(g["layer"]), human_count(g["n_params"]),
                      _fmt(g["mds"]), _fmt(g["straightness"]), _fmt(g["path_length"], ".4g"))
    console.print(table)
    for p in written:
        console.print(f"wrote {p}")


QKV_COLUMNS = ["layer", "depth", "mds_q", "mds_k", "mds_v", "heterogeneity", "map_distance",
               "n_params_q", "n_params_k", "n_params_v"]


def write_qkv(out: Path, doc: dict, plot_format: str = "png") -> list[Path]:
    rows = [[e["layer"], e["depth"], e["q"]["mds"], e["k"]["mds"], e["v"]["mds"], e["heterogeneity"],
             e["map_distance"], e["q"]["n_params"], e["k"]["n_params"], e["v"]["n_params"]] for e in doc["layers"]]
    names = ["qkv.json", "qkv.csv", f"qkv_mds.{plot_format}", f"qkv_heterogeneity.{plot_format}"]
    with OutputSet(out) as files:
        files.text("qkv.json", dumps_json(doc))
        files.text("qkv.csv", rows_csv(QKV_COLUMNS, rows))
        plots.qkv_curves(files.path_for(names[2]), [("", doc)], plot_format)
        plots.qkv_heterogeneity(files.path_for(names[3]), doc, plot_format)
        if doc["per_head"]:
            head_rows = [[e["layer"], part, h, v] for e in doc["layers"] for part in "qkv"
                         for h, v in enumerate(e["heads"][part])]
            files.text("qkv_heads.csv", rows_csv(["layer", "part", "head", "mds"], head_rows))
            plots.qkv_heads(files.path_for(f"qkv_heads.{plot_format}"), doc, plot_format)
            names += ["qkv_heads.csv", f"qkv_heads.{plot_format}"]
    return [out / n for n in names]


def print_qkv(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = _console()
    layout = doc["layout"]
    table = Table(title=f"Q/K/V of {doc['n_layers']} attention layers — {layout['name']} ({layout['layout']}, "
                        f"from {layout['source']}), {doc['n_checkpoints']} checkpoints, {_mode_text(doc)}",
                  title_justify="left")
    for col in ("layer", "depth", "ω_Q", "ω_K", "ω_V", "heterogeneity", "map distance"):
        table.add_column(col, justify="right")
    for e in doc["layers"]:
        table.add_row(str(e["layer"]), f"{e['depth']:.2f}", _fmt(e["q"]["mds"]), _fmt(e["k"]["mds"]),
                      _fmt(e["v"]["mds"]), _fmt(e["heterogeneity"]), _fmt(e["map_distance"]))
    console.print(table)
    if layout["num_heads"]:
        console.print(f"heads: {layout['heads_source']}")
    for p in written:
        console.print(f"wrote {p}")


def _load_result(path: Path) -> dict:
    import json

    try:
        doc = json.loads(path.read_text())
        schema = doc["schema"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read result file {path}: {exc.__class__.__name__}: {exc}",
                        "pass similarity.json, layers.json or qkv.json files written by trajcli") from None
    if schema not in (SIMILARITY_SCHEMA, LAYERS_SCHEMA, QKV_SCHEMA):
        raise DataError(f"{path} has schema {schema!r}, which trajcli plot does not draw",
                        f"one of {SIMILARITY_SCHEMA}, {LAYERS_SCHEMA}, {QKV_SCHEMA}")
    return doc


def _as_matrix(rows: list[list]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float).reshape(len(rows), -1)


def replot(results: list[Path], out: Path, labels: list[str] | None, plot_format: str = "png") -> list[Path]:
    """Plots from saved result files: each one redrawn, and several runs of a kind overlaid."""
    if labels and len(labels) != len(results):
        raise UsageError(f"{len(labels)} --label for {len(results)} result files", "give one --label per file, or none")
    docs = [_load_result(p) for p in results]
    names = labels or [p.resolve().parent.name or p.stem for p in results]
    names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    out = prepare_out_dir(out, [])
    written: list[str] = []
    by_schema: dict[str, list[tuple[str, dict]]] = {}
    for name, doc in zip(names, docs):
        by_schema.setdefault(doc["schema"], []).append((name, doc))
    with OutputSet(out) as files:
        def target(base: str, name: str, many: bool) -> Path:
            fname = f"{base}-{name}.{plot_format}" if many else f"{base}.{plot_format}"
            written.append(fname)
            return files.path_for(fname)

        for schema, runs in by_schema.items():
            many = len(runs) > 1
            for name, doc in runs:
                if schema == SIMILARITY_SCHEMA:
                    mds = "undefined" if doc["mds"] is None else f"{doc['mds']:.4f}"
                    plots.trajectory_map(target("similarity", name, many), _as_matrix(doc["matrix"]), tick_labels(doc),
                                         f"trajectory map ({_mode_text(doc)}) — MDS ω = {mds}", plot_format)
                elif schema == LAYERS_SCHEMA:
                    plots.layers_mds(target("layers_mds", name, many), doc["groups"], f"MDS per {doc['by']} ({_mode_text(doc)})", plot_format)
                    plots.map_grid(target("layers_maps", name, many), [(g["name"], _as_matrix(g["matrix"])) for g in doc["groups"]],
                                   f"trajectory maps per {doc['by']} ({_mode_text(doc)})", plot_format)
                else:
                    plots.qkv_curves(target("qkv_mds", name, many), [(name, doc)], plot_format)
                    plots.qkv_heterogeneity(target("qkv_heterogeneity", name, many), doc, plot_format)
                    if doc.get("per_head"):
                        plots.qkv_heads(target("qkv_heads", name, many), doc, plot_format)
            if many and schema == QKV_SCHEMA:
                plots.qkv_curves(target("qkv_overlay", "", False), runs, plot_format)
            if many and schema == LAYERS_SCHEMA:
                plots.layers_overlay(target("layers_overlay", "", False), runs, plot_format)
    return [out / n for n in written]
