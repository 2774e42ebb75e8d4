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
network is never queried outside its interval; on a ``Discrete`` chain u moves onto a state (``first_prev_time``).
Any first-order-consistent first step (local error O(h^2)) keeps the global order 2; the clamp and the move only
change the step at that order.

``accel_stoch`` records, per step, the Gaussian of the second stage given Y^+: p(x_{k+1} | x^+) =
N(c(t_{k+1}) (y^+ + (1 - alpha_k) s_vp(y^+, t_k))/sqrt(alpha_k), c(t_{k+1})^2 (1 - alpha_k)/(2 alpha_k) I), and stores
x^+ = c(t_k) y^+ in ``Trajectory.extras["x_plus"]``.  The first stage x -> x^+ does not involve the model, so this
log-prob carries the whole policy gradient of log p(x_{k+1}, x^+ | x_k); p(x_{k+1} | x_k) itself is not Gaussian.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._utils import bcast
from ..core.denoisers import DiffusionModel
from .base import (
    Callback,
    GridCoefs,
    combine,
    data_from_eps,
    eps_native,
    fexp,
    fexpm1,
    fsqrt,
    gaussian_sample,
    gaussian_step,
    on_chain_states,
    register,
)
from .loop import prepare, run_loop


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


def _vp(process, t: torch.Tensor) -> tuple:
    """(log c, log abar) at t: floats for a 0-d CPU time, float64 tensors otherwise (``vp_log_coefs``)."""
    lc, lab = vp_log_coefs(process, t)
    return (lc.item(), lab.item()) if lc.ndim == 0 and lc.device.type == "cpu" else (lc, lab)


def _step_coefs(vt: tuple, vs: tuple) -> tuple:
    """k = (c_t, c_s, alpha, 1 - alpha, log abar_t) of the step t -> s from (log c, log abar) at t and s."""
    la = vt[1] - vs[1]
    return fexp(vt[0]), fexp(vs[0]), fexp(la), -fexpm1(la), vt[1]


def _x0_terms(x, S, c_t, lab_t):
    """Tweedie in the VP variable, (y + (1 - abar) s_vp)/sqrt(abar) with y = x/c, s_vp = c S (S: score of x)."""
    r = fexp(-0.5 * lab_t)
    return combine(x, [(r / c_t, x), (-fexpm1(lab_t) * r * c_t, S)])


def _psi_coefs(k: tuple, up: tuple | None) -> tuple:
    """Li et al. eq. (2), Psi_t, in x: c_s (y + b/2 s_t + b^2/(4 b_up) (s_t - sqrt(a_up) s_up))/sqrt(a) with
    y = x/c_t, s_t = c_t S, s_up = f_up S_up; ``up`` = (f_up, a_up, b_up), or None (Scheme 1).  Returns the
    coefficients on (x, S) or (x, S, S_up)."""
    c_t, c_s, a, b = k[:4]
    q = c_s / fsqrt(a)
    if up is None:
        return q / c_t, q * (b / 2) * c_t
    f_up, a_up, b_up = up
    K = b * b / (4 * b_up)
    return q / c_t, q * (b / 2 + K) * c_t, -q * K * fsqrt(a_up) * f_up


def _psi(x, S, k: tuple, up: tuple | None):
    """``_psi_coefs`` applied; ``up`` = (S_up, f_up, a_up, b_up) or None."""
    c = _psi_coefs(k, None if up is None else up[1:])
    return combine(x, [(c[0], x), (c[1], S)] + ([] if up is None else [(c[2], up[0])]))


def _det_core(model, x, t, u, k: tuple, k_up: tuple):
    """Deterministic step with precomputed k (``_step_coefs``) and k_up = (c_u, a_up, b_up): s_t at (x, t),
    Phi_t (Y^- in x: c_u sqrt(a_up) (y - b_up/2 s_t)), s_up at (x^-, u), then Psi_t.  Returns (x_s, x0_hat as a
    zero-argument function: computed only when a callback asks)."""
    c_t, (c_u, a_up, b_up) = k[0], k_up
    S = model.score(x, t)
    r = c_u * fsqrt(a_up)
    S_up = model.score(combine(x, [(r / c_t, x), (-r * b_up / 2 * c_t, S)]), u)
    return _psi(x, S, k, (S_up, c_u, a_up, b_up)), lambda: _x0_terms(x, S, c_t, k[4])


