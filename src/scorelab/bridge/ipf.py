r"""Diffusion Schrödinger Bridge: iterative proportional fitting by mean matching (De Bortoli et al., NeurIPS 2021,
Alg. 1; sources/002, "Iterative Mean-Matching Proportional Fitting").

IPF alternates half-bridges pi^{2n+1} (fix the time-N marginal; the backward process q^n) and pi^{2n+2} (fix the
time-0 marginal; the forward process p^{n+1}), starting from the reference pi^0 = p.  With Gaussian transitions
q_{k|k+1} = N(B_k(x_{k+1}), v_k I) and p_{k+1|k} = N(F_k(x_k), v_k I) (v_k = 2 gamma_{k+1}) each half-step is a
regression:

    B^n  = argmin E_{p^n}  |B(X_{k+1}) - (X_{k+1} + F^n_k(X_k) - F^n_k(X_{k+1}))|^2,
    F^{n+1} = argmin E_{q^n} |F(X_k) - (X_k + B^n_k(X_{k+1}) - B^n_k(X_k))|^2.

Iteration 1 uses the reference's forward mean F^0_k(x) = a_k x, so B^1 is the reference's time reversal (a plain
score-based model: B(x) = x + v_k grad log p_{k+1}(x) + O(v_k^2) for the Brownian reference).

===========  ======================================================================================================
``n``        IPF iteration (1-based): fit B^n, then F^{n+1}
``k``        step 0..N-1 of the transition k <-> k+1 (B(k, .) acts on x_{k+1}, F(k, .) on x_k)
``traj``     ``[M, N+1, d]`` cached trajectories (``FitConfig.cache_size`` of them)
===========  ======================================================================================================
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .chains import (
    BridgeProblem,
    BridgeResult,
    FitConfig,
    MeanFn,
    RegressionData,
    flatten_steps,
    run_iterations,
    simulate_backward,
    simulate_forward,
)


def _apply(fn: MeanFn, x: torch.Tensor) -> torch.Tensor:
    """``fn`` on per-step states ``[M, N, d]`` with step k for slot k -> ``[M, N, d]``."""
    M, N, d = x.shape
    k = torch.arange(N, device=x.device).repeat(M)
    return fn(k, x.reshape(M * N, d)).reshape(M, N, d)


@torch.no_grad()
def backward_mean_matching(F: MeanFn, traj: torch.Tensor) -> RegressionData:
    """Rows for B from forward trajectories ``[M, N+1, d]``: input X_{k+1}, target X_{k+1} + F_k(X_k) - F_k(X_{k+1})
    (DSB eq. 12)."""
    x_k, x_k1 = traj[:, :-1], traj[:, 1:]
    return flatten_steps(x_k1, x_k1 + _apply(F, x_k) - _apply(F, x_k1))


@torch.no_grad()
def forward_mean_matching(B: MeanFn, traj: torch.Tensor) -> RegressionData:
    """Rows for F from backward trajectories ``[M, N+1, d]``: input X_k, target X_k + B_k(X_{k+1}) - B_k(X_k)
    (DSB eq. 13)."""
    x_k, x_k1 = traj[:, :-1], traj[:, 1:]
    return flatten_steps(x_k, x_k + _apply(B, x_k1) - _apply(B, x_k))


def _dsb_half_steps(problem: BridgeProblem, M: int) -> Callable:
    ref = problem.reference

    def half_steps(n: int, F_ema: nn.Module, B_ema: nn.Module, g: torch.Generator):
        F = ref.forward_mean if n == 1 else F_ema  # Alg. 1: the first iteration runs the reference

        def cache_B():
            return backward_mean_matching(F, simulate_forward(F, problem.source(M, g), ref, g))

        def cache_F():
            return forward_mean_matching(B_ema, simulate_backward(B_ema, problem.target(M, g), ref, g))
        return cache_B, cache_F
    return half_steps


def dsb(problem: BridgeProblem, F_net: nn.Module, B_net: nn.Module, iterations: int, fit: FitConfig = FitConfig(),
        seed: int = 0, callback: Callable[[int, nn.Module, nn.Module], dict] | None = None,
        progress: bool = True) -> BridgeResult:
    """``iterations`` IPF iterations of DSB (each: B^n on cached forward trajectories, then F^{n+1} on cached
    backward trajectories), nets warm-started across iterations, EMA copies used for sampling.  ``callback(n, F, B)``
    may return metrics for the iteration's history record (measured outside the timed CPU seconds)."""
    return run_iterations(problem, F_net, B_net, iterations, _dsb_half_steps(problem, fit.cache_size), fit, seed,
                          callback, progress, "dsb")

