"""Plots (matplotlib, Agg backend, imported only when a plot is drawn)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from trajcli.io.discover import even_picks

DPI = 96


def _nan(values: list) -> list:
    """None (undefined in the JSON) as NaN, which matplotlib leaves out of a line."""
    return [np.nan if v is None else v for v in values]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # Labels are plain text: a checkpoint named "run$1$" is not a formula, and no figure here needs
    # mathtext (its parser costs about 0.3 s per process, and each label parsed more).
    matplotlib.rcParams["text.parse_math"] = False
    # Glyphs as the font draws them, without FreeType's hinting pass: the same text to the eye at this
    # resolution, and about a sixth less time per figure (a report draws a dozen).
    matplotlib.rcParams["text.hinting"] = "none"
    import matplotlib.pyplot as plt

    return plt


def prepare() -> None:
    """Import matplotlib (Agg) now: plotting processes forked later share it instead of each importing it."""
    _pyplot()


_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def plain_log_label(label: str) -> str:
    """A log-axis tick label as matplotlib writes it in mathtext ($\\mathdefault{10^{-3}}$,
    $\\mathdefault{2\\times10^{-3}}$, $\\mathdefault{-10^{2}}$) in plain text: 10⁻³, 2×10⁻³, −10²."""
    head, tail = "$\\mathdefault{", "}$"
    if not (label.startswith(head) and label.endswith(tail)):
        return label
    body = label[len(head):-len(tail)].replace("\\times", "×")
    body = re.sub(r"\^\{(-?\d+)\}", lambda m: m.group(1).translate(_SUPERSCRIPTS), body)
    return body.replace("-", "\u2212")  # what is left is a sign: the minus matplotlib draws


@functools.cache
def _log_formatter():
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        """matplotlib's log-axis labels (which decades, which minor ticks), as plain text."""

        def __call__(self, x, pos=None):
            return plain_log_label(super().__call__(x, pos))

    return PlainLogFormatter


def _log_scale(ax, which: str, scale: str = "log", **kwargs) -> None:
    """`ax.set_{x,y}scale(scale)` ("log" or "symlog") with the same tick labels in plain text."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)(scale, **kwargs)
    formatter = _log_formatter()
    axis.set_major_formatter(formatter(10))
    if scale == "log":
        axis.set_minor_formatter(formatter(10, labelOnlyBase=False))


def _legend(ax, **kwargs) -> None:
    """A legend where something is labelled (a run whose groups are all undefined draws no line)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


NEAR_ONE = 1e-3  # a map whose off-diagonal entries all lie this close to 1 is drawn as 1 − cos, log scale


def near_one(matrices: list[np.ndarray]) -> bool:
    """Whether every defined off-diagonal entry of every map lies within NEAR_ONE of 1 (a fine-tune's
    raw map, say): on the [-1, 1] scale such a map is one solid colour."""
    found = False
    for m in matrices:
        off = m[~np.eye(m.shape[0], dtype=bool)]
        off = off[np.isfinite(off)]
        if off.size and (off < 1 - NEAR_ONE).any():
            return False
        found = found or off.size > 0
    return found


def _map_image(ax, plt, matrix: np.ndarray, near: bool, bad: str, square: bool = True):
    """The map on [-1, 1], or — `near` — its distance from 1 on a log scale (the diagonal of a
    `square` map left blank: it is 1 by definition)."""
    if not near:
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad=bad)
        return ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    from matplotlib.colors import LogNorm

    gap = 1.0 - matrix
    if square:
        gap = np.where(np.eye(gap.shape[0], dtype=bool), np.nan, gap)
    positive = gap[np.isfinite(gap) & (gap > 0)]
    floor = positive.min() if positive.size else 1e-16
    gap = np.where(np.isfinite(gap), np.maximum(gap, floor), np.nan)  # cosine exactly 1: the smallest shown
    cmap = plt.get_cmap("viridis_r").with_extremes(bad=bad)
    top = max(np.nanmax(gap), floor * 10) if np.isfinite(gap).any() else 1.0
    return ax.imshow(np.ma.masked_invalid(gap), cmap=cmap, norm=LogNorm(vmin=floor, vmax=top),
                     interpolation="nearest")


