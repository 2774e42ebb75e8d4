r"""Likelihoods and variational bounds: probability-flow ODE log-likelihood, bits/dim, continuous and DDPM ELBOs.

Notation (x_t = alpha_t x_0 + sigma_t eps, time 0 = data, T = t_max = noise)
-------------------------------------------------------------------------
=====================  ============================================================================================
``f(t)``, ``g^2(t)``   drift coefficient (drift f x) and squared diffusion of the forward SDE
``f_tilde(x, t)``      probability-flow drift f(t) x - g^2(t)/2 score(x, t)   (Song et al. 2021, eq. 13)
``t_eps``              lower integration limit (``process.t_min`` by default)
``lam(t)``             log-SNR log(alpha^2/sigma^2); note d lam/dt = -g^2/sigma^2
``D``                  number of dimensions of one example
``beta_tilde``         variance of q(x_s | x_t, x_0) (Ho et al. 2020, eq. 7)
=====================  ============================================================================================

1. ODE likelihood (Song et al. 2021, App. D.2, eq. 39; source 002 "Reverse SDE and data likelihood"):
   log p_{t_eps}(x) = log p_T(x_T) + int_{t_eps}^T div f_tilde(x_t, t) dt, x_t the probability-flow solution started
   at x.  Integrated forward with torchdiffeq (dopri5); the divergence is exact (D backward passes) or Hutchinson's
   estimate v^T (d f_tilde/dx) v with fixed Rademacher or Gaussian probes (Grathwohl et al. 2019).  The probes do not
   change the trajectory, so each probe gives an unbiased estimate of the same integral and their spread is the
   standard error.  The prior term and the integral term are returned separately.

2. Bits/dim with uniform dequantization.  Pixels u in {0..255}^D, u_tilde = u + w, w ~ U[0,1)^D, model space
   x = scale * u_tilde - 1 (scale = 2/256 maps [0, 256) onto [-1, 1)).  Change of variables:
   log p(u_tilde) = log p_x(x) + D log(scale), and by Jensen log P(u) >= E_w log p(u + w), so
   bpd = -(log p_x(x) + D log(scale)) / (D log 2) = -log p_x(x) / (D log 2) + log2(1/scale)
   is an upper bound on the bits per dim of the 8-bit data (+7 for scale = 2/256; +8 for data in [0, 1), scale = 1/256;
   this is score_sde's ``offset = 7 - inverse_scaler(-1)``).

3. Continuous-time ELBO (Song, Durkan, Murray & Ermon 2021, Thm. 3, L^DSM; derived from the HJB verification theorem
   by Berner et al., source 004), truncated at t_eps with the Gaussian decoder p(x | x_eps) = N(x_eps/alpha_eps,
   (sigma_eps/alpha_eps)^2 I):
   log p(x) >= -KL(q(x_T|x) || p_T) - int_{t_eps}^T g^2/(2 sigma^2) E||eps - eps_hat(x_t, t)||^2 dt
               - D/2 log(2 pi e sigma_eps^2 / alpha_eps^2).
   This equals -L^DSM of Thm. 3 restricted to [t_eps, T] (its constant int D(g^2/(2 sigma^2) + f) dt is
   D/2 log(sigma_T^2/sigma_eps^2)) up to the term D log alpha_eps of the decoder.  Since g^2/sigma^2 = -d lam/dt,
   sampling t with density proportional to g^2/sigma^2 is sampling lam uniformly on [lam_T, lam_eps] (importance
   sampling, as in Kingma et al. 2021); each draw then contributes (lam_eps - lam_T)/2 ||eps - eps_hat||^2.

4. Discrete DDPM ELBO (Ho et al. 2020, eq. 5): ELBO = -L_T - sum_{k>=2} L_{k-1} - L_0 over steps tau_1 < ... < tau_K
   (all steps by default), with p(x_s | x_t) = N(mu_tilde(x_t, x0_hat), gamma^2 I) and the reverse variances gamma^2
   = beta (1 - abar_t/abar_s), beta_tilde (the first step's beta_tilde, which is 0, replaced by the second one's as in
   Ho et al.'s code) or any given per-step variances (e.g. Analytic-DPM's).  The decoder L_0 is a Gaussian
   N(x_0; x0_hat, gamma_1^2 I) for continuous data, or Ho et al.'s discretized Gaussian for 8-bit images scaled to
   [-1, 1] as x = 2u/255 - 1 (bins of half-width 1/255, open at -1 and 1): then the bound is on log P(u) itself and
   bits/dim = -ELBO / (D log 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from .._utils import as_tensor, bcast
from .._utils import progress as tqdm
from ..core.denoisers import CountingModel, DiffusionModel
from ..core.processes import Discrete, ForwardProcess
from ..core.schedules import check_steps

PROBES = ("rademacher", "gaussian")


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-example ODE likelihood and its pieces: log_likelihood = prior_logp + delta_logp (all ``[B]``).

    std_err: ``[B]`` standard error of the Hutchinson estimate over probes (0 for the exact divergence, NaN with a
    single probe); x_T: ``[B, ...]`` end point of the flow; nfe: model evaluations; t_eps: lower time limit."""

    log_likelihood: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    x_T: torch.Tensor
    nfe: int
    std_err: torch.Tensor
    t_eps: float


