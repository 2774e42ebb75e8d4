"""``scorelab guidance train-discriminator``: a discriminator for discriminator guidance (Kim et al. 2023) trained
with J_CE, J_MSE or J_MSE + gamma J_CE (``guidance.discriminator.train_discriminator_for_model``).

``TrainDiscriminatorOptions`` are the verb's ``--set`` keys: where the data and the pretrained model's samples come
from, the head, and ``train`` (a ``DiscriminatorConfig``, set as ``train.FIELD=...``).
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..guidance.discriminator import DiscriminatorConfig
from .common import config_from_options, finite_float, parse_options, print_json, set_keys_help, write_run_provenance

EXAMPLES = """\
example:
  scorelab guidance train-discriminator --checkpoint runs/digits_unet --data digits --objective mse+ce --gamma 0.1
  then: scorelab sample --checkpoint runs/digits_unet --sampler heun --nfe 35 \\
          --guidance discriminator:runs/discriminator_mse_ce/discriminator --scale 1

"""


@dataclass(frozen=True)
class TrainDiscriminatorOptions:
    """data (registry name or path, as ``data.load_dataset``, with ``data_n``/``data_seed``/``data_params``), how
    the pretrained model's samples are drawn (``n_generated``, ``sampler``, ``nfe``, ``grid``, ``sample_seed``,
    ``sample_batch``), the discriminator head (``head`` kwargs, ``time_input``), the model's ``weights`` and
    ``train``."""

    data: str = "digits"
    data_n: int | None = None
    data_seed: int = 0
    data_params: dict = field(default_factory=dict)
    n_generated: int = 2000
    sampler: str = "heun"
    nfe: int = 50
    grid: str | None = None
    sample_seed: int = 0
    sample_batch: int = 1000
    head: dict = field(default_factory=dict)
    time_input: str | None = None
    weights: str = "ema"
    train: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    progress: bool = True

    def with_train(self, **kw: Any) -> TrainDiscriminatorOptions:
        """Copy with ``train`` fields replaced (e.g. ``objective="mse+ce", gamma=0.1``)."""
        return replace(self, train=replace(self.train, **kw))


def add_parser(sub) -> None:
    """Add ``scorelab guidance train-discriminator`` to the subcommands ``sub``."""
    sp = sub.add_parser("guidance", help="train guidance networks (discriminator guidance)",
                        description="train guidance networks (discriminator guidance)")
    gsub = sp.add_subparsers(dest="what", required=True)
    gp = gsub.add_parser("train-discriminator", help="train a time-conditioned discriminator for a pretrained model",
                         description="Discriminator guidance (Kim et al. 2023) trained with J_CE, J_MSE or "
                         "J_MSE + gamma J_CE (the thesis' objective).",
                         epilog=EXAMPLES + set_keys_help(TrainDiscriminatorOptions, "--set keys (--data, --objective "
                                                         "and --gamma set data, train.objective, train.gamma):"),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    gp.set_defaults(fn=run)
    gp.add_argument("--checkpoint", required=True, help="pretrained model (checkpoint or run folder)")
    gp.add_argument("--data", default="digits", help="real data: data set name or path")
    gp.add_argument("--objective", choices=["ce", "mse", "mse+ce"], default="mse+ce")
    gp.add_argument("--gamma", type=finite_float, default=1.0, help="weight of J_CE in J_MSE + gamma J_CE")
    gp.add_argument("--set", action="extend", nargs="*", metavar="KEY=VALUE",
                    help="the keys listed below, e.g. n_generated=4000 train.steps=500")
    gp.add_argument("--out")
    gp.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    """``scorelab guidance train-discriminator`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    if not os.path.exists(args.checkpoint) and not os.path.exists(f"{args.checkpoint}.json"):
        raise ValueError(f"checkpoint {args.checkpoint!r} does not exist")
    opts = parse_options(args.set)
    train_opts = {k[len("train."):]: v for k, v in opts.items() if k.startswith("train.")}
    top_opts = {k: v for k, v in opts.items() if not k.startswith("train.")}
    train_opts.setdefault("objective", args.objective)
    train_opts.setdefault("gamma", args.gamma)
    tcfg = config_from_options(DiscriminatorConfig, train_opts)
    quiet = {"progress": False} if args.quiet else {}
    options = config_from_options(TrainDiscriminatorOptions, {"data": args.data, **top_opts}, train=tcfg, **quiet)
    out = args.out or os.path.join("runs", f"discriminator_{tcfg.objective.replace('+', '_')}")
    t0 = time.perf_counter()
    print_json(train_discriminator_from_options(options, args.checkpoint, out), drop=("history",))
    write_run_provenance(args, out, t0, checkpoint=args.checkpoint, sampler=options.sampler, grid=options.grid,
                         seed=options.sample_seed, data=options.data)
    print(f"wrote {out}/discriminator.safetensors, discriminator.json, train_discriminator.json")
    return 0


def train_discriminator_from_options(options: TrainDiscriminatorOptions, checkpoint: str | Path,
                                     out_dir: str | Path) -> dict[str, Any]:
    """Load the pretrained model and the data the options name, then ``train_discriminator_for_model``."""
    from ..data import load_dataset
    from ..guidance.discriminator import train_discriminator_for_model
    from ..io.loading import load_checkpoint_model

    model = load_checkpoint_model(checkpoint, weights=options.weights).model
    x_real, _ = load_dataset(options.data, n=options.data_n, seed=options.data_seed, **options.data_params)
    o = options
    return train_discriminator_for_model(
        model, x_real, out_dir, o.train, n_generated=o.n_generated, sampler=o.sampler, nfe=o.nfe, grid=o.grid,
        sample_seed=o.sample_seed, sample_batch=o.sample_batch, head=o.head, time_input=o.time_input,
        progress=o.progress, provenance={"checkpoint": str(checkpoint), "data": o.data, "data_n": o.data_n,
                                         "data_seed": o.data_seed, "data_params": o.data_params,
                                         "weights": o.weights})
