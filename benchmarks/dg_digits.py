"""Discriminator guidance on a deliberately under-trained digits model (thesis "Boosting methods for refining
diffusion models", 2024, Table 3.2 format): base model vs DG trained with J_CE (Kim et al. 2023) vs DG trained with
J_MSE + gamma J_CE; FID-digits, precision and recall (k = 5), mean +- std over 3 discriminator seeds.

Protocol: sklearn digits (1797 8x8 images in [-1, 1]); VP process; ``nets.UNet`` (32 channels, mults (1, 2)) trained
with the eps loss for only ``--pretrain-steps`` updates (default 1500, batch 128, lr 1e-3: under-trained on
purpose); EMA weights.  The pretrained model's samples (Heun, 35 NFE, Karras grid) are generated once and cached.
Discriminators: ``nets.ImageHead`` (32 channels, mults (1, 2)), Adam 1e-3, batch 128, uniform t, lambda = sigma^2 for
J_MSE and 1 for J_CE.  Guided sampling: the same Heun grid on s_theta + w grad log r_phi (w = 1, whole interval).
Metrics: FID-digits (``metrics.fid_digits``: Frechet distance on the 64-d features of scorelab's digits CNN, NOT
Inception FID) against all 1797 digits, improved precision / recall (k = 5) on the same features; the base model is
sampled with 3 sampling seeds, each DG variant with 3 discriminator seeds (and the same sampling seeds).

Anchor: thesis Table 3.2 (EDM CIFAR-10 FID): EDM 2.03, EDM + DG 3.03 +- 0.05, EDM + ours 2.00 +- 0.01; Kim et al. 2023
report DG improving EDM CIFAR-10 2.03 -> 1.77.  Values here are FID-digits: compare the ratios, not the numbers.

    python benchmarks/dg_digits.py --quick     # short pretraining / discriminator training, fewer samples
    python benchmarks/dg_digits.py             # full protocol (tens of minutes on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scorelab import checkpoints as ckpts
from scorelab.data.images import load_digits
from scorelab.denoisers import NetworkModel
from scorelab.finetune.discriminator import (
    DiscriminatorConfig,
    generate_samples,
    make_discriminator,
    train_discriminator,
)
from scorelab.guidance import DiscriminatorGuidance
from scorelab.metrics import digits_features, fid_from_features, precision_recall
from scorelab.nets import UNet
from scorelab.plotting import image_grid
from scorelab.processes import VP
from scorelab.samplers import SAMPLERS
from scorelab.schedules import grid_for_nfe
from scorelab.training import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
CACHE = Path(tempfile.gettempdir()) / "scorelab_dg_digits_cache"
SAMPLER, NFE = "heun", 35
ANCHOR = {"EDM": 2.03, "EDM+DG": 3.03, "EDM+ours": 2.00, "Kim et al. EDM+DG": 1.77}


def pretrained_model(steps: int, progress: bool) -> NetworkModel:
    """The under-trained UNet (cached as a checkpoint keyed by the number of steps)."""
    path = CACHE / f"unet_vp_steps{steps}"
    if ckpts.checkpoint_paths(path)[1].is_file():
        return ckpts.load_model(path)
    x, _ = load_digits()
    torch.manual_seed(0)
    model = NetworkModel(UNet(1, base_channels=32, channel_mults=(1, 2)), VP(), "eps")
    cfg = TrainConfig(steps=steps, batch_size=128, lr=1e-3, warmup_steps=100, ema_decay=0.995, seed=0,
                      log_every=10**9)
    res = train(model, x, cfg, progress=progress)
    ckpts.save_checkpoint(path, res.model, ema_model=res.ema_model, step=steps)
    return ckpts.load_model(path)


def sample(model, n: int, seed: int, batch: int = 500) -> torch.Tensor:
    ts, _ = grid_for_nfe(SAMPLER, model.process, NFE)
    g = torch.Generator().manual_seed(1000 + seed)
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            x_T = model.process.prior_sample((min(batch, n - i), 1, 8, 8), generator=g)
            out.append(SAMPLERS[SAMPLER].fn(model, x_T, ts.float(), generator=g, progress=False))
    return torch.cat(out).clamp(-1, 1)


def evaluate(x: torch.Tensor, ref_feat: torch.Tensor) -> dict:
    f = digits_features(x)
    pr = precision_recall(ref_feat, f, k=5)
    return {"fid_digits": fid_from_features(ref_feat, f), "precision": pr["precision"], "recall": pr["recall"]}


def train_disc(model, x_real, x_fake, objective: str, seed: int, args):
    kw = {"objective": objective} if objective == "ce" else {"objective": "mse+ce", "gamma": args.gamma}
    cfg = DiscriminatorConfig(**kw, steps=args.disc_steps, batch_size=128, lr=1e-3, seed=seed,
                              log_every=max(1, args.disc_steps // 10))
    torch.manual_seed(seed)
    disc = make_discriminator((1, 8, 8), model.process, base_channels=32, channel_mults=(1, 2))
    return train_discriminator(disc, model, x_real, x_fake, cfg, progress=args.progress)


def ms(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if v.size > 1 else f"{v.mean():.4f}"


def markdown(table: dict, args, wall: float, base_fid: float) -> str:
    lines = [f"# Discriminator guidance on under-trained digits ({args.pretrain_steps} pretraining steps), "
             f"{args.seeds} seed(s){' --quick' if args.quick else ''}", "",
             f"{SAMPLER}, {NFE} NFE, guidance scale {args.scale}, {args.n_eval} samples vs 1797 digits; "
             f"gamma = {args.gamma}; discriminator steps {args.disc_steps}", "",
             "| method | FID-digits | FID ratio to base | precision | recall |", "|---|---|---|---|---|"]
    for name, rows in table.items():
        fid = [r["fid_digits"] for r in rows]
        lines.append(f"| {name} | {ms(fid)} | {np.mean(fid) / base_fid:.3f} | {ms([r['precision'] for r in rows])} "
                     f"| {ms([r['recall'] for r in rows])} |")
    lines += ["", "Anchor (thesis Table 3.2, EDM CIFAR-10 FID): EDM 2.03, EDM+DG 3.03 ± 0.05 (ratio 1.49), EDM+ours "
              "2.00 ± 0.01 (ratio 0.985); Kim et al. 2023: 2.03 -> 1.77 (ratio 0.872).", "",
              f"Wall time {wall:.0f} s. Command: `python benchmarks/dg_digits.py{' --quick' if args.quick else ''}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    args.pretrain_steps = 300 if args.quick else 1500
    args.disc_steps = 200 if args.quick else 1500
    args.n_gen, args.n_eval = (500, 500) if args.quick else (2000, 1797)
    t0 = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = pretrained_model(args.pretrain_steps, args.progress)
    x_real = load_digits()[0]
    ref_feat = digits_features(x_real)
    x_fake = generate_samples(model, args.n_gen, (1, 8, 8), sampler=SAMPLER, nfe=NFE, seed=12345, batch_size=500,
                              cache_dir=CACHE, progress=args.progress)
    table, grids, extra = {"base (under-trained UNet)": []}, {}, {}
    for s in range(args.seeds):
        x = sample(model, args.n_eval, s)
        table["base (under-trained UNet)"].append(evaluate(x, ref_feat))
        grids.setdefault("base", x[:64])
    for obj, name in (("ce", "DG, J_CE (Kim et al.)"), ("mse+ce", f"DG, J_MSE + {args.gamma} J_CE")):
        table[name], extra[name] = [], []
        for s in range(args.seeds):
            res = train_disc(model, x_real, x_fake, obj, s, args)
            x = sample(DiscriminatorGuidance(model, res.discriminator, scale=args.scale), args.n_eval, s)
            table[name].append(evaluate(x, ref_feat))
            extra[name].append({"history": res.history, "train_wall_s": res.wall_s})
            grids.setdefault(obj, x[:64])
            print(name, s, table[name][-1], f"({res.wall_s:.0f} s)", flush=True)
    stem = "dg_digits_quick" if args.quick else "dg_digits"
    pngs = [image_grid(v, str(RESULTS / f"{stem}_{k.replace('+', '_')}.png"), title=k) for k, v in grids.items()]
    wall = time.perf_counter() - t0
    md = markdown(table, args, wall, float(np.mean([r["fid_digits"] for r in table["base (under-trained UNet)"]])))
    out = {"benchmark": "dg_digits", "args": vars(args), "results": table, "training": extra, "anchor": ANCHOR,
           "wall_s": wall, "plots": pngs, "torch": torch.__version__, "python": platform.python_version(),
           "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text(md + "\n")
    print(md)
    return out


if __name__ == "__main__":
    main()
