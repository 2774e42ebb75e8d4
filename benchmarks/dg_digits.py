"""Discriminator guidance on a deliberately under-trained digits model (thesis "Boosting methods for refining
diffusion models", 2024, Table 3.2 format): base model vs DG trained with J_CE (Kim et al. 2023) vs DG trained with
J_MSE + gamma J_CE; FID-digits, precision and recall (k = 5), mean +- std over 3 seeds.

Protocol: sklearn digits (1797 8x8 images in [-1, 1]); VP process; ``nets.UNet`` (32 channels, mults (1, 2)) trained
with the eps loss for only ``--pretrain-steps`` updates (batch 128, lr 1e-3: under-trained on purpose); EMA weights.
The pretrained model's samples (Heun, ``--nfe`` NFE) are generated once and cached (``generate_samples``), and so are
the base model's evaluation samples.  Discriminators: ``nets.ImageHead`` (``--head-channels``, mults (1, 2)), Adam
1e-3, batch 128, uniform t, lambda = sigma^2 for J_MSE and 1 for J_CE.  Guided sampling: the same Heun grid on
s_theta + w grad log r_phi (w = ``--scale``, whole interval).  Metrics: FID-digits (Frechet distance on the 64-d
features of scorelab's digits CNN, NOT Inception FID) against all 1797 digits, improved precision / recall (k = 5) on
the same features.  Seed s = sampling seed s for the base model and (discriminator seed s, sampling seed s) for DG.
With ``--eval-every N`` each discriminator is also evaluated every N steps along training: guided FID / precision /
recall, held-out J_CE (data vs 512 *fresh* generated samples that J_CE never saw; rising = over-fitting) and the
J_MSE gain over no correction on fixed diffused data (``Probe``; the thesis' Fig. 3.4 "reconstruction loss").

Anchor: thesis Table 3.2 (EDM CIFAR-10 FID): EDM 2.03, EDM + DG 3.03 +- 0.05, EDM + ours 2.00 +- 0.01; Kim et al. 2023
report DG improving EDM CIFAR-10 2.03 -> 1.77.  Values here are FID-digits: compare the ratios, not the numbers.

    python benchmarks/dg_digits.py --quick                     # 1 seed, short training, 500 samples
    python benchmarks/dg_digits.py                             # 3 seeds in this process
    for s in 0 1 2; do python benchmarks/dg_digits.py --seed-list $s --part & done; wait
    python benchmarks/dg_digits.py --merge --seed-list 0 1 2   # the same 3 seeds, run as 3 processes
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import VP
from scorelab.data.images import load_digits
from scorelab.evaluation.metrics import digits_features, fid_from_features, precision_recall
from scorelab.guidance.discriminator import (
    DiscriminatorConfig,
    ce_terms,
    generate_samples,
    make_discriminator,
    mse_terms,
    train_discriminator,
)
from scorelab.guidance.wrappers import DiscriminatorGuidance
from scorelab.io import checkpoints as ckpts
from scorelab.nets import UNet
from scorelab.plotting import image_grid
from scorelab.samplers import SAMPLERS
from scorelab.samplers.budget import grid_for_nfe
from scorelab.training.loop import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, seed_differences, write_json, write_results  # noqa: E402
from harness import fmt_mean_std as ms  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "scorelab_dg_digits_cache"
SAMPLER = "heun"
ANCHOR = {"EDM": 2.03, "EDM+DG": 3.03, "EDM+ours": 2.00, "Kim et al. EDM+DG": 1.77}
BASE = "base (under-trained UNet)"


def pretrained_model(steps: int, progress: bool) -> NetworkModel:
    """The under-trained UNet (cached as a checkpoint keyed by the number of steps)."""
    path = CACHE / f"unet_vp_steps{steps}"
    if ckpts.checkpoint_paths(path)[1].is_file():
        return ckpts.load_model(path)
    x, _ = load_digits()
    torch.manual_seed(0)
    model = NetworkModel(UNet(1, base_channels=32, channel_mults=(1, 2)), VP(), "eps")
    cfg = TrainConfig(steps=steps, batch_size=128, lr=1e-3, warmup_steps=min(100, steps // 3), ema_decay=0.995,
                      seed=0, log_every=10**9)
    res = train(model, x, cfg, progress=progress)
    ckpts.save_checkpoint(path, res.model, ema_model=res.ema_model, step=steps)
    return ckpts.load_model(path)


def sample(model, n: int, seed: int, nfe: int, batch: int = 500, cache: str | None = None) -> torch.Tensor:
    """Heun samples ``[n, 1, 8, 8]`` clamped to [-1, 1]; with ``cache`` (a file stem) stored and reused."""
    path = None if cache is None else CACHE / f"{cache}.safetensors"
    if path is not None and path.is_file():
        return safetensors.torch.load(path.read_bytes())["x"]
    ts, _ = grid_for_nfe(SAMPLER, model.process, nfe)
    g = torch.Generator().manual_seed(1000 + seed)
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            x_T = model.process.prior_sample((min(batch, n - i), 1, 8, 8), generator=g)
            out.append(SAMPLERS[SAMPLER].fn(model, x_T, ts.float(), generator=g, progress=False))
    x = torch.cat(out).clamp(-1, 1)
    if path is not None:
        ckpts.atomic_write_bytes(path, safetensors.torch.save({"x": x.contiguous()}))
    return x


def evaluate(x: torch.Tensor, ref_feat: torch.Tensor) -> dict:
    f = digits_features(x)
    pr = precision_recall(ref_feat, f, k=5)
    return {"fid_digits": fid_from_features(ref_feat, f), "precision": pr["precision"], "recall": pr["recall"]}


class Probe:
    """Fixed diffused draws for held-out losses along training (the thesis' Fig. 3.4 "reconstruction loss"):
    J_CE on data vs *fresh* generated samples (not the training ones) and the J_MSE gain over no correction,
    J_MSE(phi) - J_MSE(c = 0) (eq. 3.8, lambda = sigma^2; negative = the correction helps), on data."""

    def __init__(self, model, x_real: torch.Tensor, x_fake_heldout: torch.Tensor, n: int = 512, seed: int = 777):
        g = torch.Generator().manual_seed(seed)
        pick = lambda x: x[torch.randperm(x.shape[0], generator=g)[:n]]  # noqa: E731
        proc, self.model = model.process, model
        self.t_r, self.t_f, self.t_m = (proc.t_min + (proc.t_max - proc.t_min) * torch.rand(n, generator=g)
                                        for _ in range(3))
        self.x_r, _ = proc.marginal_sample(pick(x_real), self.t_r, g)
        self.x_f, _ = proc.marginal_sample(pick(x_fake_heldout), self.t_f, g)
        self.x_m, self.eps = proc.marginal_sample(pick(x_real), self.t_m, g)
        with torch.no_grad():
            self.eps_theta = model.eps(self.x_m, self.t_m)
        self.mse0 = (self.eps_theta - self.eps).reshape(n, -1).pow(2).sum(1).mean()

    def __call__(self, disc) -> dict:
        with torch.no_grad():
            a, b = ce_terms(disc, self.x_r, self.t_r, self.x_f, self.t_f)
        mse = mse_terms(disc, self.model, self.x_m, self.t_m, self.eps, create_graph=False,
                        eps_theta=self.eps_theta).mean()
        return {"heldout_ce": float(a.mean() + b.mean()), "d_mse": float(mse - self.mse0)}


def train_disc(model, x_real, x_fake, objective: str, seed: int, args, callback=None):
    kw = {"objective": objective} if objective == "ce" else {"objective": "mse+ce", "gamma": args.gamma}
    cfg = DiscriminatorConfig(**kw, steps=args.disc_steps, batch_size=128, lr=1e-3, seed=seed,
                              log_every=max(1, args.disc_steps // 10))
    torch.manual_seed(seed)
    disc = make_discriminator((1, 8, 8), model.process, base_channels=args.head_channels, channel_mults=(1, 2))
    return train_discriminator(disc, model, x_real, x_fake, cfg, progress=args.progress, callback=callback,
                               eval_every=args.eval_every)


def methods(args) -> dict[str, str | None]:
    return {BASE: None, "DG, J_CE (Kim et al.)": "ce", f"DG, J_MSE + {args.gamma:g} J_CE": "mse+ce"}


def run_seed(seed: int, model, x_real, x_fake, ref_feat, args, probe: Probe) -> list[dict]:
    """All methods at one seed -> rows (method, seed, metrics, training history; with ``--eval-every`` the curve
    of FID / precision / recall and held-out losses along discriminator training); grids of seed 0 saved."""
    rows = []
    for name, obj in methods(args).items():
        if obj is None:
            x, extra = sample(model, args.n_eval, seed, args.nfe, cache=f"base_p{args.pretrain_steps}_nfe{args.nfe}"
                              f"_n{args.n_eval}_s{seed}"), {}
        else:
            def evaluate_at(step, disc, obj=obj):
                xg = sample(DiscriminatorGuidance(model, disc, scale=args.scale), args.n_eval, seed, args.nfe)
                out = {"step": step, **evaluate(xg, ref_feat), **probe(disc)}
                print(f"  {obj} seed {seed} step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in out.items()
                                                                      if k != "step"), flush=True)
                return out, xg

            res = train_disc(model, x_real, x_fake, obj, seed, args, callback=evaluate_at)
            x = res.evaluations[-1][1]
            extra = {"history": res.history, "train_wall_s": res.wall_s,
                     "curve": [e for e, _ in res.evaluations], **{k: v for k, v in res.evaluations[-1][0].items()
                                                                   if k in ("heldout_ce", "d_mse")}}
        rows.append({"method": name, "seed": seed, **evaluate(x, ref_feat), **extra})
        if seed == 0:
            ckpts.atomic_write_bytes(CACHE / f"grid_{obj}.safetensors", safetensors.torch.save({"x": x[:64]}))
        print(f"{name} seed {seed}: FID-digits {rows[-1]['fid_digits']:.3f} P {rows[-1]['precision']:.3f} "
              f"R {rows[-1]['recall']:.3f}", flush=True)
    return rows


def curves(rows: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """method -> discriminator step -> the evaluations of all seeds at that step."""
    out: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        for e in r.get("curve", []):
            out.setdefault(r["method"], {}).setdefault(e["step"], []).append(e)
    return out


def curve_table(rows: list[dict]) -> list[str]:
    cv = curves(rows)
    if not cv or all(len(v) < 2 for v in cv.values()):
        return []
    names = list(cv)
    lines = ["", "Along discriminator training (mean ± std over seeds): guided FID-digits / held-out J_CE (data vs "
             "fresh generated samples; ln 4 = 1.386 is chance) / J_MSE gain over no correction (eq. 3.8, lambda = "
             "sigma^2, on data; < 0: the correction moves the score toward the data score)", "",
             "| disc. step | " + " | ".join(f"{n}: FID | {n}: held-out J_CE | {n}: ΔJ_MSE" for n in names) + " |",
             "|---" * (1 + 3 * len(names)) + "|"]
    for step in sorted({k for v in cv.values() for k in v}):
        cells = []
        for n in names:
            es = cv[n].get(step, [])
            cells += [ms([e[k] for e in es], f) if es else "-" for k, f in (("fid_digits", ".3f"),
                                                                              ("heldout_ce", ".4f"),
                                                                              ("d_mse", ".4f"))]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def curve_plot(rows: list[dict], path: Path) -> str | None:
    cv = curves(rows)
    if not cv or all(len(v) < 2 for v in cv.values()):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    base = [r["fid_digits"] for r in rows if r["method"] == BASE]
    for i, (n, by_step) in enumerate(cv.items()):
        steps = sorted(by_step)
        for ax, k in zip(axes, ("fid_digits", "heldout_ce", "d_mse"), strict=True):
            v = [np.array([e[k] for e in by_step[st]]) for st in steps]
            m, sd = np.array([x.mean() for x in v]), np.array([x.std() for x in v])
            ax.plot(steps, m, "o-", color=f"C{i}", label=n)
            ax.fill_between(steps, m - sd, m + sd, color=f"C{i}", alpha=0.2)
    if base:
        axes[0].axhline(float(np.mean(base)), color="k", ls="--", label=BASE)
    axes[1].axhline(math.log(4), color="gray", ls=":", label="chance (ln 4)")
    axes[2].axhline(0.0, color="gray", ls=":")
    for ax, t in zip(axes, ("guided FID-digits", "held-out J_CE", "J_MSE gain over c = 0"), strict=True):
        ax.set_xlabel("discriminator step")
        ax.set_title(t)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def markdown(rows: list[dict], args, wall: float) -> str:
    names = list(dict.fromkeys(r["method"] for r in rows))
    base_fid = float(np.mean([r["fid_digits"] for r in rows if r["method"] == BASE]))
    seeds = sorted({r["seed"] for r in rows})
    opts = (f" --pretrain-steps {args.pretrain_steps} --disc-steps {args.disc_steps} --n-gen {args.n_gen} "
            f"--n-eval {args.n_eval} --gamma {args.gamma:g} --scale {args.scale:g}"
            + (f" --head-channels {args.head_channels}" if args.head_channels != 32 else "")
            + (f" --nfe {args.nfe}" if args.nfe != 35 else "")
            + (f" --eval-every {args.eval_every}" if args.eval_every else ""))
    lines = [f"# Discriminator guidance on an under-trained digits model ({args.pretrain_steps} pretraining steps), "
             f"{len(seeds)} seed(s)", "",
             f"{SAMPLER}, {args.nfe} NFE, guidance scale {args.scale}, {args.n_eval} samples vs the 1797 digits; "
             f"gamma = {args.gamma}; {args.disc_steps} discriminator steps (batch 128), head {args.head_channels} ch; "
             f"{args.n_gen} generated samples for J_CE", "",
             "| method | FID-digits | FID ratio to base | precision (k=5) | recall (k=5) | ΔFID vs base (paired) "
             "| Δrecall vs base (paired) | ΔFID vs DG-CE (paired) | Δrecall vs DG-CE (paired) |",
             "|---" * 9 + "|"]
    base = {r["seed"]: r for r in rows if r["method"] == BASE}
    ce = {r["seed"]: r for r in rows if r["method"] == names[1]} if len(names) > 1 else {}

    def paired(rs, ref, key):
        return ms(seed_differences({r["seed"]: r for r in rs}, ref, key)) if ref else "-"

    for name in names:
        rs = [r for r in rows if r["method"] == name]
        fid = [r["fid_digits"] for r in rs]
        lines.append(f"| {name} | {ms(fid)} | {np.mean(fid) / base_fid:.3f} | {ms([r['precision'] for r in rs])} "
                     f"| {ms([r['recall'] for r in rs])} | {paired(rs, base, 'fid_digits')} | "
                     f"{paired(rs, base, 'recall')} | {paired(rs, ce, 'fid_digits')} | {paired(rs, ce, 'recall')} |")
    lines += ["", "Paired Δ: method minus base (or minus DG with J_CE) at the same seed (same x_T; the discriminator "
              "seed equals the sampling seed), mean ± std over seeds."]
    lines += curve_table(rows)
    lines += ["", "Per seed (FID-digits / precision / recall): " + "; ".join(
        f"{r['method']} s{r['seed']}: {r['fid_digits']:.3f} / {r['precision']:.3f} / {r['recall']:.3f}"
        for r in rows), "",
        "Anchor (thesis Table 3.2, EDM CIFAR-10 FID): EDM 2.03, EDM+DG 3.03 ± 0.05 (ratio 1.49), EDM+ours "
        "2.00 ± 0.01 (ratio 0.985); Kim et al. 2023: 2.03 -> 1.77 (ratio 0.872).", "",
        f"Wall time {wall:.0f} s (summed over the parts when run as parallel parts).", "",
        f"Commands: `for s in {' '.join(map(str, seeds))}; do python benchmarks/dg_digits.py --seed-list $s --part"
        + opts + " & done; wait`, then `python benchmarks/dg_digits.py --merge --seed-list "
        + " ".join(map(str, seeds)) + opts + "`."]
    return "\n".join(lines)


def copy_check(grids: dict[str, torch.Tensor]) -> list[str]:
    """Memorisation check on the seed-0 sample grids: pixel-space distance of each sample to its nearest digit,
    against the digits' own leave-one-out nearest-neighbour distances (a copy would sit below their 5% quantile)."""
    x = load_digits()[0].flatten(1)
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    loo = d.min(1).values
    q05 = float(loo.quantile(0.05))
    parts = [f"{tag}: median {float(nn.median()):.3f}, {int((nn < q05).sum())}/{nn.numel()} below"
             for tag, nn in ((t, torch.cdist(g.flatten(1), x).min(1).values) for t, g in grids.items())]
    return ["", f"Copy check (seed-0 sample grids, L2 distance to the nearest of the 1797 digits; the digits' own "
            f"leave-one-out distance: median {float(loo.median()):.3f}, 5% quantile {q05:.3f}): " + "; ".join(parts)
            + "."]


def finish(rows: list[dict], args, wall: float) -> None:
    stem = args.stem or ("dg_digits_quick" if args.quick else "dg_digits")
    pngs, grids = [], {}
    for obj in ("None", "ce", "mse+ce"):
        p = CACHE / f"grid_{obj}.safetensors"
        if p.is_file():
            x = safetensors.torch.load(p.read_bytes())["x"]
            tag = {"None": "base", "ce": "dg_ce", "mse+ce": "dg_mse_ce"}[obj]
            grids[tag] = x
            pngs.append(image_grid(x, str(RESULTS / f"{stem}_{tag}.png"), title=tag))
    curve_png = curve_plot(rows, RESULTS / f"{stem}_curve.png")
    pngs += [curve_png] if curve_png else []
    payload = {"benchmark": "dg_digits", "args": vars(args), "rows": rows, "anchor": ANCHOR, "wall_s": wall,
               "plots": pngs}
    write_results(stem, payload, "\n".join([markdown(rows, args, wall), *(copy_check(grids) if grids else [])]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 300 pretraining / 200 discriminator steps")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-list", type=int, nargs="*", default=None, help="run only these seeds")
    ap.add_argument("--part", action="store_true", help="write the rows to the cache (merge later with --merge)")
    ap.add_argument("--merge", action="store_true",
                    help="collect the parts written with --part (only those of --seed-list when given) and report")
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--disc-steps", type=int, default=None)
    ap.add_argument("--n-gen", type=int, default=None)
    ap.add_argument("--n-eval", type=int, default=None)
    ap.add_argument("--nfe", type=int, default=35)
    ap.add_argument("--head-channels", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="also evaluate (guided FID / P / R, held-out J_CE and J_MSE gain) every N discriminator steps")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: best on a shared CPU)")
    ap.add_argument("--stem", default=None)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.pretrain_steps = args.pretrain_steps or (300 if args.quick else 1500)
    args.disc_steps = args.disc_steps or (200 if args.quick else 1500)
    args.n_gen = args.n_gen or (500 if args.quick else 2000)
    args.n_eval = args.n_eval or (500 if args.quick else 1797)
    seeds = args.seed_list if args.seed_list is not None else list(range(1 if args.quick else args.seeds))
    key = (f"p{args.pretrain_steps}_d{args.disc_steps}_g{args.gamma:g}_w{args.scale:g}_n{args.n_eval}_m{args.n_gen}"
           f"_h{args.head_channels}")
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.merge:
        parts = [json.loads(CACHE.joinpath(f"part_{key}_s{s}.json").read_text()) for s in seeds
                 if CACHE.joinpath(f"part_{key}_s{s}.json").is_file()] if args.seed_list is not None else [
            json.loads(p.read_text()) for p in sorted(CACHE.glob(f"part_{key}_s*.json"))]
        if not parts:
            raise SystemExit(f"no parts matching {CACHE}/part_{key}_s*.json")
        finish([r for p in parts for r in p["rows"]], args, sum(p["wall_s"] for p in parts))
        return
    t0 = time.perf_counter()
    model = pretrained_model(args.pretrain_steps, args.progress)
    x_real = load_digits()[0]
    ref_feat = digits_features(x_real)
    x_fake = generate_samples(model, args.n_gen, (1, 8, 8), sampler=SAMPLER, nfe=args.nfe, seed=12345,
                              batch_size=500, cache_dir=CACHE, progress=args.progress)
    x_fake_heldout = generate_samples(model, 512, (1, 8, 8), sampler=SAMPLER, nfe=args.nfe, seed=54321,
                                      batch_size=512, cache_dir=CACHE, progress=args.progress)
    probe = Probe(model, x_real, x_fake_heldout)
    rows = []
    for s in seeds:
        rows += run_seed(s, model, x_real, x_fake, ref_feat, args, probe)
        if args.part:
            write_json(CACHE / f"part_{key}_s{s}.json", {"rows": rows[-3:], "wall_s": time.perf_counter() - t0},
                       indent=None)
    if not args.part:
        finish(rows, args, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