def _div_exact(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i d out_i / d x_i per example -> ``[B]`` (one backward pass per coordinate)."""
    flat, div = out.reshape(out.shape[0], -1), torch.zeros(out.shape[0], dtype=out.dtype, device=out.device)
    for i in range(flat.shape[1]):
        g = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0]
        div = div + g.reshape(g.shape[0], -1)[:, i]
    return div


def _div_hutchinson(out: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """v^T (d out/dx) v for each probe v in ``probes [P, B, ...]`` -> ``[B, P]``."""
    cols = []
    for v in probes:
        g = torch.autograd.grad((out * v).sum(), x, retain_graph=True)[0]
        cols.append((g * v).reshape(g.shape[0], -1).sum(1))
    return torch.stack(cols, 1)


def make_probes(shape: tuple[int, ...], n_probes: int, kind: str = "rademacher",
                generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Hutchinson probes ``[n_probes, *shape]`` with E[v v^T] = I: Rademacher (+-1) or standard Gaussian."""
    if kind not in PROBES:
        raise ValueError(f"unknown probe {kind!r}; expected one of {PROBES}")
    if int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes}")
    z = torch.randn((n_probes, *shape), generator=generator, dtype=dtype, device=device)
    return z if kind == "gaussian" else torch.sign(z) + (z == 0).to(dtype)


def ode_log_likelihood(
    model: DiffusionModel, x: torch.Tensor, *, t_eps: float | None = None, divergence: str = "exact",
    probe: str = "rademacher", n_probes: int = 1, generator: torch.Generator | None = None, rtol: float = 1e-5,
    atol: float = 1e-5, method: str = "dopri5", options: dict | None = None, prior_log_prob=None,
) -> LikelihoodResult:
    """Probability-flow log-likelihood log p_{t_eps}(x) of ``x [B, ...]`` (Song et al. 2021, App. D.2).

    divergence: ``"exact"`` (D backward passes per evaluation, for small D) or ``"hutchinson"`` with ``n_probes``
    probes of kind ``probe`` drawn once from ``generator``.  ``prior_log_prob(x_T) -> [B]`` replaces the process prior
    (e.g. an exact p_T in tests).  No gradient flows to model parameters."""
    p = model.process
    t_eps = float(p.t_min if t_eps is None else t_eps)
    if not 0 <= t_eps < p.t_max:
        raise ValueError(f"t_eps must be in [0, t_max={p.t_max}), got {t_eps}")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    m = CountingModel(model)
    D, n_col = x[0].numel(), 1 if divergence == "exact" else int(n_probes)
    probes = None if divergence == "exact" else make_probes(
        tuple(x.shape), n_probes, probe, generator, x.dtype, x.device)

    def func(t, state):
        xt = state[0]
        f, half_g2 = as_tensor(p.drift_coef(t), xt), 0.5 * as_tensor(p.diffusion_sq(t), xt)
        with torch.enable_grad():
            xt = xt.detach().requires_grad_(True)
            score = m.score(xt, t)
            div_s = _div_exact(score, xt)[:, None] if probes is None else _div_hutchinson(score, xt, probes)
        drift = bcast(f, xt) * xt - half_g2 * score  # f_tilde; its divergence is D f - g^2/2 div(score)
        return drift.detach(), (D * f - half_g2 * div_s).detach()

    ts = torch.tensor([t_eps, p.t_max], dtype=x.dtype, device=x.device)
    y0 = (x.detach(), torch.zeros(x.shape[0], n_col, dtype=x.dtype, device=x.device))
    xs, deltas = odeint(func, y0, ts, rtol=rtol, atol=atol, method=method, options=options)
    x_T, delta = xs[-1], deltas[-1]
    prior = (prior_log_prob or p.prior_log_prob)(x_T).to(x.dtype)
    if n_col > 1:
        se = delta.std(1) / math.sqrt(n_col)
    else:
        se = torch.full_like(prior, 0.0 if probes is None else float("nan"))
    dlp = delta.mean(1)
    return LikelihoodResult(prior + dlp, prior, dlp, x_T, m.nfe, se, t_eps)