def trajectory_map(path: Path, matrix: np.ndarray, tick_labels: list[str], title: str, fmt: str = "png") -> None:
    """Heatmap of a trajectory map: checkpoints in training order, cosine on a fixed [-1, 1] scale
    (undefined entries grey), a colour bar and the MDS in the title; a map whose entries all lie
    within 1e-3 of 1 is drawn as 1 − cos on a log scale, said in the title."""
    plt = _pyplot()
    n = matrix.shape[0]
    size = min(9.0, 3.5 + 0.12 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=DPI)
    near = near_one([matrix])
    image = _map_image(ax, plt, matrix, near, "#bbbbbb")
    if near:
        title += "\n1 − cosine, log scale: every entry lies within 1e-3 of 1"
    ticks = even_picks(n, 20)
    ax.set_xticks(ticks, [tick_labels[i] for i in ticks], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, [tick_labels[i] for i in ticks], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("checkpoint (step)", fontsize=9)
    ax.set_ylabel("checkpoint (step)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="1 − cosine similarity" if near else "cosine similarity")
    _save(fig, path, fmt)


PART_STYLE = {"q": ("#1f77b4", "o", "Q"), "k": ("#d62728", "s", "K"), "v": ("#2ca02c", "^", "V")}


def _save(fig, path: Path, fmt: str) -> None:
    """Tight margins, then the file. Laid out once: `tight_layout` leaves a placeholder layout engine
    behind, for which `savefig` would lay every text out again in a dry-run draw (about a fifth of a
    plot's time); with the engine cleared it draws once, to the same pixels."""
    fig.tight_layout()
    fig.set_layout_engine(None)
    fig.savefig(path, format=fmt)
    _pyplot().close(fig)


def map_grid(path: Path, maps: list[tuple[str, np.ndarray]], title: str, fmt: str = "png", max_maps: int = 64,
             max_side: int = 120) -> None:
    """Small trajectory maps side by side on one colour scale, drawn as one mosaic image (fast for
    hundreds of groups); evenly sampled beyond `max_maps` groups, and each map beyond `max_side`
    checkpoints (a tile is about 140 pixels wide: the image would be resampled to that anyway)."""
    plt = _pyplot()
    if len(maps) > max_maps:
        picks = even_picks(len(maps), max_maps)
        title += f" ({len(picks)} of {len(maps)} groups)"
        maps = [maps[i] for i in picks]
    n = max(m.shape[0] for _, m in maps)
    if n > max_side:
        maps = [(name, m[np.ix_(even_picks(len(m), max_side), even_picks(len(m), max_side))]) for name, m in maps]
        title += f" ({max_side} of {n} rows and columns)"
        n = max(m.shape[0] for _, m in maps)
    cols = min(8, len(maps))
    rows = -(-len(maps) // cols)
    gap = max(1, n // 4)
    tile_h = n + gap + max(2, n // 3)  # room above each tile for its name
    mosaic = np.full((rows * tile_h, cols * (n + gap)), np.nan)
    fig, ax = plt.subplots(figsize=(1.45 * cols + 1.4, 1.6 * rows + 0.8), dpi=DPI)
    for i, (name, matrix) in enumerate(maps):
        r, c = divmod(i, cols)
        top, left = r * tile_h + (tile_h - n - gap), c * (n + gap)
        mosaic[top: top + matrix.shape[0], left: left + matrix.shape[1]] = matrix
        ax.text(left + n / 2, top - 0.6, name if len(name) <= 24 else "…" + name[-23:], ha="center", va="bottom",
                fontsize=6, in_layout=False)  # inside the image: no margin to make for it
    near = near_one([m for _, m in maps])
    if near:
        title += "\n1 − cosine, log scale: every entry lies within 1e-3 of 1"
        for i, (_, matrix) in enumerate(maps):  # the diagonal carries nothing here: blank
            r, c = divmod(i, cols)
            top, left = r * tile_h + (tile_h - n - gap), c * (n + gap)
            k = np.arange(matrix.shape[0])
            mosaic[top + k, left + k] = np.nan
    image = _map_image(ax, plt, mosaic, near, "white", square=False)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    label = "1 − cosine (white: undefined)" if near else "cosine (white: undefined)"
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.02, label=label)
    _save(fig, path, fmt)


def layers_mds(path: Path, groups: list[dict], title: str, fmt: str = "png") -> None:
    """MDS of every group along depth: one line per role (or one for blocks); groups outside the
    blocks (embedding, final norm, head) as labelled points before and after them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=DPI)
    in_blocks = [g for g in groups if g["layer"] is not None]
    n_blocks = max((g["layer"] for g in in_blocks), default=-1) + 1
    lines: dict[str, list] = {}
    for g in in_blocks:  # a line per role (per stack and role in an encoder-decoder model)
        label = " ".join(filter(None, (g.get("stack"), g.get("role") or g["kind"])))
        lines.setdefault(label, []).append((g["layer"], g["mds"]))
    for label, pts in lines.items():
        pts = sorted((x, y) for x, y in pts if y is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3.5, lw=1.4, label=label)
    outside = [g for g in groups if g["layer"] is None and g["mds"] is not None]
    for g in outside:
        before = g["name"].startswith("embed") or g.get("role") == "embedding"
        x = -1 if before else n_blocks
        ax.plot([x], [g["mds"]], marker="D", color="0.3", ms=5)
        # labels point into the plot, so that the ones after the last block are not cut at the edge
        ax.annotate(g["name"], (x, g["mds"]), textcoords="offset points", xytext=(4, 4) if before else (-4, 4),
                    ha="left" if before else "right", fontsize=7)
    ax.set_xlabel("block")
    ax.set_ylabel("MDS ω")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7, ncol=2)
    _save(fig, path, fmt)


def qkv_curves(path: Path, runs: list[tuple[str, dict]], fmt: str = "png") -> None:
    """ω_Q, ω_K, ω_V against normalized depth, the middle third shaded; several runs overlay."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=DPI)
    ax.axvspan(1 / 3, 2 / 3, color="0.92", zorder=0, label="middle third")
    dashes = ["-", "--", ":", "-."]
    line = 0
    for label, doc in runs:
        blocks = list(dict.fromkeys(layer.get("block") for layer in doc["layers"]))  # one line per block
        for block in blocks:
            for part, (color, marker, name) in PART_STYLE.items():
                pts = [(layer["depth"], layer[part]["mds"]) for layer in doc["layers"]
                       if layer.get("block") == block and layer[part]["mds"] is not None]
                if pts:
                    tag = " ".join(filter(None, (f"ω_{name}", block, label if len(runs) > 1 else "")))
                    ax.plot(*zip(*pts), color=color, marker=marker, ms=4, ls=dashes[line % len(dashes)], label=tag)
            line += 1
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalized depth (layer + ½) / L")
    ax.set_ylabel("MDS ω")
    single = runs[0][1]
    ax.set_title(f"Q/K/V trajectory maps along depth ({single['mode']} mode)" if len(runs) == 1
                 else f"Q/K/V along depth: {', '.join(label for label, _ in runs)}", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7, ncol=2 if len(runs) > 1 else 1)
    _save(fig, path, fmt)


def _layer_label(entry: dict) -> str:
    return f"{entry['block']} {entry['layer']}" if entry.get("block") else str(entry["layer"])


def qkv_heterogeneity(path: Path, doc: dict, fmt: str = "png") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.6), dpi=DPI)
    labels = [_layer_label(entry) for entry in doc["layers"]]
    het = [np.nan if e["heterogeneity"] is None else e["heterogeneity"] for e in doc["layers"]]
    dist = [np.nan if e["map_distance"] is None else e["map_distance"] for e in doc["layers"]]
    width = 0.4
    x = np.arange(len(labels))
    ax.bar(x - width / 2, het, width, label="heterogeneity max ω − min ω", color="#9467bd")
    ax.bar(x + width / 2, dist, width, label="map distance (mean RMS)", color="#8c564b")
    ticks = even_picks(len(labels), 24)
    ax.set_xticks(ticks, [labels[i] for i in ticks], fontsize=7, rotation=45 if any(" " in t for t in labels) else 0)
    ax.set_xlabel("layer")
    ax.set_title("Q/K/V heterogeneity per layer", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    _legend(ax, fontsize=8)
    _save(fig, path, fmt)


def qkv_heads(path: Path, doc: dict, fmt: str = "png") -> None:
    """Per-head MDS as layers × heads heatmaps, one panel per part."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 0.35 * doc["n_layers"] + 2.2), dpi=DPI, squeeze=False)
    image = None
    for ax, part in zip(axes.flat, "qkv"):
        table = [[np.nan if v is None else v for v in layer["heads"][part]] for layer in doc["layers"]]
        width = max(len(r) for r in table)
        grid = np.array([r + [np.nan] * (width - len(r)) for r in table])
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0,
                          vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"ω_{part.upper()} per head", fontsize=9)
        ax.set_xlabel("head" if part == "q" else "K/V head")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(table)), [_layer_label(layer) for layer in doc["layers"]], fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="MDS ω")
    fig.savefig(path, format=fmt)
    plt.close(fig)


def layers_overlay(path: Path, runs: list[tuple[str, dict]], fmt: str = "png") -> None:
    """MDS of the block groups of several runs against normalized depth: a colour per role (or one
    for whole blocks), a line style per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=DPI)
    roles = sorted({g.get("role") or "block" for _, doc in runs for g in doc["groups"] if g["layer"] is not None})
    colours = {role: plt.get_cmap("tab10")(i % 10) for i, role in enumerate(roles)}
    dashes = ["-", "--", ":", "-."]
    for r, (label, doc) in enumerate(runs):
        blocks = sorted({g["layer"] for g in doc["groups"] if g["layer"] is not None})
        for role in roles:
            pts = [((blocks.index(g["layer"]) + 0.5) / len(blocks), g["mds"]) for g in doc["groups"]
                   if g["layer"] is not None and (g.get("role") or "block") == role and g["mds"] is not None]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker="o", ms=3, color=colours[role], ls=dashes[r % len(dashes)],
                        label=f"{role} — {label}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalized depth (block + ½) / L")
    ax.set_ylabel("MDS ω")
    ax.set_title("MDS along depth: " + ", ".join(f"{label} ({dashes[r % len(dashes)]})" for r, (label, _) in enumerate(runs)),
                 fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=6.5, ncol=2)
    _save(fig, path, fmt)


def _step_axis(ax, steps: list[int]) -> None:
    """Log-like x axis when the steps are log-spaced (Pythia-style), linear otherwise."""
    positive = [s for s in steps if s > 0]
    if len(positive) >= 3 and max(positive) / min(positive) >= 100:
        _log_scale(ax, "x", "symlog", linthresh=max(1, min(positive)))
        ax.set_xlim(left=min(steps))
    ax.set_xlabel("step")


def trajectory_pca(path: Path, coords: list[list[float]], steps: list, labels: list[str], explained: list,
                   title: str, fmt: str = "png") -> None:
    """The checkpoints on the top two principal directions, joined in training order, coloured by step."""
    plt = _pyplot()
    xy = np.array(coords, dtype=float)
    if xy.shape[1] == 1:
        xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
    order = np.arange(len(xy))
    colour = np.array([s if s is not None else i for i, s in enumerate(steps)], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=DPI)
    ax.plot(xy[:, 0], xy[:, 1], color="0.75", lw=1, zorder=1)
    norm = None
    if colour.min() >= 0 and colour.max() / max(colour[colour > 0].min() if (colour > 0).any() else 1, 1) >= 100:
        from matplotlib.colors import SymLogNorm

        norm = SymLogNorm(linthresh=1, vmin=colour.min(), vmax=colour.max())
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="viridis", norm=norm, s=36, zorder=2, edgecolor="k", lw=0.4)
    ax.annotate(labels[order[0]], xy[order[0]], textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.annotate(labels[order[-1]], xy[order[-1]], textcoords="offset points", xytext=(-6, -12), fontsize=8, ha="right")
    ev = [f"{100 * e:.1f}%" if e is not None else "—" for e in (explained + [None, None])[:2]]
    ax.set_xlabel(f"PC 1 ({ev[0]} of variance)")
    ax.set_ylabel(f"PC 2 ({ev[1]} of variance)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(points, ax=ax, label="step", format=_log_formatter()(10) if norm is not None else None)
    ax.grid(alpha=0.3)
    _save(fig, path, fmt)


def path_measures(path: Path, doc: dict, fmt: str = "png") -> None:
    """Norm, distance to the reference and the angle of each step, against the training step."""
    plt = _pyplot()
    steps = [c["step"] if c["step"] is not None else i for i, c in enumerate(doc["checkpoints"])]
    p = doc["path"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=DPI)
    axes[0].plot(steps, _nan(p["norm"]), marker="o", ms=3)
    axes[0].set_ylabel("‖θ_k‖")
    axes[1].plot(steps, _nan(p["distance_to_reference"]), marker="o", ms=3, color="#d62728")
    axes[1].set_ylabel(f"‖θ_k − θ_ref‖ (ref {p['reference']})")
    axes[2].plot(steps[1:], _nan(p["step_angle_deg"]), marker="o", ms=3, color="#2ca02c", label="step angle ∠(θ_k−1, θ_k)")
    if p["turning_angle_deg"]:
        axes[2].plot(steps[1:-1], _nan(p["turning_angle_deg"]), marker="s", ms=3, color="#9467bd", label="turning angle")
    axes[2].set_ylabel("degrees")
    _legend(axes[2], fontsize=7)
    for ax in axes:
        _step_axis(ax, steps)
        ax.grid(alpha=0.3)
    fig.suptitle(f"lengths and bends — path length {p['path_length']:.4g}, straightness "
                 f"{p['straightness']:.3f}" if p["straightness"] is not None else "lengths and bends", fontsize=10)
    _save(fig, path, fmt)


def dynamics(path: Path, doc: dict, fmt: str = "png", max_blocks: int = 12) -> None:
    """Norm, angle moved per training step and effective learning rate against step, for the model,
    the scale-invariant set and the blocks."""
    plt = _pyplot()
    steps = doc["steps"]
    chosen = [g for g in doc["groups"] if g["kind"] in ("model", "scale_invariant")]
    blocks = [g for g in doc["groups"] if g["kind"] == "block" and g["layer"] is not None]
    if len(blocks) > max_blocks:
        blocks = [blocks[i] for i in even_picks(len(blocks), max_blocks)]
    chosen += blocks
    panels = 3 if doc["lr"] is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.3 * panels, 3.6), dpi=DPI)
    cmap = plt.get_cmap("viridis")
    for i, g in enumerate(chosen):
        style = {"color": "k", "lw": 2} if g["kind"] == "model" else (
            {"color": "#d62728", "lw": 2} if g["kind"] == "scale_invariant" else
            {"color": cmap(i / max(len(chosen), 1)), "lw": 1})
        label = g["name"] + (f" ({g['regime']['verdict']})" if g["regime"]["verdict"] else "")
        axes[0].plot(steps, _nan(g["norm"]), label=label, **style)
        axes[1].plot(steps[1:], _nan(g["angle_per_step_deg"]), **style)
        if panels == 3:
            axes[2].plot(steps, _nan(g["effective_lr"]), **style)
    axes[0].set_ylabel("‖w‖")
    axes[1].set_ylabel("angle moved per step (degrees)")
    _log_scale(axes[1], "y")
    if panels == 3:
        axes[2].set_ylabel("effective learning rate η / ‖w‖²")
        _log_scale(axes[2], "y")
    for ax in axes:
        _step_axis(ax, steps)
        ax.grid(alpha=0.3)
    _legend(axes[0], fontsize=6.5)
    fig.suptitle(("dynamics on the sphere — " if doc["scale_invariant"] else "norms, angles and effective learning rate — ") + (f"learning rate from {doc['lr_source']}" if doc["lr_source"]
                                         else "no learning rate found (pass --lr or --lr-file)"), fontsize=10)
    _save(fig, path, fmt)


