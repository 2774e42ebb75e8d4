"""f-Restart (thesis ch. 4, Alg. 7) against the ODE, SDE and tuned restart samplers at equal NFE.

Target: a 10-mode 2-D Gaussian mixture (ring of radius 3, std 0.15), VP process.  Two models:

* ``net``: the thesis' toy, an MLP score network trained (DSM) on samples of 7 of the 10 modes only, so the model
  carries an approximation error that no sampler can remove completely;
* ``oracle``: the exact mixture scores (``core.analytic``): every remaining error is sampling error.

Phase 1 reproduces the thesis' two failure modes with its settings (fixed-length episodes L = 2T, no budget, f = KL,
eq. 4.7 without centring, sampled actions): the collapse to "always Noise", and the flip to "always ODE" under a
linear time weighting w(t) = 1 - t/t_max (shaping -beta w(t) on the per-state signal, beta = 3).  Phase 2 compares
at an NFE budget N: the ODE alone (DPM-Solver-1 = DDIM(eta = 0), the step f-Restart uses, and Heun) with N
evaluations, Euler-Maruyama (SDE) with N, restart (Xu et al. 2023; Heun inside) with (K, n_restart, interval, grid)
tuned on the dev seed 0 by MMD^2, and f-Restart on a T-step DPM-Solver-1 grid (T evaluations without Noise) with the
budget N, in four variants: ``base`` (terminate at t = 0, budget mask, visitation-centred f-PG, f in {KL, JS} chosen
on the dev seed 0 by MMD^2), the thesis' future-work ablations ``markov`` (l / L and remaining budget in the state),
``tmax`` (Noise only into sigma_hat <= 1), ``shaped`` (a Lagrange multiplier keeps E[NFE] at (T + N) / 2).
Metrics on 4000 samples: unbiased MMD^2 to the exact law (random-feature kernel, ``mmd2_to_mixture_by_bandwidth``;
0 = exact), sliced W2 against an exact sample (floor: two exact samples), mode-weight TV.  Held-out seeds 1..S
(policy training and sampling).  The figure shows the learned P(Noise) per grid level.

``--digits`` runs the image setting instead (results/f_restart_digits.{md,json}): scikit-learn digits (8x8), the
under-trained VP UNet of ``dg_digits.py`` (``--digits-pretrain-steps`` updates, cached under /tmp by
``dg_digits.pretrained_model``), the same four samplers at NFE N (restart tuned on the dev seed 0 by FID-digits over
``DIGITS_RESTART_GRID``; f-Restart ``base`` and ``tmax`` with f = KL, ``--digits-iterations`` x ``--digits-batch``
trajectories, an ``ImageHead`` discriminator with 16 base channels), FID-digits (scorelab's digits-CNN features, not
Inception) of ``--digits-n`` samples against all 1797 digits, held-out seeds 1..S, paired with tuned restart.

Command: python benchmarks/f_restart.py            (about 10-20 CPU-minutes)
         python benchmarks/f_restart.py --digits   (about 10 CPU-minutes)
         python benchmarks/f_restart.py --quick    (smoke run; set SCORELAB_BENCH_RESULTS to keep results/ clean)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scorelab.core.analytic import GaussianMixture, ring_mixture
from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import VP
from scorelab.core.schedules import t_from_sigma_hat
from scorelab.evaluation.metrics import mmd2_to_mixture_by_bandwidth, mode_stats, sliced_w2, sliced_w2_noise_floor
from scorelab.finetune.f_restart import FRestartConfig, sample_f_restart, train_f_restart
from scorelab.nets import MLP
from scorelab.samplers.budget import sample
from scorelab.training.loop import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, heldout_seeds, mean_std, paired, table, write_results  # noqa: E402

MIX = ring_mixture(10, 3.0, 0.15)
SUBSET = 7
N_EVAL = 4000
RESTART_GRID = [(K, nr, lo, hi, grid) for K in (1, 2) for nr in (1, 2) for grid in ("karras", "uniform_log_snr")
                for lo, hi in ((0.06, 0.3), (0.1, 0.6), (0.2, 1.0), (0.3, 2.0), (0.05, 1.5))]
SAMPLER = "dpm_solver_1"


def train_net(steps: int) -> NetworkModel:
    """The thesis' toy model: an eps-MLP trained on the first ``SUBSET`` modes only (seed 0)."""
    sub = GaussianMixture(torch.ones(SUBSET), MIX.means[:SUBSET], MIX.covs[:SUBSET])
    data = sub.sample(20_000, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    model = NetworkModel(MLP(2, width=128, depth=3), VP(), "eps")
    res = train(model, data, TrainConfig(steps=steps, batch_size=256, lr=2e-3, ema_decay=0.995), progress=False)
    return res.ema_model.eval().requires_grad_(False)


def metrics(x: torch.Tensor, seed: int) -> dict:
    """MMD^2 to the exact law, sliced W2 to an exact sample, mode TV."""
    x = x.detach().double()
    ref = MIX.sample(N_EVAL, torch.Generator().manual_seed(10_000 + seed))
    return {"mmd2": mmd2_to_mixture_by_bandwidth(x, MIX)["mmd2"], "sw2": sliced_w2(x, ref, 500, seed=seed),
            "tv": mode_stats(x, MIX)["tv"]}


def baseline(model, sampler: str, nfe: int, seed: int, options: dict | None = None, grid: str | None = None,
             final_zero: bool = False) -> dict:
    """``budget.sample`` at NFE ``nfe`` -> metrics + measured NFE."""
    x, info = sample(model, sampler, nfe, N_EVAL, shape=(2,), seed=1000 + seed, options=options, grid=grid,
                     final_zero=final_zero)
    return {**metrics(x, seed), "nfe": info["nfe_measured_per_batch"]}


def restart_options(lo: float, hi: float, K: int, nr: int) -> dict:
    """Restart options for the interval [lo, hi] in sigma_hat units."""
    p = VP()
    return {"K": K, "n_restart": nr, "t_min_r": float(t_from_sigma_hat(p, torch.tensor(lo))),
            "t_max_r": float(t_from_sigma_hat(p, torch.tensor(hi)))}


def tune_restart(model, nfe: int) -> dict:
    """(K, n_restart, interval) with the least MMD^2 on the dev seed 0 under the budget ``nfe``."""
    best = None
    for K, nr, lo, hi, grid in RESTART_GRID:
        try:
            r = baseline(model, "restart", nfe, 0, restart_options(lo, hi, K, nr), grid)
        except ValueError:  # budget too small for this (K, n_restart)
            continue
        if best is None or r["mmd2"] < best[0]:
            best = (r["mmd2"], {"K": K, "n_restart": nr, "sigma_hat": [lo, hi], "grid": grid})
    return best[1]


def frestart_config(variant: str, args, seed: int, f: str = "kl") -> FRestartConfig:
    """The f-Restart settings of a variant (module docstring)."""
    base = dict(sampler=SAMPLER, steps=args.steps, f=f, iterations=args.iterations, batch_size=args.batch,
                disc_steps=20, disc_batch=256, seed=seed, data_n=10_000, ckpt_every=0)
    if variant in ("thesis", "thesis_w"):
        return FRestartConfig(**base, episode="fixed", episode_length=2 * args.steps, center="none",
                              time_weight="linear" if variant == "thesis_w" else "none", time_weight_scale=3.0)
    extra = {"markov": {"markov": True},
             "tmax": {"noise_t_max": float(t_from_sigma_hat(VP(), torch.tensor(1.0)))},
             "shaped": {"nfe_target": (args.steps + args.nfe) / 2}}.get(variant, {})
    return FRestartConfig(**base, nfe_budget=args.nfe, **extra)


def run_frestart(model, data: torch.Tensor, variant: str, args, seed: int, f: str = "kl") -> dict:
    """Train a policy (seed) and score its greedy samples."""
    t0 = time.process_time()
    res = train_f_restart(model, data, frestart_config(variant, args, seed, f), progress=False)
    x, info = sample_f_restart(res.env, res.policy, N_EVAL, seed=1000 + seed)
    out = {**metrics(x, seed), "nfe": info["nfe_mean"], "nfe_max": info["nfe_max"], "p_noise": info["p_noise"],
           "mix": info["mix"], "reached_zero": info["reached_zero"], "cpu_s": time.process_time() - t0,
           "train_mix_last": res.history[-1]["mix"], "train_p_noise": [h["p_noise"] for h in res.history]}
    print(f"  {variant:8s} {f} seed {seed}: mmd2 {out['mmd2']:.5f} nfe {out['nfe']:.1f} p_noise {out['p_noise']} "
          f"({out['cpu_s']:.0f} cpu-s)", flush=True)
    return out


def failure_modes(model, data, args) -> dict:
    """Phase 1: the thesis' settings, P(Noise) over training (dev seed 0)."""
    out = {}
    for variant in ("thesis", "thesis_w"):
        res = train_f_restart(model, data, frestart_config(variant, args, 0), progress=False)
        out[variant] = {"p_noise": [h["p_noise"] for h in res.history], "mix_last": res.history[-1]["mix"]}
        print(f"  {variant}: P(noise) first {out[variant]['p_noise'][0]:.2f} last {out[variant]['p_noise'][-1]:.2f}",
              flush=True)
    return out


def run_setting(name: str, model, data, args, seeds: list[int]) -> dict:
    """Phases 1-2 on one model."""
    print(f"[{name}] failure modes", flush=True)
    fm = failure_modes(model, data, args)
    tuned = tune_restart(model, args.nfe)
    print(f"[{name}] tuned restart: {tuned}", flush=True)
    dev = {f: run_frestart(model, data, "base", args, 0, f)["mmd2"] for f in ("kl", "js")}
    f_best = min(dev, key=dev.get)
    rows: dict[str, dict[int, dict]] = {m: {} for m in ("ode", "heun", "sde", "restart", *args.variants)}
    opts = restart_options(*tuned["sigma_hat"], tuned["K"], tuned["n_restart"])
    for s in seeds:
        rows["ode"][s] = baseline(model, SAMPLER, args.nfe, s, final_zero=True)
        rows["heun"][s] = baseline(model, "heun", args.nfe, s)
        rows["sde"][s] = baseline(model, "euler_maruyama", args.nfe, s, final_zero=True)
        rows["restart"][s] = baseline(model, "restart", args.nfe, s, opts, tuned["grid"])
        for v in args.variants:
            rows[v][s] = run_frestart(model, data, v, args, s, f_best)
    table_rows = {m: {str(s): r for s, r in d.items()} for m, d in rows.items()}
    return {"failure_modes": fm, "tuned_restart": tuned, "f_dev_mmd2": dev, "f": f_best, "rows": table_rows}


def summary_md(name: str, res: dict, args) -> list[str]:
    """Markdown of one setting: the failure modes, the metric table and the paired comparison with restart."""
    fm, rows = res["failure_modes"], res["rows"]
    lines = [f"### {name}", "", "Failure modes with the thesis' settings (fixed L = 2T, no budget, KL, eq. 4.7, dev "
             "seed 0): P(Noise) over free decisions, first -> last iteration:", ""]
    for v, label in (("thesis", "no shaping"), ("thesis_w", "linear w(t), beta = 3")):
        p, mix = fm[v]["p_noise"], fm[v]["mix_last"]
        lines.append(f"- {label}: {p[0]:.2f} -> {p[-1]:.2f}; last iteration per level k = 0..T-1 (t_max first; '-': "
                     f"no free decision): {'/'.join('-' if q is None else f'{q:.2f}' for q in mix)}")
    t = res["tuned_restart"]
    lines += ["", f"Tuned restart (dev seed 0, by MMD^2): K = {t['K']}, n_restart = {t['n_restart']}, sigma_hat "
              f"interval {t['sigma_hat']}, grid {t['grid']}.  f-Restart's f on the dev seed 0 (MMD^2): "
              + ", ".join(f"{k} {v:.5f}" for k, v in res["f_dev_mmd2"].items()) + f" -> {res['f']}.", ""]
    body = []
    for m, d in rows.items():
        v = list(d.values())
        floor = f" (floor {args.sw2_floor:.4f})" if m == "ode" else ""
        p_noise = "" if "p_noise" not in v[0] else mean_std([r["p_noise"] or 0.0 for r in v])["mean"]
        body.append([m, *(f"{mean_std([r[k] for r in v])['mean']:.5f} ± {mean_std([r[k] for r in v])['std']:.5f}"
                          for k in ("mmd2", "sw2", "tv")), f"{np.mean([r['nfe'] for r in v]):.1f}",
                     "" if p_noise == "" else f"{p_noise:.2f}"])
        body[-1][2] += floor
    lines += table(["method", "MMD^2 (exact law)", "sliced W2", "mode TV", "NFE (mean)", "P(Noise)"], body)
    lines += ["", "Paired over held-out seeds, d = MMD^2(restart) - MMD^2(method) (> 0: method better):", ""]
    rs = rows["restart"]
    comp = []
    for m in [*args.variants, "ode", "heun", "sde"]:
        pd = paired([rs[s]["mmd2"] - rows[m][s]["mmd2"] for s in sorted(rs)])
        comp.append([m, f"{pd['mean']:+.5f} ± {pd['std']:.5f}", f"{pd['p_one_sided']:.3g}", f"{pd['wins']}/"
                     f"{pd['n_seeds']}"])
    return lines + table(["method", "d mean ± sd", "one-sided p", "seeds won"], comp) + [""]


def plot(results: dict, args, path: Path) -> None:
    """P(Noise) per grid level (greedy samples, mean over seeds) for each variant and setting, and the failure
    modes' P(Noise) over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results) + 1, figsize=(4.2 * (len(results) + 1), 3.4))
    for ax, (name, res) in zip(axes, results.items(), strict=False):
        for v in args.variants:
            mixes = np.array([[np.nan if p is None else p for p in r["mix"]] for r in res["rows"][v].values()])
            ax.plot(range(args.steps), np.nanmean(mixes, 0), marker="o", label=v)
        ax.set(title=f"{name}: learned P(Noise) (greedy)", xlabel="grid level k (0 = t_max)", ylabel="P(Noise)",
               ylim=(-0.05, 1.05))
        ax.legend(fontsize=7)
    ax = axes[-1]
    for name, res in results.items():
        for v, ls in (("thesis", "-"), ("thesis_w", "--")):
            ax.plot(res["failure_modes"][v]["p_noise"], ls, label=f"{name} {v}")
    ax.set(title="thesis settings: P(Noise) in training", xlabel="iteration", ylim=(-0.05, 1.05))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- digits --------------------------------------------------------------------------------------------------------
DIGITS_SHAPE = (1, 8, 8)
DIGITS_RESTART_GRID = [(K, 1, lo, hi, grid) for K in (1, 2) for grid in ("karras", "uniform_log_snr")
                       for lo, hi in ((0.1, 0.6), (0.3, 2.0), (0.05, 1.5))]


def digits_fid(x: torch.Tensor, ref_feats: torch.Tensor) -> float:
    """FID-digits of samples ``[n, 1, 8, 8]`` (clamped to [-1, 1]) against the features of the 1797 digits."""
    from scorelab.evaluation.metrics import digits_features, fid_from_features

    return fid_from_features(ref_feats, digits_features(x.detach().float().clamp(-1, 1)))


def digits_baseline(model, sampler: str, args, seed: int, ref_feats: torch.Tensor, options: dict | None = None,
                    grid: str | None = None, final_zero: bool = False) -> dict:
    """``budget.sample`` of ``--digits-n`` images at NFE ``--nfe`` -> FID-digits + measured NFE."""
    x, info = sample(model, sampler, args.nfe, args.digits_n, shape=DIGITS_SHAPE, seed=1000 + seed, options=options,
                     grid=grid, final_zero=final_zero)
    return {"fid": digits_fid(x, ref_feats), "nfe": info["nfe_measured_per_batch"]}


def digits_tune_restart(model, args, ref_feats: torch.Tensor) -> dict:
    """(K, interval, grid) of ``DIGITS_RESTART_GRID`` with the least FID-digits on the dev seed 0 at NFE ``--nfe``."""
    best, tried = None, {}
    for K, nr, lo, hi, grid in DIGITS_RESTART_GRID:
        try:
            r = digits_baseline(model, "restart", args, 0, ref_feats, restart_options(lo, hi, K, nr), grid)
        except ValueError:  # budget too small for this K
            continue
        cfg = {"K": K, "n_restart": nr, "sigma_hat": [lo, hi], "grid": grid}
        tried[f"K{K} [{lo}, {hi}] {grid}"] = r["fid"]
        if best is None or r["fid"] < best[0]:
            best = (r["fid"], cfg)
    return {**best[1], "dev_fid": tried}


def digits_frestart(model, data: torch.Tensor, variant: str, args, seed: int, ref_feats: torch.Tensor) -> dict:
    """A variant (f = KL) on digits, policy seed ``seed``; FID-digits of its greedy samples."""
    t0 = time.process_time()
    cfg = dataclasses.replace(frestart_config(variant, args, seed), iterations=args.digits_iterations,
                              batch_size=args.digits_batch, disc_width=16, data_n=data.shape[0])
    res = train_f_restart(model, data, cfg, progress=False)
    x, info = sample_f_restart(res.env, res.policy, args.digits_n, seed=1000 + seed, shape=DIGITS_SHAPE)
    out = {"fid": digits_fid(x, ref_feats), "nfe": info["nfe_mean"], "nfe_max": info["nfe_max"],
           "p_noise": info["p_noise"], "mix": info["mix"], "cpu_s": time.process_time() - t0,
           "train_p_noise": [h["p_noise"] for h in res.history]}
    print(f"  f-restart {variant} seed {seed}: FID-digits {out['fid']:.3f} nfe {out['nfe']:.2f} p_noise "
          f"{out['p_noise']} ({out['cpu_s']:.0f} cpu-s)", flush=True)
    return out


def run_digits(args) -> None:
    """The digits setting: train/load the UNet, tune restart, compare the four samplers on held-out seeds."""
    from dg_digits import pretrained_model

    from scorelab.data.images import load_digits
    from scorelab.evaluation.metrics import digits_features

    t0, c0 = time.time(), time.process_time()
    data, _ = load_digits()
    ref_feats = digits_features(data)
    model = pretrained_model(args.digits_pretrain_steps, progress=False).eval().requires_grad_(False)
    print(f"[digits] model ready ({time.process_time() - c0:.0f} cpu-s)", flush=True)
    tuned = digits_tune_restart(model, args, ref_feats)
    print(f"[digits] tuned restart: {tuned}", flush=True)
    opts = restart_options(*tuned["sigma_hat"], tuned["K"], tuned["n_restart"])
    fr = [f"f-restart {v}" for v in args.digits_variants]
    rows: dict[str, dict[str, dict]] = {m: {} for m in ("ode", "sde", "restart", *fr)}
    for s in heldout_seeds(1, args.seeds):
        rows["ode"][str(s)] = digits_baseline(model, SAMPLER, args, s, ref_feats, final_zero=True)
        rows["sde"][str(s)] = digits_baseline(model, "euler_maruyama", args, s, ref_feats, final_zero=True)
        rows["restart"][str(s)] = digits_baseline(model, "restart", args, s, ref_feats, opts, tuned["grid"])
        for v in args.digits_variants:
            rows[f"f-restart {v}"][str(s)] = digits_frestart(model, data, v, args, s, ref_feats)
    wall, cpu = time.time() - t0, time.process_time() - c0
    res = {"tuned_restart": tuned, "rows": rows}
    write_results("f_restart_digits" + ("_quick" if args.quick else ""),
                  {"config": dict(vars(args)), "results": res, "wall_s": wall, "cpu_s": cpu},
                  "\n".join(digits_md(res, args, wall, cpu)))


def digits_md(res: dict, args, wall: float, cpu: float) -> list[str]:
    """Markdown of the digits setting: the FID-digits table and the paired comparison with tuned restart."""
    rows, t = res["rows"], res["tuned_restart"]
    labels = {"ode": "ODE (DPM-Solver-1)", "sde": "SDE (Euler-Maruyama)", "restart": "restart (tuned)",
              **{f"f-restart {v}": f"f-Restart {v} (KL, T = {args.steps})" for v in args.digits_variants}}
    lines = [f"# f-Restart vs restart on digits at equal NFE (N = {args.nfe})", "",
             f"Under-trained VP UNet of dg_digits.py ({args.digits_pretrain_steps} steps); {args.digits_n} samples "
             f"per seed vs the 1797 digits (FID-digits: digits-CNN features, not Inception); held-out seeds "
             f"1..{args.seeds}; f-Restart {args.digits_iterations} iterations x {args.digits_batch} trajectories.  "
             f"Wall {wall:.0f} s, CPU {cpu:.0f} s.", "",
             f"Tuned restart (dev seed 0, by FID-digits over {len(t['dev_fid'])} settings): K = {t['K']}, sigma_hat "
             f"interval {t['sigma_hat']}, grid {t['grid']}.", ""]
    body = []
    for m, d in rows.items():
        v = list(d.values())
        p = "" if "p_noise" not in v[0] else f"{mean_std([r['p_noise'] or 0.0 for r in v])['mean']:.2f}"
        fid = mean_std([r["fid"] for r in v])
        body.append([labels[m], f"{fid['mean']:.3f} ± {fid['std']:.3f}", f"{np.mean([r['nfe'] for r in v]):.2f}", p])
    lines += table(["method", "FID-digits", "NFE (mean)", "P(Noise)"], body)
    lines += ["", "Learned P(Noise) per grid level k = 0..T-1 (t_max first; greedy samples, mean over seeds; '-': no "
              "free decision):", ""]
    for v in args.digits_variants:
        mixes = np.array([[np.nan if p is None else p for p in r["mix"]] for r in rows[f"f-restart {v}"].values()])
        lines.append(f"- {v}: " + "/".join("-" if np.isnan(q) else f"{q:.2f}" for q in np.nanmean(mixes, 0)))
    lines += ["", "Paired over held-out seeds, d = FID(restart) - FID(method) (> 0: method better):", ""]
    comp = []
    for m in (*(f"f-restart {v}" for v in args.digits_variants), "ode", "sde"):
        pd = paired([rows["restart"][s]["fid"] - rows[m][s]["fid"] for s in sorted(rows["restart"])])
        comp.append([labels[m], f"{pd['mean']:+.3f} ± {pd['std']:.3f}", f"{pd['p_one_sided']:.3g}",
                     f"{pd['wins']}/{pd['n_seeds']}"])
    return lines + table(["method", "d mean ± sd", "one-sided p", "seeds won"], comp) + [""]


def main(argv: list[str] | None = None) -> None:
    """Run both settings and write results/f_restart.{md,json,png}."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--steps", type=int, default=6, help="f-Restart grid steps T (DPM-Solver-1: T evaluations)")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--net-steps", type=int, default=4000)
    ap.add_argument("--variants", nargs="*", default=["base", "markov", "tmax", "shaped"])
    ap.add_argument("--settings", nargs="*", default=["net", "oracle"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--digits", action="store_true", help="run the digits setting only (module docstring)")
    ap.add_argument("--digits-pretrain-steps", type=int, default=300)
    ap.add_argument("--digits-n", type=int, default=500)
    ap.add_argument("--digits-iterations", type=int, default=30)
    ap.add_argument("--digits-batch", type=int, default=128)
    ap.add_argument("--digits-variants", nargs="*", default=["base", "tmax"])
    args = ap.parse_args(argv)
    if args.quick:
        global N_EVAL
        N_EVAL, args.iterations, args.batch, args.seeds, args.net_steps = 500, 2, 32, 1, 200
        args.digits_iterations, args.digits_batch, args.digits_pretrain_steps = 2, 32, 20
    torch.set_num_threads(1)
    if args.digits:
        return run_digits(args)
    t0, c0 = time.time(), time.process_time()
    data = MIX.sample(10_000, torch.Generator().manual_seed(0)).float()
    args.sw2_floor = sliced_w2_noise_floor(MIX, N_EVAL, n_repeats=3, n_projections=500)["mean"]
    models = {"net": lambda: train_net(args.net_steps), "oracle": lambda: MIX.as_model(VP())}
    results = {}
    for name in args.settings:
        results[name] = run_setting(name, models[name](), data, args, heldout_seeds(1, args.seeds))
    stem = "f_restart" + ("_quick" if args.quick else "")
    png = RESULTS / f"{stem}_mix.png"
    plot(results, args, png)
    wall, cpu = time.time() - t0, time.process_time() - c0
    md = [f"# f-Restart vs restart at equal NFE (N = {args.nfe}; f-Restart: DPM-Solver-1 on T = {args.steps} steps, "
          f"{args.steps} NFE without Noise)", "",
          f"10-mode ring (radius 3, std 0.15), VP; {N_EVAL} samples, held-out seeds 1..{args.seeds}, "
          f"{args.iterations} iterations x {args.batch} trajectories.  Wall {wall:.0f} s, CPU {cpu:.0f} s.", ""]
    for name, res in results.items():
        md += summary_md(name, res, args)
    md += [f"![learned action mix]({png.name})", ""]
    write_results(stem, {"config": {k: v for k, v in vars(args).items()}, "results": results,
                         "wall_s": wall, "cpu_s": cpu, "png": png.name}, "\n".join(md))


if __name__ == "__main__":
    main()
