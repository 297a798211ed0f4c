"""What the commands print and write: documents, summaries on stdout, result files."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

from trajcli import __version__
from trajcli.analysis import (
    LAYERS_SCHEMA,
    QKV_BACKGROUND,
    QKV_SCHEMA,
    SIMILARITY_SCHEMA,
    checkpoints_json,
    layer_label,
    qkv_findings,
)
from trajcli.errors import DataError, UsageError
from trajcli.io.inventory import Inventory
from trajcli.report import plots
from trajcli.report.writers import OutputSet, dumps_json, lock_out_dir, matrix_csv, prepare_out_dir, rows_csv

INSPECT_SCHEMA = "trajcli.inspect/1"


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


class _TrimmedLines:
    """stdout for rich when it is a pipe or a file: lines without the spaces rich pads tables with."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(re.sub(r"[ \t]+(?=\n|$)", "", text))

    def flush(self) -> None:
        self.stream.flush()


def stdout_console():
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(file=sys.stdout, highlight=False)
    # Wide enough not to cut names when stdout is a pipe or a file (rich assumes 80 columns there).
    return Console(file=_TrimmedLines(sys.stdout), highlight=False, width=160)


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
        "name_alignment": inv.name_alignment,
        "warnings": inv.warnings,
    }


def print_inspect(doc: dict) -> None:
    from rich.table import Table

    console = stdout_console()
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
    """The output folder of a command that reads checkpoints: checked, created, and held by this
    process until the command ends."""
    return prepare_out_for(out, [c.path for c in inv.checkpoints])


def prepare_out_for(out: Path, inputs: list[Path]) -> Path:
    """The output folder of a command whose inputs are `inputs` (never written into), held as above."""
    return _held(prepare_out_dir(out, inputs))


def _held(folder: Path) -> Path:
    """`folder`, held by this process until the command ends (`writers.lock_out_dir`): one trajcli
    writes into a folder at a time."""
    note = lock_out_dir(folder)
    if note:
        print(f"trajcli: note: {note}", file=sys.stderr)
    return folder


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


def similarity_title(doc: dict) -> str:
    mds = "undefined" if doc["mds"] is None else fmt(doc["mds"])
    return f"trajectory map ({_mode_text(doc)}) — MDS ω = {mds}"


def add_similarity(files: OutputSet, doc: dict, matrix: np.ndarray, plot_format: str, stem: str = "similarity") -> list[str]:
    """similarity JSON, CSV, NPY and heatmap into `files`; returns the file names."""
    names = [f"{stem}.json", f"{stem}.csv", f"{stem}.npy", f"{stem}.{plot_format}"]
    files.json(names[0], doc)
    files.text(names[1], matrix_csv(doc["labels"], matrix))
    files.npy(names[2], matrix)
    files.draw(names[3], plots.trajectory_map, matrix, tick_labels(doc), similarity_title(doc), plot_format)
    return names


def write(out: Path, add, *args) -> list[Path]:
    """The files `add(files, *args)` adds (add_similarity, add_layers …), committed together into
    `out`; their paths."""
    with OutputSet(out) as files:
        names = add(files, *args)
    return [out / n for n in names]


def fmt(value, spec: str = ".4f") -> str:
    """A number for people; with the default spec, a value just below 1 (a fine-tune's ω 0.99998…)
    gets the digits that tell it from 1 and from its neighbours (two beyond its first non-9)."""
    if value is None:
        return "—"
    if spec == ".4f" and 0.999 < value < 1:
        spec = f".{min(15, math.ceil(-math.log10(1 - value)) + 2)}f"
    return format(value, spec)


