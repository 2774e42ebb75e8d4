r"""Diffusion Schrödinger Bridge Matching: iterative Markovian fitting (Shi, De Bortoli, Campbell & Doucet,
NeurIPS 2023, Alg. 1, in discrete time on the reference's steps).

IMF alternates a reciprocal projection (mix the reference bridge over the current coupling Pi(x_0, x_N)) and a
Markovian projection, fitted by bridge matching -- a regression on bridge samples, no simulation inside the loss:

    forward:  F = argmin E |F(k, X_k) - E_ref[X_{k+1} | X_k, X_N]|^2,   X_k ~ bridge(X_0, X_N) at step k,
    backward: B = argmin E |B(k, X_{k+1}) - E_ref[X_k | X_0, X_{k+1}]|^2,

with the reference bridge's conditional means (``LinearReference.forward_bridge_coefs`` / ``backward_bridge_coefs``;
Brownian in continuous time: the drift (x_N - x_t) / (1 - t)).  Alternating directions keeps one marginal exact at
each half-step: B is fitted on pairs simulated forward from the source, F on pairs simulated backward from the target.

============  =====================================================================================================
``pairs``     ``[M, 2, d]`` coupled endpoints (x_0, x_N)
``m, n, w``   reference bridge X_k | x_0, x_N ~ N(m_k x_0 + n_k x_N, w_k I)
``init``      the first coupling: ``independent`` (source x target) or ``reference`` (x_N from the reference chain)
============  =====================================================================================================
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .chains import (
    BridgeProblem,
    BridgeResult,
    FitConfig,
    RegressionData,
    flatten_steps,
    run_iterations,
    simulate_backward,
    simulate_forward,
)
from .reference import LinearReference

INITS = ("independent", "reference")


def bridge_samples(pairs: torch.Tensor, reference: LinearReference,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One reference-bridge path's states per pair: ``[M, N+1, d]`` with X_k ~ N(m_k x_0 + n_k x_N, w_k I) (each k
    drawn independently: only one step's marginal enters each regression row)."""
    c = reference.bridge_coefs().to(pairs)
    x0, xN = pairs[:, None, 0], pairs[:, None, 1]
    z = torch.randn((pairs.shape[0], c.shape[0], pairs.shape[2]), generator=generator, dtype=pairs.dtype,
                    device=pairs.device)
    return c[:, 0, None] * x0 + c[:, 1, None] * xN + c[:, 2, None].sqrt() * z


@torch.no_grad()
def forward_bridge_matching(pairs: torch.Tensor, reference: LinearReference,
                            generator: torch.Generator | None = None) -> RegressionData:
    """Rows for F: input X_k ~ bridge, target E[X_{k+1} | X_k, X_N] = c_k X_k + e_k x_N (DSBM eq. 8, discrete)."""
    x = bridge_samples(pairs, reference, generator)[:, :-1]
    c = reference.forward_bridge_coefs().to(pairs)
    return flatten_steps(x, c[:, 0, None] * x + c[:, 1, None] * pairs[:, None, 1])


@torch.no_grad()
def backward_bridge_matching(pairs: torch.Tensor, reference: LinearReference,
                             generator: torch.Generator | None = None) -> RegressionData:
    """Rows for B: input X_{k+1} ~ bridge, target E[X_k | X_0, X_{k+1}] = c_k x_0 + e_k X_{k+1} (DSBM eq. 9)."""
    x = bridge_samples(pairs, reference, generator)[:, 1:]
    c = reference.backward_bridge_coefs().to(pairs)
    return flatten_steps(x, c[:, 0, None] * pairs[:, None, 0] + c[:, 1, None] * x)


def initial_pairs(problem: BridgeProblem, M: int, init: str, g: torch.Generator) -> torch.Tensor:
    """The first coupling ``[M, 2, d]``: independent endpoints, or x_N from the reference chain started at x_0."""
    x0 = problem.source(M, g)
    if init == "independent":
        return torch.stack([x0, problem.target(M, g)], 1)
    ref = problem.reference
    return torch.stack([x0, simulate_forward(ref.forward_mean, x0, ref, g)[:, -1]], 1)


def _dsbm_half_steps(problem: BridgeProblem, M: int, init: str) -> Callable:
    ref = problem.reference

    def half_steps(n: int, F_ema: nn.Module, B_ema: nn.Module, g: torch.Generator):
        def cache_B():
            if n == 1:
                pairs = initial_pairs(problem, M, init, g)
            else:  # coupling of the forward process: exact source marginal
                x0 = problem.source(M, g)
                pairs = torch.stack([x0, simulate_forward(F_ema, x0, ref, g)[:, -1]], 1)
            return backward_bridge_matching(pairs, ref, g)

        def cache_F():  # coupling of the backward process: exact target marginal
            xN = problem.target(M, g)
            pairs = torch.stack([simulate_backward(B_ema, xN, ref, g)[:, 0], xN], 1)
            return forward_bridge_matching(pairs, ref, g)
        return cache_B, cache_F
    return half_steps


def dsbm(problem: BridgeProblem, F_net: nn.Module, B_net: nn.Module, iterations: int, fit: FitConfig = FitConfig(),
         seed: int = 0, init: str = "independent", callback: Callable[[int, nn.Module, nn.Module], dict] | None = None,
         progress: bool = True) -> BridgeResult:
    """``iterations`` IMF iterations of DSBM (each: B by backward bridge matching on the forward coupling -- the
    ``init`` coupling first --, then F by forward bridge matching on the backward coupling); same nets, caches, EMA
    and samplers as ``ipf.dsb``."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return run_iterations(problem, F_net, B_net, iterations, _dsbm_half_steps(problem, fit.cache_size, init), fit,
                          seed, callback, progress, "dsbm")
