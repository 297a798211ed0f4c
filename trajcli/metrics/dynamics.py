"""Dynamics on the sphere (METRICS.md): norms, angular steps, effective learning rate, and a
heuristic verdict on the regime — pure numpy functions of a basis Gram and the checkpoints' steps."""

from __future__ import annotations

import numpy as np

from trajcli.metrics import trajectory as tm

# The regime heuristic, over the later half of the intervals (see regime()).
DIVERGENCE_ANGLE_DEG = 60.0  # median step angle at or above this: a random walk on the sphere
CONVERGENCE_FACTOR = 0.5  # the angle per step shrinks by at least this factor across the window
MIN_INTERVALS = 3


def group_dynamics(basis: np.ndarray, steps: list[int], bad: set[int] = frozenset(),
                   lr: list[float | None] | None = None) -> dict:
    """Per checkpoint: norm, distance to the first, effective learning rate lr/‖w‖²; per interval
    k → k+1: the angle moved, Δsteps, angle/Δsteps, angle/√Δsteps and the effective step η̃·Δsteps."""
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
        "regime": regime(angle, dsteps, norms, steps),
    }


def regime(angle: np.ndarray, dsteps: np.ndarray, norms: np.ndarray, steps: list[int]) -> dict:
    """A heuristic verdict over the later half of the intervals (at least MIN_INTERVALS of them):

    - divergence: the median step angle is ≥ 60° (steps near 90° are a random walk on the sphere);
    - convergence: the angle per training step shrinks by a factor ≥ 2 across the window (a straight
      line fitted to its logarithm against the position in the window);
    - equilibrium: neither — the angle per step settles at a non-zero level;
    - undetermined: too few intervals, or undefined angles.
    The evidence is returned with the verdict.
    """
    n = len(angle)
    start = n // 2 if n >= 2 * MIN_INTERVALS else max(0, n - MIN_INTERVALS)
    window_angle, window_steps = angle[start:], dsteps[start:]
    evidence = {"window_steps": [steps[start], steps[-1]] if n else None, "n_intervals": int(len(window_angle)),
                "median_angle_deg": None, "rate_change_factor": None, "norm_change_factor": None}
    ok = (len(window_angle) >= MIN_INTERVALS and np.isfinite(window_angle).all() and (window_steps > 0).all()
          and (window_angle > 0).all())
    if not ok:
        return {"verdict": "undetermined", **evidence}
    rate = window_angle / window_steps
    position = np.linspace(0.0, 1.0, len(rate))
    slope = np.polyfit(position, np.log(rate), 1)[0]
    factor = float(np.exp(slope))  # how much the angle per step changes across the window
    median = float(np.median(window_angle))
    norm_factor = float(norms[-1] / norms[start]) if norms[start] > 0 and np.isfinite(norms[[start, -1]]).all() else None
    evidence.update(median_angle_deg=median, rate_change_factor=factor, norm_change_factor=norm_factor)
    if median >= DIVERGENCE_ANGLE_DEG:
        verdict = "divergence"
    elif factor <= CONVERGENCE_FACTOR:
        verdict = "convergence"
    else:
        verdict = "equilibrium"
    return {"verdict": verdict, **evidence}


def learning_rate_at(steps: list[int], points: list[tuple[int, float]]) -> list[float | None]:
    """The learning rate at each step from (step, lr) points: linear between points, the nearest
    point's value outside them; None without points."""
    if not points:
        return [None] * len(steps)
    points = sorted(points)
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    return [float(np.interp(s, xs, ys)) for s in steps]
