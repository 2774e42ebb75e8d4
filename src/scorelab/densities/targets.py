r"""Target densities for diffusion samplers: only an unnormalized log-density log rho(x) is used for training.

Each target follows the small protocol of DESIGN.md (idea 4): ``log_prob_unnorm(x) -> [B]``, ``score(x) -> [B, d]``
(closed form, or autograd of ``log_prob_unnorm``), ``log_Z`` (exact where known, else ``None``), ``sample(n)`` for
evaluation (exact samples where possible) and ``moments()`` (exact E||x||^2, E||x||_1 where known).

Notation
--------
=============  ==================================================================================
``rho(x)``     unnormalized density; Z = int rho(x) dx, the target is rho / Z
``log_Z``      log of the normalizing constant (exact: closed form, or 1-D quadrature per coordinate)
``d``          dimension
=============  ==================================================================================

Targets (Berner, Richter & Ullrich 2022, source 004, "DIS vs. PIS"; Richter & Berner 2024; Midgley et al. 2023 (FAB)):

* ``gmm9``: 9 equal-weight modes on {-5, 0, 5}^2, variance 0.3 (log Z = 0).
* ``gmm40``: 40 modes, means uniform in [-40, 40]^2 (torch seed 0, as in FAB), std softplus(1) (log Z = 0).
* ``funnel``: x_0 ~ N(0, 3^2), x_i ~ N(0, e^{x_0}), i = 1..d-1, d = 10 (log Z = 0).
* ``dw``: rho = exp(-sum_{i<=w} (x_i^2 - delta)^2 - 1/2 sum_{i>w} x_i^2) for any (d, w, delta); log Z by 1-D quadrature.
* ``manywell``: d/2 copies of the FAB double well, log rho = -x_1^4 + 6 x_1^2 + x_1/2 - x_2^2/2, d = 32.
* ``gauss``: exp(log_Z) N(m, S) with any covariance S.
* ``lgcp`` (d = 1600), ``logreg_bc`` (d = 31): Bayesian posteriors, posteriors.py (reference log Z by SMC);
  ``lgcp_dds``: the LGCP on the DDS repository's pines file (the one the published log Z 512.6 belongs to).

Every target carries ``log_Z_source``: how its ``log_Z`` was obtained (closed form, quadrature, SMC reference).
"""
from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import integrate

from ..core.analytic import GaussianMixture, grid_mixture
from .posteriors import LGCP, LogisticRegression
from .target_base import Target


# ----------------------------------------------------------------------------------------------
# Gaussian mixtures and Gaussians
# ----------------------------------------------------------------------------------------------
class MixtureTarget(Target):
    """exp(log_Z) * sum_k w_k N(mu_k, Sigma_k), built on ``analytic.GaussianMixture`` (closed-form score)."""

    def __init__(self, mixture: GaussianMixture, log_Z: float = 0.0, name: str = "gmm"):
        super().__init__(mixture.d)
        self.mixture, self.log_Z, self.name = mixture, float(log_Z), name
        self.log_Z_source = "exact (a normalized mixture times exp(log_Z))"
        L = torch.linalg.cholesky(mixture.covs)
        eye = torch.eye(mixture.d, dtype=torch.float64).expand_as(L)
        self._Linv = torch.linalg.solve_triangular(L, eye, upper=False)  # [K, d, d]
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        self._c = torch.log(mixture.weights) - 0.5 * logdet - 0.5 * mixture.d * math.log(2 * math.pi) + self.log_Z
        diag = torch.diagonal(self._Linv, dim1=-2, dim2=-1)
        self._diag = diag if torch.equal(torch.diag_embed(diag), self._Linv) else None  # [K, d] 1/std, fast path

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        mu = self.mixture.means.to(x)
        if self._diag is not None:  # diagonal covariances: elementwise, no batched matmul
            z = (x[:, None, :] - mu) * self._diag.to(x)
        else:
            z = torch.einsum("kij,bkj->bki", self._Linv.to(x), x[:, None, :] - mu)  # [B, K, d]
        return self._c.to(x) - 0.5 * z.pow(2).sum(-1), z

    def log_prob_unnorm(self, x):
        """log rho(x) = log Z + log of the mixture density (logsumexp over components). Shapes: x [B, d] -> [B]."""
        return torch.logsumexp(self._terms(x)[0], dim=1)

    def score(self, x):
        """grad log rho(x) = -sum_k r_k(x) Sigma_k^{-1}(x - mu_k) in closed form (r: responsibilities).
        Shapes: x [B, d] -> [B, d]."""
        logw, z = self._terms(x)
        r = torch.softmax(logw, dim=1)  # responsibilities [B, K]
        if self._diag is not None:
            return -torch.einsum("bk,bkd->bd", r, z * self._diag.to(x))
        g = torch.einsum("kji,bkj->bki", self._Linv.to(x), z)  # Sigma_k^{-1} (x - mu_k)
        return -(r[..., None] * g).sum(1)

    def sample(self, n, generator=None):
        """n exact draws of the mixture. Shapes: -> [n, d] (float64)."""
        return self.mixture.sample(n, generator=generator)

    def moments(self):
        """Exact E||x||^2 and E||x||_1 (keys ``sq``, ``abs``); ``abs`` only for diagonal covariances."""
        m = self.mixture
        sq = (m.weights * (m.means.pow(2).sum(1) + torch.diagonal(m.covs, dim1=-2, dim2=-1).sum(-1))).sum()
        if not torch.allclose(m.covs, torch.diag_embed(torch.diagonal(m.covs, dim1=-2, dim2=-1))):
            return {"sq": float(sq)}
        # E|N(mu, s^2)| = s sqrt(2/pi) exp(-mu^2 / 2 s^2) + mu (1 - 2 Phi(-mu/s))
        s = torch.diagonal(m.covs, dim1=-2, dim2=-1).sqrt()
        mu = m.means
        ea = s * math.sqrt(2 / math.pi) * torch.exp(-0.5 * (mu / s) ** 2) + mu * torch.erf(mu / (s * math.sqrt(2)))
        return {"sq": float(sq), "abs": float((m.weights * ea.sum(1)).sum())}


