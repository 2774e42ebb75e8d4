r"""Gaussian mixtures with exact diffused densities, scores and denoisers: the oracle of the test suite.

If x_0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = alpha x_0 + sigma eps, then
x_t ~ sum_k w_k N(alpha mu_k, C_k) with C_k = alpha^2 Sigma_k + sigma^2 I, and

=================  ==================================================================================
``r_k(x)``         responsibilities  w_k N(x; alpha mu_k, C_k) / p_t(x)
``score_t``        grad log p_t(x) = -sum_k r_k C_k^{-1} (x - alpha mu_k)
``x0_t`` (Tweedie) E[x_0 | x_t = x] = sum_k r_k (mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k))
``eps_t``          E[eps | x_t = x] = sigma sum_k r_k C_k^{-1} (x - alpha mu_k)
``phi(omega)``     characteristic function E exp(i omega^T x_0)
                   = sum_k w_k exp(i omega^T mu_k - omega^T Sigma_k omega / 2)
=================  ==================================================================================

Each formula is evaluated directly (no division by alpha or sigma), so all three are exact and stable at both ends
of the time interval.  Vectors of any shape ``[B, ...]`` are flattened to d = prod(...) coordinates.
"""
from __future__ import annotations

import math

import torch

from .._utils import TimeLike, as_tensor
from .denoisers import DiffusionModel
from .processes import ForwardProcess


