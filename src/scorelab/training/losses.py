r"""Denoising score matching: time *proposal* strategies x *weighting* strategies, and sliced score matching.

A per-example DSM loss draws x_0 from the data, t from a proposal, eps ~ N(0, I), sets x_t = alpha x_0 + sigma eps
and compares the model's prediction with the target (Vincent 2011; Ho et al. 2020; Song et al. 2021).  Every value is
reported *relative to the uniform proposal*: a proposal p(t) on [t_lo, t_hi] returns the importance weight
u(t) = 1 / ((t_hi - t_lo) p(t)) (1 for proposals that define the objective themselves), so

    value = u(t) * w(t) * || prediction - target ||^2          (|| . ||^2 summed, or averaged, over non-batch dims)

Notation
--------
=============  ===================================================================================================
``lam``        log-SNR lambda(t) = log(alpha^2 / sigma^2);  SNR = e^lam;  s = sigma/alpha = e^{-lam/2}
``g2``         g^2(t) = diffusion_sq(t);  g^2/sigma^2 = -d lam/dt for every linear process
``eps_hat``    model.eps(x_t, t);  ``x0_hat`` = model.x0(x_t, t) (the denoiser D(x_t/alpha; s) of Karras et al.)
=============  ===================================================================================================

Proposals
---------
``uniform``     t ~ U[t_lo, t_hi] (Song et al. 2021);  u = 1.
``discrete``    DDPM step k ~ U{0..N-1} with the antithetic trick (first half k, second half N-1-k, as in the DDPM and
                SFT-PG code), t = (k+1)/N (``Discrete`` processes only);  u = 1.
``lognormal``   ln s ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1: -1.2, 1.2), t = t_from_log_snr(-2 ln s),
                clamped to [t_lo, t_hi] (for EDM this touches ~1e-5 of the draws);  u = 1.
``importance``  p(t) proportional to g^2/sigma^2 on [t_lo, t_hi] (Song et al. 2021b, "Maximum likelihood training",
                Sec. 5).  Since g^2/sigma^2 = -d lam/dt, the CDF is F(t) = (lam(t_lo) - lam(t)) / Z with
                Z = lam(t_lo) - lam(t_hi), so F^{-1} is inverted exactly with the process's t_from_log_snr
                (no quadrature);  u = Z / ((t_hi - t_lo) g^2/sigma^2).

Weightings (w and the space of the squared error)
-------------------------------------------------
``eps``         w = 1 on ||eps_hat - eps||^2 (Ho et al. 2020, L_simple).
``likelihood``  w = g^2 / (2 sigma^2) on ||eps_hat - eps||^2 = g^2/2 ||score_hat - grad log q(x_t|x_0)||^2
                (Song et al. 2021b); with the uniform proposal the batch mean estimates the integral over t divided
                by (t_hi - t_lo).
``x0``          w = 1 on ||x0_hat - x_0||^2.
``snr``         w = SNR(t) on ||x0_hat - x_0||^2 (Kingma et al. 2021; Hang et al. 2023 eq. 3).  Identically equal to
                the ``eps`` loss on the same draws, since eps_hat - eps = -(alpha/sigma)(x0_hat - x_0); it is the
                gamma -> infinity limit of ``min_snr`` and computed in x0 space.
``min_snr``     w = min(SNR(t), gamma) on ||x0_hat - x_0||^2 (Hang et al. 2023, "min-SNR-gamma", gamma = 5);
                equivalently min(SNR, gamma)/SNR on the eps error.
``edm``         w = (s^2 + sigma_data^2) / (s sigma_data)^2 = e^lam + 1/sigma_data^2 on ||x0_hat - x_0||^2, the error
                of the denoiser in the scaled variable x/alpha (Karras et al. 2022, Table 1, eq. 8).

``sliced_score_matching_loss`` is SSM-VR (Song, Garg, Shi & Ermon 2019, eq. 8).  A loss is any callable
``loss_fn(model, x0, *, generator=None, **cond) -> [B]``; ``DSMLoss(config)`` is the DSM one used by training.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import torch

from ..core.processes import Discrete, ForwardProcess

PROPOSALS = ("uniform", "discrete", "lognormal", "importance")
WEIGHTINGS = ("eps", "likelihood", "x0", "snr", "min_snr", "edm")
EPS_SPACE = ("eps", "likelihood")


class PerExampleLoss(Protocol):
    """What the training loop calls: per-example loss values ``[B]`` (the caller reduces)."""

    def __call__(self, model: Any, x0: torch.Tensor, *, generator: torch.Generator | None = None,
                 **cond: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class LossConfig:
    """DSM options.  ``t_min``/``t_max`` override the process interval for continuous proposals; ``reduction``
    ("sum" or "mean") reduces the squared error over non-batch dims; ``gamma`` is min-SNR's clip; ``p_mean``,
    ``p_std``, ``sigma_data`` are EDM's; ``antithetic`` pairs steps k and N-1-k in the discrete proposal."""

    proposal: str = "uniform"
    weighting: str = "eps"
    antithetic: bool = True
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    gamma: float = 5.0
    t_min: float | None = None
    t_max: float | None = None
    reduction: str = "sum"

    def __post_init__(self):
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r}; expected one of {PROPOSALS}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; expected one of {WEIGHTINGS}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        for name in ("p_std", "sigma_data", "gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.t_min is not None and self.t_max is not None and not self.t_min < self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be < t_max ({self.t_max})")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a dict of its fields (for the run's JSON and YAML)."""
        return asdict(self)


# -- time proposals ------------------------------------------------------------------------------
def time_interval(process: ForwardProcess, config: LossConfig) -> tuple[float, float]:
    """[t_lo, t_hi]: the process interval unless ``config`` overrides it (checked to lie inside [0, t_max])."""
    lo = process.t_min if config.t_min is None else float(config.t_min)
    hi = process.t_max if config.t_max is None else float(config.t_max)
    if not 0 <= lo < hi <= process.t_max * (1 + 1e-12):
        raise ValueError(f"time interval [{lo}, {hi}] must satisfy 0 <= t_min < t_max <= {process.t_max}")
    return lo, hi


def _uniform01(n: int, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64, device=device)


def propose_uniform(process: ForwardProcess, n: int, config: LossConfig, generator: torch.Generator | None = None,
                    device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U[t_lo, t_hi]; weight 1."""
    lo, hi = time_interval(process, config)
    t = lo + (hi - lo) * _uniform01(n, generator, device)
    return t, torch.ones_like(t)


def propose_discrete(process: ForwardProcess, n: int, config: LossConfig, generator: torch.Generator | None = None,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM steps k in 0..N-1 (antithetic: k and N-1-k), t = (k+1)/N; weight 1."""
    if not isinstance(process, Discrete):
        raise ValueError(f"the 'discrete' proposal needs a Discrete process, got {type(process).__name__}")
    N = process.N
    if config.antithetic:
        k = torch.randint(0, N, (n // 2 + 1,), generator=generator, device=device)
        k = torch.cat([k, N - 1 - k])[:n]
    else:
        k = torch.randint(0, N, (n,), generator=generator, device=device)
    t = (k.to(torch.float64) + 1) / N
    return t, torch.ones_like(t)


def propose_lognormal(process: ForwardProcess, n: int, config: LossConfig, generator: torch.Generator | None = None,
                      device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """ln(sigma/alpha) ~ N(P_mean, P_std^2) mapped to t by the log-SNR inverse, clamped to [t_lo, t_hi]; weight 1."""
    lo, hi = time_interval(process, config)
    z = torch.randn(n, generator=generator, dtype=torch.float64, device=device)
    lam = -2.0 * (config.p_mean + config.p_std * z)
    t = process.t_from_log_snr(lam).to(torch.float64).clamp(lo, hi)
    return t, torch.ones_like(t)


def likelihood_rate(process: ForwardProcess, t: torch.Tensor) -> torch.Tensor:
    """g^2(t) / sigma^2(t) (= -d lambda/dt) in float64."""
    t = t.to(torch.float64)
    return process.diffusion_sq(t).to(torch.float64) / process.sigma(t).to(torch.float64) ** 2


def propose_importance(process: ForwardProcess, n: int, config: LossConfig, generator: torch.Generator | None = None,
                       device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """t with density g^2/sigma^2 / Z on [t_lo, t_hi] (inverse CDF through lambda); weight Z / ((hi-lo) g^2/sigma^2)."""
    lo, hi = time_interval(process, config)
    ends = torch.tensor([lo, hi], dtype=torch.float64, device=device)
    lam_lo, lam_hi = process.log_snr(ends).to(torch.float64).unbind()
    Z = lam_lo - lam_hi
    lam = lam_lo - Z * _uniform01(n, generator, device)
    t = process.t_from_log_snr(lam).to(torch.float64).clamp(lo, hi)
    return t, Z / ((hi - lo) * likelihood_rate(process, t))


PROPOSAL_FNS: dict[str, Callable] = {"uniform": propose_uniform, "discrete": propose_discrete,
                                     "lognormal": propose_lognormal, "importance": propose_importance}


def sample_times(process: ForwardProcess, n: int, config: LossConfig | None = None,
                 generator: torch.Generator | None = None, device=None,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` training times from ``config.proposal``: returns ``(t [n], u [n])`` with u the importance weight
    relative to the uniform proposal on [t_lo, t_hi] (1 except for ``importance``)."""
    config = config or LossConfig()
    if int(n) != n or n < 1:
        raise ValueError(f"number of times must be a positive integer, got {n}")
    t, u = PROPOSAL_FNS[config.proposal](process, int(n), config, generator, device)
    return t.to(dtype), u.to(dtype)


# -- weightings ----------------------------------------------------------------------------------
def loss_weight(process: ForwardProcess, t: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """w(t) ``[B]`` of ``config.weighting`` (float64); see the module table for the space each applies in."""
    t = t.to(torch.float64)
    name = config.weighting
    if name in ("eps", "x0"):
        return torch.ones_like(t)
    if name == "likelihood":
        return 0.5 * likelihood_rate(process, t)
    snr = torch.exp(process.log_snr(t).to(torch.float64))
    if name == "snr":
        return snr
    if name == "min_snr":
        return torch.clamp(snr, max=config.gamma)
    return snr + 1.0 / config.sigma_data**2  # edm: (s^2 + sd^2)/(s sd)^2 with s^2 = 1/SNR


def _sq_norm(v: torch.Tensor, reduction: str) -> torch.Tensor:
    v = v.reshape(v.shape[0], -1).pow(2)
    return v.sum(1) if reduction == "sum" else v.mean(1)


def weighted_error(model, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
                   config: LossConfig, **cond) -> torch.Tensor:
    """w(t) ||prediction - target||^2 ``[B]`` for given x_t = alpha x0 + sigma eps (all ``[B, ...]``, t ``[B]``)."""
    if config.weighting in EPS_SPACE:
        err = _sq_norm(model.eps(x_t, t, **cond) - eps, config.reduction)
    else:
        err = _sq_norm(model.x0(x_t, t, **cond) - x0, config.reduction)
    return loss_weight(model.process, t, config).to(err.dtype) * err


def _resolve(config: LossConfig | None, proposal: str, weighting: str) -> LossConfig:
    if config is None:
        return LossConfig(proposal=proposal, weighting=weighting)
    if (proposal, weighting) != ("uniform", "eps") and (proposal, weighting) != (config.proposal, config.weighting):
        raise ValueError("pass either config=LossConfig(...) or proposal/weighting, not conflicting values of both")
    return config


def dsm_loss(model, x0: torch.Tensor, *, proposal: str = "uniform", weighting: str = "eps",
             generator: torch.Generator | None = None, config: LossConfig | None = None, **cond) -> torch.Tensor:
    """Per-example denoising score-matching loss ``[B]`` for data ``x0`` ``[B, ...]`` (the caller reduces).

    ``model`` is any ``DiffusionModel`` (``.process``, ``.eps``, ``.x0``); ``cond`` (e.g. ``y=labels``) is passed to
    it.  ``config`` gives all options at once (then leave ``proposal``/``weighting`` at their defaults)."""
    config = _resolve(config, proposal, weighting)
    if x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a batch [B, ...] with B >= 1, got shape {tuple(x0.shape)}")
    t, u = sample_times(model.process, x0.shape[0], config, generator, x0.device, x0.dtype)
    x_t, eps = model.process.marginal_sample(x0, t, generator)
    return u * weighted_error(model, x_t, t, x0, eps, config, **cond)


class DSMLoss:
    """DSM as a pluggable per-example loss: ``DSMLoss(config)(model, x0, generator=g, **cond) -> [B]``."""

    def __init__(self, config: LossConfig | None = None):
        self.config = config or LossConfig()

    def __call__(self, model, x0: torch.Tensor, *, generator: torch.Generator | None = None, **cond) -> torch.Tensor:
        return dsm_loss(model, x0, generator=generator, config=self.config, **cond)

    def __repr__(self) -> str:
        return f"DSMLoss({self.config})"


# -- sliced score matching -----------------------------------------------------------------------
def sliced_score_matching_loss(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                               n_projections: int = 1, generator: torch.Generator | None = None,
                               variance_reduction: bool = True) -> torch.Tensor:
    """SSM-VR (Song et al. 2019, eq. 8): v^T grad_x(v^T s(x)) + 1/2 ||s(x)||^2 per example ``[B]``, averaged over
    ``n_projections`` Gaussian directions v.  Without variance reduction the second term is 1/2 (v^T s)^2 (eq. 7).

    ``score_fn`` maps ``[M, ...] -> [M, ...]``; ``x`` ``[B, ...]`` is treated as data (no gradient flows to it).
    In expectation the value is tr(grad s) + 1/2 ||s||^2, the Hyvarinen score-matching objective."""
    if int(n_projections) != n_projections or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections}")
    B, n = x.shape[0], int(n_projections)
    with torch.enable_grad():
        xr = x.detach().repeat(n, *([1] * (x.ndim - 1))).requires_grad_(True)
        v = torch.randn(xr.shape, generator=generator, dtype=x.dtype, device=x.device)
        s = score_fn(xr)
        if s.shape != xr.shape:
            raise ValueError(f"score_fn must return the shape of its input {tuple(xr.shape)}, got {tuple(s.shape)}")
        (grad_sv,) = torch.autograd.grad((s * v).sum(), xr, create_graph=True)
        trace_term = (grad_sv * v).reshape(n * B, -1).sum(1)
        if variance_reduction:
            sq_term = 0.5 * s.reshape(n * B, -1).pow(2).sum(1)
        else:
            sq_term = 0.5 * (s * v).reshape(n * B, -1).sum(1).pow(2)
    return (trace_term + sq_term).reshape(n, B).mean(0)


__all__ = ["LossConfig", "DSMLoss", "PerExampleLoss", "dsm_loss", "sample_times", "loss_weight", "weighted_error",
           "likelihood_rate", "time_interval", "sliced_score_matching_loss", "PROPOSALS", "WEIGHTINGS",
           "propose_uniform", "propose_discrete", "propose_lognormal", "propose_importance"]
