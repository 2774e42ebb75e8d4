r"""Restart sampling (Xu, Deng, Cheng, Tian, Liu & Jaakkola 2023, "Restart sampling for improving generative
processes", Alg. 1; source 001, ch. 4).

Main Heun steps (Karras Alg. 1, ``ode.heun_core``) run along the grid.  When the grid first reaches
t_min_r, K restart loops follow, each of which

1. re-noises with the *forward* transition from t_min_r to t_max_r,
   x -> (alpha_M / alpha_m) x + sqrt(sigma_M^2 - (alpha_M/alpha_m)^2 sigma_m^2) z   (a Gaussian step, recorded),
2. re-solves the ODE back to t_min_r with ``n_restart`` Heun steps on a Karras grid (rho = 7).

Notation
--------
=================  ============================================================================================
``t_min_r``        restart interval's lower end; the loops start at the first grid point <= t_min_r (> 0)
``t_max_r``        restart interval's upper end (<= process t_max)
``K``              number of restart loops;  ``n_restart``: Heun steps per backward re-solve
``alpha_m``, ...   alpha, sigma at t_min_r (m) and t_max_r (M)
=================  ============================================================================================

Defaults follow the paper's CIFAR-10 setting in sigma_hat = sigma/alpha units: [0.06, 0.30], K = 2, n_restart = 3,
mapped to process times with ``t_from_log_snr``.  NFE = main Heun NFE + K * 2 n_restart.  Under an NFE budget
without an explicit K, K = 1 below NFE 36 and no run below NFE 18 (``budget_loops``: the loops take at most a
third of the budget).

On a ``Discrete`` chain whose (1-D) main grid lies on the chain's states (``make_grid``'s default there) the inner grids
move onto states too (``Discrete.snap_to_states``; t_max_r to its nearest state): a network trained on integer steps
is evaluated only where it was trained.  Measured on the grid panel's trained DDPM member (``disc_lin_sep8d_net``,
NFE 50, K = 2): MMD^2 2.1e-2 with the inner grids on their own times (the loops added it: K = 0 gives 3.2e-4), 5.5e-4
with them on states.

The sampler is a composition of steps run by the one loop: ``restart_plan`` lists the Heun steps and, after the
step reaching t_min_r, the K (re-noise, n_restart Heun) loops; the callback of that main step comes after its loops.
"""
from __future__ import annotations

import torch

from ..core.denoisers import DiffusionModel
from ..core.schedules import karras_between, t_from_sigma_hat
from .base import Callback, GridCoefs, gaussian_step, on_chain_states, register
from .loop import prepare, run_loop
from .ode import coefs, heun_core

DEFAULT_K = 2
DEFAULT_N_RESTART = 3
DEFAULT_SIGMA_HAT_R = (0.06, 0.30)