def virtual_prev_time(process, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Time u > t with abar(u) = abar(t) * alpha_t (alpha_t of the step t -> s), clamped to ``process.t_max``."""
    log_abar_t = vp_log_coefs(process, t)[1]
    log_abar_u = 2 * log_abar_t - vp_log_coefs(process, s)[1]
    lam_u = log_abar_u - torch.log(-torch.expm1(log_abar_u))
    return process.t_from_log_snr(lam_u).clamp(max=process.t_max).to(t.dtype)


def first_prev_time(process, t: torch.Tensor, s: torch.Tensor, k: tuple) -> tuple:
    """The first step's s_{t+1} time u and (c_u, alpha_{t+1}, 1 - alpha_{t+1}) (module doc) for the step t -> s with
    ``_step_coefs`` k: u = ``virtual_prev_time`` with alpha_{t+1} := alpha_t.  On a ``Discrete`` chain with t a state
    below the top one, u moves to the nearest state above t and alpha_{t+1} = abar(u)/abar(t) (the step as if the grid
    had one more point, u): a network trained on integer steps is evaluated only where it was trained."""
    u = virtual_prev_time(process, t, s)
    if torch.as_tensor(t).ndim == 0 and on_chain_states(process, t) and float(t) * process.N < process.N - 0.5:
        u = process.snap_to_states(torch.stack([u, torch.as_tensor(t)]))[0].to(u.dtype)  # a state above t's
        vu = _vp(process, u)
        return u, (fexp(vu[0]),) + _step_coefs(vu, _vp(process, t))[2:4]
    return u, (fexp(_vp(process, u)[0]),) + k[2:4]


# -- deterministic samplers ------------------------------------------------------------------------
def accel_det_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                   u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step t -> s of the accelerated deterministic sampler (Li et al. 2024, eq. (2)); 2 evaluations.

    x ``[B, ...]`` at time t; u > t the previous (noisier) grid time giving alpha_{t+1} = abar(u)/abar(t); when u is
    None (first step) alpha_{t+1} := alpha_t and s_{t+1} is evaluated at ``virtual_prev_time``.
    Returns (x at time s, x0_hat at t)."""
    p = model.process
    vt, vs = _vp(p, t), _vp(p, s)
    k = _step_coefs(vt, vs)
    if u is None:
        u, k_up = first_prev_time(p, t, s, k)
    else:
        vu = _vp(p, u)
        k_up = (fexp(vu[0]),) + _step_coefs(vu, vt)[2:4]
    x_s, x0 = _det_core(model, x, t, u.to(x), k, k_up)
    return x_s, x0()


def accel_det_1eval_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                         prev: tuple[torch.Tensor, torch.Tensor] | None = None):
    """One step t -> s of the 1-evaluation variant: s_{t+1} is the previous iterate's VP score (reused).

    ``prev`` = (u, s_vp(y_u, u)) from the previous step, or None (first step: DDIM-like Scheme 1).
    Returns (x at s ``[B, ...]``, new prev (t, s_vp(y_t, t)), x0_hat at t)."""
    p = model.process
    vt = _vp(p, t)
    k = _step_coefs(vt, _vp(p, s))
    S = model.score(x, t)
    up = None if prev is None else (prev[1], 1.0, *_step_coefs(_vp(p, prev[0]), vt)[2:4])
    return _psi(x, S, k, up), (t, combine(x, [(k[0], S)])), _x0_terms(x, S, k[0], k[4])


def _xdt(v, x: torch.Tensor):
    """A float stays a float; a ``[B]`` coefficient goes to x's dtype (recorded stds are in x's dtype)."""
    return v if isinstance(v, float) else v.to(x.dtype)


def _grid_vp(p, g: GridCoefs) -> list:
    """(log c, log abar) at every grid time: floats (1-D grid) or float64 ``[B]`` tensors."""
    lc, lab = vp_log_coefs(p, g.ts64)
    if g.per_sample:
        return list(zip(lc.to(g.device).unbind(0), lab.to(g.device).unbind(0), strict=True))
    return list(zip(lc.tolist(), lab.tolist(), strict=True))


