r"""Probability-flow ODE samplers: Euler in t, Heun (Karras Alg. 1), adaptive dopri5, and Karras' stochastic Alg. 2.

The probability-flow ODE (Song et al. 2021, eq. 13) of x_t = alpha x_0 + sigma eps is

    dx/dt = f(t) x - g(t)^2 / 2 * score(x, t).

In the scaled variable x_hat = x / alpha with sigma_hat = sigma / alpha it is dx_hat/dsigma_hat = eps(x, t)
(Karras et al. 2022, eq. 4 with s(t) = alpha), which is where Heun's method (Alg. 1) and the stochastic sampler
(Alg. 2) are run on every process; a churned sigma_hat is mapped back to a process time with ``t_from_log_snr``.

Notation
--------
===================  ==========================================================================================
``t -> s``           one step from time t to the smaller time s (s = 0 allowed: final "denoise" step)
``a, sg``            alpha(t), sigma(t) broadcast against x
``sh``               sigma_hat = sigma / alpha = exp(-lambda/2)
``eps, x0_hat``      the model's noise and data predictions at (x, t)
``gamma``            churn factor of Alg. 2: sigma_hat -> sigma_hat (1 + gamma)
===================  ==========================================================================================

Every sample function follows the contract of ``samplers/base.py``: a step over precomputed ``GridCoefs`` run by
``loop.run_loop`` (NFE measured through ``counted``, trajectory, callback, progress bar).
"""
from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

from .._utils import bcast
from ..core.denoisers import DiffusionModel
from .base import Callback, GridCoefs, combine, point_coefs, register
from .loop import prepare, run_loop


def coefs(model: DiffusionModel, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha(t), sigma(t)) broadcast against x; t scalar or ``[B]``."""
    a, s, _ = model.process.coefs(t)
    return bcast(a, x), bcast(s, x)


def reaches_zero(s: torch.Tensor) -> bool:
    """True when (any sample of) the step ends at t = 0, where 2nd-order corrections are skipped (Karras Alg. 1)."""
    return bool(torch.any(s == 0))


# -- step functions ---------------------------------------------------------------------------------------------
def ddim_zero_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor):
    """First-order step alpha_s x0_hat + sigma_s eps_hat used by every sampler into s = 0 (sigma_s = 0 there on
    all processes but VE, where sigma(0) = sigma_min).  One evaluation.  Returns (x_s, x0_hat)."""
    a_t, sg_t = coefs(model, t, x)
    a_s, sg_s = coefs(model, s, x)
    eps = model.eps(x, t)
    x0 = (x - sg_t * eps) / a_t
    return a_s * x0 + sg_s * eps, x0


def pf_ode_drift(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Song et al. 2021, eq. 13: (dx/dt = f x - g^2/2 score, score) at (x, t); one evaluation."""
    f, g2 = model.process.sde_coefs(t)
    score = model.score(x, t)
    return bcast(f, x) * x - 0.5 * bcast(g2, x) * score, score


def euler_core(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, dt, c_t: tuple, sde_t: tuple):
    """Euler step of the PF-ODE, x_s = x + dt (f x - g^2/2 score) with dt = s - t < 0, and Tweedie's
    x0_hat = (x + sigma^2 score)/alpha; c_t = (alpha, sigma, .) and sde_t = (f, g^2) at t (floats or ``[B]``)."""
    (a, sg), (f, g2) = c_t[:2], sde_t
    score = model.score(x, t)
    return combine(x, [(1 + dt * f, x), (-0.5 * dt * g2, score)]), combine(x, [(1 / a, x), (sg**2 / a, score)])


def euler_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor):
    """Euler step of the PF-ODE in t: x_s = x + (s - t) dx/dt.  Returns (x_s, x0_hat) with Tweedie's
    x0_hat = (x + sigma^2 score) / alpha (no extra evaluation)."""
    t64, s64 = torch.as_tensor(t).to(torch.float64), torch.as_tensor(s).to(torch.float64)
    f, g2 = model.process.sde_coefs(t64)
    return euler_core(model, x, t, s64 - t64, point_coefs(model.process, t64), (f, g2))


