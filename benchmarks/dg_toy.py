"""Discriminator guidance toy experiment (thesis "Boosting methods for refining diffusion models", 2024, sec. 3.4.1,
Figs. 3.1-3.3): J_CE (Kim et al. 2023) vs J_MSE vs J_MSE + gamma J_CE on two 2-D Gaussian mixtures.

P (target): four equal modes.  P~ (the "pretrained model"): the same means, wrong weights (one mode nearly missing,
3%) and wider components.  Both have exact diffused scores (``scorelab.core.analytic``), so the optimal correction
grad log r* = grad log p_t - grad log p~_t is known.  The pretrained model is the exact P~ model; its "generated
samples" are drawn with Heun (50 NFE) and cached.  Each discriminator (``nets.VectorHead``) is trained on n data and
n generated points; refined samples come from Euler-Maruyama (200 steps, SubVP) on s~ + grad l_phi.

Regimes: ``standard`` (n = 5000, 2000 steps) and ``overfit`` (n = 64 data and 64 generated points, 6000 steps of a
larger head): the over-fitting regime of Thm. 6, where J_CE on the training points keeps falling while the refined
samples get worse.  Sampling starts, as in the thesis, from target samples diffused to t_max (for SubVP at t = 1 this
is within alpha(1) ~ 7e-3 of the prior).  All models at one seed share x_T and the Brownian increments (common random
numbers), so differences between them are not sampling noise.

Metrics (mean +- std over 3 seeds): gradient error sqrt(E_{P_t} ||grad log r* - grad l_phi||^2) across t (Fig. 3.1);
exact W2 to P (POT, n_eval vs n_eval fresh points; the two-sample floor is reported); mode coverage and mode-weight
TV; held-out J_CE and J_MSE.  Training curves: train / held-out J_CE, held-out J_MSE, W2 of refined samples and their
RMS distance to the exact-correction samples drawn with the same random numbers (1000 points, 100 EM steps).
Anchor: the thesis' qualitative claim (Fig. 3.1/3.3: d_CE has a poor gradient and misses a mode, d_MSE does not;
Fig. 3.4: J_MSE of the CE-trained discriminator rises during training).

    python benchmarks/dg_toy.py --quick        # 1 seed, short training
    python benchmarks/dg_toy.py                # 3 seeds, full protocol, one process
    # what was run for results/dg_toy.* (6 processes on a shared 2-core CPU, then a merge):
    for s in 0 1 2; do
      python benchmarks/dg_toy.py --seed-list $s --part --regimes standard --standard-steps 1000 --n-curve 4 &
      python benchmarks/dg_toy.py --seed-list $s --part --regimes overfit --overfit-steps 3000 --n-curve 6 &
    done; wait
    python benchmarks/dg_toy.py --merge --standard-steps 1000 --overfit-steps 3000
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.core.processes import SubVP
from scorelab.evaluation.metrics import mode_stats, two_sample_floor, w2_exact
from scorelab.guidance.discriminator import (
    DiscriminatorConfig,
    MixtureLogRatio,
    ce_terms,
    generate_samples,
    gradient_error,
    make_discriminator,
    mse_terms,
    train_discriminator,
)
from scorelab.guidance.wrappers import DiscriminatorGuidance
from scorelab.plotting import scatter_panels
from scorelab.samplers import SAMPLERS
from scorelab.samplers.budget import grid_for_nfe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, write_json, write_results  # noqa: E402
from harness import fmt_mean_std as ms  # noqa: E402

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
    """Euler-Maruyama on s~ + grad l (disc None: the unguided pretrained model), started, as in the thesis (sec.
    3.4.1), from target samples diffused to t_max.  The generator depends on ``seed`` only, so every model at one
    seed sees the same x_T and Brownian increments (common random numbers: differences between models are not
    sampling noise)."""
    base = P_TILDE.as_model(PROCESS)
    model = base if disc is None else DiscriminatorGuidance(base, disc, scale=1.0)
    ts, _ = grid_for_nfe("euler_maruyama", PROCESS, steps)
    g = torch.Generator().manual_seed(10_000 + seed)
    x_T, _ = PROCESS.marginal_sample(P.sample(n, g, dtype=torch.float32), float(ts[0]), g)
    with torch.no_grad():
        return SAMPLERS["euler_maruyama"].fn(model, x_T, ts.float(), generator=g, progress=False)


def diffused(mix: GaussianMixture, n: int, seed: int, t=None):
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(n, g, dtype=torch.float32)
    t = (0.01 + 0.99 * torch.rand(n, generator=g)) if t is None else torch.full((n,), float(t))
    x_t, eps = PROCESS.marginal_sample(x0, t, g)
    return x_t, t, eps


CURVE_N, CURVE_STEPS = 1000, 100
CURVE_KEYS = ("train_ce", "held_ce", "held_mse", "w2", "rms_to_exact")
_EXACT: dict[int, torch.Tensor] = {}


def exact_samples(seed: int) -> torch.Tensor:
    """Training-curve reference: exact-correction samples with the same random numbers as ``refined_samples``."""
    if seed not in _EXACT:
        _EXACT[seed] = refined_samples(MixtureLogRatio(P, P_TILDE, PROCESS), CURVE_N, CURVE_STEPS, seed)
    return _EXACT[seed]


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

    x_exact = exact_samples(seed)

    def evaluate(step, disc):
        x = refined_samples(disc, CURVE_N, CURVE_STEPS, seed)
        return {"step": step, "train_ce": held_out_losses(disc, *train_ce, held_mse)["ce"],
                **{f"held_{k}": v for k, v in held_out_losses(disc, *held_ce, held_mse).items()},
                "w2": sample_metrics(x, seed)["w2"], "rms_to_exact": float((x - x_exact).pow(2).sum(1).mean().sqrt())}

    steps = regime["quick_steps"] if args.quick else regime["steps"]
    cfg = DiscriminatorConfig(**OBJECTIVES[obj], steps=steps, batch_size=regime["batch"], lr=1e-3, seed=seed,
                              log_every=max(1, steps // 20))
    torch.manual_seed(seed)
    disc = make_discriminator((2,), PROCESS, **regime["head"])
    res = train_discriminator(disc, P_TILDE.as_model(PROCESS), x_real, x_fake, cfg, progress=args.progress,
                              callback=evaluate, eval_every=max(1, steps // args.n_curve))
    x = refined_samples(disc, args.n_eval, 200, seed)
    return {"regime": regime_name, "objective": obj, "seed": seed, "train_wall_s": res.wall_s,
            "grad_error": grad_error_curve(disc, oracle), **sample_metrics(x, seed),
            **{f"held_{k}": v for k, v in held_out_losses(disc, *held_ce, held_mse).items()},
            "curve": res.evaluations, "history": res.history, "_samples": x}


def references(args) -> dict:
    """Unguided and exact-correction rows and the W2 two-sample floor (cached per n_eval and seed count)."""
    path = CACHE / f"references_n{args.n_eval}_seeds{args.seeds}.json"
    if path.is_file():
        return json.loads(path.read_text())
    oracle = MixtureLogRatio(P, P_TILDE, PROCESS)
    out = {}
    for name, disc in (("pretrained (no guidance)", None), ("exact correction", oracle)):
        runs = [sample_metrics(refined_samples(disc, args.n_eval, 200, s), s) for s in range(args.seeds)]
        out[name] = {k: [r[k] for r in runs] for k in ("w2", "coverage", "mode_tv")}
        out[name]["grad_error"] = grad_error_curve(None, oracle) if disc is None else [0.0] * len(T_GRID)
    floor = two_sample_floor(P, args.n_eval, w2_exact, n_repeats=5)
    refs = {"methods": out, "w2_floor": {"mean": floor["mean"], "std": floor["std"]}}
    write_json(path, refs, indent=None)
    return refs


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
    keys = ("train_ce", "held_ce", "held_mse", "w2", "rms_to_exact")
    lines += ["", "Training curves, first -> last evaluation (mean ± std over seeds; W2 and RMS to the "
              f"exact-correction samples on {CURVE_N} points, {CURVE_STEPS} EM steps, common random numbers):", "",
              "| regime | method | steps | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for regime in REGIMES:
        for obj in OBJECTIVES:
            rs = [r for r in runs if r["regime"] == regime and r["objective"] == obj]
            if rs:
                cells = [f"{ms([r['curve'][0][k] for r in rs])} -> {ms([r['curve'][-1][k] for r in rs])}"
                         for k in keys]
                lines.append(f"| {regime} | DG {obj} | {rs[0]['curve'][-1]['step']} | " + " | ".join(cells) + " |")
    lines += ["", "Curves (mean over seeds; step: train J_CE / held-out J_CE / held-out J_MSE / W2 / RMS to exact):",
              ""]
    for regime in REGIMES:
        for obj in OBJECTIVES:
            rs = [r for r in runs if r["regime"] == regime and r["objective"] == obj]
            if rs:
                pts = [f"{c['step']}: " + " / ".join(f"{np.mean([r['curve'][i][k] for r in rs]):.3f}" for k in keys)
                       for i, c in enumerate(rs[0]["curve"])]
                lines.append(f"- {regime}, {obj}: " + "; ".join(pts))
    lines += ["", f"Wall time {wall:.0f} s (summed over parts when run as parallel parts)."]
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
    fig, axes = plt.subplots(len(REGIMES), len(CURVE_KEYS), figsize=(4.5 * len(CURVE_KEYS), 3.6 * len(REGIMES)),
                             squeeze=False)
    for k, regime in enumerate(REGIMES):
        for j, key in enumerate(CURVE_KEYS):
            ax = axes[k, j]
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


def part_path(args, regime: str, seed: int) -> Path:
    return CACHE / f"part_{'quick' if args.quick else 'full'}_n{args.n_eval}_{regime}_s{seed}.json"


def run_seed(seed: int, regime: str, args) -> list[dict]:
    """Every objective in ``regime`` at one seed; seed 0's refined samples are cached for the scatter plot."""
    runs = []
    for obj in OBJECTIVES:
        r = run_one(regime, obj, seed, args)
        print(f"{regime:8s} {obj:7s} seed {seed}: W2 {r['w2']:.3f} TV {r['mode_tv']:.3f} cov {r['coverage']:.2f} "
              f"held CE {r['held_ce']:.3f} held MSE {r['held_mse']:.3f} ({r['train_wall_s']:.0f} s)", flush=True)
        if seed == 0:
            safetensors.torch.save_file({"x": r["_samples"].contiguous()},
                                        str(CACHE / f"samples_{regime}_{obj.replace('+', '_')}.safetensors"))
        runs.append({k: v for k, v in r.items() if k != "_samples"})
    return runs