def gmm9(spacing: float = 5.0, var: float = 0.3) -> MixtureTarget:
    """9 modes on {-5, 0, 5}^2 with variance 0.3 (PIS / DIS GMM benchmark)."""
    return MixtureTarget(grid_mixture(3, spacing, var), name="gmm9")


def gmm40(dim: int = 2, loc_scaling: float = 40.0, seed: int = 0) -> MixtureTarget:
    """40-mode GMM of FAB (Midgley et al. 2023): means (U[0,1) - 0.5) * 2 * 40, scale softplus(1) per coordinate."""
    g = torch.Generator().manual_seed(seed)
    means = ((torch.rand(40, dim, generator=g) - 0.5) * 2 * loc_scaling).to(torch.float64)
    std = torch.nn.functional.softplus(torch.tensor(1.0, dtype=torch.float64))
    return MixtureTarget(GaussianMixture(torch.ones(40), means, std**2), name="gmm40")


def gaussian(mean: Sequence[float] | torch.Tensor, cov: float | Sequence | torch.Tensor = 1.0,
             log_Z: float = 0.0) -> MixtureTarget:
    """rho = exp(log_Z) N(mean, cov); ``cov`` a scalar, a diagonal ``[d]`` or a full ``[d, d]`` matrix."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    c = torch.as_tensor(cov, dtype=torch.float64)
    c = c[None] if c.ndim >= 1 else c
    return MixtureTarget(GaussianMixture(torch.ones(1), mean, c), log_Z=log_Z, name="gauss")


# ----------------------------------------------------------------------------------------------
# Funnel
# ----------------------------------------------------------------------------------------------
class Funnel(Target):
    """Neal's funnel: x_0 ~ N(0, scale^2), x_i ~ N(0, e^{x_0}) for i >= 1 (normalized: log Z = 0)."""

    name = "funnel"

    def __init__(self, dim: int = 10, scale: float = 3.0):
        super().__init__(dim)
        if dim < 2:
            raise ValueError("the funnel needs dim >= 2")
        self.scale, self.log_Z = float(scale), 0.0
        self.log_Z_source = "exact (the funnel is a normalized hierarchical density)"

    def log_prob_unnorm(self, x):
        """log N(x_0; 0, scale^2) + sum_{i>=1} log N(x_i; 0, e^{x_0}) (normalized). Shapes: x [B, d] -> [B]."""
        self._check(x)
        x0, xr = x[:, 0], x[:, 1:]
        lp0 = -0.5 * (x0 / self.scale) ** 2 - math.log(self.scale) - 0.5 * math.log(2 * math.pi)
        lpr = -0.5 * xr.pow(2).sum(1) * torch.exp(-x0) - 0.5 * (self.dim - 1) * (x0 + math.log(2 * math.pi))
        return lp0 + lpr

    def score(self, x):
        """grad log rho(x) in closed form. Shapes: x [B, d] -> [B, d]."""
        self._check(x)
        x0, xr = x[:, :1], x[:, 1:]
        e = torch.exp(-x0)
        g0 = -x0 / self.scale**2 - 0.5 * (self.dim - 1) + 0.5 * xr.pow(2).sum(1, keepdim=True) * e
        return torch.cat([g0, -xr * e], dim=1)

    def sample(self, n, generator=None):
        """n exact draws: x_0 first, then x_i given x_0. Shapes: -> [n, d] (float64)."""
        x0 = self.scale * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        xr = torch.randn(n, self.dim - 1, generator=generator, dtype=torch.float64) * torch.exp(0.5 * x0)
        return torch.cat([x0, xr], dim=1)

    def moments(self):
        # E x_0^2 = s^2, E x_i^2 = E e^{x_0} = e^{s^2/2}; E|x_0| = s sqrt(2/pi), E|x_i| = sqrt(2/pi) e^{s^2/8}
        """Exact E||x||^2 and E||x||_1 (keys ``sq``, ``abs``) in closed form: E x_0^2 = s^2, E x_i^2 = e^{s^2/2}."""
        s, c = self.scale, math.sqrt(2 / math.pi)
        n = self.dim - 1
        return {"sq": s**2 + n * math.exp(s**2 / 2), "abs": c * s + n * c * math.exp(s**2 / 8)}