def heun_core(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, c_t: tuple, c_s: tuple,
              s_zero: bool, second_order: bool = True):
    """Karras et al. 2022, Alg. 1 (lines 4-8) in x_hat = x/alpha vs sigma_hat = sigma/alpha, where
    dx_hat/dsigma_hat = eps, with precomputed c_t, c_s = (alpha, sigma, .) at t and s.  Returns (x_s, x0_hat)."""
    (a_t, sg_t), (a_s, sg_s) = c_t[:2], c_s[:2]
    dsh = sg_s / a_s - sg_t / a_t
    eps = model.eps(x, t)  # d_i (line 5)
    x0 = combine(x, [(1 / a_t, x), (-sg_t / a_t, eps)])
    if not second_order or s_zero:  # Euler (line 5); no correction into s = 0 (line 6)
        return combine(x, [(a_s / a_t, x), (a_s * dsh, eps)]), x0
    eps_next = model.eps(combine(x, [(a_s / a_t, x), (a_s * dsh, eps)]), s)  # d'_i (line 7)
    return combine(x, [(a_s / a_t, x), (0.5 * a_s * dsh, eps), (0.5 * a_s * dsh, eps_next)]), x0  # line 8


def heun_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, second_order: bool = True):
    """Karras et al. 2022, Alg. 1 (lines 4-8) in x_hat = x/alpha vs sigma_hat = sigma/alpha, where
    dx_hat/dsigma_hat = eps.  The correction is skipped when s = 0 (Alg. 1, line 6).  Returns (x_s, x0_hat)."""
    p = model.process
    return heun_core(model, x, t, s, point_coefs(p, t), point_coefs(p, s), reaches_zero(s), second_order)


def dopri5_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                rtol: float = 1e-5, atol: float = 1e-5) -> torch.Tensor:
    """Integrate the PF-ODE from t to s with torchdiffeq's dopri5, in tau in [0, 1] with t(tau) = t + tau (s - t)
    (one parameterisation serves per-sample times).  A step into s = 0 is the first-order (DDIM) step
    alpha_s x0_hat + sigma_s eps_hat (= x0_hat where sigma(0) = 0)."""
    if reaches_zero(s):
        return ddim_zero_step(model, x, t, s)[0]
    dt = s - t

    def f(tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # tau clamped: dopri5's first-step probe may overshoot
        return bcast(dt, y) * pf_ode_drift(model, y, t + tau.clamp(0, 1) * dt)[0]

    taus = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
    opts = dict(step_t=taus[1:])  # never step past tau = 1 (no evaluations beyond s)
    return odeint(f, x, taus, method="dopri5", rtol=rtol, atol=atol, options=opts)[-1]


def edm_churn_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, gamma: torch.Tensor,
                   S_noise: float = 1.0, generator: torch.Generator | None = None, second_order: bool = True):
    """Karras et al. 2022, Alg. 2 (lines 4-10) on a general process: raise sigma_hat to sigma_hat (1 + gamma)
    (time t_hat = t_from_log_snr(-2 log sigma_hat), capped at t_max), add fresh noise in x_hat, then a Heun step
    from t_hat to s.  ``gamma``: scalar or ``[B]``; ``second_order`` False: an Euler step.  Returns (x_s, x0_hat)."""
    p, gamma = model.process, torch.as_tensor(gamma, dtype=x.dtype, device=x.device)
    if not torch.any(gamma > 0):
        return heun_step(model, x, t, s, second_order)
    a_t, sg_t = coefs(model, t, x)
    sh_t = sg_t / a_t
    lam_hat = p.log_snr(t) - 2.0 * torch.log1p(gamma)  # sigma_hat -> sigma_hat (1 + gamma)
    t_hat = torch.where(gamma > 0, p.t_from_log_snr(lam_hat).clamp(max=p.t_max), t)  # line 4-5
    a_h, sg_h = coefs(model, t_hat, x)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    x_hat = x / a_t + torch.sqrt((sg_h / a_h) ** 2 - sh_t**2).clamp(min=0) * S_noise * noise  # line 6
    return heun_step(model, a_h * x_hat, t_hat, s, second_order)  # lines 7-10


