r"""Forward (noising) processes as a pair of functions (alpha(t), sigma(t)).

Every process gives the marginal x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I), and the linear SDE
dx = f(t) x dt + g(t) dW with the same marginals (Song et al. 2021, "Score-based generative modeling through
SDEs", eqs. 25-29; Karras et al. 2022, Table 1).  Time runs from 0 (data) to T (noise).

Notation
--------
=================  ==============================================================
``alpha(t)``       signal scale alpha_t (sqrt(alpha_bar) in DDPM notation)
``sigma(t)``       noise scale sigma_t
``log_snr(t)``     lambda_t = log(alpha_t^2 / sigma_t^2)
``drift_coef(t)``  f(t) = d log alpha_t / dt   (drift f(t) x)
``diffusion_sq``   g^2(t) = d sigma_t^2/dt - 2 f(t) sigma_t^2
``B(t)``           integral of beta(s) ds over [0, t] (VP, SubVP)
=================  ==============================================================

The prior p_T is N(0, prior_std^2 I): prior_std = 1 for VP/SubVP/Discrete and sigma(T) for VE/EDM.  For data of
variance v per coordinate the marginal at t_max has variance alpha_T^2 v + sigma_T^2; ``prior_mismatch`` reports
the relative gap to the prior variance.  Documented tolerances (v in [0, 1], checked in the tests): VP 1e-4, SubVP 1e-4,
VP cosine 1e-4, VE 1e-3, EDM 1e-3; DDPM linear N=1000 1e-4.  A ``Discrete`` chain with few steps or small betas can be
far from its prior (the SFT-PG small-T setting): check ``prior_mismatch()`` before trusting prior sampling.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .._utils import TimeLike, as_tensor, bcast, check_positive


class ForwardProcess:
    """Base class. Subclasses define ``log_alpha``, ``log_sigma``, ``drift_coef``, ``diffusion_sq``,
    ``t_from_log_snr`` and the time interval ``[t_min, t_max]``."""

    name: str = "process"
    t_min: float = 1e-3
    t_max: float = 1.0
    prior_std: float = 1.0

    # -- primitives (subclasses) --------------------------------------------------------------
    def log_alpha(self, t: TimeLike) -> torch.Tensor:
        """log alpha(t), the log signal scale. Shapes: t [...] -> [...]."""
        raise NotImplementedError

    def log_sigma(self, t: TimeLike) -> torch.Tensor:
        """log sigma(t), the log noise scale. Shapes: t [...] -> [...]."""
        raise NotImplementedError

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        """f(t) with drift f(t) x (d log alpha/dt)."""
        raise NotImplementedError

    def diffusion_sq(self, t: TimeLike) -> torch.Tensor:
        """g(t)^2 = d sigma^2/dt - 2 f sigma^2."""
        raise NotImplementedError

    def t_from_log_snr(self, lam: TimeLike) -> torch.Tensor:
        """Inverse of ``log_snr``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description; ``process_from_config`` inverts it."""
        raise NotImplementedError

    # -- derived ----------------------------------------------------------------------------
    def alpha(self, t: TimeLike) -> torch.Tensor:
        """Signal scale alpha(t) = exp(log_alpha(t)). Shapes: t [...] -> [...]."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: TimeLike) -> torch.Tensor:
        """Noise scale sigma(t) = exp(log_sigma(t)). Shapes: t [...] -> [...]."""
        return torch.exp(self.log_sigma(t))

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        """lambda(t) = log(alpha^2/sigma^2), decreasing in t."""
        return 2.0 * (self.log_alpha(t) - self.log_sigma(t))

    def coefs(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t), lambda(t)/2) in one call.

        Samplers ask for the same few grid times many times per step; for a scalar CPU time that needs no gradient
        the triple is memoised (keyed by value and dtype, bounded size), which removes most per-step overhead."""
        return self._memo("coefs", t, lambda u: (self.alpha(u), self.sigma(u), 0.5 * self.log_snr(u)))

    def sde_coefs(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(t), g^2(t)), memoised like ``coefs``."""
        return self._memo("sde", t, lambda u: (self.drift_coef(u), self.diffusion_sq(u)))

    def coefs_at(self, ts: torch.Tensor) -> list[tuple[float, float, float]]:
        """``coefs`` at every time of a 1-D CPU grid as Python floats [(alpha, sigma, lambda/2), ...].

        Reads and fills the same memo as scalar ``coefs(t)`` (misses are computed in one vectorised call), so a
        sampler that precomputes its grid and a step function called time by time see bit-identical values."""
        return self._memo_at("coefs", ts, lambda u: (self.alpha(u), self.sigma(u), 0.5 * self.log_snr(u)))

    def sde_coefs_at(self, ts: torch.Tensor) -> list[tuple[float, float]]:
        """``sde_coefs`` at every time of a 1-D CPU grid as floats [(f, g^2), ...], memoised like ``coefs_at``."""
        return self._memo_at("sde", ts, lambda u: (self.drift_coef(u), self.diffusion_sq(u)))

    def warm_coefs(self, ts: torch.Tensor) -> None:
        """Fill the scalar memo of ``coefs`` for every time of a 1-D CPU tensor in one vectorised call (e.g. a grid in
        the model's dtype, whose x0 / eps / score conversions then find their coefficients)."""
        self._memo_at("coefs", ts, lambda u: (self.alpha(u), self.sigma(u), 0.5 * self.log_snr(u)), floats=False)

    def _memo_at(self, kind: str, ts: torch.Tensor, fn, floats: bool = True) -> list[tuple[float, ...]] | None:
        ts = _t(ts).detach()
        if ts.ndim != 1 or ts.device.type != "cpu":
            raise ValueError(f"coefs_at needs a 1-D CPU tensor of times, got shape {tuple(ts.shape)} on {ts.device}")
        cache = self.__dict__.setdefault("_coef_cache", {})
        keys = [(kind, v, ts.dtype) for v in ts.tolist()]
        vals = [cache.get(k) for k in keys]
        miss = [j for j, v in enumerate(vals) if v is None]
        out = [None] * len(vals)
        if miss:
            new = fn(ts[miss])
            cols = [v.unbind(0) for v in new]  # 0-d entries in one call each (indexing is ~1 us per entry)
            fresh = list(zip(*(v.tolist() for v in new), strict=True)) if floats else None  # = .item() of each
            if len(cache) + len(miss) > 4096:
                cache.clear()
            for c, j in enumerate(miss):
                vals[j] = cache[keys[j]] = tuple(col[c] for col in cols)
                if floats:
                    out[j] = fresh[c]
        if not floats:
            return None
        return [tuple(v.item() for v in vals[j]) if o is None else o for j, o in enumerate(out)]

    def _memo(self, kind: str, t: TimeLike, fn):
        t = _t(t)
        if t.ndim != 0 or not t.is_cpu or t.requires_grad:  # is_cpu: device.type == "cpu" without a device object
            return fn(t)
        cache = self.__dict__.setdefault("_coef_cache", {})
        key = (kind, t.item(), t.dtype)
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= 4096:
                cache.clear()
            hit = cache[key] = fn(t)
        return hit

    def marginal_sample(
        self, x0: torch.Tensor, t: TimeLike, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x_t ~ q(x_t | x_0). Returns ``(x_t, eps)`` with x_t = alpha x0 + sigma eps."""
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        a, s = bcast(self.alpha(as_tensor(t, x0)), x0), bcast(self.sigma(as_tensor(t, x0)), x0)
        return a * x0 + s * eps, eps

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """x_T ~ N(0, prior_std^2 I) of the given shape ``[B, ...]``."""
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, prior_std^2 I) summed over non-batch dims -> ``[B]``."""
        d = x[0].numel()
        sq = x.reshape(x.shape[0], -1).pow(2).sum(1)
        return -0.5 * sq / self.prior_std**2 - d * (math.log(self.prior_std) + 0.5 * math.log(2 * math.pi))

    def prior_mismatch(self, data_var: float = 0.0) -> float:
        """|Var of the marginal at t_max - prior variance| / prior variance, for data of variance ``data_var``.

        With the default ``data_var=0`` (a point mass) this measures the signal left at t_max; a process whose
        value is large (e.g. a 10-step DDPM chain) does not reach its prior, and sampling from the prior is biased."""
        t = torch.tensor(self.t_max, dtype=torch.float64)
        var = self.alpha(t) ** 2 * data_var + self.sigma(t) ** 2
        return float(abs(var - self.prior_std**2) / self.prior_std**2)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def _t(t: TimeLike) -> torch.Tensor:
    return as_tensor(t)


class VP(ForwardProcess):
    """Variance-preserving SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, eq. 11).

    B(t) = beta_min t + (beta_max - beta_min) t^2 / 2, alpha = exp(-B/2), sigma^2 = 1 - exp(-B),
    f = -beta/2, g^2 = beta.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        check_positive("beta_min", beta_min)
        if beta_max < beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")
        self.beta_min, self.beta_max, self.t_min, self.t_max = float(beta_min), float(beta_max), t_min, t_max

    def beta(self, t: TimeLike) -> torch.Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, eq. 11). Shapes: t [...] -> [...]."""
        return self.beta_min + _t(t) * (self.beta_max - self.beta_min)

    def int_beta(self, t: TimeLike) -> torch.Tensor:
        """B(t) = integral of beta over [0, t] = beta_min t + (beta_max - beta_min) t^2 / 2. Shapes: t [...]
        -> [...]."""
        t = _t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def t_from_int_beta(self, b: torch.Tensor) -> torch.Tensor:
        """Inverse of ``int_beta``: the t >= 0 with B(t) = b (stable root of the quadratic). Shapes: b [...]
        -> t [...]."""
        db = self.beta_max - self.beta_min
        if db == 0:
            return b / self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * db * b))

    def log_alpha(self, t):
        """log alpha(t) = -B(t)/2. Shapes: t [...] -> [...]."""
        return -0.5 * self.int_beta(t)

    def log_sigma(self, t):
        """log sigma(t) = log(1 - e^{-B(t)}) / 2, via expm1. Shapes: t [...] -> [...]."""
        return 0.5 * torch.log(-torch.expm1(-self.int_beta(t)))

    def log_snr(self, t):
        """lambda(t) = -log(e^{B(t)} - 1), via expm1 (no cancellation at small t). Shapes: t [...] -> [...]."""
        return -torch.log(torch.expm1(self.int_beta(t)))

    def drift_coef(self, t):
        """f(t) = -beta(t)/2. Shapes: t [...] -> [...]."""
        return -0.5 * self.beta(t)

    def diffusion_sq(self, t):
        """g^2(t) = beta(t). Shapes: t [...] -> [...]."""
        return self.beta(t)

    def t_from_log_snr(self, lam):
        """Inverse of ``log_snr``: B = softplus(-lambda), then t = int_beta^{-1}(B). Shapes: lam [...] -> t [...]."""
        return self.t_from_int_beta(torch.nn.functional.softplus(-_t(lam)))

    def config(self):
        """JSON-serialisable parameters; ``process_from_config`` inverts it."""
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max,
                "t_min": self.t_min, "t_max": self.t_max}


