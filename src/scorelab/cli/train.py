"""``scorelab train``: a YAML experiment (``training.experiment``), optionally under ``torchrun``."""
from __future__ import annotations

import argparse
import time

from ..training.experiment import ExperimentConfig
from .common import add_verb, parse_options, print_json, set_keys_help, write_run_provenance

EXAMPLES = """\
example:
  scorelab train --config configs/swissroll_vp.yaml --set train.steps=2000
  torchrun --nproc_per_node=2 -m scorelab.cli train --config configs/swissroll_vp.yaml   # data-parallel

"""


def add_parser(sub) -> None:
    """Add ``scorelab train`` to the subcommands ``sub``."""
    sp = add_verb(sub, "train", run, "train a score model from a YAML config",
                  EXAMPLES + set_keys_help(ExperimentConfig, "--set keys (defaults where the config gives none):"))
    sp.add_argument("--config", required=True)
    sp.add_argument("--out", help="run directory (default: run_dir from the config)")
    sp.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint that "
                    "verifies (its sha256); the folder must exist")
    sp.add_argument("--overwrite", action="store_true", help="the run folder holds an earlier run: move it aside to "
                    "OUT.old (never deleted) and start a new one")
    sp.add_argument("--set", action="extend", nargs="*", metavar="SECTION.KEY=VALUE",
                    help="override config entries (listed below)")
    sp.add_argument("--quiet", action="store_true")
    sp.add_argument("--device", help="training device (cpu, cuda, cuda:1, mps; under torchrun cuda = cuda:LOCAL_RANK); "
                    "same as --set train.device=...")


def run(args: argparse.Namespace) -> int:
    """``scorelab train`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..training.experiment import launch_training, load_experiment

    overrides = parse_options(args.set)
    if args.device:
        overrides["train.device"] = args.device
    exp = load_experiment(args.config, overrides=overrides)
    t0 = time.perf_counter()
    out = args.out or exp.run_dir
    result = launch_training(exp, out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    if result is not None:  # rank 0 (or no torchrun) reports
        write_run_provenance(args, out, t0, seed=exp.train.seed, device=exp.train.device,
                             checkpoint=result["checkpoint"], data=exp.data.name, steps=result["step"])
        print_json(result, drop=("model",))
    return 0
