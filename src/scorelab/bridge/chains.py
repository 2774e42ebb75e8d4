r"""Gaussian chains and the regression fit shared by DSB (``ipf``) and DSBM (``dsbm``).

Forward chain: X_{k+1} = F(k, X_k) + sqrt(v_k) Z; backward chain: X_k = B(k, X_{k+1}) + sqrt(v_k) Z, with the
reference's step variances v_k = 2 gamma_{k+1} (sources/002, "Iterative Mean-Matching Proportional Fitting").
Both methods fit a step-conditioned net by least squares to regression data ``(k, x, y)`` drawn from a cache of
simulated trajectories (DSB) or coupled pairs (DSBM) that is refreshed every ``cache_refresh`` steps, and sample
with the EMA copy of the net (De Bortoli et al., 2021, App. I; Shi et al., 2023, Alg. 1).

===============  ===================================================================================================
``F, B``         mean functions ``(k, x [B, d]) -> [B, d]`` (a net, its EMA copy, or ``reference.forward_mean``)
``traj``         ``[B, N+1, d]`` states x_0 .. x_N
``k, x, y``      regression rows: step ``[M]``, input ``[M, d]``, target ``[M, d]``
===============  ===================================================================================================
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .._utils import progress as tqdm
from .reference import LinearReference

MeanFn = Callable[[torch.Tensor | int, torch.Tensor], torch.Tensor]
RegressionData = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
SOLVERS = ("adam", "lstsq")


@torch.no_grad()
def simulate_forward(F: MeanFn, x0: torch.Tensor, reference: LinearReference,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Run X_{k+1} = F(k, X_k) + sqrt(v_k) Z from ``x0 [B, d]`` -> trajectories ``[B, N+1, d]``."""
    sd = reference.v.sqrt().tolist()
    xs = [x0]
    for k in range(reference.n_steps):
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xs.append(F(k, xs[-1]) + sd[k] * z)
    return torch.stack(xs, 1)