def finish(runs: list[dict], args, wall: float) -> None:
    refs = references(args)
    stem = args.stem or ("dg_toy_quick" if args.quick else "dg_toy")
    s0 = {}
    for regime in REGIMES:
        for obj in OBJECTIVES:
            f = CACHE / f"samples_{regime}_{obj.replace('+', '_')}.safetensors"
            if f.is_file():
                s0[f"{regime} {obj}"] = safetensors.torch.load_file(str(f))["x"]
    panels = {"target P": P.sample(args.n_eval, torch.Generator().manual_seed(0)),
              "pretrained P~": refined_samples(None, args.n_eval, 200, 0),
              "exact correction": refined_samples(MixtureLogRatio(P, P_TILDE, PROCESS), args.n_eval, 200, 0), **s0}
    pngs = plots(runs, refs, stem) + [scatter_panels(panels, str(RESULTS / f"{stem}_samples.png"), ncols=5)]
    payload = {"benchmark": "dg_toy", "args": vars(args), "t_grid": T_GRID, "regimes": REGIMES,
               "references": refs, "runs": runs, "wall_s": wall, "plots": pngs}
    write_results(stem, payload, markdown(runs, refs, args, wall))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, short training")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--seed-list", type=int, nargs="*", default=None, help="run only these seeds")
    ap.add_argument("--part", action="store_true", help="write the runs to the cache (collect later with --merge)")
    ap.add_argument("--merge", action="store_true", help="collect the parts written with --part and report")
    ap.add_argument("--references-only", action="store_true", help="compute and cache the reference rows only")
    ap.add_argument("--regimes", nargs="*", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--standard-steps", type=int, default=None, help="override the standard regime's steps")
    ap.add_argument("--overfit-steps", type=int, default=None, help="override the overfit regime's steps")
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--n-curve", type=int, default=8, help="training-curve evaluations per run")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: best on a shared CPU)")
    ap.add_argument("--stem", default=None)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.seeds = args.seeds or (1 if args.quick else 3)
    seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in REGIMES:
        REGIMES[name]["steps"] = getattr(args, f"{name}_steps") or REGIMES[name]["steps"]
    if args.references_only:
        references(args)
        return
    if args.merge:
        paths = [part_path(args, r, s) for r in REGIMES for s in range(args.seeds)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            print(f"merging without the missing parts {missing}", flush=True)
        parts = [json.loads(p.read_text()) for p in paths if p.is_file()]
        finish([r for p in parts for r in p["runs"]], args, sum(p["wall_s"] for p in parts))
        return
    t0, runs = time.perf_counter(), []
    for seed in seeds:
        for regime in args.regimes:
            runs += run_seed(seed, regime, args)
            if args.part:
                write_json(part_path(args, regime, seed), {"runs": runs[-len(OBJECTIVES):],
                                                          "wall_s": time.perf_counter() - t0}, indent=None)
    if not args.part:
        finish(runs, args, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
