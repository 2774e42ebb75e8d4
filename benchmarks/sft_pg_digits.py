"""SFT-PG on images: a DDPM on scikit-learn digits (T = 1000, linear betas), sampled with T' = 10 stochastic DDPM
steps on a quadratic subsequence of the chain (FastDPM-style, rounded to whole steps), fine-tuned with SFT-PG (B)
(conv critic ``ImageHead``, step-conditioned baseline on the flattened image).  Reports FID-digits (Frechet distance
on scorelab's digits-CNN features; not Inception FID) and precision/recall on the same features, before / after,
against the T = 1000 ancestral sampler, plus CPU wall times.  Anchor (paper, Table 2, CIFAR-10 T' = 10): DDPM 34.76
-> SFT-PG (B) 2.28 FID, below T = 1000 (3.03); here the goal is a clear FID-digits gain that closes most of the gap.

    python benchmarks/sft_pg_digits.py --quick     # short pretraining and fine-tuning, 1 seed
    python benchmarks/sft_pg_digits.py             # 3 seeds, longer budgets
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import Discrete
from scorelab.data import load_digits
from scorelab.evaluation.metrics import digits_features, fid_from_features, precision_recall
from scorelab.finetune.sft_pg import SFTPGConfig, make_policy_grid, rollout, sft_pg
from scorelab.nets import UNet
from scorelab.training.loop import TrainConfig, train
from scorelab.training.losses import DSMLoss, LossConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, mean_std, write_json, write_results  # noqa: E402


def _net() -> UNet:
    return UNet(1, base_channels=32, channel_mults=(1, 2), attn_resolutions=(), mid_attention=False)


def pretrain(x: torch.Tensor, steps: int, seed: int, cache: Path | None = None) -> tuple[NetworkModel, float]:
    """The T = 1000 DDPM (EMA weights) and its pretraining wall time; cached as safetensors + JSON in ``cache``
    (so a later call with more fine-tuning epochs reuses it)."""
    process = Discrete.from_schedule("linear", 1000)
    if cache is not None and cache.exists():
        model = NetworkModel(_net(), process, "eps", time_input="t")
        model.net.load_state_dict(safetensors.torch.load_file(str(cache)))
        return model.requires_grad_(True).eval(), json.loads(cache.with_suffix(".json").read_text())["pretrain_s"]
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = NetworkModel(_net(), process, "eps", time_input="t")
    cfg = TrainConfig(steps=steps, batch_size=128, lr=1e-3, warmup_steps=100, ema_decay=0.999, seed=seed,
                      log_every=10**9)
    res = train(model, x, cfg, loss_fn=DSMLoss(LossConfig(proposal="discrete")), progress=False)
    wall = time.perf_counter() - t0
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file({k: v.contiguous() for k, v in res.ema_model.net.state_dict().items()},
                                    str(cache))
        write_json(cache.with_suffix(".json"), {"pretrain_s": wall, "steps": steps}, indent=None)
    return res.ema_model.requires_grad_(True).eval(), wall


@torch.no_grad()
def draw(model, ts, n: int, seed: int, batch: int = 500) -> torch.Tensor:
    g, cfg, out = torch.Generator().manual_seed(seed), SFTPGConfig(sampler="ddpm"), []
    for i in range(0, n, batch):
        x_T = torch.randn(min(batch, n - i), 1, 8, 8, generator=g)
        out.append(rollout(model, x_T, ts, cfg, g).x0.clamp(-1, 1))
    return torch.cat(out)


def scores(samples: torch.Tensor, ref_feats: torch.Tensor) -> dict:
    f = digits_features(samples)
    return {"fid_digits": fid_from_features(f, ref_feats), **precision_recall(ref_feats, f)}


def run_seed(seed: int, args) -> dict:
    x, _ = load_digits()
    ref = digits_features(x)
    work = RESULTS / ".sft_pg_digits_runs"
    model, pretrain_s = pretrain(x, args.pretrain_steps, seed, work / f"seed{seed}_pretrain{args.pretrain_steps}"
                                                                      ".safetensors")
    rows = {"pretrain_s": pretrain_s}
    ts10 = make_policy_grid(model.process, 10, "quadratic")
    t0 = time.perf_counter()
    rows["DDPM T=1000"] = {**scores(draw(model, make_policy_grid(model.process), args.n_eval, seed), ref),
                           "sample_s": time.perf_counter() - t0}
    rows["DDPM T'=10 quad"] = scores(draw(model, ts10, args.n_eval, seed), ref)
    cfg = SFTPGConfig(sampler="ddpm", n_steps=10, grid="quadratic", epochs=args.epochs, lr_generator=args.lr,
                      seed=seed, eval_every=0, batch_size=64, ema_decay=args.ema_decay,
                      lr_generator_final=args.lr_final)
    lr_key = f"_lr{args.lr:g}" + ("" if args.lr_final is None else f"-{args.lr_final:g}cos")
    ft_dir = work / f"seed{seed}_pretrain{args.pretrain_steps}_ft" if (args.lr, args.ema_decay, args.lr_final) == \
        (2e-5, 0.0, None) else work / f"seed{seed}_pretrain{args.pretrain_steps}{lr_key}_ema{args.ema_decay:g}_ft"
    res = sft_pg(model, x, cfg, run_dir=ft_dir, resume=True, progress=args.progress)  # resumes a shorter run
    done = max((h.get("epoch", 0) for h in res.history), default=0)
    if done > args.epochs:
        raise SystemExit(f"{ft_dir} holds a run of {done} epochs, more than --epochs {args.epochs}: remove it or ask "
                         "for at least that many epochs")
    rows["SFT-PG(B) T'=10 quad"] = {**scores(draw(res.ema_model, ts10, args.n_eval, seed), ref),
                                   "finetune_s": res.wall_time, "history": res.history}
    rows["grid"] = (ts10 * 1000).round().tolist()
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--lr-final", type=float, default=None,
                   help="cosine generator lr from --lr to this value over --epochs (default: constant lr)")
    p.add_argument("--ema-decay", type=float, default=0.0)
    p.add_argument("--n-eval", type=int, default=1797)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="combine the per-seed result files of parallel runs "
                   "(same settings) into sft_pg_digits_<tag> without re-running anything")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args)
    q = args.quick
    args.seeds = args.seeds or ([0] if q else [0, 1, 2])
    args.pretrain_steps = args.pretrain_steps or (1500 if q else 20_000)
    args.epochs = args.epochs or (10 if q else 100)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = [run_seed(s, args) for s in args.seeds]
    return report(args, runs, time.perf_counter() - t0)


SAME = ("quick", "pretrain_steps", "epochs", "lr", "lr_final", "ema_decay", "n_eval")


def merge(args) -> dict:
    """Join per-seed JSON reports (e.g. one process per seed) after checking they share every setting."""
    reports = [json.loads(Path(f).read_text()) for f in args.merge]
    cfg0 = reports[0]["config"]
    for f, r in zip(args.merge, reports, strict=True):
        diff = {k: (cfg0.get(k), r["config"].get(k)) for k in SAME if r["config"].get(k) != cfg0.get(k)}
        if diff:
            raise SystemExit(f"{f} was run with other settings than {args.merge[0]}: {diff}")
    for k in SAME + ("seeds",):
        setattr(args, k, cfg0[k] if k != "seeds" else [s for r in reports for s in r["config"]["seeds"]])
    runs = [run for r in reports for run in r["runs"]]
    return report(args, runs, sum(r["wall_time_s"] for r in reports))


def gap_closed(run: dict) -> float:
    """Fraction of the FID-digits gap between T' = 10 and T = 1000 that fine-tuning closed (1 = reaches T = 1000)."""
    f10, f1000 = run["DDPM T'=10 quad"]["fid_digits"], run["DDPM T=1000"]["fid_digits"]
    return (f10 - run["SFT-PG(B) T'=10 quad"]["fid_digits"]) / (f10 - f1000)