# ----------------------------------------------------------------------------------------------
# Separable targets: double well, many-well (log Z, samples, moments by 1-D quadrature per coordinate)
# ----------------------------------------------------------------------------------------------
class SeparableTarget(Target):
    """rho(x) = prod_i exp(f_i(x_i)) with 1-D log-factors f_i; ``factors`` are (f, half_width) pairs, f acting on
    torch tensors elementwise.  log Z = sum_i log int exp(f_i), computed by ``scipy.integrate.quad``; exact sampling
    by inverse-CDF on a fine grid."""

    def __init__(self, factors: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], float]], name: str):
        super().__init__(len(factors))
        self.factors, self.name = list(factors), name
        self._uniq: dict[int, tuple] = {}
        self._stats = [self._factor_stats(i) for i in range(self.dim)]
        self.log_Z = float(sum(s["log_z"] for s in self._stats))
        self.log_Z_source = "exact up to quadrature error: sum of 1-D scipy.integrate.quad integrals per factor"

    def _factor_stats(self, i: int) -> dict:
        f, L = self.factors[i]
        key = id(f)
        if key not in self._uniq:
            grid = np.linspace(-L, L, 40001)
            lf = f(torch.as_tensor(grid, dtype=torch.float64)).numpy()
            fmax = float(lf.max())
            fn = lambda u: math.exp(float(f(torch.tensor(u, dtype=torch.float64))) - fmax)  # noqa: E731
            peaks = [float(grid[j]) for j in np.flatnonzero(lf > fmax - 1.0)[[0, -1]]]  # where the mass sits
            z = sum(integrate.quad(fn, a, b, limit=200, points=peaks if a == -L else None)[0]
                    for a, b in [(-np.inf, -L), (-L, L), (L, np.inf)])
            p = np.exp(lf - fmax)
            cdf = integrate.cumulative_trapezoid(p, grid, initial=0.0)
            m2 = integrate.quad(lambda u: u * u * fn(u), -L, L, limit=200, points=peaks)[0] / z
            m1 = integrate.quad(lambda u: abs(u) * fn(u), -L, L, limit=200, points=peaks + [0.0])[0] / z
            self._uniq[key] = {"log_z": fmax + math.log(z), "grid": grid, "cdf": cdf / cdf[-1], "sq": m2, "abs": m1,
                               **_barrier(grid, lf, cdf / cdf[-1])}
        return self._uniq[key]

    def log_prob_unnorm(self, x):
        """sum_i f_i(x_i). Shapes: x [B, d] -> [B]."""
        self._check(x)
        return torch.stack([f(x[:, i]) for i, (f, _) in enumerate(self.factors)], dim=1).sum(1)

    def sample(self, n, generator=None):
        """n exact draws, coordinate by coordinate by inverse CDF on a fine grid. Shapes: -> [n, d] (float64)."""
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64).numpy()
        cols = [np.interp(u[:, i], s["cdf"], s["grid"]) for i, s in enumerate(self._stats)]
        return torch.as_tensor(np.stack(cols, axis=1), dtype=torch.float64)

    def mode_weights(self, x: torch.Tensor) -> dict[str, float] | None:
        """Mode weights of samples x ``[n, d]`` on the bimodal coordinates (those whose factor has two maxima):
        ``mode_left_frac`` the sample fraction left of the factor's barrier (its minimum between the two maxima) and
        ``mode_left_exact`` the exact mass there (both averaged over those coordinates), ``mode_weight_err`` the mean
        over them of |sample fraction - exact mass|.  A sampler collapsed onto the heavier well of every factor has
        ``mode_left_frac`` 0 (ManyWell: exact 0.156; the collapse alone costs 16 x -log(1 - 0.156) = 2.71 nats of
        log Z).  None when no coordinate is bimodal."""
        self._check(x)
        cols = [(i, s) for i, s in enumerate(self._stats) if "barrier" in s]
        if not cols:
            return None
        xd = x.detach().to(torch.float64)
        frac = torch.stack([(xd[:, i] < s["barrier"]).double().mean() for i, s in cols])
        exact = torch.tensor([s["left_mass"] for _, s in cols], dtype=torch.float64)
        return {"mode_left_frac": float(frac.mean()), "mode_left_exact": float(exact.mean()),
                "mode_weight_err": float((frac - exact).abs().mean())}

    def moments(self):
        """Exact E||x||^2 and E||x||_1 (keys ``sq``, ``abs``), by 1-D quadrature per coordinate."""
        return {"sq": float(sum(s["sq"] for s in self._stats)), "abs": float(sum(s["abs"] for s in self._stats))}

    def score_t(self, x: torch.Tensor, t: float | torch.Tensor, process, n_grid: int = 2001,
                chunk: int = 1024) -> torch.Tensor:
        r"""Score of the *noised* target, grad log p_t(x), X_t = alpha_t Y + sigma_t eps, Y ~ rho / Z, eps ~ N(0, I),
        by 1-D quadrature per coordinate (exact up to the grid).  Tweedie: grad log p_t(x) = (alpha_t E[Y | x] - x) /
        sigma_t^2 with the posterior p(y | x) ~ exp(f_i(y)) N(x_i; alpha_t y, sigma_t^2) on ``n_grid`` points: the
        factor's range [-L, L] when the likelihood is wide; when it is narrower than 10 grid spacings, the window
        y* +- 10 sigma_t / alpha_t around the posterior mode y* (located on [-L, L] joined with x / alpha_t +- 10
        sigma_t / alpha_t).  This is the optimal DIS control (source 004, u* = sigma grad log p_Y), an oracle that
        separates discretization error from network error.  x ``[B, d]``; t a scalar or ``[B]`` (times of
        ``process``, e.g. ``VP``); t = 0 gives the target score.  Returns ``[B, d]`` in x's dtype.  Accurate where
        the posterior mass lies in [-L, L] or near x / alpha_t, i.e. wherever a sampler's paths go (not for points
        with |x_i| / alpha_t >> L, where rho ~ exp(-L^4))."""
        self._check(x)
        xd = x.detach().to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[:1])
        a = process.log_alpha(t).exp()[:, None]
        sig = torch.where(t > 0, process.log_sigma(t.clamp_min(1e-12)).exp(), 0.0)[:, None]
        out = self.score(xd).clone()  # rows with t = 0 keep the target score
        z = torch.linspace(-10.0, 10.0, n_grid, dtype=torch.float64, device=x.device)
        for i, (f, L) in enumerate(self.factors):
            y_glob = torch.linspace(-L, L, n_grid, dtype=torch.float64, device=x.device)
            local = (sig / a < 10 * 2 * L / (n_grid - 1))  # [B, 1]: likelihood narrower than 10 grid spacings
            for rows in torch.arange(len(xd), device=x.device).split(chunk):
                xi, ai, si = xd[rows, i:i + 1], a[rows], sig[rows].clamp_min(1e-300)
                y = torch.cat([y_glob.expand(len(rows), -1), xi / ai + (si / ai) * z], dim=1)  # find the mode
                y_mode = y.gather(1, (f(y) - 0.5 * ((xi - ai * y) / si) ** 2).argmax(1, keepdim=True))
                y = torch.where(local[rows], y_mode + (si / ai) * z, y_glob)  # [b, n_grid]
                post = torch.softmax(f(y) - 0.5 * ((xi - ai * y) / si) ** 2, dim=1)
                score = (ai[:, 0] * (post * y).sum(1) - xi[:, 0]) / si[:, 0] ** 2
                out[rows, i] = torch.where(t[rows] > 0, score, out[rows, i])
        return out.to(x.dtype)