def sharpness(path: Path, doc: dict, fmt: str = "png") -> None:
    """The top Hessian eigenvalues against step, with the edge-of-stability lines where η is known."""
    plt = _pyplot()
    steps = doc["steps"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=DPI)
    k = max(len(p["eigenvalues"]) for p in doc["points"])
    for i in range(k):
        values = [p["eigenvalues"][i] if i < len(p["eigenvalues"]) else np.nan for p in doc["points"]]
        ax.plot(steps, values, marker="o", ms=3, lw=2 if i == 0 else 1, label=f"λ_{i + 1}" + (" (sharpness)" if i == 0 else ""))
    styles = {"gd": ("k", "--"), "momentum": ("#d62728", ":")}
    for name, edge in (doc["edge_of_stability"] or {}).items():
        if name in styles:
            ax.plot(steps, [np.nan if v is None else v for v in edge["values"]], color=styles[name][0],
                    ls=styles[name][1], label=edge["formula"].replace("lr", "η"))
    values = [v for p in doc["points"] for v in p["eigenvalues"]]
    if values and min(values) > 0:
        _log_scale(ax, "y")
    _step_axis(ax, steps)
    ax.set_ylabel("Hessian eigenvalue")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7)
    ax.set_title("sharpness along the trajectory", fontsize=10)
    _save(fig, path, fmt)


