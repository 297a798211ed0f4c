"""Comparing runs: a table of each run's measures and hyperparameters, groups (seeds of one setting)
with mean and spread, and — when the runs share an architecture — the joint trajectory map of every
checkpoint of every run, from one pass that reads each file once. Runs may also be result folders of
`trajcli report`, answered without reading a checkpoint."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trajcli import __version__
from trajcli.errors import DataError, UsageError
from trajcli.metrics import trajectory as tm

COMPARE_SCHEMA = "trajcli.compare/1"
# The per-run numbers groups summarise (mean, spread); each is a float or None in a run's row.
SCALARS = ("mds_raw", "mds_displacement", "mds_update", "mds_displacement_early", "mds_displacement_late",
           "path_length", "straightness", "cone_apex_angle_deg", "qkv_heterogeneity_mean",
           "qkv_heterogeneity_middle_third", "effective_lr_last", "sharpness_last")


@dataclass
class RunSource:
    """One RUN argument: its name, where it is, its group."""

    name: str
    path: Path
    group: str | None = None
    saved: bool = False  # a result folder of `trajcli report` (report.json): no checkpoint is read


@dataclass
class _Run:
    source: RunSource
    inventory: object | None = None  # io.inventory.Inventory, for runs of checkpoints
    docs: dict = field(default_factory=dict)  # similarity_<mode>, qkv: the run's documents
    hyperparameters: dict = field(default_factory=dict)


def run_sources(args: list[str], group: str | None = None) -> list[RunSource]:
    """RUN arguments (PATH or NAME=PATH) as named runs, each in the group `group` (a regex: its first
    capture group, else its whole match, on the run's name) gives it; a name given twice is refused."""
    pattern = None
    if group is not None:
        try:
            pattern = re.compile(group)
        except re.error as exc:
            raise UsageError(f"--group {group!r} is not a regular expression: {exc}", r"e.g. --group '^(.*)-seed\d+$'") from None
    out = []
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep or not name or "/" in name:
            name, path = Path(arg).name or arg, arg
        source = RunSource(name, Path(path))
        source.saved = (source.path / "report.json").is_file()
        if pattern is not None and (match := pattern.search(name)):
            source.group = match.group(1) if pattern.groups else match.group(0)
        out.append(source)
    names = [s.name for s in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"runs named {', '.join(twice)} more than once", "name them: NAME=PATH (e.g. sgd-0=runs/a/sgd)")
    if len(out) < 2:
        raise UsageError("compare needs at least two runs", "trajcli compare RUN RUN …")
    return out


def compare(sources: list[RunSource], selection, options, arch: str | None = None, head_flags: dict | None = None,
            notify=lambda message: None) -> tuple[dict, dict]:
    """The comparison document (schema trajcli.compare/1) and the joint maps ({mode: matrix}, empty
    without a joint map). Runs of checkpoints are read in one pass when they share their tensors, else
    one pass each; every file is read once."""
    from trajcli.io.lr import hyperparameters
    from trajcli.pipeline import load_inventory

    runs = [_Run(s) for s in sources]
    try:
        for run in runs:
            if run.source.saved:
                run.docs = _saved_documents(run.source.path)
            else:
                run.inventory = load_inventory([str(run.source.path)], selection)
                run.hyperparameters = hyperparameters(run.inventory)
        live = [r for r in runs if r.inventory is not None]
        joint, why_not = _joint_possible(runs)
        joint_doc, matrices = None, {}
        if joint:
            joint_doc, matrices = _read_together(live, options, arch, head_flags or {}, notify)
        else:
            for run in live:
                _read_alone(run, options, arch, head_flags or {}, notify)
    finally:
        for run in runs:
            if run.inventory is not None:
                run.inventory.close()
    rows = [_row(run) for run in runs]
    doc = {"schema": COMPARE_SCHEMA, "trajcli_version": __version__, "runs": rows,
           "differing_hyperparameters": _differing(rows), "groups": _groups(rows),
           "joint": joint_doc, "joint_not_computed": None if joint else why_not,
           "scale": _scale(rows), "findings": findings(rows, "raw") + findings(rows, "displacement")}
    return doc, matrices


def _saved_documents(folder: Path) -> dict:
    from trajcli.io.jsonfile import read_json

    docs = {}
    for mode in tm.MODES:
        path = folder / f"similarity_{mode}.json"
        if not path.is_file():
            raise DataError(f"{folder} has report.json but no {path.name}", "run `trajcli report` into it again")
        docs[f"similarity_{mode}"] = read_json(path, "similarity result", "", result=True)
    for part, what in (("qkv", "Q/K/V result"), ("dynamics", "dynamics result"), ("curvature", "curvature result")):
        if (folder / f"{part}.json").is_file():
            docs[part] = read_json(folder / f"{part}.json", what, "", result=True)
    return docs


def _joint_possible(runs: list[_Run]) -> tuple[bool, str | None]:
    if any(r.inventory is None for r in runs):
        return False, "some runs are saved results: a joint map needs every run's checkpoints"
    specs = [[(t.name, t.shape) for t in r.inventory.tensors] for r in runs]
    if any(s != specs[0] for s in specs[1:]):
        sizes = sorted({r.inventory.n_params for r in runs})
        return False, ("the runs differ in their tensors (names or shapes"
                       + (f"; {len(sizes)} model sizes" if len(sizes) > 1 else "") + "): no common space to compare in")
    if any(r.inventory.reference_idx != 0 for r in runs):
        return False, "a --reference inside a run: the joint map starts each run at its first checkpoint"
    return True, None


def _analyse(run: _Run, grams, plans) -> None:
    from trajcli.analysis import dynamics_result, qkv_result, similarity_result
    from trajcli.arch.grouping import scale_invariant_tensors
    from trajcli.engine.store import derive_gramset
    from trajcli.io.lr import learning_rate_points

    inv = run.inventory
    for mode in tm.MODES:
        run.docs[f"similarity_{mode}"], _, _ = similarity_result(inv, grams, mode)
    if plans.qkv is not None:
        run.docs["qkv"], _ = qkv_result(inv, grams, plans.qkv, plans.qkv_layers, "displacement",
                                        plans.architecture, True, plans.architecture.heads is not None)
    names = {t.name for t in inv.tensors} | {d["tensor"] for d in inv.left_out}
    points, source = learning_rate_points(inv, None, None)
    run.docs["dynamics"], _ = dynamics_result(inv, derive_gramset(grams, plans.segments, {}, inv.tensors), points,
                                              source, scale_invariant_tensors(inv.tensors, names, None))


def _read_alone(run: _Run, options, arch, head_flags, notify) -> None:
    from trajcli.analysis import report_plan_for
    from trajcli.pipeline import pass_over

    grams, plans = pass_over(run.inventory, options, report_plan_for(arch, head_flags), notify)
    _analyse(run, grams, plans)


def _read_together(runs: list[_Run], options, arch, head_flags, notify) -> tuple[dict, dict]:
    """One pass over every run's checkpoints, one run after another; each run's Grams are then a part
    of the joint ones (engine.store.sub_trajectory)."""
    from trajcli.analysis import report_plan_for
    from trajcli.engine.store import derive_gramset, sub_trajectory
    from trajcli.io.inventory import Inventory
    from trajcli.pipeline import pass_over

    first = runs[0].inventory
    joint = Inventory([c for r in runs for c in r.inventory.checkpoints], [x for r in runs for x in r.inventory.readers],
                      list(first.tensors))
    plan = report_plan_for(arch, head_flags)
    grams, plans = pass_over(joint, options, lambda _: plan(first), notify)
    bounds, start = [], 0
    for run in runs:
        stop = start + len(run.inventory.checkpoints)
        bounds.append((start, stop))
        _analyse(run, sub_trajectory(grams, start, stop), plans)
        start = stop
    whole = derive_gramset(grams, plans.segments, {}, joint.tensors)
    return joint_maps(whole, runs, bounds)


def joint_maps(grams, runs: list[_Run], bounds: list[tuple[int, int]]) -> tuple[dict, dict]:
    """The joint raw and displacement maps of runs read together (checkpoints of run r at bounds[r]),
    and their 2-D picture."""
    basis, bad = grams.whole()
    n = basis.shape[0]
    labels = [f"{r.source.name}/{c.name}" for r in runs for c in r.inventory.checkpoints]
    raw = tm.cosine_matrix(tm.mode_vectors(basis, "raw", bad_ckpts=bad))
    starts = [s for s, _ in bounds]
    start_of = [s for s, e in bounds for _ in range(s, e)]
    identical = set(tm.identical_pairs(basis, bad))
    shared = all((starts[0], s) in identical for s in starts[1:])
    # θ_k − θ_ref(run): the basis vectors from the run's first checkpoint to k, a 0/1 row of coefficients
    # (the same terms as within one run: no difference of raw Grams)
    coeff = np.zeros((n, n))
    for k in range(n):
        coeff[k, start_of[k] + 1:k + 1] = 1.0
    gram = coeff @ basis @ coeff.T
    bound = np.diagonal(coeff @ np.abs(basis) @ coeff.T)
    keep = [k for k in range(n) if k not in starts]
    vectors = tm.ModeVectors(gram[np.ix_(keep, keep)], np.diagonal(gram)[keep] <= tm.ZERO_TOLERANCE * bound[keep],
                             np.array([k in bad or start_of[k] in bad for k in keep], dtype=bool))
    displacement = tm.cosine_matrix(vectors)
    doc = {"labels": labels, "runs": [r.source.name for r, (s, e) in zip(runs, bounds) for _ in range(s, e)],
           "reference": "the shared initial checkpoint" if shared else "each run's first checkpoint",
           "shared_init": shared,
           "raw": {"labels": labels, "matrix": tm.json_matrix(raw)},
           "displacement": {"labels": [labels[k] for k in keep], "matrix": tm.json_matrix(displacement)},
           "pca": _pca(gram)}
    return doc, {"raw": raw, "displacement": displacement}


def _pca(gram: np.ndarray) -> dict:
    """The points whose Gram is `gram` (θ_k − θ_ref(run): every run starts at the origin) on their top
    two principal directions (classical MDS of the centred Gram): where the runs went, whatever their
    initial weights."""
    n = gram.shape[0]
    centre = np.eye(n) - np.full((n, n), 1.0 / n)
    eig, vec = np.linalg.eigh(centre @ ((gram + gram.T) / 2) @ centre)
    order = np.argsort(eig)[::-1]
    positive = np.clip(eig[order], 0.0, None)
    coords = vec[:, order[:2]] * np.sqrt(positive[:2])
    total = positive.sum()
    return {"coords": coords.tolist(),
            "explained_variance_ratio": (positive[:2] / total).tolist() if total > 0 else [None, None],
            "points": "theta_k - theta_ref(run): every run starts at the origin"}


def _mds_curve(doc: dict) -> list[dict]:
    """ω of a map over the checkpoints up to each one (from the second row on), at their steps."""
    cos = np.array(doc["matrix"], dtype=float)
    steps = [c["step"] for c in doc["checkpoints"]]
    if doc["mode"] == "displacement":
        steps = steps[1:]  # the reference has no row
    elif doc["mode"] == "update":
        steps = steps[1:]  # a row per update, at the step that ends it
    return [{"step": steps[k - 1], "mds": tm.mean_directional_similarity(cos[:k, :k])}
            for k in range(2, cos.shape[0] + 1)]


def _row(run: _Run) -> dict:
    from trajcli.analysis import qkv_summary

    sims = {mode: run.docs[f"similarity_{mode}"] for mode in tm.MODES}
    disp = sims["displacement"]
    qkv = run.docs.get("qkv")
    het, middle = qkv_summary(qkv) if qkv else (None, None)
    return {"name": run.source.name, "path": str(run.source.path), "group": run.source.group,
            "saved_result": run.source.saved, "hyperparameters": run.hyperparameters,
            "n_checkpoints": disp["n_checkpoints"], "n_params": disp["n_params"],
            "first_step": disp["checkpoints"][0]["step"], "last_step": disp["checkpoints"][-1]["step"],
            "architecture": qkv["architecture"] if qkv else None,
            "mds": {mode: sims[mode]["mds"] for mode in tm.MODES},
            "mds_raw": sims["raw"]["mds"], "mds_displacement": disp["mds"], "mds_update": sims["update"]["mds"],
            "mds_displacement_early": disp["mds_early"], "mds_displacement_late": disp["mds_late"],
            "mds_curve": {mode: _mds_curve(sims[mode]) for mode in ("raw", "displacement")},
            "path_length": disp["path"]["path_length"], "straightness": disp["path"]["straightness"],
            "cone_apex_angle_deg": disp["path"]["cone_apex_angle_deg"],
            "qkv_heterogeneity_mean": het, "qkv_heterogeneity_middle_third": middle,
            "qkv_depth": [[e["depth"], e["heterogeneity"]] for e in qkv["layers"]] if qkv else None,
            **_dynamics_columns(run.docs.get("dynamics")), **_curvature_columns(run.docs.get("curvature"))}


def _dynamics_columns(doc: dict | None) -> dict:
    """The whole model's effective learning rate η/‖θ‖² per checkpoint (where the run saved its
    learning rate), and the regime of its scale-invariant weights (where there are any)."""
    if doc is None:
        return {"effective_lr": None, "effective_lr_last": None, "regime": None}
    model = next(g for g in doc["groups"] if g["kind"] == "model")
    invariant = next((g for g in doc["groups"] if g["kind"] == "scale_invariant"), None)
    series = model["effective_lr"]
    return {"effective_lr": [{"step": s, "value": v} for s, v in zip(doc["steps"], series)] if series else None,
            "effective_lr_last": series[-1] if series else None,
            "regime": invariant["regime"]["verdict"] if invariant else None}


def _curvature_columns(doc: dict | None) -> dict:
    """The sharpness λ_max per checkpoint against 2/η, where the run's result folder holds curvature.json."""
    if doc is None:
        return {"sharpness": None, "sharpness_last": None}
    gd = (doc.get("edge_of_stability") or {}).get("gd", {}).get("values") or [None] * len(doc["points"])
    series = [{"step": p["step"], "lambda_max": p["eigenvalues"][0] if p["eigenvalues"] else None, "two_over_lr": g}
              for p, g in zip(doc["points"], gd)]
    return {"sharpness": series, "sharpness_last": series[-1]["lambda_max"] if series else None}


def _differing(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r["hyperparameters"]})
    return [k for k in keys if len({repr(r["hyperparameters"].get(k, {}).get("value")) for r in rows}) > 1]


