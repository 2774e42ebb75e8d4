r"""DDIM, singlestep DPM-Solver-1/2/3, multistep DPM-Solver++ 2M / 3M and DPM-Solver++ 2M-SDE.

All steps are written in the general (alpha, sigma) form with lambda = log(alpha/sigma) (half the log-SNR of
``processes``), so they run on every forward process.  A step into s = 0 (sigma_s = 0, lambda_s = inf) is always a
first-order step, which there returns the data prediction x0_hat exactly.

Notation
--------
================  ==============================================================================================
``t -> s``        one step from time t to s < t;  h = lambda_s - lambda_t > 0
``a, sg``         alpha, sigma at the subscripted time
``eps, x0``       noise / data predictions of the model (DPM-Solver uses eps, DPM-Solver++ uses x0)
``r1, r2``        intermediate lambdas lambda_t + r h (1/2 for order 2; 1/3, 2/3 for order 3)
``history``       multistep memory: tuple of (x0_hat, lambda) of previous steps, oldest first
================  ==============================================================================================

References: DDIM, Song, Meng & Ermon 2021, eq. 12 (sigma_eta = eta sigma_s sqrt(1 - e^{-2h}) in (alpha, sigma)
form); DPM-Solver, Lu et al. 2022, eq. 3.7 and Algs. 1-2; DPM-Solver++, Lu et al. 2022b, Alg. 2 (2M), the 3M
update and the SDE-DPM-Solver++(2M) midpoint update of their reference code (``dpm_solver_pytorch.py`` and
diffusers' ``DPMSolverMultistepScheduler``), with ``lower_order_final`` as there (steps < 10).
"""
from __future__ import annotations

import torch

from ..denoisers import DiffusionModel
from .base import Callback, gaussian_sample, register
from .ode import coefs, half_lam, prepare, reaches_zero, run_steps

LOWER_ORDER_FINAL_BELOW = 10  # reference code: `if lower_order_final and steps < 10`


# -- DDIM ---------------------------------------------------------------------------------------------------------
def _ddim(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, eta: float):
    a_t, sg_t = coefs(model, t, x)
    a_s, sg_s = coefs(model, s, x)
    h = half_lam(model, s, x) - half_lam(model, t, x)
    eps = model.eps(x, t)
    x0 = (x - sg_t * eps) / a_t
    std = eta * sg_s * torch.sqrt(-torch.expm1(-2 * h))  # eq. 16 in (alpha, sigma) form
    mean = a_s * x0 + torch.sqrt((sg_s**2 - std**2).clamp(min=0)) * eps  # eq. 12
    return mean, std, x0


def ddim_transition(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                    eta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Song, Meng & Ermon 2021, eq. 12: x_s ~ N(mean, std^2 I) with
    mean = alpha_s x0_hat + sqrt(sigma_s^2 - std^2) eps_hat and std = eta sigma_s sqrt(1 - e^{-2h})
    (eta = 1: the DDPM posterior).  x ``[B, ...]``; t, s scalars or ``[B]``.  Returns (mean ``[B, ...]``,
    std broadcastable to x); one evaluation."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta}")
    mean, std, _ = _ddim(model, x, t, s, eta)
    return mean, std


def ddim_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, eta: float = 0.0,
              generator: torch.Generator | None = None):
    """One DDIM step.  Returns (x_s, x0_hat, mean, std); mean/std are None when the step is deterministic."""
    mean, std, x0 = _ddim(model, x, t, s, eta)
    if eta == 0 or not torch.all(std > 0):
        return mean, x0, None, None
    return gaussian_sample(mean, std, generator), x0, mean, std


@register("ddim", order=1, evals_per_step=1, stochastic=True, options=("eta",),
          reference="Song, Meng & Ermon 2021, eq. 12", default_grid="uniform_log_snr")