# -- bits per dimension -------------------------------------------------------------------------------------------
def dequantize(pixels: torch.Tensor, *, generator: torch.Generator | None = None, scale: float = 2 / 256,
               dtype=torch.float32) -> torch.Tensor:
    """Uniformly dequantized model-space data x = scale (u + w) - 1, w ~ U[0, 1), for integer pixels u in 0..255."""
    u = pixels.to(dtype)
    if torch.any(u < 0) or torch.any(u > 255) or torch.any(u != u.round()):
        raise ValueError("pixels must be integers in 0..255 (8-bit data)")
    w = torch.rand(u.shape, generator=generator, dtype=dtype, device=u.device)
    return scale * (u + w) - 1


def bits_per_dim(log_likelihood: torch.Tensor, num_dims: int, *, scale: float = 2 / 256) -> torch.Tensor:
    """bpd of the 8-bit data from log p_x of dequantized model-space data x = scale (u + w) - 1 (module doc, 2).

    ``scale=1`` turns a bound already on the discrete data (e.g. a discretized-decoder ELBO) into bits/dim."""
    if num_dims < 1 or scale <= 0:
        raise ValueError(f"num_dims must be >= 1 and scale > 0, got {num_dims}, {scale}")
    return -(log_likelihood + num_dims * math.log(scale)) / (num_dims * math.log(2))


def image_bpd(model: DiffusionModel, pixels: torch.Tensor, *, generator: torch.Generator | None = None,
              scale: float = 2 / 256, **ode_kwargs) -> tuple[torch.Tensor, LikelihoodResult]:
    """Dequantize 8-bit ``pixels [B, ...]``, run ``ode_log_likelihood`` and return (bpd ``[B]``, its result)."""
    x = dequantize(pixels, generator=generator, scale=scale, dtype=ode_kwargs.pop("dtype", torch.float32))
    res = ode_log_likelihood(model, x, generator=generator, **ode_kwargs)
    return bits_per_dim(res.log_likelihood, x[0].numel(), scale=scale), res


# -- continuous-time ELBO ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ElboResult:
    """Per-example bound and its pieces (``[B]``): elbo = -prior_kl - diffusion - reconstruction.

    std_err: Monte-Carlo standard error of ``elbo``; nfe: model evaluations."""

    elbo: torch.Tensor
    std_err: torch.Tensor
    prior_kl: torch.Tensor
    diffusion: torch.Tensor
    reconstruction: torch.Tensor
    nfe: int


def gaussian_prior_kl(process: ForwardProcess, x0: torch.Tensor, t: float | None = None) -> torch.Tensor:
    """KL(q(x_t | x0) || N(0, prior_std^2 I)) at t (default t_max) per example -> ``[B]`` (closed form)."""
    t = as_tensor(process.t_max if t is None else t, x0)
    a2, s2, p2 = process.alpha(t) ** 2, process.sigma(t) ** 2, process.prior_std**2
    D, sq = x0[0].numel(), x0.reshape(x0.shape[0], -1).pow(2).sum(1)
    return 0.5 * (D * (s2 / p2 - 1 - torch.log(s2 / p2)) + a2 * sq / p2)


