r"""The one place that turns (model, sampler, NFE budget, n, batch size, device, dtype, seed) into samples.

``sample`` draws ``n`` samples in batches under a budget of network evaluations (NFE) and reports the NFE it planned
and the NFE it measured (``CountingModel``).  The NFE arithmetic is owned by each sampler's ``SamplerInfo``
(``base.py``): evaluations per step under the run's options, the cheaper final step into t = 0
(``skip_correction_at_zero``), evaluations outside the grid (restart's loops, ``extra_nfe_of``) and mixed orders
that spend a budget exactly (``mixed_orders``, DPM-Solver, Lu et al. 2022, sec. 3.4).  ``grid_for_nfe`` spends a
budget on a named grid; ``grid_from_file`` and explicit grids are checked against it with the same arithmetic.
Bad input raises ``ValueError``; only ``cli`` knows about exit codes.

Notation
--------
==============  ==================================================================================================
``nfe``         the budget: at most this many network evaluations per sample path (per batch)
``e``, ``e_0``  evaluations of one grid step, and of a final step into t = 0 (``SamplerInfo.evals*``)
``steps``       grid steps, the last one into t = 0 when ``final_zero``; planned NFE = (steps - 1) e + e_0 + extra
``x_T``         prior draws ``[n, *shape]`` (``process.prior_sample``), drawn once for all batches
==============  ==================================================================================================
"""
from __future__ import annotations

import os
import time

import torch

from .._utils import available_memory_bytes, suggest
from .._utils import progress as tqdm
from ..core.denoisers import CountingModel, DiffusionModel
from ..core.processes import ForwardProcess
from ..core.schedules import dpm_solver_orders, make_grid
from .base import SAMPLERS, SamplerInfo, check_grid
from .defaults import default_rule, recommend
from .grid_opt import load_grid, optimize_grid


# -- NFE arithmetic ----------------------------------------------------------------------------------------------
def sampler_info(name: str) -> SamplerInfo:
    """``SAMPLERS[name]``, or ``ValueError`` naming the registered samplers."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}{suggest(name, SAMPLERS)}")
    return SAMPLERS[name]


def _check_nfe(nfe) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, (int, float)) or int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    return int(nfe)


def _mixed_orders(info: SamplerInfo, nfe: int, final_zero: bool, opts: dict) -> list[int]:
    """Per-step orders (<= ``info.mixed_orders``) spending exactly ``nfe`` (a final step into 0 costs 1)."""
    avail = nfe - info.extra_nfe(**opts) - int(final_zero)
    if avail < 1:
        raise ValueError(f"NFE budget {nfe} is too small for {info.name!r}"
                         f"{' with a final step to 0' if final_zero else ''}")
    return dpm_solver_orders(avail, info.mixed_orders) + ([1] if final_zero else [])


def planned_nfe_for_grid(info: SamplerInfo, ts: torch.Tensor, options: dict | None = None) -> int:
    """NFE a run of ``info`` over the explicit grid ``ts`` ``[steps+1]`` plans (a final time 0 is a step into t = 0);
    with DPM-Solver's per-step ``orders`` the sum of the orders (the step into 0 costs 1)."""
    opts = dict(options or {})
    steps, final_zero = int(ts.shape[0]) - 1, bool(torch.all(torch.as_tensor(ts)[-1] == 0))
    orders = opts.get("orders") if info.mixed_orders else None
    if orders is not None:
        if len(orders) != steps:
            raise ValueError(f"orders must list {steps} values (one per grid step), got {list(orders)}")
        return sum(int(k) for k in orders[:-1]) + (1 if final_zero else int(orders[-1])) + info.extra_nfe(**opts)
    return info.planned_nfe(steps, final_zero, **opts)


