r"""Closed forms for testing bridges: the static Schrödinger bridge between Gaussians, its dynamic marginals, and
entropic OT on samples (POT Sinkhorn, log domain).

Static SB between N(mu0, S0) and N(mu1, S1) for a reference with X_N | X_0 ~ N(A x_0, sigma^2 I) (Brownian: A = 1):
pi* = argmin E|A X_0 - X_N|^2 - 2 sigma^2 H(pi) (sources/002, "entropy-regularized OT formulation"), Gaussian with
Cov(A X_0, X_N) = C(A^2 S0, S1, sigma^2) where (Janati et al., 2020, Thm. 1; Bunne et al., 2023, Thm. 3)

    C(S0, S1, s2) = 1/2 (S0^{1/2} D S0^{-1/2} - s2 I),   D = (4 S0^{1/2} S1 S0^{1/2} + s2^2 I)^{1/2}.

The dynamic bridge mixes the reference bridge over pi*: X_k = m_k X_0 + n_k X_N + sqrt(w_k) Z
(``LinearReference.bridge_coefs``), so its marginals are Gaussian with the covariances of ``GaussianBridge.marginal``.

=================  ==============================================================================================
``mu0, S0``        source mean ``[d]`` and covariance ``[d, d]`` (float64)
``mu1, S1``        target mean and covariance
``sigma2``         reference variance Var(X_N | X_0); Sinkhorn's reg is 2 sigma2
``C``              cross-covariance Cov(X_0, X_N) ``[d, d]``
=================  ==============================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot
import torch

from ..evaluation.metrics import frechet_distance
from .reference import LinearReference


def _sym_sqrt(S: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """S^{1/2} (or S^{-1/2}) of a symmetric positive (semi-)definite ``[d, d]`` matrix, by eigendecomposition."""
    lam, U = torch.linalg.eigh(0.5 * (S + S.T))
    lam = lam.clamp_min(0.0)
    root = lam.rsqrt() if inverse else lam.sqrt()
    return (U * root) @ U.T


def _check_cov(name: str, S: torch.Tensor, d: int | None = None) -> torch.Tensor:
    S = torch.as_tensor(S, dtype=torch.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or (d is not None and S.shape[0] != d):
        raise ValueError(f"{name} must be a square [d, d] covariance{'' if d is None else f' with d={d}'}, "
                         f"got shape {tuple(S.shape)}")
    if not torch.isfinite(S).all() or torch.linalg.eigvalsh(0.5 * (S + S.T)).min() <= 0:
        raise ValueError(f"{name} must be finite and positive definite")
    return S


def sb_cross_covariance(S0, S1, sigma2: float) -> torch.Tensor:
    """Cov(X_0, X_N) ``[d, d]`` of the static SB between N(., S0) and N(., S1), Brownian reference of variance
    ``sigma2``: C = 1/2 (S0^{1/2} D S0^{-1/2} - sigma2 I), D = (4 S0^{1/2} S1 S0^{1/2} + sigma2^2 I)^{1/2}."""
    S0 = _check_cov("S0", S0)
    S1 = _check_cov("S1", S1, S0.shape[0])
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2!r}")
    r0, r0_inv = _sym_sqrt(S0), _sym_sqrt(S0, inverse=True)
    eye = torch.eye(S0.shape[0], dtype=torch.float64)
    D = _sym_sqrt(4 * r0 @ S1 @ r0 + sigma2**2 * eye)
    return 0.5 * (r0 @ D @ r0_inv - sigma2 * eye)


@dataclass(frozen=True)
class GaussianBridge:
    """The Schrödinger bridge between N(mu0, S0) and N(mu1, S1) for a linear reference (module docstring)."""

    mu0: torch.Tensor
    S0: torch.Tensor
    mu1: torch.Tensor
    S1: torch.Tensor
    C: torch.Tensor
    reference: LinearReference

    def joint_covariance(self) -> torch.Tensor:
        """Cov of (X_0, X_N), ``[2d, 2d]``."""
        return torch.cat([torch.cat([self.S0, self.C], 1), torch.cat([self.C.T, self.S1], 1)], 0)

    def marginal(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[d]`` and covariance ``[d, d]`` of X_k on the dynamic bridge: m^2 S0 + n^2 S1 + mn (C + C^T) + w I."""
        m, n, w = (float(c) for c in self.reference.bridge_coefs()[k])
        eye = torch.eye(self.S0.shape[0], dtype=torch.float64)
        cov = m * m * self.S0 + n * n * self.S1 + m * n * (self.C + self.C.T) + w * eye
        return m * self.mu0 + n * self.mu1, cov


