r"""Provably accelerated samplers of Li, Huang, Efimov, Wei, Chi & Chen 2024 ("Accelerating convergence of
score-based diffusion models, provably", arXiv:2403.03852; source 003, Part 2).

The paper works on a DDPM chain X_t = sqrt(alpha_t) X_{t-1} + sqrt(1 - alpha_t) z with scores s_t of X_t:

* deterministic (eq. (2), 2 evaluations per step)::

      Y_t^- = Phi_t(Y_t) = sqrt(alpha_{t+1}) (Y_t - (1 - alpha_{t+1})/2 s_t(Y_t))
      Y_{t-1} = (1/sqrt(alpha_t)) (Y_t + (1 - alpha_t)/2 s_t(Y_t)
                + (1 - alpha_t)^2 / (4 (1 - alpha_{t+1})) (s_t(Y_t) - sqrt(alpha_{t+1}) s_{t+1}(Y_t^-)))

* its 1-evaluation variant ("Scheme 2"): s_{t+1} at the previous iterate Y_{t+1} (reused) instead of at Y_t^-;
  the first step is the plain DDIM-like update ("Scheme 1") Y_{t-1} = (Y_t + (1 - alpha_t)/2 s_t(Y_t))/sqrt(alpha_t);
* stochastic (eq. (3), 1 evaluation per step)::

      Y_t^+ = Y_t + sqrt((1 - alpha_t)/2) Z_t
      Y_{t-1} = (1/sqrt(alpha_t)) (Y_t^+ + (1 - alpha_t) s_t(Y_t^+) + sqrt((1 - alpha_t)/2) Z_t^+).

General process and grid t_0 > t_1 > ... > t_n
==============================  ======================================================================================
``c(t)``                        sqrt(alpha^2 + sigma^2): the variance-preserving variable is y = x / c(t)
``abar(t)``                     alpha(t)^2 / c(t)^2 = sigmoid(lambda(t)) (alpha_vp^2)
``s_vp(y, t)``                  score of y: c(t) * model.score(c(t) y, t)
``alpha_k``  (Li's alpha_t)     abar(t_k) / abar(t_{k+1}) < 1, for the step t_k -> t_{k+1}
``alpha_{k-1}`` (alpha_{t+1})   abar(t_{k-1}) / abar(t_k): the previous (noisier) step's ratio
==============================  ======================================================================================

First step of ``accel_det`` (no t_{-1}): alpha_{t+1} := alpha_t (the grid continued geometrically in abar), and
s_{t+1}(Y^-) is evaluated at the time u with abar(u) = abar(t_0) alpha_0, clamped to ``process.t_max`` so that a
network is never queried outside its interval.  Any first-order-consistent first step (local error O(h^2)) keeps the
global order 2; the clamp only changes the step at that order.

``accel_stoch`` records, per step, the Gaussian of the second stage given Y^+: p(x_{k+1} | x^+) =
N(c(t_{k+1}) (y^+ + (1 - alpha_k) s_vp(y^+, t_k))/sqrt(alpha_k), c(t_{k+1})^2 (1 - alpha_k)/(2 alpha_k) I), and stores
x^+ = c(t_k) y^+ in ``Trajectory.extras["x_plus"]``.  The first stage x -> x^+ does not involve the model, so this
log-prob carries the whole policy gradient of log p(x_{k+1}, x^+ | x_k); p(x_{k+1} | x_k) itself is not Gaussian.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._utils import bcast
from ..denoisers import DiffusionModel
from .base import Callback, TrajectoryRecorder, register, step_times
from .sde import draw, is_positive, prepare


# -- the variance-preserving view of any process --------------------------------------------------
def vp_log_coefs(process, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log c(t), log abar(t)) in float64 for t scalar or ``[B]``; finite at a time with sigma = 0."""
    t = t.to(torch.float64)
    la, ls = process.log_alpha(t), process.log_sigma(t)
    return 0.5 * torch.logaddexp(2 * la, 2 * ls), F.logsigmoid(2 * (la - ls))


