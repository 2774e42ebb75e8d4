r"""Optimised time grids: fit the n-1 interior points of a deterministic sampler's grid to a trusted ODE solution.

For a deterministic sampler ``S`` and a grid ``ts`` the output ``S(x_T; ts)`` is a transport map; its distribution
differs from the probability-flow ODE's by at most the pathwise error, since the coupling (S(x_T), Phi(x_T)) gives

    SW2(law S, law Phi)^2  <=  W2(law S(x_T; ts), law Phi(x_T))^2  <=  E || S(x_T; ts) - Phi(x_T) ||^2 = d L(ts),

where ``Phi`` is the exact PF-ODE flow from t_max to t_min (adaptive dopri5 at a tight tolerance, or UniPC-3 on 1000
log-SNR steps: ``ode_reference``; followed by the same step to t = 0 when the grid ends there).  With ``free_end`` the
grid's last time before its step to 0 is fitted as well and ``Phi`` is the model's full solution, down to the
process's own t_min (then the step to 0): a grid may then trade its last time against its interior ones (at NFE 5 on
a DDPM chain diffusers' linspace timesteps stop at k = 200, t = 0.2; the fit moves that point).  With exact scores
the ODE's law at t_min is the data law diffused to t_min, so minimising ``L`` over the grid minimises an upper bound
on the sampler's distance to it.  This is the teacher-student idea of LD3 (Tong et al. 2025, "Learning to
Discretize Denoising Diffusion ODEs") and of GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based
Diffusion Sampling"), applied to the sampler as it is run (any order, single- or multistep): only the model is
used, never data.

Two objectives: ``"pathwise"`` is L itself (per coordinate); ``"sliced_w2"`` (default) is the squared sliced W2
between the two samples {S(x_i)} and {Phi(x_i)} of the same x_i on fixed random directions, i.e. the distributional
distance the sampler is judged by.  It is smaller than L and lets the sampler's map differ from the ODE's where that
does not change the distribution; at few steps it is the better target (16-d mixture, UniPC at NFE 5: sliced W2 to
the data 0.132 on the uniform grid, 0.149 fitted pathwise, 0.093 fitted sliced).

Notation
--------
==============  =====================================================================================================
``lam``         log-SNR lambda(t) = log(alpha^2 / sigma^2); the grid is parameterised in lambda (increasing along
                the sampling direction), endpoints lambda(t_max), lambda(t_min) fixed (t_min fitted: ``free_end``)
``theta``       n - 1 free logits: increment k of lambda is softmax([theta, 0])_k (lambda(t_min) - lambda(t_max));
                with ``free_end`` preceded by lambda(t_min) itself, in [lambda(t_max), lambda(process.t_min)]
``L``           mean over x_T of || S(x_T; ts) - Phi(x_T) ||^2 / d (per-coordinate squared pathwise error)
``SW2``         sliced W2: mean over unit directions u of W2^2 of the 1-D projections (sorted matching), sqrt
==============  =====================================================================================================

The objective is minimised derivative-free (scipy's Powell, which needs no gradient through the sampler; a box on
lambda(t_min)), on a fixed batch of x_T (common random numbers), so the fitted grid should be judged on fresh x_T:
``GridFit`` reports the loss of the initial and the fitted grid on both the fitting batch and a held-out batch.
Several initial grids may be given: each is scored on the fitting batch and the fit starts from the best (a grid
chosen on exact mixture oracles, e.g. ``li``, need not suit a trained network, and the starts differ by orders of
magnitude at NFE 5).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.analytic import MixtureModel
from ..core.denoisers import DiffusionModel
from ..core.schedules import make_grid

_F64 = torch.float64


@dataclass
class GridFit:
    """Result of ``optimize_grid``: the fitted grid (float64, descending, like ``make_grid``) and its losses."""

    ts: torch.Tensor
    sampler: str
    init: str
    final_zero: bool
    objective: str
    loss_init: float  # objective on the fitting batch, initial grid
    loss_fit: float  # objective on the fitting batch, fitted grid
    heldout_init: float  # objective on a fresh batch, initial grid
    heldout_fit: float  # objective on a fresh batch, fitted grid
    n_objective: int  # objective evaluations (sampler runs on the fitting batch)
    model_evals: int  # network evaluations spent fitting (teacher solves included)
    history: list = field(default_factory=list)
    reference: str = "dopri5"  # the teacher's solver (ode_reference's method)
    free_end: bool = False  # the last time before the step to 0 was fitted (teacher: the full ODE solution)
    init_losses: dict = field(default_factory=dict)  # objective of each initial grid on the fitting batch

    def to_json(self) -> dict:
        """The fit as a JSON-ready dict (the grid ``ts`` as a list of floats): what ``save`` writes, ``load_grid``
        reads."""
        d = asdict(self)
        d["ts"] = self.ts.tolist()
        return d

    def save(self, path: str | Path) -> None:
        """Write the grid and its report as JSON (readable by ``load_grid``)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)


