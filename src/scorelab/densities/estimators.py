r"""Estimators for diffusion samplers: log Z by path-space importance sampling, the ELBO, ESS, moment errors, W2.

Berner, Richter & Ullrich 2022 (source 004, "compute log Z ... using importance sampling in path space");
Richter & Berner 2024, Sec. 4 (metrics).

Notation
--------
==============  =================================================================================
``log_w``       path log-weights ``[n]`` (controlled.py): E[w] = Z
``log_Z_is``    log (1/n sum_i w_i) = logsumexp(log_w) - log n  (consistent; biased low by Jensen for finite n)
``elbo``        mean(log_w) <= log Z (the variational lower bound; gap = KL(P^u | Q))
``elbo_se``     std(log_w) / sqrt(n): the Monte Carlo standard error of the ELBO estimate (CLT)
``ess``         (sum w)^2 / (n sum w^2) in (0, 1] (normalized effective sample size)
==============  =================================================================================
"""
from __future__ import annotations

import math

import numpy as np
import ot
import torch


def _check_logw(log_w: torch.Tensor) -> torch.Tensor:
    if log_w.ndim != 1 or log_w.numel() == 0:
        raise ValueError(f"log_w must be a non-empty [n] tensor, got shape {tuple(log_w.shape)}")
    return log_w.detach().to(torch.float64)


def log_Z_is(log_w: torch.Tensor) -> float:
    """Importance-sampling estimate log Z-hat = logsumexp(log_w) - log n (NaN weights count as -inf)."""
    lw = torch.nan_to_num(_check_logw(log_w), nan=-math.inf)
    return float(torch.logsumexp(lw, 0) - math.log(lw.numel()))


def elbo(log_w: torch.Tensor) -> float:
    """Lower bound E[log w] <= log Z."""
    return float(_check_logw(log_w).mean())


def ess(log_w: torch.Tensor) -> float:
    """Normalized effective sample size (sum w)^2 / (n sum w^2) in (0, 1]."""
    lw = torch.nan_to_num(_check_logw(log_w), nan=-math.inf)
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / lw.numel())


def moment_errors(x: torch.Tensor, target) -> dict[str, float]:
    """|E||x||^2 - exact| and |E||x||_1 - exact| for samples x ``[n, d]`` (keys present where the target knows
    its moments; else estimated from 10^5 exact target samples when it can sample)."""
    ref = target.moments()
    if ref is None:
        try:
            y = target.sample(100_000, torch.Generator().manual_seed(1234))
        except NotImplementedError:
            return {}
        ref = {"sq": float(y.pow(2).sum(1).mean()), "abs": float(y.abs().sum(1).mean())}
    x = x.detach().to(torch.float64)
    out = {"sq_err": abs(float(x.pow(2).sum(1).mean()) - ref["sq"])}
    if "abs" in ref:
        out["abs_err"] = abs(float(x.abs().sum(1).mean()) - ref["abs"])
    return out


def w2_exact(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W2 between two empirical measures (POT ``ot.emd2``, uniform weights; n up to a few thousand)."""
    x, y = x.detach().to(torch.float64).numpy(), y.detach().to(torch.float64).numpy()
    M = ot.dist(x, y)  # squared Euclidean
    return float(np.sqrt(ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), M, numItermax=10**7)))


def w2_sliced(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced W2 (POT ``ot.sliced_wasserstein_distance``, p = 2)."""
    x, y = x.detach().to(torch.float64).numpy(), y.detach().to(torch.float64).numpy()
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=n_proj, p=2, seed=seed))


def evaluate(sampler, target, n: int = 4096, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32, w2_n: int = 2000) -> tuple[dict[str, float], torch.Tensor]:
    """Draw n paths and report log Z-hat, ELBO (and its standard error ``elbo_se``), ESS, |Delta log Z| (where log Z
    is known), moment errors, mode weights (``target.mode_weights``, where the target knows its modes) and W2 (where
    the target samples).
    Returns (metrics, samples ``[n, d]``)."""
    path = sampler.sample(target, n, generator, dtype)
    lw, x = path.log_w, path.x
    finite = torch.isfinite(lw)
    m = {"log_Z_hat": log_Z_is(lw), "elbo": elbo(lw[finite]) if finite.any() else -math.inf, "ess": ess(lw),
         "frac_finite": float(finite.double().mean()),
         "elbo_se": float(lw[finite].double().std() / math.sqrt(int(finite.sum()))) if finite.sum() > 1 else math.nan}
    if target.log_Z is not None:
        m["log_Z"] = float(target.log_Z)
        m["dlogZ_is"] = abs(m["log_Z_hat"] - target.log_Z)
        m["dlogZ_elbo"] = abs(m["elbo"] - target.log_Z)
    xf = x[torch.isfinite(x).all(1)]
    m.update(moment_errors(xf, target))
    m.update(target.mode_weights(xf) or {})
    try:
        y = target.sample(w2_n, torch.Generator().manual_seed(4321))
        m["w2"] = w2_exact(xf[:w2_n], y) if target.dim <= 10 else w2_sliced(xf[:w2_n], y)
    except NotImplementedError:
        pass
    return m, x
