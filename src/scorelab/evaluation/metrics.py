r"""Sample-quality metrics: exact and sliced W2, unbiased MMD^2, mode statistics, k-NN precision/recall, Frechet
distance / FID-digits, importance-sampling ESS and log Z.

=====================  ==========================================================================================
``x, y``               samples ``[N, ...]`` / ``[M, ...]`` (torch or numpy), flattened to ``[N, d]``
``W2(mu, nu)``         (min_pi E_pi ||X - Y||^2)^{1/2}, exact OT between empirical measures (POT ``ot.emd2``)
``SW2``                (E_theta W2^2(theta#mu, theta#nu))^{1/2}, theta uniform on S^{d-1} (Bonneel et al. 2015);
                       for a shift by v: SW2 = ||v|| / sqrt(d) since E (theta . v)^2 = ||v||^2 / d
``MMD^2_u``            unbiased estimate (Gretton et al. 2012, Eq. 3), Gaussian kernel exp(-||a-b||^2 / (2 h^2))
``MMD^2(x, Q)``        to an exact mixture Q: mean_m |phi_x(omega_m) - phi_Q(omega_m)|^2 over fixed frequencies omega_m,
                       phi_Q in closed form, |phi_x|^2 by its U-statistic: unbiased, no two-sample floor
``P, R``               improved precision / recall (Kynkaanniemi et al. 2019): k-NN balls on features, k = 5
``FD``                 ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) (Heusel et al. 2017), as in pytorch-fid
``FID-digits``         FD on the 64-d penultimate (pre-ReLU) features of scorelab's small digits CNN (NOT Inception FID:
                       values are not comparable with published FIDs)
``ESS``                (sum w)^2 / sum w^2 for importance weights w = exp(log_w)
=====================  ==========================================================================================

The swiss-roll W2 of SFT-PG (Fan & Lee 2023, Table 1) is ``w2_exact``; its two-sample noise floor
(``two_sample_floor``) is the value two independent target samples of the same size already give.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import ot
import scipy.linalg
import scipy.stats
import torch

from .._utils import progress as tqdm
from ..core.analytic import GaussianMixture


def _np2d(x, name: str = "x") -> np.ndarray:
    """Samples as a float64 numpy array ``[N, d]`` (any trailing shape is flattened)."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch [N, ...], got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    a, b = _np2d(x, "x"), _np2d(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same dimension per example, got {a.shape[1]} and {b.shape[1]}")
    return a, b


def subsample(x, n: int, seed: int = 0):
    """``n`` rows of ``x`` drawn without replacement with a fixed seed (all of ``x`` if it has <= n rows)."""
    if x.shape[0] <= n:
        return x
    idx = np.random.default_rng(seed).choice(x.shape[0], size=n, replace=False)
    return x[torch.from_numpy(idx)] if isinstance(x, torch.Tensor) else x[idx]


# -- Wasserstein ------------------------------------------------------------------------------------------------
def w2_exact(x, y, max_size: int = 5000, num_iter_max: int = 10_000_000) -> float:
    """Exact 2-Wasserstein distance between the empirical measures of ``x [N, ...]`` and ``y [M, ...]``.

    Solves the OT linear program with POT ``ot.emd2`` on the squared Euclidean cost and returns the *distance*
    sqrt(min_pi sum pi_ij ||x_i - y_j||^2), not its square.  Memory and time grow as N M (and worse), so sizes above
    ``max_size`` are refused: subsample first (``metrics.subsample``).
    """
    a, b = _pair(x, y)
    if max(a.shape[0], b.shape[0]) > max_size:
        raise ValueError(f"w2_exact got {a.shape[0]} x {b.shape[0]} points, above max_size={max_size}: the exact LP "
                         "needs O(N M) memory; subsample (metrics.subsample) or raise max_size")
    M = ot.dist(a, b, metric="sqeuclidean")
    cost, log = ot.emd2(np.full(a.shape[0], 1 / a.shape[0]), np.full(b.shape[0], 1 / b.shape[0]), M,
                        numItermax=num_iter_max, log=True)
    if log.get("warning"):
        warnings.warn(f"w2_exact: {log['warning']}", RuntimeWarning, stacklevel=2)
    return math.sqrt(max(float(cost), 0.0))


