"""``scorelab reject``: rejection sampling with a discriminator's density ratio (``guidance.rejection``)."""
from __future__ import annotations

import argparse
import os
import time

from ..guidance.rejection import RejectConfig
from .common import (
    add_verb,
    check_out,
    config_from_options,
    parse_options,
    positive_float,
    positive_int,
    print_json,
    set_keys_help,
    write_run_provenance,
)

EXAMPLES = """\
example:
  scorelab reject --checkpoint runs/digits_unet --discriminator runs/disc/discriminator --method budget --K 2 --n 1000

"""


def add_parser(sub) -> None:
    """Add ``scorelab reject`` to the subcommands ``sub``."""
    sp = add_verb(sub, "reject", run, "rejection sampling with a discriminator's density-ratio estimate",
                  EXAMPLES + set_keys_help(RejectConfig, "--set keys (RejectConfig fields; --n, --method, --K win):"))
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--discriminator", required=True)
    sp.add_argument("--method", choices=["exact", "drs", "budget"], default=None)
    sp.add_argument("--K", type=positive_float, default=None, help="budget: on average K proposals per accepted sample")
    sp.add_argument("--n", type=positive_int, default=None)
    sp.add_argument("--set", action="extend", nargs="*", metavar="KEY=VALUE",
                    help="RejectConfig fields (sampler=..., nfe=...)")
    sp.add_argument("--out")


def run(args: argparse.Namespace) -> int:
    """``scorelab reject`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..guidance.rejection import reject_to_folder
    from ..io.checkpoints import unused_dir

    for path in (args.checkpoint, args.discriminator):
        if not os.path.exists(path) and not os.path.exists(path + ".json"):
            raise ValueError(f"{path!r} does not exist")
    opts = parse_options(args.set)
    opts.update({k: v for k, v in (("n", args.n), ("method", args.method), ("K", args.K)) if v is not None})
    cfg = config_from_options(RejectConfig, opts)
    out = check_out(args.out) if args.out else str(unused_dir(os.path.join("runs", "reject")))
    t0 = time.perf_counter()
    print_json(reject_to_folder(cfg, args.checkpoint, args.discriminator, out))
    write_run_provenance(args, out, t0, checkpoint=args.checkpoint, discriminator=args.discriminator,
                         sampler=getattr(cfg, "sampler", None), seed=getattr(cfg, "seed", None))
    return 0