def gaussian_bridge(mu0, S0, mu1, S1, reference: LinearReference) -> GaussianBridge:
    """The static + dynamic SB between Gaussians for ``reference`` (X_N | X_0 ~ N(A x_0, sigma^2 I)):
    Cov(X_0, X_N) = C(A^2 S0, S1, sigma^2) / A."""
    S0, S1 = _check_cov("S0", S0), _check_cov("S1", S1)
    mu0, mu1 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu0, mu1))
    if not (mu0.numel() == mu1.numel() == S0.shape[0] == S1.shape[0]):
        raise ValueError(f"dimension mismatch: mu0 {tuple(mu0.shape)}, S0 {tuple(S0.shape)}, mu1 {tuple(mu1.shape)}, "
                         f"S1 {tuple(S1.shape)}")
    A = reference.A(0, reference.n_steps)
    C = sb_cross_covariance(A * A * S0, S1, reference.sigma2) / A
    return GaussianBridge(mu0, S0, mu1, S1, C, reference)


def cross_covariance(x0: torch.Tensor, xN: torch.Tensor) -> torch.Tensor:
    """Empirical Cov(X_0, X_N) ``[d, d]`` (float64) of pairs ``x0, xN [n, d]``."""
    x0, xN = x0.double(), xN.double()
    return (x0 - x0.mean(0)).T @ (xN - xN.mean(0)) / (x0.shape[0] - 1)


def gaussian_w2(x: torch.Tensor, mu: torch.Tensor, S: torch.Tensor) -> float:
    """W2 between N(mean(x), cov(x)) of samples ``x [n, d]`` and N(mu, S) (Bures; ``metrics.frechet_distance``)."""
    x = x.double()
    cov = torch.atleast_2d(torch.cov(x.T))
    return float(np.sqrt(max(frechet_distance(x.mean(0).numpy(), cov.numpy(), np.asarray(mu), np.asarray(S)), 0.0)))


def relative_error(C_hat: torch.Tensor, C: torch.Tensor) -> float:
    """|C_hat - C|_F / |C|_F."""
    return float(torch.linalg.norm(C_hat.double() - C.double()) / torch.linalg.norm(C.double()))


@dataclass(frozen=True)
class SinkhornCoupling:
    """Entropic OT plan on samples: ``plan [n, m]`` (sums to 1), its cross-covariance and transport cost."""

    plan: np.ndarray
    cross_cov: torch.Tensor
    cost: float


def sinkhorn_coupling(x0: torch.Tensor, xN: torch.Tensor, sigma2: float, scale: float = 1.0,
                      num_iter_max: int = 5000, stop_thr: float = 1e-8) -> SinkhornCoupling:
    """Static SB on samples by POT's log-domain Sinkhorn: min <P, M> - 2 sigma2 H(P), M_ij = |scale x0_i - xN_j|^2,
    uniform marginals (``scale`` = A of the reference; 1 for Brownian).  ``cost`` = E_P |X_0 - X_N|^2 (unscaled)."""
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2!r}")
    a0, aN = x0.double().numpy(), xN.double().numpy()
    a, b = np.full(len(a0), 1 / len(a0)), np.full(len(aN), 1 / len(aN))
    P = ot.sinkhorn(a, b, ot.dist(scale * a0, aN), reg=2 * sigma2, method="sinkhorn_log",
                    numItermax=num_iter_max, stopThr=stop_thr)
    c0, cN = a0 - a0.T @ a, aN - aN.T @ b
    cross = torch.from_numpy(c0.T @ P @ cN)
    return SinkhornCoupling(P, cross, float(np.sum(P * ot.dist(a0, aN))))


@torch.no_grad()
def affine_chain_moments(net, mu, S, reference: LinearReference, direction: str = "forward"
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact moments of a chain with affine means x -> (I + W_k) x + b_k (``nets.StepAffine``), no sampling error.

    ``forward``: X_{k+1} = M_k X_k + b_k + sqrt(v_k) Z from X_0 ~ N(mu, S); returns (mean of X_N ``[d]``, Cov(X_N),
    Cov(X_0, X_N)).  ``backward``: X_k = M_k X_{k+1} + b_k + sqrt(v_k) Z from X_N ~ N(mu, S); returns (mean of X_0,
    Cov(X_0), Cov(X_0, X_N)).  All float64."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    S = _check_cov("S", S)
    m = torch.as_tensor(mu, dtype=torch.float64).reshape(-1)
    eye = torch.eye(S.shape[0], dtype=torch.float64)
    cross = S.clone()
    steps = range(reference.n_steps) if direction == "forward" else reversed(range(reference.n_steps))
    for k in steps:
        M, b = eye + net.W[k].double(), net.b[k].double()
        m, S, cross = M @ m + b, M @ S @ M.T + float(reference.v[k]) * eye, cross @ M.T
    return m, S, (cross if direction == "forward" else cross.T)
