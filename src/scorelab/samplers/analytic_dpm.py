r"""Analytic-DPM: the optimal reverse variance from Gamma = E||eps_hat||^2/d, and the optimal step subsequence.

Bao, Li, Zhu & Zhang 2022, "Analytic-DPM" (ICLR), Thm. 1-2 and Sec. 4; source 002, "Optimal reverse process [BLZZ22]".

Notation (x_t = alpha_t x_0 + sigma_t eps; one reverse step goes from time t to an earlier time s < t)
--------------------------------------------------------------------------------------------------------------
=======================  ===================================================================================
``Gamma_t``              E_{q(x_t)} ||eps_hat(x_t, t)||^2 / d = sigma_t^2 E||grad log q_t||^2 / d   (Bao: Gamma_n)
``sigma2_ts``            sigma_{t|s}^2 = sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2  (DDPM's "beta" for a jump s -> t)
``beta_tilde``           sigma_s^2 / sigma_t^2 * sigma_{t|s}^2, variance of q(x_s | x_t, x_0)
``lambda^2``             eta^2 beta_tilde: variance of the DDIM family q_lambda(x_s | x_t, x_0) (eta=1: DDPM)
``mu_tilde``             alpha_s x0_hat + sqrt(sigma_s^2 - lambda^2) eps_hat   (the reverse mean)
``k``                    alpha_s - sqrt(sigma_s^2 - lambda^2) alpha_t / sigma_t   (coefficient of x_0 in mu_tilde)
=======================  ===================================================================================

Optimal variance (Bao et al. 2022, Thm. 1, written in alpha/sigma; for a DDPM chain alpha_t^2 = abar_n,
sigma_t^2 = 1 - abar_n it is their sigma*_n^2 = lambda_n^2 + (sqrt(bbar_n/alpha_n) - sqrt(bbar_{n-1} - lambda_n^2))^2
(1 - bbar_n E||grad log q_n||^2 / d)):

    sigma*^2 = lambda^2 + k^2 (sigma_t^2/alpha_t^2) (1 - Gamma_t)

since k^2 sigma_t^2/alpha_t^2 = (sigma_t alpha_s/alpha_t - sqrt(sigma_s^2 - lambda^2))^2.  Bounds (Thm. 2), used to
clip a Monte-Carlo estimate:  lambda^2 <= sigma*^2 <= lambda^2 + k^2 sigma_t^2/alpha_t^2, and, for data in [a, b]^d,
sigma*^2 <= lambda^2 + k^2 ((b - a)/2)^2.  At the last step (s = 0) lambda = 0 and sigma*^2 is the optimal decoder
variance.

Optimal subsequence (Sec. 4): with optimal variances, KL(q || p*) = const + sum_k J(tau_{k-1}, tau_k) where
J(s, t) = d/2 log(sigma*^2_{s|t} / lambda^2_{s|t}) for s >= 1 and J(0, t) = d/2 log(2 pi e sigma*^2_{0|t}) (the
decoder term); the K-step subsequence 0 = tau_0 < ... < tau_K = N of least total cost is found by dynamic
programming over the (N+1) x (N+1) cost matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._utils import progress as tqdm
from ..core.denoisers import DiffusionModel
from ..core.processes import Discrete, ForwardProcess
from ..core.schedules import check_steps
from .base import GridCoefs, check_grid, combine, data_from_eps, fsqrt, gaussian_step, register
from .loop import prepare, run_loop


# -- Gamma ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GammaEstimate:
    """Gamma_t = E||eps_hat(x_t, t)||^2 / d at times ``t [n]`` with Monte-Carlo standard errors ``std_err [n]``."""

    t: torch.Tensor
    gamma: torch.Tensor
    std_err: torch.Tensor


def estimate_gamma(model: DiffusionModel, x0: torch.Tensor, ts, *, kind: str = "norm", n_mc: int = 1,
                   batch_size: int | None = None, generator: torch.Generator | None = None,
                   progress: bool = False) -> GammaEstimate:
    """Monte-Carlo Gamma_t from data ``x0 [M, ...]`` at each time of ``ts`` (1-D, each in (0, t_max]).

    kind ``"norm"``: Gamma_t = E||eps_hat(x_t, t)||^2 / d (Bao et al. 2022, eq. 7, their estimator);
    ``"residual"``: Gamma_t = 1 - E||eps - eps_hat(x_t, t)||^2 / d, which gives the ELBO-optimal variance for the
    model's own mean (Bao et al. 2022b, "imperfect mean"; source 002's g_phi model); it is never > 1 and has far less
    variance where Gamma is near 1.  Both agree for the exact model.  ``n_mc`` draws of x_t per data point."""
    ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
    if ts.numel() < 1 or torch.any(ts <= 0) or torch.any(ts > model.process.t_max * (1 + 1e-9)):
        raise ValueError(f"ts must be times in (0, t_max={model.process.t_max}]")
    if int(n_mc) != n_mc or n_mc < 1 or kind not in ("norm", "residual"):
        raise ValueError(f"need a positive integer n_mc and kind 'norm' or 'residual', got {n_mc}, {kind!r}")
    bs, d = batch_size or x0.shape[0], x0[0].numel()
    means, ses = [], []
    with torch.no_grad():
        for t in tqdm(ts.tolist(), disable=not progress, desc="Gamma"):
            vals = []
            for xb in [xb for _ in range(n_mc) for xb in x0.split(bs)]:
                xt, eps = model.process.marginal_sample(xb, t, generator)
                e = model.eps(xt, t) - (eps if kind == "residual" else 0)
                v = e.reshape(xb.shape[0], -1).pow(2).sum(1).double() / d
                vals.append(1 - v if kind == "residual" else v)
            v = torch.cat(vals)
            means.append(v.mean())
            ses.append(v.std() / math.sqrt(v.numel()) if v.numel() > 1 else v.new_tensor(float("nan")))
    return GammaEstimate(ts, torch.stack(means), torch.stack(ses))


def gamma_gaussian(process: ForwardProcess, ts, var: float) -> torch.Tensor:
    """Closed-form Gamma_t for data N(m, var I): eps_hat = sigma (x_t - alpha m)/(alpha^2 var + sigma^2), so
    Gamma_t = sigma_t^2 / (alpha_t^2 var + sigma_t^2)."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    a2, s2 = process.alpha(ts) ** 2, process.sigma(ts) ** 2
    return s2 / (a2 * var + s2)