def sliced_w2(x, y, n_projections: int = 1000, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (p = 2) with ``n_projections`` directions drawn uniformly on the sphere from a
    fixed ``seed`` (POT ``ot.sliced_wasserstein_distance``): (mean_theta W2^2(theta#x, theta#y))^{1/2}."""
    a, b = _pair(x, y)
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=n_projections, p=2, seed=seed))


def _draw(sampler, n: int, generator: torch.Generator):
    if isinstance(sampler, GaussianMixture):
        return sampler.sample(n, generator=generator)
    if hasattr(sampler, "sample") and not callable(sampler):
        return sampler.sample(n, generator=generator)
    return sampler(n, generator)


def two_sample_floor(sampler_of_target, n: int, metric: Callable[..., float], n_repeats: int = 5,
                     seed: int = 0) -> dict:
    """Value of ``metric(a, b)`` for two *independent* samples a, b of size ``n`` from the target: the floor below
    which no sampler's score can be told apart from the target's at this sample size.

    ``sampler_of_target(n, generator) -> [n, ...]`` (or a ``GaussianMixture``).  Returns dict(mean, std, values).
    """
    if n_repeats < 1 or n < 1:
        raise ValueError(f"n and n_repeats must be >= 1, got n={n}, n_repeats={n_repeats}")
    g = torch.Generator().manual_seed(seed)
    vals = [float(metric(_draw(sampler_of_target, n, g), _draw(sampler_of_target, n, g))) for _ in range(n_repeats)]
    std = float(np.std(vals, ddof=1)) if n_repeats > 1 else float("nan")
    return {"mean": float(np.mean(vals)), "std": std, "values": vals}


def sliced_w2_noise_floor(sampler_of_target, n: int, n_repeats: int = 5, n_projections: int = 1000,
                          seed: int = 0) -> dict:
    """``two_sample_floor`` of ``sliced_w2`` (same projections for every repeat) -> dict(mean, std, values)."""
    return two_sample_floor(sampler_of_target, n, lambda a, b: sliced_w2(a, b, n_projections, seed=seed),
                            n_repeats, seed)


# -- MMD --------------------------------------------------------------------------------------------------------
def median_bandwidth(x, y, max_points: int = 1000, seed: int = 0) -> float:
    """Median heuristic: the median pairwise Euclidean distance of the pooled sample (at most ``max_points``)."""
    z = torch.from_numpy(subsample(np.concatenate(_pair(x, y)), max_points, seed))
    d = torch.cdist(z, z)
    h = float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())
    if not h > 0:
        raise ValueError("median heuristic bandwidth is 0 (all points equal); pass bandwidth=...")
    return h