def load_grid(path: str | Path) -> torch.Tensor:
    """The grid ``ts`` of a JSON file written by ``GridFit.save`` (or any JSON object with a ``ts`` list)."""
    data = json.loads(Path(path).read_text())
    ts = data.get("ts") if isinstance(data, dict) else None
    if not isinstance(ts, list) or len(ts) < 2:
        raise ValueError(f"{path}: expected a JSON object with a list 'ts' of at least 2 times")
    ts = torch.tensor(ts, dtype=_F64)
    if not torch.all(ts[1:] < ts[:-1]):
        raise ValueError(f"{path}: the grid 'ts' must be strictly decreasing")
    return ts


def grid_from_theta(process, theta: np.ndarray, lam_lo: float, lam_hi: float, t_max: float, t_min: float,
                    final_zero: bool) -> torch.Tensor:
    """The grid of logits ``theta`` (n - 1 values): lambda_k = lam_lo + (lam_hi - lam_lo) * cumsum(softmax([theta,
    0]))_k, mapped to time; endpoints pinned exactly."""
    w = torch.softmax(torch.tensor(np.append(theta, 0.0), dtype=_F64), 0)
    lam = lam_lo + (lam_hi - lam_lo) * torch.cat([torch.zeros(1, dtype=_F64), torch.cumsum(w, 0)])
    ts = process.t_from_log_snr(lam).to(_F64)
    ts[0], ts[-1] = t_max, t_min
    return torch.cat([ts, ts.new_zeros(1)]) if final_zero else ts


def theta_from_grid(process, ts: torch.Tensor) -> np.ndarray:
    """Inverse of ``grid_from_theta`` for a grid ending at t_min (no trailing 0)."""
    lam = process.log_snr(ts.to(_F64))
    d = torch.diff(lam).clamp_min(1e-12)
    return (torch.log(d[:-1]) - torch.log(d[-1])).numpy()


REFERENCES = ("dopri5", "unipc")