def _grid_ks(model: DiffusionModel, x_T: torch.Tensor, ts) -> tuple:
    """(counted model, grid, GridCoefs, per-step ``_step_coefs``) of a sampler call."""
    m, ts = prepare(model, x_T, ts)
    g = GridCoefs.of(m.process, ts, x_T)
    v = g.memo("vp", lambda: _grid_vp(m.process, g))
    return m, ts, g, g.memo("accel", lambda: [_step_coefs(v[i], v[i + 1]) for i in range(ts.shape[0] - 1)])


@register("accel_det", order=2, evals_per_step=2, stochastic=False, default_grid="uniform_log_snr",
          reference="Li, Huang, Efimov, Wei, Chi & Chen 2024, eq. (2)")
def sample_accel_det(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                     callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False):
    """Accelerated deterministic sampler over ``ts`` (``[n+1]`` or ``[n+1, B]``); x_T ``[B, ...]``.
    Second order in the step size; NFE = 2n.  Returns x at ts[-1] or a Trajectory (deterministic steps)."""
    m, ts, g, ks = _grid_ks(model, x_T, ts)
    u0, k_up0 = first_prev_time(m.process, g.ts64[0], g.ts64[1], ks[0])  # the first step's s_{t+1} (module doc)
    ups = [(u0.to(x_T), k_up0)] + \
        [(g.t[i - 1], (ks[i - 1][0],) + ks[i - 1][2:4]) for i in range(1, len(ks))]

    def step(i, x, state):
        return (*_det_core(m, x, g.t[i], ups[i][0], ks[i], ups[i][1]), None, None, state, None)

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


@register("accel_det_1eval", order=2, evals_per_step=1, stochastic=False, default_grid="uniform_log_snr",
          reference="Li, Huang, Efimov, Wei, Chi & Chen 2024, Scheme 2 (previous score reused)")
def sample_accel_det_1eval(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                           callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False):
    """1-evaluation accelerated deterministic sampler (two-step, like DPM-Solver++(2M)); NFE = n.
    Returns x at ts[-1] ``[B, ...]`` or a Trajectory.  History: the previous step's score S (and c(t) there)."""
    m, ts, g, ks = _grid_ks(model, x_T, ts)
    psi = g.memo("accel_det_1eval", lambda: [_psi_coefs(ks[i], (ks[i - 1][0], *ks[i - 1][2:4]) if i else None)
                                             for i in range(len(ks))])

    def step(i, x, S_prev):
        k, c = ks[i], psi[i]
        S = m.score(x, g.t[i])
        x_s = combine(x, [(c[0], x), (c[1], S)] if S_prev is None else [(c[0], x), (c[1], S), (c[2], S_prev)])
        return x_s, lambda: _x0_terms(x, S, k[0], k[4]), None, None, S, None

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


