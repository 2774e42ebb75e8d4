"""``scorelab bridge``: a Schrödinger bridge between two data sets, or a data set and N(0, I) (``bridge.run``)."""
from __future__ import annotations

import argparse
import os
import time

from ..bridge.runner import BridgeConfig
from .common import (
    add_verb,
    check_out,
    config_from_options,
    finite_float,
    parse_options,
    positive_int,
    print_json,
    seed_int,
    set_keys_help,
    write_run_provenance,
)

EXAMPLES = """\
examples:
  scorelab bridge --source moons --target swiss_roll --reference-variance 0.05 --method dsbm --out runs/bridge
  scorelab bridge --source data.npy --target gauss --reference vp --reference-variance 0.99 --steps 10 --out runs/gen

"""


def add_parser(sub) -> None:
    """Add ``scorelab bridge`` to the subcommands ``sub``."""
    sp = add_verb(sub, "bridge", run, "fit a Schrödinger bridge (DSB or DSBM) between two data sets or data and N(0,I)",
                  EXAMPLES + set_keys_help(BridgeConfig, "--set keys (BridgeConfig fields; the flags win):"))
    sp.add_argument("--source", required=True, help="data-set name, .npy/.csv/.npz file, or 'gauss' for N(0, I)")
    sp.add_argument("--target", required=True, help="as --source")
    sp.add_argument("--reference-variance", type=finite_float, required=True, metavar="S2",
                    help="Var(X_N | X_0) of the reference per coordinate (Brownian: entropic OT at reg 2 S2)")
    sp.add_argument("--reference", choices=["brownian", "vp"], default=None)
    sp.add_argument("--method", choices=["dsb", "dsbm"], default=None)
    sp.add_argument("--iterations", type=positive_int, default=None, help="IPF / IMF iterations")
    sp.add_argument("--steps", type=positive_int, default=None, help="steps N of the chains")
    sp.add_argument("--n", type=positive_int, default=None, help="pairs to write (default: all source points)")
    sp.add_argument("--seed", type=seed_int, default=None)
    sp.add_argument("--set", action="extend", nargs="*", metavar="KEY=VALUE",
                    help="BridgeConfig fields (fit_iterations=..., net=...)")
    sp.add_argument("--out", help="a new or empty folder (default runs/bridge_METHOD, numbered if taken)")


def run(args: argparse.Namespace) -> int:
    """``scorelab bridge`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..bridge.runner import run as run_bridge

    opts = parse_options(args.set)
    flags = {"source": args.source, "target": args.target, "reference_variance": args.reference_variance,
             "reference": args.reference, "method": args.method, "iterations": args.iterations,
             "steps": args.steps, "n": args.n, "seed": args.seed}
    opts.update({k: v for k, v in flags.items() if v is not None})
    cfg = config_from_options(BridgeConfig, opts)
    t0 = time.perf_counter()
    report = run_bridge(cfg, check_out(args.out) if args.out else os.path.join("runs", f"bridge_{cfg.method}"))
    write_run_provenance(args, report["out"], t0, seed=cfg.seed, method=cfg.method, source=cfg.source,
                         target=cfg.target, device="cpu")
    print_json(report, drop=("history", "config"))
    print(f"wrote {report['out']}/pairs.npy, samples_forward.npy, samples_backward.npy, bridge.json, report.json")
    return 0
