"""Loss, gradient and Hessian-vector products of one model on one fixed batch, and the probes built
on them: Lanczos for the top Hessian eigenvalues, Hutchinson for its trace, the gradient "glass" on
a grid of step sizes, and the curvature along a direction.

Parameters travel as one flat vector (in the order of `Weights.params`) on the model's device, in
the model's dtype. Random directions are drawn on the CPU from a seeded generator and then moved,
so that the same seed gives the same directions on every device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trajcli.errors import DataError


class Objective:
    """L(θ) = loss_fn(module, batch) as a function of the flat parameter vector θ."""

    def __init__(self, module: nn.Module, loss_fn: Callable, batch, params: list[nn.Parameter], where: str):
        self.module, self.loss_fn, self.batch, self.params, self.where = module, loss_fn, batch, params, where
        self.sizes = [p.numel() for p in params]
        self.n = sum(self.sizes)

    def _evaluate(self) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no double backward
                loss = self.loss_fn(self.module, self.batch)
        except Exception as exc:
            raise DataError(f"{self.where}: the loss failed on the batch: {type(exc).__name__}: {exc}",
                            "check that the data fits the model (token ids, shapes); --debug shows the traceback") from exc
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise DataError(f"{self.where}: the loss is {type(loss).__name__}, not a scalar tensor",
                            "the loss function must return one number as a tensor")
        return loss.reshape(())

    def flat(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflat(self, vector: torch.Tensor) -> list[torch.Tensor]:
        return [v.view_as(p) for v, p in zip(vector.split(self.sizes), self.params)]

    @torch.no_grad()
    def set(self, theta: torch.Tensor) -> None:
        for p, v in zip(self.params, self.unflat(theta)):
            p.copy_(v)

    @torch.no_grad()
    def loss(self) -> float:
        return float(self._evaluate())

    def gradient(self) -> tuple[float, torch.Tensor]:
        """(L(θ), ∇L(θ)) at the current parameters."""
        loss = self._evaluate()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return float(loss.detach()), self.flat(
            [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)])

    @contextlib.contextmanager
    def hessian(self) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """v -> Hv at the current parameters; the gradient's graph is built once and kept meanwhile."""
        loss = self._evaluate()
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        used = [g is not None for g in grads]
        live = [g for g in grads if g is not None]
        live_params = [p for p, u in zip(self.params, used) if u]

        def hvp(v: torch.Tensor) -> torch.Tensor:
            parts = [x for x, u in zip(self.unflat(v), used) if u]
            hv = torch.autograd.grad(live, live_params, grad_outputs=parts, retain_graph=True, allow_unused=True)
            it = iter(hv)
            out = []
            for p, u in zip(self.params, used):
                h = next(it) if u else None
                out.append(torch.zeros_like(p) if h is None else h)
            return self.flat(out).detach()

        try:
            yield hvp
        finally:
            live.clear()  # the gradient's graph goes with it
            del grads, loss


def rademacher(n: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """±1 entries, drawn on the CPU (device-independent), placed like `like`."""
    bits = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8)
    return (bits.to(like.dtype) * 2 - 1).to(like.device)


# ---- top eigenvalues ------------------------------------------------------------------------------

def lanczos(hvp: Callable, n: int, start: torch.Tensor, top_k: int, max_iter: int, tol: float) -> dict:
    """The `top_k` largest (algebraic) Hessian eigenvalues by Lanczos with full reorthogonalization.

    A Ritz value θ_i of the tridiagonal T_m has residual ‖Hy_i − θ_i y_i‖ = β_m |s_{m,i}| (s_i its
    eigenvector of T_m); the iteration stops when the top_k residuals are all ≤ tol · max|θ|, when
    the Krylov space is exhausted (β_m ≈ 0: the values are exact), or after max_iter products.
    Memory: max_iter vectors of the model's size."""
    m_max = min(max_iter, n)
    basis = torch.empty((m_max, n), dtype=start.dtype, device=start.device)  # (m, n_params)
    v = start / torch.linalg.vector_norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    ritz = residuals = np.zeros(0)
    converged, exhausted = False, False
    for j in range(m_max):
        basis[j] = v
        w = hvp(v)
        alpha = float(torch.dot(w, v))
        w = w - alpha * v - (betas[-1] * basis[j - 1] if j else 0.0)
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(torch.linalg.vector_norm(w))
        alphas.append(alpha)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        values, vectors = np.linalg.eigh(t)  # ascending
        k = min(top_k, j + 1)
        ritz = values[::-1][:k]
        residuals = beta * np.abs(vectors[-1, ::-1][:k])
        scale = max(float(np.max(np.abs(values))), np.finfo(float).tiny)
        exhausted = beta <= 1e-12 * scale or j + 1 == n
        converged = exhausted or (j + 1 >= top_k and bool(np.all(residuals <= tol * scale)))
        if converged:
            break
        betas.append(beta)
        v = w / beta
    return {"eigenvalues": [float(x) for x in ritz], "residuals": [float(x) for x in residuals],
            "iterations": len(alphas), "converged": converged, "exhausted": exhausted}


# ---- trace ----------------------------------------------------------------------------------------

