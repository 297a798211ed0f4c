"""Results of the analyses as plain dicts (the JSON contracts), built from a Gram set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trajcli import __version__
from trajcli.engine.gram import GramSet
from trajcli.errors import DataError, UsageError
from trajcli.io.inventory import Inventory
from trajcli.metrics import trajectory as tm

if TYPE_CHECKING:
    from trajcli.arch.families import Family
    from trajcli.arch.layouts import HeadCounts

SIMILARITY_SCHEMA = "trajcli.similarity/1"


def mode_labels(labels: list[str], mode: str, reference_idx: int) -> list[str]:
    if mode == "raw":
        return list(labels)
    if mode == "displacement":
        return [name for k, name in enumerate(labels) if k != reference_idx]
    return [f"{labels[k]}→{labels[k + 1]}" for k in range(len(labels) - 1)]


def checkpoints_json(inv: Inventory) -> list[dict]:
    return [{"name": c.name, "path": str(c.path), "step": c.step, "format": c.format} for c in inv.checkpoints]


def _extreme_pairs(cos: np.ndarray, labels: list[str]) -> tuple[dict | None, dict | None]:
    iu = np.triu_indices(cos.shape[0], k=1)
    values = cos[iu]
    finite = np.isfinite(values)
    if not finite.any():
        return None, None
    idx = np.flatnonzero(finite)
    hi = idx[np.argmax(values[idx])]
    lo = idx[np.argmin(values[idx])]

    def pair(i: int) -> dict:
        a, b = int(iu[0][i]), int(iu[1][i])
        return {"pair": [labels[a], labels[b]], "cosine": float(values[i])}

    return pair(hi), pair(lo)


def mds_windows(cos: np.ndarray) -> dict:
    """ω over the whole map and over its first and second half (None below four rows)."""
    n = cos.shape[0]
    half = n // 2
    return {
        "mds": tm.mean_directional_similarity(cos),
        "mds_early": tm.mean_directional_similarity(cos[: n - half, : n - half]) if n >= 4 else None,
        "mds_late": tm.mean_directional_similarity(cos[half:, half:]) if n >= 4 else None,
    }


def group_trajectory(basis: np.ndarray, bad: set[int], mode: str, reference_idx: int, labels: list[str]) -> dict:
    """Trajectory map, MDS and every lengths-and-bends measure of one group."""
    vectors = tm.mode_vectors(basis, mode, reference_idx, bad)
    cos = tm.cosine_matrix(vectors)
    most, least = _extreme_pairs(cos, mode_labels(labels, mode, reference_idx))
    return {
        "cos": cos,
        **mds_windows(cos),
        "most_similar": most,
        "least_similar": least,
        "path": tm.lengths_and_bends(basis, reference_idx, bad),
        "spectrum": tm.spectrum(cos),
        "pca": tm.trajectory_pca(basis) if not bad else None,
    }


def similarity_result(inv: Inventory, grams: GramSet, mode: str) -> tuple[dict, np.ndarray, list[str]]:
    """(the similarity JSON document, the matrix with NaN where undefined, warnings); the reference is
    the inventory's (`--reference`)."""
    labels = grams.labels
    ref_idx = inv.reference_idx
    basis, bad = grams.whole()
    result = group_trajectory(basis, bad, mode, ref_idx, labels)
    cos = result.pop("cos")
    warnings: list[str] = []
    identical = tm.identical_pairs(basis, bad)
    for i, j in identical:
        warnings.append(f"checkpoints {labels[i]} and {labels[j]} are identical: "
                        "their difference has no direction (entries involving it are null)")
    nonfinite = [
        {"checkpoint": labels[k], "tensor": name, "count": count}
        for name, per_ckpt in grams.nonfinite.items() for k, count in sorted(per_ckpt.items())
    ]
    for item in nonfinite:
        warnings.append(f"checkpoint {item['checkpoint']}: tensor {item['tensor']} has {item['count']} NaN/Inf "
                        "value(s); entries involving this checkpoint are null")
    frozen_zero = tm.mode_vectors(basis, "raw", bad_ckpts=bad).zero
    for k in np.flatnonzero(frozen_zero):
        warnings.append(f"checkpoint {labels[k]}: all analysed weights are zero; its raw direction is undefined")
    doc = {
        "schema": SIMILARITY_SCHEMA,
        "trajcli_version": __version__,
        "checkpoints": checkpoints_json(inv),
        "name_alignment": inv.name_alignment,
        "mode": mode,
        "reference": labels[ref_idx] if mode == "displacement" else None,
        "labels": mode_labels(labels, mode, ref_idx),
        "matrix": tm.json_matrix(cos),
        "mds": result["mds"],
        "mds_early": result["mds_early"],
        "mds_late": result["mds_late"],
        "n_checkpoints": len(labels),
        "n_params": int(sum(grams.n_params.values())),
        "n_tensors": len(set(grams.tensor_of.values())),
        "most_similar": result["most_similar"],
        "least_similar": result["least_similar"],
        "path": {**result["path"], "reference": labels[ref_idx]},
        "spectrum": result["spectrum"],
        "pca": result["pca"],
        "identical": [[labels[i], labels[j]] for i, j in identical],
        "nonfinite": nonfinite,
        "left_out": inv.left_out,
        "warnings": warnings,
    }
    return doc, cos, warnings


