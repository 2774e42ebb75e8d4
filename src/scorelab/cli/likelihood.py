"""``scorelab likelihood``: probability-flow ODE log-likelihood, bits/dim and ELBOs (``evaluation.reports``)."""
from __future__ import annotations

import argparse

from .common import CLIError, add_model_args, add_verb, loaded_model, positive_float, positive_int, print_json


def add_parser(sub) -> None:
    """Add ``scorelab likelihood`` to the subcommands ``sub``."""
    sp = add_verb(sub, "likelihood", run, "probability-flow ODE log-likelihood (nats and bits/dim)")
    add_model_args(sp)
    sp.add_argument("--samples", help="data to evaluate (.npy or data set)")
    sp.add_argument("--n", type=positive_int, default=256)
    sp.add_argument("--divergence", choices=["exact", "hutchinson"], default="exact")
    sp.add_argument("--pixel-scale", type=positive_float, default=2 / 256,
                    help="width of one pixel bin in model space (2/256 for 8-bit data in [-1, 1])")
    sp.add_argument("--rtol", type=positive_float, default=1e-5, help="ODE solver relative tolerance (> 0)")
    sp.add_argument("--atol", type=positive_float, default=1e-5, help="ODE solver absolute tolerance (> 0)")
    sp.add_argument("--elbo", action="store_true",
                    help="also the continuous-time ELBO and, on a discrete:... process, the DDPM ELBO (nats)")
    sp.add_argument("--elbo-samples", type=positive_int, default=16, help="(t, eps) draws per example of the ELBO")
    sp.add_argument("--variances", choices=["beta", "beta_tilde"], default="beta_tilde",
                    help="reverse variances of the DDPM ELBO")


def run(args: argparse.Namespace) -> int:
    """``scorelab likelihood`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    import torch

    from ..evaluation.reports import likelihood_report
    from ..io.loading import load_samples

    loaded = loaded_model(args)
    if args.samples:
        x = load_samples(args.samples, loaded.event_shape)  # trailing shape must be the model's: never reshaped
    elif loaded.oracle is not None:
        x = loaded.oracle.sample(args.n, torch.Generator().manual_seed(args.seed))
    else:
        raise CLIError("give --samples FILE (data to evaluate) for a checkpoint")
    x = x[: args.n].to(loaded.dtype)
    print_json(likelihood_report(loaded.model, x, divergence=args.divergence, rtol=args.rtol, atol=args.atol,
                                 seed=args.seed, pixel_scale=args.pixel_scale, elbo=args.elbo,
                                 elbo_samples=args.elbo_samples, variances=args.variances, oracle=loaded.oracle))
    return 0
