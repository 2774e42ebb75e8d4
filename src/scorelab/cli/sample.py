"""``scorelab sample``: any sampler under an NFE budget (``samplers.budget.run_sampler``), optionally guided."""
from __future__ import annotations

import argparse
import json
import os

from .common import CLIError, add_model_args, add_verb, loaded_model, parse_options, positive_int, write_json

EXAMPLES = """\
examples:
  scorelab sample --model gmm:ring8 --sampler dpm_solver_pp_2m --nfe 10
  scorelab sample --checkpoint runs/demo/model --sampler ddpm --nfe 100 --opt variance=large
"""


def add_parser(sub) -> None:
    """Add ``scorelab sample`` to the subcommands ``sub``."""
    sp = add_verb(sub, "sample", run, "draw samples with any sampler under an NFE budget", EXAMPLES)
    add_model_args(sp)
    sp.add_argument("--sampler", required=True, help="a name of `scorelab samplers`, or auto (the best for the NFE)")
    sp.add_argument("--nfe", type=positive_int, required=True, help="network-evaluation budget")
    sp.add_argument("--grid", help="uniform_t|uniform_log_snr|karras|quadratic|li|ddpm_linspace|ddpm_trailing|"
                    "ddpm_leading (default: a grid stored by fit-grid, else the sampler's measured default)")
    sp.add_argument("--fit-grid", action="store_true", help="deterministic samplers: fit the grid's interior points "
                    "to the model's own ODE solution first (starts from --grid; saved as OUT/grid.json)")
    sp.add_argument("--grid-file", help="use a grid saved by --fit-grid (JSON with 'ts') instead of --grid")
    sp.add_argument("--fit-reference", choices=["dopri5", "unipc"], default="dopri5",
                    help="--fit-grid's teacher: adaptive dopri5 (rtol 1e-7) or UniPC-3 on 1000 log-SNR steps")
    sp.add_argument("--n", type=positive_int, default=5000, help="number of samples")
    sp.add_argument("--opt", nargs="*", metavar="KEY=VALUE", help="sampler options, e.g. eta=1.0")
    sp.add_argument("--guidance", help="discriminator:PATH (discriminator guidance) or cfg:LABEL (classifier-free)")
    sp.add_argument("--scale", type=float, default=1.0, help="guidance scale w")
    sp.add_argument("--window", help="guidance time window t_lo,t_hi (default: all times)")
    sp.add_argument("--out")


def run(args: argparse.Namespace) -> int:
    """``scorelab sample`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    import numpy as np

    from ..evaluation.reports import sample_oracle_metrics
    from ..guidance import guidance_from_spec
    from ..io.grids import find_stored_grid
    from ..samplers.budget import run_sampler

    if args.fit_grid and args.grid_file:
        raise CLIError("--fit-grid fits a new grid and --grid-file loads a saved one: give one of them")
    loaded = loaded_model(args)
    model = guidance_from_spec(loaded.model, args.guidance, args.scale, args.window) if args.guidance \
        else loaded.model
    out = args.out or os.path.join("runs", f"sample_{args.sampler}_nfe{args.nfe}")
    stored = None if args.grid or args.grid_file or args.fit_grid else find_stored_grid(loaded, args.sampler, args.nfe)
    if stored:
        print(f"using the grid fit-grid stored for {args.sampler} at NFE {args.nfe}: {stored[0]} (--grid overrides)")
    x, info = run_sampler(model, args.sampler, args.nfe, args.n, grid=args.grid, seed=args.seed,
                          options={**(stored[1] if stored else {}), **parse_options(args.opt)},
                          shape=loaded.event_shape, dtype=loaded.dtype, fit_grid=args.fit_grid,
                          grid_file=args.grid_file or (stored and stored[0]), fit_out=os.path.join(out, "grid.json"),
                          fit_kw={"reference": args.fit_reference})
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "samples.npy"), x.float().cpu().numpy())
    _plot(x, loaded, f"{args.sampler} (NFE {info['nfe_planned']})", os.path.join(out, "samples.png"), args.n)
    if loaded.oracle is not None:
        info.update(sample_oracle_metrics(x, loaded.oracle, seed=args.seed + 1))
    write_json(os.path.join(out, "sample.json"), info)
    print(json.dumps(info, indent=2, default=float))
    print(f"wrote {out}/samples.npy, samples.png, sample.json")
    return 0


def _plot(x, loaded, title: str, path: str, n: int) -> None:
    """Scatter of vectors (with the oracle's exact samples behind them) or a grid of the first 64 images."""
    from .. import plotting

    if len(loaded.event_shape) == 1:
        ref = loaded.oracle.sample(n) if loaded.oracle is not None else None
        plotting.scatter_panels({title: x}, path, reference=ref)
    elif len(loaded.event_shape) == 3:
        plotting.image_grid(x[:64].clamp(-1, 1), path)