# ---- architecture, layers and Q/K/V ------------------------------------------------------------

LAYERS_SCHEMA = "trajcli.layers/1"
QKV_SCHEMA = "trajcli.qkv/1"


@dataclass
class Architecture:
    family: "Family | None"
    source: str
    heads: "HeadCounts | None"
    config_path: str | None
    ambiguous: tuple[str, ...] = ()

    def to_json(self) -> dict:
        h = self.heads
        return {
            "name": self.family.name if self.family else None,
            "title": self.family.title if self.family else None,
            "layout": self.family.layout if self.family else None,
            "source": self.source,
            "config": self.config_path,
            "num_heads": h.num_heads if h else None,
            "num_kv_heads": h.num_kv_heads if h else None,
            "head_dim": h.head_dim if h else None,
            "heads_source": h.source if h else None,
        }


def detect_architecture(inv: Inventory, arch: str | None, head_flags: dict) -> Architecture:
    """The family of the trajectory (from --arch, config.json, the format or tensor names) and its heads."""
    from trajcli.arch.families import Detection, detect_family, family_by_name
    from trajcli.arch.grouping import hidden_size_from, qkv_tensors, resolve_heads, shapes_fit
    from trajcli.io.config import find_model_config

    config, config_path = find_model_config(inv.checkpoints)
    names = [t.name for t in inv.tensors]
    detection = detect_family(config, inv.checkpoints[0].format, names, arch)
    if arch is not None and config and not head_flags.get("force_layout"):
        try:
            recorded = detect_family(config, inv.checkpoints[0].format, names, None)
        except DataError:  # config.json fits several layouts: --arch is what decides
            recorded = Detection(None, "")
        if recorded.source == "config.json" and recorded.family.name != arch:
            raise UsageError(f"--arch {arch} contradicts config.json, whose model is {recorded.family.name} "
                             f"({recorded.family.title})",
                             "drop --arch, or add --force-layout if config.json is wrong")
    if detection.ambiguous:  # name the candidates the stored shapes allow, and what decides between them
        fitting = tuple(n for n in detection.ambiguous if shapes_fit(inv.tensors, family_by_name(n)))
        why = ("; config.json (model_type, architectures and flags such as multi_query) decides, and there is none"
               if fitting else f" ({', '.join(detection.ambiguous)}), none of whose layouts fits the stored shapes")
        detection = Detection(None, detection.source + why, fitting)
    heads = None
    if detection.family is not None:
        matched = qkv_tensors(inv.tensors, detection.family)
        d_in = hidden_size_from(inv.tensors, detection.family, matched)
        heads = resolve_heads(detection.family, config, inv.readers[0].metadata.get("model_args"), head_flags, d_in)
    return Architecture(detection.family, detection.source, heads, str(config_path) if config_path else None,
                        detection.ambiguous)