def restart_transition(model: DiffusionModel, x: torch.Tensor, t_lo: torch.Tensor,
                       t_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward transition q(x_{t_hi} | x_{t_lo}) = N(mean, std^2 I): mean = (alpha_hi/alpha_lo) x,
    std^2 = sigma_hi^2 - (alpha_hi/alpha_lo)^2 sigma_lo^2.  x ``[B, ...]``; times scalar or ``[B]``."""
    a_lo, sg_lo = coefs(model, t_lo, x)
    a_hi, sg_hi = coefs(model, t_hi, x)
    ratio = a_hi / a_lo
    return ratio * x, torch.sqrt((sg_hi**2 - ratio**2 * sg_lo**2).clamp(min=0))


def _heun(m: DiffusionModel, g: GridCoefs, i: int):
    """Heun step i of the grid ``g`` as a plan entry x -> (x_next, x0_hat, mean, std)."""
    return lambda x: heun_core(m, x, g.t[i], g.t[i + 1], g.c(i), g.c(i + 1), g.zero[i + 1]) + (None, None)


def _renoise(m: DiffusionModel, t_lo: torch.Tensor, t_hi: torch.Tensor, generator):
    """The forward re-noising t_lo -> t_hi as a plan entry (a Gaussian step, recorded)."""
    def entry(x):
        x_next, mean, std = gaussian_step(*restart_transition(m, x, t_lo, t_hi), True, generator)
        return x_next, None, mean, std
    return entry


def restart_plan(m: DiffusionModel, ts: torch.Tensor, x_T: torch.Tensor, j_r: int | None, t_hi: float, K: int,
                 n_restart: int, generator) -> tuple[list, list, list]:
    """The steps ``run_loop`` runs (Xu et al. 2023, Alg. 1): Heun steps along ``ts``; after the step reaching
    ts[j_r], K loops of (re-noise to t_hi, ``n_restart`` Heun steps on a Karras grid back to ts[j_r]).
    Returns (plan entries, visited times ``[len(plan) + 1]`` as grid-dtype tensors, callback index per entry)."""
    g, n = GridCoefs.of(m.process, ts, x_T), ts.shape[0] - 1
    plan, visited, report = [], [ts[0]], []
    for i in range(n):
        plan.append(_heun(m, g, i))
        visited.append(ts[i + 1])
        report.append(i)
        if i + 1 == j_r and K > 0:
            inner = karras_between(m.process, torch.as_tensor(t_hi), ts[i + 1].cpu(), n_restart)
            if inner.ndim == 1 and on_chain_states(m.process, ts):  # a network trained on the chain's steps
                inner = m.process.snap_to_states(inner)
            inner = inner.to(x_T.device)
            gi = GridCoefs.of(m.process, inner, x_T)
            report[-1] = None  # the callback of main step i comes after its restart loops
            for _ in range(K):
                plan += [_renoise(m, gi.t[-1], gi.t[0], generator)] + [_heun(m, gi, j) for j in range(n_restart)]
                visited += list(inner.unbind(0))
                report += [None] * (n_restart + 1)
            report[-1] = i
    return plan, visited, report


def _restart_times(model: DiffusionModel, t_min_r: float | None, t_max_r: float | None) -> tuple[float, float]:
    p, (lo, hi) = model.process, DEFAULT_SIGMA_HAT_R
    t_lo = float(t_from_sigma_hat(p, torch.tensor(lo))) if t_min_r is None else float(t_min_r)
    t_hi = float(t_from_sigma_hat(p, torch.tensor(hi))) if t_max_r is None else float(t_max_r)
    t_hi = min(t_hi, p.t_max) if t_max_r is None else t_hi
    if not 0 < t_lo < t_hi <= p.t_max * (1 + 1e-9):
        raise ValueError(f"restart interval must satisfy 0 < t_min_r < t_max_r <= t_max={p.t_max}, "
                         f"got t_min_r={t_lo}, t_max_r={t_hi}")
    return t_lo, t_hi


def budget_loops(nfe: int, n_restart: int = DEFAULT_N_RESTART, K: int | None = None, **_) -> dict:
    """K for a budget of ``nfe`` evaluations when the user gives none: as many loops as fit in a third of the budget,
    at most ``DEFAULT_K`` (n_restart = 3: K = 1 for NFE 18-35, K = 2 from 36); ``ValueError`` when not even one loop
    fits (NFE < 18): restart is then not run rather than run with a main path of one or two steps.  Why: with the
    paper's K = 2 at NFE 20 the loops take 12 of the 20 evaluations and the main path gets 4 Heun steps; on the
    grid panel that was 2-9 x DDIM's MMD^2 at NFE 20, K = 1 was within 1.6 x on the members measured."""
    per_loop = 2 * int(n_restart)
    if K is not None:  # the user's K is kept
        return {}
    if int(nfe) < 3 * per_loop:
        raise ValueError(f"NFE budget {nfe} is too small for restart with n_restart={n_restart}: its loops may take "
                         f"at most a third of the budget, so it needs NFE >= {3 * per_loop} (or give K explicitly)")
    return {"K": min(DEFAULT_K, int(nfe) // (3 * per_loop))}


@register("restart", order=2, evals_per_step=2, stochastic=True, options=("t_min_r", "t_max_r", "K", "n_restart"),
          reference="Xu et al. 2023, Restart sampling, Alg. 1", default_grid="karras", skip_correction_at_zero=True,
          extra_nfe_of=lambda K=DEFAULT_K, n_restart=DEFAULT_N_RESTART, **_: 2 * int(K) * int(n_restart),
          budget_options_of=budget_loops)
def sample_restart(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                   callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                   t_min_r: float | None = None, t_max_r: float | None = None, K: int = DEFAULT_K,
                   n_restart: int = DEFAULT_N_RESTART):
    """Restart sampler over ``ts`` (``[n+1]`` or ``[n+1, B]``).  The loops run once, at the first grid point j >= 1
    with 0 < ts[j] <= t_min_r for every sample (none if the grid never gets there).  The trajectory holds every
    visited state; its ``ts`` are the visited times and the re-noising steps carry Gaussian log-probs."""
    if int(K) != K or K < 0 or int(n_restart) != n_restart or n_restart < 1:
        raise ValueError(f"need integers K >= 0 and n_restart >= 1, got K={K}, n_restart={n_restart}")
    m, ts = prepare(model, x_T, ts)
    t_lo, t_hi = _restart_times(m, t_min_r, t_max_r)
    hits = [j for j in range(1, ts.shape[0]) if torch.all((ts[j] <= t_lo) & (ts[j] > 0))]
    plan, visited, report = restart_plan(m, ts, x_T, hits[0] if hits else None, t_hi, int(K), int(n_restart),
                                         generator)

    def step(k, x, state):
        return (*plan[k](x), state, None)

    visited = torch.stack([torch.as_tensor(t, dtype=ts.dtype) for t in visited])
    return run_loop(m, x_T, visited, step, times=list(visited.to(x_T).unbind(0)), callback=callback,
                    return_trajectory=return_trajectory, progress=progress, report=report)
