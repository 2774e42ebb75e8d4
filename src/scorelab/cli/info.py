"""``scorelab datasets`` and ``scorelab samplers``: what is built in."""
from __future__ import annotations

import argparse

from .common import add_verb


def add_parser(sub) -> None:
    """Add ``scorelab datasets`` and ``scorelab samplers`` to the subcommands ``sub``."""
    add_verb(sub, "datasets", run, "list the built-in data sets")
    add_verb(sub, "samplers", run, "list every sampler with its order, evaluations per step, default grid and "
             "options, and what auto picks")


def run(args: argparse.Namespace) -> int:
    """``scorelab datasets`` or ``scorelab samplers`` -> exit status."""
    from ..data import describe_datasets
    from ..samplers import SAMPLERS

    if args.command == "datasets":
        print(describe_datasets())
        return 0
    from ..samplers.defaults import describe_auto, describe_rules

    rows = [("name", "order", "evals/step", "stochastic", "default grid by NFE (all processes)", "options",
             "reference")]
    for s in SAMPLERS.values():
        rows.append((s.name, f"{s.order:g}", f"{s.evals_per_step:g}", "yes" if s.stochastic else "no",
                     describe_rules(s.name), ",".join(s.options) or "-",
                     s.reference + (f" [needs input: {s.needs}]" if s.needs else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:6], widths, strict=True)) + "  " + r[6])
    print("\nThe default grid is chosen per process family (discrete, discrete_cosine, vp, edm): docs, Choosing a "
          "sampler.")
    print("auto (--sampler auto): the best sampler on the grid panel per process family and NFE "
          "(docs: Choosing a sampler)")
    print("\n".join("  " + line for line in describe_auto().splitlines()))
    return 0