# -- stochastic sampler ------------------------------------------------------------------------------
def accel_stoch_noise(process, x: torch.Tensor, t: torch.Tensor,
                      s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First stage (Phi_t of eq. (3)) as a Gaussian in the x scale: x^+ ~ N(x, c(t)^2 (1 - alpha_t)/2 I).
    Returns (mean = x, std scalar or ``[B]``); no model evaluation."""
    _, b = step_alpha(process, t, s)
    return x, (torch.exp(vp_log_coefs(process, t)[0]) * torch.sqrt(b / 2)).to(x.dtype)


def _stoch_coefs(k: tuple) -> tuple:
    """Psi_t of eq. (3): mean = c_s (y^+ + b s_t(y^+))/sqrt(a) as coefficients on (x^+, S), std = c_s sqrt(b/(2a))
    (a float or ``[B]``)."""
    c_t, c_s, a, b = k[:4]
    q = c_s / fsqrt(a)
    return q / c_t, q * b * c_t, c_s * fsqrt(b / (2 * a))


def _stoch_core(model, x_plus, t, k: tuple, c: tuple | None = None):
    """Psi_t of eq. (3) given x^+ with precomputed k (and ``_stoch_coefs`` c): (mean, std, x0_hat as a zero-argument
    function).  One evaluation."""
    c = _stoch_coefs(k) if c is None else c
    S = model.score(x_plus, t)
    return combine(x_plus, [(c[0], x_plus), (c[1], S)]), c[2], lambda: _x0_terms(x_plus, S, k[0], k[4])


def _stoch_step(model, x_plus, t, s):
    p = model.process
    mean, std, x0_hat = _stoch_core(model, x_plus, t, _step_coefs(_vp(p, t), _vp(p, s)))
    return mean, torch.as_tensor(std, dtype=x_plus.dtype, device=x_plus.device), x0_hat


def accel_stoch_transition(model: DiffusionModel, x_plus: torch.Tensor, t: torch.Tensor,
                           s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Second stage (Psi_t of eq. (3)) given x^+ at time t, as a Gaussian over x at time s < t:
    mean = c(s) (y^+ + (1 - alpha_t) s_vp(y^+, t))/sqrt(alpha_t), std = c(s) sqrt((1 - alpha_t)/(2 alpha_t)),
    y^+ = x^+/c(t).  One evaluation; pure in (model, x^+, t, s)."""
    mean, std, _ = _stoch_step(model, x_plus, t, s)
    return mean, std


def _stoch_eps_step(m, g: GridCoefs, cs: list, noisy: list, generator):
    """``sample_accel_stoch``'s step for an ``eps_native`` model on a 1-D grid: S = -eps/sigma_t folded into the
    coefficients, mean = c_0 x^+ - (c_1/sigma_t) eps (two kernels); x0_hat only for a callback."""
    c0 = g.scalars("accel_stoch", lambda: [c[1] for c in cs])
    ce = g.memo("accel_stoch_eps", lambda: [-c[2] / g.sg[i] for i, c in enumerate(cs)])
    x0_of = data_from_eps(g)

    def step(i, x, state):
        c = cs[i]
        x_plus = gaussian_sample(x, c[0], generator)  # eq. (3): Y^+ = Phi_t(Y_t, Z_t)
        eps = m.eps(x_plus, g.t[i])
        x_s, mean, std = gaussian_step((x_plus * c0[i]).add_(eps, alpha=ce[i]), c[3], noisy[i], generator)
        return x_s, lambda: x0_of(x_plus, eps, i), mean, std, state, {"x_plus": x_plus}

    return step


@register("accel_stoch", order=1, evals_per_step=1, stochastic=True, options=("noise_last",),
          default_grid="uniform_log_snr", reference="Li, Huang, Efimov, Wei, Chi & Chen 2024, eq. (3)",
          weak_order=2, transition=accel_stoch_transition, pre_transition=accel_stoch_noise)
def sample_accel_stoch(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                       callback: Callback | None = None, return_trajectory: bool = False, noise_last: bool = False,
                       progress: bool = False):
    """Accelerated stochastic sampler over ``ts``; x_T ``[B, ...]``.  NFE = n.  ``noise_last=False`` skips the
    second-stage noise Z^+ on the last step.  Returns x at ts[-1] or a Trajectory with ``extras["x_plus"]``."""
    m, ts, g, ks = _grid_ks(model, x_T, ts)
    cs = g.memo("accel_stoch", lambda: [(_xdt(k[0] * fsqrt(k[3] / 2), x_T),) + _stoch_coefs(k)[:2]
                                        + (_xdt(_stoch_coefs(k)[2], x_T),) for k in ks])
    noisy = [True] * (len(ks) - 1) + [bool(noise_last)]
    if g.fast and eps_native(m, score=True):
        step = _stoch_eps_step(m, g, cs, noisy, generator)
        return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                        progress=progress, keep=("x_plus",))

    def step(i, x, state):
        c = cs[i]
        x_plus = gaussian_sample(x, c[0], generator)  # eq. (3): Y^+ = Phi_t(Y_t, Z_t)
        mean, std, x0_hat = _stoch_core(m, x_plus, g.t[i], ks[i], c[1:])  # eq. (3): Y_{t-1} = Psi_t(Y^+, Z^+)
        x_s, mean, std = gaussian_step(mean, std, noisy[i], generator)
        return x_s, x0_hat, mean, std, state, {"x_plus": x_plus}

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress, keep=("x_plus",))