def mmd2_unbiased(x, y, bandwidth: float | list[float] | None = None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) with the Gaussian kernel k(a, b) = exp(-||a - b||^2 / (2 h^2)).

    ``bandwidth`` h: a number, a list (sum of kernels) or ``None`` for the median heuristic (``median_bandwidth``).
    Needs N, M >= 2.  Can be slightly negative; its expectation is 0 iff the two distributions are equal.
    """
    a, b = _pair(x, y)
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2_unbiased needs at least 2 samples on each side, got {n} and {m}")
    hs = [median_bandwidth(a, b)] if bandwidth is None else np.atleast_1d(np.asarray(bandwidth, dtype=np.float64))
    if any(not h > 0 for h in hs):
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    A, B = torch.from_numpy(a), torch.from_numpy(b)
    dxx, dyy, dxy = torch.cdist(A, A) ** 2, torch.cdist(B, B) ** 2, torch.cdist(A, B) ** 2

    def k(d2):
        return sum(torch.exp(-d2 / (2 * float(h) ** 2)) for h in hs)

    kxx, kyy = k(dxx), k(dyy)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * k(dxy).mean())


# -- MMD to an exact Gaussian mixture ------------------------------------------------------------------------------
MIXTURE_BANDWIDTH_SCALES = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


def mixture_frequencies(mixture: GaussianMixture, n_per_bandwidth: int = 1024,
                        scales: tuple[float, ...] = MIXTURE_BANDWIDTH_SCALES,
                        seed: int = 0) -> tuple[torch.Tensor, list]:
    """Fixed random frequencies for ``mmd2_to_mixture``: omega ~ N(0, I / h^2), the spectral measure of the Gaussian
    kernel of bandwidth h (Rahimi & Recht 2007), for h = c s sqrt(d), c in ``scales``, s^2 = tr Cov(Q) / d (the
    target's mean per-coordinate variance, closed form; s sqrt(d) is the typical norm of a centred target draw).

    Returns (omega ``[len(scales) * n_per_bandwidth, d]`` float64, stacked in the order of ``scales``; bandwidths h).
    """
    if n_per_bandwidth < 1 or not scales or any(not c > 0 for c in scales):
        raise ValueError(f"need n_per_bandwidth >= 1 and positive scales, got {n_per_bandwidth}, {scales}")
    size = math.sqrt(float(torch.trace(mixture.covariance())))
    g = torch.Generator().manual_seed(seed)
    hs = [c * size for c in scales]
    omega = torch.cat([torch.randn(n_per_bandwidth, mixture.d, generator=g, dtype=torch.float64) / h for h in hs])
    return omega, hs


def mmd2_to_mixture(samples, mixture: GaussianMixture, frequencies: torch.Tensor, chunk: int = 4096) -> float:
    r"""Unbiased MMD^2 between the law P of ``samples`` and an exact ``GaussianMixture`` Q, with the random-feature
    kernel k(a, b) = mean_m cos(omega_m^T (a - b)) on fixed ``frequencies`` (``mixture_frequencies``):

        MMD^2 = mean_m |phi_P(omega_m) - phi_Q(omega_m)|^2          (Gretton et al. 2012, Eq. 2, in feature form)

    phi_Q is ``GaussianMixture.characteristic_function`` (exact); |phi_P|^2 is estimated by its U-statistic
    (N |phi_hat|^2 - 1) / (N - 1) = mean_{i != j} cos(omega^T (x_i - x_j)) and the cross term by its sample mean, so
    the estimate is unbiased (it can be slightly negative) and an exact target sample scores 0 in expectation at any
    N: unlike a two-sample metric it has no noise floor, and its sampling error falls like 1/N for P = Q.
    Needs N >= 2; float64 inside; ``chunk`` rows of samples at a time.
    """
    x = torch.from_numpy(_np2d(samples, "samples"))
    omega = torch.as_tensor(frequencies, dtype=torch.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"mmd2_to_mixture needs at least 2 samples, got {n}")
    if x.shape[1] != mixture.d or omega.ndim != 2 or omega.shape[1] != mixture.d:
        raise ValueError(f"samples [N, {x.shape[1]}] and frequencies {tuple(omega.shape)} must both have the "
                         f"mixture's d={mixture.d} columns")
    re, im = torch.zeros(len(omega), dtype=torch.float64), torch.zeros(len(omega), dtype=torch.float64)
    for i in range(0, n, chunk):
        z = x[i:i + chunk] @ omega.T
        re += torch.cos(z).sum(0)
        im += torch.sin(z).sum(0)
    re, im, q = re / n, im / n, mixture.characteristic_function(omega)
    self_term = (n * (re**2 + im**2) - 1) / (n - 1)
    return float((self_term - 2 * (re * q.real + im * q.imag) + q.abs() ** 2).mean())


def mmd2_to_mixture_by_bandwidth(samples, mixture: GaussianMixture, n_per_bandwidth: int = 1024,
                                 scales: tuple[float, ...] = MIXTURE_BANDWIDTH_SCALES, seed: int = 0) -> dict:
    """``mmd2_to_mixture`` on ``mixture_frequencies(mixture, n_per_bandwidth, scales, seed)``, per bandwidth and
    overall -> dict(``mmd2``: the mean over bandwidths = the estimate for the sum kernel, ``per_bandwidth``:
    {h: estimate}, ``bandwidths``: [h])."""
    omega, hs = mixture_frequencies(mixture, n_per_bandwidth, scales, seed)
    per = [mmd2_to_mixture(samples, mixture, w) for w in omega.reshape(len(hs), n_per_bandwidth, mixture.d)]
    return {"mmd2": float(np.mean(per)), "per_bandwidth": dict(zip(hs, per, strict=True)), "bandwidths": hs}


# -- mode statistics --------------------------------------------------------------------------------------------
def mode_stats(samples, mixture_or_means, std: float | None = None, outlier_quantile: float = 0.999,
               min_mass_fraction: float = 0.25) -> dict:
    """Mode coverage and mode-weight total variation of samples against a Gaussian mixture.

    Each sample goes to its most responsible component (``GaussianMixture.responsibilities``; with ``means [K, d]``
    and ``std``: the equal-weight isotropic mixture N(mu_k, std^2 I), i.e. the nearest mean).  It is an *outlier*
    if its squared Mahalanobis distance to that component exceeds the chi^2_d ``outlier_quantile`` (so a perfect
    sampler has outlier_fraction ~ 1 - outlier_quantile).  Mode k is *covered* if it gets at least
    ``min_mass_fraction`` of its expected count w_k N.

    Returns dict: ``coverage`` (fraction of modes covered), ``covered [K]`` bool, ``n_covered``, ``weights [K]``
    (inlier fractions per mode, summing to 1), ``tv`` = 1/2 sum |weights - w|, ``outlier_fraction``,
    ``assignment [N]`` (mode index, -1 for outliers).
    """
    mix = _as_mixture(mixture_or_means, std)
    if not 0 < outlier_quantile < 1 or not 0 < min_mass_fraction <= 1:
        raise ValueError("outlier_quantile must be in (0, 1) and min_mass_fraction in (0, 1]")
    x = torch.from_numpy(_np2d(samples, "samples"))
    if x.shape[1] != mix.d:
        raise ValueError(f"samples have {x.shape[1]} coordinates per example, the mixture has d={mix.d}")
    k = mix.responsibilities(x).argmax(1)
    chol = torch.linalg.cholesky(mix.covs)  # [K, d, d]
    z = torch.linalg.solve_triangular(chol[k], (x - mix.means[k]).unsqueeze(-1), upper=False)
    inlier = z.squeeze(-1).pow(2).sum(1) <= scipy.stats.chi2.ppf(outlier_quantile, mix.d)
    counts = torch.bincount(k[inlier], minlength=mix.K).double()
    n = x.shape[0]
    weights = counts / counts.sum() if counts.sum() > 0 else counts
    covered = counts >= min_mass_fraction * mix.weights * n
    return {"coverage": float(covered.double().mean()), "covered": covered.numpy(), "n_covered": int(covered.sum()),
            "weights": weights.numpy(), "tv": float(0.5 * (weights - mix.weights).abs().sum()),
            "outlier_fraction": float(1 - inlier.double().mean()), "assignment": torch.where(inlier, k, -1).numpy()}


def _as_mixture(mixture_or_means, std: float | None) -> GaussianMixture:
    if isinstance(mixture_or_means, GaussianMixture):
        return mixture_or_means
    if std is None or not std > 0:
        raise ValueError("with means [K, d] instead of a GaussianMixture, pass the per-mode std (> 0)")
    means = torch.as_tensor(_np2d(mixture_or_means, "means"))
    return GaussianMixture(torch.ones(means.shape[0]), means, float(std) ** 2)


# -- precision / recall -----------------------------------------------------------------------------------------
def _kth_nn_radius(f: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row -> ``[N]``."""
    if f.shape[0] <= k:
        raise ValueError(f"precision/recall with k={k} needs more than k samples per set, got {f.shape[0]}")
    return torch.cat([torch.cdist(f[i:i + batch], f).kthvalue(k + 1, dim=1).values  # +1: itself at distance 0
                      for i in range(0, f.shape[0], batch)])


def _in_any_ball(q: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([(torch.cdist(q[i:i + batch], centres) <= radii).any(1) for i in range(0, q.shape[0], batch)])


def precision_recall(real_features, fake_features, k: int = 5, batch: int = 1024, per_example: bool = False) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) on features ``[N, F]`` / ``[M, F]``.

    The real manifold is the union of balls around real features with radius = distance to the k-th nearest real
    neighbour; precision = fraction of fake features inside it.  Recall swaps the roles.  Returns dict(precision,
    recall); with ``per_example`` also ``fake_in_real [M]`` and ``real_in_fake [N]`` boolean arrays.
    """
    r, f = (torch.from_numpy(v) for v in _pair(real_features, fake_features))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    fake_in_real = _in_any_ball(f, r, _kth_nn_radius(r, k, batch), batch)
    real_in_fake = _in_any_ball(r, f, _kth_nn_radius(f, k, batch), batch)
    out = {"precision": float(fake_in_real.double().mean()), "recall": float(real_in_fake.double().mean())}
    if per_example:
        out.update(fake_in_real=fake_in_real.numpy(), real_in_fake=real_in_fake.numpy())
    return out


# -- Frechet distance -------------------------------------------------------------------------------------------
def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2}).

    As in pytorch-fid: if the matrix square root is not finite, ``eps * I`` is added to both covariances; a complex
    result with imaginary diagonal above 1e-3 raises ``ValueError``, smaller imaginary parts are dropped.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"need means [d] and covariances [d, d] of one d; got {mu1.shape}, {s1.shape}, "
                         f"{mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: singular product; adding {eps} to the covariance diagonals", stacklevel=2)
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's matrix square root without its singular-matrix warning (the caller checks the result, as
    pytorch-fid's ``disp=False`` did)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[F]`` and covariance ``[F, F]`` (unbiased, as pytorch-fid) of features ``[N, F]``."""
    f = _np2d(features, "features")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def fid_from_features(f1, f2) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, F]`` and ``[M, F]``."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def fid(x, y, feature_fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 500,
        progress: bool = False) -> float:
    """Frechet distance of ``feature_fn`` features of two sample sets (batched, no gradients).  Name the result
    after the feature network (e.g. "FID-digits"), not "FID", unless the network is Inception-v3."""
    return fid_from_features(batched_features(x, feature_fn, batch_size, progress),
                             batched_features(y, feature_fn, batch_size, progress))