def _scalars(path: dict) -> dict:
    def last(values):
        return values[-1] if values else None

    return {
        "final_distance": last(path["distance_to_reference"]),
        "final_angle_to_reference_deg": last(path["angle_to_reference_deg"]),
        "path_length": path["path_length"],
        "straightness": path["straightness"],
        "cone_apex_angle_deg": path["cone_apex_angle_deg"],
    }


def group_document(grams: GramSet, group, mode: str, ref_idx: int, full: bool = True) -> tuple[dict, np.ndarray]:
    """A group's map and MDS (and, with `full`, its lengths-and-bends scalars)."""
    basis, bad = grams.group(group.leaves)
    vectors = tm.mode_vectors(basis, mode, ref_idx, bad)
    cos = tm.cosine_matrix(vectors)
    doc = {"name": group.name, "kind": group.kind, "layer": group.layer, "n_params": group.n_params,
           "mds": tm.mean_directional_similarity(cos)}
    if group.role is not None:
        doc["role"] = group.role
    if group.stack is not None:
        doc["stack"] = group.stack  # encoder | decoder: block N of one stack is not block N of the other
    if full:
        doc.update(mds_windows(cos))
        doc.update(_scalars(tm.lengths_and_bends(basis, ref_idx, bad)))
        doc["undefined"] = bool(np.isnan(cos).any())
    doc["matrix"] = tm.json_matrix(cos)
    return doc, cos


def _common(inv: Inventory, grams: GramSet, mode: str) -> tuple[dict, int]:
    labels = grams.labels
    ref_idx = inv.reference_idx
    return {
        "trajcli_version": __version__,
        "checkpoints": checkpoints_json(inv),
        "name_alignment": inv.name_alignment,
        "mode": mode,
        "reference": labels[ref_idx] if mode == "displacement" else None,
        "labels": mode_labels(labels, mode, ref_idx),
        "n_checkpoints": len(labels),
    }, ref_idx


def _undefined_warnings(groups: list[dict]) -> list[str]:
    """Groups whose map has null entries: a vector with no direction (frozen weights, identical
    checkpoints). A map of one vector (two checkpoints in displacement or update mode) has no pair and
    so no MDS, but nothing in it is undefined."""
    undefined = [g["name"] for g in groups if np.isnan(g["matrix"]).any()]
    if not undefined:
        return []
    shown = ", ".join(undefined[:5]) + (" …" if len(undefined) > 5 else "")
    return [f"{len(undefined)} group(s) have vectors with no direction in this mode (frozen or identical "
            f"checkpoints): {shown}; the entries involving them are null"]


def layers_result(inv: Inventory, grams: GramSet, plan, by: str, mode: str,
                  arch: Architecture) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    head, ref_idx = _common(inv, grams, mode)
    groups, matrices = [], {}
    for group in plan.groups:
        doc, cos = group_document(grams, group, mode, ref_idx)
        groups.append(doc)
        matrices[group.name] = cos
    n_blocks = len({g.layer for g in plan.groups if g.layer is not None})
    result = {"schema": LAYERS_SCHEMA, **head, "by": by, "architecture": arch.to_json(), "n_blocks": n_blocks,
              "groups": groups}
    return result, matrices, _undefined_warnings(groups)


def _rms_difference(a: np.ndarray, b: np.ndarray) -> float | None:
    off = ~np.eye(a.shape[0], dtype=bool)
    d = (a - b)[off]
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d ** 2))) if d.size else None