def grid_for_nfe(sampler_name: str, process: ForwardProcess, nfe: int, grid: str | None = None, *,
                 return_opts: bool = False, options: dict | None = None, **kw):
    """Grid for ``sampler_name`` that spends at most ``nfe`` network evaluations; ``grid`` None: the sampler's measured
    default rule at this budget (``defaults.default_rule``: grid name and, unless ``final_zero`` is given, whether to
    end with a step to t = 0).

    Returns ``(ts, nfe_used)``, or ``(ts, nfe_used, opts)`` with ``return_opts=True``, where ``opts`` are sampler
    options needed to realise the budget: for samplers with ``mixed_orders`` (``dpm_solver_2/3``) they are the mixed
    per-step ``orders`` of Lu et al. 2022 (sec. 3.4) that spend the budget exactly, and the options the budget
    sets when not given (``SamplerInfo.with_budget_options``: restart's K); without ``return_opts`` these
    samplers run their fixed order and the grid uses whole steps only.  ``options``: the run's sampler options (they
    change the count, e.g. PC's ``n_corrector``); sampler options given in ``kw`` (restart's ``K``, ``n_restart``)
    count too.  The other ``kw`` go to ``make_grid`` (t_max, t_min, final_zero, rho, ...)."""
    info, nfe = sampler_info(sampler_name), _check_nfe(nfe)
    opts = info.check_options(dict(options or {}))
    opts.update({k: kw.pop(k) for k in [k for k in kw if k in info.options]})
    given = info.check_options(opts)
    opts = info.with_budget_options(nfe, given)
    chosen = {k: v for k, v in opts.items() if k not in given}  # set by the budget (restart's K)
    if grid is None:  # the measured default rule (``defaults.default_rule``)
        grid, fz = measured_rule(sampler_name, nfe, process, opts)
        kw.setdefault("final_zero", fz)
    final_zero = bool(kw.get("final_zero", False))
    if info.mixed_orders and opts.get("orders") is not None:
        raise ValueError(f"the budget chooses {sampler_name!r}'s per-step orders; drop the option 'orders' (or "
                         "give an explicit grid with one order per step)")
    if return_opts and info.mixed_orders:
        orders = _mixed_orders(info, nfe, final_zero, opts)
        ts = make_grid(grid, process, len(orders) - int(final_zero), **kw)
        if len(ts) - 1 != len(orders):  # a grid that merged points ("li") cannot carry the mixed orders
            raise ValueError(f"grid {grid!r} has {len(ts) - 1} steps on this process, not the {len(orders)} that "
                             f"{sampler_name!r}'s mixed orders need for NFE {nfe}; name another grid")
        return ts, sum(orders) + info.extra_nfe(**opts), {**chosen, "orders": orders}
    steps, used = info.steps_for_nfe(nfe, final_zero, **opts)
    ts = make_grid(grid, process, steps - int(final_zero), **kw)
    if len(ts) - 1 != steps:  # a grid that merged points ("li") runs fewer steps
        used = info.planned_nfe(len(ts) - 1, final_zero, **opts)
    return (ts, used, chosen) if return_opts else (ts, used)


def measured_rule(sampler: str, nfe: int, process: ForwardProcess, options: dict | None = None) -> tuple[str, bool]:
    """(grid, final_zero) a run without a named grid uses: ``defaults.default_rule`` for the process's family, or,
    when that grid cannot spend this budget on this process (a ``ddpm_*`` grid with more points than a short chain
    has steps, an ``li`` grid that merged points under mixed orders), the sampler's registered ``default_grid`` ending
    at t_min; ``sample``'s info reports the grid used."""
    grid, final_zero = default_rule(sampler, nfe, process)
    try:
        grid_for_nfe(sampler, process, nfe, grid, return_opts=True, options=options, final_zero=final_zero)
    except ValueError:
        return sampler_info(sampler).default_grid, False
    return grid, final_zero