# -- samplers ---------------------------------------------------------------------------------------------------
def _euler_coefs(g: GridCoefs) -> list[tuple]:
    """Per step: x_s = (1 + dt f) x - (dt g^2 / 2) score and x0_hat = x / alpha + (sigma^2 / alpha) score."""
    f, g2 = g.sde()
    dts = list((g.ts64[1:] - g.ts64[:-1]).to(g.device).unbind(0)) if g.per_sample else \
        [s - t for t, s in zip(g.ts64.tolist()[:-1], g.ts64.tolist()[1:], strict=True)]
    return [(1 + dts[i] * f[i], -0.5 * dts[i] * g2[i], 1 / g.a[i], g.sg[i] ** 2 / g.a[i]) for i in range(len(dts))]


@register("euler", order=1, evals_per_step=1, stochastic=False, options=(),
          reference="Song et al. 2021, eq. 13 (probability-flow ODE), Euler in t", default_grid="uniform_log_snr")
def sample_euler(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                 callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False):
    """Euler on the probability-flow ODE in t over the grid ``ts`` (``[n+1]`` or ``[n+1, B]``); x_T ``[B, ...]``.
    NFE = n.  Returns x at ts[-1] ``[B, ...]`` or a ``Trajectory``."""
    m, ts = prepare(model, x_T, ts)
    g = GridCoefs.of(m.process, ts, x_T)
    ks = g.memo("euler", lambda: _euler_coefs(g))

    def step(i, x, state):
        k, score = ks[i], m.score(x, g.t[i])
        return combine(x, [(k[0], x), (k[1], score)]), lambda: combine(x, [(k[2], x), (k[3], score)]), \
            None, None, state, None

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


def _evals_first(euler_first: bool = True, **_) -> int:
    """Evaluations of Heun's / EDM's first step: 1 with ``euler_first`` (an Euler step), else 2."""
    return 1 if euler_first else 2


def _evals_last(lower_order_final: bool = True, **_) -> int:
    """Evaluations of Heun's / EDM's last step when it does not end at t = 0: 1 with ``lower_order_final``."""
    return 1 if lower_order_final else 2


def heun_orders(n: int, euler_first: bool, lower_order_final: bool) -> list[bool]:
    """Per step of an n-step grid: whether Heun's correction is made (the step into t = 0 skips it regardless)."""
    return [not ((euler_first and i == 0) or (lower_order_final and i == n - 1)) for i in range(n)]


@register("heun", order=2, evals_per_step=2, stochastic=False, options=("euler_first", "lower_order_final"),
          reference="Karras et al. 2022, Alg. 1", default_grid="karras", skip_correction_at_zero=True,
          evals_first_of=_evals_first, evals_last_of=_evals_last)
def sample_heun(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                euler_first: bool = True, lower_order_final: bool = True):
    """Heun's 2nd-order method (Karras Alg. 1) in the scaled variable.  NFE = 2n, or 2n - 1 when ts[-1] = 0, and one
    less for each of these defaults: ``euler_first``, the first step (from sigma_max, where one step spans most of
    the noise scale) is an Euler step (= DDIM); ``lower_order_final``, so is the last step when it ends at t_min
    rather than 0 (Alg. 1 already skips the correction into sigma = 0).  Each is one first-order step (local error
    O(h^2)), so the global order stays 2.  Why: the correction evaluates the network at the Euler prediction of
    such a step, off the data it was trained on (sigma_max) or where its eps is least accurate (sigma ~ 0.01);
    measured at NFE 5 on the panel's networks trained by scorelab (benchmarks/panel_nets.py), best grid of each
    variant, MMD^2 to the exact law: VP 5.4e-2 -> 1.1e-2, DDPM chain 2.1e-2 -> 1.2e-2 (Alg. 1 as printed: both
    options False)."""
    m, ts = prepare(model, x_T, ts)
    g = GridCoefs.of(m.process, ts, x_T)
    second = heun_orders(ts.shape[0] - 1, euler_first, lower_order_final)

    def step(i, x, state):
        return (*heun_core(m, x, g.t[i], g.t[i + 1], g.c(i), g.c(i + 1), g.zero[i + 1], second[i]),
                None, None, state, None)

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