def report(args, runs: list[dict], wall: float) -> dict:
    q = args.quick
    keys = ["DDPM T=1000", "DDPM T'=10 quad", "SFT-PG(B) T'=10 quad"]
    summary = {k: {m: mean_std([r[k][m] for r in runs], ddof=0) for m in ("fid_digits", "precision", "recall")}
               for k in keys}
    stem = "sft_pg_digits" + ("_quick" if q else "") + (f"_{args.tag}" if args.tag else "")
    closed = [gap_closed(r) for r in runs]
    summary["gap_closed"] = {**mean_std(closed, ddof=0), "per_seed": closed}
    out = {"config": {k: v for k, v in vars(args).items() if k != "merge"}, "summary": summary, "runs": runs,
           "wall_time_s": wall}
    full = args.pretrain_steps == 20_000 and args.epochs == 100 and len(args.seeds) == 3
    lines = [f"# SFT-PG on digits ({'quick' if q else 'full' if full else 'reduced'} run)", "",
             f"Seeds {args.seeds}; UNet pretraining {args.pretrain_steps} steps; fine-tuning {args.epochs} epochs "
             f"(lr {args.lr}{'' if args.lr_final is None else f' -> {args.lr_final} cosine'}, EMA {args.ema_decay}); "
             f"{args.n_eval} samples vs the 1797 digits.", "",
             "| sampler | FID-digits | precision | recall |", "|---|---|---|---|"]
    for k in keys:
        s = summary[k]
        lines.append(f"| {k} | {s['fid_digits']['mean']:.2f} +- {s['fid_digits']['std']:.2f} | "
                     f"{s['precision']['mean']:.3f} | {s['recall']['mean']:.3f} |")
    lines += ["", "Per seed (FID-digits T=1000 / T'=10 / SFT-PG(B); fraction of the T'=10 -> T=1000 gap closed):", ""]
    lines += [f"- seed {sd}: {r[keys[0]]['fid_digits']:.2f} / {r[keys[1]]['fid_digits']:.2f} / "
              f"{r[keys[2]]['fid_digits']:.2f}; closed {c:.2f}"
              for sd, r, c in zip(args.seeds, runs, closed, strict=True)]
    lines.append(f"\nGap closed: {np.mean(closed):.2f} +- {np.std(closed):.2f} (mean +- std over seeds).")
    ft = [round(r[keys[2]]["finetune_s"]) for r in runs]
    lines.append(f"\nFine-tuning wall time per seed: {ft} s; total {out['wall_time_s']:.0f} s.")
    write_results(stem, out, "\n".join(lines))
    return out


if __name__ == "__main__":
    main()
