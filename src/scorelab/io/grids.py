r"""Fitted grids stored with the model: ``scorelab fit-grid`` writes them, ``scorelab sample`` reuses them.

A grid fitted by ``samplers.grid_opt.optimize_grid`` to a checkpoint's own ODE solution belongs to that checkpoint,
one sampler and one NFE budget.  It is stored next to the checkpoint as

    <checkpoint folder>/grids/<checkpoint stem>.<sampler>.nfe<N>.json

(JSON, written atomically with ``checkpoints.atomic_write_bytes``): ``ts`` (the grid, what ``grid_opt.load_grid``
reads), ``sampler``, ``nfe``, ``nfe_planned``, ``options`` (e.g. DPM-Solver's per-step ``orders``), ``fit`` (the fit's
report: objective, teacher, its value on held-out x_T before and after the fit, network evaluations spent) and
``provenance`` (checkpoint, weights, scorelab version, seed, UTC time).  A later fit for the same (checkpoint,
sampler, NFE) replaces it.

Notation
--------
==============  ====================================================================================================
``stem``        the checkpoint's path without suffix (``LoadedModel.source`` of a loaded checkpoint)
``init``        the grid rule the fit started from (the sampler's measured default at that NFE unless given)
==============  ====================================================================================================
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .._version import __version__
from ..samplers.budget import _check_nfe, fit_sampler_grid, measured_rule, plan, sampler_info
from .checkpoints import atomic_write_bytes, checkpoint_paths
from .loading import LoadedModel


def stored_grid_path(checkpoint: str | Path, sampler: str, nfe: int) -> Path:
    """Where the grid fitted for (``checkpoint``: its stem, ``.json`` or ``.safetensors`` path; ``sampler``, ``nfe``)
    lives."""
    stem = checkpoint_paths(checkpoint)[1].with_suffix("")
    return stem.parent / "grids" / f"{stem.name}.{sampler}.nfe{int(nfe)}.json"


def _check_checkpoint(loaded: LoadedModel) -> Path:
    if loaded.oracle is not None or not checkpoint_paths(loaded.source)[1].exists():
        raise ValueError(f"fitted grids are stored with a checkpoint; {loaded.source!r} is not one (use "
                         "--checkpoint DIR)")
    return checkpoint_paths(loaded.source)[1].with_suffix("")


def fit_and_store(loaded: LoadedModel, sampler: str, nfe: int, *, grid: str | None = None, seed: int = 0,
                  fit_kw: dict | None = None, weights: str = "ema") -> tuple[Path, dict]:
    """Fit ``sampler``'s grid at budget ``nfe`` to the checkpoint's own ODE solution (``budget.fit_sampler_grid``,
    starting from ``grid``, default the measured rule) and store it (module docstring) -> (path, stored JSON).
    ``fit_kw["free_end"]``: the grid ends with a step to t = 0 and the time before it is fitted too
    (``grid_opt.optimize_grid``'s ``free_end``)."""
    stem, nfe = _check_checkpoint(loaded), _check_nfe(nfe)
    info = sampler_info(sampler)
    if info.stochastic or info.adaptive:
        raise ValueError(f"fit-grid fits deterministic fixed-step samplers; {sampler!r} is "
                         f"{'stochastic' if info.stochastic else 'adaptive'}")
    init = grid or measured_rule(sampler, nfe, loaded.model.process)[0]
    free_end = bool((fit_kw or {}).get("free_end"))
    ts, planned, opts = plan(loaded.model, sampler, nfe, grid=grid, final_zero=True if free_end else None)
    ts, report = fit_sampler_grid(loaded.model, sampler, ts, init, opts, loaded.event_shape, loaded.dtype, seed,
                                  None, fit_kw)
    record = {"ts": ts.tolist(), "sampler": sampler, "nfe": nfe, "nfe_planned": planned, "init": init,
              "options": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in opts.items()},
              "fit": report, "provenance": {"checkpoint": str(stem), "weights": weights, "scorelab": __version__,
                                            "seed": seed, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    path = stored_grid_path(stem, sampler, nfe)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(record, indent=1, default=float).encode())
    return path, record


def find_stored_grid(loaded: LoadedModel, sampler: str, nfe: int) -> tuple[str, dict] | None:
    """(path, options) of the grid stored for (this checkpoint, ``sampler``, ``nfe``), or None (no checkpoint, or no
    fit stored).  ``options``: the sampler options the grid was fitted with (DPM-Solver's ``orders``)."""
    if loaded.oracle is not None or sampler == "auto":
        return None
    path = stored_grid_path(loaded.source, sampler, nfe)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or not isinstance(record.get("ts"), list):
        raise ValueError(f"stored grid {path} is not a fit-grid JSON (no 'ts' list); delete it or refit")
    torch.as_tensor(record["ts"], dtype=torch.float64)  # a malformed list fails here, before sampling
    return str(path), dict(record.get("options") or {})


__all__ = ["stored_grid_path", "fit_and_store", "find_stored_grid"]