def continuous_elbo(model: DiffusionModel, x: torch.Tensor, *, n_samples: int = 16, t_eps: float | None = None,
                    importance: bool = True, generator: torch.Generator | None = None,
                    progress: bool = False) -> ElboResult:
    """Continuous-time ELBO of ``x [B, ...]`` (module doc, 3) with ``n_samples`` draws of (t, eps) per example.

    importance=True samples lam uniformly (density of t proportional to g^2/sigma^2); False samples t uniformly."""
    p = model.process
    t_eps = float(p.t_min if t_eps is None else t_eps)
    if not 0 < t_eps < p.t_max or n_samples < 2:
        raise ValueError(f"need 0 < t_eps < t_max and n_samples >= 2, got t_eps={t_eps}, n_samples={n_samples}")
    te, tT = as_tensor(t_eps, x), as_tensor(p.t_max, x)
    lam_eps, lam_T = p.log_snr(te), p.log_snr(tT)
    B, D, vals = x.shape[0], x[0].numel(), []
    for _ in tqdm(range(n_samples), disable=not progress, desc="ELBO"):
        u = torch.rand(B, generator=generator, dtype=x.dtype, device=x.device)
        if importance:
            t = p.t_from_log_snr(lam_T + u * (lam_eps - lam_T)).to(x.dtype).clamp(t_eps, p.t_max)
            w = 0.5 * (lam_eps - lam_T) * torch.ones_like(t)
        else:
            t = te + u * (tT - te)
            w = 0.5 * (tT - te) * p.diffusion_sq(t) / p.sigma(t) ** 2
        xt, eps = p.marginal_sample(x, t, generator)
        err = (eps - model.eps(xt, t)).reshape(B, -1).pow(2).sum(1)
        vals.append(w * err)
    vals = torch.stack(vals, 1).detach()
    diffusion, se = vals.mean(1), vals.std(1) / math.sqrt(n_samples)
    prior_kl = gaussian_prior_kl(p, x)
    recon = 0.5 * D * (math.log(2 * math.pi * math.e) + 2 * (p.log_sigma(te) - p.log_alpha(te))) * torch.ones_like(se)
    return ElboResult(-prior_kl - diffusion - recon, se, prior_kl, diffusion, recon, n_samples)


# -- discrete DDPM ELBO --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiscreteElboResult:
    """Per-example DDPM bound: elbo = -prior_kl - terms.sum(1) - decoder_nll (``[B]``).

    terms: ``[B, K-1]`` the KL terms L_{k-1} for k = 2..K (increasing time); std_err: Monte-Carlo standard error
    (NaN when ``n_mc == 1``); steps: the step indices tau_1..tau_K; variances: the reverse variances used ``[K]``."""

    elbo: torch.Tensor
    std_err: torch.Tensor
    prior_kl: torch.Tensor
    terms: torch.Tensor
    decoder_nll: torch.Tensor
    steps: torch.Tensor
    variances: torch.Tensor
    nfe: int


