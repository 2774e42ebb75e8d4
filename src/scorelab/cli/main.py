"""The ``scorelab`` command: assembles one module per verb and turns user errors into exit status 2.

Each verb module (``info``, ``train``, ``sample``, ``fit_grid``, ``evaluate``, ``likelihood``, ``density``,
``finetune``, ``guidance``, ``reject``, ``bridge``, ``demo_cmd``) has ``add_parser(sub)`` and ``run(args)`` and
only maps arguments onto library calls.  Bad input (unknown names, wrong shapes, missing files, invalid numbers,
unwritable paths, a training run that diverged) exits with status 2 and a one-line message on stderr, argparse's
own errors included; ``--debug`` (anywhere on the command line) shows the traceback instead.  Warnings are printed
as one ``scorelab: warning:`` line.
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from typing import Sequence

from . import bridge, demo_cmd, density, evaluate, finetune, fit_grid, guidance, info, likelihood, reject, sample, train

#: the verb modules, in the order ``scorelab --help`` lists them
VERBS = (info, train, sample, fit_grid, evaluate, likelihood, density, finetune, guidance, reject, bridge, demo_cmd)

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

def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's: one line on stderr, exit status 2.  ``OSError`` covers missing, unwritable and
    existing paths (``FileExistsError``, ``PermissionError``, ...); ``NonFiniteLossError`` a diverged run (its
    message names the step, the last good checkpoint and what to change)."""
    from ..training.loop import NonFiniteLossError

    return (ValueError, KeyError, OSError, NonFiniteLossError)


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str):
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``scorelab`` parser with every verb's sub-command."""
    p = OneLineParser(prog="scorelab", description="Score-based diffusion models: train, sample, measure, "
                      "refine, and sample unnormalized densities.", epilog=EXAMPLES,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors (accepted "
                   "anywhere on the command line)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for verb in VERBS:
        verb.add_parser(sub)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"scorelab: warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}",
          file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scorelab`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.argv, args.debug = ["scorelab", *argv], debug
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warning
        try:
            return int(args.fn(args) or 0)
        except _user_errors() as e:  # CLIError is a ValueError
            if debug:
                traceback.print_exc()
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"scorelab: error: {msg}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("scorelab: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
