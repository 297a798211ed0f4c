"""`trajcli compare`'s outputs: the summary table on stdout, compare.json, compare.csv, its figures
and compare.html."""

from __future__ import annotations

import html as html_text
from pathlib import Path

import numpy as np

from trajcli.report import plots
from trajcli.report.render import fmt, human_count, stdout_console
from trajcli.report.writers import OutputSet, rows_csv

CSV_COLUMNS = ["name", "group", "n_checkpoints", "n_params", "first_step", "last_step", "mds_raw", "mds_displacement",
               "mds_update", "mds_displacement_early", "mds_displacement_late", "path_length", "straightness",
               "cone_apex_angle_deg", "qkv_heterogeneity_mean", "qkv_heterogeneity_middle_third", "effective_lr_last",
               "regime", "sharpness_last"]


def _colours(rows: list[dict]) -> dict[str, str]:
    """A colour per group (or per run without groups), in the order they come."""
    cmap = plots._pyplot().get_cmap("tab10")
    keys = []
    for r in rows:
        key = r["group"] if r["group"] is not None else r["name"]
        if key not in keys:
            keys.append(key)
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def mds_curves(path: Path, rows: list[dict], fmt: str = "png") -> None:
    """ω (raw and displacement) of the checkpoints up to each step: a line per run, or, for a group
    whose runs share their steps, the mean line and a band from the lowest to the highest run."""
    plt = plots._pyplot()
    colours = _colours(rows)
    units: dict[str, list[dict]] = {}
    for r in rows:
        units.setdefault(r["group"] if r["group"] is not None else r["name"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), dpi=plots.DPI)
    for ax, mode in zip(axes, ("raw", "displacement")):
        for key, members in units.items():
            curves = [r["mds_curve"][mode] for r in members]
            steps = [p["step"] for p in curves[0]]
            if len(members) > 1 and all([p["step"] for p in c] == steps for c in curves):
                values = np.array([plots._nan([p["mds"] for p in c]) for c in curves], dtype=float)
                ax.fill_between(steps, values.min(0), values.max(0), color=colours[key], alpha=0.25, lw=0)
                ax.plot(steps, values.mean(0), color=colours[key], lw=1.5, label=f"{key} ({len(members)} runs)")
            else:
                for i, c in enumerate(curves):
                    ax.plot([p["step"] for p in c], plots._nan([p["mds"] for p in c]), color=colours[key], lw=1.3,
                            label=key if i == 0 else None)
        if any(p["step"] for r in rows for p in r["mds_curve"][mode]):
            plots._log_scale(ax, "x", "symlog", linthresh=1)
        ax.set_xlabel("step")
        ax.set_ylabel(f"ω ({mode}) of the checkpoints so far")
        ax.set_title(f"MDS over training, {mode}", fontsize=10)
        plots._legend(ax, fontsize=8)
    plots._save(fig, path, fmt)


def qkv_depth(path: Path, rows: list[dict], fmt: str = "png") -> None:
    """Q/K/V heterogeneity against normalised depth, a line per run, a colour per group."""
    plt = plots._pyplot()
    colours = _colours(rows)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=plots.DPI)
    seen = set()
    for r in rows:
        if not r["qkv_depth"]:
            continue
        key = r["group"] if r["group"] is not None else r["name"]
        depth = [d for d, _ in r["qkv_depth"]]
        ax.plot(depth, plots._nan([h for _, h in r["qkv_depth"]]), "-o", ms=3, color=colours[key],
                label=key if key not in seen else None)
        seen.add(key)
    ax.axvspan(1 / 3, 2 / 3, color="#eeeeee", zorder=0)
    ax.set_xlim(0, 1)
    ax.set_xlabel("depth (layer / layers; the middle third shaded)")
    ax.set_ylabel("Q/K/V heterogeneity")
    ax.set_title("Q/K/V heterogeneity per layer, per run", fontsize=10)
    plots._legend(ax, fontsize=8)
    plots._save(fig, path, fmt)