def qkv_result(inv: Inventory, grams: GramSet, plan, layers: list, mode: str, arch: Architecture,
               include_bias: bool, per_head: bool) -> tuple[dict, list[str]]:
    """Per attention layer (`layers`: indices, or (block, index) in an encoder-decoder model, whose
    depth then runs within its block): ω of Q, K and V, heterogeneity, map distance (and per head)."""
    from trajcli.arch.grouping import layer_name

    head, ref_idx = _common(inv, grams, mode)
    by_name = {g.name: g for g in plan.groups}
    n_layers = len(layers)
    block_of = [layer[0] if isinstance(layer, tuple) else None for layer in layers]
    out_layers, part_docs = [], []
    for i, layer in enumerate(layers):
        block = block_of[i]
        in_block = block_of.count(block)
        entry: dict = {"layer": layer[1] if block else layer, "block": block,
                       "depth": (block_of[:i].count(block) + 0.5) / in_block}
        maps = {}
        for part in "qkv":
            doc, cos = group_document(grams, by_name[f"{layer_name(layer)}.{part}"], mode, ref_idx, full=False)
            entry[part] = {"mds": doc["mds"], "n_params": doc["n_params"], "matrix": doc["matrix"]}
            maps[part] = cos
            part_docs.append(doc)
        omegas = [entry[p]["mds"] for p in "qkv"]
        entry["heterogeneity"] = None if None in omegas else max(omegas) - min(omegas)
        distances = [_rms_difference(maps[a], maps[b]) for a, b in (("q", "k"), ("q", "v"), ("k", "v"))]
        entry["map_distance"] = None if None in distances else float(np.mean(distances))
        if per_head:
            entry["heads"] = {}
            for part in "qkv":
                head_groups = sorted((g for g in plan.groups if g.kind == "head" and g.layer == layer and g.part == part),
                                     key=lambda g: g.head)
                entry["heads"][part] = [group_document(grams, g, mode, ref_idx, full=False)[0]["mds"] for g in head_groups]
        out_layers.append(entry)
    result = {"schema": QKV_SCHEMA, **head, "architecture": arch.family.name, "layout": arch.to_json(),
              "include_bias": include_bias, "per_head": per_head, "n_layers": n_layers, "layers": out_layers}
    warnings = _undefined_warnings(part_docs)
    if plan.unclaimed:
        shown = ", ".join(plan.unclaimed[:4]) + (" …" if len(plan.unclaimed) > 4 else "")
        warnings.append(f"{len(plan.unclaimed)} tensor(s) look like attention projections but are not placed by the "
                        f"{arch.family.name} layout, and are not in any Q/K/V group: {shown}")
    result["unclaimed"] = list(plan.unclaimed)
    return result, warnings


# ---- the whole report --------------------------------------------------------------------------

REPORT_SCHEMA = "trajcli.report/1"


@dataclass
class ReportPlans:
    """What `report` computes: the cut the pass uses, and the groups of each analysis."""

    architecture: Architecture
    segments: dict
    block: object
    role: object
    qkv: object | None = None
    qkv_layers: list[int] | None = None
    qkv_problem: str | None = None


def plan_report(inv: Inventory, arch: str | None, head_flags: dict) -> ReportPlans:
    """The finest cut any analysis needs (Q/K/V heads when the architecture is known), so one pass
    serves every analysis; a layout that cannot be split leaves Q/K/V out with the reason."""
    from trajcli.arch.grouping import plan_layers, plan_qkv

    try:
        architecture = detect_architecture(inv, arch, head_flags)
    except DataError as exc:
        if arch:
            raise
        architecture = Architecture(None, f"not detected ({exc.message})", None, None)
    family, heads = architecture.family, architecture.heads
    qkv_plan, layers, problem = None, None, None
    if family is None:
        problem = f"Q/K/V left out: {architecture.source}" + (
            f" (fits {', '.join(architecture.ambiguous)}; pass --arch)" if architecture.ambiguous else "; pass --arch")
    else:
        try:
            qkv_plan, layers = plan_qkv(inv.tensors, family, heads, per_head=heads is not None, include_bias=True)
        except DataError as exc:
            if arch:
                raise
            problem = f"Q/K/V left out: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")
    usable = family if qkv_plan is not None else None
    role = plan_layers(inv.tensors, "role", usable, heads)
    block = plan_layers(inv.tensors, "block", None, None)
    segments = qkv_plan.segments if qkv_plan is not None else role.segments
    return ReportPlans(architecture, segments, block, role, qkv_plan, layers, problem)


def report_plan_for(arch: str | None, head_flags: dict):
    """The `plan_for` of a pass that serves every analysis: inv -> (the finest cut, the ReportPlans)."""
    def plan_for(inv: Inventory):
        plans = plan_report(inv, arch, head_flags)
        return plans.segments, plans

    return plan_for


