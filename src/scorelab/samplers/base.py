r"""Shared pieces of every sampler: grid checks, Gaussian transitions, trajectories, the sampler registry.

Sampler contract (DESIGN.md, idea 3)::

    sample_<name>(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False, **opts) -> x_0
                                                                            (or a Trajectory)

``ts`` is an explicit, strictly decreasing 1-D grid of process times t_0 > t_1 > ... > t_n (or, for per-sample
times, a ``[n+1, B]`` tensor decreasing along dim 0).  Stochastic steps are Gaussian transitions
x_{i+1} ~ N(mean_i, std_i^2 I); ``transition_log_prob`` evaluates them, which is what policy-gradient fine-tuning
(SFT-PG, f-Restart) needs.

Notation: x (state), t -> s (one step from time t to the smaller time s), z ~ N(0, I).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..denoisers import CountingModel, DiffusionModel

Callback = Callable[[dict], None]


def check_grid(ts: torch.Tensor | list[float], process=None, *, allow_zero: bool = True) -> torch.Tensor:
    """Validate a time grid: 1-D (or ``[n+1, B]``), at least two points, strictly decreasing, inside the
    process interval [0, t_max] (0 is allowed as a final "denoise to data" time when ``allow_zero``)."""
    ts = torch.as_tensor(ts)
    if not ts.is_floating_point():
        ts = ts.to(torch.float64)
    if ts.ndim not in (1, 2) or ts.shape[0] < 2:
        raise ValueError(f"time grid must have shape [n+1] or [n+1, B] with n >= 1, got {tuple(ts.shape)}")
    if not torch.all(torch.isfinite(ts)):
        raise ValueError("time grid contains NaN or inf")
    if not torch.all(ts[1:] < ts[:-1]):
        raise ValueError("time grid must be strictly decreasing (from noise t_max towards data)")
    if process is not None:
        lo = 0.0 if allow_zero else process.t_min * (1 - 1e-9)
        if torch.any(ts > process.t_max * (1 + 1e-9)) or torch.any(ts < lo):
            raise ValueError(f"time grid must lie in [{lo}, {process.t_max}] for {type(process).__name__}, "
                             f"got [{ts.min().item():.4g}, {ts.max().item():.4g}]")
    return ts


def step_times(ts: torch.Tensor, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Times (t_i, t_{i+1}) as tensors in x's dtype/device: scalars for a 1-D grid, ``[B]`` for a 2-D grid."""
    return ts[i].to(device=x.device, dtype=x.dtype), ts[i + 1].to(device=x.device, dtype=x.dtype)


def gaussian_sample(mean: torch.Tensor, std: torch.Tensor | float, generator: torch.Generator | None) -> torch.Tensor:
    """mean + std * z, z ~ N(0, I) drawn from ``generator``."""
    z = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + std * z


def transition_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x_next; mean, std^2 I) summed over non-batch dims -> ``[B]``.

    ``std`` is a scalar, a ``[B]`` tensor, or broadcastable to x (diagonal covariance). Differentiable in ``mean``
    and ``std`` (policy gradients flow through the model that produced them)."""
    std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    if std.ndim == 1 and mean.ndim > 1 and std.shape[0] == mean.shape[0]:
        std = std.reshape(-1, *([1] * (mean.ndim - 1)))
    if torch.any(std <= 0):
        raise ValueError("transition std must be > 0 (deterministic steps have no log-probability)")
    std = std.expand_as(mean)
    z = (x_next - mean) / std
    lp = -0.5 * z.pow(2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.reshape(lp.shape[0], -1).sum(1)


@dataclass
class Trajectory:
    """What ``return_trajectory=True`` returns.

    xs: states [x_{t_0}, ..., x_{t_n}], each ``[B, ...]``; ts: the grid; means/stds: the Gaussian transition of each
    step (None for deterministic steps); log_probs: ``[n_steps, B]`` log p(x_{i+1} | x_i) (NaN for deterministic
    steps); nfe: network evaluations used (counted, not assumed); extras: sampler-specific per-step values (e.g.
    ``"x_plus"``: the intermediate states of a two-stage stochastic step)."""

    xs: list[torch.Tensor]
    ts: torch.Tensor
    means: list[torch.Tensor | None] = field(default_factory=list)
    stds: list[torch.Tensor | float | None] = field(default_factory=list)
    log_probs: torch.Tensor | None = None
    nfe: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def x0(self) -> torch.Tensor:
        return self.xs[-1]


class TrajectoryRecorder:
    """Collects states and transitions while a sampler runs; ``finish`` builds the ``Trajectory``."""

    def __init__(self, x_T: torch.Tensor, ts: torch.Tensor, enabled: bool):
        self.enabled, self.ts = enabled, ts
        self.xs, self.means, self.stds, self.lps = [x_T], [], [], []

    def add(self, x_next: torch.Tensor, mean: torch.Tensor | None = None, std=None) -> None:
        if not self.enabled:
            return
        self.xs.append(x_next)
        self.means.append(mean)
        self.stds.append(std)
        if mean is None or std is None:
            self.lps.append(torch.full((x_next.shape[0],), float("nan"), dtype=x_next.dtype, device=x_next.device))
        else:
            self.lps.append(transition_log_prob(x_next, mean, std).detach())

    def finish(self, x: torch.Tensor, nfe: int):
        if not self.enabled:
            return x
        lps = torch.stack(self.lps) if self.lps else None
        return Trajectory(self.xs, self.ts, self.means, self.stds, lps, nfe)


def counted(model: DiffusionModel) -> CountingModel:
    """Wrap ``model`` in a ``CountingModel`` unless it already is one (so NFE is measured, never assumed)."""
    return model if isinstance(model, CountingModel) else CountingModel(model)


@dataclass(frozen=True)
class SamplerInfo:
    """Registry entry: the function, its order (ODE solvers; 0 for SDE samplers' weak order 1 reported as
    ``weak_order``), evaluations per step, whether it is stochastic, its options, the reference."""

    name: str
    fn: Callable
    order: float
    evals_per_step: float
    stochastic: bool
    options: tuple[str, ...] = ()
    reference: str = ""
    default_grid: str = "uniform"


SAMPLERS: dict[str, SamplerInfo] = {}


def register(name: str, *, order: float, evals_per_step: float, stochastic: bool, options: tuple[str, ...] = (),
             reference: str = "", default_grid: str = "uniform"):
    """Decorator adding a ``sample_*`` function to ``SAMPLERS``."""

    def deco(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} registered twice")
        SAMPLERS[name] = SamplerInfo(name, fn, order, evals_per_step, stochastic, options, reference, default_grid)
        return fn

    return deco
