"""``scorelab fit-grid``: fit a sampler's grid at one NFE to a checkpoint's own ODE solution and store it with the
model (``io.grids.fit_and_store``); ``scorelab sample`` then uses it for the same (sampler, NFE) by default."""
from __future__ import annotations

import argparse
import json

from .common import add_model_args, add_verb, loaded_model, positive_int

EXAMPLES = """\
examples:
  scorelab fit-grid --checkpoint runs/swissroll_vp --sampler dpm_solver_pp_2m --nfe 5
  scorelab fit-grid --checkpoint runs/swissroll_vp --sampler unipc --nfe 5 --free-end
  scorelab sample --checkpoint runs/swissroll_vp --sampler dpm_solver_pp_2m --nfe 5   # uses the stored grid
"""


def add_parser(sub) -> None:
    """Add ``scorelab fit-grid`` to the subcommands ``sub``."""
    sp = add_verb(sub, "fit-grid", run, "fit a deterministic sampler's grid at one NFE and store it with the model",
                  EXAMPLES)
    add_model_args(sp)
    sp.add_argument("--sampler", required=True)
    sp.add_argument("--nfe", type=positive_int, required=True, help="network-evaluation budget")
    sp.add_argument("--grid", help="the grid the fit starts from (default: the sampler's measured default)")
    sp.add_argument("--fit-reference", choices=["dopri5", "unipc"], default="dopri5",
                    help="the teacher: adaptive dopri5 (rtol 1e-7) or UniPC-3 on 1000 log-SNR steps")
    sp.add_argument("--n-samples", type=positive_int, default=1024, help="x_T of the fit (and as many held out)")
    sp.add_argument("--max-objective", type=positive_int, default=600, help="objective evaluations of the fit")
    sp.add_argument("--free-end", action="store_true",
                    help="end with a step to t = 0 and fit the time before it too (down to the process's t_min; "
                         "the teacher is then the model's full ODE solution)")


def run(args: argparse.Namespace) -> int:
    """``scorelab fit-grid`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..io.grids import fit_and_store

    fit_kw = {"reference": args.fit_reference, "n_samples": args.n_samples, "n_heldout": args.n_samples,
              "max_objective": args.max_objective, "free_end": args.free_end}
    path, record = fit_and_store(loaded_model(args), args.sampler, args.nfe, grid=args.grid, seed=args.seed,
                                 fit_kw=fit_kw, weights="model" if args.no_ema else "ema")
    print(json.dumps({k: record[k] for k in ("sampler", "nfe", "init", "fit")}, indent=2, default=float))
    print(f"wrote {path}; `scorelab sample` uses it for --sampler {args.sampler} --nfe {args.nfe} unless --grid")
    return 0