def report_result(inv: Inventory, grams: GramSet, plans: ReportPlans, lr_points: list | None = None, lr_source: str | None = None,
                  on_part: Callable[[dict, str], None] | None = None, loss_file: Path | None = None) -> dict:
    """Every analysis from one Gram set: similarity in three modes, layers by block and by role
    (displacement), Q/K/V with heads (displacement), dynamics, lengths and bends, PCA, the headline.
    `on_part(result, part)` is called as each part is ready (its files can be written meanwhile)."""
    from trajcli.arch.grouping import scale_invariant_tensors
    from trajcli.engine.store import derive_gramset

    def ready(part: str) -> None:
        if on_part is not None:
            on_part(out, part)

    out: dict = {"warnings": list(inv.warnings)}
    out["similarity"] = {}
    for mode in tm.MODES:
        doc, matrix, warnings = similarity_result(inv, grams, mode)
        out["similarity"][mode] = (doc, matrix)
        if mode == "raw":
            out["warnings"] += warnings
    ready("similarity")
    per_tensor = derive_gramset(grams, plans.segments, {}, inv.tensors)
    for by, plan in (("block", plans.block), ("role", plans.role)):
        derived = per_tensor if not plan.segments else derive_gramset(grams, plans.segments, plan.segments, inv.tensors)
        doc, matrices, warnings = layers_result(inv, derived, plan, by, "displacement", plans.architecture)
        out[f"layers_{by}"] = (doc, matrices)
        out["warnings"] += warnings
        ready(f"layers_{by}")
    names = {t.name for t in inv.tensors} | {d["tensor"] for d in inv.left_out}
    invariant = scale_invariant_tensors(inv.tensors, names, None)
    out["dynamics"], warnings = dynamics_result(inv, per_tensor, lr_points or [], lr_source, invariant, loss_file)
    out["warnings"] += warnings
    ready("dynamics")
    if plans.qkv is not None:
        doc, warnings = qkv_result(inv, grams, plans.qkv, plans.qkv_layers, "displacement", plans.architecture,
                                   True, plans.architecture.heads is not None)
        out["qkv"] = doc
        out["warnings"] += warnings
        ready("qkv")
    elif plans.qkv_problem:
        out["warnings"].append(plans.qkv_problem)
    out["headline"] = _headline(out)
    return out


def _headline(out: dict) -> dict:
    sims = {mode: doc for mode, (doc, _) in out["similarity"].items()}
    raw = sims["raw"]
    path = sims["displacement"]["path"]
    head = {
        "n_checkpoints": raw["n_checkpoints"],
        "first_step": raw["checkpoints"][0]["step"],
        "last_step": raw["checkpoints"][-1]["step"],
        "n_params": raw["n_params"],
        "n_tensors": raw["n_tensors"],
        "mds_raw": raw["mds"],
        "mds_displacement": sims["displacement"]["mds"],
        "mds_update": sims["update"]["mds"],
        "mds_displacement_early": sims["displacement"]["mds_early"],
        "mds_displacement_late": sims["displacement"]["mds_late"],
        "path_length": path["path_length"],
        "end_to_end_distance": path["end_to_end_distance"],
        "straightness": path["straightness"],
        "cone_apex_angle_deg": path["cone_apex_angle_deg"],
        "pca_explained_2d": (sum(v for v in raw["pca"]["explained_variance_ratio"] if v is not None)
                             if raw["pca"] else None),
        "effective_rank_displacement": sims["displacement"]["spectrum"]["effective_rank"],
        "identical_pairs": len(raw["identical"]),
    }
    invariant = next((g for g in out["dynamics"]["groups"] if g["kind"] == "scale_invariant"), None)
    head["regime"] = invariant["regime"]["verdict"] if invariant else None  # no verdict for the whole model
    head["regime_median_angle_deg"] = invariant["regime"]["median_angle_deg"] if invariant else None
    qkv = out.get("qkv")
    if qkv:
        head["qkv_heterogeneity_mean"], head["qkv_heterogeneity_middle_third"] = qkv_summary(qkv)
    return head