def hessian_trace(path: Path, doc: dict, fmt: str = "png") -> None:
    """The Hessian trace (± its standard error) against the expected loss curvature
    E[L(θ+σz) + L(θ−σz) − 2L(θ)]/σ² at each σ (± its Monte-Carlo error: equal for a smooth loss, apart
    near kinks), and the curvature along the run's next step (uᵀHu and the finite differences at each
    step fraction) against step."""
    plt = _pyplot()
    steps = doc["steps"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=DPI)
    trace = [p["trace"]["value"] for p in doc["points"]]
    err = [p["trace"]["stderr"] or 0.0 for p in doc["points"]]
    axes[0].errorbar(steps, trace, yerr=err, color="k", lw=2, marker="o", ms=3, capsize=2, label="tr H")
    for j, sigma in enumerate(doc["settings"]["sigmas"]):
        values = [p.get("loss_curvature", [{}] * (j + 1))[j].get("value") for p in doc["points"]]
        errors = [p.get("loss_curvature", [{}] * (j + 1))[j].get("stderr") or 0.0 for p in doc["points"]]
        if any(v is not None for v in values):
            axes[0].errorbar(steps, [np.nan if v is None else v for v in values], yerr=errors, ls="--", marker=".",
                             capsize=2, label=f"E[ΔL]/σ², σ = {sigma:g}")
    _legend(axes[0], fontsize=7)
    axes[0].set_ylabel("tr H, and the expected loss curvature")
    axes[0].set_title(f"Hessian trace ({doc['points'][0]['trace']['method']}) against E[L(θ±σz)] − L(θ)",
                      fontsize=10)
    with_dir = [(s, p["direction"]) for s, p in zip(steps, doc["points"]) if p["direction"]]
    if with_dir:
        xs = [s for s, _ in with_dir]
        axes[1].plot(xs, [d["u_h_u"] for _, d in with_dir], color="k", lw=2, marker="o", ms=3, label="uᵀHu")
        for j, f in enumerate(doc["settings"]["step_fractions"]):
            axes[1].plot(xs, [d["finite_difference"][j]["curvature"] for _, d in with_dir], ls="--", marker=".",
                         label=f"finite difference, h = {f:g}·‖Δθ‖")
        axes[1].axhline(0, color="0.6", lw=0.8)
        _legend(axes[1], fontsize=7)
    axes[1].set_ylabel("curvature along u = Δθ/‖Δθ‖")
    axes[1].set_title("curvature along the next step θ_k+1 − θ_k", fontsize=10)
    for ax in axes:
        _step_axis(ax, steps)
        ax.grid(alpha=0.3)
    _save(fig, path, fmt)


