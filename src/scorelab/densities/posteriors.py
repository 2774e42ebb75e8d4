r"""Bayesian posteriors at the benchmarks' scale: a log-Gaussian Cox process (d = 1600) and Bayesian logistic
regression on scikit-learn's breast-cancer data (d = 31).  Their log Z (the marginal likelihood) has no closed form;
the reference values below come from long adaptive-SMC runs of ``densities.smc`` (command and error bar stated).

Both are a Gaussian prior N(m, C C^T) times a likelihood L, rho(x) = N(x; m, C C^T) L(x), so Z = E_prior[L] and the
prior is the natural base of annealing (``reference_base`` returns (m, C)).

Log-Gaussian Cox process on the Finnish pines data (Moeller, Syversveen & Waagepetersen 1998; the set-up of Heng et
al.'s controlled SMC, annealed_flow_transport ``LogGaussianCoxPines``, PIS (Zhang & Chen 2022), DDS (Vargas et al.
2023) and sde_sampler ``distr/cox.py``): the 126 points, already in the unit square, binned on a 40 x 40 grid, latent
field x on the cells,

=================  ====================================================================================
data               y_i = number of points in cell i = (r, c): r = floor(M p_1), c = floor(M p_2) (a point on the
                   upper / right edge goes to the last cell), i = r M + c; ``pines_points``, ``bin_counts``
prior              x ~ N(mu_0 1, K),  K_ij = sigma^2 exp(-|g_i - g_j| / (M beta)),  g_i = (r, c) the cell's
                   index, M = 40, sigma^2 = 1.91, beta = 1/33, mu_0 = log(126) - sigma^2 / 2
likelihood         log L(x) = sum_i [x_i y_i - a exp(x_i)],  a = 1 / M^2 (bin area)
=================  ====================================================================================

The target is unwhitened (coordinates x, as in annealed_flow_transport's experiments and sde_sampler's default
``use_whitened=False``); the whitened form N(w; 0, I) L(mu_0 + C w) has the same Z = E_prior[L].

**Data.** ``data/pines.csv`` ships with the package (taken from juliusberner/sde_sampler ``data/pines.csv``, MIT
licence; provenance in ``data/README.md``), and so does ``data/pines_dds.csv``, the different pines file of the DDS
repository (127 rows, the first repeated; 63 of the 1600 cell counts differ): ``LGCP(pines="dds")``, target
``lgcp_dds``.

**Reference log Z: two files, two targets.**  The published 512.6 (DDS's plots' "ground truth", copied into
sde_sampler ``cox.py`` as "taken from DDS paper, computed using long run SMC chain (1000 temperatures, 30 seeds with
2000 samples each)") was computed on DDS's file -> ``LGCP_PUBLISHED``, the ``log_Z_published`` of ``lgcp_dds``.
sde_sampler pairs it with the other file; on that file (ours, the default) log Z is 10.7 nats lower:

=================  ====================================================================================
``pines.csv``      ``LGCP_REFERENCE`` = 501.874 +- 0.350: adaptive SMC (``densities.smc``, settings below);
                   bidirectional AIS (``smc.bdmc_log_Z``, 800 temperatures): log Z in [501.72, 501.82] +- 0.06
``pines_dds.csv``  ``LGCP_DDS_REFERENCE`` = 512.518 +- 0.351: adaptive SMC, the same settings; the published 512.6
                   agrees
=================  ====================================================================================

The posterior is strictly log-concave (Gaussian prior, Poisson log-likelihood concave in x): one mode, so MALA in
the Laplace approximation's coordinates mixes, and the reverse-AIS bound from the forward run's end points (not an
exact posterior draw: a bound to trust, not a proof) can be believed; on simulated counts (``lgcp_simulate``) the
reverse pass starts from the exact latent and the bracket holds the SMC estimate (benchmarks/densities_scale.py
``--bdmc``).  The same SMC recovers exact log Z at d = 1600 with independent cells (``lgcp_log_Z_independent``) and
on a Gaussian surrogate with the correlated prior.

``lgcp_counts`` simulates counts from the same prior (a test of the construction; ``LGCP(counts=lgcp_counts(seed))``).

Bayesian logistic regression: breast-cancer data (569 x 30, ``sklearn.datasets.load_breast_cancer``, shipped with
scikit-learn), features standardized (mean 0, std 1 per column) with an intercept column prepended, d = 31, prior
theta ~ N(0, I), log L(theta) = sum_n [y_n z_n - softplus(z_n)], z = X theta.
"""
from __future__ import annotations

