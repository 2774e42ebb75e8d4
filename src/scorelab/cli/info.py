"""``scorelab datasets`` and ``scorelab samplers``: what is built in."""
from __future__ import annotations

import argparse

from .common import add_verb


def add_parser(sub) -> None:
    """Add ``scorelab datasets`` and ``scorelab samplers`` to the subcommands ``sub``."""
    add_verb(sub, "datasets", run, "list the built-in data sets")
    add_verb(sub, "samplers", run, "list every sampler with its order, evaluations per step and options")


def run(args: argparse.Namespace) -> int:
    """``scorelab datasets`` or ``scorelab samplers`` -> exit status."""
    from ..data import describe_datasets
    from ..samplers import SAMPLERS

    if args.command == "datasets":
        print(describe_datasets())
        return 0
    rows = [("name", "order", "evals/step", "stochastic", "options", "reference")]
    for s in SAMPLERS.values():
        rows.append((s.name, f"{s.order:g}", f"{s.evals_per_step:g}", "yes" if s.stochastic else "no",
                     ",".join(s.options) or "-", s.reference))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0