def ode_reference(model: DiffusionModel, x_T: torch.Tensor, t_max: float, t_min: float, final_zero: bool,
                  rtol: float = 1e-7, atol: float = 1e-7, method: str = "dopri5", steps: int = 1000) -> torch.Tensor:
    """Phi(x_T): the PF-ODE from t_max to t_min (plus the first-order step to t = 0 that every sampler takes into
    0, i.e. the model's x0 prediction, when ``final_zero``), solved by

    - ``method="dopri5"``: adaptive dopri5 at ``rtol`` / ``atol`` (torchdiffeq; one step size for the whole batch);
    - ``method="unipc"``: UniPC-3 (Zhao et al. 2023) on ``steps`` steps uniform in log-SNR, a fixed cost of
      ``steps`` evaluations.  With exact scores of a 16-d mixture and 1000 steps it is 3.6e-6 (RMS) from dopri5 at
      rtol 1e-11, where dopri5 at rtol 1e-7 is 3e-3 off: the better teacher once a sampler's own error is that
      small (NFE >= 50)."""
    from . import SAMPLERS

    if method not in REFERENCES:
        raise ValueError(f"unknown reference solver {method!r}; expected one of {REFERENCES}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    with torch.no_grad():
        if method == "dopri5":
            ts = [t_max, t_min] + ([0.0] if final_zero else [])
            return SAMPLERS["dopri5"].fn(model, x_T, torch.tensor(ts, dtype=_F64), rtol=rtol, atol=atol)
        grid = make_grid("uniform_log_snr", model.process, int(steps), t_max=t_max, t_min=t_min)
        out = SAMPLERS["unipc"].fn(model, x_T, grid)
        return SAMPLERS["ddim"].fn(model, out, torch.tensor([t_min, 0.0], dtype=_F64)) if final_zero else out


def optimize_grid(model: DiffusionModel, sampler: str, n_steps: int, *, init="uniform_log_snr",
                  final_zero: bool = False, free_end: bool = False, objective: str = "sliced_w2",
                  n_samples: int = 1024, n_heldout: int = 1024, n_proj: int = 128, max_objective: int = 600,
                  generator: torch.Generator | None = None, sampler_opts: dict | None = None,
                  grid_kw: dict | None = None, dtype: torch.dtype = torch.float32, sample_shape: tuple = (),
                  device: str | torch.device = "cpu", rtol: float = 1e-7, reference: str = "dopri5",
                  ref_steps: int = 1000, progress: bool = False) -> GridFit:
    """Fit the interior points of an ``n_steps`` grid for the deterministic ``sampler`` (module docstring).

    ``init``: the starting grid: a ``make_grid`` name (``grid_kw`` passed on), an explicit grid (``[n_steps + 1]``
    descending times, a trailing 0 dropped with ``final_zero``), or a list of these: each is scored on the fitting
    batch and the fit starts from the best (``GridFit.init_losses``); endpoints t_max, t_min taken from it;
    ``final_zero``: the grid ends with a step to t = 0 (the denoiser's output); ``free_end`` (needs ``final_zero``):
    the last time t_min before that step is fitted too (in [process.t_min, t_max)), and the teacher solves the ODE
    down to the process's own end process.t_min (then the same step to 0): the model's full ODE solution;
    ``n_samples`` / ``n_heldout``: x_T of the fitting and the held-out batch, drawn from the process prior with
    ``generator`` (a CPU generator), shape ``[n, *sample_shape]`` (required but for an exact oracle, whose
    mixture knows its shape), on ``device`` in ``dtype``;
    ``objective``: ``"sliced_w2"`` (on ``n_proj`` fixed random directions) or ``"pathwise"`` (module docstring);
    ``max_objective``: budget of objective evaluations (initial grids and Powell); ``sampler_opts``: passed to the
    sampler (e.g. ``orders`` of DPM-Solver, ``order`` of UniPC); ``reference``, ``rtol``, ``ref_steps``: the
    teacher's solver (``ode_reference``: dopri5 at ``rtol``, or UniPC-3 on ``ref_steps`` log-SNR steps).  Returns a
    ``GridFit`` (``ts`` starts at t_max and ends at t_min, or 0 with ``final_zero``)."""
    from scipy.optimize import minimize

    from .._utils import progress as tqdm
    from ..core.denoisers import CountingModel

    info = _check_request(sampler, n_steps, n_samples, n_heldout, max_objective, n_proj, reference, objective,
                          grid_kw, final_zero, free_end)
    p, opts = model.process, dict(sampler_opts or {})
    inits = _init_grids(init, p, int(n_steps), grid_kw, final_zero, free_end)
    par = _Params(p, float(inits[0][1][0]), float(inits[0][1][-1]), free_end)
    shape = tuple(sample_shape) or _sample_shape(model)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x_fit = p.prior_sample((n_samples, *shape), generator=g, dtype=dtype).to(device)
    x_held = p.prior_sample((n_heldout, *shape), generator=g, dtype=dtype).to(device)
    counter = CountingModel(model)
    ref_kw = {"rtol": rtol, "atol": rtol, "method": reference, "steps": ref_steps}
    t_ref = float(p.t_min) if free_end else par.t_min
    ref_fit = ode_reference(counter, x_fit, par.t_max, t_ref, final_zero, **ref_kw)
    ref_held = ode_reference(counter, x_held, par.t_max, t_ref, final_zero, **ref_kw) if n_heldout else None
    directions = torch.randn(math.prod(shape), n_proj, generator=g, dtype=_F64)
    directions = (directions / directions.norm(dim=0, keepdim=True)).to(device)
    fn = info.fn
    if "progress" in _params(fn):
        opts["progress"] = False
    _check_deterministic(fn, counter, x_fit[:4], inits[0][1], opts, sampler)

    def loss(ts: torch.Tensor, x: torch.Tensor, ref: torch.Tensor) -> float:
        try:
            with torch.no_grad():
                out = fn(counter, x, ts, **opts)
        except ValueError:  # a degenerate grid (points merged in float64): not a candidate
            return 1e30
        v = discrepancy(out, ref, directions if objective == "sliced_w2" else None)
        return v if math.isfinite(v) else 1e30

    history: list = []
    bar = tqdm(total=max_objective, desc=f"optimize_grid {sampler} n={n_steps}", disable=not progress, leave=False)

    def fun(theta: np.ndarray) -> float:
        v = loss(par.grid(theta, final_zero), x_fit, ref_fit)
        history.append(v)
        bar.update(1)
        bar.set_postfix(best=min(history))
        return v

    init_losses = {name: fun(par.theta(ts)) for name, ts in inits}
    name0 = min(init_losses, key=init_losses.get)
    ts0 = dict(inits)[name0]
    theta0, f0 = par.theta(ts0), init_losses[name0]
    res = None
    if max_objective > len(history):
        res = minimize(fun, theta0, method="Powell", bounds=par.bounds(len(theta0)),
                       options={"maxfev": max_objective - len(history), "xtol": 1e-4, "ftol": 1e-6})
    bar.close()
    theta = res.x if res is not None and res.fun <= f0 else theta0
    ts = par.grid(theta, final_zero)
    ts_init = torch.cat([ts0, ts0.new_zeros(1)]) if final_zero else ts0
    h0 = loss(ts_init, x_held, ref_held) if n_heldout else math.nan
    h1 = loss(ts, x_held, ref_held) if n_heldout else math.nan
    return GridFit(ts=ts, sampler=sampler, init=name0, final_zero=final_zero, objective=objective, loss_init=f0,
                   loss_fit=min(res.fun, f0) if res is not None else f0,
                   heldout_init=h0, heldout_fit=h1, n_objective=len(history), model_evals=counter.nfe,
                   history=[min(history[: i + 1]) for i in range(len(history))], reference=reference,
                   free_end=free_end, init_losses=init_losses)


def _check_request(sampler, n_steps, n_samples, n_heldout, max_objective, n_proj, reference, objective, grid_kw,
                   final_zero, free_end):
    """``optimize_grid``'s argument checks (one ValueError line each); returns the sampler's ``SamplerInfo``."""
    from . import SAMPLERS

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}")
    info = SAMPLERS[sampler]
    if not math.isfinite(info.evals_per_step):
        raise ValueError(f"optimize_grid needs a fixed-step sampler; {sampler!r} is adaptive")
    if int(n_steps) != n_steps or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2 (one step has no interior point), got {n_steps}")
    if n_samples < 1 or n_heldout < 0 or max_objective < 1 or n_proj < 1:
        raise ValueError("need n_samples >= 1, n_heldout >= 0, n_proj >= 1 and max_objective >= 1")
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference solver {reference!r}; expected one of {REFERENCES}")
    if objective not in ("sliced_w2", "pathwise"):
        raise ValueError(f"objective must be 'sliced_w2' or 'pathwise', got {objective!r}")
    if "final_zero" in (grid_kw or {}):
        raise ValueError("pass final_zero to optimize_grid itself, not in grid_kw (the step to 0 is not fitted)")
    if free_end and not final_zero:
        raise ValueError("free_end=True needs final_zero=True (the fitted last time is followed by the step to 0)")
    return info