def sample_ddim(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                eta: float = 0.0):
    """DDIM over ``ts`` (``[n+1]`` or ``[n+1, B]``); eta = 0 is deterministic (= DPM-Solver-1), eta = 1 is
    DDPM-like; eta > 0 records Gaussian transitions and log-probs in the trajectory.  NFE = n."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta}")
    m, ts = prepare(model, x_T, ts)

    def step(i, x, t, s, state):
        return (*ddim_step(m, x, t, s, eta, generator), state)

    return run_steps(m, x_T, ts, step, callback=callback, return_trajectory=return_trajectory, progress=progress)


# -- DPM-Solver (singlestep, noise prediction) ---------------------------------------------------------------------
def _to_lam(model: DiffusionModel, lam: torch.Tensor) -> torch.Tensor:
    """Time whose lambda = log(alpha/sigma) is ``lam`` (lam broadcast against x; returns scalar or [B])."""
    lam = lam.reshape(lam.shape[0]) if lam.ndim > 0 else lam
    return model.process.t_from_log_snr(2.0 * lam)


def _first(model, x, t, s, eps):
    """eq. 3.7 (k = 1): x_s = (alpha_s/alpha_t) x - sigma_s (e^h - 1) eps."""
    a_t, _ = coefs(model, t, x)
    a_s, sg_s = coefs(model, s, x)
    h = half_lam(model, s, x) - half_lam(model, t, x)
    return a_s / a_t * x - sg_s * torch.expm1(h) * eps


def dpm_solver_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, order: int = 2):
    """One singlestep DPM-Solver step of order 1, 2 (Alg. 1, r1 = 1/2) or 3 (Alg. 2, r1 = 1/3, r2 = 2/3).
    ``order`` evaluations; a step into s = 0 is the first-order DDIM step (x0_hat where sigma(0) = 0).
    Returns (x_s, x0_hat)."""
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
    a_t, sg_t = coefs(model, t, x)
    eps = model.eps(x, t)
    x0 = (x - sg_t * eps) / a_t
    if reaches_zero(s):
        return coefs(model, s, x)[0] * x0 + coefs(model, s, x)[1] * eps, x0
    if order == 1:
        return _first(model, x, t, s, eps), x0
    lam_t = half_lam(model, t, x)
    h = half_lam(model, s, x) - lam_t
    sg_s = coefs(model, s, x)[1]
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    s1 = _to_lam(model, lam_t + r1 * h)
    u1 = _first(model, x, t, s1, eps)
    D1 = model.eps(u1, s1) - eps
    if order == 2:  # Alg. 1, line 4
        return _first(model, x, t, s, eps) - sg_s / (2 * r1) * torch.expm1(h) * D1, x0
    r2 = 2.0 / 3.0  # Alg. 2
    s2 = _to_lam(model, lam_t + r2 * h)
    sg_2 = coefs(model, s2, x)[1]
    u2 = _first(model, x, t, s2, eps) - sg_2 * (r2 / r1) * (torch.expm1(r2 * h) / (r2 * h) - 1) * D1
    D2 = model.eps(u2, s2) - eps
    return _first(model, x, t, s, eps) - sg_s / r2 * (torch.expm1(h) / h - 1) * D2, x0


def sample_dpm_solver(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                      callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                      order: int = 2, orders: list[int] | None = None):
    """Singlestep DPM-Solver (Lu et al. 2022) of fixed ``order`` or with per-step ``orders`` (one per step, e.g.
    from ``schedules.grid_for_nfe(..., return_opts=True)``, sec. 3.4).  NFE = sum of the orders (a step into
    t = 0 costs 1)."""
    m, ts = prepare(model, x_T, ts)
    n = ts.shape[0] - 1
    orders = [order] * n if orders is None else [int(k) for k in orders]
    if len(orders) != n or any(k not in (1, 2, 3) for k in orders):
        raise ValueError(f"orders must list {n} values in (1, 2, 3) (one per step), got {orders}")

    def step(i, x, t, s, state):
        x_s, x0 = dpm_solver_step(m, x, t, s, orders[i])
        return x_s, x0, None, None, state

    return run_steps(m, x_T, ts, step, callback=callback, return_trajectory=return_trajectory, progress=progress)


def _register_dpm_solver(k: int):
    ref = {1: "Lu et al. 2022, eq. 3.7 (k=1)", 2: "Lu et al. 2022, Alg. 1", 3: "Lu et al. 2022, Alg. 2"}[k]

    @register(f"dpm_solver_{k}", order=k, evals_per_step=k, stochastic=False, options=("orders",),
              reference=ref, default_grid="uniform_log_snr")
    def fn(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False, progress=False, orders=None):
        return sample_dpm_solver(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                                 return_trajectory=return_trajectory, order=k, orders=orders)

    fn.__name__ = fn.__qualname__ = f"sample_dpm_solver_{k}"
    fn.__doc__ = f"DPM-Solver-{k} (singlestep); see ``sample_dpm_solver``."
    return fn


sample_dpm_solver_1 = _register_dpm_solver(1)
sample_dpm_solver_2 = _register_dpm_solver(2)
sample_dpm_solver_3 = _register_dpm_solver(3)


# -- DPM-Solver++ (multistep, data prediction) -----------------------------------------------------------------------
def _pp_derivatives(x0: torch.Tensor, lam_t: torch.Tensor, h: torch.Tensor, history: tuple, order: int):
    """Finite differences (D1, D2) of the data prediction in lambda, scaled by h (reference code, 2M / 3M)."""
    if order == 1:
        return None, None
    x0_1, lam_1 = history[-1]
    r0 = (lam_t - lam_1) / h
    D1_0 = (x0 - x0_1) / r0
    if order == 2:
        return D1_0, None
    x0_2, lam_2 = history[-2]
    r1 = (lam_1 - lam_2) / h
    D1_1 = (x0_1 - x0_2) / r1
    return D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1), (D1_0 - D1_1) / (r0 + r1)


def dpm_solver_pp_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, history: tuple,
                       order: int = 2, sde: bool = False, generator: torch.Generator | None = None):
    """One multistep DPM-Solver++ step (ODE: Lu et al. 2022b, Alg. 2 and 3M; ``sde``: SDE-DPM-Solver++ midpoint,
    order <= 2).  ``history``: tuple of (x0_hat, lambda) of earlier steps; ``order`` is capped by its length + 1
    and is 1 into s = 0.  One evaluation.  Returns (x_s, x0_hat, mean, std, new_history); mean/std None for ODE."""
    a_t, sg_t = coefs(model, t, x)
    a_s, sg_s = coefs(model, s, x)
    lam_t = half_lam(model, t, x)
    h = half_lam(model, s, x) - lam_t
    x0 = model.x0(x, t)
    order = 1 if reaches_zero(s) else min(order, len(history) + 1)
    D1, D2 = _pp_derivatives(x0, lam_t, h, history, order)
    new_history = (tuple(history) + ((x0, lam_t),))[-2:]
    if sde:
        one_m = -torch.expm1(-2 * h)  # 1 - e^{-2h}
        mean = sg_s / sg_t * torch.exp(-h) * x + a_s * one_m * x0 + (0 if D1 is None else 0.5 * a_s * one_m * D1)
        std = sg_s * torch.sqrt(one_m)
        if not torch.all(std > 0):
            return mean, x0, None, None, new_history
        return gaussian_sample(mean, std, generator), x0, mean, std, new_history
    phi_1 = torch.expm1(-h)
    x_s = sg_s / sg_t * x - a_s * phi_1 * x0
    if order == 2:
        x_s = x_s - 0.5 * a_s * phi_1 * D1
    elif order == 3:
        phi_2 = phi_1 / h + 1
        x_s = x_s + a_s * phi_2 * D1 - a_s * (phi_2 / h - 0.5) * D2
    return x_s, x0, None, None, new_history


def _step_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """Warm-up (order <= i+1) and, for short runs, lower order on the last steps (reference code)."""
    if lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
        return min(order, i + 1, n - i)
    return min(order, i + 1)


def sample_dpm_solver_pp(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                         callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                         order: int = 2, sde: bool = False, lower_order_final: bool = True):
    """Multistep DPM-Solver++ of ``order`` 1-3 (``sde=True``: SDE-DPM-Solver++, order 1-2).  NFE = n."""
    if order not in (1, 2, 3) or (sde and order == 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3 (1 or 2 with sde=True), got {order}")
    m, ts = prepare(model, x_T, ts)
    n = ts.shape[0] - 1

    def step(i, x, t, s, history):
        k = _step_order(i, n, order, lower_order_final)
        x_s, x0, mean, std, history = dpm_solver_pp_step(m, x, t, s, history, k, sde, generator)
        return x_s, x0, mean, std, history

    return run_steps(m, x_T, ts, step, state=(), callback=callback, return_trajectory=return_trajectory,
                     progress=progress)


@register("dpm_solver_pp_2m", order=2, evals_per_step=1, stochastic=False, options=("lower_order_final",),
          reference="Lu et al. 2022b (DPM-Solver++), Alg. 2", default_grid="uniform_log_snr")
def sample_dpm_solver_pp_2m(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False,
                            progress=False, lower_order_final=True):
    """DPM-Solver++(2M); see ``sample_dpm_solver_pp``."""
    return sample_dpm_solver_pp(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                                return_trajectory=return_trajectory, order=2, lower_order_final=lower_order_final)


@register("dpm_solver_pp_3m", order=3, evals_per_step=1, stochastic=False, options=("lower_order_final",),
          reference="Lu et al. 2022b (DPM-Solver++), 3M multistep update of the reference code",
          default_grid="uniform_log_snr")
def sample_dpm_solver_pp_3m(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False,
                            progress=False, lower_order_final=True):
    """DPM-Solver++(3M); see ``sample_dpm_solver_pp``."""
    return sample_dpm_solver_pp(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                                return_trajectory=return_trajectory, order=3, lower_order_final=lower_order_final)


@register("dpm_solver_pp_2m_sde", order=1, evals_per_step=1, stochastic=True, options=("lower_order_final",),
          reference="Lu et al. 2022b, SDE-DPM-Solver++(2M) (midpoint) of the reference code",
          default_grid="uniform_log_snr")
def sample_dpm_solver_pp_2m_sde(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False,
                                progress=False, lower_order_final=True):
    """SDE-DPM-Solver++(2M): Gaussian steps (recorded with log-probs); see ``sample_dpm_solver_pp``."""
    return sample_dpm_solver_pp(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                                return_trajectory=return_trajectory, order=2, sde=True,
                                lower_order_final=lower_order_final)
