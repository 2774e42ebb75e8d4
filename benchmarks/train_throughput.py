"""Training throughput on this machine: MLP on the swiss roll (batch 1024) and the UNet on digits (batch 128).

    python benchmarks/train_throughput.py [--steps 200] [--threads N]

Measures optimizer steps per second of `scorelab.training.train` (DSM loss, AdamW, EMA, clipping) after a warm-up,
median over 3 repeats. Anchor: none (a machine figure, reported so users can budget runs).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_results  # noqa: E402

from scorelab.core.denoisers import NetworkModel  # noqa: E402
from scorelab.core.processes import VP, Discrete  # noqa: E402
from scorelab.data import load_dataset  # noqa: E402
from scorelab.nets import MLP, UNet  # noqa: E402
from scorelab.training.loop import TrainConfig, train  # noqa: E402
from scorelab.training.losses import DSMLoss, LossConfig  # noqa: E402


def case(name: str, steps: int, repeats: int = 3) -> dict:
    if name == "mlp_swissroll":
        x, _ = load_dataset("swiss_roll", n=50_000, seed=0)
        model_fn = lambda: NetworkModel(MLP(2, width=256, depth=3), VP())  # noqa: E731
        batch, loss = 1024, DSMLoss(LossConfig())
    else:
        x, _ = load_dataset("digits")
        proc = Discrete.from_schedule("linear", 1000)
        model_fn = lambda: NetworkModel(UNet(in_channels=1, image_size=8, time_scale=1.0), proc)  # noqa: E731
        batch, loss = 128, DSMLoss(LossConfig(proposal="discrete"))
    rates = []
    for r in range(repeats + 1):
        model = model_fn()
        cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, seed=r, log_every=steps)
        t0 = time.perf_counter()
        train(model, x.float(), cfg, loss_fn=loss, progress=False)
        if r > 0:  # repeat 0 is warm-up
            rates.append(steps / (time.perf_counter() - t0))
    n_params = sum(p.numel() for p in model_fn().parameters())
    return {"case": name, "batch_size": batch, "steps": steps, "params": n_params,
            "steps_per_s": statistics.median(rates), "all_rates": rates,
            "examples_per_s": statistics.median(rates) * batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [case("mlp_swissroll", args.steps), case("unet_digits", max(20, args.steps // 4))]
    md = ["# Training throughput", "", f"torch threads: {torch.get_num_threads()}", "",
          "| case | batch | params | steps/s | examples/s |", "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['case']} | {r['batch_size']} | {r['params']:,} | {r['steps_per_s']:.1f} | "
                  f"{r['examples_per_s']:,.0f} |")
    write_results("train_throughput", {"results": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