def series(path: Path, rows: list[dict], key: str, value: str, ylabel: str, title: str, fmt: str = "png") -> None:
    """A per-checkpoint series of each run (effective learning rate, sharpness) against step, log axes;
    for sharpness, 2/η dashed in the run's colour."""
    plt = plots._pyplot()
    colours = _colours(rows)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=plots.DPI)
    seen = set()
    for r in rows:
        if not r[key]:
            continue
        colour = colours[r["group"] if r["group"] is not None else r["name"]]
        label = (r["group"] or r["name"]) if (r["group"] or r["name"]) not in seen else None
        seen.add(r["group"] or r["name"])
        steps = [p["step"] for p in r[key]]
        ax.plot(steps, plots._nan([p[value] for p in r[key]]), "-o", ms=3, color=colour, label=label)
        if key == "sharpness":
            ax.plot(steps, plots._nan([p["two_over_lr"] for p in r[key]]), "--", lw=1, color=colour)
    plots._log_scale(ax, "y")
    if any(p["step"] for r in rows if r[key] for p in r[key]):
        plots._log_scale(ax, "x", "symlog", linthresh=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    plots._legend(ax, fontsize=8)
    plots._save(fig, path, fmt)


def joint_pca(path: Path, joint: dict, rows: list[dict], fmt: str = "png") -> None:
    """Every run's checkpoints in one PCA plane of the joint Gram: a path per run."""
    plt = plots._pyplot()
    colours = _colours(rows)
    coords = np.array(joint["pca"]["coords"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=plots.DPI)
    seen = set()
    for r in rows:
        idx = [i for i, name in enumerate(joint["runs"]) if name == r["name"]]
        key = r["group"] if r["group"] is not None else r["name"]
        ax.plot(coords[idx, 0], coords[idx, 1], "-o", ms=2.5, lw=1, color=colours[key],
                label=key if key not in seen else None)
        ax.plot(coords[idx[-1], 0], coords[idx[-1], 1], "s", ms=5, color=colours[key])
        seen.add(key)
    explained = [v for v in joint["pca"]["explained_variance_ratio"] if v is not None]
    ax.set_xlabel("PC1" + (f" ({explained[0]:.0%})" if explained else ""))
    ax.set_ylabel("PC2" + (f" ({explained[1]:.0%})" if len(explained) > 1 else ""))
    ax.set_title("every run in one plane (joint PCA; squares: last checkpoints)", fontsize=10)
    plots._legend(ax, fontsize=8)
    plots._save(fig, path, fmt)


def scale(path: Path, table: list[dict], fmt: str = "png") -> None:
    """ω and Q/K/V heterogeneity against parameter count."""
    plt = plots._pyplot()
    n = [r["n_params"] for r in table]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=plots.DPI)
    axes[0].plot(n, plots._nan([r["mds_displacement"] for r in table]), "-o")
    axes[0].set_ylabel("ω (displacement)")
    axes[1].plot(n, plots._nan([r["qkv_heterogeneity_mean"] for r in table]), "-o", label="all layers")
    axes[1].plot(n, plots._nan([r["qkv_heterogeneity_middle_third"] for r in table]), "-s", label="middle third")
    axes[1].set_ylabel("Q/K/V heterogeneity")
    plots._legend(axes[1], fontsize=8)
    for ax in axes:
        plots._log_scale(ax, "x")
        ax.set_xlabel("parameters")
        for r in table:
            ax.annotate(r["name"], (r["n_params"], 0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                        va="bottom", ha="right", alpha=0.6)
    plots._save(fig, path, fmt)


def add_compare(files: OutputSet, doc: dict, matrices: dict, plot_format: str) -> list[str]:
    rows = doc["runs"]
    names = ["compare.json", "compare.csv", f"compare_mds.{plot_format}"]
    files.json(names[0], doc)
    files.text(names[1], rows_csv(CSV_COLUMNS, [[r[c] for c in CSV_COLUMNS] for r in rows]))
    files.draw(names[2], mds_curves, rows, plot_format)
    if doc["joint"] is not None:
        for mode in ("raw", "displacement"):
            name = f"compare_joint_{mode}.{plot_format}"
            labels = doc["joint"][mode]["labels"]
            files.draw(name, plots.trajectory_map, matrices[mode], labels,
                       f"joint trajectory map, {mode}" + (f" (from {doc['joint']['reference']})" if mode != "raw" else ""),
                       plot_format)
            names.append(name)
        names.append(f"compare_pca.{plot_format}")
        files.draw(names[-1], joint_pca, doc["joint"], rows, plot_format)
    if any(r["qkv_depth"] for r in rows):
        names.append(f"compare_qkv.{plot_format}")
        files.draw(names[-1], qkv_depth, rows, plot_format)
    if any(r["effective_lr"] for r in rows):
        names.append(f"compare_elr.{plot_format}")
        files.draw(names[-1], series, rows, "effective_lr", "value", "η / ‖θ‖² (whole model)",
                   "effective learning rate per run", plot_format)
    if any(r["sharpness"] for r in rows):
        names.append(f"compare_sharpness.{plot_format}")
        files.draw(names[-1], series, rows, "sharpness", "lambda_max", "λ_max (dashed: 2/η)",
                   "sharpness per run, against 2/η", plot_format)
    if doc["scale"] is not None:
        names.append(f"compare_scale.{plot_format}")
        files.draw(names[-1], scale, doc["scale"], plot_format)
    figures = [n for n in names if n.endswith(f".{plot_format}")]
    images = [(files.written(n), plot_format, n, n) for n in figures] if plot_format in ("png", "svg") else []
    names.append("compare.html")
    files.text(names[-1], page(doc, images, names))
    return names


def print_compare(doc: dict, written: list[Path]) -> None:
    from rich.table import Table

    out = stdout_console()
    table = Table(title=f"{len(doc['runs'])} runs")
    for col, justify in (("run", "left"), ("group", "left"), ("ckpts", "right"), ("params", "right"),
                         ("ω raw", "right"), ("ω displ.", "right"), ("ω update", "right"), ("straightness", "right"),
                         ("Q/K/V het.", "right")):
        table.add_column(col, justify=justify)
    for r in doc["runs"]:
        table.add_row(r["name"], r["group"] or "", str(r["n_checkpoints"]), human_count(r["n_params"]),
                      fmt(r["mds_raw"]), fmt(r["mds_displacement"]), fmt(r["mds_update"]), fmt(r["straightness"]),
                      fmt(r["qkv_heterogeneity_mean"]))
    out.print(table)
    if doc["differing_hyperparameters"]:
        out.print("hyperparameters that differ: " + ", ".join(
            f"{k} ({'/'.join(str(r['hyperparameters'].get(k, {}).get('value', '?')) for r in doc['runs'])})"
            for k in doc["differing_hyperparameters"]))
    for g in doc["groups"]:
        stat = g["mds_displacement"]
        if stat:
            spread = f" ± {stat['std']:.4f}" if stat["std"] is not None else ""
            out.print(f"group {g['name']} ({len(g['runs'])} runs): ω displacement {stat['mean']:.4f}{spread}")
    if doc["joint"] is None:
        out.print(f"no joint map: {doc['joint_not_computed']}")
    else:
        out.print(f"joint map of {len(doc['joint']['labels'])} checkpoints, displacement from "
                      f"{doc['joint']['reference']}")
    for sentence in doc["findings"]:
        out.print(sentence)
    for p in written:
        out.print(f"wrote {p}")


def page(doc: dict, images: list[tuple[bytes, str, str, str]], files: list[str]) -> str:
    """compare.html: the table, the findings from these runs' numbers, the figures; self-contained."""
    from trajcli.report import html

    rows = [[html_text.escape(r["name"]), html_text.escape(r["group"] or ""), str(r["n_checkpoints"]),
             human_count(r["n_params"]), fmt(r["mds_raw"]), fmt(r["mds_displacement"]), fmt(r["mds_update"]),
             fmt(r["straightness"]), fmt(r["qkv_heterogeneity_mean"])] for r in doc["runs"]]
    table = html._table(["run", "group", "checkpoints", "parameters", "ω raw", "ω displacement", "ω update",
                         "straightness", "Q/K/V heterogeneity"], rows)
    joint = doc["joint"]
    headline = [("runs", "runs", str(len(doc["runs"]))), ("groups", "groups", str(len(doc["groups"]))),
                ("joint", "joint trajectory map",
                 f"{len(joint['labels'])} checkpoints, displacement from {joint['reference']}" if joint
                 else f"none: {doc['joint_not_computed']}")]
    differing = ", ".join(doc["differing_hyperparameters"]) or "none found in what the runs saved"
    sections = [{"id": "runs", "title": "Runs",
                 "explain": "Each run's MDS ω in three modes (displacement: from its first checkpoint), straightness "
                            "and mean Q/K/V heterogeneity; hyperparameters that differ between runs: "
                            + html_text.escape(differing) + ". Sentences below are computed from these runs only.",
                 "findings": doc["findings"], "table": table, "figures": images}]
    return html.build_page("trajcli compare", " · ".join(r["name"] for r in doc["runs"]), headline, sections, [], files)