def hessian_trace(hvp: Callable, n: int, samples: int, gen: torch.Generator, like: torch.Tensor,
                  exact_max: int = 0) -> dict:
    """tr H: exact from the n unit vectors when n ≤ max(samples, exact_max) (n Hessian-vector
    products), else Hutchinson's mean of zᵀHz over Rademacher z, with its standard error."""
    if n <= max(samples, exact_max):
        total = 0.0
        for i in range(n):
            e = torch.zeros_like(like)
            e[i] = 1.0
            total += float(hvp(e)[i])
        return {"value": total, "stderr": 0.0, "method": "exact", "samples": n}
    values = []
    for _ in range(samples):
        z = rademacher(n, gen, like)
        values.append(float(torch.dot(z, hvp(z))))
    arr = np.array(values)
    stderr = float(arr.std(ddof=1) / np.sqrt(samples)) if samples > 1 else None
    return {"value": float(arr.mean()), "stderr": stderr, "method": "hutchinson", "samples": samples}


# ---- glass ----------------------------------------------------------------------------------------

@dataclass
class GlassSums:
    """Per group (rows: the whole model, then each group) and σ (columns): sums over the group's
    coordinates of E[d²] and of E|ĥ|, where
    d = (g⁺ + g⁻)/2 − g⁰ and ĥ = z ⊙ (g⁺ − g⁻)/(2σ), expectations as means over the samples (the
    absolute value taken per sample: E|ĥ|, not |E ĥ|, which would shrink as samples are added)."""

    d2: np.ndarray  # (n_groups, n_sigmas), mean over samples of Σ d²
    h_abs: np.ndarray  # (n_groups, n_sigmas), mean over samples of Σ |ĥ|
    samples: int
    d2_stderr: np.ndarray | None = None  # standard errors of those means over the samples
    h_abs_stderr: np.ndarray | None = None
    # (n_sigmas,): the expected loss curvature E[L(θ+σz) + L(θ−σz) − 2L(θ)]/σ² and its standard error
    loss_curvature: np.ndarray | None = None
    loss_curvature_stderr: np.ndarray | None = None


def _mean_and_stderr(per_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the first axis, and its standard error (NaN from a single sample: unknown)."""
    n = per_sample.shape[0]
    mean = per_sample.mean(axis=0)
    if n < 2:
        return mean, np.full(mean.shape, np.nan)
    return mean, per_sample.std(axis=0, ddof=1) / np.sqrt(n)


def glass(objective: Objective, theta: torch.Tensor, g0: torch.Tensor, sigmas: list[float], samples: int,
          group_of: torch.Tensor, n_groups: int, gen: torch.Generator, loss0: float | None = None) -> GlassSums:
    """Gradients (and losses) at θ ± σz on the same batch, for Rademacher z (the same z for every σ of
    a sample). `group_of` gives each coordinate's group index; `loss0` is L(θ), for the expected loss
    curvature. Every quantity is a mean over the samples with its standard error. θ is restored
    exactly afterwards."""
    d2 = np.zeros((samples, n_groups, len(sigmas)))
    h_abs = np.zeros((samples, n_groups, len(sigmas)))
    curvature = np.zeros((samples, len(sigmas)))
    try:
        for s in range(samples):
            z = rademacher(theta.numel(), gen, theta)
            for j, sigma in enumerate(sigmas):
                objective.set(theta + sigma * z)
                loss_plus, g_plus = objective.gradient()
                objective.set(theta - sigma * z)
                loss_minus, g_minus = objective.gradient()
                d = (g_plus + g_minus) / 2 - g0
                d2[s, :, j] = _group_sums(d * d, group_of, n_groups)
                h_abs[s, :, j] = _group_sums((z * (g_plus - g_minus) / (2 * sigma)).abs(), group_of, n_groups)
                if loss0 is not None:
                    curvature[s, j] = (loss_plus + loss_minus - 2 * loss0) / sigma ** 2
    finally:
        objective.set(theta)
    # the whole model first: its per-sample sums, so that its standard errors are its own
    d2 = np.concatenate([d2.sum(axis=1, keepdims=True), d2], axis=1)
    h_abs = np.concatenate([h_abs.sum(axis=1, keepdims=True), h_abs], axis=1)
    (d2_mean, d2_se), (h_mean, h_se) = _mean_and_stderr(d2), _mean_and_stderr(h_abs)
    c_mean, c_se = _mean_and_stderr(curvature) if loss0 is not None else (None, None)
    return GlassSums(d2_mean, h_mean, samples, d2_se, h_se, c_mean, c_se)


def _group_sums(values: torch.Tensor, group_of: torch.Tensor, n_groups: int) -> np.ndarray:
    sums = torch.zeros(n_groups, dtype=torch.float64, device=values.device)
    sums.index_add_(0, group_of, values.to(torch.float64))
    return sums.cpu().numpy()


# ---- along a direction ----------------------------------------------------------------------------

def along_direction(objective: Objective, hvp: Callable, theta: torch.Tensor, loss0: float, delta: torch.Tensor,
                    fractions: list[float]) -> dict | None:
    """Curvature along u = δ/‖δ‖: uᵀHu, and the finite difference (L(θ+hu) − 2L(θ) + L(θ−hu))/h² at
    h = f‖δ‖ for each fraction f. None for a zero step. θ is restored exactly afterwards."""
    step = float(torch.linalg.vector_norm(delta))
    if step == 0.0:
        return None
    u = delta / step
    u_h_u = float(torch.dot(u, hvp(u)))
    finite = []
    try:
        for f in fractions:
            h = f * step
            objective.set(theta + h * u)
            plus = objective.loss()
            objective.set(theta - h * u)
            minus = objective.loss()
            finite.append({"fraction": f, "h": h, "curvature": (plus - 2 * loss0 + minus) / (h * h),
                           "loss_plus": plus, "loss_minus": minus})
    finally:
        objective.set(theta)
    return {"step_norm": step, "u_h_u": u_h_u, "finite_difference": finite}
