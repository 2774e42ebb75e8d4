r"""The one place that turns (model, sampler, NFE budget, n, batch size, device, dtype, seed) into samples.

NFE arithmetic: ``grid_for_nfe`` spends a budget on a sampler's grid (evaluations per step from its ``SamplerInfo``,
the final step into t = 0, restart's extra evaluations).  Bad input raises ``ValueError``; only ``cli`` knows about
exit codes.
"""
from __future__ import annotations

import math
import os
import time

import torch

from ..core.denoisers import CountingModel
from ..core.processes import ForwardProcess
from ..core.schedules import dpm_solver_orders, make_grid
from .base import SAMPLERS
from .grid_opt import load_grid, optimize_grid
from .restart import DEFAULT_K, DEFAULT_N_RESTART

# -- NFE budgets -------------------------------------------------------------------------------------------------
#: samplers whose step into t = 0 is a single (first-order) evaluation instead of ``evals_per_step``
SKIP_CORRECTION_AT_ZERO = {"heun", "edm", "restart", "dpm_solver_2", "dpm_solver_3"}


def _steps_for_budget(name: str, e: float, nfe: int, final_zero: bool) -> tuple[int, int]:
    """(n grid steps before an optional final step to 0, NFE used) for a sampler with e evaluations per step."""
    last = 1 if (final_zero and name in SKIP_CORRECTION_AT_ZERO) else (e if final_zero else 0)
    n = int(math.floor((nfe - last) / e + 1e-9))
    if n < 1:
        raise ValueError(f"NFE budget {nfe} is too small for sampler {name!r} ({e:g} evaluations per step"
                         f"{', plus the final step to 0' if final_zero else ''}); need at least {int(e + last)}")
    return n, int(round(n * e + last))


def grid_for_nfe(sampler_name: str, process: ForwardProcess, nfe: int, grid: str | None = None, *,
                 return_opts: bool = False, **kw):
    """Grid for ``sampler_name`` that spends at most ``nfe`` network evaluations.

    Returns ``(ts, nfe_used)``, or ``(ts, nfe_used, opts)`` with ``return_opts=True``, where ``opts`` are sampler
    options needed to realise the budget: for ``dpm_solver_2/3`` they are the mixed per-step ``orders`` of
    Lu et al. 2022 (sec. 3.4) that spend the budget exactly; without ``return_opts`` these samplers run their fixed
    order and the grid uses whole steps only.  ``restart`` takes ``K`` and ``n_restart`` in ``kw`` (its restart
    evaluations are subtracted first).  ``kw`` go to ``make_grid`` (t_max, t_min, final_zero, rho, ...)."""
    if sampler_name not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler_name!r}; expected one of {sorted(SAMPLERS)}")
    if int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe}")
    info, nfe = SAMPLERS[sampler_name], int(nfe)
    e, grid, final_zero = info.evals_per_step, grid or info.default_grid, bool(kw.get("final_zero", False))
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"sampler {sampler_name!r} is adaptive (no fixed evaluations per step); its NFE is "
                         "measured after the run, not budgeted")
    opts: dict = {}
    restart_nfe = 0
    if sampler_name == "restart":
        restart_nfe = 2 * int(kw.pop("K", DEFAULT_K)) * int(kw.pop("n_restart", DEFAULT_N_RESTART))
        if nfe - restart_nfe < 1:
            raise ValueError(f"NFE budget {nfe} does not cover the {restart_nfe} restart evaluations")
    if return_opts and sampler_name in ("dpm_solver_2", "dpm_solver_3"):
        orders = dpm_solver_orders(nfe - (1 if final_zero else 0), int(sampler_name[-1])) if nfe > final_zero \
            else []
        if not orders:
            raise ValueError(f"NFE budget {nfe} is too small for {sampler_name!r} with a final step to 0")
        opts["orders"] = orders + ([1] if final_zero else [])
        ts = make_grid(grid, process, len(orders), **kw)
        return ts, sum(opts["orders"]), opts
    n, used = _steps_for_budget(sampler_name, e, nfe - restart_nfe, final_zero)
    ts = make_grid(grid, process, n, **kw)
    if len(ts) - 1 - final_zero != n:  # a grid that merged points ("li") runs fewer steps
        used -= int(round((n - (len(ts) - 1 - final_zero)) * e))
    return (ts, used + restart_nfe, opts) if return_opts else (ts, used + restart_nfe)