def qkv_summary(qkv: dict) -> tuple[float | None, float | None]:
    """Mean Q/K/V heterogeneity over every attention layer, and over the middle third of the depth."""
    het = [(e["depth"], e["heterogeneity"]) for e in qkv["layers"] if e["heterogeneity"] is not None]
    middle = [h for d, h in het if 1 / 3 <= d <= 2 / 3]
    return (float(np.mean([h for _, h in het])) if het else None, float(np.mean(middle)) if middle else None)


# ---- dynamics ------------------------------------------------------------------------------------

DYNAMICS_SCHEMA = "trajcli.dynamics/1"


def dynamics_result(inv: Inventory, grams: GramSet, lr_points: list, lr_source: str | None,
                    scale_invariant: list[str], loss_file: Path | None = None) -> tuple[dict, list[str]]:
    """Norms, angular steps and effective learning rates of the whole model, the scale-invariant set,
    each block and each tensor, with a regime verdict per group."""
    from trajcli.arch.grouping import Group, plan_layers
    from trajcli.io.lr import training_loss_points
    from trajcli.metrics import dynamics as dyn

    warnings = []
    steps = [c.step for c in inv.checkpoints]
    if any(s is None for s in steps):
        warnings.append("some checkpoints have no step; intervals count 1 step each")
        steps = list(range(len(steps)))
    lr = dyn.learning_rate_at(steps, lr_points) if lr_points else None
    losses, loss_source = training_loss_points(inv, loss_file)
    loss = None
    if len(losses) >= 2 and len(steps) >= 2:  # how the training loss changes across the verdict's window, where logged
        lo, hi = steps[dyn.regime_window(len(steps) - 1)], steps[-1]
        inside = [(s, v) for s, v in losses if lo <= s <= hi]
        if len(inside) < 3:  # too few logged points inside: the loss interpolated at the window's ends
            inside = list(zip([lo, hi], dyn.learning_rate_at([lo, hi], losses)))
        loss = dyn.trend(np.array([s for s, _ in inside]), np.array([v for _, v in inside]))
    tensors = [t.name for t in inv.tensors]
    groups = [Group("model", "model", None, tensors, sum(t.numel for t in inv.tensors))]
    if scale_invariant:
        chosen = set(scale_invariant)
        groups.append(Group("scale_invariant", "scale_invariant", None, scale_invariant,
                            sum(t.numel for t in inv.tensors if t.name in chosen)))
    groups += plan_layers(inv.tensors, "block", None, None).groups
    groups += plan_layers(inv.tensors, "tensor", None, None).groups
    out = []
    invariant_tensors = set(scale_invariant)
    for g in groups:
        basis, bad = grams.group(g.leaves)
        invariant = g.kind == "scale_invariant" or (g.kind == "tensor" and g.name in invariant_tensors)
        out.append({"name": g.name, "kind": g.kind, "layer": g.layer, "n_params": g.n_params,
                    **dyn.group_dynamics(basis, steps, bad, lr, scale_invariant=invariant, loss=loss,
                                         n_params=g.n_params)})
    doc = {"schema": DYNAMICS_SCHEMA, "trajcli_version": __version__, "checkpoints": checkpoints_json(inv),
           "name_alignment": inv.name_alignment,
           "steps": steps, "lr": lr, "lr_source": lr_source, "loss_source": loss_source,
           "scale_invariant": scale_invariant,
           "regime_rule": {"window": "later half of the intervals", "min_intervals": dyn.MIN_INTERVALS,
                           "divergence": "median |cos| between the window's checkpoints <= noise_sigmas/sqrt(n)",
                           "noise_sigmas": dyn.NOISE_SIGMAS,
                           "convergence": "angle per effective step (lr / |w|^2 x steps) shrinks by the factor",
                           "convergence_factor": dyn.CONVERGENCE_FACTOR, "settled_factor": dyn.SETTLED_FACTOR,
                           "loss_plateau_factor": dyn.LOSS_PLATEAU_FACTOR,
                           "equilibrium": "settled steps and loss, cos(first, last) above the random-walk product",
                           "classified": "scale-invariant groups only"},
           "groups": out}
    if lr is None:
        warnings.append("no learning rate found (trainer_state.json, optimizer state); effective learning rates "
                        "are left out — pass --lr VALUE or --lr-file CSV (dynamics, report)")
    return doc, warnings


