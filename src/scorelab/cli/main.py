"""The ``scorelab`` command: assembles one module per verb and turns user errors into exit status 2.

Each verb module (``info``, ``train``, ``sample``, ``evaluate``, ``likelihood``, ``density``, ``finetune``,
``guidance``, ``reject``, ``demo_cmd``) has ``add_parser(sub)`` and ``run(args)`` and only maps arguments onto
library calls.  Bad input (unknown names, wrong shapes, missing files, invalid numbers) exits with status 2 and a
one-line message.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import bridge, demo_cmd, density, evaluate, finetune, guidance, info, likelihood, reject, sample, train

#: the verb modules, in the order ``scorelab --help`` lists them
VERBS = (info, train, sample, evaluate, likelihood, density, finetune, guidance, reject, bridge, demo_cmd)

EXAMPLES = """\
examples:
  scorelab demo --out runs/demo
  scorelab datasets
  scorelab samplers
  scorelab train --config configs/swissroll_vp.yaml
  scorelab sample --checkpoint runs/swissroll_vp --sampler dpm_solver_pp_2m --nfe 10 --n 5000
  scorelab sample --model gmm:ring8 --process vp --sampler heun --nfe 20 --grid karras
  scorelab evaluate --samples runs/sample/samples.npy --reference swiss_roll
  scorelab likelihood --model gmm:ring8 --process vp --n 256
  scorelab density --target gmm9 --method dis --loss lv --steps 100
"""

#: errors that are the user's: one line on stderr, exit status 2
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, NotADirectoryError, IsADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    """The ``scorelab`` parser with every verb's sub-command."""
    p = argparse.ArgumentParser(prog="scorelab", description="Score-based diffusion models: train, sample, measure, "
                                "refine, and sample unnormalized densities.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scorelab`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except USER_ERRORS as e:  # CLIError is a ValueError
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"scorelab: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scorelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