def _groups(rows: list[dict]) -> list[dict]:
    names = []
    for r in rows:
        if r["group"] is not None and r["group"] not in names:
            names.append(r["group"])
    out = []
    for name in names:
        members = [r for r in rows if r["group"] == name]
        stats = {}
        for key in SCALARS:
            values = np.array([r[key] for r in members if r[key] is not None], dtype=float)
            stats[key] = None if not values.size else {
                "mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else None,
                "min": float(values.min()), "max": float(values.max()), "n": int(values.size)}
        out.append({"name": name, "runs": [r["name"] for r in members], **stats})
    return out


def _scale(rows: list[dict]) -> list[dict] | None:
    """Runs of different sizes, smallest first, with the measures that compare across scale."""
    if len({r["n_params"] for r in rows}) < 2:
        return None
    keys = ("mds_displacement", "qkv_heterogeneity_mean", "qkv_heterogeneity_middle_third")
    return [{"name": r["name"], "n_params": r["n_params"], **{k: r[k] for k in keys}}
            for r in sorted(rows, key=lambda r: r["n_params"])]


def findings(rows: list[dict], mode: str = "displacement") -> list[str]:
    """Sentences computed from these runs' numbers only: the ω ordering (in `mode`) of the groups (or
    runs), whether the groups are apart beyond their seeds' spread, and from which checkpoint the
    ordering holds to the end."""
    key = f"mds_{mode}"
    units = _units(rows)
    if len(units) < 2:
        return []
    if any(r[key] is None for members in units.values() for r in members):
        return [f"ω ({mode}) is undefined for some runs: no ordering."]
    means = {name: float(np.mean([r[key] for r in members])) for name, members in units.items()}
    order = sorted(means, key=means.get)
    said = [f"ω ({mode}), lowest (most exploration) to highest: "
            + " < ".join(f"{name} {means[name]:.4f}" for name in order) + "."]
    if any(len(units[n]) > 1 for n in order):
        widest = max(max(r[key] for r in units[n]) - min(r[key] for r in units[n]) for n in order)
        apart = all(means[b] - means[a] > widest for a, b in zip(order, order[1:]))
        said.append(f"The seeds of each group spread ω ({mode}) by at most {widest:.4f}; " + (
            "every neighbouring pair of groups is further apart than that." if apart
            else "some neighbouring groups are closer than that, so their order is not settled by these seeds."))
    since = _ordering_since(units, order, mode)
    if since is not None:
        said.append(f"This ordering of ω ({mode}) holds, beyond the seeds' spread, at every checkpoint from step "
                    f"{since} on (ω of the checkpoints up to each step).")
    return said


def _units(rows: list[dict]) -> dict[str, list[dict]]:
    units: dict[str, list[dict]] = {}
    for r in rows:
        units.setdefault(r["group"] if r["group"] is not None else r["name"], []).append(r)
    return units


def _ordering_since(units: dict[str, list[dict]], order: list[str], mode: str) -> int | None:
    """The first step from which the groups' mean ω-so-far curves keep the final ordering, each
    neighbouring pair further apart than the widest spread of a group's seeds at that step — when
    every run has the same steps."""
    curves = {name: [r["mds_curve"][mode] for r in members] for name, members in units.items()}
    steps = [p["step"] for p in next(iter(curves.values()))[0]]
    if any([p["step"] for p in c] != steps for cs in curves.values() for c in cs):
        return None
    since = None
    for k in range(len(steps) - 1, -1, -1):
        values = [[c[k]["mds"] for c in curves[name]] for name in order]
        if any(v is None for vs in values for v in vs):
            break
        means = [float(np.mean(vs)) for vs in values]
        spread = max(max(vs) - min(vs) for vs in values)  # 0 with one run per group
        if all(b - a > spread for a, b in zip(means, means[1:])):
            since = steps[k]
        else:
            break
    return since
