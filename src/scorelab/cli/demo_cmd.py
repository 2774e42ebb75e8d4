"""``scorelab demo``: the main job on built-in data (``cli.demo.run_demo``); ``--full`` runs the full sweep."""
from __future__ import annotations

import argparse
import time

from .common import add_verb, write_run_provenance


def add_parser(sub) -> None:
    """Add ``scorelab demo`` to the subcommands ``sub``."""
    sp = add_verb(sub, "demo", run, "the main job on built-in data: train on the swiss roll, sample, report")
    sp.add_argument("--out", help="output folder (default: runs/demo, or runs/demo-2, ... when that is taken)")
    sp.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    sp.add_argument("--full", action="store_true", help="the full sweep: every sampler at every budget")


def run(args: argparse.Namespace) -> int:
    """``scorelab demo`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..io.checkpoints import unused_dir
    from .demo import run_demo

    out, t0 = args.out or str(unused_dir("runs/demo")), time.perf_counter()
    run_demo(out, quick=args.quick, full=args.full)
    write_run_provenance(args, out, t0, seed=0, device="cpu")
    return 0