class GaussianMixture:
    """Mixture of K Gaussians in d dimensions (float64 internally).

    Args:
        weights: ``[K]`` nonnegative (normalised here).
        means: ``[K, d]``.
        covs: scalar variance, ``[K]`` isotropic variances, ``[K, d]`` diagonals or ``[K, d, d]`` full covariances.
        event_shape: shape of one sample (default ``(d,)``), e.g. ``(1, 8, 8)`` for an image mixture.
    """

    def __init__(self, weights, means, covs=1.0, event_shape: tuple[int, ...] | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {tuple(means.shape)}")
        K, d = means.shape
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() != K or torch.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {K} nonnegative numbers with a positive sum")
        self.weights, self.means, self.K, self.d = w / w.sum(), means, K, d
        self.covs = self._full_covs(torch.as_tensor(covs, dtype=torch.float64), K, d)
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not have {d} elements")
        self._chol0 = torch.linalg.cholesky(self.covs)

    @staticmethod
    def _full_covs(c: torch.Tensor, K: int, d: int) -> torch.Tensor:
        eye = torch.eye(d, dtype=torch.float64)
        if c.ndim == 0:
            covs = c * eye.expand(K, d, d)
        elif c.shape == (K,):
            covs = c[:, None, None] * eye
        elif c.shape == (K, d):
            covs = torch.diag_embed(c)
        elif c.shape == (K, d, d):
            covs = c
        else:
            raise ValueError(f"covs must be a scalar, [K], [K, d] or [K, d, d] with K={K}, d={d}; got {tuple(c.shape)}")
        if torch.any(torch.linalg.eigvalsh(0.5 * (covs + covs.mT)) <= 0):
            raise ValueError("every covariance must be symmetric positive definite")
        return covs.clone()

    # -- the data distribution ----------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64,
               return_labels: bool = False):
        """Draw n samples ``[n, *event_shape]`` (and their component labels ``[n]``)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, 1, generator=generator, dtype=torch.float64)
        x = (self.means[k] + (self._chol0[k] @ z).squeeze(-1)).to(dtype).reshape(n, *self.event_shape)
        return (x, k) if return_labels else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_0(x) -> ``[B]``."""
        return self._stats(x, torch.tensor(1.0), torch.tensor(0.0), need=())[0]

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities under p_0 -> ``[B, K]`` (for mode coverage)."""
        return self._stats(x, torch.tensor(1.0), torch.tensor(0.0), need=("r",))[1]["r"]

    # -- diffused quantities ----------------------------------------------------------------------
    def _stats(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, need=("score",)):
        """Core evaluation. alpha, sigma: scalars or ``[B]``. Returns (log p_t [B], dict of requested terms)."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        if xf.shape[1] != self.d:
            raise ValueError(f"expected samples with {self.d} elements, got shape {tuple(x.shape)}")
        a = alpha.to(torch.float64).reshape(-1, 1, 1, 1)  # [B or 1, 1, 1, 1]
        s = sigma.to(torch.float64).reshape(-1, 1, 1, 1)
        eye = torch.eye(self.d, dtype=torch.float64)
        C = a**2 * self.covs.unsqueeze(0) + s**2 * eye  # [B|1, K, d, d]
        L = torch.linalg.cholesky(C)
        diff = xf[:, None, :] - a[..., 0] * self.means.unsqueeze(0)  # [B, K, d]
        z = torch.linalg.solve_triangular(L, diff.unsqueeze(-1), upper=False)  # [B, K, d, 1]
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # [B|1, K]
        logn = -0.5 * z.squeeze(-1).pow(2).sum(-1) - 0.5 * logdet - 0.5 * self.d * math.log(2 * math.pi)
        logw = torch.log(self.weights) + logn  # [B, K]
        logp = torch.logsumexp(logw, dim=1)
        out: dict[str, torch.Tensor] = {}
        r = torch.softmax(logw, dim=1)
        if "r" in need:
            out["r"] = r
        if {"score", "x0", "eps"} & set(need):
            cinv_diff = torch.linalg.solve_triangular(L.mT, z, upper=True).squeeze(-1)  # C^{-1}(x - a mu): [B,K,d]
            g = (r.unsqueeze(-1) * cinv_diff).sum(1)  # sum_k r_k C_k^{-1}(x - a mu_k)
            out["score"], out["eps"] = -g, s[:, 0, 0] * g
            if "x0" in need:
                sc = (self.covs.unsqueeze(0) @ cinv_diff.unsqueeze(-1)).squeeze(-1)  # Sigma_k C_k^{-1}(x - a mu_k)
                post = self.means.unsqueeze(0) + a[..., 0] * sc
                out["x0"] = (r.unsqueeze(-1) * post).sum(1)
        return logp, out

    def _at(self, x: torch.Tensor, t: TimeLike, process: ForwardProcess, need):
        t = as_tensor(t, x.to(torch.float64))
        logp, out = self._stats(x, process.alpha(t), process.sigma(t), need)
        return logp, {k: v.to(x.dtype).reshape(x.shape) for k, v in out.items() if k != "r"}

    def log_prob_t(self, x: torch.Tensor, t: TimeLike, process: ForwardProcess) -> torch.Tensor:
        """log p_t(x) under ``process`` -> ``[B]`` (float64, differentiable in x)."""
        return self._at(x, t, process, need=())[0]

    def score_t(self, x: torch.Tensor, t: TimeLike, process: ForwardProcess) -> torch.Tensor:
        """Exact score grad_x log p_t(x) of the diffused mixture under ``process``. Shapes: x [B, d], t
        scalar or [B] -> [B, d]."""
        return self._at(x, t, process, need=("score",))[1]["score"]

    def x0_t(self, x: torch.Tensor, t: TimeLike, process: ForwardProcess) -> torch.Tensor:
        """Tweedie denoiser E[x_0 | x_t = x]."""
        return self._at(x, t, process, need=("x0",))[1]["x0"]

    def eps_t(self, x: torch.Tensor, t: TimeLike, process: ForwardProcess) -> torch.Tensor:
        """Exact noise prediction eps = -sigma(t) grad_x log p_t(x). Shapes: x [B, d], t scalar or [B] -> [B, d]."""
        return self._at(x, t, process, need=("eps",))[1]["eps"]

    def as_model(self, process: ForwardProcess) -> "MixtureModel":
        """This mixture's exact diffused model under ``process`` (same currency as a trained network)."""
        return MixtureModel(self, process)

    # -- summaries ----------------------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        """Mixture mean sum_k w_k mu_k -> ``[d]`` (float64)."""
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        """Mixture covariance sum_k w_k (Sigma_k + (mu_k - m)(mu_k - m)^T) -> ``[d, d]`` (float64)."""
        m = self.mean()
        dm = self.means - m
        return (self.weights[:, None, None] * (self.covs + dm[:, :, None] * dm[:, None, :])).sum(0)

    def characteristic_function(self, omega: torch.Tensor) -> torch.Tensor:
        """phi(omega) = E exp(i omega^T x_0) = sum_k w_k exp(i omega^T mu_k - omega^T Sigma_k omega / 2) at the
        frequencies ``omega [M, d]`` -> complex128 ``[M]`` (closed form; ``metrics.mmd2_to_mixture`` uses it)."""
        omega = torch.as_tensor(omega, dtype=torch.float64)
        if omega.ndim != 2 or omega.shape[1] != self.d:
            raise ValueError(f"omega must be [M, d] with d={self.d}, got shape {tuple(omega.shape)}")
        quad = torch.einsum("md,kde,me->mk", omega, self.covs, omega)
        return (self.weights * torch.exp(torch.complex(-0.5 * quad, omega @ self.means.T))).sum(1)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.d})"


