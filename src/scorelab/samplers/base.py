r"""Shared pieces of every sampler: grid checks, Gaussian transitions, trajectories, the sampler registry.

Sampler contract (DESIGN.md, idea 3)::

    sample_<name>(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False, **opts) -> x_0
                                                                            (or a Trajectory)

``ts`` is an explicit, strictly decreasing 1-D grid of process times t_0 > t_1 > ... > t_n (or, for per-sample
times, a ``[n+1, B]`` tensor decreasing along dim 0).  Stochastic steps are Gaussian transitions
x_{i+1} ~ N(mean_i, std_i^2 I); ``transition_log_prob`` evaluates them, which is what policy-gradient fine-tuning
(SFT-PG, f-Restart) needs.

Every sampler is a step function run by the one loop, ``loop.run_loop`` (step format there), over per-grid
coefficients precomputed once (``GridCoefs``, memoised per grid by ``GridCoefs.of``); ``gaussian_step`` /
``gaussian_sample`` are the one Gaussian draw, ``is_pos`` the one positivity test.

Notation: x (state), t -> s (one step from time t to the smaller time s), z ~ N(0, I).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Union

import torch

from .._utils import bcast, fits_type, suggest, type_name
from ..core.denoisers import CountingModel, DiffusionModel, FunctionModel, NetworkModel
from ..core.processes import Discrete

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


def gaussian_sample(mean: torch.Tensor, std: torch.Tensor | float, generator: torch.Generator | None) -> torch.Tensor:
    """The one Gaussian draw: mean + std * z, z ~ N(0, I) from ``generator``; ``mean`` ``[B, ...]``, ``std`` a float,
    a 0-d tensor, a ``[B]`` tensor (broadcast per sample) or a tensor broadcastable to ``mean``."""
    z = torch.empty_like(mean, memory_format=torch.contiguous_format).normal_(generator=generator)  # = randn(shape)
    if isinstance(std, float):
        return torch.add(mean, z, alpha=std)
    if std.ndim == 1 and mean.ndim > 1:
        std = bcast(std, mean)
    return mean + std * z


def gaussian_step(mean: torch.Tensor, std, add_noise: bool, generator: torch.Generator | None) -> tuple:
    """A Gaussian step x ~ N(mean, std^2 I): ``(x, mean, std)``; or ``(mean, None, None)`` (deterministic) when
    ``add_noise`` is False or std is not > 0.  std: a float or a scalar / ``[B]`` tensor."""
    if add_noise and is_pos(std):
        return gaussian_sample(mean, std, generator), mean, std
    return mean, None, None


# -- per-grid coefficients (the samplers' per-step overhead) ----------------------------------------------------------
#: a step coefficient: a Python float (1-D grid) or a float64 ``[B]`` tensor (per-sample grid)
Coef = Union[float, torch.Tensor]


def fexp(v: Coef) -> Coef:
    """exp of a coefficient: ``math.exp`` for a float (1-D grid), ``torch.exp`` for a ``[B]`` tensor."""
    return math.exp(v) if isinstance(v, float) else torch.exp(v)


def fexpm1(v: Coef) -> Coef:
    """expm1 of a coefficient: ``math.expm1`` for a float, ``torch.expm1`` for a ``[B]`` tensor."""
    return math.expm1(v) if isinstance(v, float) else torch.expm1(v)


def fsqrt(v: Coef) -> Coef:
    """sqrt of a coefficient, negative rounding errors clamped to 0."""
    return math.sqrt(max(v, 0.0)) if isinstance(v, float) else torch.sqrt(v.clamp(min=0))


def is_pos(v: Coef) -> bool:
    """The one positivity test of a coefficient or std (float, scalar or ``[B]`` tensor): all entries > 0."""
    return v > 0 if isinstance(v, float) else bool(torch.all(torch.as_tensor(v) > 0))


def as_coef_tensor(v: Coef, x: torch.Tensor) -> torch.Tensor:
    """A coefficient as a tensor in x's dtype/device that broadcasts against x (0-d, or ``[B, 1, ...]``)."""
    return torch.tensor(v, dtype=x.dtype, device=x.device) if isinstance(v, float) else bcast(v, x)