# ---- curvature -----------------------------------------------------------------------------------

CURVATURE_SCHEMA = "trajcli.curvature/1"


def curvature_result(inv: Inventory, measured: dict, data: dict, settings: dict, lr_points: list,
                     lr_source: str | None, momentum: float | None, momentum_source: str | None) -> tuple[dict, list[str]]:
    """The curvature document: per checkpoint loss, gradient norm, top eigenvalues (with the Lanczos
    iterations and residuals), trace, curvature along the next step and the glass per block; the
    edge-of-stability lines where a learning rate is known."""
    from trajcli.metrics import curvature as cm
    from trajcli.metrics import dynamics as dyn

    warnings = []
    steps = [c.step if c.step is not None else k for k, c in enumerate(inv.checkpoints)]
    lr = dyn.learning_rate_at(steps, lr_points) if lr_points else None
    points = []
    for ckpt, step, p in zip(inv.checkpoints, steps, measured["points"]):
        eig = p["lanczos"]
        if not eig["converged"]:
            warnings.append(f"{ckpt.name}: Lanczos stopped after {eig['iterations']} iterations with residuals "
                            f"{', '.join(f'{r:.2g}' for r in eig['residuals'])} above the tolerance; "
                            "raise --lanczos-iters for tighter eigenvalues")
        points.append({"checkpoint": ckpt.name, "step": step, "loss": p["loss"], "grad_norm": p["grad_norm"],
                       "eigenvalues": eig["eigenvalues"],
                       "lanczos": {k: eig[k] for k in ("iterations", "residuals", "converged", "exhausted")},
                       "trace": p["trace"], "direction": p["direction"], "glass": p["glass"],
                       "loss_curvature": p["loss_curvature"]})
    warnings += _glass_warnings(points)
    requested = data["batch_size_requested"]
    if requested is not None and data["batch_size"] < requested:
        warnings.append(f"--data holds {data['rows_available']} rows, fewer than --batch-size "
                        f"{requested}: the batch uses all of them")
    if data["batch_size"] < data["rows_available"]:
        warnings.append(f"the curvature is that of {data['batch_size']} of the {data['rows_available']} rows of "
                        f"{Path(data['file']).name}: the sharpness of a small batch varies from batch to batch and is "
                        f"not that of the training loss (--batch-size {data['rows_available']} measures the whole file)")
    doc = {"schema": CURVATURE_SCHEMA, "trajcli_version": __version__, "checkpoints": checkpoints_json(inv),
           "steps": steps, "model": measured["model"], "data": data, "settings": settings,
           "lr": lr, "lr_source": lr_source, "momentum": momentum, "momentum_source": momentum_source,
           "edge_of_stability": cm.edge_of_stability(lr, momentum) if lr is not None else None,
           "points": points}
    if lr is None:
        warnings.append("no learning rate found (trainer_state.json, optimizer state): the 2/η line is left out — "
                        "pass --lr VALUE or --lr-file CSV")
    return doc, warnings


def _glass_warnings(points: list[dict]) -> list[str]:
    """Where the glass numbers cannot be read as documented: local exponents that disagree beyond
    their errors (a kink onset inside the σ grid: one p does not describe it), and standard errors
    as large as half the value (too few --glass-samples)."""
    said = []
    broken = [(p["checkpoint"], g) for p in points for g in p["glass"] if g["exponent_holds"] is False]
    if broken:
        name, g = broken[0]
        slopes = ", ".join("—" if v is None else f"{v:.2g}" for v in g["local_exponents"])
        said.append(f"glass: the local exponents of E[d²] between neighbouring σ disagree beyond their errors in "
                    f"{len(broken)} group(s) × checkpoint(s), e.g. {g['name']} at {name} ({slopes}): a kink onset "
                    "inside the σ grid? One exponent p does not describe it (see local_exponents)")
    noisy = []
    for p in points:
        g = p["glass"][0]  # the whole model
        for value, err in zip(g["mean_sq_jump"], g["mean_sq_jump_stderr"] or []):
            if value and err is not None and err > 0.5 * value:
                noisy.append((p["checkpoint"], err / value))
    if noisy:
        worst = max(r for _, r in noisy)
        said.append(f"glass: at {len(noisy)} checkpoint × σ the standard error of E[d²] is over half its value "
                    f"(up to {worst:.2g}×): raise --glass-samples about {max(2, round((worst / 0.1) ** 2))}-fold for "
                    "10 % errors")
    return said