def grid_from_file(path: str, info: SamplerInfo, nfe: int, options: dict | None = None):
    """A saved grid (``GridFit.save`` JSON) checked against the NFE budget -> (ts, planned NFE)."""
    try:
        ts = load_grid(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot use --grid-file {path!r}: {e}") from None
    planned = planned_nfe_for_grid(info, ts, options)
    if planned > nfe:
        raise ValueError(f"--grid-file {path!r} has {len(ts) - 1} steps, {planned} evaluations with {info.name!r}, "
                         f"over the --nfe budget {nfe}")
    return ts, planned


# -- memory ------------------------------------------------------------------------------------------------------
#: bytes of per-grid-step tables (the float64 grid, ``GridCoefs`` and the loop's lists) budgeted per step
GRID_BYTES_PER_STEP = 256
#: working copies of one batch a sampler holds at once (x, x0_hat, mean, noise, multistep history)
WORKING_COPIES = 8


def default_batch_size(shape: tuple[int, ...]) -> int:
    """Samples per batch when none is given: about 2^20 numbers per batch (2-D data: one batch of up to 524,288;
    3x32x32 images: 341), so network activations of image models stay small."""
    d = 1
    for k in shape:
        d *= int(k)
    return max(1, (1 << 20) // d)


def sample_memory_bytes(n: int, shape: tuple[int, ...], batch_size: int, nfe: int,
                        dtype: torch.dtype = torch.float32) -> int:
    """Bytes ``sample`` holds at once: all prior draws and all samples (2 n d), ``WORKING_COPIES`` batches and the
    grid tables (at most ``nfe`` steps).  Network activations come on top (they scale with ``batch_size``)."""
    d = 1
    for k in shape:
        d *= int(k)
    item = torch.empty((), dtype=dtype).element_size()
    return (2 * n + WORKING_COPIES * min(batch_size, n)) * d * item + (int(nfe) + 1) * GRID_BYTES_PER_STEP


def check_memory(n: int, shape: tuple[int, ...], batch_size: int, nfe: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", available: int | None = None) -> int:
    """``sample_memory_bytes`` if it fits in the free memory of ``device`` (``available`` bytes when given), else
    ``ValueError`` naming n, the shape, the NFE and both sizes, before anything is allocated."""
    need = sample_memory_bytes(n, shape, batch_size, nfe, dtype)
    free = available if available is not None else available_memory_bytes(device)
    if free is not None and need > free:
        raise ValueError(f"sampling n={n} samples of shape {tuple(shape)} with nfe={nfe} (batch size "
                         f"{min(batch_size, n)}, {dtype}) needs about {need / 2**30:.3g} GiB, more than the "
                         f"{free / 2**30:.3g} GiB free on {device}; lower --n, --nfe or --batch-size")
    return need


# -- sampling ----------------------------------------------------------------------------------------------------
def _check_sample_args(model, n, shape, batch_size) -> tuple[int, tuple[int, ...], int]:
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"model must be a DiffusionModel, got {type(model).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of samples) must be an integer >= 1, got {n!r}")
    if shape is None or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in shape):
        raise ValueError(f"shape must be the shape of one sample, a tuple of positive integers, got {shape!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be None (one batch) or an integer >= 1, got {batch_size!r}")
    return n, tuple(shape), n if batch_size is None else min(batch_size, n)


def plan(model: DiffusionModel, sampler: str, nfe: int, *, grid: str | torch.Tensor | None = None,
         options: dict | None = None, final_zero: bool | None = None,
         grid_kw: dict | None = None) -> tuple[torch.Tensor, int, dict]:
    """(grid ``ts`` float64 ``[steps+1]``, planned NFE, sampler options) of a budgeted run.

    ``grid``: a ``make_grid`` name (None: the sampler's measured default rule at this budget,
    ``defaults.default_rule``, whose ``final_zero`` applies unless given), spent by ``grid_for_nfe`` (mixed
    DPM-Solver orders fill the budget exactly), or an explicit grid, checked against the budget.  ``final_zero``
    None: the default rule's with ``grid`` None, else False."""
    info, nfe = sampler_info(sampler), _check_nfe(nfe)
    opts = info.with_budget_options(nfe, info.check_options(dict(options or {})))
    if grid is None or isinstance(grid, str):
        if grid is None:
            grid, fz = measured_rule(sampler, nfe, model.process, opts)
            final_zero = fz if final_zero is None else final_zero
        kw = {"final_zero": bool(final_zero), **(grid_kw or {})}
        ts, used, extra = grid_for_nfe(sampler, model.process, nfe, grid, return_opts=True, options=opts, **kw)
        return ts, used, {**opts, **extra}
    if info.adaptive:
        raise ValueError(f"sampler {sampler!r} is adaptive (no fixed evaluations per step); its NFE is measured "
                         "after the run, not budgeted")
    ts = check_grid(torch.as_tensor(grid, dtype=torch.float64), model.process)
    if ts.ndim != 1:
        raise ValueError(f"an explicit grid for sample() must be 1-D [steps+1], got shape {tuple(ts.shape)}")
    used = planned_nfe_for_grid(info, ts, opts)
    if used > nfe:
        raise ValueError(f"the grid has {len(ts) - 1} steps, {used} evaluations with {sampler!r}, over the NFE "
                         f"budget {nfe}")
    return ts, used, opts


def sample(model: DiffusionModel, sampler: str, nfe: int, n: int, *, shape: tuple[int, ...],
           batch_size: int | None = None, grid: str | torch.Tensor | None = None, options: dict | None = None,
           seed: int = 0, generator: torch.Generator | None = None, device: str | torch.device = "cpu",
           dtype: torch.dtype = torch.float32, final_zero: bool | None = None, grid_kw: dict | None = None,
           progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Draw ``n`` samples ``[n, *shape]`` of ``model`` with the registered ``sampler`` under a budget of ``nfe``
    network evaluations per sample path.  Returns ``(samples, info)``.

    ``sampler="auto"``: ``defaults.recommend(model.process, nfe)`` picks the sampler and its grid rule (reported as
    ``info["auto"]``).  Grid: ``plan`` (``grid`` a ``make_grid`` name, default the sampler's measured rule at this
    budget, with ``final_zero`` and ``grid_kw``; or an explicit 1-D grid).  Seeds and batches: with ``generator``
    None a generator on ``device`` is seeded with ``seed``.  All ``n`` prior draws x_T are taken first, in one call,
    so x_T does not depend on ``batch_size``; then the batches of ``batch_size`` (None: one batch) run in order,
    each drawing its sampler noise from the same generator.  A deterministic sampler therefore returns the same
    samples for any ``batch_size``; a stochastic one is reproducible for a fixed (seed, batch_size).  NFE is
    measured per batch (``CountingModel``).

    ``info``: sampler, nfe_requested, nfe_planned, nfe_measured_per_batch (an int when every batch measured the
    same), grid (its name or "explicit"), steps, n, batch_size, n_batches, seed, wall_s, options (as run,
    including budget-chosen ones such as DPM-Solver's ``orders``), nonfinite_rows (samples with a NaN/inf
    entry: a diverged model or sampler; callers decide whether to keep them).  Raises ``ValueError`` on bad
    input: unknown sampler or option, budget too small for the sampler, n < 1, bad shape or batch size, bad grid, a
    run that would not fit in memory (``check_memory``, before anything is allocated)."""
    n, shape, b = _check_sample_args(model, n, shape, batch_size)
    sampler, auto = resolve_auto(model, sampler, nfe, grid)
    info = sampler_info(sampler)
    check_memory(n, shape, b, _check_nfe(nfe), dtype, device)
    if grid is None:
        grid, fz = measured_rule(sampler, nfe, model.process, options)
        final_zero = fz if final_zero is None else final_zero
    ts, planned, opts = plan(model, sampler, nfe, grid=grid, options=options, final_zero=final_zero,
                             grid_kw=grid_kw)
    g = generator if generator is not None else torch.Generator(device=device).manual_seed(int(seed))
    x_T = model.process.prior_sample((n, *shape), generator=g, device=device, dtype=dtype)
    counter, out, measured = CountingModel(model), [], []
    t_grid, t0 = ts.to(dtype), time.perf_counter()
    with torch.no_grad():
        for i in tqdm(range(0, n, b), disable=not progress, desc=f"sample[{sampler}]", leave=False):
            counter.reset()
            out.append(info.fn(counter, x_T[i:i + b], t_grid, generator=g, **opts))
            measured.append(counter.nfe)
    x = torch.cat(out) if len(out) > 1 else out[0]
    bad = int((~torch.isfinite(x.reshape(n, -1))).any(dim=1).sum())
    return x, {"sampler": sampler, "nfe_requested": int(nfe), "nfe_planned": planned,
               "nfe_measured_per_batch": measured[0] if len(set(measured)) == 1 else measured,
               "grid": grid if isinstance(grid, str) else "explicit", "final_zero": bool(ts[-1] == 0),
               "steps": len(ts) - 1, "n": n, "batch_size": b, "n_batches": len(out),
               "seed": None if generator is not None else int(seed), "wall_s": time.perf_counter() - t0,
               "options": opts, "nonfinite_rows": bad, **({"auto": auto} if auto else {})}


def resolve_auto(model: DiffusionModel, sampler: str, nfe: int, grid=None) -> tuple[str, dict | None]:
    """``sampler`` itself, or for "auto" the sampler ``defaults.recommend`` picks for ``model.process`` and ``nfe``
    -> (sampler name, the recommendation or None).  "auto" with an explicit ``grid`` is a ``ValueError``: the
    recommendation is a (sampler, grid) pair."""
    if sampler != "auto":
        return sampler, None
    if grid is not None and not isinstance(grid, str):
        raise ValueError("--sampler auto picks the grid too; drop the explicit grid or name a sampler")
    rec = recommend(model.process, _check_nfe(nfe))
    return rec["sampler"], rec


def run_sampler(model, sampler: str, nfe: int, n: int, *, grid: str | None = None, seed: int = 0,
                options: dict | None = None, shape: tuple[int, ...] | None = None, device: str = "cpu",
                dtype=None, fit_grid: bool = False, grid_file: str | None = None, fit_out: str | None = None,
                fit_kw: dict | None = None, batch_size: int | None = None):
    """``sample`` with the CLI's grid choices: ``fit_grid`` refits the interior grid points to the model's own ODE
    solution first (``grid_opt``; the report is saved to ``fit_out``; ``fit_kw`` go to ``optimize_grid``, e.g.
    ``n_samples``, ``max_objective``); ``grid_file`` uses a grid saved by an earlier fit instead of a named grid.
    ``sampler="auto"``: ``resolve_auto`` first.  Returns (samples, info dict with ``grid_fit``: the fit's report or
    None)."""
    sampler, auto = resolve_auto(model, sampler, nfe, grid)
    info, dtype = sampler_info(sampler), dtype or torch.float32
    n, shape, b = _check_sample_args(model, n, shape, batch_size)
    check_memory(n, shape, b, _check_nfe(nfe), dtype, device)
    ts, fit_report, opts = grid, None, dict(options or {})
    if grid_file:
        ts, _ = grid_from_file(grid_file, info, _check_nfe(nfe), opts)
    elif fit_grid:
        ts, _, opts = plan(model, sampler, nfe, grid=grid, options=opts)
        init = grid or measured_rule(sampler, nfe, model.process, opts)[0]
        ts, fit_report = fit_sampler_grid(model, sampler, ts, init, opts, shape, dtype, seed, fit_out, fit_kw)
    x, out = sample(model, sampler, nfe, n, shape=shape, batch_size=batch_size, grid=ts, options=opts, seed=seed,
                    device=device, dtype=dtype)
    if grid_file or fit_grid:
        out["grid"] = grid_file or "fitted:" + (grid or measured_rule(sampler, nfe, model.process, opts)[0])
    return x, {**out, "grid_fit": fit_report, **({"auto": auto} if auto else {})}


def fit_sampler_grid(model, sampler, ts, init, options, shape, dtype, seed, fit_out, fit_kw=None):
    """``grid_opt.optimize_grid`` for the budgeted grid ``ts`` (same steps and endpoints); prints the report."""
    try:
        fz = bool(ts[-1] == 0)
        fit = optimize_grid(model, sampler, len(ts) - 1 - fz, init=init, final_zero=fz, sampler_opts=options,
                            sample_shape=shape,
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


__all__ = ["sample", "plan", "check_memory", "sample_memory_bytes", "default_batch_size", "run_sampler",
           "resolve_auto", "recommend", "measured_rule", "grid_for_nfe", "grid_from_file", "planned_nfe_for_grid",
           "fit_sampler_grid", "sampler_info"]