@register("dopri5", order=5, evals_per_step=math.nan, stochastic=False, options=("rtol", "atol"),
          reference="Dormand & Prince 1980 via torchdiffeq; Song et al. 2021, eq. 13", default_grid="uniform_t")
def sample_dopri5(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                  callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                  rtol: float = 1e-5, atol: float = 1e-5):
    """Adaptive dopri5 on the PF-ODE between consecutive grid points (a 2-point grid integrates in one go).
    NFE is measured (adaptive).  The reference solver of the tests (float64, rtol = atol = 1e-9)."""
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    m, ts = prepare(model, x_T, ts)
    times = list(ts.to(x_T).unbind(0))

    def step(i, x, state):
        return dopri5_step(m, x, times[i], times[i + 1], rtol, atol), None, None, None, state, None

    return run_loop(m, x_T, ts, step, times=times, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


def edm_gamma(model: DiffusionModel, t: torch.Tensor, n: int, S_churn: float, S_tmin: float,
              S_tmax: float) -> torch.Tensor:
    """Alg. 2, line 4: gamma = min(S_churn/n, sqrt 2 - 1) where sigma_hat(t) in [S_tmin, S_tmax], else 0."""
    sh = torch.exp(-0.5 * model.process.log_snr(t))
    inside = (sh >= S_tmin) & (sh <= S_tmax)
    return torch.where(inside, min(S_churn / n, math.sqrt(2) - 1), 0.0).to(t.dtype)


@register("edm", order=2, evals_per_step=2, stochastic=True,
          options=("S_churn", "S_tmin", "S_tmax", "S_noise", "euler_first", "lower_order_final"),
          reference="Karras et al. 2022, Alg. 2", default_grid="karras", skip_correction_at_zero=True,
          evals_first_of=_evals_first, evals_last_of=_evals_last)
def sample_edm(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
               callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
               S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
               euler_first: bool = True, lower_order_final: bool = True):
    """Karras' stochastic sampler (Alg. 2); S_tmin/S_tmax are in sigma_hat = sigma/alpha units.  S_churn = 0 is
    Heun (Alg. 1).  NFE = 2n (2n - 1 when ts[-1] = 0), one less for each of ``euler_first`` and
    ``lower_order_final`` (defaults; see ``sample_heun``).  The churned step is not a Gaussian transition of x_i,
    so the trajectory records no log-probabilities."""
    if S_churn < 0 or S_noise < 0 or S_tmin < 0 or S_tmax < S_tmin:
        raise ValueError("need S_churn >= 0, S_noise >= 0 and 0 <= S_tmin <= S_tmax")
    m, ts = prepare(model, x_T, ts)
    n, g = ts.shape[0] - 1, GridCoefs.of(m.process, ts, x_T)
    orders = heun_orders(n, euler_first, lower_order_final)

    def step(i, x, state):
        t, s = g.t[i], g.t[i + 1]
        gamma, second = edm_gamma(m, t, n, S_churn, S_tmin, S_tmax), orders[i]
        if torch.any(gamma > 0):
            x_s, x0 = edm_churn_step(m, x, t, s, gamma, S_noise, generator, second)
        else:
            x_s, x0 = heun_core(m, x, t, s, g.c(i), g.c(i + 1), g.zero[i + 1], second)
        return x_s, x0, None, None, state, None

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)
