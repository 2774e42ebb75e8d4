"""``scorelab density``: a diffusion sampler for an unnormalized density and its log Z (``densities.run``)."""
from __future__ import annotations

import argparse
import os
import time

from .common import (
    add_verb,
    check_out,
    finite_float,
    parse_options,
    positive_float,
    positive_int,
    print_json,
    seed_int,
    write_run_provenance,
)

EXAMPLES = """\
examples:
  scorelab density --target gmm9 --method dis --loss lv --steps 100
  scorelab density --target mypkg.mod:log_rho --dim 4 --method pis --loss kl
  scorelab density --target my_density:log_rho --dim 2 --log-z 2.531   # my_density.py in the current directory
  scorelab density --target funnel --method dds --loss kl --eval-samples 2000 --eval-repeats 4   # |dlog Z| at K = 2000
  scorelab density --target lgcp --method pis --loss kl --steps 50 --batch 64 --time-limit 300
"""


def add_parser(sub) -> None:
    """Add ``scorelab density`` to the subcommands ``sub``."""
    sp = add_verb(sub, "density", run, "train a diffusion sampler for an unnormalized density and estimate log Z",
                  EXAMPLES)
    sp.add_argument("--target", required=True,
                    help="a built-in target (gmm9, gmm40, funnel, dw, dw554, dw2053, manywell, gauss, lgcp, lgcp_dds, "
                         "logreg_bc) or module:function (the module is looked up in the current directory first)")
    sp.add_argument("--method", choices=["dis", "pis", "dds"], default="dis")
    sp.add_argument("--loss", choices=["kl", "lv", "kl_adjoint"], default="lv",
                    help="kl: backprop through the Euler-Maruyama chain; lv: log-variance; kl_adjoint: KL with the "
                         "stochastic adjoint of torchsde (pis)")
    sp.add_argument("--steps", type=positive_int, default=200,
                    help="SDE discretisation steps (at 100 even the optimal control caps GMM-9 ESS near 0.87)")
    sp.add_argument("--iterations", type=positive_int, default=2000)
    sp.add_argument("--batch", type=positive_int, default=512)
    sp.add_argument("--dim", type=positive_int, default=None,
                    help="dimension of a user target (checked: the function is called on [8, DIM] inputs, and against "
                         "its attribute fn.dim if it has one)")
    sp.add_argument("--log-z", type=finite_float, default=None, metavar="VALUE",
                    help="known log Z of the target: the report then shows |dlog Z| of the estimates against it")
    sp.add_argument("--lr", type=positive_float, default=5e-3)
    sp.add_argument("--time-limit", type=positive_float, default=None, help="cap on training wall time (s)")
    sp.add_argument("--opt", action="extend", nargs="*", metavar="KEY=VALUE",
                    help="sampler options, e.g. sigma=3 (PIS/DDS)")
    sp.add_argument("--hidden", type=positive_int, default=64, help="control network width")
    sp.add_argument("--layers", type=positive_int, default=2, help="control network depth")
    sp.add_argument("--mc-pretrain", type=int, default=0, metavar="ROUNDS",
                    help="DIS only: warm start by regressing the control onto Monte-Carlo estimates of the noised "
                         "target's score (pretrain_mc_score), this many rounds, before the loss")
    sp.add_argument("--eval-samples", type=positive_int, default=4096, metavar="N",
                    help="paths per evaluation (one importance-sampling estimate of log Z)")
    sp.add_argument("--eval-repeats", type=positive_int, default=1, metavar="R",
                    help="independent evaluations: R > 1 adds the spread of one estimate (log_Z_hat_sd), the pooled "
                         "estimates over R x N paths and, with a known log Z, the mean error of one (dlogZ_is_mean)")
    sp.add_argument("--seed", type=seed_int, default=0)
    sp.add_argument("--out")


def run(args: argparse.Namespace) -> int:
    """``scorelab density`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..densities import DensityConfig
    from ..densities import run as run_density
    from ..io.checkpoints import unused_dir

    cfg = DensityConfig(target=args.target, method=args.method, loss=args.loss, steps=args.steps,
                        iterations=args.iterations, batch=args.batch, seed=args.seed, dim=args.dim, lr=args.lr,
                        time_limit=args.time_limit, method_kwargs=parse_options(args.opt), hidden=args.hidden,
                        layers=args.layers, mc_pretrain_rounds=args.mc_pretrain, log_z=args.log_z,
                        eval_samples=args.eval_samples, eval_repeats=args.eval_repeats)
    name = args.target.replace(":", "_").replace("/", "_")
    out = check_out(args.out) if args.out else str(unused_dir(os.path.join("runs", f"density_{name}_{args.method}_"
                                                                                    f"{args.loss}")))
    t0 = time.perf_counter()
    print_json(run_density(cfg, out))
    write_run_provenance(args, out, t0, seed=args.seed, target=args.target, method=args.method, loss=args.loss)
    print(f"wrote {out}/samples.npy, samples.safetensors, samples.png, report.json, provenance.json")
    return 0
