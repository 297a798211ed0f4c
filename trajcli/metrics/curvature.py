"""Curvature summaries from the probes' sums: glass density, Hessian-diagonal magnitude, the exponent
of the mean squared gradient jump, and the edge-of-stability lines. Pure numpy."""

from __future__ import annotations

import numpy as np


def power_law_exponent(sigmas: list[float], values: np.ndarray) -> float | None:
    """p in values ∝ σ^p: the least-squares slope of log values on log σ (None when any value is ≤ 0
    or fewer than two σ)."""
    values = np.asarray(values, dtype=float)
    if len(sigmas) < 2 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        return None
    return float(np.polyfit(np.log(sigmas), np.log(values), 1)[0])


EXPONENT_SLACK = 0.5  # exponent units; a smooth loss gives 4 + O(σ²) everywhere, a kink onset drops it to ~1


def local_exponents(sigmas: list[float], values: np.ndarray, stderrs: np.ndarray | None) -> tuple[list, list, bool | None]:
    """The slope of log values on log σ between neighbouring σ, each with its error (propagated from
    the values' standard errors), and whether they agree within their errors (|a − b| ≤ 3·√(ea² + eb²)
    + EXPONENT_SLACK for every pair: the slack absorbs the higher-order terms of a smooth loss, far
    below the change of about 3 at a kink onset): a power law holds over the grid. None where a value
    is ≤ 0 or an error unknown."""
    slopes: list = []
    errors: list = []
    for i in range(len(sigmas) - 1):
        a, b = values[i], values[i + 1]
        if not (np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0):
            slopes.append(None)
            errors.append(None)
            continue
        span = np.log(sigmas[i + 1] / sigmas[i])
        slopes.append(float(np.log(b / a) / span))
        if stderrs is None or not (np.isfinite(stderrs[i]) and np.isfinite(stderrs[i + 1])):
            errors.append(None)
        else:
            errors.append(float(np.hypot(stderrs[i] / a, stderrs[i + 1] / b) / span))
    if any(v is None for v in slopes + errors) or len(slopes) < 2:
        return slopes, errors, None
    agree = all(abs(slopes[i] - slopes[j]) <= 3 * np.hypot(errors[i], errors[j]) + EXPONENT_SLACK
                for i in range(len(slopes)) for j in range(i + 1, len(slopes)))
    return slopes, errors, agree


def glass_groups(names: list[str], n_params: list[int], d2: np.ndarray, h_abs: np.ndarray, sigmas: list[float],
                 d2_stderr: np.ndarray | None = None, h_abs_stderr: np.ndarray | None = None) -> list[dict]:
    """Per group, at each σ (means over the group's coordinates, d = (g⁺ + g⁻)/2 − g⁰):
    mean_sq_jump E[d²]; glass_density 2E[d²]/σ; hessian_diag E|ĥ| with ĥ = z ⊙ (g⁺ − g⁻)/(2σ);
    glass_to_hessian = glass_density / hessian_diag, each with its Monte-Carlo standard error where
    the sample count allows; the exponent p of E[d²] ∝ σ^p (least squares over the grid), the local
    exponents between neighbouring σ with their errors, and whether one p describes the grid."""
    s = np.asarray(sigmas, dtype=float)
    out = []
    for i, name in enumerate(names):
        n = n_params[i]
        mean_sq = d2[i] / n
        density = 2 * mean_sq / s
        hess = h_abs[i] / n
        mean_sq_se = d2_stderr[i] / n if d2_stderr is not None else None
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(hess > 0, density / hess, np.nan)
        slopes, slope_errors, agree = local_exponents(sigmas, mean_sq, mean_sq_se)
        out.append({"name": name, "n_params": n, "mean_sq_jump": _floats(mean_sq), "glass_density": _floats(density),
                    "hessian_diag": _floats(hess), "glass_to_hessian": _floats(ratio),
                    "mean_sq_jump_stderr": _floats(mean_sq_se) if mean_sq_se is not None else None,
                    "glass_density_stderr": _floats(2 * mean_sq_se / s) if mean_sq_se is not None else None,
                    "hessian_diag_stderr": _floats(h_abs_stderr[i] / n) if h_abs_stderr is not None else None,
                    "exponent": power_law_exponent(sigmas, mean_sq),
                    "local_exponents": slopes, "local_exponent_errors": slope_errors, "exponent_holds": agree})
    return out


def finite_or_none(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _floats(values) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def edge_of_stability(lr: list[float | None], momentum: float | None) -> dict:
    """Stability thresholds on the sharpness for a learning rate η (each stated with what it applies to).

    gd: 2/η — gradient descent on a quadratic diverges along eigenvalues above it.
    momentum: (2 + 2β)/η — heavy-ball (Polyak) momentum β.
    adam_preconditioned: (2 + 2β₁)/((1 − β₁)η) — Adam with β₁ (Cohen et al., 2022); it bounds the
    sharpness of the *preconditioned* Hessian, which trajcli does not compute: for reference only."""
    def line(factor: float) -> list[float | None]:
        return [factor / x if x else None for x in lr]

    out = {"gd": {"applies_to": "gradient descent: sharpness of the Hessian", "formula": "2/lr", "values": line(2.0)}}
    if momentum is not None:
        out["momentum"] = {"applies_to": f"heavy-ball momentum {momentum:g}: sharpness of the Hessian",
                           "formula": "(2 + 2·momentum)/lr", "values": line(2 + 2 * momentum)}
        if momentum < 1:
            out["adam_preconditioned"] = {
                "applies_to": f"Adam with beta1 {momentum:g}: sharpness of the preconditioned Hessian "
                              "(not computed by trajcli; for reference)",
                "formula": "(2 + 2·beta1)/((1 − beta1)·lr)", "values": line((2 + 2 * momentum) / (1 - momentum))}
    return out
