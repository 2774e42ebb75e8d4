r"""Stochastic samplers: DDPM ancestral sampling on any grid and Euler-Maruyama on the reverse SDE.

DDPM ancestral sampling (Ho et al. 2020, Alg. 2) is generalised to any process and grid through the forward-process
posterior q(x_s | x_t, x_0) between consecutive grid times s < t, with x_0 replaced by the model's x0_hat (Kingma et
al. 2021, eqs. 29-33).  Euler-Maruyama discretises the reverse SDE dx = [f x - g^2 score] dt + g dW_bar
(Song et al. 2021, eq. 6) with the "reverse diffusion" drift evaluated at the start of each step.

Notation (one step from time t to the smaller time s; x_t = alpha_t x_0 + sigma_t eps)
======================  ==========================================================================================
``alpha_{t|s}``         alpha_t / alpha_s: forward transition x_t | x_s ~ N(alpha_{t|s} x_s, sigma_{t|s}^2 I)
``r``                   exp(lambda_t - lambda_s) = alpha_{t|s}^2 sigma_s^2 / sigma_t^2 in [0, 1) (lambda = log-SNR)
``sigma_{t|s}^2``       sigma_t^2 - alpha_{t|s}^2 sigma_s^2 = (1 - r) sigma_t^2
posterior mean          (alpha_{t|s} sigma_s^2/sigma_t^2) x_t + (alpha_s sigma_{t|s}^2/sigma_t^2) x0_hat
                        = r (alpha_s/alpha_t) x_t + alpha_s (1 - r) x0_hat
``"small"`` variance    beta_tilde = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 = (1 - r) sigma_s^2  (the exact posterior's)
``"large"`` variance    beta = sigma_{t|s}^2 = (1 - r) sigma_t^2  (the forward step's variance)
``f``, ``g^2``          ``process.drift_coef``, ``process.diffusion_sq``
======================  ==========================================================================================

Why ``"large"`` is sigma_{t|s}^2: on a ``Discrete`` chain's own grid (t = i/N, s = (i-1)/N) alpha_{t|s}^2 = 1 - beta_i
and sigma_{t|s}^2 = (1 - abar_i) - (1 - beta_i)(1 - abar_{i-1}) = beta_i, which is DDPM's sigma_t^2 = beta_t
(Ho et al. 2020, Sec. 3.2).  (sigma_{t|s}^2 / alpha_{t|s}^2 = beta/(1 - beta) is the variance of the reverse Euler
step written in the x_{t-1} scale, as in Li et al.'s DDPM-type sampler; it is not Ho's choice.)  On the same grid the
posterior mean reduces to 1/sqrt(alpha_i) (x_i - beta_i/sqrt(1 - abar_i) eps_hat), Ho et al.'s Alg. 2, line 4.
All coefficients are computed in float64 from log-SNR differences (``expm1``), so they stay exact for tiny steps
and at a final time with sigma = 0 (r = 0).
"""
from __future__ import annotations

import torch

from .._utils import bcast
from ..core.denoisers import DiffusionModel
from .base import Callback, GridCoefs, combine, data_from_eps, eps_native, fsqrt, gaussian_step, register
from .loop import prepare, run_loop

VARIANCES = ("small", "large")


