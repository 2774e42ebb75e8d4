"""Discriminator guidance toy experiment (thesis "Boosting methods for refining diffusion models", 2024, sec. 3.4.1,
Figs. 3.1-3.3): J_CE (Kim et al. 2023) vs J_MSE vs J_MSE + gamma J_CE on two 2-D Gaussian mixtures.

P (target): four equal modes.  P~ (the "pretrained model"): the same means, wrong weights (one mode nearly missing,
3%) and wider components.  Both have exact diffused scores (``scorelab.analytic``), so the optimal correction
grad log r* = grad log p_t - grad log p~_t is known.  The pretrained model is the exact P~ model; its "generated
samples" are drawn with Heun (50 NFE) and cached.  Each discriminator (``nets.VectorHead``) is trained on n data and
n generated points; refined samples come from Euler-Maruyama (200 steps, SubVP, from the prior) on s~ + grad l_phi.

Regimes: ``standard`` (n = 5000, 2000 steps) and ``overfit`` (n = 64, 6000 steps of a larger head): the over-fitting
regime of Thm. 6, where J_CE on the training points keeps falling while the refined samples get worse.

Metrics (mean +- std over 3 seeds): gradient error sqrt(E_{P_t} ||grad log r* - grad l_phi||^2) across t (Fig. 3.1);
exact W2 to P (POT, 2000 vs 2000 fresh points; two-sample floor reported); mode coverage and mode-weight TV; held-out
J_CE and J_MSE.  Training curves: train / held-out J_CE and W2 of refined samples (1000 points, 100 steps).
Anchor: the thesis' qualitative claim (Fig. 3.1/3.3: d_CE has a poor gradient and misses a mode, d_MSE does not).

    python benchmarks/dg_toy.py --quick        # 1 seed, short training (minutes)
    python benchmarks/dg_toy.py                # 3 seeds, full protocol
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

from scorelab.analytic import GaussianMixture
from scorelab.finetune.discriminator import (
    DiscriminatorConfig,
    MixtureLogRatio,
    ce_terms,
    generate_samples,
    gradient_error,
    make_discriminator,
    mse_terms,
    train_discriminator,
)
from scorelab.guidance import DiscriminatorGuidance
from scorelab.metrics import mode_stats, two_sample_floor, w2_exact
from scorelab.plotting import scatter_panels
from scorelab.processes import SubVP
from scorelab.samplers import SAMPLERS
from scorelab.schedules import grid_for_nfe

RESULTS = Path(__file__).parent / "results"
CACHE = Path(tempfile.gettempdir()) / "scorelab_dg_toy_cache"
PROCESS = SubVP()
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
P = GaussianMixture([1.0, 1.0, 1.0, 1.0], MEANS, 0.08)
P_TILDE = GaussianMixture([0.4, 0.3, 0.27, 0.03], MEANS, 0.14)
T_GRID = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
OBJECTIVES = {"ce": dict(objective="ce"), "mse": dict(objective="mse"), "mse+ce": dict(objective="mse+ce", gamma=0.1)}
REGIMES = {
    "standard": dict(n=5000, steps=2000, quick_steps=400, head=dict(width=128, depth=2), batch=256),
    "overfit": dict(n=64, steps=6000, quick_steps=1500, head=dict(width=256, depth=3), batch=64),
}


def refined_samples(disc, n: int, steps: int, seed: int) -> torch.Tensor:
    """Euler-Maruyama from the prior on s~ + grad l (disc None: the unguided pretrained model)."""
    base = P_TILDE.as_model(PROCESS)
    model = base if disc is None else DiscriminatorGuidance(base, disc, scale=1.0)
    ts, _ = grid_for_nfe("euler_maruyama", PROCESS, steps)
    g = torch.Generator().manual_seed(10_000 + seed)
    x_T = PROCESS.prior_sample((n, 2), generator=g)
    with torch.no_grad():
        return SAMPLERS["euler_maruyama"].fn(model, x_T, ts.float(), generator=g, progress=False)


def diffused(mix: GaussianMixture, n: int, seed: int, t=None):
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(n, g, dtype=torch.float32)
    t = (0.01 + 0.99 * torch.rand(n, generator=g)) if t is None else torch.full((n,), float(t))
    x_t, eps = PROCESS.marginal_sample(x0, t, g)
    return x_t, t, eps


def held_out_losses(disc, x_ce_real, x_ce_fake, mse_draw) -> dict:
    (xr, tr), (xf, tf) = x_ce_real, x_ce_fake
    a, b = ce_terms(disc, xr, tr, xf, tf)
    x_t, t, eps = mse_draw
    mse = mse_terms(disc, P_TILDE.as_model(PROCESS), x_t, t, eps, create_graph=False)
    return {"ce": float((a.mean() + b.mean()).detach()), "mse": float(mse.mean())}


def grad_error_curve(disc, oracle, n: int = 1000) -> list[float]:
    """sqrt(E_{P_t} ||grad log r* - grad l||^2) at each t of T_GRID (disc None: the blind d = 1/2)."""
    out = []
    for i, t in enumerate(T_GRID):
        x_t, _, _ = diffused(P, n, 500 + i, t)
        d = (lambda x, s: 0.0 * x.sum(1)) if disc is None else disc
        out.append(float(gradient_error(d, oracle, x_t, t).pow(2).mean().sqrt()))
    return out


def sample_metrics(x: torch.Tensor, seed: int) -> dict:
    ref = P.sample(x.shape[0], torch.Generator().manual_seed(20_000 + seed))
    ms = mode_stats(x, P)
    return {"w2": w2_exact(x, ref), "coverage": ms["coverage"], "mode_tv": ms["tv"],
            "outliers": ms["outlier_fraction"], "weights": [float(w) for w in ms["weights"]]}


def train_set(regime: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x_real = P.sample(regime["n"], torch.Generator().manual_seed(seed), dtype=torch.float32)
    x_fake = generate_samples(P_TILDE.as_model(PROCESS), regime["n"], (2,), sampler="heun", nfe=50, seed=seed,
                              cache_dir=CACHE, progress=False)
    return x_real, x_fake


def run_one(regime_name: str, obj: str, seed: int, args) -> dict:
    regime = REGIMES[regime_name]
    oracle = MixtureLogRatio(P, P_TILDE, PROCESS)
    x_real, x_fake = train_set(regime, seed)
    rep = max(1, 4000 // regime["n"])  # train J_CE: every training point under `rep` fixed noise draws
    g = torch.Generator().manual_seed(7)
    t_r, t_f = (0.01 + 0.99 * torch.rand(rep * regime["n"], generator=g) for _ in range(2))
    train_ce = ((PROCESS.marginal_sample(x_real.repeat(rep, 1), t_r, g)[0], t_r),
                (PROCESS.marginal_sample(x_fake.repeat(rep, 1), t_f, g)[0], t_f))
    held_ce = (diffused(P, 4000, 100 + seed)[:2], diffused(P_TILDE, 4000, 200 + seed)[:2])
    held_mse = diffused(P, 4000, 300 + seed)

    def evaluate(step, disc):
        return {"step": step, "train_ce": held_out_losses(disc, *train_ce, held_mse)["ce"],
                **{f"held_{k}": v for k, v in held_out_losses(disc, *held_ce, held_mse).items()},
                "w2": sample_metrics(refined_samples(disc, 1000, 100, seed), seed)["w2"]}

    steps = regime["quick_steps"] if args.quick else regime["steps"]
    cfg = DiscriminatorConfig(**OBJECTIVES[obj], steps=steps, batch_size=regime["batch"], lr=1e-3, seed=seed,
                              log_every=max(1, steps // 20))
    torch.manual_seed(seed)
    disc = make_discriminator((2,), PROCESS, **regime["head"])
    res = train_discriminator(disc, P_TILDE.as_model(PROCESS), x_real, x_fake, cfg, progress=args.progress,
                              callback=evaluate, eval_every=max(1, steps // 8))
    x = refined_samples(disc, args.n_eval, 200, seed)
    return {"regime": regime_name, "objective": obj, "seed": seed, "train_wall_s": res.wall_s,
            "grad_error": grad_error_curve(disc, oracle), **sample_metrics(x, seed),
            **{f"held_{k}": v for k, v in held_out_losses(disc, *held_ce, held_mse).items()},
            "curve": res.evaluations, "history": res.history, "_samples": x}


def references(args) -> dict:
    oracle = MixtureLogRatio(P, P_TILDE, PROCESS)
    out = {}
    for name, disc in (("pretrained (no guidance)", None), ("exact correction", oracle)):
        runs = [sample_metrics(refined_samples(disc, args.n_eval, 200, s), s) for s in range(args.seeds)]
        out[name] = {k: [r[k] for r in runs] for k in ("w2", "coverage", "mode_tv")}
        out[name]["grad_error"] = grad_error_curve(None, oracle) if disc is None else [0.0] * len(T_GRID)
    floor = two_sample_floor(P, args.n_eval, w2_exact, n_repeats=5)
    return {"methods": out, "w2_floor": {"mean": floor["mean"], "std": floor["std"]}}


def ms(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def markdown(runs: list[dict], refs: dict, args, wall: float) -> str:
    fl = refs["w2_floor"]
    lines = [f"# Discriminator guidance, toy (2-D mixtures, SubVP), {args.seeds} seed(s)"
             f"{' --quick' if args.quick else ''}",
             "", f"W2 two-sample floor (n={args.n_eval}): {fl['mean']:.3f} ± {fl['std']:.3f}",
             "", "| regime | method | W2 to P | mode coverage | mode-weight TV | grad err (t=0.05) | grad err (t=0.3) "
             "| held-out J_CE | held-out J_MSE |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in refs["methods"].items():
        lines.append(f"| — | {name} | {ms(m['w2'])} | {ms(m['coverage'])} | {ms(m['mode_tv'])} | "
                     f"{m['grad_error'][2]:.3f} | {m['grad_error'][5]:.3f} | | |")
    for regime in REGIMES:
        for obj in OBJECTIVES:
            rs = [r for r in runs if r["regime"] == regime and r["objective"] == obj]
            if rs:
                lines.append(
                    f"| {regime} | DG {obj} | {ms([r['w2'] for r in rs])} | {ms([r['coverage'] for r in rs])} | "
                    f"{ms([r['mode_tv'] for r in rs])} | {ms([r['grad_error'][2] for r in rs])} | "
                    f"{ms([r['grad_error'][5] for r in rs])} | {ms([r['held_ce'] for r in rs])} | "
                    f"{ms([r['held_mse'] for r in rs])} |")
    lines += ["", "Over-fitting curves (mean over seeds; step: train J_CE / held-out J_CE / W2 of refined samples):",
              ""]
    for regime in REGIMES:
        for obj in OBJECTIVES:
            rs = [r for r in runs if r["regime"] == regime and r["objective"] == obj]
            if rs:
                pts = [f"{c['step']}: {np.mean([r['curve'][i]['train_ce'] for r in rs]):.3f} / "
                       f"{np.mean([r['curve'][i]['held_ce'] for r in rs]):.3f} / "
                       f"{np.mean([r['curve'][i]['w2'] for r in rs]):.3f}" for i, c in enumerate(rs[0]["curve"])]
                lines.append(f"- {regime}, {obj}: " + "; ".join(pts))
    lines += ["", f"Wall time {wall:.0f} s. Command: `python benchmarks/dg_toy.py{' --quick' if args.quick else ''}`"]
    return "\n".join(lines)


def plots(runs: list[dict], refs: dict, stem: str) -> list[str]:
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, len(REGIMES), figsize=(6 * len(REGIMES), 4), squeeze=False)
    for ax, regime in zip(axes[0], REGIMES, strict=True):
        ax.plot(T_GRID, refs["methods"]["pretrained (no guidance)"]["grad_error"], "k--", label="blind d = 1/2")
        for obj in OBJECTIVES:
            e = np.array([r["grad_error"] for r in runs if r["regime"] == regime and r["objective"] == obj])
            if len(e):
                ax.errorbar(T_GRID, e.mean(0), yerr=e.std(0), marker="o", ms=3, capsize=2, label=f"DG {obj}")
        ax.set(xscale="log", yscale="log", xlabel="t", ylabel="sqrt E ||grad log r* - grad log r_phi||^2",
               title=f"gradient error ({regime})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    paths.append(_save(fig, RESULTS / f"{stem}_grad_error.png"))
    fig, axes = plt.subplots(1, 2 * len(REGIMES), figsize=(5 * 2 * len(REGIMES), 3.6), squeeze=False)
    for k, regime in enumerate(REGIMES):
        for j, key in enumerate(("train_ce", "w2")):
            ax = axes[0, 2 * k + j]
            for obj in OBJECTIVES:
                rs = [r for r in runs if r["regime"] == regime and r["objective"] == obj]
                if rs and (key != "train_ce" or obj != "mse"):
                    steps = [c["step"] for c in rs[0]["curve"]]
                    ax.plot(steps, np.mean([[c[key] for c in r["curve"]] for r in rs], 0), marker="o", ms=3,
                            label=f"DG {obj}")
            ax.set(xlabel="training step", ylabel=key, title=f"{regime}: {key}")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    paths.append(_save(fig, RESULTS / f"{stem}_overfit.png"))
    return paths


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, short training")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    refs = references(args)
    runs = []
    for regime in REGIMES:
        for obj in OBJECTIVES:
            for seed in range(args.seeds):
                runs.append(run_one(regime, obj, seed, args))
                r = runs[-1]
                print(f"{regime:8s} {obj:7s} seed {seed}: W2 {r['w2']:.3f} TV {r['mode_tv']:.3f} "
                      f"cov {r['coverage']:.2f} held CE {r['held_ce']:.3f} ({r['train_wall_s']:.0f} s)", flush=True)
    stem = "dg_toy_quick" if args.quick else "dg_toy"
    s0 = {f"{r['regime']} {r['objective']}": r["_samples"] for r in runs if r["seed"] == 0}
    panels = {"target P": P.sample(args.n_eval, torch.Generator().manual_seed(0)),
              "pretrained P~": refined_samples(None, args.n_eval, 200, 0),
              "exact correction": refined_samples(MixtureLogRatio(P, P_TILDE, PROCESS), args.n_eval, 200, 0), **s0}
    pngs = plots(runs, refs, stem) + [scatter_panels(panels, str(RESULTS / f"{stem}_samples.png"), ncols=5)]
    wall = time.perf_counter() - t0
    md = markdown(runs, refs, args, wall)
    out = {"benchmark": "dg_toy", "args": vars(args), "t_grid": T_GRID, "references": refs,
           "runs": [{k: v for k, v in r.items() if k != "_samples"} for r in runs], "wall_s": wall, "plots": pngs,
           "torch": torch.__version__, "python": platform.python_version(),
           "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text(md + "\n")
    print(md)
    return out


if __name__ == "__main__":
    main()
