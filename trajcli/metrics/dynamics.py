"""Dynamics of weights on a sphere: norms, angular steps, effective learning rate, and a heuristic
verdict on the regime of scale-invariant weights — pure numpy functions of a basis Gram and the
checkpoints' steps (definitions: docs in the README, "dynamics")."""

from __future__ import annotations

import numpy as np

from trajcli.metrics import trajectory as tm

# The regime heuristic, over the later half of the intervals (see regime()).
DIVERGENCE_ANGLE_DEG = 60.0  # median step angle at or above this: a random walk on the sphere
CONVERGENCE_FACTOR = 0.5  # the angle per step shrinks by at least this factor across the window
MIN_INTERVALS = 3
LOSS_PLATEAU_FACTOR = 0.95  # the training loss falling below this factor across the window: no equilibrium yet


def regime_window(n_intervals: int) -> int:
    """The first interval of the window the verdict reads: the later half (at least MIN_INTERVALS)."""
    return n_intervals // 2 if n_intervals >= 2 * MIN_INTERVALS else max(0, n_intervals - MIN_INTERVALS)


def group_dynamics(basis: np.ndarray, steps: list[int], bad: set[int] = frozenset(),
                   lr: list[float | None] | None = None, scale_invariant: bool = False,
                   loss_change: float | None = None, n_params: int | None = None) -> dict:
    """Per checkpoint: norm, distance to the first, effective learning rate lr/‖w‖²; per interval
    k → k+1: the angle moved, Δsteps, angle/Δsteps, angle/√Δsteps and the effective step η̃·Δsteps.
    A regime verdict only for a `scale_invariant` group (the theory covers nothing else)."""
    raw = tm.mode_vectors(basis, "raw", bad_ckpts=bad)
    cos = tm.cosine_matrix(raw)
    norm2 = np.diagonal(raw.gram).copy()
    norm2[raw.bad] = np.nan
    norms = np.sqrt(np.clip(norm2, 0.0, None))
    disp = tm.mode_vectors(basis, "displacement", 0, bad, keep_reference=True)
    dist = np.sqrt(np.clip(np.diagonal(disp.gram), 0.0, None))
    dist[disp.zero] = 0.0
    dist[disp.bad] = np.nan
    n = len(steps)
    angle = np.asarray(tm.degrees(np.diagonal(cos, 1)), dtype=float)  # cos[k, k + 1], k < n − 1
    dsteps = np.array([steps[k + 1] - steps[k] for k in range(n - 1)], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        per_step = np.where(dsteps > 0, angle / dsteps, np.nan)
        per_sqrt = np.where(dsteps > 0, angle / np.sqrt(dsteps), np.nan)
        eff_lr = np.array([np.nan if lr is None or lr[k] is None else lr[k] / norm2[k] for k in range(n)])
    eff_step = eff_lr[:-1] * dsteps
    return {
        "norm": tm.finite_or_none(norms),
        "distance_to_first": tm.finite_or_none(dist),
        "effective_lr": tm.finite_or_none(eff_lr) if lr is not None else None,
        "angle_deg": tm.finite_or_none(angle),
        "delta_steps": [int(d) for d in dsteps],
        "angle_per_step_deg": tm.finite_or_none(per_step),
        "angle_per_sqrt_step_deg": tm.finite_or_none(per_sqrt),
        "effective_step": tm.finite_or_none(eff_step) if lr is not None else None,
        "regime": regime(angle, eff_step if lr is not None else None, norms, steps, scale_invariant, loss_change,
                         n_params),
    }


def regime(angle: np.ndarray, eff_step: np.ndarray | None, norms: np.ndarray, steps: list[int],
           scale_invariant: bool = True, loss_change: float | None = None, n_params: int | None = None) -> dict:
    """A heuristic verdict over the later half of the intervals (at least MIN_INTERVALS of them), for
    scale-invariant weights only; the evidence comes with it, and a reason with every non-verdict:

    - divergence: the median step angle is ≥ 60° (steps near 90° are a random walk on the sphere) at
      a checkpoint spacing that can show it (see below; else undetermined);
    - convergence: the angle per unit of *effective* step (η/‖w‖² × Δsteps, the step the run actually
      took on the sphere) shrinks by a factor ≥ 2 across the window — a decaying learning rate at a
      constant effective rate shrinks the raw angles, not this;
    - equilibrium: neither — the angle per effective step settles at a non-zero level;
    - undetermined: too few intervals, undefined angles, no learning rate (a decaying schedule and
      convergence cannot then be told apart), or — where the run logged its training loss
      (`loss_change`: its factor across the window) — a loss still falling below LOSS_PLATEAU_FACTOR
      where the steps would read as equilibrium (it has not settled yet);
    - no verdict (None) for groups that are not scale-invariant: their numbers are shown unlabelled.
    """
    n = len(angle)
    start = regime_window(n)
    window_angle = angle[start:]
    evidence = {"window_steps": [steps[start], steps[-1]] if n else None, "n_intervals": int(len(window_angle)),
                "median_angle_deg": None, "rate_change_factor": None, "norm_change_factor": None,
                "loss_change_factor": loss_change}
    if len(window_angle) and np.isfinite(window_angle).all():
        evidence["median_angle_deg"] = float(np.median(window_angle))
    if norms[start] > 0 and np.isfinite(norms[[start, -1]]).all():
        evidence["norm_change_factor"] = float(norms[-1] / norms[start])
    enough = len(window_angle) >= MIN_INTERVALS and evidence["median_angle_deg"] is not None and (window_angle > 0).all()
    window_eff = eff_step[start:] if eff_step is not None else None
    if enough and window_eff is not None and np.isfinite(window_eff).all() and (window_eff > 0).all():
        rate = window_angle / window_eff
        position = np.linspace(0.0, 1.0, len(rate))
        # how the angle per effective step changes across the window (a line fitted to its logarithm)
        evidence["rate_change_factor"] = float(np.exp(np.polyfit(position, np.log(rate), 1)[0]))
    if not scale_invariant:
        return {"verdict": None, "reason": "not classified: the regimes describe scale-invariant weights "
                "(a normalization right after them), and this group is not", **evidence}
    if not enough:
        return {"verdict": "undetermined", "reason": f"fewer than {MIN_INTERVALS} intervals with defined, non-zero "
                "angles in the later half", **evidence}
    if evidence["median_angle_deg"] >= DIVERGENCE_ANGLE_DEG:
        # Between checkpoints Δ steps apart, small random steps (an equilibrium) also add up to a large
        # angle: cos θ_Δ = cos(δ)^Δ for steps of angle δ in random directions. Steps of ≥ 60° show only
        # as cos θ_Δ ≤ 0.5^Δ, and only while 0.5^Δ stands above the noise of a cosine in this many
        # dimensions (3/√n); with sparser checkpoints the two cannot be told apart.
        dsteps = [steps[k + 1] - steps[k] for k in range(start, len(steps) - 1)]
        resolvable = n_params is not None and all(0.5 ** d > 3 / np.sqrt(n_params) for d in dsteps)
        if not resolvable:
            return {"verdict": "undetermined", "reason": f"median angle between checkpoints ≥ {DIVERGENCE_ANGLE_DEG:g}°, "
                    f"but checkpoints up to {max(dsteps)} steps apart cannot tell a random walk (divergence) from "
                    "many small steps adding up (equilibrium); closer checkpoints can", **evidence}
        return {"verdict": "divergence", "reason": f"median step angle ≥ {DIVERGENCE_ANGLE_DEG:g}° at a spacing "
                "that resolves it", **evidence}
    factor = evidence["rate_change_factor"]
    if factor is None:
        return {"verdict": "undetermined", "reason": "no learning rate: without the effective step a decaying "
                "schedule cannot be told from convergence (--lr, --lr-file)", **evidence}
    if factor <= CONVERGENCE_FACTOR:
        return {"verdict": "convergence", "reason": f"angle per effective step shrank by {factor:.3g} "
                f"(≤ {CONVERGENCE_FACTOR:g})", **evidence}
    if loss_change is not None and loss_change < LOSS_PLATEAU_FACTOR:
        return {"verdict": "undetermined", "reason": f"the steps have settled, but the training loss still falls "
                f"(×{loss_change:.3g} across the window): not an equilibrium yet", **evidence}
    return {"verdict": "equilibrium", "reason": f"angle per effective step changed by {factor:.3g} "
            f"(> {CONVERGENCE_FACTOR:g}), median angle below {DIVERGENCE_ANGLE_DEG:g}°"
            + ("" if loss_change is None else f", training loss ×{loss_change:.3g} across the window"), **evidence}


def learning_rate_at(steps: list[int], points: list[tuple[int, float]]) -> list[float | None]:
    """The learning rate at each step from (step, lr) points: linear between points, the nearest
    point's value outside them; None without points."""
    if not points:
        return [None] * len(steps)
    points = sorted(points)
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    return [float(np.interp(s, xs, ys)) for s in steps]