def posterior_coefs(process, t: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """Coefficients of q(x_s | x_t, x_0) for times s < t (scalars or ``[B]``), computed in float64, cast to t's dtype.

    Returns dict with ``c_x`` (on x_t), ``c_0`` (on x_0), ``var_small`` (beta_tilde), ``var_large`` (sigma_{t|s}^2)."""
    t64, s64 = t.to(torch.float64), s.to(torch.float64)
    one_minus_r = -torch.expm1(process.log_snr(t64) - process.log_snr(s64))
    alpha_s = process.alpha(s64)
    out = {
        "c_x": (1 - one_minus_r) * torch.exp(process.log_alpha(s64) - process.log_alpha(t64)),
        "c_0": alpha_s * one_minus_r,
        "var_small": one_minus_r * process.sigma(s64) ** 2,
        "var_large": one_minus_r * process.sigma(t64) ** 2,
    }
    return {k: v.to(t.dtype) for k, v in out.items()}


# -- DDPM ancestral sampling ----------------------------------------------------------------------
def ddpm_transition(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, *,
                    variance: str = "large") -> tuple[torch.Tensor, torch.Tensor]:
    """One DDPM ancestral step t -> s < t as a Gaussian (Ho et al. 2020, Alg. 2, line 4; eqs. 6-7).

    x: ``[B, ...]``; t, s: scalars or ``[B]``.  Returns ``(mean [B, ...], std)`` with std a scalar or ``[B]``:
    mean = posterior mean with x0_hat = model.x0(x, t), std^2 = beta_tilde (``"small"``) or sigma_{t|s}^2
    (``"large"``, = beta_t on a Discrete chain's own grid).  Pure in (model, x, t, s): differentiable in the model."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected one of {VARIANCES}")
    c = posterior_coefs(model.process, t, s)
    mean = bcast(c["c_x"], x) * x + bcast(c["c_0"], x) * model.x0(x, t)
    return mean, torch.sqrt(c["var_" + variance])


def _grid_posterior(g: GridCoefs, variance: str) -> tuple[list, list, list]:
    """``posterior_coefs`` of every step (c_x, c_0, std), computed once: floats (1-D grid) or ``[B]`` tensors."""
    c = posterior_coefs(g.process, g.ts64[:-1], g.ts64[1:])
    c = {k: v.tolist() if not g.per_sample else list(v.to(g.device).unbind(0)) for k, v in c.items()}
    return c["c_x"], c["c_0"], [fsqrt(v) for v in c["var_" + variance]]


def ddpm_grid_step(m: DiffusionModel, g: GridCoefs, variance: str, noisy: list[bool], generator):
    """DDPM's step over the grid ``g`` in ``loop.run_loop``'s format (also pc's predictor); ``noisy[i]``: whether
    step i draws its noise.  mean = c_x x + c_0 x0_hat (posterior mean), std from ``variance``."""
    c_x, c_0, std = g.memo(("ddpm", variance), lambda: _grid_posterior(g, variance))
    if g.fast and eps_native(m):
        return _ddpm_eps_step(m, g, variance, (c_x, c_0, std), noisy, generator)

    def step(i, x, state):
        x0_hat = m.x0(x, g.t[i])
        x_s, mean, sd = gaussian_step(combine(x, [(c_x[i], x), (c_0[i], x0_hat)]), std[i], noisy[i], generator)
        return x_s, x0_hat, mean, sd, state, None

    return step


def _ddpm_eps_step(m: DiffusionModel, g: GridCoefs, variance: str, k: tuple, noisy: list[bool], generator):
    """``ddpm_grid_step`` for an ``eps_native`` model on a 1-D grid: x0_hat = (x - sigma eps)/alpha folded into the
    mean's coefficients, mean = (c_x + c_0/alpha) x - (c_0 sigma/alpha) eps (two kernels); x0_hat computed only
    when a callback asks."""
    c_x, c_0, std = k
    cx = g.scalars(("ddpm_eps", variance), lambda: [c_x[i] + c_0[i] / g.a[i] for i in range(len(c_x))])
    ce = g.memo(("ddpm_eps", variance), lambda: [-c_0[i] * g.sg[i] / g.a[i] for i in range(len(c_x))])
    x0_hat = data_from_eps(g)

    def step(i, x, state):
        eps = m.eps(x, g.t[i])
        x_s, mean, sd = gaussian_step((x * cx[i]).add_(eps, alpha=ce[i]), std[i], noisy[i], generator)
        return x_s, lambda: x0_hat(x, eps, i), mean, sd, state, None

    return step


def _noisy(n: int, noise_last: bool) -> list[bool]:
    """Noise on every step but the last unless ``noise_last``."""
    return [True] * (n - 1) + [bool(noise_last)]


@register("ddpm", order=1, evals_per_step=1, stochastic=True, options=("variance", "noise_last"),
          reference="Ho et al. 2020, Alg. 2 (posterior q(x_s|x_t,x_0) on any grid)", default_grid="uniform_log_snr",
          weak_order=1, transition=ddpm_transition, transition_options=("variance",))
def sample_ddpm(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                callback: Callback | None = None, return_trajectory: bool = False, variance: str = "large",
                noise_last: bool = False, progress: bool = False):
    """DDPM ancestral sampling over the grid ``ts`` (``[n+1]`` or ``[n+1, B]``, strictly decreasing).

    x_T: ``[B, ...]``.  ``variance``: ``"large"`` (sigma_{t|s}^2, DDPM's beta_t) or ``"small"`` (beta_tilde).
    ``noise_last``: add noise on the last step too (Ho et al.'s Alg. 2 does not: z = 0 at t = 1; the SFT-PG toy
    sampler does, so every step is a Gaussian policy).  NFE = n.  Returns x at ts[-1] ``[B, ...]`` or a Trajectory."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected one of {VARIANCES}")
    m, ts = prepare(model, x_T, ts)
    g = GridCoefs.of(m.process, ts, x_T)
    step = ddpm_grid_step(m, g, variance, _noisy(ts.shape[0] - 1, noise_last), generator)
    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


# -- Euler-Maruyama on the reverse SDE -------------------------------------------------------------
def _em_coefs(g: GridCoefs, denoise_last: bool) -> list[tuple]:
    """Per step (h = t - s): (1 - f h, g^2 h, sqrt(g^2 h)) of mean and std, (1/alpha, sigma^2/alpha) of x0_hat.
    ``denoise_last``: a last step onto sigma = 0 is the denoiser alpha_s x0_hat, i.e. (alpha_s/alpha_t,
    alpha_s sigma_t^2/alpha_t, 0) (see ``em_grid_step``)."""
    f, g2 = g.sde()
    h = (g.ts64[:-1] - g.ts64[1:]).tolist() if not g.per_sample else \
        list((g.ts64[:-1] - g.ts64[1:]).to(g.device).unbind(0))
    k = [(1 - f[i] * h[i], g2[i] * h[i], fsqrt(g2[i] * h[i]), 1 / g.a[i], g.sg[i] ** 2 / g.a[i])
         for i in range(len(h))]
    n = len(h)
    if denoise_last and not bool(torch.any(torch.as_tensor(g.sg[n]) != 0)):  # every path ends at sigma = 0
        r = g.a[n] / g.a[n - 1]
        k[-1] = (r, r * g.sg[n - 1] ** 2, 0.0 * k[-1][2], *k[-1][3:])
    return k


def em_grid_step(m: DiffusionModel, g: GridCoefs, noisy: list[bool], generator, denoise_last: bool = True):
    """Euler-Maruyama's step over the grid ``g`` in ``loop.run_loop``'s format (also pc's predictor), h = t - s:
    mean = (1 - f h) x + g^2 h score, std = sqrt(g^2 h), x0_hat = (x + sigma^2 score)/alpha (lazy).

    ``denoise_last`` (used unless the last step is noisy): a last step onto a time with sigma = 0 returns the
    denoiser alpha_s x0_hat = (alpha_s/alpha_t)(x + sigma_t^2 score) instead of the Euler step.  The Euler step there
    over-corrects: on VE / EDM (g^2 = 2 t, h = t) its mean is x + 2 sigma_t^2 score = 2 x0_hat - x, a reflection
    through the denoised point that keeps all the noise of x (Euler-Maruyama at NFE 5 on the 8-D EDM panel member,
    same grid: held-out sliced W2 6.3 -> 0.40)."""
    denoise_last = denoise_last and not noisy[-1]
    k = g.memo(("euler_maruyama", denoise_last), lambda: _em_coefs(g, denoise_last))
    if g.fast and eps_native(m, score=True):  # score = -eps/sigma folded into the coefficients (two kernels)
        c0 = g.scalars(("euler_maruyama", denoise_last), lambda: [c[0] for c in k])
        ce = g.memo(("euler_maruyama_eps", denoise_last), lambda: [-c[1] / s for c, s in zip(k, g.sg, strict=False)])
        x0_hat = data_from_eps(g)

        def eps_step(i, x, state):
            eps = m.eps(x, g.t[i])
            x_s, mean, std = gaussian_step((x * c0[i]).add_(eps, alpha=ce[i]), k[i][2], noisy[i], generator)
            return x_s, lambda: x0_hat(x, eps, i), mean, std, state, None

        return eps_step

    def step(i, x, state):
        c = k[i]
        score = m.score(x, g.t[i])
        x_s, mean, std = gaussian_step(combine(x, [(c[0], x), (c[1], score)]), c[2], noisy[i], generator)
        return x_s, lambda: combine(x, [(c[3], x), (c[4], score)]), mean, std, state, None

    return step


def euler_maruyama_transition(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor,
                              s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler-Maruyama step t -> s < t of the reverse SDE (Song et al. 2021, eq. 6), h = t - s:
    mean = x - [f(t) x - g^2(t) score(x, t)] h, std = sqrt(g^2(t) h).  x ``[B, ...]``; std scalar or ``[B]``."""
    p, h = model.process, t - s
    f, g2 = bcast(p.drift_coef(t).to(x.dtype), x), p.diffusion_sq(t).to(x.dtype)
    score = model.score(x, t)
    return x - (f * x - bcast(g2, x) * score) * bcast(h, x), torch.sqrt(g2 * h)


@register("euler_maruyama", order=1, evals_per_step=1, stochastic=True, options=("noise_last",),
          reference="Song et al. 2021, eq. 6 (reverse SDE), Euler-Maruyama", default_grid="uniform_log_snr",
          weak_order=1, transition=euler_maruyama_transition)
def sample_euler_maruyama(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                          callback: Callback | None = None, return_trajectory: bool = False,
                          noise_last: bool = False, progress: bool = False):
    """Euler-Maruyama on the reverse SDE over ``ts``; strong order 1/2, weak order 1.  NFE = n.

    ``noise_last=False`` returns the last step's mean (Song et al.'s code: no noise on the final step).
    Returns x at ts[-1] ``[B, ...]`` or a Trajectory."""
    m, ts = prepare(model, x_T, ts)
    g = GridCoefs.of(m.process, ts, x_T)
    step = em_grid_step(m, g, _noisy(ts.shape[0] - 1, noise_last), generator)
    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)
