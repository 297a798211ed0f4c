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


def glass_groups(names: list[str], n_params: list[int], d2: np.ndarray, h_abs: np.ndarray, sigmas: list[float]) -> list[dict]:
    """Per group, at each σ (means over the group's coordinates, d = (g⁺ + g⁻)/2 − g⁰):
    mean_sq_jump E[d²]; glass_density 2E[d²]/σ; hessian_diag E|ĥ| with ĥ = z ⊙ (g⁺ − g⁻)/(2σ);
    glass_to_hessian = glass_density / hessian_diag; and the exponent p of E[d²] ∝ σ^p."""
    s = np.asarray(sigmas, dtype=float)
    out = []
    for i, name in enumerate(names):
        n = n_params[i]
        mean_sq = d2[i] / n
        density = 2 * mean_sq / s
        hess = h_abs[i] / n
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(hess > 0, density / hess, np.nan)
        out.append({"name": name, "n_params": n, "mean_sq_jump": _floats(mean_sq), "glass_density": _floats(density),
                    "hessian_diag": _floats(hess), "glass_to_hessian": _floats(ratio),
                    "exponent": power_law_exponent(sigmas, mean_sq)})
    return out


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