import math
from importlib import resources

import numpy as np
import torch

from .target_base import Target

# Reference log Z: adaptive SMC (densities.smc.reference_log_Z), mean +- standard error over independent runs.
# Regenerate: python benchmarks/densities_scale.py --reference  (writes benchmarks/results/densities_reference.json)
# lgcp (pines): 3 runs each, n = 256 (python benchmarks/densities_scale.py --reference --only lgcp; results .md):
#   from the prior, 10 MALA steps, ESS 0.8: 502.018 +- 0.055 (runs 502.106, 501.915, 502.034)
#   from the prior, 20 MALA steps, ESS 0.9: 501.524 +- 0.063 (runs 501.399, 501.587, 501.588)
#   from the Laplace approximation (LGCP.laplace_base), 20 MALA steps, ESS 0.9: 501.874 +- 0.010 (runs 501.895,
#   501.862, 501.866): the reference (the path that starts nearest the posterior, smallest spread); its error bar adds
#   the largest shift to the other two settings, 0.350, to the statistical error: sqrt(0.010^2 + 0.350^2) = 0.350.
#   the same with 4 x the particles (n = 1024): 501.790 +- 0.046 (runs 501.854, 501.815, 501.700; 622 CPU-s): no drift.
# Bidirectional AIS (python benchmarks/densities_scale.py --bdmc): 800 temperatures, 64 chains: [501.72, 501.82]
# +- 0.06, which the reference (within 1 standard error of the upper end) agrees with.
LGCP_REFERENCE: tuple[float, float] | None = (501.874, 0.350)
# pines_dds.csv (LGCP(pines="dds")): from the Laplace approximation, 20 MALA steps, ESS 0.9, n = 256, 3 runs
# (python benchmarks/densities_scale.py --reference --only lgcp_dds): 512.518 +- 0.025 (runs 512.537, 512.549,
# 512.469; 152 CPU-s); the error bar widened as pines.csv's by its settings spread: sqrt(0.025^2 + 0.350^2) = 0.351.
# The published 512.6 (LGCP_PUBLISHED) is 0.08 above: they agree.
LGCP_DDS_REFERENCE: tuple[float, float] | None = (512.518, 0.351)
# published (DDS, as quoted in juliusberner/sde_sampler sde_sampler/distr/cox.py): log Z of the DDS file, source
LGCP_PUBLISHED: tuple[float, str] = (512.6, "DDS (Vargas et al. 2023) long-run SMC on DDS's pines file (the "
                                            "notebooks' exp_truth_data; quoted in sde_sampler cox.py)")
PINES_FILES = {"sde_sampler": "pines.csv", "dds": "pines_dds.csv"}  # data/README.md
# logreg_bc: 4 runs, n = 1024, 20 MALA steps, ESS 0.9 (runs -55.351, -55.250, -55.262, -55.226; 30 CPU-s)
LOGREG_REFERENCE: tuple[float, float] | None = (-55.272, 0.027)