def batched_features(x, feature_fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 500,
                     progress: bool = False) -> np.ndarray:
    """``feature_fn`` over ``x`` in batches -> float64 ``[N, F]``."""
    x = torch.as_tensor(x)
    with torch.no_grad():
        out = [feature_fn(x[i:i + batch_size]).reshape(min(batch_size, x.shape[0] - i), -1).double().cpu()
               for i in tqdm(range(0, x.shape[0], batch_size), disable=not progress, desc="features")]
    return torch.cat(out).numpy()


# -- importance sampling ----------------------------------------------------------------------------------------
def effective_sample_size(log_w) -> float:
    """Kish ESS (sum w)^2 / sum w^2 of importance weights given as ``log_w [N]`` (computed in log space)."""
    lw = torch.as_tensor(log_w, dtype=torch.float64).flatten()
    if lw.numel() == 0 or torch.isnan(lw).any():
        raise ValueError("log_w must be a non-empty vector without NaN")
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def log_z_estimate(log_w) -> float:
    """Importance-sampling estimate log( mean exp(log_w) ) of log Z from log weights log rho(x) - log q(x) ``[N]``."""
    lw = torch.as_tensor(log_w, dtype=torch.float64).flatten()
    if lw.numel() == 0 or torch.isnan(lw).any():
        raise ValueError("log_w must be a non-empty vector without NaN")
    return float(torch.logsumexp(lw, 0) - math.log(lw.numel()))