def curvature_headline(doc: dict) -> dict:
    """The report's headline numbers from a curvature document."""
    first, last = doc["points"][0], doc["points"][-1]
    return {"loss_first": first["loss"], "loss_last": last["loss"],
            "sharpness_first": first["eigenvalues"][0], "sharpness_last": last["eigenvalues"][0],
            "glass_exponent_last": last["glass"][0]["exponent"]}


# ---- what the report says: sentences computed from this run's numbers ----------------------------

QKV_BACKGROUND = ("Background from the literature, not a finding of this run: in smaller LLMs the three curves "
                  "separate in the middle layers; at larger scale they coincide.")


def layer_label(entry: dict) -> str:
    """A Q/K/V layer as people read it: `3`, or `encoder 3`, `decoder.cross 3`."""
    return f"{entry['block']} {entry['layer']}" if entry.get("block") else str(entry["layer"])


def qkv_noise_floor(entry: dict) -> float | None:
    """A layer's noise floor for heterogeneity: the largest standard error, over Q, K and V, of the
    mean of that part's per-head ω (the spread of heads within a part is what one number per part
    cannot resolve); None without per-head ω or with fewer than two heads."""
    heads = entry.get("heads") or {}
    errors = []
    for part in "qkv":
        values = [v for v in heads.get(part, []) if v is not None]
        if len(values) < 2:
            return None
        errors.append(float(np.std(values, ddof=1) / np.sqrt(len(values))))
    return max(errors)


def qkv_findings(doc: dict) -> list[str]:
    """What this run's Q/K/V numbers show, as sentences whose every claim is a comparison of its own
    numbers: where heterogeneity h(l) stands above twice its noise floor, whether the middle third
    differs from the whole; never the literature's expectation (that is QKV_BACKGROUND, marked so)."""
    layers = [e for e in doc["layers"] if e["heterogeneity"] is not None]
    if not layers:
        return ["No layer has a defined heterogeneity here (ω undefined in some part)."]
    floors = [qkv_noise_floor(e) for e in layers]
    said = []
    if any(f is None for f in floors):
        said.append("No noise floor could be computed (per-head ω needs the head counts), so no layer's "
                    "heterogeneity is called significant or negligible.")
    else:
        above = sorted(((e["heterogeneity"], layer_label(e)) for e, f in zip(layers, floors)
                        if e["heterogeneity"] > 2 * f), reverse=True)
        if above:
            top = ", ".join(label for _, label in above[:3])
            said.append(f"Here ω_Q, ω_K and ω_V differ beyond twice the noise floor in {len(above)} of {len(layers)} "
                        f"layers, most in layer{'s' if len(above) > 1 else ''} {top} (h = {above[0][0]:.3g}); "
                        f"in the other {len(layers) - len(above)} they coincide within it.")
        else:
            said.append(f"Here ω_Q, ω_K and ω_V coincide within twice the noise floor in every layer "
                        f"(largest h = {max(e['heterogeneity'] for e in layers):.3g}).")
    middle = [e["heterogeneity"] for e in layers if 1 / 3 <= e["depth"] <= 2 / 3]
    if middle and len(middle) < len(layers):
        mean_middle = float(np.mean(middle))
        mean_all = float(np.mean([e["heterogeneity"] for e in layers]))
        relation = "higher than" if mean_middle > mean_all else ("lower than" if mean_middle < mean_all else "equal to")
        said.append(f"Mean heterogeneity in the middle third of the depth ({mean_middle:.3g}) is {relation} that "
                    f"over all layers ({mean_all:.3g}).")
    return said