def lgcp_simulate(grid: int = 40, seed: int = 0, sigma2: float = 1.91, beta: float = 1 / 33,
                  mean_count: float = 126.0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y), both ``[grid * grid]``: a *simulated* log-Gaussian Cox process, latent x ~ N(mu_0, K) (module
    docstring) and counts y_i ~ Poisson(exp(x_i) / grid^2); numpy PCG64 seeded with ``seed`` (deterministic; not
    the pines data).  x is an exact draw from the posterior given y (the pair is a joint draw): the exact start of
    reverse AIS (``smc.bdmc_log_Z(posterior=x[None])``)."""
    rng = np.random.default_rng(seed)
    K = lgcp_kernel(grid, sigma2, beta).numpy()
    mu0 = math.log(mean_count) - 0.5 * sigma2
    x = mu0 + np.linalg.cholesky(K) @ rng.standard_normal(grid * grid)
    return x, rng.poisson(np.exp(x) / grid**2).astype(np.float64)


def lgcp_counts(grid: int = 40, seed: int = 0, sigma2: float = 1.91, beta: float = 1 / 33,
                mean_count: float = 126.0) -> np.ndarray:
    """Counts ``[grid * grid]`` of a simulated log-Gaussian Cox process (``lgcp_simulate``'s y)."""
    return lgcp_simulate(grid, seed, sigma2, beta, mean_count)[1]


def pines_points(pines: str = "sde_sampler") -> np.ndarray:
    """The Finnish pines saplings in the unit square: ``[126, 2]`` from ``data/pines.csv`` (``pines="sde_sampler"``)
    or ``[127, 2]`` from ``data/pines_dds.csv`` (``"dds"``: headerless, the first row repeated and kept, as the DDS
    code reads it)."""
    if pines not in PINES_FILES:
        raise ValueError(f"pines must be one of {sorted(PINES_FILES)}, got {pines!r}")
    text = (resources.files(__package__) / "data" / PINES_FILES[pines]).read_text()
    if pines == "dds":
        return np.array([[float(v) for v in line.split(",")] for line in text.strip().splitlines()], dtype=np.float64)
    rows = [line.split(",") for line in text.strip().splitlines()[1:]]
    return np.array([[float(r[1]), float(r[2])] for r in rows], dtype=np.float64)


def bin_counts(points: np.ndarray, grid: int) -> np.ndarray:
    """Counts ``[grid * grid]`` of points ``[N, 2]`` in [0, 1]^2 per cell (r, c) = floor(grid p), flattened r grid + c;
    a point on the upper or right edge counts in the last cell (module docstring)."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"bin_counts: points must be [N, 2] in the unit square, got shape {p.shape}")
    rc = np.minimum(np.floor(p * grid).astype(np.int64), grid - 1)
    return np.bincount(rc[:, 0] * grid + rc[:, 1], minlength=grid * grid).astype(np.float64)


def lgcp_kernel(grid: int, sigma2: float, beta: float) -> torch.Tensor:
    """K_ij = sigma2 exp(-||g_i - g_j|| / (grid beta)) on the cells' integer (row, col) indices g; ``[M^2, M^2]``."""
    idx = torch.arange(grid, dtype=torch.float64)
    g = torch.cartesian_prod(idx, idx)
    return sigma2 * torch.exp(-torch.cdist(g, g) / (grid * beta))


class LGCP(Target):
    """Log-Gaussian Cox process posterior on a ``grid`` x ``grid`` lattice (d = grid^2; module docstring), counts of
    the pines points (``bin_counts(pines_points(pines), grid)``; ``pines`` "sde_sampler" or "dds", module docstring)
    unless ``counts`` is given.  log rho = log N(x; mu_0, K) + log L(x)."""

    name = "lgcp"

    def __init__(self, grid: int = 40, counts: np.ndarray | None = None, sigma2: float = 1.91, beta: float = 1 / 33,
                 pines: str = "sde_sampler"):
        if int(grid) != grid or grid < 1:
            raise ValueError(f"lgcp: grid must be a positive integer, got {grid}")
        super().__init__(grid * grid)
        self.grid = int(grid)
        y = bin_counts(pines_points(pines), self.grid) if counts is None else np.asarray(counts, dtype=np.float64)
        if y.shape != (self.dim,):
            raise ValueError(f"lgcp: counts must have shape [{self.dim}], got {y.shape}")
        self.counts = torch.as_tensor(y)
        self.area, self.mu0 = 1.0 / self.dim, math.log(126.0) - 0.5 * sigma2
        K = lgcp_kernel(self.grid, sigma2, beta)
        self.chol = torch.linalg.cholesky(K)
        eye = torch.eye(self.dim, dtype=torch.float64)
        self.prec = torch.cholesky_solve(eye, self.chol)  # K^{-1}, so that log rho and its score are one GEMM
        self._log_norm = -0.5 * self.dim * math.log(2 * math.pi) - float(torch.log(torch.diagonal(self.chol)).sum())
        standard = counts is None and grid == 40 and sigma2 == 1.91 and beta == 1 / 33  # the pines benchmark
        dds = pines == "dds"
        if dds:
            self.name = "lgcp_dds"
        ref = (LGCP_DDS_REFERENCE if dds else LGCP_REFERENCE) if standard else None
        self.log_Z, self.log_Z_stderr = ref if ref else (None, None)
        ref_name = "LGCP_DDS_REFERENCE" if dds else "LGCP_REFERENCE"
        self.log_Z_source = f"adaptive SMC reference (densities.smc), see {ref_name}" if ref else None
        self.log_Z_published = LGCP_PUBLISHED[0] if (standard and dds) else None

    def _parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        r = x - self.mu0
        return r, r @ self.prec.to(x)

    def log_prob_unnorm(self, x):
        """log N(x; mu_0, K) + sum_i [x_i y_i - a exp(x_i)]. Shapes: x [B, 1600] -> [B]."""
        r, pr = self._parts(x)
        prior = -0.5 * (r * pr).sum(1) + self._log_norm
        return prior + (x * self.counts.to(x) - self.area * torch.exp(x)).sum(1)

    def score(self, x):
        """-K^{-1}(x - mu_0) + y - a exp(x) in closed form. Shapes: x [B, d] -> [B, d]."""
        _, pr = self._parts(x)
        return -pr + self.counts.to(x) - self.area * torch.exp(x)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log L(x) = sum_i [x_i y_i - a exp(x_i)]. Shapes: x [B, d] -> [B]."""
        return (x * self.counts.to(x) - self.area * torch.exp(x)).sum(1)

    def reference_base(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(m ``[d]``, C ``[d, d]``): the prior N(m, C C^T) = N(mu_0, K), the base of annealing."""
        return torch.full((self.dim,), self.mu0, dtype=torch.float64), self.chol

    def laplace_base(self, tol: float = 1e-10, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
        """(x*, C): the mode x* of log rho by Newton's method (Hessian -K^{-1} - a diag(exp x), closed form; log rho
        is strictly concave) and the Cholesky factor C of the Laplace covariance (K^{-1} + a diag(exp x*))^{-1}: a
        second annealing base for ``smc_log_Z(base=...)``, independent of the prior path."""
        x = torch.full((self.dim,), self.mu0, dtype=torch.float64)
        for _ in range(max_iter):
            P = self.prec + torch.diag(self.area * torch.exp(x))
            step = torch.linalg.solve(P, self.score(x[None])[0])
            x = x + step
            if float(step.abs().max()) < tol:
                break
        else:
            raise ValueError(f"lgcp: Newton's method did not converge in {max_iter} iterations")
        P = self.prec + torch.diag(self.area * torch.exp(x))
        return x, torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(P)))