# -- FID-digits: a small CNN classifier on scikit-learn digits --------------------------------------------------
DIGITS_CLASSIFIER_VERSION = 2
_DIGITS_CONFIG = {"version": DIGITS_CLASSIFIER_VERSION, "channels": [16, 32], "features": 64, "epochs": 30,
                  "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "test_fraction": 0.2}
_CLASSIFIERS: dict[tuple[str, int], "DigitsClassifier"] = {}


class DigitsClassifier(torch.nn.Module):
    """Small CNN on 8x8 digits in [-1, 1]: conv3-16, ReLU, conv3-32, ReLU, maxpool -> 4x4, linear 512 -> 64 (the
    FID-digits features: this penultimate layer *before* its ReLU, so no feature is identically 0), ReLU,
    linear 64 -> 10."""

    def __init__(self, channels: tuple[int, int] = (16, 32), features: int = 64):
        super().__init__()
        c1, c2 = channels
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, c1, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(c1, c2, 3, padding=1),
            torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(c2 * 16, features))
        self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(features, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 8, 8]`` (or ``[B, 64]``) -> penultimate features ``[B, 64]``."""
        return self.body(x.reshape(x.shape[0], 1, 8, 8).to(self.body[0].weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 10]``."""
        return self.head(self.features(x))


