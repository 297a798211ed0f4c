"""Dynamics of weights on a sphere: norms, angular steps, effective learning rate, and a heuristic
verdict on the regime of scale-invariant weights — pure numpy functions of a basis Gram and the
checkpoints' steps (definitions: docs/measures.md, "Dynamics")."""

from __future__ import annotations

import math

import numpy as np

from trajcli.metrics import trajectory as tm

# The regime rule, over the later half of the intervals (see regime()).
DIVERGENCE_ANGLE_DEG = 60.0  # steps of at least this angle, one optimizer step apart: the run jumps across the sphere
CONVERGENCE_FACTOR = 0.5  # the angle per effective step shrinks by at least this factor across the window
SETTLED_FACTOR = 0.8  # a decline of the angle per effective step smaller than this still reads as settled
LOSS_PLATEAU_FACTOR = 0.95  # the training loss falling below this factor across the window: no equilibrium yet
NOISE_SIGMAS = 3.0  # a cosine counts as non-zero above NOISE_SIGMAS / sqrt(n) (the spread of random ones)
MIN_INTERVALS = 3


def regime_window(n_intervals: int) -> int:
    """The first interval of the window the verdict reads: the later half (at least MIN_INTERVALS)."""
    return n_intervals // 2 if n_intervals >= 2 * MIN_INTERVALS else max(0, n_intervals - MIN_INTERVALS)