class SubVP(VP):
    """Sub-VP SDE (Song et al. 2021, eq. 12): same drift as VP, g^2 = beta (1 - e^{-2B}), sigma = 1 - e^{-B}."""

    name = "subvp"

    def log_sigma(self, t):
        """log sigma(t) = log(1 - e^{-B(t)}) (sub-VP: sigma = 1 - e^{-B}). Shapes: t [...] -> [...]."""
        return torch.log(-torch.expm1(-self.int_beta(t)))

    def log_snr(self, t):
        """lambda(t) = -B - 2 log(1 - e^{-B}). Shapes: t [...] -> [...]."""
        b = self.int_beta(t)
        return -b - 2 * torch.log(-torch.expm1(-b))

    def diffusion_sq(self, t):
        """g^2(t) = beta(t) (1 - e^{-2 B(t)}) (Song et al. 2021, eq. 12). Shapes: t [...] -> [...]."""
        return self.beta(t) * -torch.expm1(-2 * self.int_beta(t))

    def t_from_log_snr(self, lam):
        # sigma/alpha = r = e^{-lam/2} = (1-v^2)/v with v = e^{-B/2}  =>  B = 2 asinh(r/2)
        """Inverse of ``log_snr``: B = 2 asinh(e^{-lambda/2} / 2), then t = int_beta^{-1}(B). Shapes: lam
        [...] -> t [...]."""
        r = torch.exp(-0.5 * _t(lam))
        return self.t_from_int_beta(2 * torch.asinh(0.5 * r))