# -- optimal variances ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReverseVariance:
    """Per-step quantities of a jump t -> s (all ``float64`` tensors of the broadcast shape of (s, t)):
    lambda_sq (variance of the posterior family), sigma_sq (optimal, clipped when asked), lower and upper bounds,
    beta (sigma_{t|s}^2), and the mean coefficient k of x_0."""

    lambda_sq: torch.Tensor
    sigma_sq: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    beta: torch.Tensor
    k: torch.Tensor


def _ab(process: ForwardProcess, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) in float64; at t = 0 exactly (1, 0) for processes with alpha(0) = 1."""
    return process.alpha(t).double(), process.sigma(t).double()


def optimal_variance(process: ForwardProcess, s, t, gamma_t, *, eta: float = 1.0, clip: bool = True,
                     data_range: tuple[float, float] | None = None) -> ReverseVariance:
    """Analytic-DPM optimal reverse variance sigma*^2 of the jump t -> s (elementwise over tensors s < t) given
    Gamma_t (module doc; Bao et al. 2022, Thm. 1 and Thm. 2 for the clipping bounds)."""
    s, t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
    if torch.any(s >= t) or torch.any(s < 0):
        raise ValueError("need 0 <= s < t for every step")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    a_s, sg_s = _ab(process, s)
    a_t, sg_t = _ab(process, t)
    beta = sg_t**2 - torch.exp(2 * (torch.log(a_t) - torch.log(a_s))) * sg_s**2  # sigma_{t|s}^2
    lam2 = eta**2 * sg_s**2 / sg_t**2 * beta
    k = a_s - (sg_s**2 - lam2).clamp(min=0).sqrt() * a_t / sg_t
    hi = lam2 + k**2 * sg_t**2 / a_t**2
    if data_range is not None:
        lo_x, hi_x = data_range
        if not hi_x > lo_x:
            raise ValueError(f"data_range must be (a, b) with b > a, got {data_range}")
        hi = torch.minimum(hi, lam2 + k**2 * (0.5 * (hi_x - lo_x)) ** 2)
    sig2 = lam2 + k**2 * sg_t**2 / a_t**2 * (1 - torch.as_tensor(gamma_t, dtype=torch.float64))
    if clip:
        sig2 = torch.minimum(torch.maximum(sig2, lam2), hi)
    return ReverseVariance(lam2, sig2, lam2, hi, beta, k)


def grid_variances(process: ForwardProcess, ts, kind="analytic", *, gamma=None, eta: float = 1.0, clip: bool = True,
                   data_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Per-step variances ``[n]`` of the reverse steps ts[i] -> ts[i+1] of a decreasing grid ``ts [n+1]``:
    ``"analytic"`` (sigma*^2 from ``gamma [n]``, Gamma at ts[:-1]), ``"beta"`` (sigma_{t|s}^2, DDPM's large
    choice) or ``"lambda"`` (eta^2 beta_tilde: DDPM's small choice for eta=1, deterministic DDIM for eta=0)."""
    ts = check_grid(ts, process).to(torch.float64)
    if ts.ndim != 1:
        raise ValueError("grid_variances needs a 1-D time grid")
    g = torch.zeros(ts.numel() - 1, dtype=torch.float64) if gamma is None else torch.as_tensor(gamma).double()
    if kind == "analytic" and (gamma is None or g.shape != (ts.numel() - 1,)):
        raise ValueError(f"kind='analytic' needs gamma with one value per step ({ts.numel() - 1})")
    rv = optimal_variance(process, ts[1:], ts[:-1], g, eta=eta, clip=clip, data_range=data_range)
    if kind not in ("analytic", "beta", "lambda"):
        raise ValueError(f"kind must be 'analytic', 'beta' or 'lambda', got {kind!r}")
    return {"analytic": rv.sigma_sq, "beta": rv.beta, "lambda": rv.lambda_sq}[kind]


