r"""Rejection with a density-ratio estimate: discriminator rejection sampling (Azadi et al. 2019) and budgeted optimal
rejection (Verine et al. 2024), as summarised in the thesis "Boosting methods for refining diffusion models"
(2024, sec. 2.3, eqs. 2.26-2.29, Alg. 5).

Notation
--------
================  ================================================================================================
``x ~ P~``        proposals (samples of the pretrained model);  accepted samples have density p~ a / E_P~[a]
``r(x)``          density ratio p / p~ estimate;  from a discriminator logit l: r = d / (1 - d) = e^l
``M``             sup r (estimated as the largest r seen on a calibration batch, as Azadi et al. do)
``a_opt``         r / M: exact rejection sampling, accepted samples ~ P, acceptance rate E_P~[r]/M = 1/M  (eq. 2.26)
``a_gamma``       r / (r (1 - e^gamma) + e^gamma M) = sigmoid(F), F = log(r/M) - log(1 - r/M) - gamma (Azadi et al.
                  2019, eq. 8 without their epsilon); gamma = 0 gives a_opt, gamma -> -inf accepts all  (eq. 2.28)
``a_K``           min(r c_K / M, 1), c_K set by bisection so that E_P~[a_K] = 1/K: the f-divergence-optimal
                  acceptance under a budget of K proposals per accepted sample (Verine et al. 2024)  (eq. 2.29)
================  ================================================================================================

Acceptance rates are reported both as the empirical fraction accepted and as the mean acceptance probability.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import safetensors.torch
import scipy.optimize
import torch

from ..io import checkpoints as ckpts

METHODS = ("exact", "drs", "budget")


def _log1mexp(l: torch.Tensor) -> torch.Tensor:
    """log(1 - e^l) for l <= 0, stable at both ends (Maechler 2012)."""
    return torch.where(l > -math.log(2.0), torch.log(-torch.expm1(l)), torch.log1p(-torch.exp(l)))


def _check_log_r(log_r: torch.Tensor) -> torch.Tensor:
    log_r = torch.as_tensor(log_r, dtype=torch.float64)
    if log_r.ndim != 1 or log_r.numel() < 1:
        raise ValueError(f"log_r must be a non-empty [N] tensor of log density ratios, got shape {tuple(log_r.shape)}")
    if torch.isnan(log_r).any() or torch.isposinf(log_r).any():
        raise ValueError("log_r contains NaN or +inf")
    return log_r


def drs_log_acceptance(log_r: torch.Tensor, log_M: float, gamma: float = 0.0) -> torch.Tensor:
    """log a_gamma(x) ``[N]`` (eq. 2.28): a = r / (r (1 - e^gamma) + e^gamma M), computed as
    l - logaddexp(l, gamma + log(1 - e^l)) with l = log(r / M) clipped to <= 0 (r above the estimated M is
    accepted with probability 1, Azadi et al.'s update of M)."""
    l = (_check_log_r(log_r) - float(log_M)).clamp(max=0.0)
    return l - torch.logaddexp(l, float(gamma) + _log1mexp(l))


def drs_gamma_for_quantile(log_r: torch.Tensor, log_M: float, q: float = 0.95) -> float:
    """Azadi et al.'s choice of gamma: the q-quantile of F = log(r/M) - log(1 - r/M) over the batch, so that a
    fraction 1 - q of the proposals has acceptance probability >= 1/2."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    l = (_check_log_r(log_r) - float(log_M)).clamp(max=-1e-12)
    return float(torch.quantile(l - _log1mexp(l), q))


def budget_log_c(log_r: torch.Tensor, K: float, log_M: float = 0.0, xtol: float = 1e-12) -> float:
    """log c_K such that mean_i min(r_i c_K / M, 1) = 1/K on the given proposals (bisection, ``scipy.optimize.bisect``).

    K = 1 accepts everything (returns +inf).  The mean is continuous and nondecreasing in log c, 0 at -inf and 1 at
    +inf, so the bracket [log M - max log r - 1, log M - min log r + 1] contains the root."""
    log_r = _check_log_r(log_r)
    if not K >= 1:
        raise ValueError(f"the budget K must be >= 1 (acceptance rate 1/K <= 1), got {K}")
    if K == 1:
        return math.inf
    lr = log_r[torch.isfinite(log_r)]
    if lr.numel() == 0:
        raise ValueError("every log_r is -inf: no proposal can be accepted")

    def gap(log_c: float) -> float:
        return float(torch.exp((log_r + log_c - log_M).clamp(max=0.0)).mean()) - 1.0 / K

    lo, hi = float(log_M - lr.max()) - 1.0 - math.log(K), float(log_M - lr.min()) + 1.0
    if gap(hi) < 0:  # some r = 0 (log r = -inf): not enough finite mass for rate 1/K
        raise ValueError(f"only {lr.numel() / log_r.numel():.3g} of the proposals have r > 0; rate 1/K = {1 / K:.3g} "
                         "cannot be reached")
    return float(scipy.optimize.bisect(gap, lo, hi, xtol=xtol, maxiter=500))


def budget_log_acceptance(log_r: torch.Tensor, log_c: float, log_M: float = 0.0) -> torch.Tensor:
    """log a_K(x) = min(log r + log c_K - log M, 0) ``[N]`` (eq. 2.29)."""
    return (_check_log_r(log_r) + float(log_c) - float(log_M)).clamp(max=0.0)


@dataclass
class RejectionResult:
    """Accepted mask ``[N]``, acceptance probabilities ``[N]``, empirical acceptance rate, mean acceptance probability
    (the expected rate), and the constants used (log M, log c_K, gamma, K)."""

    accepted: torch.Tensor
    acceptance_prob: torch.Tensor
    acceptance_rate: float
    expected_rate: float
    method: str
    log_M: float
    log_c: float | None = None
    gamma: float | None = None
    K: float | None = None

    def summary(self) -> dict[str, Any]:
        """The scalar fields of the result (acceptance rates, counts, settings) as a dict; tensors left out."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, torch.Tensor)}


@dataclass(frozen=True)
class RejectionRule:
    """Calibrated acceptance rule: ``method`` in ``METHODS`` with its constants (see ``calibrate``)."""

    method: str
    log_M: float
    gamma: float = 0.0
    log_c: float | None = None
    K: float | None = None

    def log_acceptance(self, log_r: torch.Tensor) -> torch.Tensor:
        """log acceptance probability of each proposal from its log density ratio ``log_r`` ``[N]`` -> ``[N]``: the
        budget rule (``log_c``) or DRS with ``gamma`` (0 = exact rejection)."""
        if self.method == "budget":
            return budget_log_acceptance(log_r, self.log_c, self.log_M)
        return drs_log_acceptance(log_r, self.log_M, self.gamma if self.method == "drs" else 0.0)


def calibrate(log_r: torch.Tensor, method: str = "budget", *, K: float | None = None, gamma: float = 0.0,
              log_M: float | None = None) -> RejectionRule:
    """Fix the constants of a rule on a calibration batch of log ratios: log M (default: max log r of the batch)
    and, for ``"budget"``, log c_K for budget ``K``."""
    if method not in METHODS:
        raise ValueError(f"unknown rejection method {method!r}; expected one of {METHODS}")
    log_r = _check_log_r(log_r)
    log_M = float(log_r.max()) if log_M is None else float(log_M)
    if method == "budget":
        if K is None:
            raise ValueError("method 'budget' needs the budget K (expected proposals per accepted sample)")
        return RejectionRule(method, log_M, log_c=budget_log_c(log_r, K, log_M), K=float(K))
    return RejectionRule(method, log_M, gamma=float(gamma) if method == "drs" else 0.0)


def rejection_sample(log_r: torch.Tensor, method: str = "budget", *, K: float | None = None, gamma: float = 0.0,
                     log_M: float | None = None, generator: torch.Generator | None = None,
                     rule: RejectionRule | None = None) -> RejectionResult:
    """Accept each proposal with probability a(x) (Alg. 5): u ~ U(0, 1), accept iff u < a.

    ``log_r`` ``[N]``: log density ratios of the proposals.  The rule is calibrated on these same proposals unless a
    calibrated ``rule`` is given."""
    log_r = _check_log_r(log_r)
    rule = rule or calibrate(log_r, method, K=K, gamma=gamma, log_M=log_M)
    a = torch.exp(rule.log_acceptance(log_r))
    u = torch.rand(a.shape, generator=generator, dtype=torch.float64)
    acc = u < a
    return RejectionResult(acc, a, float(acc.double().mean()), float(a.mean()), rule.method, rule.log_M, rule.log_c,
                           rule.gamma if rule.method == "drs" else None, rule.K)


def sample_with_rejection(draw: Callable[[int], torch.Tensor], log_ratio: Callable[[torch.Tensor], torch.Tensor],
                          n: int, method: str = "budget", *, K: float | None = None, gamma: float = 0.0,
                          batch_size: int = 1000, max_proposals: int | None = None,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw proposals in batches (``draw(m) -> [m, ...]``) until ``n`` are accepted (or ``max_proposals``, default
    100 n, is reached).  The rule (M, c_K) is calibrated on the first batch and then kept fixed.

    Returns (accepted samples ``[<= n, ...]``, info dict with the overall acceptance rate and the rule)."""
    if int(n) != n or n < 1 or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive integers, got {n}, {batch_size}")
    max_proposals = 100 * n if max_proposals is None else int(max_proposals)
    rule, kept, n_prop, n_acc, probs = None, [], 0, 0, []
    while n_acc < n and n_prop < max_proposals:
        x = draw(min(batch_size, max_proposals - n_prop))
        log_r = log_ratio(x).detach().to(torch.float64).cpu()
        rule = rule or calibrate(log_r, method, K=K, gamma=gamma)
        res = rejection_sample(log_r, rule=rule, generator=generator)
        kept.append(x[res.accepted.to(x.device)])
        n_prop, n_acc = n_prop + x.shape[0], n_acc + int(res.accepted.sum())
        probs.append(res.acceptance_prob)
    out = torch.cat(kept)[:n]
    info = {"n_accepted": int(out.shape[0]), "n_proposals": n_prop, "acceptance_rate": n_acc / n_prop,
            "expected_rate": float(torch.cat(probs).mean()), "complete": n_acc >= n, **asdict(rule)}
    return out, info


def model_proposals(model, shape: tuple[int, ...], sampler: str, nfe: int, *, grid: str | None = None,
                    options: dict | None = None, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32) -> Callable[[int], torch.Tensor]:
    """``draw(m) -> [m, *shape]``: m proposals of ``model`` with ``sampler`` under the NFE budget ``nfe``
    (``samplers.budget.sample``, one batch per call, x_T and noise from ``generator``), for
    ``sample_with_rejection``.  The budget is checked here (``ValueError``), before any proposal is drawn."""
    from ..samplers.budget import plan, sample

    ts, _, opts = plan(model, sampler, nfe, grid=grid, options=options)

    def draw(m: int) -> torch.Tensor:
        return sample(model, sampler, nfe, m, shape=tuple(shape), grid=ts, options=opts, generator=generator,
                      dtype=dtype)[0]

    return draw


# -- a pretrained model rejection-sampled into a folder ------------------------------------------------------------
@dataclass(frozen=True)
class RejectConfig:
    """Rejection sampling of a checkpoint: draw proposals from the model (``sampler``/``nfe``/``grid``), score them
    with the discriminator at time ``t_eval`` (default: the process's t_min), keep ``n`` accepted samples."""

    n: int = 1000
    method: str = "budget"
    K: float | None = 2.0
    gamma: float = 0.0
    sampler: str = "heun"
    nfe: int = 50
    grid: str | None = None
    seed: int = 0
    batch_size: int = 1000
    max_proposals: int | None = None
    t_eval: float | None = None
    weights: str = "ema"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown rejection method {self.method!r}; expected one of {METHODS}")
        if self.method == "budget" and (self.K is None or not self.K >= 1):
            raise ValueError(f"method 'budget' needs K >= 1, got {self.K}")


def reject_to_folder(config: RejectConfig, checkpoint_dir: str | Path, discriminator_path: str | Path,
                     out_dir: str | Path) -> dict[str, Any]:
    """Rejection-sample a pretrained model with a trained discriminator; writes ``out_dir/samples.npy``,
    ``out_dir/samples.safetensors`` and ``out_dir/reject.json`` (acceptance rates, rule, settings)."""
    from ..io.loading import load_checkpoint_model
    from .discriminator import load_discriminator

    loaded = load_checkpoint_model(checkpoint_dir, weights=config.weights)
    model, shape = loaded.model, loaded.event_shape
    disc = load_discriminator(discriminator_path)
    g = torch.Generator().manual_seed(config.seed)
    t_eval = model.process.t_min if config.t_eval is None else float(config.t_eval)
    draw = model_proposals(model, shape, config.sampler, config.nfe, grid=config.grid, options=config.options,
                           generator=g)

    def log_ratio(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return disc(x, t_eval)

    t0 = time.perf_counter()
    x, info = sample_with_rejection(draw, log_ratio, config.n, config.method, K=config.K, gamma=config.gamma,
                                    batch_size=config.batch_size, max_proposals=config.max_proposals, generator=g)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", x.float().numpy())
    ckpts.atomic_write_bytes(out / "samples.safetensors", safetensors.torch.save({"samples": x.contiguous()}))
    report = {**info, "wall_s": time.perf_counter() - t0, "t_eval": t_eval, "checkpoint": str(checkpoint_dir),
              "discriminator": str(discriminator_path), "config": ckpts.jsonable(asdict(config))}
    ckpts.atomic_write_bytes(out / "reject.json", json.dumps(report, indent=1, default=str).encode())
    return report


__all__ = ["METHODS", "drs_log_acceptance", "drs_gamma_for_quantile", "budget_log_c", "budget_log_acceptance",
           "RejectionResult", "RejectionRule", "calibrate", "rejection_sample", "sample_with_rejection",
           "model_proposals", "RejectConfig", "reject_to_folder"]