def posterior_coefs(abar_s: torch.Tensor, abar_t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q(x_s | x_t, x_0) of a VP chain for s < t (Ho et al. 2020, eqs. 6-7, with skips):
    mean c0 x_0 + ct x_t, variance beta_tilde; also beta = 1 - abar_t/abar_s.  Returns (c0, ct, beta_tilde, beta)."""
    beta = -torch.expm1(torch.log(abar_t) - torch.log(abar_s))
    c0 = abar_s.sqrt() * beta / (1 - abar_t)
    ct = (abar_t / abar_s).sqrt() * (1 - abar_s) / (1 - abar_t)
    return c0, ct, (1 - abar_s) / (1 - abar_t) * beta, beta


def reverse_variances(process: Discrete, steps, variances="beta_tilde") -> torch.Tensor:
    """Per-step reverse variances ``[K]`` (entry k: p(x_{tau_{k-1}} | x_{tau_k}), tau_0 = 0): ``"beta"``,
    ``"beta_tilde"`` (first entry replaced by the second, Ho et al.'s clipping) or a given ``[K]`` tensor."""
    steps = check_steps(process, steps, "the DDPM reverse variances")
    ab = process.alpha_bar
    prev = torch.cat([torch.zeros(1, dtype=torch.long), steps[:-1]])
    _, _, bt, b = posterior_coefs(ab[prev], ab[steps])
    if isinstance(variances, str):
        if variances == "beta":
            return b
        if variances == "beta_tilde":
            return torch.cat([bt[1:2] if bt.numel() > 1 else b[:1], bt[1:]])
        raise ValueError(f"variances must be 'beta', 'beta_tilde' or a tensor, got {variances!r}")
    v = torch.as_tensor(variances, dtype=torch.float64).flatten()
    if v.shape != steps.shape or torch.any(v <= 0):
        raise ValueError(f"variances must be {steps.numel()} positive numbers (one per step), got {tuple(v.shape)}")
    return v


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                                        bin_half_width: float = 1 / 255) -> torch.Tensor:
    """log P of 8-bit data x in [-1, 1] (grid 2u/255 - 1) under N(mean, std^2) integrated over each pixel's bin,
    the end bins open to -inf / +inf (Ho et al. 2020, eq. 13), summed per example -> ``[B]``."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device).expand_as(mean)
    lo = torch.where(x < -1 + 1e-3, torch.full_like(x, -math.inf), (x - bin_half_width - mean) / std)
    hi = torch.where(x > 1 - 1e-3, torch.full_like(x, math.inf), (x + bin_half_width - mean) / std)
    # log(Phi(hi) - Phi(lo)) evaluated in the tail where it is accurate (reflect when the bin lies right of 0)
    right = (lo + hi) > 0
    a, b = torch.where(right, -hi, lo), torch.where(right, -lo, hi)
    lb, la = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    lp = lb + torch.log1p(-torch.exp((la - lb).clamp(max=0.0)).clamp(max=1 - 1e-12))
    return lp.reshape(lp.shape[0], -1).sum(1)


def _step_term(model, x0, s, t, var_k, gen, decoder):
    """One MC draw of L_{k-1} (s >= 1) or the decoder NLL (s = 0) for the step t -> s -> ``[B]``."""
    p = model.process
    ab = p.alpha_bar
    c0, ct, bt, _ = posterior_coefs(ab[s], ab[t])
    xt, _ = p.marginal_sample(x0, t / p.N, gen)
    x0_hat = model.x0(xt, torch.full((x0.shape[0],), t / p.N, dtype=x0.dtype, device=x0.device))
    D, g2 = x0[0].numel(), float(var_k)
    sq = (x0 - x0_hat).reshape(x0.shape[0], -1).pow(2).sum(1)
    if s == 0:  # decoder: mean x0_hat (c0 = 1, ct = 0)
        if decoder == "discretized":
            return -discretized_gaussian_log_likelihood(x0, x0_hat, torch.tensor(math.sqrt(g2), dtype=x0.dtype))
        return 0.5 * (D * math.log(2 * math.pi * g2) + sq / g2)
    r = float(bt) / g2
    return 0.5 * (D * (r - 1 - math.log(r)) + float(c0) ** 2 * sq / g2)


def discrete_elbo(model: DiffusionModel, x0: torch.Tensor, *, variances="beta_tilde", steps=None,
                  decoder: str = "gaussian", n_mc: int = 1, generator: torch.Generator | None = None,
                  progress: bool = False) -> DiscreteElboResult:
    """DDPM ELBO (module doc, 4) of ``x0 [B, ...]`` for a model on a ``Discrete`` process, per example.

    steps: increasing step indices tau_1..tau_K (default all 1..N); the chain jumps tau_k -> tau_{k-1}.
    variances: see ``reverse_variances``.  decoder: ``"gaussian"`` (continuous data) or ``"discretized"`` (8-bit
    data on the grid 2u/255 - 1).  n_mc: draws of x_t per step (``n_mc >= 2`` gives a standard error)."""
    p = model.process
    steps = check_steps(p, steps, "the discrete ELBO")
    var = reverse_variances(p, steps, variances)
    if decoder not in ("gaussian", "discretized"):
        raise ValueError(f"decoder must be 'gaussian' or 'discretized', got {decoder!r}")
    if int(n_mc) != n_mc or n_mc < 1:
        raise ValueError(f"n_mc must be a positive integer, got {n_mc}")
    prev = [0] + steps[:-1].tolist()
    cols, var_sum = [], torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    with torch.no_grad():
        for k in tqdm(range(len(prev)), disable=not progress, desc="DDPM ELBO"):
            draws = torch.stack([_step_term(model, x0, prev[k], int(steps[k]), var[k], generator, decoder)
                                 for _ in range(n_mc)], 1)
            cols.append(draws.mean(1))
            var_sum = var_sum + (draws.var(1) / n_mc if n_mc > 1 else float("nan"))
    prior_kl = gaussian_prior_kl(p, x0, float(steps[-1]) / p.N)
    terms = torch.stack(cols[1:], 1) if len(cols) > 1 else x0.new_zeros(x0.shape[0], 0)
    elbo = -prior_kl - terms.sum(1) - cols[0]
    return DiscreteElboResult(elbo, var_sum.sqrt(), prior_kl, terms, cols[0], steps, var, len(prev) * n_mc)