def _init_params(net: torch.nn.Module, g: torch.Generator) -> None:
    """PyTorch-default-like init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) drawn from ``g`` (no global RNG)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                bound = 1 / math.sqrt(m.weight[0].numel())
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.uniform_(-bound, bound, generator=g)


def train_digits_classifier(seed: int = 0, progress: bool = False) -> tuple[DigitsClassifier, dict]:
    """Train the FID-digits CNN deterministically from ``seed`` on a stratified 80% split of sklearn digits (Adam,
    small random shifts as augmentation) -> (model in eval mode, metadata with the held-out accuracy)."""
    from ..data.images import digits_split

    cfg = _DIGITS_CONFIG
    xtr, ytr, xte, yte = digits_split(cfg["test_fraction"], seed=0)
    g = torch.Generator().manual_seed(seed)
    net = DigitsClassifier(tuple(cfg["channels"]), cfg["features"])
    _init_params(net, g)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["epochs"])
    for _ in tqdm(range(cfg["epochs"]), disable=not progress, desc="FID-digits classifier"):
        perm = torch.randperm(xtr.shape[0], generator=g)
        for i in range(0, xtr.shape[0], cfg["batch_size"]):
            idx = perm[i:i + cfg["batch_size"]]
            loss = torch.nn.functional.cross_entropy(net(_shift(xtr[idx], g)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(xte).argmax(1) == yte).double().mean())
    return net, dict(cfg, seed=seed, heldout_accuracy=acc, n_train=int(xtr.shape[0]), n_test=int(xte.shape[0]),
                     torch_version=torch.__version__)


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Augmentation: one random translation by -1, 0 or +1 pixel per axis for the whole mini-batch (pad -1)."""
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    di, dj = torch.randint(0, 3, (2,), generator=g).tolist()
    return pad[..., di:di + 8, dj:dj + 8]


def _cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("SCORELAB_CACHE", Path.home() / ".cache" / "scorelab"))


