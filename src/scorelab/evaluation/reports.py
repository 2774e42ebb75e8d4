r"""Reports: the metric summaries of ``scorelab evaluate``, ``sample`` and ``likelihood`` as library functions.

Notation
--------
==================  ==============================================================================================
``x``               samples ``[N, ...]`` (flattened to ``[N, D]`` for the metrics)
``y``               reference samples ``[M, ...]`` of the same event shape
``gm``              an exact ``GaussianMixture`` oracle (its law P); ``y ~ P`` fresh exact samples
``MMD^2(x, P)``     unbiased MMD^2 to the exact law (``metrics.mmd2_to_mixture_by_bandwidth``: no two-sample floor)
``SW2``             sliced Wasserstein-2 (``metrics.sliced_w2``); its two-sample floor SW2(y, y') at size N
``log p(x)``        probability-flow ODE log-likelihood (``likelihood.ode_log_likelihood``), nats
==================  ==============================================================================================

Each function returns a plain ``dict`` of floats (JSON-ready); bad input raises ``ValueError``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.analytic import GaussianMixture
from ..core.denoisers import DiffusionModel
from . import metrics


def oracle_report(x: torch.Tensor, gm: GaussianMixture, reference: str = "oracle", seed: int = 12345) -> dict:
    """Samples ``x [N, ...]`` against an exact mixture: unbiased MMD^2 to the exact law (overall and per bandwidth),
    mode-weight TV / coverage / outliers, and SW2 to a fresh exact sample of size N with that size's two-sample
    floor for scale (exact samples drawn with ``seed``)."""
    xf = x.reshape(len(x), -1).double()
    if xf.shape[1] != gm.d or len(xf) < 2:
        raise ValueError(f"the oracle {reference} has d={gm.d}; got {len(xf)} samples with {xf.shape[1]} "
                         "coordinates (need >= 2 samples of d coordinates)")
    mmd = metrics.mmd2_to_mixture_by_bandwidth(xf, gm)
    ms = metrics.mode_stats(xf, gm)
    g = torch.Generator().manual_seed(seed)
    y, y2 = gm.sample(len(xf), g), gm.sample(len(xf), g)
    return {"n_samples": len(xf), "reference": reference, "mmd2_to_exact": mmd["mmd2"],
            "mmd2_to_exact_per_bandwidth": {f"h={h:.4g}": v for h, v in mmd["per_bandwidth"].items()},
            "mode_tv": ms["tv"], "mode_coverage": ms["coverage"], "outlier_fraction": ms["outlier_fraction"],
            "sliced_w2": metrics.sliced_w2(xf, y), "sliced_w2_two_sample_floor": metrics.sliced_w2(y2, y)}


def reference_report(x: torch.Tensor, y: torch.Tensor, max_points: int = 2000) -> dict:
    """Samples ``x [N, ...]`` against reference samples ``y [M, ...]``: SW2, unbiased MMD^2 and (D <= 16) exact W2
    on the first ``max_points`` of each; on 8x8 digits also FID and precision/recall in the digits features."""
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"samples have shape {tuple(x.shape[1:])} but the reference has {tuple(y.shape[1:])}")
    xf, yf = x.reshape(len(x), -1), y.reshape(len(y), -1)
    res: dict[str, Any] = {"n_samples": len(x), "n_reference": len(y)}
    res["sliced_w2"] = metrics.sliced_w2(xf, yf)
    res["mmd2_unbiased"] = metrics.mmd2_unbiased(xf[:max_points], yf[:max_points])
    if xf.shape[1] <= 16:
        res["w2_exact"] = metrics.w2_exact(xf[:max_points], yf[:max_points])
    if tuple(x.shape[1:]) == (1, 8, 8):
        res["fid_digits"] = metrics.fid_digits(x, y)
        res.update({f"digits_{k}": v for k, v in metrics.precision_recall(
            metrics.digits_features(y), metrics.digits_features(x)).items()})
    return res


def sample_oracle_metrics(x: torch.Tensor, gm: GaussianMixture, seed: int = 0, max_reference: int = 20000) -> dict:
    """The two numbers ``scorelab sample`` adds on an oracle: SW2 to ``min(N, max_reference)`` exact samples (drawn
    with ``seed``) and the mode-weight TV."""
    ref = gm.sample(min(len(x), max_reference), torch.Generator().manual_seed(seed))
    xf = x.reshape(len(x), -1)
    return {"sliced_w2_to_target": metrics.sliced_w2(xf, ref.reshape(len(ref), -1)),
            "mode_tv": metrics.mode_stats(xf, gm)["tv"]}


def likelihood_report(model: DiffusionModel, x: torch.Tensor, *, divergence: str = "exact", rtol: float = 1e-5,
                      atol: float = 1e-5, seed: int = 0, pixel_scale: float = 2 / 256, elbo: bool = False,
                      elbo_samples: int = 16, variances: str = "beta_tilde",
                      oracle: GaussianMixture | None = None) -> dict:
    """Mean ODE log-likelihood of ``x [N, ...]`` with its standard error and the negative log-likelihood per
    dimension ``nll_nats_per_dim`` (nats, -mean log p / D); on images ``[N, C, H, W]`` also bits/dim of 8-bit
    pixels (bin width ``pixel_scale``); with ``elbo`` the ELBOs (``elbos``); with the exact ``oracle`` its mean
    log p(x)."""
    from .likelihood import bits_per_dim, ode_log_likelihood

    res = ode_log_likelihood(model, x, divergence=divergence, rtol=rtol, atol=atol,
                             generator=torch.Generator().manual_seed(seed))
    ll = res.log_likelihood
    out = {"mean_log_likelihood": float(ll.mean()), "std_error": float(ll.std() / len(ll) ** 0.5), "n": len(ll),
           "nll_nats_per_dim": float(-ll.mean() / x[0].numel())}
    if x.ndim >= 3:  # images in [-1, 1] from 8-bit pixels: bits/dim of the 8-bit data (likelihood.bits_per_dim)
        out["bits_per_dim"] = float(bits_per_dim(ll, x[0].numel(), scale=pixel_scale).mean())
        out["note"] = "bits/dim assumes the samples were uniformly dequantized 8-bit pixels mapped to [-1, 1]"
    if elbo:
        out.update(elbos(model, x, n_samples=elbo_samples, variances=variances, seed=seed + 1))
    if oracle is not None:
        out["exact_mean_log_likelihood"] = float(oracle.log_prob(x).mean())
    return out


def elbos(model: DiffusionModel, x: torch.Tensor, *, n_samples: int = 16, variances: str = "beta_tilde",
          seed: int = 1) -> dict:
    """Mean continuous-time ELBO (importance-sampled t, ``n_samples`` (t, eps) draws per point) with its Monte-Carlo
    standard error, and on a ``Discrete`` process the DDPM ELBO over all steps (nats)."""
    from ..core.processes import Discrete
    from .likelihood import continuous_elbo, discrete_elbo

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        c = continuous_elbo(model, x, n_samples=n_samples, generator=g)
        # Monte-Carlo (t, eps) standard error of the mean over these points (the points themselves held fixed)
        out = {"continuous_elbo": float(c.elbo.mean()),
               "continuous_elbo_mc_std_error": float(c.std_err.pow(2).sum().sqrt() / len(x))}
        if isinstance(model.process, Discrete):
            d = discrete_elbo(model, x, variances=variances, generator=g)
            out.update({"discrete_elbo": float(d.elbo.mean()), "discrete_elbo_variances": variances})
    return out


__all__ = ["oracle_report", "reference_report", "sample_oracle_metrics", "likelihood_report", "elbos"]