class MixtureModel(DiffusionModel):
    """Exact model of a ``GaussianMixture`` diffused by ``process``: x0, eps, score in closed form."""

    def __init__(self, mixture: GaussianMixture, process: ForwardProcess):
        super().__init__()
        self.mixture, self.process = mixture, process

    def x0(self, x, t, **cond):
        """Exact Tweedie denoiser E[x_0 | x_t = x]. Shapes: x [B, d], t scalar or [B] -> [B, d]."""
        return self.mixture.x0_t(x, t, self.process)

    def eps(self, x, t, **cond):
        """Exact eps = -sigma(t) score. Shapes: x [B, d], t scalar or [B] -> [B, d]."""
        return self.mixture.eps_t(x, t, self.process)

    def score(self, x, t, **cond):
        """Exact score grad_x log p_t(x). Shapes: x [B, d], t scalar or [B] -> [B, d]."""
        return self.mixture.score_t(x, t, self.process)

    def log_prob(self, x, t):
        """Exact log p_t(x) -> ``[B]`` (float64, differentiable in x). Shapes: x [B, d], t scalar or [B]."""
        return self.mixture.log_prob_t(x, t, self.process)


# -- ready-made mixtures -----------------------------------------------------------------------
def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.1, d: int = 2) -> GaussianMixture:
    """k equal-weight components on a circle in the first two coordinates (other coordinates centred)."""
    ang = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = torch.zeros(k, d, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * torch.cos(ang), radius * torch.sin(ang)
    return GaussianMixture(torch.ones(k), means, std**2)


def grid_mixture(n: int = 3, spacing: float = 5.0, var: float = 0.3) -> GaussianMixture:
    """n x n grid of equal-weight components centred at 0 (n=3, spacing 5, var 0.3: the GMM-9 target)."""
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
    means = torch.cartesian_prod(c, c)
    return GaussianMixture(torch.ones(n * n), means, var)


def random_mixture(k: int, d: int, generator: torch.Generator | None = None, scale: float = 2.0,
                   anisotropic: bool = True) -> GaussianMixture:
    """A random mixture with unequal weights and (optionally) random full covariances, for tests/benchmarks."""
    w = torch.rand(k, generator=generator, dtype=torch.float64) + 0.5
    means = scale * torch.randn(k, d, generator=generator, dtype=torch.float64)
    if not anisotropic:
        return GaussianMixture(w, means, 0.1)
    A = 0.3 * torch.randn(k, d, d, generator=generator, dtype=torch.float64)
    covs = A @ A.mT / d + 0.05 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(w, means, covs)