def glass(path: Path, doc: dict, fmt: str = "png", max_blocks: int = 12) -> None:
    """Glass-to-Hessian ratio of the whole model at each σ, and the exponent p per block, against step."""
    plt = _pyplot()
    steps = doc["steps"]
    sigmas = doc["settings"]["sigmas"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=DPI)
    cmap = plt.get_cmap("viridis")
    for j, s in enumerate(sigmas):
        values = [p["glass"][0]["glass_to_hessian"][j] for p in doc["points"]]
        axes[0].plot(steps, [np.nan if v is None else v for v in values], marker="o", ms=3,
                     color=cmap(j / max(len(sigmas) - 1, 1)), label=f"σ = {s:g}")
    _log_scale(axes[0], "y")
    axes[0].set_ylabel("glass density / |Hessian diagonal|")
    axes[0].set_title("glass-to-Hessian ratio (whole model)", fontsize=10)
    _legend(axes[0], fontsize=7)
    names = [g["name"] for g in doc["points"][0]["glass"]]
    if len(names) > max_blocks + 1:
        names = [names[0]] + [names[1 + i] for i in even_picks(len(names) - 1, max_blocks)]
    for i, name in enumerate(names):
        values = [next(g["exponent"] for g in p["glass"] if g["name"] == name) for p in doc["points"]]
        style = {"color": "k", "lw": 2} if name == "model" else {"color": cmap(i / max(len(names), 1)), "lw": 1}
        axes[1].plot(steps, [np.nan if v is None else v for v in values], marker=".", label=name, **style)
    for level, text in ((4, "smooth"), (1, "jump-dominated")):
        axes[1].axhline(level, color="0.6", ls=":", lw=1)
        axes[1].annotate(text, (0.01, level), xycoords=("axes fraction", "data"), fontsize=7, color="0.4",
                         va="bottom")
    finite = [g["exponent"] for p in doc["points"] for g in p["glass"] if g["exponent"] is not None]
    axes[1].set_ylim(0, max([5.0] + [v + 0.5 for v in finite]))
    axes[1].set_ylabel("exponent p of E[d²] ∝ σ^p")
    axes[1].set_title("glass exponent per block", fontsize=10)
    _legend(axes[1], fontsize=6.5, ncol=2)
    for ax in axes:
        _step_axis(ax, steps)
        ax.grid(alpha=0.3)
    _save(fig, path, fmt)