_SCALAR_DTYPES = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=8192)
def _scalar(c: float, dtype: torch.dtype) -> torch.Tensor:
    """A float coefficient as a 0-d CPU tensor in x's dtype (float32/64): ``v * _scalar(c)`` equals ``c * v`` bit for
    bit (the kernel casts a Python scalar to the same dtype) but skips wrapping the float (~1.5 us per call)."""
    return torch.tensor(c, dtype=dtype)


def combine(x: torch.Tensor, terms: list) -> torch.Tensor:
    """sum_j c_j v_j for (c_j, v_j) in ``terms``; c_j a float (fused ``add_(..., alpha=c)``) or a scalar / ``[B]``
    tensor broadcast against x (cast to x's dtype).  ``x`` only gives the shape and dtype; every v_j has x's shape.
    The sum accumulates in place into the fresh first product (one kernel per term, no temporaries)."""
    (c, v), rest = terms[0], terms[1:]
    if isinstance(c, float):
        out = v * _scalar(c, v.dtype) if c != 0.0 and v.dtype in _SCALAR_DTYPES else c * v
    else:
        out = bcast(c, x) * v
    for c, v in rest:
        if isinstance(c, float):
            out.add_(v, alpha=c)
        else:
            out.add_(bcast(c, x) * v)
    return out


def eps_native(model: DiffusionModel, score: bool = False) -> bool:
    """Whether ``model`` (or the model a ``CountingModel`` wraps) predicts eps itself and its x0 is the model
    currency's conversion x0 = (x - sigma eps)/alpha of that eps (``DiffusionModel.x0`` not overridden, or an
    eps-parameterised ``NetworkModel`` / ``FunctionModel``): then a sampler may fold the conversion into its own
    precomputed coefficients (``data_prediction``) instead of calling ``model.x0``.  ``score``: its score is also
    the currency's -eps/sigma (``DiffusionModel.score`` not overridden)."""
    inner = model.model if isinstance(model, CountingModel) else model
    if score and type(inner).score is not DiffusionModel.score:
        return False
    x0 = type(inner).x0
    if x0 is DiffusionModel.x0:
        return type(inner).eps is not DiffusionModel.eps
    return (x0 is NetworkModel.x0 and type(inner).eps is NetworkModel.eps or x0 is FunctionModel.x0
            and type(inner).eps is FunctionModel.eps) and inner.parameterization == "eps"


GRID_CACHE_SIZE = 16  # grids memoised per process by ``GridCoefs.of``


class GridCoefs:
    """alpha, sigma and lambda/2 = log(alpha/sigma) at every grid time, computed once before a sampler's loop.

    1-D grid: Python floats from ``process.coefs_at`` (the memo shared with step functions called per time, so both
    paths see bit-identical values; float64 accuracy, no tensor ops or device syncs in the loop).  ``[n+1, B]`` grid:
    float64 ``[B]`` tensors.  ``t[i]`` is grid time i in x's dtype/device (what the model is called with); ``zero[i]``
    tells whether (some sample's) time i is 0."""

    def __init__(self, process, ts: torch.Tensor, x: torch.Tensor):
        self.process, self.per_sample = process, ts.ndim == 2
        self.ts64 = ts.detach().to("cpu", torch.float64)
        self.t = list(ts.to(device=x.device, dtype=x.dtype).unbind(0))
        if self.per_sample:
            self.a, self.sg, self.lam = (list(v.to(x.device).unbind(0)) for v in process.coefs(self.ts64))
            self.zero = [bool(torch.any(r == 0)) for r in self.ts64]
        else:
            self.a, self.sg, self.lam = (list(v) for v in zip(*process.coefs_at(self.ts64), strict=True))
            self.zero = [v == 0 for v in self.ts64.tolist()]
            if x.dtype != torch.float64:  # the model's own x0 / eps / score conversions look up times in x's dtype
                process.warm_coefs(ts.detach().to("cpu", x.dtype))
        self.device, self.dtype, self.derived = x.device, x.dtype, {}
        #: floats (1-D grid) in a dtype ``_scalar`` caches: the steps may use cached 0-d tensors
        self.fast = not self.per_sample and x.dtype in _SCALAR_DTYPES

    @classmethod
    def of(cls, process, ts: torch.Tensor, x: torch.Tensor) -> "GridCoefs":
        """``GridCoefs(process, ts, x)``, memoised on the process per grid (values), x dtype and device: a sampler
        called again on the same grid (every batch of ``budget.run_sampler``) does no per-grid work.  Bounded."""
        if ts.requires_grad:  # a grid that carries gradients (into the model's time input) is never shared
            return cls(process, ts, x)
        cache = process.__dict__.setdefault("_grid_cache", {})
        key = (ts.dtype, tuple(ts.shape), ts.detach().to("cpu", torch.float64).numpy().tobytes(), x.dtype, x.device)
        g = cache.get(key)
        if g is None:
            if len(cache) >= GRID_CACHE_SIZE:
                cache.clear()
            g = cache[key] = cls(process, ts, x)
        return g

    def memo(self, key, build: Callable[[], object]):
        """A sampler's own per-step coefficients on this grid (``key``: its name and options), built once."""
        hit = self.derived.get(key)
        if hit is None:
            hit = self.derived[key] = build()
        return hit

    def c(self, i: int) -> tuple[Coef, Coef, Coef]:
        """(alpha, sigma, lambda/2) at grid time i."""
        return self.a[i], self.sg[i], self.lam[i]

    def scalars(self, key, values: Callable[[], list]) -> list:
        """``memo`` of per-step float coefficients as cached 0-d tensors in x's dtype (``_scalar``): ``v * s`` equals
        ``c * v`` bit for bit without wrapping the float at every step.  ``values()`` -> list of floats."""
        dt = self.dtype  # zeros uncached: the lru key does not tell 0.0 from -0.0
        return self.memo(("scalars", key), lambda: [_scalar(c, dt) if c != 0.0 else torch.tensor(c, dtype=dt)
                                                    for c in values()])

    def sde(self) -> tuple[list, list]:
        """(f, g^2) at every grid time (``process.sde_coefs``), floats or float64 ``[B]`` tensors."""
        if self.per_sample:
            return tuple(list(v.to(self.device).unbind(0)) for v in self.process.sde_coefs(self.ts64))
        return tuple(list(v) for v in zip(*self.process.sde_coefs_at(self.ts64), strict=True))