def analytic_variances(process: Discrete, gamma, steps=None, *, clip: bool = True,
                       data_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Optimal DDPM (eta = 1) variances ``[K]`` aligned with increasing ``steps`` tau_1..tau_K (default 1..N) of a
    ``Discrete`` chain (entry k: the jump tau_k -> tau_{k-1}, tau_0 = 0), from ``gamma [K]`` = Gamma at tau_k.
    This is the ``variances=`` argument of ``likelihood.discrete_elbo``."""
    steps = check_steps(process, steps, "Analytic-DPM")
    prev = torch.cat([torch.zeros(1, dtype=torch.long), steps[:-1]])
    g = torch.as_tensor(gamma, dtype=torch.float64).flatten()
    if g.shape != steps.shape:
        raise ValueError(f"gamma must have one value per step ({steps.numel()}), got {tuple(g.shape)}")
    return optimal_variance(process, prev.double() / process.N, steps.double() / process.N, g, clip=clip,
                            data_range=data_range).sigma_sq


# -- optimal subsequence (Sec. 4) ---------------------------------------------------------------------------------
def cost_matrix(process: Discrete, gamma_all, d: int, *, eta: float = 1.0, clip: bool = True,
                data_range: tuple[float, float] | None = None) -> torch.Tensor:
    """J[s, t] for 0 <= s < t <= N (inf elsewhere) from ``gamma_all [N]`` = Gamma at steps 1..N (module doc)."""
    if eta <= 0:
        raise ValueError("the KL cost needs eta > 0 (lambda^2 > 0); use eta=1 to choose steps for DDIM")
    N = process.N
    g = torch.as_tensor(gamma_all, dtype=torch.float64).flatten()
    if g.numel() != N:
        raise ValueError(f"gamma_all must hold Gamma at all {N} steps, got {g.numel()} values")
    s, t = torch.meshgrid(torch.arange(N + 1), torch.arange(N + 1), indexing="ij")
    mask = s < t
    J = torch.full((N + 1, N + 1), math.inf, dtype=torch.float64)
    rv = optimal_variance(process, s[mask].double() / N, t[mask].double() / N, g[t[mask] - 1], eta=eta, clip=clip,
                          data_range=data_range)
    first = s[mask] == 0
    if torch.any(rv.sigma_sq <= 0):
        raise ValueError("an optimal variance is <= 0 (a Gamma estimate >= 1): use more samples, "
                         "estimate_gamma(kind='residual') or data_range")
    J[mask] = torch.where(first, 0.5 * d * torch.log(2 * math.pi * math.e * rv.sigma_sq),
                          0.5 * d * torch.log(rv.sigma_sq / torch.where(first, 1.0, rv.lambda_sq)))
    return J


def subsequence_cost(J: torch.Tensor, steps) -> float:
    """Total cost sum_k J[tau_{k-1}, tau_k] of increasing ``steps`` tau_1..tau_K (tau_0 = 0)."""
    steps = torch.as_tensor(steps).long().flatten()
    prev = torch.cat([torch.zeros(1, dtype=torch.long), steps[:-1]])
    return float(J[prev, steps].sum())


def even_subsequence(N: int, K: int) -> torch.Tensor:
    """Evenly spaced steps tau_k = round(k N / K), k = 1..K (tau_K = N)."""
    if not 1 <= K <= N:
        raise ValueError(f"need 1 <= K <= N, got K={K}, N={N}")
    return torch.round(torch.arange(1, K + 1, dtype=torch.float64) * N / K).long()


def optimal_subsequence(J: torch.Tensor, K: int) -> tuple[torch.Tensor, float]:
    """Least-cost path 0 = tau_0 < tau_1 < ... < tau_K = N over the cost matrix ``J [N+1, N+1]`` (Bao et al. 2022,
    Sec. 4, dynamic programming).  Returns (steps tau_1..tau_K ``[K]``, total cost)."""
    N = J.shape[0] - 1
    if not 1 <= K <= N:
        raise ValueError(f"need 1 <= K <= N, got K={K}, N={N}")
    C = J[0].clone()  # C[t] = least cost of reaching 0 from t in k jumps (k = 1)
    back = []
    for _ in range(1, K):
        tot = C[:, None] + J  # [s, t]: cost(s in k-1 jumps) + J[s, t]
        C, arg = tot.min(0)
        back.append(arg)
    steps, t = [N], N
    for arg in reversed(back):
        t = int(arg[t])
        steps.append(t)
    return torch.tensor(steps[::-1], dtype=torch.long), float(C[N])


# -- sampler ------------------------------------------------------------------------------------------------------
def _cap_last_noise(v: torch.Tensor, ts: torch.Tensor, max_last_std: float | None) -> torch.Tensor:
    """Variances ``v [n]`` with the last step that lands on a time > 0 capped at ``max_last_std**2``."""
    if max_last_std is None:
        return v
    if not max_last_std >= 0:
        raise ValueError(f"max_last_std must be a nonnegative std, got {max_last_std}")
    pos = torch.nonzero(ts[1:].reshape(ts.shape[0] - 1, -1)[:, 0] > 0).flatten()
    if pos.numel() == 0:
        return v
    v = v.clone()
    v[pos[-1]] = v[pos[-1]].clamp(max=max_last_std**2)
    return v


def _folded_step(m, g: GridCoefs, c_eps: list, std: list, noisy: list, generator, extras: bool):
    """``sample_analytic_dpm``'s step without ``clip_x0`` on a 1-D grid: mu_tilde = alpha_s x0_hat + c_eps eps_hat
    with x0_hat = (x - sigma_t eps_hat)/alpha_t expanded onto (x, eps_hat): (alpha_s/alpha_t) x + (c_eps - alpha_s
    sigma_t/alpha_t) eps_hat; x0_hat itself only for a callback."""
    n = len(std)
    c_x = g.scalars("alpha_s/alpha_t", lambda: [g.a[i + 1] / g.a[i] for i in range(n)])
    c_e = [c_eps[i] - g.a[i + 1] * g.sg[i] / g.a[i] for i in range(n)]
    x0_of = data_from_eps(g)

    def step(i, x, state):
        eps = m.eps(x, g.t[i])
        x_s, mean, sd = gaussian_step((x * c_x[i]).add_(eps, alpha=c_e[i]), std[i], noisy[i], generator)
        extra = {"t": g.t[i], "s": g.t[i + 1], "mean": mean, "std": std[i]} if extras else None
        return x_s, lambda: x0_of(x, eps, i), mean, sd, state, extra

    return step


NEEDS_GAMMA = ("analytic_dpm needs Gamma: give a small data sample (--opt gamma_data=DATA.npy, a few hundred rows; "
               "Gamma is estimated on the grid), gamma=[one value per step], or variances=beta|lambda")


def _gamma_from_data(model: DiffusionModel, ts: torch.Tensor, gamma_data, x_T: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Gamma ``[n]`` at ts[:-1] (``estimate_gamma``, Bao et al. 2022, eq. 7) from ``gamma_data``: data ``[M, ...]``
    (a tensor, or the path of a .npy file, read without pickles)."""
    if isinstance(gamma_data, str):
        import numpy as np

        try:
            gamma_data = torch.from_numpy(np.load(gamma_data, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise ValueError(f"analytic_dpm: cannot read gamma_data {gamma_data!r}: {e}") from None
    x0 = torch.as_tensor(gamma_data).to(device=x_T.device, dtype=x_T.dtype)
    if x0.ndim < 1 or x0.shape[1:] != x_T.shape[1:] or x0.shape[0] < 2:
        raise ValueError(f"analytic_dpm: gamma_data must be >= 2 samples of shape {tuple(x_T.shape[1:])}, got "
                         f"{tuple(x0.shape)}")
    g = generator if generator is not None and generator.device == x0.device else None
    return estimate_gamma(model, x0, ts[:-1].reshape(-1).cpu(), generator=g).gamma


@register("analytic_dpm", order=0, evals_per_step=1, stochastic=True,
          options=("variances", "gamma", "eta", "clip", "data_range", "final_noise", "clip_x0", "max_last_std",
                   "gamma_data"),
          reference="Bao et al. 2022 (Analytic-DPM); Ho et al. 2020; Song et al. 2021 (DDIM)", needs=NEEDS_GAMMA)
def sample_analytic_dpm(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                        callback=None, return_trajectory: bool = False, variances="analytic", gamma=None,
                        eta: float = 1.0, clip: bool = True, data_range: tuple[float, float] | None = None,
                        final_noise: bool = False, clip_x0: bool = False, max_last_std: float | None = None,
                        gamma_data=None):
    """Ancestral DDPM/DDIM sampling x_s ~ N(mu_tilde(x_t, x0_hat), v I) over a decreasing grid ``ts [n+1]``.

    variances: ``"analytic"`` (Analytic-DPM, needs ``gamma [n]`` at ts[:-1]), ``"beta"``, ``"lambda"`` (see
    ``grid_variances``) or a ``[n]`` tensor.  eta sets the posterior family of the mean (1: DDPM, 0: DDIM).
    When the grid ends at t = 0 the last step returns its mean unless ``final_noise``.  x_T: ``[B, ...]``.

    Sample-quality devices of the Analytic-DPM reference code (applied to any variance choice; they change the
    sampler, not the ELBO's model): ``clip_x0`` clamps x0_hat into ``data_range`` (and recomputes eps_hat from it,
    Ho et al.'s "clip_denoised"); ``max_last_std`` caps the std of the last step that adds noise (the one landing on
    the smallest t > 0; their ``clip_sigma_idx=1``, with cap ``clip_pixel * bin * sqrt(pi/2)``, i.e. a mean absolute
    noise of ``clip_pixel`` quantization bins).  ``gamma_data``: data ``[M, ...]`` (or a .npy path) from which Gamma
    is estimated on the grid when ``variances="analytic"`` and no ``gamma`` is given; without either, ``ValueError``
    ``NEEDS_GAMMA``."""
    m, ts = prepare(model, x_T, ts)
    p = m.process
    if isinstance(variances, str) and variances == "analytic" and gamma is None:
        if gamma_data is None:
            raise ValueError(NEEDS_GAMMA)
        gamma = _gamma_from_data(model, ts, gamma_data, x_T, generator)
    v = grid_variances(p, ts, variances, gamma=gamma, eta=eta, clip=clip, data_range=data_range) \
        if isinstance(variances, str) else torch.as_tensor(variances, dtype=torch.float64).flatten()
    if v.shape != (ts.shape[0] - 1,) or torch.any(v < 0):
        raise ValueError(f"variances must be {ts.shape[0] - 1} nonnegative numbers (one per step)")
    if clip_x0 and data_range is None:
        raise ValueError("clip_x0=True needs data_range=(low, high), the range to clamp x0_hat into")
    v = _cap_last_noise(v, ts, max_last_std)
    lam2, g = grid_variances(p, ts, "lambda", eta=eta).tolist(), GridCoefs.of(p, ts, x_T)
    std = [float(u) for u in v.sqrt()]
    noisy = [not g.zero[i + 1] or final_noise for i in range(len(std))]
    c_eps = [fsqrt(g.sg[i + 1] ** 2 - lam2[i]) for i in range(len(std))]  # mu_tilde's coefficient of eps_hat

    if not clip_x0 and g.fast:  # x0_hat folded into the mean's coefficients (two kernels), computed lazily
        step = _folded_step(m, g, c_eps, std, noisy, generator, callback is not None)
        return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory)

    def step(i, x, state):
        (a_t, sg_t), a_s = g.c(i)[:2], g.a[i + 1]
        eps = m.eps(x, g.t[i])
        x0_hat = combine(x, [(1 / a_t, x), (-sg_t / a_t, eps)])
        if clip_x0:
            x0_hat = x0_hat.clamp(*data_range)
            eps = combine(x, [(1 / sg_t, x), (-a_t / sg_t, x0_hat)])
        x_s, mean, sd = gaussian_step(combine(x, [(a_s, x0_hat), (c_eps[i], eps)]), std[i], noisy[i], generator)
        extra = None if callback is None else {"t": g.t[i], "s": g.t[i + 1], "mean": mean, "std": std[i]}
        return x_s, x0_hat, mean, sd, state, extra

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory)