def step_alpha(process, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Li's per-step (alpha, 1 - alpha) for the step t -> s < t: alpha = abar(t)/abar(s) (float64)."""
    log_a = vp_log_coefs(process, t)[1] - vp_log_coefs(process, s)[1]
    return torch.exp(log_a), -torch.expm1(log_a)


def score_vp(model: DiffusionModel, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Score of the VP variable y = x/c(t): c(t) * score(c(t) y, t).  One evaluation."""
    c = bcast(torch.exp(vp_log_coefs(model.process, t)[0]).to(y.dtype), y)
    return c * model.score(c * y, t)


def _scale(process, t, x, inverse=False):
    log_c = vp_log_coefs(process, t)[0]
    return bcast(torch.exp(-log_c if inverse else log_c).to(x.dtype), x)


def _x0_hat(process, y, t, s_t):
    """Tweedie in the VP variable: (y + (1 - abar) s)/sqrt(abar) (no evaluation)."""
    log_abar = vp_log_coefs(process, t)[1]
    return (y + bcast(-torch.expm1(log_abar).to(y.dtype), y) * s_t) * bcast(torch.exp(-0.5 * log_abar).to(y.dtype), y)


def virtual_prev_time(process, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Time u > t with abar(u) = abar(t) * alpha_t (alpha_t of the step t -> s), clamped to ``process.t_max``."""
    log_abar_t = vp_log_coefs(process, t)[1]
    log_abar_u = 2 * log_abar_t - vp_log_coefs(process, s)[1]
    lam_u = log_abar_u - torch.log(-torch.expm1(log_abar_u))
    return process.t_from_log_snr(lam_u).clamp(max=process.t_max).to(t.dtype)


def _momentum_update(y, s_t, s_up, a, b, a_up, b_up):
    """Li et al. eq. (2): Psi_t = (y + b/2 s_t + b^2/(4 b_up) (s_t - sqrt(a_up) s_up)) / sqrt(a)."""
    c = lambda v: bcast(v.to(y.dtype), y)  # noqa: E731
    out = y + c(b / 2) * s_t
    if s_up is not None:
        out = out + c(b**2 / (4 * b_up)) * (s_t - c(a_up.sqrt()) * s_up)
    return out / c(a.sqrt())


# -- deterministic samplers ------------------------------------------------------------------------
def accel_det_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                   u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step t -> s of the accelerated deterministic sampler (Li et al. 2024, eq. (2)); 2 evaluations.

    x ``[B, ...]`` at time t; u > t the previous (noisier) grid time giving alpha_{t+1} = abar(u)/abar(t); when u is
    None (first step) alpha_{t+1} := alpha_t and s_{t+1} is evaluated at ``virtual_prev_time``.
    Returns (x at time s, x0_hat at t)."""
    p = model.process
    a, b = step_alpha(p, t, s)
    if u is None:
        u, (a_up, b_up) = virtual_prev_time(p, t, s), (a, b)
    else:
        a_up, b_up = step_alpha(p, u, t)
    y = x * _scale(p, t, x, inverse=True)
    s_t = score_vp(model, y, t)
    y_minus = bcast(a_up.sqrt().to(x.dtype), x) * (y - bcast((b_up / 2).to(x.dtype), x) * s_t)  # Phi_t
    y_next = _momentum_update(y, s_t, score_vp(model, y_minus, u), a, b, a_up, b_up)  # Psi_t
    return y_next * _scale(p, s, x), _x0_hat(p, y, t, s_t)


def accel_det_1eval_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                         prev: tuple[torch.Tensor, torch.Tensor] | None = None):
    """One step t -> s of the 1-evaluation variant: s_{t+1} is the previous iterate's VP score (reused).

    ``prev`` = (u, s_vp(y_u, u)) from the previous step, or None (first step: DDIM-like Scheme 1).
    Returns (x at s ``[B, ...]``, new prev (t, s_vp(y_t, t)), x0_hat at t)."""
    p = model.process
    a, b = step_alpha(p, t, s)
    y = x * _scale(p, t, x, inverse=True)
    s_t = score_vp(model, y, t)
    if prev is None:
        y_next = _momentum_update(y, s_t, None, a, b, None, None)
    else:
        a_up, b_up = step_alpha(p, prev[0], t)
        y_next = _momentum_update(y, s_t, prev[1], a, b, a_up, b_up)
    return y_next * _scale(p, s, x), (t, s_t), _x0_hat(p, y, t, s_t)


def _run_det(model, x_T, ts, name, generator, callback, return_trajectory, progress):
    model, ts = prepare(model, x_T, ts)
    x, n, prev = x_T, ts.shape[0] - 1, None
    rec = TrajectoryRecorder(x_T, ts, return_trajectory)
    for i in tqdm(range(n), desc=name, disable=not progress, leave=False):
        t, s = step_times(ts, i, x)
        if name == "accel_det":
            x, x0_hat = accel_det_step(model, x, t, s, None if i == 0 else ts[i - 1].to(x))
        else:
            x, prev, x0_hat = accel_det_1eval_step(model, x, t, s, prev)
        rec.add(x)
        if callback is not None:
            callback(dict(i=i, t=s, x=x, x0_hat=x0_hat))
    return rec.finish(x, model.nfe)


@register("accel_det", order=2, evals_per_step=2, stochastic=False, default_grid="uniform_log_snr",
          reference="Li, Huang, Efimov, Wei, Chi & Chen 2024, eq. (2)")
def sample_accel_det(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                     callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False):
    """Accelerated deterministic sampler over ``ts`` (``[n+1]`` or ``[n+1, B]``); x_T ``[B, ...]``.
    Second order in the step size; NFE = 2n.  Returns x at ts[-1] or a Trajectory (deterministic steps)."""
    return _run_det(model, x_T, ts, "accel_det", generator, callback, return_trajectory, progress)


@register("accel_det_1eval", order=2, evals_per_step=1, stochastic=False, default_grid="uniform_log_snr",
          reference="Li, Huang, Efimov, Wei, Chi & Chen 2024, Scheme 2 (previous score reused)")
def sample_accel_det_1eval(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                           callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False):
    """1-evaluation accelerated deterministic sampler (two-step, like DPM-Solver++(2M)); NFE = n.
    Returns x at ts[-1] ``[B, ...]`` or a Trajectory."""
    return _run_det(model, x_T, ts, "accel_det_1eval", generator, callback, return_trajectory, progress)


# -- stochastic sampler ------------------------------------------------------------------------------
def accel_stoch_noise(process, x: torch.Tensor, t: torch.Tensor,
                      s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First stage (Phi_t of eq. (3)) as a Gaussian in the x scale: x^+ ~ N(x, c(t)^2 (1 - alpha_t)/2 I).
    Returns (mean = x, std scalar or ``[B]``); no model evaluation."""
    _, b = step_alpha(process, t, s)
    return x, (torch.exp(vp_log_coefs(process, t)[0]) * torch.sqrt(b / 2)).to(x.dtype)


def _stoch_step(model, x_plus, t, s):
    p = model.process
    a, b = step_alpha(p, t, s)
    y_plus = x_plus * _scale(p, t, x_plus, inverse=True)
    s_t = score_vp(model, y_plus, t)
    c_s = torch.exp(vp_log_coefs(p, s)[0])
    mean = (y_plus + bcast(b.to(x_plus.dtype), x_plus) * s_t) * bcast((c_s / a.sqrt()).to(x_plus.dtype), x_plus)
    return mean, (c_s * torch.sqrt(b / (2 * a))).to(x_plus.dtype), _x0_hat(p, y_plus, t, s_t)


def accel_stoch_transition(model: DiffusionModel, x_plus: torch.Tensor, t: torch.Tensor,
                           s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Second stage (Psi_t of eq. (3)) given x^+ at time t, as a Gaussian over x at time s < t:
    mean = c(s) (y^+ + (1 - alpha_t) s_vp(y^+, t))/sqrt(alpha_t), std = c(s) sqrt((1 - alpha_t)/(2 alpha_t)),
    y^+ = x^+/c(t).  One evaluation; pure in (model, x^+, t, s)."""
    mean, std, _ = _stoch_step(model, x_plus, t, s)
    return mean, std


@register("accel_stoch", order=1, evals_per_step=1, stochastic=True, options=("noise_last",),
          default_grid="uniform_log_snr", reference="Li, Huang, Efimov, Wei, Chi & Chen 2024, eq. (3)")
def sample_accel_stoch(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                       callback: Callback | None = None, return_trajectory: bool = False, noise_last: bool = False,
                       progress: bool = False):
    """Accelerated stochastic sampler over ``ts``; x_T ``[B, ...]``.  NFE = n.  ``noise_last=False`` skips the
    second-stage noise Z^+ on the last step.  Returns x at ts[-1] or a Trajectory with ``extras["x_plus"]``."""
    model, ts = prepare(model, x_T, ts)
    x, n, p = x_T, ts.shape[0] - 1, model.process
    rec, x_plus_all = TrajectoryRecorder(x_T, ts, return_trajectory), []
    for i in tqdm(range(n), desc="accel_stoch", disable=not progress, leave=False):
        t, s = step_times(ts, i, x)
        x_plus = draw(*accel_stoch_noise(p, x, t, s), generator)  # eq. (3): Y^+ = Phi_t(Y_t, Z_t)
        mean, std, x0_hat = _stoch_step(model, x_plus, t, s)  # eq. (3): Y_{t-1} = Psi_t(Y^+, Z^+)
        if (i < n - 1 or noise_last) and is_positive(std):
            x = draw(mean, std, generator)
            rec.add(x, mean, std)
        else:
            x = mean
            rec.add(x)
        x_plus_all.append(x_plus)
        if callback is not None:
            callback(dict(i=i, t=s, x=x, x0_hat=x0_hat, x_plus=x_plus))
    out = rec.finish(x, model.nfe)
    if return_trajectory:
        out.extras["x_plus"] = x_plus_all
    return out