@torch.no_grad()
def simulate_backward(B: MeanFn, xN: torch.Tensor, reference: LinearReference,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Run X_k = B(k, X_{k+1}) + sqrt(v_k) Z from ``xN [B, d]`` -> trajectories ``[B, N+1, d]`` (index 0 = x_0)."""
    sd = reference.v.sqrt().tolist()
    xs = [xN]
    for k in reversed(range(reference.n_steps)):
        z = torch.randn(xN.shape, generator=generator, dtype=xN.dtype, device=xN.device)
        xs.append(B(k, xs[-1]) + sd[k] * z)
    return torch.stack(xs[::-1], 1)


@dataclass(frozen=True)
class FitConfig:
    """How one half-step (one network) is fitted.

    ``iterations`` Adam steps of ``batch`` rows at learning rate ``lr``; ``ema`` decay of the sampling copy;
    ``cache_size`` trajectories (DSB) or pairs (DSBM) per cache, refreshed every ``cache_refresh`` steps (0: never);
    ``solver="lstsq"`` (``StepAffine`` only) solves the regression on one cache exactly instead of Adam.
    ``grad_clip`` caps the gradient norm (0: off).
    """

    iterations: int = 1000
    batch: int = 512
    lr: float = 1e-3
    ema: float = 0.99
    cache_size: int = 4096
    cache_refresh: int = 250
    solver: str = "adam"
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        for name in ("iterations", "batch", "cache_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and 0 <= self.ema < 1 and self.cache_refresh >= 0):
            raise ValueError("need lr > 0, 0 <= ema < 1 and cache_refresh >= 0")


@torch.no_grad()
def _update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)


def fit_regression(net: nn.Module, ema: nn.Module, make_cache: Callable[[], RegressionData], cfg: FitConfig,
                   generator: torch.Generator, desc: str = "fit", progress: bool = True) -> dict:
    """Minimize mean |net(k, x) - y|^2 over rows of ``make_cache()`` (mean-matching or bridge-matching regression);
    ``ema`` follows ``net``.  Returns ``{"loss": last mean loss, "seconds": CPU seconds}``."""
    t0 = time.process_time()
    if cfg.solver == "lstsq":
        k, x, y = make_cache()
        net.fit_lstsq(k, x, y)
        ema.load_state_dict(net.state_dict())
        with torch.no_grad():
            loss = float(((net(k, x) - y) ** 2).sum(1).mean())
        return {"loss": loss, "seconds": time.process_time() - t0}
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    cache, losses = make_cache(), []
    for it in tqdm(range(cfg.iterations), desc=desc, disable=not progress, leave=False):
        if cfg.cache_refresh and it and it % cfg.cache_refresh == 0:
            cache = make_cache()
        rows = torch.randint(0, cache[0].shape[0], (cfg.batch,), generator=generator)
        k, x, y = (c[rows] for c in cache)
        loss = ((net(k, x) - y) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        _update_ema(ema, net, cfg.ema)
        losses.append(float(loss.detach()))
    tail = losses[-max(1, len(losses) // 10):]
    return {"loss": sum(tail) / len(tail), "seconds": time.process_time() - t0}


def ema_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` for the EMA weights."""
    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def flatten_steps(traj_in: torch.Tensor, target: torch.Tensor) -> RegressionData:
    """Per-step inputs and targets ``[M, N, d]`` -> regression rows (k ``[M N]``, x, y ``[M N, d]``)."""
    M, N, d = traj_in.shape
    k = torch.arange(N, device=traj_in.device).repeat(M)
    return k, traj_in.reshape(M * N, d), target.reshape(M * N, d)


Sampler = Callable[[int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class BridgeProblem:
    """Two endpoint laws and a reference: ``source(n, generator) -> [n, d]`` (time 0), ``target`` (time N)."""

    source: Sampler
    target: Sampler
    reference: LinearReference


@dataclass
class BridgeResult:
    """A fitted bridge: the EMA forward and backward nets, the reference, and one record per iteration (losses,
    cumulative training CPU seconds, and whatever the callback measured)."""

    forward: nn.Module
    backward: nn.Module
    reference: LinearReference
    history: list[dict]

    def sample_forward(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Trajectories ``[B, N+1, d]`` of the forward bridge from ``x0 [B, d]`` (source -> target)."""
        return simulate_forward(self.forward, x0, self.reference, generator)

    def sample_backward(self, xN: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Trajectories ``[B, N+1, d]`` of the backward bridge from ``xN [B, d]`` (target -> source)."""
        return simulate_backward(self.backward, xN, self.reference, generator)

    def pairs(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The learned coupling: ``[B, 2, d]`` rows (x_0, x_N) with x_N the forward bridge's end point from x_0."""
        return torch.stack([x0, self.sample_forward(x0, generator)[:, -1]], 1)


def run_iterations(problem: BridgeProblem, F_net: nn.Module, B_net: nn.Module, iterations: int,
                   half_steps: Callable, fit: FitConfig, seed: int, callback: Callable | None,
                   progress: bool, name: str) -> BridgeResult:
    """The outer loop shared by DSB and DSBM: per iteration, fit B then F on the caches that ``half_steps(n,
    F_ema, B_ema, g)`` returns (two ``make_cache`` closures; the nets are updated in place, so F's cache sees the new
    B); ``callback(n, F_ema, B_ema) -> dict`` is measured
    outside the timed CPU seconds."""
    if int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations!r}")
    g = torch.Generator().manual_seed(int(seed))
    F_ema, B_ema = ema_copy(F_net), ema_copy(B_net)
    history, cpu = [], 0.0
    for n in tqdm(range(1, int(iterations) + 1), desc=name, disable=not progress):
        cache_B, cache_F = half_steps(n, F_ema, B_ema, g)
        sb = fit_regression(B_net, B_ema, cache_B, fit, g, f"{name} {n}: B", progress)
        sf = fit_regression(F_net, F_ema, cache_F, fit, g, f"{name} {n}: F", progress)
        cpu += sb["seconds"] + sf["seconds"]
        record = {"iteration": n, "loss_B": sb["loss"], "loss_F": sf["loss"], "cpu_seconds": cpu}
        if callback is not None:
            record.update(callback(n, F_ema, B_ema))
        history.append(record)
    return BridgeResult(F_ema, B_ema, problem.reference, history)
