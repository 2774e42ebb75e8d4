"""``scorelab finetune sft-pg``: shortcut fine-tuning with policy gradient (``finetune.sft_pg``)."""
from __future__ import annotations

import argparse
import os
import time

from ..finetune.sft_pg import SFTPGConfig
from ..training.experiment import check_run_dir
from .common import config_from_options, parse_options, print_json, set_keys_help, write_run_provenance

EXAMPLES = """\
example:
  scorelab finetune sft-pg --checkpoint runs/ddpm10 --set dataset=swiss_roll n_steps=10 epochs=50

"""


def add_parser(sub) -> None:
    """Add ``scorelab finetune sft-pg`` to the subcommands ``sub``."""
    sp = sub.add_parser("finetune", help="refine a pretrained model without retraining it",
                        description="refine a pretrained model without retraining it")
    fsub = sp.add_subparsers(dest="method", required=True)
    fp = fsub.add_parser("sft-pg", help="shortcut fine-tuning with policy gradient (Fan & Lee 2023, Alg. 1)",
                         description="Fine-tune a few-step sampler of a pretrained model with SFT-PG.",
                         epilog=EXAMPLES + set_keys_help(SFTPGConfig, "--set keys (SFTPGConfig fields):"),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    fp.set_defaults(fn=run)
    fp.add_argument("--checkpoint", required=True, help="pretrained model (checkpoint or run folder)")
    fp.add_argument("--out", help="run folder (default runs/sft_pg)")
    fp.add_argument("--set", action="extend", nargs="*", metavar="KEY=VALUE",
                    help="SFTPGConfig fields, e.g. lam=1 epochs=100")
    fp.add_argument("--resume", action="store_true")
    fp.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    """``scorelab finetune sft-pg`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..finetune.sft_pg import finetune_sft_pg

    if not os.path.exists(args.checkpoint) and not os.path.exists(f"{args.checkpoint}.json"):
        raise ValueError(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = config_from_options(SFTPGConfig, parse_options(args.set))
    out = args.out or os.path.join("runs", "sft_pg")
    check_run_dir(out, resume=args.resume)
    t0 = time.perf_counter()
    res = finetune_sft_pg(cfg, args.checkpoint, out, resume=args.resume, progress=not args.quiet)
    write_run_provenance(args, out, t0, checkpoint=args.checkpoint, sampler=cfg.sampler, grid=cfg.grid, seed=cfg.seed,
                         device=cfg.device)
    print_json(res, drop=("history",))
    print(f"wrote {out}")
    return 0