def lgcp_log_Z_independent(counts: np.ndarray, sigma2: float = 1.91, area: float = 1 / 1600,
                           mean_count: float = 126.0) -> float:
    """Exact log Z of the LGCP with a *diagonal* prior K = sigma2 I (cells independent, the beta -> 0 limit of the
    kernel): sum_i log int N(x; mu_0, sigma2) exp(y_i x - a e^x) dx, one 1-D ``scipy.integrate.quad`` per distinct
    count.  The oracle for ``smc_log_Z`` at d = 1600 on the pines counts (``LGCP(beta=1e-4)``: K = sigma2 I up to
    exp(-M / (M beta)) ~ 1e-109)."""
    from scipy import integrate
    mu0 = math.log(mean_count) - 0.5 * sigma2
    total = 0.0
    for y, mult in zip(*np.unique(np.asarray(counts, dtype=np.float64), return_counts=True), strict=True):
        def log_f(x, y=y):
            return -0.5 * (x - mu0) ** 2 / sigma2 - 0.5 * math.log(2 * math.pi * sigma2) + y * x - area * math.exp(x)
        peak = max(mu0, math.log(max(y, 1.0) / area))  # above the integrand's mode: one scale for exp below
        top = log_f(peak) if y > 0 else log_f(mu0)
        val, _ = integrate.quad(lambda x, f=log_f, c=top: math.exp(f(x) - c), mu0 - 40, peak + 10,
                                points=[mu0, peak], limit=200, epsabs=0, epsrel=1e-11)
        total += mult * (math.log(val) + top)
    return total


