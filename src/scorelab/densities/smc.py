r"""Reference log Z by adaptive sequential Monte Carlo (annealed importance sampling with resampling and MALA moves).

Del Moral, Doucet & Jasra 2006 (SMC samplers); Neal 2001 (AIS); adaptive tempering by bisection on the effective
sample size (Jasra et al. 2011).  Used for the reference log Z of targets without a closed form (LGCP, Bayesian
logistic regression; posteriors.py) and tested on Gaussians of known log Z.

Work in whitened coordinates w of a Gaussian base N(m, C C^T): x = m + C w, w ~ N(0, I) at beta = 0.  With
rho_w(w) = rho(m + C w) |det C| (so that int rho_w = Z) and the log-ratio l(w) = log rho_w(w) - log N(w; 0, I),

=================  ====================================================================================
path               pi_beta(w) ~ N(w; 0, I) exp(beta l(w)),  0 = beta_0 < ... < beta_J = 1,  Z_0 = 1, Z_1 = Z
increment          log Z += log mean_i exp((beta_{j+1} - beta_j) l(w_i))   (particles equally weighted)
next beta          the largest beta_{j+1} whose incremental weights keep ESS >= ``ess_min`` n (bisection)
resampling         systematic, after every increment
move               ``mcmc_steps`` MALA steps targeting pi_{beta_{j+1}} (gradient -w + beta grad l), step size
                   adapted towards acceptance 0.6
=================  ====================================================================================

Bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015; ``bdmc_log_Z``) brackets log Z from both sides on a
fixed ladder (no resampling):

=================  ====================================================================================
forward AIS        w_0 ~ N(0, I); S = sum_j (beta_{j+1} - beta_j) l(w_j), w_{j+1} ~ MALA on pi_{beta_{j+1}} from w_j;
                   E exp(S) = Z, so log mean_i exp(S_i) is a stochastic lower bound and E S <= log Z (Jensen)
reverse AIS        w_J ~ pi_1 (exact posterior samples); S = sum_j (beta_{j+1} - beta_j) l(w_{j+1}), w_j ~ MALA on
                   pi_{beta_j} from w_{j+1}; E exp(-S) = 1 / Z, so -log mean_i exp(-S_i) is a stochastic upper
                   bound and E S >= log Z
mean bounds        mean_i S_i of each pass +- sd / sqrt(n): looser than the log-mean-exp ones but with a CLT error
                   bar, so "E S_forward <= log Z <= E S_reverse" can be checked to a stated confidence
gap                upper - lower -> 0 as the ladder refines; an upper bound is rigorous only from exact posterior
                   samples (simulated data: the latent that generated the counts is one), else from the forward run's
                   end points after ``burn`` more MALA steps at beta = 1
=================  ====================================================================================

For a target that is prior x likelihood with the prior as base (``reference_base`` and ``log_likelihood``
methods), l is the log-likelihood itself (no cancellation of two large quadratic forms).  The estimate of Z is
unbiased; log Z-hat is biased low by about Var(log Z-hat) / 2, so ``reference_log_Z`` reports the spread of
independent runs as its error bar.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class SMCResult:
    """One SMC run: log Z-hat, the temperature ladder, mean MALA acceptance, particles n, and times (s)."""

    log_Z: float
    betas: list[float] = field(default_factory=list)
    accept: float = float("nan")
    n: int = 0
    wall_time: float = 0.0
    cpu_time: float = 0.0


def log_ratio_fn(target, base: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[Callable, torch.Tensor,
                                                                                    torch.Tensor]:
    """(l, m, C): l(w) ``[B, d] -> [B]`` the log-ratio of the module docstring for the base N(m, C C^T); base None
    uses ``target.reference_base()`` and then, if the target has one, its ``log_likelihood`` (exact shortcut)."""
    if base is None:
        if not hasattr(target, "reference_base"):
            raise ValueError(f"target {target.name!r} has no reference_base(); pass base=(mean, chol)")
        m, C = target.reference_base()
        if hasattr(target, "log_likelihood"):
            return (lambda w: target.log_likelihood(m + w @ C.T)), m, C
    else:
        m, C = (torch.as_tensor(b, dtype=torch.float64) for b in base)
    d = target.dim
    if m.shape != (d,) or C.shape != (d, d):
        raise ValueError(f"base must be (mean [{d}], chol [{d}, {d}]), got {tuple(m.shape)}, {tuple(C.shape)}")
    logdet = float(torch.log(torch.diagonal(C).abs()).sum())

    def ell(w):
        log_n = -0.5 * w.pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)
        return target.log_prob_unnorm(m + w @ C.T) + logdet - log_n
    return ell, m, C


def _value_grad(ell: Callable, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        wr = w.detach().requires_grad_(True)
        v = ell(wr)
        (g,) = torch.autograd.grad(v.sum(), wr)
    return v.detach(), g


def _next_beta(ell_w: torch.Tensor, beta: float, ess_min: float) -> float:
    """Bisection for the largest beta' in (beta, 1] with ESS(exp((beta' - beta) l)) >= ess_min n."""
    def ess(b):
        lw = torch.nan_to_num((b - beta) * ell_w, nan=-math.inf)
        return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))) / len(lw)
    if ess(1.0) >= ess_min:
        return 1.0
    lo, hi = beta, 1.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ess(mid) >= ess_min else (lo, mid)
    return max(lo, beta + 1e-12)


def _systematic(log_w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    p = torch.softmax(log_w, 0)
    u = (torch.rand(1, generator=generator, dtype=p.dtype) + torch.arange(len(p), dtype=p.dtype)) / len(p)
    return torch.searchsorted(torch.cumsum(p, 0), u).clamp_max(len(p) - 1)


def _mala(ell: Callable, w, v, g, beta: float, h: float, steps: int, generator) -> tuple:
    """``steps`` MALA steps on pi_beta; returns (w, l(w), grad l(w), h adapted, mean acceptance)."""
    accs = []
    for _ in range(steps):
        grad = -w + beta * g
        wp = w + 0.5 * h**2 * grad + h * torch.randn(w.shape, generator=generator, dtype=w.dtype)
        vp, gp = _value_grad(ell, wp)
        gradp = -wp + beta * gp
        log_t = -0.5 * wp.pow(2).sum(1) + beta * vp - (-0.5 * w.pow(2).sum(1) + beta * v)
        fwd = -(wp - w - 0.5 * h**2 * grad).pow(2).sum(1) / (2 * h**2)
        bwd = -(w - wp - 0.5 * h**2 * gradp).pow(2).sum(1) / (2 * h**2)
        log_a = torch.nan_to_num(log_t + bwd - fwd, nan=-math.inf)
        acc = torch.log(torch.rand(len(w), generator=generator, dtype=w.dtype)) < log_a
        w, v, g = torch.where(acc[:, None], wp, w), torch.where(acc, vp, v), torch.where(acc[:, None], gp, g)
        a = float(acc.double().mean())
        accs.append(a)
        h *= math.exp(min(max(a - 0.6, -0.5), 0.5))
    return w, v, g, h, sum(accs) / len(accs)


def smc_log_Z(target, n: int = 512, base: tuple[torch.Tensor, torch.Tensor] | None = None, ess_min: float = 0.5,
              mcmc_steps: int = 5, step_size: float = 0.5, generator: torch.Generator | None = None,
              max_temps: int = 100_000) -> SMCResult:
    """Adaptive SMC estimate of log Z for ``target`` (module docstring) with ``n`` particles; base N(m, C C^T)
    given as (m ``[d]``, C ``[d, d]`` lower-triangular) or taken from ``target.reference_base()``.  float64."""
    if n < 2 or mcmc_steps < 1 or not 0 < ess_min < 1 or not step_size > 0:
        raise ValueError(f"need n >= 2, mcmc_steps >= 1, 0 < ess_min < 1, step_size > 0; got {n}, {mcmc_steps}, "
                         f"{ess_min}, {step_size}")
    t0, c0 = time.perf_counter(), time.process_time()
    ell, _, _ = log_ratio_fn(target, base)
    w = torch.randn(n, target.dim, generator=generator, dtype=torch.float64)
    v, g = _value_grad(ell, w)
    beta, log_Z, h, betas, accs = 0.0, 0.0, step_size, [0.0], []
    while beta < 1.0:
        if len(betas) > max_temps:
            raise ValueError(f"SMC needed more than max_temps={max_temps} temperatures")
        nb = _next_beta(v, beta, ess_min)
        lw = torch.nan_to_num((nb - beta) * v, nan=-math.inf)
        log_Z += float(torch.logsumexp(lw, 0)) - math.log(n)
        idx = _systematic(lw, generator)
        w, v, g, beta = w[idx], v[idx], g[idx], nb
        w, v, g, h, a = _mala(ell, w, v, g, beta, h, mcmc_steps, generator)
        betas.append(beta)
        accs.append(a)
    return SMCResult(log_Z, betas, sum(accs) / len(accs), n, time.perf_counter() - t0, time.process_time() - c0)


def reference_log_Z(target, repeats: int = 4, seed: int = 0, **kwargs) -> dict:
    """``repeats`` independent ``smc_log_Z`` runs (seeds seed, seed+1, ...): {"log_Z": mean of log Z-hat,
    "stderr": sd / sqrt(repeats), "sd", "runs", "temps", "accept", "cpu_time", "wall_time", "settings"}."""
    if repeats < 2:
        raise ValueError(f"a reference needs repeats >= 2 for its error bar, got {repeats}")
    res = [smc_log_Z(target, generator=torch.Generator().manual_seed(seed + r), **kwargs) for r in range(repeats)]
    lz = torch.tensor([r.log_Z for r in res], dtype=torch.float64)
    return {"log_Z": float(lz.mean()), "stderr": float(lz.std() / math.sqrt(repeats)), "sd": float(lz.std()),
            "runs": lz.tolist(), "temps": [len(r.betas) - 1 for r in res], "accept": [r.accept for r in res],
            "cpu_time": sum(r.cpu_time for r in res), "wall_time": sum(r.wall_time for r in res),
            "settings": {"repeats": repeats, "seed": seed, **{k: v for k, v in kwargs.items() if k != "base"}}}


def laplace_is_log_Z(target, n: int = 100_000, df: int = 10, generator: torch.Generator | None = None,
                     batch: int = 20_000) -> dict:
    """Independent check for low-dimensional near-Gaussian posteriors: importance sampling from a multivariate
    Student-t (``df`` degrees of freedom) at the mode with the inverse Hessian of -log rho as scale (a Laplace
    proposal with heavier tails).  Mode by L-BFGS from 0; Hessian by autograd (O(d^2) memory).  Returns {"log_Z",
    "stderr" (delta method: sd(w) / (sqrt(n) mean(w))), "ess" (normalized), "laplace" (the plain Laplace value)}."""
    if int(df) != df or df < 1 or n < 2:
        raise ValueError(f"need an integer df >= 1 and n >= 2, got df={df}, n={n}")
    d, df = target.dim, int(df)
    x = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -target.log_prob_unnorm(x[None])[0]
        loss.backward()
        return loss
    opt.step(closure)
    mode = x.detach()
    H = torch.autograd.functional.hessian(lambda z: -target.log_prob_unnorm(z[None])[0], mode)
    L = torch.linalg.cholesky(torch.linalg.inv(0.5 * (H + H.T)))
    laplace = float(target.log_prob_unnorm(mode[None])[0]) + 0.5 * d * math.log(2 * math.pi) + float(
        torch.log(torch.diagonal(L)).sum())
    lws = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        z = torch.randn(m, d, generator=generator, dtype=torch.float64)
        chi = torch.randn(m, df, generator=generator, dtype=torch.float64).pow(2).sum(1)  # chi^2_df
        u = z * torch.sqrt(df / chi)[:, None]  # multivariate t, unit scale
        log_q = (torch.lgamma(torch.tensor((df + d) / 2)) - torch.lgamma(torch.tensor(df / 2))
                 - 0.5 * d * math.log(df * math.pi) - 0.5 * (df + d) * torch.log1p(u.pow(2).sum(1) / df)
                 - torch.log(torch.diagonal(L)).sum())
        with torch.no_grad():
            lws.append(target.log_prob_unnorm(mode + u @ L.T) - log_q)
    lw = torch.cat(lws)
    log_Z = float(torch.logsumexp(lw, 0) - math.log(len(lw)))
    w = torch.exp(lw - lw.max())
    return {"log_Z": log_Z, "stderr": float(w.std() / (math.sqrt(len(w)) * w.mean())),
            "ess": float(w.sum() ** 2 / (w.pow(2).sum() * len(w))), "laplace": laplace}


@dataclass
class AISResult:
    """One annealed-importance-sampling pass over a fixed ladder: its bound on log Z (lower for forward, upper for
    reverse; module docstring), the per-chain log weights S ``[n]``, the end points ``w`` ``[n, d]`` (whitened),
    the mean MALA acceptance and CPU seconds."""

    bound: float
    log_w: torch.Tensor
    w: torch.Tensor
    accept: float
    cpu_time: float


def _ladder(betas) -> torch.Tensor:
    """``betas`` as a float64 tensor ``[J + 1]``, checked to increase strictly from 0 to 1."""
    b = torch.as_tensor(betas, dtype=torch.float64)
    if b.ndim != 1 or len(b) < 2 or float(b[0]) != 0.0 or float(b[-1]) != 1.0 or bool((b[1:] <= b[:-1]).any()):
        raise ValueError("betas must increase from 0 to 1 (e.g. SMCResult.betas)")
    return b


def refine_ladder(betas, points: int) -> torch.Tensor:
    """A ladder of ``points`` + 1 temperatures ``[points + 1]`` from 0 to 1, piecewise linear in the index of an
    increasing ladder ``betas`` (e.g. an adaptive SMC run's ``SMCResult.betas``): the same shape, finer steps."""
    b = _ladder(betas)
    if int(points) != points or points < 1:
        raise ValueError(f"points must be a positive integer, got {points}")
    u = torch.linspace(0, len(b) - 1, int(points) + 1, dtype=torch.float64)
    i = u.floor().long().clamp_max(len(b) - 2)
    return b[i] + (u - i) * (b[i + 1] - b[i])


def ais_log_Z(target, betas, n: int = 64, base: tuple[torch.Tensor, torch.Tensor] | None = None,
              mcmc_steps: int = 5, step_size: float = 0.5, start: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> AISResult:
    """Annealed importance sampling over the fixed ladder ``betas`` ``[J + 1]`` (0 -> 1) with ``n`` chains and
    ``mcmc_steps`` MALA steps per temperature (module docstring).  ``start`` None: the forward pass from the base
    (a stochastic lower bound of log Z).  ``start`` ``[n, d]`` (or ``[1, d]``, repeated), posterior samples in the
    target's coordinates x: the reverse pass from beta = 1 down to 0 (a stochastic upper bound; from one ``[1, d]``
    draw the chains share their start, so their spread is conditional on it).  float64."""
    if n < 1 or mcmc_steps < 1 or not step_size > 0:
        raise ValueError(f"need n >= 1, mcmc_steps >= 1, step_size > 0; got {n}, {mcmc_steps}, {step_size}")
    lad = _ladder(betas)
    c0 = time.process_time()
    ell, m, C = log_ratio_fn(target, base)
    if start is None:
        w = torch.randn(n, target.dim, generator=generator, dtype=torch.float64)
        order, sign = range(len(lad) - 1), 1.0
    else:
        x = torch.as_tensor(start, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != target.dim or x.shape[0] not in (1, n):
            raise ValueError(f"start must be [n, {target.dim}] or [1, {target.dim}] posterior samples, "
                             f"got {tuple(x.shape)}")
        w = torch.linalg.solve_triangular(C, (x - m).T, upper=False).T.expand(n, -1).clone()
        order, sign = range(len(lad) - 2, -1, -1), -1.0
    v, g = _value_grad(ell, w)
    S, h, accs = torch.zeros(n, dtype=torch.float64), step_size, []
    for j in order:
        S += (lad[j + 1] - lad[j]) * v
        nxt = float(lad[j + 1]) if sign > 0 else float(lad[j])
        w, v, g, h, a = _mala(ell, w, v, g, nxt, h, mcmc_steps, generator)
        accs.append(a)
    if bool(torch.isnan(S).any()):
        raise ValueError(f"AIS: {int(torch.isnan(S).sum())} of {n} chains have NaN log weights (the target's log "
                         "density returned NaN along the path)")
    bound = sign * (float(torch.logsumexp(sign * S, 0)) - math.log(n))
    return AISResult(bound, S, w, sum(accs) / len(accs), time.process_time() - c0)


def bdmc_log_Z(target, betas, n: int = 64, base: tuple[torch.Tensor, torch.Tensor] | None = None,
               mcmc_steps: int = 5, posterior: torch.Tensor | None = None, burn: int = 200,
               generator: torch.Generator | None = None) -> dict:
    """Bidirectional Monte Carlo (module docstring): a forward AIS pass (lower) and a reverse one (upper) on the
    ladder ``betas``.  ``posterior`` ``[n or 1, d]``: exact posterior samples to start the reverse pass (the upper
    bound is then rigorous); None: the forward pass's end points after ``burn`` MALA steps at beta = 1.  Returns
    {"lower", "upper", "gap" (log-mean-exp bounds), "lower_mean", "upper_mean", "se_lower_mean", "se_upper_mean"
    (mean bounds and their standard errors), "sd_forward", "sd_reverse" (spread of the per-chain log weights),
    "exact_start", "accept", "cpu_time", "temps"}."""
    exact = posterior is not None
    fwd = ais_log_Z(target, betas, n, base, mcmc_steps, generator=generator)
    c0 = time.process_time()
    if posterior is None:
        ell, m, C = log_ratio_fn(target, base)
        v, g = _value_grad(ell, fwd.w)
        w = _mala(ell, fwd.w, v, g, 1.0, 0.5, burn, generator)[0] if burn > 0 else fwd.w
        posterior = m + w @ C.T
    burn_cpu = time.process_time() - c0
    rev = ais_log_Z(target, betas, n, base, mcmc_steps, start=posterior, generator=generator)
    sd_f, sd_r = float(fwd.log_w.std()), float(rev.log_w.std())
    return {"lower": fwd.bound, "upper": rev.bound, "gap": rev.bound - fwd.bound,
            "lower_mean": float(fwd.log_w.mean()), "upper_mean": float(rev.log_w.mean()),
            "se_lower_mean": sd_f / math.sqrt(n), "se_upper_mean": sd_r / math.sqrt(n),
            "sd_forward": sd_f, "sd_reverse": sd_r, "exact_start": exact,
            "accept": 0.5 * (fwd.accept + rev.accept), "cpu_time": fwd.cpu_time + burn_cpu + rev.cpu_time,
            "temps": len(betas) - 1}