def _init_grids(init, process, n_steps: int, grid_kw: dict | None, final_zero: bool,
                free_end: bool) -> list[tuple[str, torch.Tensor]]:
    """The candidate starting grids ``[(name, ts)]`` of ``init`` (a name, a grid or a list of them), each with
    ``n_steps + 1`` times ending at t_min > 0; all share t_max (and t_min unless ``free_end``)."""
    from .base import check_grid

    items = list(init) if isinstance(init, (list, tuple)) else [init]
    if not items:
        raise ValueError("init must name at least one starting grid")
    out = []
    for j, item in enumerate(items):
        if isinstance(item, str):
            name, ts = item, make_grid(item, process, n_steps, **(grid_kw or {}))
        else:
            name, ts = f"grid{j}", check_grid(torch.as_tensor(item, dtype=_F64), process).clone()
            ts = ts[:-1] if final_zero and float(ts[-1]) == 0.0 else ts
        if ts.ndim != 1 or len(ts) != n_steps + 1 or float(ts[-1]) <= 0:
            raise ValueError(f"init {name}: expected {n_steps + 1} times ending above 0 (a trailing 0 only with "
                             f"final_zero), got {ts.tolist()}")
        out.append((name, ts))
    t_max, t_min = float(out[0][1][0]), float(out[0][1][-1])
    for name, ts in out:
        if float(ts[0]) != t_max or (not free_end and float(ts[-1]) != t_min):
            raise ValueError(f"init {name} spans [{float(ts[-1])}, {float(ts[0])}]; every initial grid must share "
                             f"t_max = {t_max}" + ("" if free_end else f" and t_min = {t_min} (or pass free_end)"))
    return out