def breast_cancer_design() -> tuple[torch.Tensor, torch.Tensor]:
    """(X ``[569, 31]``: intercept column + standardized features, y ``[569]`` in {0, 1}) from scikit-learn."""
    from sklearn.datasets import load_breast_cancer
    data = load_breast_cancer()
    f = torch.as_tensor(data.data, dtype=torch.float64)
    f = (f - f.mean(0)) / f.std(0, unbiased=False)
    X = torch.cat([torch.ones(len(f), 1, dtype=torch.float64), f], dim=1)
    return X, torch.as_tensor(data.target, dtype=torch.float64)


class LogisticRegression(Target):
    """Bayesian logistic regression posterior, prior theta ~ N(0, prior_std^2 I), on (X, y) (default: breast
    cancer, d = 31).  log rho = log N(theta; 0, prior_std^2 I) + sum_n [y_n z_n - softplus(z_n)], z = X theta."""

    name = "logreg_bc"

    def __init__(self, X: torch.Tensor | None = None, y: torch.Tensor | None = None, prior_std: float = 1.0):
        if (X is None) != (y is None):
            raise ValueError("logistic regression needs both X and y, or neither (breast cancer)")
        default = X is None and prior_std == 1.0
        if X is None:
            X, y = breast_cancer_design()
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"logistic regression: X must be [N, d] and y [N], got {tuple(X.shape)}, {tuple(y.shape)}")
        if not prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {prior_std}")
        super().__init__(X.shape[1])
        self.X, self.y, self.prior_std = X.to(torch.float64), y.to(torch.float64), float(prior_std)
        self.log_Z = LOGREG_REFERENCE[0] if (default and LOGREG_REFERENCE) else None
        self.log_Z_stderr = LOGREG_REFERENCE[1] if (default and LOGREG_REFERENCE) else None
        self.log_Z_source = "adaptive SMC reference (densities.smc), see LOGREG_REFERENCE" if self.log_Z else None

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """sum_n [y_n z_n - softplus(z_n)], z = X theta. Shapes: x [B, d] -> [B]."""
        self._check(x)
        z = x @ self.X.to(x).T  # [B, N]
        return (z * self.y.to(x) - torch.nn.functional.softplus(z)).sum(1)

    def log_prob_unnorm(self, x):
        """log N(theta; 0, prior_std^2 I) + log L(theta). Shapes: x [B, d] -> [B]."""
        s = self.prior_std
        prior = -0.5 * (x / s).pow(2).sum(1) - self.dim * (math.log(s) + 0.5 * math.log(2 * math.pi))
        return prior + self.log_likelihood(x)

    def score(self, x):
        """-theta / prior_std^2 + X^T (y - sigmoid(X theta)) in closed form. Shapes: x [B, d] -> [B, d]."""
        self._check(x)
        z = x @ self.X.to(x).T
        return -x / self.prior_std**2 + (self.y.to(x) - torch.sigmoid(z)) @ self.X.to(x)

    def reference_base(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, C) of the prior N(0, prior_std^2 I): the base of annealing."""
        return torch.zeros(self.dim, dtype=torch.float64), self.prior_std * torch.eye(self.dim, dtype=torch.float64)
