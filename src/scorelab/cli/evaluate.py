"""``scorelab evaluate``: samples against a data set, a file or an exact oracle (``evaluation.reports``)."""
from __future__ import annotations

import argparse
import os

from .common import add_verb, print_json, write_json

EXAMPLES = """\
examples:
  scorelab evaluate --samples runs/x/samples.npy --reference swiss_roll
  scorelab evaluate --samples runs/x/samples.npy --reference gmm:ring8   # MMD^2 to the exact law
  scorelab evaluate --samples runs/x/samples.npz --reference my_images/ --inception-weights fid_inception.safetensors
"""


def add_parser(sub) -> None:
    """Add ``scorelab evaluate`` to the subcommands ``sub``."""
    sp = add_verb(sub, "evaluate", run, "compare samples with a reference (data set name, file or exact oracle)",
                  EXAMPLES)
    sp.add_argument("--samples", required=True)
    sp.add_argument("--reference", required=True,
                    help="data set name, .npy file, or gmm:ring8|grid9|grid25|random-K-D-SEED (exact oracle: "
                    "unbiased MMD^2 to its law, mode statistics, sliced W2 with its two-sample floor)")
    sp.add_argument("--out", help="write the metrics JSON here")
    sp.add_argument("--inception-weights", metavar="PATH",
                    help="Inception FID/KID/precision-recall with the FID InceptionV3 weights in this .safetensors "
                    "file "
                    "(pytorch-fid's weights, converted; the error message says how); --reference may then also be a "
                    "pytorch-fid mu/sigma .npz")
    sp.add_argument("--device", default="cpu", help="device for the Inception network (cpu, cuda, cuda:1, mps)")
    sp.add_argument("--batch-size", type=int, default=200, help="images per Inception batch")
    sp.add_argument("--save-reference-stats", metavar="NPZ", help="also write the reference's Inception mu/sigma")


def run(args: argparse.Namespace) -> int:
    """``scorelab evaluate`` on the parsed ``args`` -> exit status (bad input raises ValueError)."""
    from ..evaluation.reports import oracle_report, reference_report
    from ..io.loading import load_samples, oracle_mixture

    if args.out and os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a folder; expected the path of the metrics JSON file to write")
    if args.inception_weights:
        from ..evaluation.inception import evaluate_inception

        res = evaluate_inception(args.samples, args.reference, args.inception_weights, args.device, args.batch_size,
                                 args.save_reference_stats, progress=True)
        print_json(res)
        if args.out:
            write_json(args.out, res)
        return 0
    x = load_samples(args.samples)
    if args.reference.startswith("gmm:"):
        res = oracle_report(x, oracle_mixture(args.reference), args.reference)  # checks the dimension
    else:  # the reference's trailing shape must match the samples' (never reshaped)
        res = reference_report(x, load_samples(args.reference, tuple(x.shape[1:])))
    print_json(res)
    if args.out:
        write_json(args.out, res)
    return 0