class VPCosine(ForwardProcess):
    """VP process with the cosine schedule (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2(phi(t)) / cos^2(phi(0)),
    phi(t) = (t + s)/(1 + s) * pi/2.  f = d log alpha/dt = -(pi/2) tan(phi)/(1+s), g^2 = -2 f.
    t_max defaults to 0.9946 (as in DPM-Solver) where alpha is still > 0."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if not 0 < t_max < 1:
            raise ValueError(f"VPCosine t_max must be in (0, 1) (alpha(1) = 0), got {t_max}")
        self.s, self.t_min, self.t_max = float(s), t_min, t_max
        self._log_cos0 = math.log(math.cos(s / (1 + s) * math.pi / 2))

    def _phi(self, t):
        return (_t(t) + self.s) / (1 + self.s) * math.pi / 2

    def log_alpha(self, t):
        """log alpha(t) = log cos(phi(t)) - log cos(phi(0)), clamped at 0 so alpha(0) = 1. Shapes: t [...] -> [...]."""
        return (torch.log(torch.cos(self._phi(t))) - self._log_cos0).clamp(max=0.0)  # alpha(0) = 1 despite rounding

    def log_sigma(self, t):
        """log sigma(t) = log(1 - alpha(t)^2) / 2. Shapes: t [...] -> [...]."""
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def drift_coef(self, t):
        """f(t) = -(pi/2) tan(phi(t)) / (1 + s). Shapes: t [...] -> [...]."""
        return -torch.tan(self._phi(t)) * (math.pi / 2) / (1 + self.s)

    def diffusion_sq(self, t):
        """g^2(t) = -2 f(t) (variance preserving). Shapes: t [...] -> [...]."""
        return -2 * self.drift_coef(t)

    def t_from_log_snr(self, lam):
        """Inverse of ``log_snr``: alpha^2 = sigmoid(lambda), phi = arccos(alpha cos phi(0)). Shapes: lam
        [...] -> t [...]."""
        log_alpha = 0.5 * torch.nn.functional.logsigmoid(_t(lam))
        phi = torch.arccos(torch.exp(log_alpha + self._log_cos0))
        return phi * 2 / math.pi * (1 + self.s) - self.s

    def config(self):
        """JSON-serialisable parameters; ``process_from_config`` inverts it."""
        return {"name": self.name, "s": self.s, "t_min": self.t_min, "t_max": self.t_max}


class VE(ForwardProcess):
    """Variance-exploding SDE (Song et al. 2021, eq. 9): alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t,
    f = 0, g^2 = 2 sigma^2 log(sigma_max/sigma_min).  Prior N(0, sigma_max^2 I)."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5, t_max: float = 1.0):
        check_positive("sigma_min", sigma_min)
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max ({sigma_max}) must be > sigma_min ({sigma_min})")
        self.sigma_min, self.sigma_max, self.t_min, self.t_max = float(sigma_min), float(sigma_max), t_min, t_max
        self._log_ratio = math.log(sigma_max / sigma_min)
        self.prior_std = float(self.sigma(torch.tensor(t_max, dtype=torch.float64)))

    def log_alpha(self, t):
        """log alpha(t) = 0 (alpha = 1). Shapes: t [...] -> [...]."""
        return torch.zeros_like(_t(t))

    def log_sigma(self, t):
        """log sigma(t) = log sigma_min + t log(sigma_max / sigma_min). Shapes: t [...] -> [...]."""
        return math.log(self.sigma_min) + _t(t) * self._log_ratio

    def drift_coef(self, t):
        """f(t) = 0. Shapes: t [...] -> [...]."""
        return torch.zeros_like(_t(t))

    def diffusion_sq(self, t):
        """g^2(t) = 2 sigma(t)^2 log(sigma_max / sigma_min). Shapes: t [...] -> [...]."""
        return 2 * self.sigma(t) ** 2 * self._log_ratio

    def t_from_log_snr(self, lam):
        """Inverse of ``log_snr``: t = (-lambda/2 - log sigma_min) / log(sigma_max / sigma_min). Shapes: lam
        [...] -> t [...]."""
        return (-0.5 * _t(lam) - math.log(self.sigma_min)) / self._log_ratio

    def config(self):
        """JSON-serialisable parameters; ``process_from_config`` inverts it."""
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "t_min": self.t_min, "t_max": self.t_max}