def _barrier(grid: np.ndarray, lf: np.ndarray, cdf: np.ndarray) -> dict:
    """{"barrier", "left_mass"} of a 1-D log-factor ``lf`` on ``grid`` with two local maxima (the minimum between the
    two highest and the normalized mass left of it, from ``cdf``); {} if it has fewer than two maxima."""
    peaks = np.flatnonzero((lf[1:-1] > lf[:-2]) & (lf[1:-1] >= lf[2:])) + 1
    if len(peaks) < 2:
        return {}
    a, b = np.sort(peaks[np.argsort(lf[peaks])[-2:]])
    j = a + int(np.argmin(lf[a:b + 1]))
    return {"barrier": float(grid[j]), "left_mass": float(cdf[j])}


def _gauss_factor(u: torch.Tensor) -> torch.Tensor:
    return -0.5 * u * u


class DoubleWell(SeparableTarget):
    """rho = exp(-sum_{i<=w} (x_i^2 - delta)^2 - 1/2 sum_{i>w} x_i^2) (source 004; 2^w modes)."""

    def __init__(self, dim: int = 5, w: int = 5, delta: float = 4.0):
        if not (0 <= w <= dim):
            raise ValueError(f"double well needs 0 <= w <= dim, got w={w}, dim={dim}")
        self.w, self.delta = int(w), float(delta)
        well = lambda u: -(u * u - self.delta) ** 2  # noqa: E731
        half = math.sqrt(max(self.delta, 0.0) + 4.0) + 2.0
        super().__init__([(well, half)] * w + [(_gauss_factor, 12.0)] * (dim - w), name=f"dw_{dim}_{w}_{delta:g}")

    def score(self, x):
        """grad log rho(x): -4 x_i (x_i^2 - delta) for i <= w, -x_i after. Shapes: x [B, d] -> [B, d]."""
        self._check(x)
        xw, xr = x[:, : self.w], x[:, self.w:]
        return torch.cat([-4 * xw * (xw * xw - self.delta), -xr], dim=1)


