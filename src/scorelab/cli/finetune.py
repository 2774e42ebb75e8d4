"""``scorelab finetune sft-pg``: shortcut fine-tuning with policy gradient (``finetune.sft_pg``); ``scorelab finetune
f-restart``: a learned restart policy trained with the f-policy gradient (``finetune.f_restart``)."""
from __future__ import annotations

import argparse
import os
import time

from ..finetune.f_restart import FRestartConfig
from ..finetune.sft_pg import SFTPGConfig
from ..io.checkpoints import unused_dir
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
    add_f_restart_parser(fsub)


F_RESTART_EXAMPLES = """\
example:
  scorelab finetune f-restart --model gmm:ring8 --set dataset=8gaussians steps=8 nfe_budget=25 iterations=30

"""


def add_f_restart_parser(fsub) -> None:
    """Add ``scorelab finetune f-restart`` to the ``finetune`` methods ``fsub``."""
    fp = fsub.add_parser("f-restart", help="learn when to re-noise (f-Restart: f-policy gradient + PPO, thesis Alg. 7)",
                         description="Train a restart policy (Noise vs. ODE step per grid time) for a pretrained "
                                     "model with the f-policy gradient, a time-conditioned discriminator and PPO.",
                         epilog=F_RESTART_EXAMPLES + set_keys_help(FRestartConfig, "--set keys (FRestartConfig "
                                                                                   "fields):"),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    fp.set_defaults(fn=run_f_restart)
    src = fp.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="pretrained model (checkpoint or run folder)")
    src.add_argument("--model", help="exact oracle instead of a network: gmm:ring8, gmm:grid9, ...")
    fp.add_argument("--process", default="vp", help="forward process of an exact oracle (default vp)")
    fp.add_argument("--out", help="run folder (default runs/f_restart)")
    fp.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="FRestartConfig fields, e.g. f=js steps=8")
    fp.add_argument("--resume", action="store_true")
    fp.add_argument("--quiet", action="store_true")


def run_f_restart(args: argparse.Namespace) -> int:
    """``scorelab finetune f-restart`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..finetune.f_restart import finetune_f_restart

    if args.checkpoint and not os.path.exists(args.checkpoint):
        raise ValueError(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = config_from_options(FRestartConfig, parse_options(args.set))
    out = args.out or str(unused_dir(os.path.join("runs", "f_restart")))
    check_run_dir(out, resume=args.resume)
    t0 = time.perf_counter()
    res = finetune_f_restart(cfg, out, checkpoint=args.checkpoint, oracle=args.model, process=args.process,
                             resume=args.resume, progress=not args.quiet)
    write_run_provenance(args, out, t0, checkpoint=args.checkpoint, model=args.checkpoint or args.model,
                         sampler=cfg.sampler, grid=cfg.grid, seed=cfg.seed, device=cfg.device)
    print_json(res, drop=("history", "config"))
    print(f"wrote {out}")
    return 0


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