def data_from_eps(g: GridCoefs) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """x0(x, eps, i) = x (1/alpha_i) + (-sigma_i/alpha_i) eps, the model currency's conversion at grid time i with
    precomputed coefficients (a 1-D grid, ``g.fast``); equal to ``x0_from_eps`` up to float rounding."""
    inv_a = g.scalars("1/alpha", lambda: [1.0 / a for a in g.a])
    c_eps = g.memo("-sigma/alpha", lambda: [-s / a for a, s in zip(g.a, g.sg, strict=True)])

    def x0(x: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        return (x * inv_a[i]).add_(eps, alpha=c_eps[i])

    return x0


def data_prediction(m: CountingModel, g: GridCoefs) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """x0_hat(x, i): the data prediction at grid time i (one evaluation).  For an ``eps_native`` model on a 1-D grid
    the conversion x0 = (x - sigma_i eps)/alpha_i runs as x (1/alpha_i) + (-sigma_i/alpha_i) eps with precomputed
    coefficients (two kernels, no per-step coefficient lookup; equal to ``m.x0`` up to float rounding); otherwise
    ``m.x0(x, t_i)``."""
    t = g.t
    if not (g.fast and eps_native(m)):
        return lambda x, i: m.x0(x, t[i])
    from_eps, eps = data_from_eps(g), m.eps
    return lambda x, i: from_eps(x, eps(x, t[i]), i)


def data_prediction_at(m: DiffusionModel, x: torch.Tensor, t: torch.Tensor, a: Coef, sg: Coef) -> torch.Tensor:
    """x0_hat(x, t) for the step functions called per time, given (alpha, sigma) at t from ``point_coefs``: what
    ``data_prediction`` computes on a grid (bit for bit for float coefficients), else ``m.x0(x, t)``."""
    if isinstance(a, float) and x.dtype in _SCALAR_DTYPES and eps_native(m):
        return (x * _scalar(1.0 / a, x.dtype)).add_(m.eps(x, t), alpha=-sg / a)
    return m.x0(x, t)


def on_chain_states(p, ts: torch.Tensor) -> bool:
    """Whether the times ``ts`` (any shape) lie on the states t_i = i/N of a ``Discrete`` chain ``p`` (``make_grid``
    on a chain).  Samplers that evaluate the model between grid times (DPM-Solver's intermediate points, restart's
    inner grids, accel_det's first virtual time) then move those times onto states too: a network trained on
    integer steps is evaluated only where it was trained."""
    if not isinstance(p, Discrete):
        return False
    k = torch.as_tensor(ts, dtype=torch.float64)
    k = k[k > 0] * p.N
    return bool(torch.allclose(k, torch.round(k), atol=1e-6))


def point_coefs(process, t: torch.Tensor) -> tuple[Coef, Coef, Coef]:
    """(alpha, sigma, lambda/2) at one time for the step functions called per time: floats through the scalar memo
    for a 0-d CPU time (the values ``GridCoefs`` sees), float64 tensors for ``[B]`` times."""
    t64 = torch.as_tensor(t).detach().to(torch.float64)
    if t64.ndim == 0 and t64.device.type == "cpu":
        return tuple(v.item() for v in process.coefs(t64))
    return process.coefs(t64)


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
        """The final state x_{t_n}, ``[B, ...]``."""
        return self.xs[-1]


class TrajectoryRecorder:
    """Collects states and transitions while a sampler runs; ``finish`` builds the ``Trajectory``."""

    def __init__(self, x_T: torch.Tensor, ts: torch.Tensor, enabled: bool):
        self.enabled, self.ts = enabled, ts
        self.xs, self.means, self.stds, self.lps = [x_T], [], [], []

    def add(self, x_next: torch.Tensor, mean: torch.Tensor | None = None, std=None) -> None:
        """Record the next state ``[B, ...]`` and its step's Gaussian transition (mean ``[B, ...]``, std scalar or
        ``[B]``), or None, None for a deterministic step (log-prob NaN)."""
        if not self.enabled:
            return
        if isinstance(std, float):  # a precomputed coefficient: recorded as a tensor in x's dtype
            std = torch.tensor(std, dtype=x_next.dtype, device=x_next.device)
        elif std is not None and std.ndim == 1 and x_next.ndim > 1:  # per-sample std: recorded broadcastable to x
            std = bcast(std, x_next)
        self.xs.append(x_next)
        self.means.append(mean)
        self.stds.append(std)
        if mean is None or std is None:
            self.lps.append(torch.full((x_next.shape[0],), float("nan"), dtype=x_next.dtype, device=x_next.device))
        else:
            self.lps.append(transition_log_prob(x_next, mean, std).detach())

    def finish(self, x: torch.Tensor, nfe: int):
        """x itself when not recording, else the ``Trajectory`` with the measured ``nfe``."""
        if not self.enabled:
            return x
        lps = torch.stack(self.lps) if self.lps else None
        return Trajectory(self.xs, self.ts, self.means, self.stds, lps, nfe)


def counted(model: DiffusionModel) -> CountingModel:
    """Wrap ``model`` in a ``CountingModel`` unless it already is one (so NFE is measured, never assumed)."""
    return model if isinstance(model, CountingModel) else CountingModel(model)


@dataclass(frozen=True)
class SamplerInfo:
    """Registry entry of a sampler: the function and everything the rest of the library needs to know about it.

    ==========================  ====================================================================================
    ``fn``                      ``sample_<name>(model, x_T, ts, *, generator, callback, return_trajectory, **opts)``
    ``order``                   global convergence order of the ODE solver (0: none claimed); ``order_with(**opts)``
                                for option-dependent orders (``order_of`` hook, e.g. UniPC's p + corrector)
    ``weak_order``              weak order of a stochastic sampler: error of E phi(x_0) ~ h^weak_order with noise
                                on every step (``noise_last=True``; None: none claimed); measured on an exact
                                Gaussian by tests/test_samplers_weak_order.py
    ``evals_per_step``          network evaluations per grid step at the default options (nan: adaptive);
                                ``evals_of(**opts)`` hook when options change it (PC's correctors, Langevin steps)
    ``skip_correction_at_zero`` the step into t = 0 costs one evaluation (Heun-type correction skipped at sigma = 0);
                                ``evals_at_zero_of(**opts)`` hook when that count depends on options
    ``evals_first_of``          evaluations of the first grid step when they differ from ``evals_per_step`` (Heun's
                                Euler first step: 1), as a function of the options
    ``evals_last_of``           evaluations of the last grid step when it does not end at t = 0 and they differ from
                                ``evals_per_step`` (Heun's lower-order final step: 1)
    ``extra_nfe_of``            evaluations outside the grid steps (restart: 2 K n_restart)
    ``mixed_orders``            k > 0: per-step orders <= k can spend any budget exactly (DPM-Solver-k, Lu et al.
                                2022, sec. 3.4), passed as the option ``orders``
    ``transition``              the stochastic step as a Gaussian, ``(model, x, t, s, **opts) -> (mean, std)``,
                                differentiable in the model (policy-gradient fine-tuning uses it); options named in
                                ``transition_options``
    ``pre_transition``          a model-free Gaussian stage before ``transition``, ``(process, x, t, s) -> (mean,
                                std)`` (accel_stoch's Phi_t); its noise is drawn first
    ``needs``                   "" or one line naming an input the sampler cannot run without at its default options
                                and how to give it (analytic_dpm's Gamma); generic sweeps and ``auto`` skip it
    ==========================  ====================================================================================
    """

    name: str
    fn: Callable
    order: float
    evals_per_step: float
    stochastic: bool
    options: tuple[str, ...] = ()
    reference: str = ""
    default_grid: str = "uniform"
    weak_order: float | None = None
    skip_correction_at_zero: bool = False
    order_of: Callable[..., float] | None = None
    evals_of: Callable[..., float] | None = None
    evals_at_zero_of: Callable[..., float] | None = None
    evals_first_of: Callable[..., float] | None = None
    evals_last_of: Callable[..., float] | None = None
    extra_nfe_of: Callable[..., int] | None = None
    budget_options_of: Callable[..., dict] | None = None
    mixed_orders: int = 0
    transition: Callable | None = None
    pre_transition: Callable | None = None
    transition_options: tuple[str, ...] = ()
    needs: str = ""

    def check_options(self, opts: dict) -> dict:
        """``opts`` if every key is one of ``options``, else ``ValueError`` naming the unknown ones."""
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            raise ValueError(f"sampler {self.name!r} has no option(s) {unknown}; expected some of "
                             f"{list(self.options)}{suggest(unknown[0], self.options)}")
        return self._check_option_types(opts)

    def _check_option_types(self, opts: dict) -> dict:
        """``opts`` with each value checked against the sampler function's annotation of that keyword (or the
        type of its default): ``ValueError`` naming the option, the value and the expected type."""
        import inspect
        import typing

        try:
            hints = typing.get_type_hints(self.fn)
        except (NameError, TypeError):
            hints = {}
        params = inspect.signature(self.fn).parameters
        for k, v in opts.items():
            default = params[k].default if k in params else None
            hint = hints.get(k, type(default) if isinstance(default, (bool, int, float, str)) else typing.Any)
            ok, opts[k] = fits_type(v, hint)
            if not ok:
                raise ValueError(f"sampler {self.name!r} option {k}={v!r}: expected {type_name(hint)} (its options: "
                                 f"{list(self.options)})")
        return opts

    def order_with(self, **opts) -> float:
        """Convergence order under the options ``opts`` (default options: ``order``)."""
        return float(self.order_of(**self.check_options(opts))) if self.order_of else float(self.order)

    def evals(self, **opts) -> float:
        """Network evaluations of one grid step under the options ``opts``."""
        return float(self.evals_of(**self.check_options(opts))) if self.evals_of else float(self.evals_per_step)

    def evals_at_zero(self, **opts) -> float:
        """Network evaluations of a final step into t = 0 (sigma = 0) under ``opts``."""
        if self.evals_at_zero_of is not None:
            return float(self.evals_at_zero_of(**self.check_options(opts)))
        return 1.0 if self.skip_correction_at_zero else self.evals(**opts)

    def evals_first(self, **opts) -> float:
        """Network evaluations of the first grid step (when it is not the final step into t = 0) under ``opts``."""
        return float(self.evals_first_of(**self.check_options(opts))) if self.evals_first_of else self.evals(**opts)

    def evals_last(self, **opts) -> float:
        """Network evaluations of the last grid step when it does not end at t = 0, under ``opts``."""
        return float(self.evals_last_of(**self.check_options(opts))) if self.evals_last_of else self.evals(**opts)

    def with_budget_options(self, nfe: int, opts: dict) -> dict:
        """``opts`` completed by the options a budget of ``nfe`` evaluations sets when the user has not (restart's
        number of loops K, ``budget_options_of(nfe, **opts)``); options the user gave are never changed."""
        if self.budget_options_of is None:
            return dict(opts)
        return {**self.budget_options_of(int(nfe), **opts), **opts}

    def extra_nfe(self, **opts) -> int:
        """Network evaluations spent outside the grid steps (restart's loops) under ``opts``."""
        return int(self.extra_nfe_of(**self.check_options(opts))) if self.extra_nfe_of else 0

    @property
    def adaptive(self) -> bool:
        """No fixed evaluations per step (NFE measured after the run, not budgeted)."""
        return not (self.evals_per_step > 0 and math.isfinite(self.evals_per_step))

    def planned_nfe(self, steps: int, final_zero: bool = False, **opts) -> int:
        """Network evaluations of a run over a grid of ``steps`` steps (the last one into t = 0 when
        ``final_zero``) with options ``opts``: steps_before e + e_0 + extra, rounded up."""
        if self.adaptive:
            raise ValueError(f"sampler {self.name!r} is adaptive (no fixed evaluations per step); its NFE is "
                             "measured after the run, not planned")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"a grid needs at least one step, got {steps}")
        return int(math.ceil(self._step_evals(steps, final_zero, opts) - 1e-9)) + self.extra_nfe(**opts)

    def _step_evals(self, steps: int, final_zero: bool, opts: dict) -> float:
        """Evaluations of the grid steps: the first (``evals_first``), the middle ones (``evals``) and the last one
        (``evals_at_zero`` into t = 0, else ``evals_last``); a single step is both first and last."""
        e, e1 = self.evals(**opts), self.evals_first(**opts)
        last = self.evals_at_zero(**opts) if final_zero else self.evals_last(**opts)
        if steps == 1:
            return last if final_zero else min(e1, last)
        return e1 + (steps - 2) * e + last

    def steps_for_nfe(self, nfe: int, final_zero: bool = False, **opts) -> tuple[int, int]:
        """The most grid steps (counting a final step into t = 0) whose ``planned_nfe`` fits in ``nfe``
        -> (steps, planned NFE).  Raises ``ValueError`` when not even one step fits."""
        if self.adaptive:
            raise ValueError(f"sampler {self.name!r} is adaptive (no fixed evaluations per step); its NFE is "
                             "measured after the run, not budgeted")
        e, extra = self.evals(**opts), self.extra_nfe(**opts)
        if nfe - extra < 1:
            raise ValueError(f"NFE budget {nfe} does not cover the {extra} evaluations {self.name!r} spends outside "
                             f"its grid steps (options {opts or 'default'})")
        lo = 1 + int(final_zero)  # a step before the optional final step into 0
        if self._step_evals(lo, final_zero, opts) > nfe - extra + 1e-9:
            raise ValueError(f"NFE budget {nfe} is too small for sampler {self.name!r} ({e:g} evaluations per step"
                             f"{', plus the final step to 0' if final_zero else ''}); need at least "
                             f"{int(math.ceil(self._step_evals(lo, final_zero, opts) - 1e-9)) + extra}")
        steps = lo + max(0, int(math.floor((nfe - extra - self._step_evals(lo, final_zero, opts)) / e + 1e-9)))
        while self._step_evals(steps, final_zero, opts) > nfe - extra + 1e-9:  # a cheaper first / last step
            steps -= 1
        while self._step_evals(steps + 1, final_zero, opts) <= nfe - extra + 1e-9:
            steps += 1
        return steps, self.planned_nfe(steps, final_zero, **opts)


SAMPLERS: dict[str, SamplerInfo] = {}


def register(name: str, *, order: float, evals_per_step: float, stochastic: bool, options: tuple[str, ...] = (),
             reference: str = "", default_grid: str = "uniform", **info):
    """Decorator adding a ``sample_*`` function to ``SAMPLERS``; ``info``: the optional ``SamplerInfo`` fields
    (``weak_order``, ``skip_correction_at_zero``, the NFE hooks, ``transition``, ...)."""
    fields = set(SamplerInfo.__dataclass_fields__) - {"name", "fn"}
    if set(info) - fields:
        raise TypeError(f"register({name!r}): unknown SamplerInfo fields {sorted(set(info) - fields)}")

    def deco(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} registered twice")
        SAMPLERS[name] = SamplerInfo(name, fn, order, evals_per_step, stochastic, options, reference, default_grid,
                                     **info)
        return fn

    return deco