def run_sampler(model, sampler: str, nfe: int, n: int, *, grid: str | None = None, seed: int = 0,
                options: dict | None = None, shape: tuple[int, ...] | None = None, device: str = "cpu",
                dtype=None, fit_grid: bool = False, grid_file: str | None = None, fit_out: str | None = None,
                fit_kw: dict | None = None):
    """Draw ``n`` samples with ``sampler`` under an NFE budget. Returns (samples, info dict).

    ``fit_grid``: refit the interior grid points to the model's own ODE solution first (``grid_opt``; the report
    is saved to ``fit_out``; ``fit_kw`` go to ``optimize_grid``, e.g. ``n_samples``, ``max_objective``);
    ``grid_file``: use a grid saved by an earlier fit instead of a named grid."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; run `scorelab samplers` for the list")
    info = SAMPLERS[sampler]
    process = model.process
    ts, nfe_used = grid_for_nfe(sampler, process, nfe, grid=grid)
    dtype = dtype or torch.float32
    fit_report = None
    if grid_file:
        ts, nfe_used = grid_from_file(grid_file, info, nfe)
    elif fit_grid:
        ts, fit_report = fit_sampler_grid(model, sampler, ts, grid or info.default_grid, options, shape, dtype, seed,
                                          fit_out, fit_kw)
    g = torch.Generator(device=device).manual_seed(seed)
    x_T = process.prior_sample((n, *shape), generator=g, device=device, dtype=dtype)
    counter = CountingModel(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = info.fn(counter, x_T, ts.to(dtype), generator=g, **(options or {}))
    wall = time.perf_counter() - t0
    return x, {"sampler": sampler, "nfe_requested": nfe, "nfe_planned": nfe_used, "nfe_measured_per_batch":
               counter.nfe, "grid": grid_file or (("fitted:" if fit_grid else "") + (grid or info.default_grid)),
               "n": n, "seed": seed, "wall_s": wall, "options": options or {}, "grid_fit": fit_report}


def grid_from_file(path: str, info, nfe: int):
    """A saved grid (``GridFit.save`` JSON) checked against the NFE budget -> (ts, planned NFE)."""
    try:
        ts = load_grid(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot use --grid-file {path!r}: {e}") from None
    steps = len(ts) - 1
    zero_last = float(ts[-1]) == 0.0 and info.name in SKIP_CORRECTION_AT_ZERO
    planned = int(math.ceil((steps - zero_last) * info.evals_per_step + zero_last))
    if planned > nfe:
        raise ValueError(f"--grid-file {path!r} has {steps} steps, {planned} evaluations with {info.name!r}, "
                       f"over the --nfe budget {nfe}")
    return ts, planned


def fit_sampler_grid(model, sampler, ts, init, options, shape, dtype, seed, fit_out, fit_kw=None):
    """``grid_opt.optimize_grid`` for the budgeted grid ``ts`` (same steps and endpoints); prints the report."""
    try:
        fit = optimize_grid(model, sampler, len(ts) - 1, init=init, sampler_opts=options, sample_shape=shape,
                            dtype=dtype, generator=torch.Generator().manual_seed(10_000 + seed), progress=True,
                            **(fit_kw or {}))
    except ValueError as e:
        raise ValueError(f"--fit-grid: {e}") from None
    if fit_out:
        os.makedirs(os.path.dirname(fit_out) or ".", exist_ok=True)
        fit.save(fit_out)
    print(f"fitted grid: {fit.objective} to the model's ODE solution (held-out x_T) {fit.heldout_init:.3e} -> "
          f"{fit.heldout_fit:.3e}, {fit.model_evals} network evaluations spent fitting"
          + (f"; saved to {fit_out}" if fit_out else ""))
    return fit.ts, {k: v for k, v in fit.to_json().items() if k not in ("history", "ts")}