def digits_classifier(cache_dir: str | Path | None = None, seed: int = 0, retrain: bool = False,
                      progress: bool = False) -> DigitsClassifier:
    """The FID-digits CNN: loaded from ``cache_dir`` (default ``$SCORELAB_CACHE`` or ``~/.cache/scorelab``) as
    safetensors + JSON (never unpickled), else trained (a few seconds on CPU) and cached atomically.
    ``model.meta["heldout_accuracy"]`` is its accuracy on the held-out 20% of the digits."""
    from safetensors.torch import load_file, save_file

    d = _cache_dir(cache_dir)
    key = (str(d.resolve()), seed)
    if key in _CLASSIFIERS and not retrain:
        return _CLASSIFIERS[key]
    stem = d / f"digits_classifier_v{DIGITS_CLASSIFIER_VERSION}_seed{seed}"
    wpath, jpath = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    net = DigitsClassifier(tuple(_DIGITS_CONFIG["channels"]), _DIGITS_CONFIG["features"])
    meta = json.loads(jpath.read_text()) if (jpath.exists() and wpath.exists() and not retrain) else None
    if meta is not None and meta.get("version") == DIGITS_CLASSIFIER_VERSION:
        net.load_state_dict(load_file(str(wpath)))
        net.eval()
    else:
        net, meta = train_digits_classifier(seed, progress)
        d.mkdir(parents=True, exist_ok=True)
        tmp_w, tmp_j = wpath.with_suffix(".safetensors.tmp"), jpath.with_suffix(".json.tmp")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_w))
        tmp_j.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_w, wpath)
        os.replace(tmp_j, jpath)
    for p in net.parameters():
        p.requires_grad_(False)
    net.meta = meta
    _CLASSIFIERS[key] = net
    return net


def _check_digits(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 2 or x[0].numel() != 64:
        raise ValueError(f"digits samples must be [N, 1, 8, 8] (or [N, 64]) in [-1, 1], got {tuple(x.shape)}")
    return x.reshape(x.shape[0], 1, 8, 8).float()


def digits_features(x, cache_dir: str | Path | None = None) -> torch.Tensor:
    """FID-digits features: penultimate layer of the digits CNN, ``[N, 1, 8, 8]`` in [-1, 1] -> ``[N, 64]``."""
    net = digits_classifier(cache_dir)
    with torch.no_grad():
        return net.features(_check_digits(x))


def fid_digits(samples, reference=None, cache_dir: str | Path | None = None) -> float:
    """FID-digits: Frechet distance between digits-CNN features of ``samples [N, 1, 8, 8]`` and of ``reference``
    (default: all 1797 sklearn digits).  Not Inception FID; only comparable with other FID-digits values."""
    if reference is None:
        from ..data.images import load_digits
        reference = load_digits()[0]
    return fid_from_features(digits_features(samples, cache_dir), digits_features(reference, cache_dir))


def digits_class_histogram(samples, cache_dir: str | Path | None = None) -> dict:
    """Classify digits samples with the FID-digits CNN -> dict(labels [N], histogram [10] fractions,
    confidence [N] max softmax probability, tv_uniform = TV distance of the histogram to uniform)."""
    net = digits_classifier(cache_dir)
    with torch.no_grad():
        p = torch.softmax(net(_check_digits(samples)), dim=1)
    labels = p.argmax(1)
    hist = torch.bincount(labels, minlength=10).double() / labels.numel()
    return {"labels": labels.numpy(), "histogram": hist.numpy(), "confidence": p.max(1).values.numpy(),
            "tv_uniform": float(0.5 * (hist - 0.1).abs().sum())}


def digits_accuracy(samples, labels, cache_dir: str | Path | None = None) -> float:
    """Fraction of ``samples`` the digits CNN classifies as ``labels [N]`` (for class-conditional sampling)."""
    pred = torch.as_tensor(digits_class_histogram(samples, cache_dir)["labels"])
    return float((pred == torch.as_tensor(labels).flatten()).double().mean())