def trend(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None] | None:
    """How positive values `y` change across the span of `x`: a line fitted to log y, as the factor
    exp(slope · span) and its upper bound at two standard errors (None with fewer than 3 points)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or not (np.isfinite(y).all() and (y > 0).all()) or np.ptp(x) == 0:
        return None
    span = float(np.ptp(x))
    slope, intercept = np.polyfit(x, np.log(y), 1)
    if len(x) < 3:
        return float(np.exp(slope * span)), None
    resid = np.log(y) - (slope * x + intercept)
    se = math.sqrt(float(resid @ resid) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
    return float(np.exp(slope * span)), float(np.exp((slope + 2 * se) * span))


def group_dynamics(basis: np.ndarray, steps: list[int], bad: set[int] = frozenset(),
                   lr: list[float | None] | None = None, scale_invariant: bool = False,
                   loss: tuple[float, float | None] | None = None, n_params: int | None = None) -> dict:
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
        "regime": regime(angle, eff_step if lr is not None else None, norms, steps, cos, scale_invariant, loss,
                         n_params),
    }


def regime(angle: np.ndarray, eff_step: np.ndarray | None, norms: np.ndarray, steps: list[int],
           cos: np.ndarray, scale_invariant: bool = True, loss: tuple[float, float | None] | None = None,
           n_params: int | None = None) -> dict:
    """A verdict over the later half of the intervals (at least MIN_INTERVALS of them), for
    scale-invariant weights only, with its evidence, and a reason with every non-verdict. Each test
    reads quantities that do not depend on how far apart the checkpoints were saved:

    - divergence: the window's checkpoints are mutually uncorrelated — the median |cos| between them
      within the noise of random directions (NOISE_SIGMAS/√n): a random walk over the whole sphere,
      nothing learnt holds the weights' direction; or, with checkpoints one optimizer step apart, the
      median step turns the weights by ≥ DIVERGENCE_ANGLE_DEG. Between checkpoints further apart a
      large angle is also what a wide equilibrium or many small steps give, so it is undetermined;
    - convergence: the angle per unit of *effective* step (η/‖w‖² × Δsteps, the step the run actually
      took on the sphere) shrinks by a factor ≥ 1/CONVERGENCE_FACTOR across the window — a decaying
      learning rate at a constant effective rate shrinks the raw angles, not this;
    - equilibrium: the angle per effective step has settled, the training loss (where logged: `loss`,
      its factor across the window and that factor's upper bound) no longer falls, and the weights stay
      near one direction: the cosine between the window's first and last checkpoints stands above
      what a random walk with the measured steps would keep (the product of the steps' cosines);
    - undetermined otherwise, saying which: too few intervals or parameters, weights that do not move,
      no learning rate, steps still slowing, a loss still falling, a steady drift in one direction, or
      a window too short to tell an equilibrium from a random walk that has not yet spread out;
    - no verdict (None) for groups that are not scale-invariant: their numbers are shown unlabelled.
    """
    n = len(angle)
    start = regime_window(n)
    window_angle = angle[start:]
    idx = np.arange(start, n + 1)
    floor = NOISE_SIGMAS / math.sqrt(n_params) if n_params else None
    evidence = {"window_steps": [steps[start], steps[-1]] if n else None, "n_intervals": int(len(window_angle)),
                "median_angle_deg": None, "median_abs_cos": None, "noise_floor": floor, "cos_first_last": None,
                "random_walk_cos": None, "rate_change_factor": None, "rate_change_upper": None,
                "norm_change_factor": None, "loss_change_factor": loss[0] if loss else None,
                "loss_change_upper": loss[1] if loss else None}
    defined = len(window_angle) >= MIN_INTERVALS and np.isfinite(window_angle).all()
    if defined:
        window_cos = cos[np.ix_(idx, idx)]
        evidence["median_angle_deg"] = float(np.median(window_angle))
        evidence["median_abs_cos"] = float(np.median(np.abs(window_cos[np.triu_indices(len(idx), 1)])))
        evidence["cos_first_last"] = float(window_cos[0, -1])
        evidence["random_walk_cos"] = float(np.prod(np.diagonal(window_cos, 1)))
    if norms[start] > 0 and np.isfinite(norms[[start, -1]]).all():
        evidence["norm_change_factor"] = float(norms[-1] / norms[start])
    window_eff = eff_step[start:] if eff_step is not None else None
    if defined and (window_angle > 0).all() and window_eff is not None and np.isfinite(window_eff).all() \
            and (window_eff > 0).all():
        middle = np.array([(steps[k] + steps[k + 1]) / 2 for k in range(start, n)], dtype=float)
        evidence["rate_change_factor"], evidence["rate_change_upper"] = trend(middle, window_angle / window_eff)

    def verdict(name, reason):
        return {"verdict": name, "reason": reason, **evidence}

    if not scale_invariant:
        return verdict(None, "not classified: the regimes describe scale-invariant weights (a normalization right "
                       "after them), and this group is not")
    if not defined:
        return verdict("undetermined", f"fewer than {MIN_INTERVALS} intervals with defined angles in the later half")
    if not (window_angle > 0).all():
        return verdict("undetermined", "the weights did not move between some checkpoints of the window (frozen, "
                       "or steps below the saved precision)")
    if floor is None or floor >= 0.5:
        return verdict("undetermined", f"too few parameters ({n_params}) for learnt and random directions to differ "
                       "beyond noise")
    if evidence["median_abs_cos"] <= floor:
        return verdict("divergence", f"the window's checkpoints are mutually uncorrelated (median |cos| "
                       f"{evidence['median_abs_cos']:.3g} ≤ {NOISE_SIGMAS:g}/√n = {floor:.3g}): a random walk over "
                       "the sphere")
    if evidence["median_angle_deg"] >= DIVERGENCE_ANGLE_DEG:
        if all(steps[k + 1] - steps[k] == 1 for k in range(start, n)):
            return verdict("divergence", f"median angle of one optimizer step ≥ {DIVERGENCE_ANGLE_DEG:g}°: the run "
                           "jumps across the sphere")
        return verdict("undetermined", f"median angle between checkpoints ≥ {DIVERGENCE_ANGLE_DEG:g}°, which big "
                       "single steps (divergence), a wide equilibrium and many small steps all give at this spacing; "
                       "checkpoints one optimizer step apart can tell")
    factor, upper = evidence["rate_change_factor"], evidence["rate_change_upper"]
    if factor is None:
        return verdict("undetermined", "no learning rate: without the effective step a decaying schedule cannot be "
                       "told from convergence (--lr, --lr-file)")
    if factor <= CONVERGENCE_FACTOR:
        return verdict("convergence", f"angle per effective step shrank by {factor:.3g} (≤ {CONVERGENCE_FACTOR:g})")
    if factor < SETTLED_FACTOR and (upper is None or upper < 1):
        return verdict("undetermined", f"the angle per effective step still shrinks (×{factor:.3g} across the "
                       "window): neither converged nor settled yet")
    if loss is not None and loss[0] < LOSS_PLATEAU_FACTOR and (loss[1] is None or loss[1] < 1):
        return verdict("undetermined", f"the steps have settled, but the training loss still falls (×{loss[0]:.3g} "
                       "across the window): not an equilibrium yet")
    far, walk = evidence["cos_first_last"], evidence["random_walk_cos"]
    # the spread of a cosine c between directions with random parts in n dimensions: ~√(1 − c²)/√n
    tol = floor * math.sqrt(max(1.0 - walk ** 2, 1.0 - far ** 2, 0.0))
    if far > walk + tol:
        return verdict("equilibrium", f"angle per effective step settled (×{factor:.3g}), and the weights stay near "
                       f"one direction (cos first–last {far:.3g} > random walk {walk:.3g})"
                       + ("" if loss is None else f"; training loss ×{loss[0]:.3g} across the window"))
    if far < walk - tol:
        return verdict("undetermined", f"the weights drift in one direction (cos first–last {far:.3g} below a "
                       f"random walk's {walk:.3g}): not settled")
    return verdict("undetermined", f"cannot tell an equilibrium from a random walk that has not yet spread out over "
                   f"this window (cos first–last {far:.3g} ≈ random walk {walk:.3g}); a longer window can")


def learning_rate_at(steps: list[int], points: list[tuple[int, float]]) -> list[float | None]:
    """The learning rate at each step from (step, lr) points: linear between points, the nearest
    point's value outside them; None without points."""
    if not points:
        return [None] * len(steps)
    points = sorted(points)
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    return [float(np.interp(s, xs, ys)) for s in steps]