class EDM(ForwardProcess):
    """EDM process (Karras et al. 2022, Table 1): alpha = 1, sigma(t) = t, f = 0, g^2 = 2t; t in [0.002, 80]."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        check_positive("sigma_min", sigma_min)
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max ({sigma_max}) must be > sigma_min ({sigma_min})")
        self.t_min, self.t_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.prior_std = self.t_max

    def log_alpha(self, t):
        """log alpha(t) = 0 (alpha = 1). Shapes: t [...] -> [...]."""
        return torch.zeros_like(_t(t))

    def log_sigma(self, t):
        """log sigma(t) = log t (sigma = t). Shapes: t [...] -> [...]."""
        return torch.log(_t(t))

    def drift_coef(self, t):
        """f(t) = 0. Shapes: t [...] -> [...]."""
        return torch.zeros_like(_t(t))

    def diffusion_sq(self, t):
        """g^2(t) = 2 t (d sigma^2 / dt). Shapes: t [...] -> [...]."""
        return 2 * _t(t)

    def t_from_log_snr(self, lam):
        """Inverse of ``log_snr``: t = e^{-lambda/2}. Shapes: lam [...] -> t [...]."""
        return torch.exp(-0.5 * _t(lam))

    def config(self):
        """JSON-serialisable parameters; ``process_from_config`` inverts it."""
        return {"name": self.name, "sigma_min": self.t_min, "sigma_max": self.t_max, "sigma_data": self.sigma_data}


# ----------------------------------------------------------------------------------------------
# Discrete DDPM chains
# ----------------------------------------------------------------------------------------------
def linear_betas(n: int, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: beta_i linear from ``start`` to ``end`` (N=1000 in the paper)."""
    return torch.linspace(start, end, _check_n(n), dtype=torch.float64)