class _Params:
    """The fitted parameters: with ``free_end`` first the log-SNR lam_end of the last time, bounded to [lam(t_max) +
    1e-3 span, lam(process.t_min)] (first, so that Powell's first line search moves it), then the n - 1 logits theta
    of the lambda increments."""

    def __init__(self, process, t_max: float, t_min: float, free_end: bool):
        self.p, self.t_max, self.t_min, self.free_end = process, t_max, t_min, free_end
        lam = process.log_snr(torch.tensor([t_max, t_min, float(process.t_min)], dtype=_F64)).tolist()
        self.lam_lo, self.lam_hi, self.lam_cap = lam

    def theta(self, ts: torch.Tensor) -> np.ndarray:
        """The parameters of a grid ending at its t_min (no trailing 0)."""
        theta = theta_from_grid(self.p, ts)
        if not self.free_end:
            return theta
        return np.insert(theta, 0, min(float(self.p.log_snr(ts[-1].to(_F64))), self.lam_cap))

    def bounds(self, n: int) -> list | None:
        """Powell's box for ``n`` parameters: lam_end inside the process interval, free logits (None: no box)."""
        if not self.free_end:
            return None
        return [(self.lam_lo + 1e-3 * (self.lam_cap - self.lam_lo), self.lam_cap)] + [(None, None)] * (n - 1)

    def grid(self, theta: np.ndarray, final_zero: bool) -> torch.Tensor:
        """The grid of the parameters (float64, descending; then 0 with ``final_zero``)."""
        if not self.free_end:
            return grid_from_theta(self.p, theta, self.lam_lo, self.lam_hi, self.t_max, self.t_min, final_zero)
        lam_end = float(np.clip(theta[0], self.lam_lo + 1e-3 * (self.lam_cap - self.lam_lo), self.lam_cap))
        t_end = max(float(self.p.t_from_log_snr(torch.tensor(lam_end, dtype=_F64))), float(self.p.t_min))
        return grid_from_theta(self.p, theta[1:], self.lam_lo, lam_end, self.t_max, t_end, final_zero)


def discrepancy(out: torch.Tensor, ref: torch.Tensor, directions: torch.Tensor | None) -> float:
    """Squared sliced W2 between the samples ``out`` and ``ref`` on ``directions`` ([D, n_proj] unit columns; equal
    sizes, so the 1-D optimal coupling is the sorted one), or with ``None`` the per-coordinate mean squared pathwise
    error of ``out`` against ``ref``."""
    a, b = out.reshape(out.shape[0], -1).to(_F64), ref.reshape(ref.shape[0], -1).to(_F64)
    if directions is None:
        return float(((a - b) ** 2).mean())
    return float(((torch.sort(a @ directions, 0).values - torch.sort(b @ directions, 0).values) ** 2).mean())


def _check_deterministic(fn, model, x: torch.Tensor, ts: torch.Tensor, opts: dict, name: str) -> None:
    """Two runs with different noise seeds must agree (DDIM with eta = 0 does, DDPM does not)."""
    with torch.no_grad():
        a, b = (fn(model, x, ts, generator=torch.Generator().manual_seed(s), **opts) for s in (1, 2))
    if not torch.equal(a, b):
        raise ValueError(f"optimize_grid needs a deterministic sampler; {name!r} with options {opts} is stochastic "
                         "(its output depends on the noise)")


def _params(fn) -> set:
    import inspect

    return set(inspect.signature(fn).parameters)


def _sample_shape(model: DiffusionModel) -> tuple:
    """An exact oracle knows its sample shape; any other model needs ``sample_shape`` (no attributes are read)."""
    if isinstance(model, MixtureModel):
        return tuple(model.mixture.event_shape)
    raise ValueError("cannot infer the sample shape of this model; pass sample_shape=(...)")