def print_similarity(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = stdout_console()
    steps = [c["step"] for c in doc["checkpoints"] if c["step"] is not None]
    span = f" (step {steps[0]} … {steps[-1]})" if steps else ""
    path = doc["path"]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("checkpoints", f"{doc['n_checkpoints']}{span}")
    table.add_row("parameters", f"{human_count(doc['n_params'])} in {doc['n_tensors']} tensors")
    table.add_row("mode", doc["mode"] + (f" (reference {doc['reference']})" if doc["reference"] else ""))
    table.add_row("MDS ω", f"{fmt(doc['mds'])}   early {fmt(doc['mds_early'])}, late {fmt(doc['mds_late'])}")
    for key, label in (("most_similar", "most similar"), ("least_similar", "least similar")):
        item = doc[key]
        if item:
            table.add_row(label, f"{item['pair'][0]} ~ {item['pair'][1]}: {item['cosine']:.6f}")
    table.add_row("path length", f"{fmt(path['path_length'], '.6g')}   straightness {fmt(path['straightness'])}")
    table.add_row("cone apex", f"{fmt(path['cone_apex_angle_deg'], '.2f')}°")
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


def _without_maps(doc: dict) -> dict:
    """A layers or Q/K/V document less its maps: what a curve or bar figure needs (a long run's maps
    are N × N floats per group: 500 × 500 × 38 role groups at N = 500)."""
    out = dict(doc)
    if "groups" in doc:
        out["groups"] = [{k: v for k, v in g.items() if k != "matrix"} for g in doc["groups"]]
    if "layers" in doc:
        out["layers"] = [{k: ({p: x for p, x in v.items() if p != "matrix"} if k in ("q", "k", "v") else v)
                          for k, v in entry.items()} for entry in doc["layers"]]
    return out


def add_layers(files: OutputSet, doc: dict, matrices: dict[str, np.ndarray], plot_format: str,
               stem: str = "layers") -> list[str]:
    rows = [[g.get(c) for c in LAYER_COLUMNS] for g in doc["groups"]]
    names = [f"{stem}.json", f"{stem}.csv", f"{stem}_mds.{plot_format}", f"{stem}_maps.{plot_format}"]
    files.json(names[0], doc)
    files.text(names[1], rows_csv(LAYER_COLUMNS, rows))
    files.draw(names[2], plots.layers_mds, _without_maps(doc)["groups"], f"MDS per {doc['by']} ({_mode_text(doc)})",
               plot_format)
    files.draw(names[3], plots.map_grid, list(matrices.items()), f"trajectory maps per {doc['by']} ({_mode_text(doc)})",
               plot_format)
    return names


def print_layers(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = stdout_console()
    arch = doc["architecture"]
    table = Table(title=f"{len(doc['groups'])} groups by {doc['by']}, {doc['n_checkpoints']} checkpoints, "
                        f"{_mode_text(doc)}" + (f" — {arch['name']}" if arch["name"] else ""), title_justify="left")
    for col, justify in (("group", "left"), ("layer", "right"), ("params", "right"), ("MDS ω", "right"),
                         ("straightness", "right"), ("path length", "right")):
        table.add_column(col, justify=justify)
    for g in doc["groups"]:
        table.add_row(g["name"], "" if g["layer"] is None else str(g["layer"]), human_count(g["n_params"]),
                      fmt(g["mds"]), fmt(g["straightness"]), fmt(g["path_length"], ".4g"))
    console.print(table)
    for p in written:
        console.print(f"wrote {p}")


QKV_COLUMNS = ["layer", "depth", "mds_q", "mds_k", "mds_v", "heterogeneity", "map_distance",
               "n_params_q", "n_params_k", "n_params_v", "block"]


def add_qkv(files: OutputSet, doc: dict, plot_format: str) -> list[str]:
    rows = [[e["layer"], e["depth"], e["q"]["mds"], e["k"]["mds"], e["v"]["mds"], e["heterogeneity"],
             e["map_distance"], e["q"]["n_params"], e["k"]["n_params"], e["v"]["n_params"], e.get("block")]
            for e in doc["layers"]]
    names = ["qkv.json", "qkv.csv", f"qkv_mds.{plot_format}", f"qkv_heterogeneity.{plot_format}"]
    files.json(names[0], doc)
    files.text(names[1], rows_csv(QKV_COLUMNS, rows))
    drawn = _without_maps(doc)
    files.draw(names[2], plots.qkv_curves, [("", drawn)], plot_format)
    files.draw(names[3], plots.qkv_heterogeneity, drawn, plot_format)
    if doc["per_head"]:
        head_rows = [[e["layer"], part, h, v, e.get("block")] for e in doc["layers"] for part in "qkv"
                     for h, v in enumerate(e["heads"][part])]
        files.text("qkv_heads.csv", rows_csv(["layer", "part", "head", "mds", "block"], head_rows))
        files.draw(f"qkv_heads.{plot_format}", plots.qkv_heads, drawn, plot_format)
        names += ["qkv_heads.csv", f"qkv_heads.{plot_format}"]
    return names


def print_qkv(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = stdout_console()
    layout = doc["layout"]
    table = Table(title=f"Q/K/V of {doc['n_layers']} attention layers — {layout['name']} ({layout['layout']}, "
                        f"from {layout['source']}), {doc['n_checkpoints']} checkpoints, {_mode_text(doc)}",
                  title_justify="left")
    for col in ("layer", "depth", "ω_Q", "ω_K", "ω_V", "heterogeneity", "map distance"):
        table.add_column(col, justify="right")
    for e in doc["layers"]:
        table.add_row(layer_label(e), f"{e['depth']:.2f}", fmt(e["q"]["mds"]), fmt(e["k"]["mds"]),
                      fmt(e["v"]["mds"]), fmt(e["heterogeneity"]), fmt(e["map_distance"]))
    console.print(table)
    if layout["num_heads"]:
        console.print(f"heads: {layout['heads_source']}")
    for p in written:
        console.print(f"wrote {p}")


def _load_result(path: Path) -> dict:
    from trajcli.io.jsonfile import parse_result

    try:
        doc = parse_result(path.read_text())
        schema = doc["schema"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise DataError(f"cannot read result file {path}: {exc.__class__.__name__}: {exc}",
                        "pass similarity.json, layers.json or qkv.json files written by trajcli") from None
    if schema not in (SIMILARITY_SCHEMA, LAYERS_SCHEMA, QKV_SCHEMA):
        raise DataError(f"{path} has schema {schema!r}, which trajcli plot does not draw",
                        f"one of {SIMILARITY_SCHEMA}, {LAYERS_SCHEMA}, {QKV_SCHEMA}")
    try:  # the maps it draws, as arrays (null: NaN)
        if schema == SIMILARITY_SCHEMA:
            doc["matrix"] = _as_matrix(doc["matrix"])
        elif schema == LAYERS_SCHEMA:
            for group in doc["groups"]:
                group["matrix"] = _as_matrix(group["matrix"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: a map is missing or is not a square table of numbers ({exc.__class__.__name__}: {exc})",
                        "pass the result files as trajcli wrote them") from None
    return doc


def _as_matrix(rows: list[list]) -> np.ndarray:
    """A map read back from JSON: null (None) becomes NaN, as numpy converts it to float."""
    matrix = np.array(rows, dtype=float).reshape(len(rows), -1) if rows else np.zeros((0, 0))
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"shape {matrix.shape}")
    return matrix


def replot(results: list[Path], out: Path, labels: list[str] | None, plot_format: str = "png") -> list[Path]:
    """Plots from saved result files: each one redrawn, and several runs of a kind overlaid."""
    if labels and len(labels) != len(results):
        raise UsageError(f"{len(labels)} --label for {len(results)} result files", "give one --label per file, or none")
    docs = [_load_result(p) for p in results]
    names = labels or [p.resolve().parent.name or p.stem for p in results]
    names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    out = _held(prepare_out_dir(out, []))
    written: list[str] = []
    by_schema: dict[str, list[tuple[str, dict]]] = {}
    for name, doc in zip(names, docs):
        by_schema.setdefault(doc["schema"], []).append((name, doc))
    try:
        _draw_results(by_schema, out, plot_format, written)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # a field missing or mangled
        shown = ", ".join(str(p) for p in results)
        raise DataError(f"cannot draw {shown}: a field its plots need is missing or not what trajcli writes "
                        f"({exc.__class__.__name__}: {exc})", "pass result files as trajcli wrote them") from None
    return [out / n for n in written]


def _draw_results(by_schema: dict[str, list[tuple[str, dict]]], out: Path, plot_format: str,
                  written: list[str]) -> None:
    with OutputSet(out) as files:
        def draw(base: str, name: str, many: bool, plot, *args) -> None:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            fname = f"{base}-{safe}.{plot_format}" if many else f"{base}.{plot_format}"
            written.append(fname)
            files.draw(fname, plot, *args, plot_format)

        for schema, runs in by_schema.items():
            many = len(runs) > 1
            for name, doc in runs:
                if schema == SIMILARITY_SCHEMA:
                    draw("similarity", name, many, plots.trajectory_map, doc["matrix"], tick_labels(doc),
                         similarity_title(doc))
                elif schema == LAYERS_SCHEMA:
                    draw("layers_mds", name, many, plots.layers_mds, _without_maps(doc)["groups"],
                         f"MDS per {doc['by']} ({_mode_text(doc)})")
                    draw("layers_maps", name, many, plots.map_grid, [(g["name"], g["matrix"]) for g in doc["groups"]],
                         f"trajectory maps per {doc['by']} ({_mode_text(doc)})")
                else:
                    drawn = _without_maps(doc)
                    draw("qkv_mds", name, many, plots.qkv_curves, [(name, drawn)])
                    draw("qkv_heterogeneity", name, many, plots.qkv_heterogeneity, drawn)
                    if doc.get("per_head"):
                        draw("qkv_heads", name, many, plots.qkv_heads, drawn)
            if many and schema == QKV_SCHEMA:
                draw("qkv_overlay", "", False, plots.qkv_curves, [(name, _without_maps(doc)) for name, doc in runs])
            if many and schema == LAYERS_SCHEMA:
                draw("layers_overlay", "", False, plots.layers_overlay, [(name, _without_maps(doc)) for name, doc in runs])


# ---- trajcli report ------------------------------------------------------------------------------

def _add_report_part(files: OutputSet, result: dict, part: str, plot_format: str) -> list[str]:
    """One part's files and plots (the similarity part adds the trajectory PCA and the lengths and
    bends); the names written."""
    names: list[str] = []
    if part == "similarity":
        sims = result["similarity"]
        for mode, (doc, matrix) in sims.items():
            names += add_similarity(files, doc, matrix, plot_format, stem=f"similarity_{mode}")
        raw = sims["raw"][0]
        if raw["pca"]:
            names.append(f"pca.{plot_format}")
            files.draw(names[-1], plots.trajectory_pca, raw["pca"]["coords"], [c["step"] for c in raw["checkpoints"]],
                       raw["labels"], raw["pca"]["explained_variance_ratio"],
                       "trajectory in its top two principal directions", plot_format)
        names.append(f"path.{plot_format}")
        files.draw(names[-1], plots.path_measures, sims["displacement"][0], plot_format)
    elif part.startswith("layers_"):
        doc, matrices = result[part]
        names += add_layers(files, doc, matrices, plot_format, stem=part)
    elif part == "qkv":
        names += add_qkv(files, result["qkv"], plot_format)
    elif part == "dynamics":
        names += add_dynamics(files, result["dynamics"], plot_format)
    elif part == "curvature":
        names += add_curvature(files, result["curvature"], plot_format)
    else:
        raise ValueError(f"unknown report part {part!r}")
    return names


class ReportWriter:
    """`trajcli report`'s files, written part by part as the analyses are ready (`add`): with a drawer,
    one part's figures are drawn while the next part is computed; each part's files are renamed into
    place once complete (`publish`, at the next `add`), and `finish` adds report.json and the
    self-contained report.html. Leaving the `with` block by an exception removes what was not yet
    published; no file is ever half-written. The page embeds the PNG or SVG plots; with --format pdf it
    embeds PNG twins drawn for it alone."""

    def __init__(self, out: Path, plot_format: str = "png", drawer=None):
        import tempfile

        self.out, self.plot_format = out, plot_format
        self.files = OutputSet(out, drawer)
        self.written: list[str] = []
        self._twin_dir = tempfile.TemporaryDirectory() if plot_format == "pdf" else None
        self._twin = OutputSet(Path(self._twin_dir.name), drawer) if self._twin_dir else None
        self._twin_names: list[str] = []

    def __enter__(self) -> "ReportWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.files.discard()  # after `finish` nothing is left to discard; before, everything is
        if self._twin is not None:
            self._twin.discard()
            self._twin_dir.cleanup()

    def add(self, result: dict, part: str) -> None:
        """The files of `result[part]` (similarity, layers_block, layers_role, dynamics, qkv or
        curvature), its figures sent to be drawn; the parts added before are published first (with a
        drawer, their figures were drawn while this part was computed)."""
        self.publish()
        self.written += _add_report_part(self.files, result, part, self.plot_format)
        if self._twin is not None:
            self._twin_names += _add_report_part(self._twin, result, part, "png")

    def publish(self) -> None:
        """Every part added so far, its figures drawn, renamed into place."""
        self.files.commit()

    def finish(self, result: dict) -> tuple[dict, list[Path]]:
        from trajcli.analysis import REPORT_SCHEMA
        from trajcli.report import html

        files, written, out = self.files, self.written, self.out
        sims = result["similarity"]
        raw_doc = sims["raw"][0]
        head = result["headline"]
        page_fmt = "png" if self.plot_format == "pdf" else self.plot_format
        if self._twin is not None:
            images = {n.rsplit(".", 1)[0]: self._twin.written(n) for n in self._twin_names if n.endswith(".png")}
        else:
            images = {n.rsplit(".", 1)[0]: files.written(n) for n in written if n.endswith(f".{page_fmt}")}

        def fig(stem: str, alt: str, caption: str) -> tuple:
            wide = stem in ("path", "qkv_heads", "dynamics", "hessian_trace", "glass") or stem.endswith("_maps")
            return images[stem], page_fmt, alt, caption, wide

        document = {"schema": REPORT_SCHEMA, "trajcli_version": __version__, "checkpoints": raw_doc["checkpoints"],
                    "architecture": result["layers_role"][0]["architecture"], "headline": head,
                    "warnings": result["warnings"], "files": sorted(written + ["report.json", "report.html"])}
        files.json("report.json", document)
        ref = sims["displacement"][0]["reference"]
        caption = {"raw": "raw: θ_k", "displacement": f"displacement: θ_k − θ_{ref}", "update": "update: θ_k+1 − θ_k"}
        sections = [
            {"id": "maps", "title": "Trajectory maps", "explain": html.EXPLAIN["maps"],
             "figures": [fig(f"similarity_{m}", f"{m} trajectory map", f"{caption[m]} — ω = {fmt(sims[m][0]['mds'])}")
                         for m in sims]},
            {"id": "path", "title": "Path: principal directions, lengths and bends", "explain": html.EXPLAIN["path"],
             "figures": ([fig("pca", "trajectory PCA", "checkpoints on the top two principal directions")]
                         if "pca" in images else [])
             + [fig("path", "lengths and bends", "norm, distance to the reference, step and turning angles")]},
            {"id": "layers", "title": "Per block and per role (displacement)", "explain": html.EXPLAIN["layers"],
             "figures": [fig(f"layers_{by}_{kind}", f"layers {by} {kind}",
                             f"{'MDS along depth' if kind == 'mds' else 'trajectory maps'} per {by}")
                         for by in ("block", "role") for kind in ("mds", "maps")]},
        ]
        title = ("Dynamics on the sphere" if result["dynamics"]["scale_invariant"]
                 else "Dynamics: norms, angles, effective learning rate")
        sections.append({"id": "dynamics", "title": title, "explain": html.EXPLAIN["dynamics"],
                         "figures": [fig("dynamics", "dynamics", "norm, angle moved per step and effective learning rate")],
                         "table": html.regime_table(result["dynamics"])})
        if "qkv" in result:
            qkv = result["qkv"]
            figures = [fig("qkv_mds", "QKV along depth", "ω_Q, ω_K, ω_V against normalized depth"),
                       fig("qkv_heterogeneity", "QKV heterogeneity", "heterogeneity and map distance per layer")]
            if qkv["per_head"]:
                figures.append(fig("qkv_heads", "QKV per head", "ω per attention head"))
            sections.append({"id": "qkv", "title": f"Q/K/V heterogeneity ({qkv['architecture']}, displacement)",
                             "explain": html.EXPLAIN["qkv"], "figures": figures, "table": html.qkv_table(qkv),
                             "findings": [*qkv_findings(qkv), QKV_BACKGROUND]})
        if "curvature" in result:
            curv = result["curvature"]
            sections.append({"id": "curvature", "title": "Curvature on a fixed batch", "explain": html.EXPLAIN["curvature"],
                             "figures": [fig("sharpness", "sharpness", "top Hessian eigenvalues and the 2/η line"),
                                         fig("hessian_trace", "Hessian trace", "trace and the curvature along each step"),
                                         fig("glass", "glass", "glass-to-Hessian ratio and the exponent p per block")],
                             "table": html.curvature_table(curv)})
        span = f", steps {head['first_step']} … {head['last_step']}" if head["first_step"] is not None else ""
        source = (f"{head['n_checkpoints']} checkpoints{span}, {human_count(head['n_params'])} parameters in "
                  f"{head['n_tensors']} tensors")
        files.text("report.html", html.build_page("trajcli report", source, headline_rows(head), sections,
                                                  result["warnings"], document["files"]))
        files.commit()
        return document, [out / "report.html", out / "report.json"]


def headline_rows(head: dict) -> list[tuple[str, str, str]]:
    """(key, label, value) rows shared by the page and the stdout summary."""
    rows = [
        ("n_checkpoints", "checkpoints", str(head["n_checkpoints"])),
        ("n_params", "parameters", f"{human_count(head['n_params'])} in {head['n_tensors']} tensors"),
        ("mds_raw", "MDS ω, raw", fmt(head["mds_raw"])),
        ("mds_displacement", "MDS ω, displacement",
         f"{fmt(head['mds_displacement'])} (early {fmt(head['mds_displacement_early'])}, late {fmt(head['mds_displacement_late'])})"),
        ("mds_update", "MDS ω, update", fmt(head["mds_update"])),
        ("path_length", "path length", fmt(head["path_length"], ".5g")),
        ("straightness", "straightness", fmt(head["straightness"])),
        ("cone_apex_angle_deg", "cone apex angle", f"{fmt(head['cone_apex_angle_deg'], '.2f')}°"),
        ("pca_explained_2d", "variance in the 2-D picture",
         "—" if head["pca_explained_2d"] is None else f"{head['pca_explained_2d']:.1%}"),
        ("effective_rank_displacement", "effective rank (displacement map)", fmt(head["effective_rank_displacement"], ".2f")),
    ]
    if head.get("regime"):
        rows.append(("regime", "regime of the scale-invariant weights (later half, heuristic)",
                     f"{head['regime']} (median step angle {fmt(head['regime_median_angle_deg'], '.2f')}°)"))
    if "qkv_heterogeneity_mean" in head:
        rows.append(("qkv_heterogeneity", "Q/K/V heterogeneity (all / middle third)",
                     f"{fmt(head['qkv_heterogeneity_mean'])} / {fmt(head['qkv_heterogeneity_middle_third'])}"))
    if "sharpness_last" in head:
        rows.append(("sharpness", "sharpness λ_max, first → last checkpoint",
                     f"{fmt(head['sharpness_first'], '.4g')} → {fmt(head['sharpness_last'], '.4g')}"))
        rows.append(("glass_exponent_last", "glass exponent p at the last checkpoint (4 smooth, 1 jumps)",
                     fmt(head["glass_exponent_last"], ".2f")))
    if head["identical_pairs"]:
        rows.append(("identical_pairs", "identical checkpoint pairs", str(head["identical_pairs"])))
    return rows


def print_report(document: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = stdout_console()
    table = Table(title="trajcli report", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for _, label, value in headline_rows(document["headline"]):
        table.add_row(label, value)
    console.print(table)
    console.print(f"{len(document['files'])} files; open {written[0]}")


DYNAMICS_COLUMNS = ["group", "kind", "checkpoint", "step", "norm", "distance_to_first", "effective_lr", "angle_deg",
                    "delta_steps", "angle_per_step_deg", "angle_per_sqrt_step_deg", "effective_step"]


def add_dynamics(files: OutputSet, doc: dict, plot_format: str) -> list[str]:
    """dynamics.json, dynamics.csv (one row per group × checkpoint; interval values on the row of the
    checkpoint that ends the interval) and dynamics.<fmt>."""
    rows = []
    names = [c["name"] for c in doc["checkpoints"]]
    for g in doc["groups"]:
        for k, (name, step) in enumerate(zip(names, doc["steps"])):
            def interval(key, g=g, k=k):
                return g[key][k - 1] if k > 0 and g[key] is not None else None

            rows.append([g["name"], g["kind"], name, step, g["norm"][k], g["distance_to_first"][k],
                         g["effective_lr"][k] if g["effective_lr"] is not None else None,
                         interval("angle_deg"), interval("delta_steps"), interval("angle_per_step_deg"),
                         interval("angle_per_sqrt_step_deg"), interval("effective_step")])
    out = ["dynamics.json", "dynamics.csv", f"dynamics.{plot_format}"]
    files.json(out[0], doc)
    files.text(out[1], rows_csv(DYNAMICS_COLUMNS, rows))
    files.draw(out[2], plots.dynamics, doc, plot_format)
    return out


def print_dynamics(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = stdout_console()
    source = f"learning rate from {doc['lr_source']}" if doc["lr_source"] else "no learning rate found"
    table = Table(title=f"dynamics of {len(doc['groups'])} groups — {source}", title_justify="left")
    for col, justify in (("group", "left"), ("regime", "left"), ("median angle", "right"),
                         ("angle/eff. step change", "right"), ("norm change", "right"), ("final ‖w‖", "right")):
        table.add_column(col, justify=justify)
    for g in doc["groups"]:
        if g["kind"] == "tensor":
            continue
        r = g["regime"]
        table.add_row(g["name"], r["verdict"] or "—", f"{fmt(r['median_angle_deg'], '.3f')}°", fmt(r["rate_change_factor"], ".3g"),
                      fmt(r["norm_change_factor"], ".3g"), fmt(g["norm"][-1], ".4g"))
    console.print(table)
    console.print("per-tensor rows are in --json / dynamics.csv; a regime only for scale-invariant weights"
                  + ("" if doc["scale_invariant"] else " (none here: --scale-invariant REGEX names them)"))
    for p in written:
        console.print(f"wrote {p}")


# ---- curvature -----------------------------------------------------------------------------------

def curvature_rows(doc: dict) -> tuple[list[str], list[list]]:
    """curvature.csv: one row per checkpoint (the whole model's glass; blocks are in the JSON)."""
    k = doc["settings"]["top_k"]
    sigmas, fractions = doc["settings"]["sigmas"], doc["settings"]["step_fractions"]
    edges = doc["edge_of_stability"] or {}
    header = (["checkpoint", "step", "loss", "grad_norm"] + [f"lambda_{i + 1}" for i in range(k)]
              + ["lanczos_iterations", "lanczos_converged", "trace", "trace_stderr", "trace_method"]
              + [f"edge_{name}" for name in edges]
              + ["step_norm", "u_h_u"] + [f"finite_difference_{f:g}" for f in fractions]
              + ["glass_exponent"] + [f"glass_to_hessian_sigma_{s:g}" for s in sigmas])
    rows = []
    for i, p in enumerate(doc["points"]):
        d = p["direction"]
        model = p["glass"][0]
        rows.append([p["checkpoint"], p["step"], p["loss"], p["grad_norm"]]
                    + (p["eigenvalues"] + [None] * k)[:k]
                    + [p["lanczos"]["iterations"], p["lanczos"]["converged"], p["trace"]["value"], p["trace"]["stderr"],
                       p["trace"]["method"]]
                    + [e["values"][i] for e in edges.values()]
                    + ([d["step_norm"], d["u_h_u"]] + [f["curvature"] for f in d["finite_difference"]]
                       if d else [None] * (2 + len(fractions)))
                    + [model["exponent"]] + model["glass_to_hessian"])
    return header, rows


def add_curvature(files: OutputSet, doc: dict, plot_format: str) -> list[str]:
    """curvature.json, curvature.csv, and the sharpness, Hessian-trace and glass plots."""
    out = ["curvature.json", "curvature.csv", f"sharpness.{plot_format}", f"hessian_trace.{plot_format}",
           f"glass.{plot_format}"]
    files.json(out[0], doc)
    files.text(out[1], rows_csv(*curvature_rows(doc)))
    files.draw(out[2], plots.sharpness, doc, plot_format)
    files.draw(out[3], plots.hessian_trace, doc, plot_format)
    files.draw(out[4], plots.glass, doc, plot_format)
    return out


def print_curvature(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    console = stdout_console()
    edges = doc["edge_of_stability"]
    table = Table(title=f"curvature of {doc['model']['source']} on {doc['data']['batch_size']} rows of "
                        f"{Path(doc['data']['file']).name}", title_justify="left")
    columns = ["step", "loss", "‖g‖", "λ_max", "2/η", "tr H", "uᵀHu (next step)", "glass p"]
    for col in columns:
        table.add_column(col, justify="right")
    for i, p in enumerate(doc["points"]):
        trace = p["trace"]
        tr = fmt(trace["value"], ".4g") + (f" ± {trace['stderr']:.3g}" if trace["stderr"] else "")
        table.add_row(str(p["step"]), fmt(p["loss"], ".4f"), fmt(p["grad_norm"], ".3g"),
                      fmt(p["eigenvalues"][0] if p["eigenvalues"] else None, ".4g"),
                      fmt(edges["gd"]["values"][i], ".4g") if edges else "—", tr,
                      fmt(p["direction"]["u_h_u"] if p["direction"] else None, ".3g"),
                      fmt(p["glass"][0]["exponent"], ".2f"))
    console.print(table)
    console.print("glass p: exponent of E[((g⁺+g⁻)/2 − g⁰)²] ∝ σ^p (≈4 smooth, ≈1 where gradient jumps dominate)")
    for p in written:
        console.print(f"wrote {p}")