def cosine_betas(n: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: beta_i = 1 - abar(i/N)/abar((i-1)/N), clipped at ``max_beta``."""
    i = torch.arange(_check_n(n) + 1, dtype=torch.float64)
    abar = torch.cos((i / n + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def sigmoid_betas(n: int, start: float = 1e-5, end: float = 1e-2) -> torch.Tensor:
    """SFT-PG toy code (Fan & Lee 2023): sigmoid(linspace(-6, 6, N)) * (end - start) + start."""
    return torch.sigmoid(torch.linspace(-6, 6, _check_n(n), dtype=torch.float64)) * (end - start) + start


def li_betas(n: int, c0: float = 2.0, c1: float = 4.0) -> torch.Tensor:
    """Two-phase schedule of Li, Huang, Efimov, Wei, Chi & Chen 2024 (source 003, "noise schedule"):
    beta_1 = N^{-c0};  beta_t = (c1 log N / N) min{beta_1 (1 + c1 log N / N)^t, 1} for t >= 2.

    The exponential phase lasts about (c0/c1) N steps, so c1 > c0 is needed to reach the flat phase (defaults
    c0=2, c1=4: half the steps grow geometrically from N^-2, then beta = 4 log N / N and alpha_bar_N ~ N^-2)."""
    n = _check_n(n)
    if n < 2:
        raise ValueError("li_betas needs n >= 2 (log N must be positive)")
    beta1 = n ** (-c0)
    k = c1 * math.log(n) / n
    t = torch.arange(1, n + 1, dtype=torch.float64)
    betas = k * torch.clamp(beta1 * (1 + k) ** t, max=1.0)
    betas[0] = beta1
    return betas.clamp(max=0.999)


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas, "li": li_betas}


def _check_n(n: int) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"number of steps N must be a positive integer, got {n}")
    return int(n)


class Discrete(ForwardProcess):
    r"""A DDPM chain x_i = sqrt(1-beta_i) x_{i-1} + sqrt(beta_i) z, i = 1..N (Ho et al. 2020, eq. 2).

    alpha_bar_i = prod_{j<=i} (1 - beta_j).  Continuous view: step i sits at time t_i = i/N and log alpha_bar is
    interpolated linearly in t between steps, so t_min = 1/N (first noisy step), t_max = 1, alpha(0) = 1.
    ``index(t)`` maps times back to (fractional) step indices i = t N, the input of a network trained on steps.
    """

    name = "discrete"

    def __init__(self, betas: torch.Tensor | list[float], schedule: str | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1 or not torch.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a non-empty sequence of numbers in (0, 1)")
        self.betas, self.N, self.schedule = betas, betas.numel(), schedule
        self.alphas = 1 - betas
        log_abar = torch.cumsum(torch.log1p(-betas), 0)
        self.log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), log_abar])  # index 0..N
        self.alpha_bar = torch.exp(self.log_abar)  # alpha_bar[i], alpha_bar[0] = 1
        self.one_minus_abar = -torch.expm1(self.log_abar)  # 1 - alpha_bar[i] without cancellation
        self.t_min, self.t_max = 1.0 / self.N, 1.0

    @classmethod
    def from_schedule(cls, name: str, n: int, **kwargs: float) -> "Discrete":
        """A chain of ``n`` steps with a named beta schedule (``linear``, ``cosine``, ``sigmoid``, ``li``;
        keyword arguments go to the schedule function, e.g. ``start``, ``end``). Raises ValueError for an
        unknown name."""
        if name not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta schedule {name!r}; expected one of {sorted(BETA_SCHEDULES)}")
        obj = cls(BETA_SCHEDULES[name](n, **kwargs), schedule=name)
        obj._schedule_kwargs = dict(kwargs)
        return obj

    def times(self) -> torch.Tensor:
        """Times t_i = i/N of the chain's states i = 0..N (float64)."""
        return torch.arange(self.N + 1, dtype=torch.float64) / self.N

    def snap_to_states(self, ts: torch.Tensor) -> torch.Tensor:
        """A decreasing 1-D grid ``[n+1]`` moved onto the chain's states t_i = i/N: each time > 0 to its nearest
        state in 1..N, collisions pushed apart so that the grid stays strictly decreasing with the same number of
        points (a final t = 0 stays).  A network trained on integer steps (DDPM, diffusers) is only ever evaluated
        where it was trained, as diffusers' schedulers do with their integer timesteps.  Raises ``ValueError`` when
        the grid has more positive points than the chain has states."""
        ts = torch.as_tensor(ts, dtype=torch.float64)
        zero = bool(ts[-1] == 0)
        body = ts[:-1] if zero else ts
        if body.numel() > self.N:
            raise ValueError(f"a grid of {body.numel()} positive times cannot lie on the {self.N} states of this chain")
        k = torch.round(body * self.N).clamp(1, self.N).long().tolist()
        for j in range(len(k) - 2, -1, -1):  # from the data end up: k_j > k_{j+1}
            k[j] = max(k[j], k[j + 1] + 1)
        if k and k[0] > self.N:  # pushed past the top: push down from t_max instead
            k[0] = self.N
            for j in range(1, len(k)):
                k[j] = min(k[j], k[j - 1] - 1)
        out = torch.tensor(k, dtype=torch.float64) / self.N
        return torch.cat([out, out.new_zeros(1)]) if zero else out

    def index(self, t: TimeLike) -> torch.Tensor:
        """Fractional step index i = t N of time t (the input of a network trained on steps). Shapes: t [...]
        -> [...]."""
        return _t(t) * self.N

    def _interp(self, t: torch.Tensor) -> torch.Tensor:
        t = _t(t)
        pos = (t.to(torch.float64) * self.N).clamp(0, self.N)
        i0 = pos.floor().clamp(max=self.N - 1).long()
        w = pos - i0
        la = self.log_abar.to(t.device)
        return ((1 - w) * la[i0] + w * la[i0 + 1]).to(t.dtype if t.is_floating_point() else torch.float64)

    def log_alpha(self, t):
        """log alpha(t) = log alpha_bar(t) / 2, log alpha_bar linear in t between steps. Shapes: t [...] -> [...]."""
        return 0.5 * self._interp(t)

    def log_sigma(self, t):
        """log sigma(t) = log(1 - alpha_bar(t)) / 2, via expm1. Shapes: t [...] -> [...]."""
        return 0.5 * torch.log(-torch.expm1(self._interp(t)))

    def log_snr(self, t):
        """lambda(t) = log alpha_bar - log(1 - alpha_bar) at the interpolated alpha_bar(t). Shapes: t [...] -> [...]."""
        la = self._interp(t)
        return la - torch.log(-torch.expm1(la))

    def drift_coef(self, t):
        """f(t) = (d/dt) log alpha(t): N/2 (log alpha_bar_i - log alpha_bar_{i-1}) on segment (i-1, i].
        Shapes: t [...] -> [...]."""
        t = _t(t)
        pos = (t.to(torch.float64) * self.N).clamp(0, self.N)
        i = (pos - 1e-9).ceil().clamp(min=1).long()  # segment (i-1, i]; tolerance: 3/10*10 = 3.0000000000000004
        slope = (self.log_abar[1:] - self.log_abar[:-1]).to(t.device)[i - 1] * self.N
        return (0.5 * slope).to(t.dtype if t.is_floating_point() else torch.float64)

    def diffusion_sq(self, t):
        """g^2(t) = -2 f(t) (variance preserving). Shapes: t [...] -> [...]."""
        return -2 * self.drift_coef(t)

    def t_from_log_snr(self, lam):
        """Inverse of ``log_snr`` on the piecewise-linear log alpha_bar (binary search, then linear). Shapes:
        lam [...] -> t [...]."""
        lam = _t(lam)
        target = -torch.nn.functional.softplus(-lam.to(torch.float64))  # log alpha_bar = log sigmoid(lam)
        la = self.log_abar.to(lam.device)  # decreasing
        j = torch.searchsorted(-la, -target).clamp(1, self.N)  # first index with la <= target
        w = (target - la[j - 1]) / (la[j] - la[j - 1])
        return ((j - 1 + w) / self.N).to(lam.dtype)

    # -- Ho et al. 2020, eqs. 6-7: posterior q(x_{i-1} | x_i, x_0) ----------------------------------
    def posterior_coefs(self, i: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For step i in 1..N: (c0, ci, beta_tilde) with mean = c0 x_0 + ci x_i and variance beta_tilde."""
        i = torch.as_tensor(i)
        if torch.any(i < 1) or torch.any(i > self.N):
            raise ValueError(f"step index must be in 1..{self.N}")
        ab_prev, b = self.alpha_bar[i - 1], self.betas[i - 1]
        om, om_prev = self.one_minus_abar[i], self.one_minus_abar[i - 1]
        c0 = ab_prev.sqrt() * b / om
        ci = self.alphas[i - 1].sqrt() * om_prev / om
        return c0, ci, om_prev / om * b

    def config(self):
        """``{name, schedule, n, **schedule kwargs}`` for a named schedule, else ``{name, betas}``;
        ``process_from_config`` inverts it."""
        cfg: dict[str, Any] = {"name": self.name}
        if self.schedule is not None:
            cfg.update(schedule=self.schedule, n=self.N, **getattr(self, "_schedule_kwargs", {}))
        else:
            cfg["betas"] = self.betas.tolist()
        return cfg


PROCESSES = {"vp": VP, "subvp": SubVP, "vp_cosine": VPCosine, "ve": VE, "edm": EDM}


def process_from_config(cfg: dict[str, Any]) -> ForwardProcess:
    """Rebuild a process from ``ForwardProcess.config()`` (or a YAML mapping with the same keys)."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name == "discrete":
        if "betas" in cfg:
            return Discrete(cfg["betas"])
        sched = cfg.pop("schedule", "linear")
        n = cfg.pop("n", 1000)
        return Discrete.from_schedule(sched, n, **cfg)
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; expected one of {sorted(PROCESSES) + ['discrete']}")
    try:
        return PROCESSES[name](**cfg)
    except TypeError as e:
        raise ValueError(f"bad parameters for process {name!r}: {e}") from None