class ManyWell(SeparableTarget):
    """Many-well of FAB (Midgley et al. 2023): d/2 copies of log rho(x1, x2) = -x1^4 + 6 x1^2 + x1/2 - x2^2/2.

    This is FAB's ``DoubleWellEnergy(a=-0.5, b=-6, c=1)`` (energy a x1 + b x1^2 + c x1^4 + x2^2 / 2; FAB code,
    fab-torch ``fab/target_distributions/many_well.py``, whose 1-D normalizer of the x1 factor is 11784.50927), the
    ManyWell-32 (2^16 modes) of FAB, iDEM and the diffusion-sampler benchmark of Blessing et al. 2024.  It is *not*
    the "MW" of Richter & Berner 2024 / sde_sampler (``conf/target/mw.yaml``: ``MultiWell`` dim 5, 5 double wells,
    separation 4, i.e. ``DoubleWell(5, 5, 4)`` = ``dw554`` here; ``mw_50d.yaml``: dim 50, 5 wells, separation 2).
    log Z (exact up to quadrature) and exact samples come per 1-D factor (``SeparableTarget``)."""

    def __init__(self, dim: int = 32):
        if dim % 2:
            raise ValueError(f"many-well needs an even dimension, got {dim}")
        well = lambda u: -(u**4) + 6 * u * u + 0.5 * u  # noqa: E731
        super().__init__([(well, 5.0), (_gauss_factor, 12.0)] * (dim // 2), name=f"manywell{dim}")

    def score(self, x):
        """grad log rho(x): -4 x1^3 + 12 x1 + 1/2 on odd coordinates, -x2 on even ones. Shapes: x [B, d] -> [B, d]."""
        self._check(x)
        g = -x.clone()
        a = x[:, 0::2]
        g[:, 0::2] = -4 * a**3 + 12 * a + 0.5
        return g


# ----------------------------------------------------------------------------------------------
# User targets and the registry
# ----------------------------------------------------------------------------------------------
class FunctionTarget(Target):
    """A user's log-density ``fn(x: [B, D]) -> [B]`` (log Z unknown; score by autograd)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], dim: int, name: str = "user"):
        super().__init__(dim)
        if not callable(fn):
            raise ValueError(f"target {name!r} is not callable (got {type(fn).__name__})")
        self.fn, self.name = fn, name
        validate_log_prob(fn, dim, name)

    def log_prob_unnorm(self, x):
        """The user's fn(x) (shape checked). Shapes: x [B, d] -> [B]."""
        self._check(x)
        return self.fn(x)


def validate_log_prob(fn: Callable, dim: int, name: str = "target", n: int = 8) -> None:
    """Check that ``fn`` maps a ``[n, dim]`` float32 tensor (standard normal draws) to finite ``[n]`` values.

    Raises ValueError saying what was wrong and what is expected."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    try:
        out = fn(x)
    except Exception as e:  # the user's code failed on a valid input: report, keep the cause
        raise ValueError(f"target {name!r} failed on a [{n}, {dim}] input: {type(e).__name__}: {e}. "
                         f"Is --dim {dim} the right dimension?") from e
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"target {name!r} must return a torch.Tensor of shape [{n}], got {type(out).__name__}")
    if out.shape != (n,):
        raise ValueError(f"target {name!r} must map x of shape [B, {dim}] to log-densities of shape [B]; "
                         f"for B={n} it returned shape {tuple(out.shape)}")
    if not torch.all(torch.isfinite(out)):
        raise ValueError(f"target {name!r} returned non-finite log-densities (NaN or inf) on standard normal "
                         f"inputs of shape [{n}, {dim}]; the log-density must be finite on R^{dim}")


def _import_from_cwd(mod_name: str, spec: str):
    """Import ``mod_name``, searching the current working directory first (a user's ``my_density.py``)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {mod_name!r} for target {spec!r} (searched the current directory "
                         f"{cwd} and sys.path): {e}") from e
    finally:
        if added:
            sys.path.remove(cwd)


def load_target(spec: str, dim: int | None) -> FunctionTarget:
    """Load ``package.module:function`` (a log-density of x ``[B, dim]``; the module is looked up in the current
    directory first, then on sys.path) and validate it.  A function may declare its dimension as an attribute
    ``fn.dim``: then ``dim`` must equal it (or be None to take it)."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"a user target must be given as 'package.module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":")
    mod = _import_from_cwd(mod_name, spec)
    if not hasattr(mod, fn_name):
        raise ValueError(f"module {mod_name!r} has no attribute {fn_name!r}")
    fn = getattr(mod, fn_name)
    declared = getattr(fn, "dim", None)
    if declared is not None and dim is not None and int(declared) != dim:
        raise ValueError(f"--dim {dim} does not match the dimension {declared} declared by {spec!r} ({fn_name}.dim)")
    dim = dim if dim is not None else declared
    if dim is None:
        raise ValueError(f"a user target needs its dimension (--dim D, or an attribute {fn_name}.dim) for {spec!r}")
    return FunctionTarget(fn, int(dim), name=spec)


TARGETS = ("gmm9", "gmm40", "funnel", "dw", "dw554", "dw2053", "manywell", "gauss", "lgcp", "lgcp_dds", "logreg_bc")


def get_target(name: str, dim: int | None = None, **kwargs) -> Target:
    """Build a target by name (see ``TARGETS``) or load ``package.module:function`` (needs ``dim``)."""
    if ":" in name:
        return load_target(name, dim)
    builders: dict[str, Callable[[], Target]] = {
        "gmm9": lambda: gmm9(**kwargs),
        "gmm40": lambda: gmm40(dim or 2, **kwargs),
        "funnel": lambda: Funnel(dim or 10, **kwargs),
        "dw": lambda: DoubleWell(dim or 5, **kwargs),
        "dw554": lambda: DoubleWell(5, 5, 4.0),
        "dw2053": lambda: DoubleWell(20, 5, 3.0),
        "manywell": lambda: ManyWell(dim or 32),
        "gauss": lambda: gaussian(torch.zeros(dim or 2), **kwargs),
        "lgcp": lambda: LGCP(**kwargs),
        "lgcp_dds": lambda: LGCP(pines="dds", **kwargs),
        "logreg_bc": lambda: LogisticRegression(**kwargs),
    }
    if name not in builders:
        raise ValueError(f"unknown target {name!r}; expected one of {list(TARGETS)} or 'package.module:function'")
    t = builders[name]()
    if dim is not None and t.dim != dim:
        raise ValueError(f"target {name!r} has dimension {t.dim}, but dim={dim} was requested")
    return t
