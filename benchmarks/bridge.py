"""Benchmark: Schrödinger bridges, DSB (IPF by mean matching) vs DSBM (IMF by bridge matching).

(1) Gaussian pairs N(0, S0) -> N(mu1, S1) in d = 2, 8, 32, Brownian reference sigma^2 = 1: relative Frobenius error
    of Cov(X_0, X_N) against the closed form (Janati et al. 2020) and W2 of each marginal (forward X_N vs target,
    backward X_0 vs source), per iteration and per CPU-second.  Affine step nets; the regression of every half-step
    is solved exactly (``solver=lstsq``), and in d = 8 also by Adam (the path every other net takes).  The errors are
    exact Gaussian moments of the learned affine chains (``closed_form.affine_chain_moments``): no sampling error in
    the measurement, only in the fit.
(2) Toy data <-> data (moons -> swiss roll at sigma^2 = 0.05, 8 Gaussians -> checkerboard at sigma^2 = 0.5), MLP
    nets: W2 of the pushed source to the target (exact LP on 1000 points) with its two-sample floor, and the transport
    cost E|X_0 - X_N|^2 against POT Sinkhorn's entropic-OT cost at reg 2 sigma^2 on the same points.
(3) data -> N(0, I) as a generative model at few steps (N = NFE = 10, VP reference with Var(X_N | X_0) = 0.9, so the
    reference does not reach N(0, I)): W2 of the backward samples (from N(0, I)) to the data, per iteration.  DSB's
    iteration 1 is the plain diffusion model with the same net and steps (B^1 = the reference's time reversal, De
    Bortoli et al. 2021, Sec. 3), so later iterations are compared with it at equal NFE.

    python benchmarks/bridge.py                 # all parts, held-out seeds 1, 2, 3 (~10 CPU-minutes)
    python benchmarks/bridge.py --quick         # smoke run (seconds), writes to $SCORELAB_BENCH_RESULTS if set

Timing is the process CPU clock (single thread), so a shared machine does not inflate it; wall time is reported.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from scorelab.bridge import BridgeProblem, FitConfig, StepAffine, affine_chain_moments, brownian, dsb, dsbm
from scorelab.bridge.chains import simulate_backward
from scorelab.bridge.closed_form import gaussian_bridge, relative_error
from scorelab.bridge.reference import make_reference
from scorelab.bridge.runner import BridgeConfig, evaluate_coupling, fit_bridge, load_endpoints
from scorelab.evaluation.metrics import frechet_distance, w2_exact
from scorelab.plotting import coupling_plot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, fmt_mean_std, heldout_seeds, table, write_results  # noqa: E402

METHODS = {"dsb": dsb, "dsbm": dsbm}


# -- (1) Gaussian pairs ---------------------------------------------------------------------------------------------
def _spd(d: int, g: torch.Generator, scale: float, floor: float) -> torch.Tensor:
    A = torch.randn(d, d, generator=g, dtype=torch.float64) * scale / d**0.5
    return A @ A.T + floor * torch.eye(d, dtype=torch.float64)


def _sampler(mu: torch.Tensor, S: torch.Tensor):
    L, m = torch.linalg.cholesky(S).float(), mu.float()
    return lambda n, g: torch.randn(n, S.shape[0], generator=g) @ L.T + m


def _w2(m1, S1, m2, S2) -> float:
    return max(frechet_distance(m1.numpy(), S1.numpy(), m2.numpy(), S2.numpy()), 0.0) ** 0.5


def gaussian_run(d: int, method: str, seed: int, steps: int, iterations: int, fit: FitConfig) -> list[dict]:
    """One Gaussian bridge fit; per-iteration errors against the closed form and cumulative CPU seconds."""
    g = torch.Generator().manual_seed(1000 + seed)
    mu0, mu1 = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 1, d, dtype=torch.float64)
    S0, S1 = _spd(d, g, 1.0, 0.4), _spd(d, g, 2.0, 0.3)
    ref = brownian(1.0, steps)
    gb = gaussian_bridge(mu0, S0, mu1, S1, ref)

    def measure(n, F, B):
        mF, SF, CF = affine_chain_moments(F, mu0, S0, ref, "forward")
        mB, SB, CB = affine_chain_moments(B, mu1, S1, ref, "backward")
        return {"err_F": relative_error(CF, gb.C), "err_B": relative_error(CB, gb.C),
                "w2_target": _w2(mF, SF, mu1, S1), "w2_source": _w2(mB, SB, mu0, S0)}

    torch.manual_seed(seed)
    prob = BridgeProblem(_sampler(mu0, S0), _sampler(mu1, S1), ref)
    res = METHODS[method](prob, StepAffine(d, steps), StepAffine(d, steps), iterations, fit, seed=seed,
                          callback=measure, progress=False)
    return res.history


def time_to(history: list[dict], level: float, key: str = "err_F") -> float:
    """CPU seconds until ``key`` first falls to ``level`` or below (inf if never)."""
    return next((h["cpu_seconds"] for h in history if h[key] <= level), float("inf"))


def part_gaussian(seeds: list[int], quick: bool) -> tuple[dict, list[str]]:
    """(1): every d x method x seed, plus the Adam run in d = 8."""
    grid = [(2, 50, 8, "lstsq"), (8, 50, 8, "lstsq"), (32, 20, 6, "lstsq"), (8, 20, 6, "adam")]
    if quick:
        grid = [(2, 10, 2, "lstsq"), (8, 10, 2, "adam")]
    out, rows = {}, []
    for d, steps, iters, solver in grid:
        fit = (FitConfig(solver="lstsq", cache_size=8192) if solver == "lstsq" else
               FitConfig(solver="adam", iterations=100 if quick else 500, lr=1e-2, batch=1024, cache_size=4096,
                         cache_refresh=100, ema=0.98))
        runs = {m: [gaussian_run(d, m, s, steps, iters, fit) for s in seeds] for m in METHODS}
        key = f"d{d}_{solver}"
        out[key] = {"d": d, "steps": steps, "iterations": iters, "solver": solver, "runs": runs}
        for m, hs in runs.items():
            last = [h[-1] for h in hs]
            rows.append([d, steps, solver, m, fmt_mean_std([x["err_F"] for x in last], ".3f"),
                         fmt_mean_std([x["err_B"] for x in last], ".3f"),
                         fmt_mean_std([x["w2_target"] for x in last], ".3f"),
                         fmt_mean_std([x["w2_source"] for x in last], ".3f"),
                         fmt_mean_std([time_to(h, 0.05) for h in hs], ".1f"),
                         fmt_mean_std([x["cpu_seconds"] for x in last], ".1f")])
        ratio = [time_to(b, a[-1]["err_F"]) / a[-1]["cpu_seconds"] for a, b in zip(runs["dsb"], runs["dsbm"],
                                                                                   strict=True)]
        out[key]["dsbm_time_to_dsb_final_over_dsb_time"] = ratio
        rows.append([d, steps, solver, "DSBM time to DSB's final error / DSB time", fmt_mean_std(ratio, ".3f"),
                     "", "", "", "", ""])
    md = table(["d", "N", "regression", "method", "cross-cov rel. err (F)", "cross-cov rel. err (B)",
                "W2 X_N vs target", "W2 X_0 vs source", "CPU-s to err <= 5%", "CPU-s total"], rows)
    return out, md


def per_iteration_table(out: dict, key: str) -> list[str]:
    """Mean relative cross-covariance error per iteration and the mean CPU seconds, DSB vs DSBM."""
    runs = out[key]["runs"]
    rows = []
    for i in range(out[key]["iterations"]):
        cells = [i + 1]
        for m in METHODS:
            cells += [fmt_mean_std([h[i]["err_F"] for h in runs[m]], ".3f"),
                      f"{np.mean([h[i]['cpu_seconds'] for h in runs[m]]):.1f}"]
        rows.append(cells)
    return table(["iteration", "DSB err", "DSB CPU-s", "DSBM err", "DSBM CPU-s"], rows)


# -- (2) toy data <-> data ------------------------------------------------------------------------------------------
TOY_PAIRS = [("moons", "swiss_roll", 0.05), ("8gaussians", "checkerboard", 0.5)]


def toy_config(src: str, tgt: str, s2: float, method: str, seed: int, quick: bool) -> BridgeConfig:
    """The MLP bridge used in (2) and (3)."""
    return BridgeConfig(source=src, target=tgt, reference_variance=s2, method=method, iterations=1 if quick else 3,
                        steps=20, net="mlp", width=64, depth=2, fit_iterations=50 if quick else 600,
                        cache_size=2048, cache_refresh=200, data_n=5000, seed=seed)


def part_toys(seeds: list[int], quick: bool, plot_path: Path | None) -> tuple[dict, list[str]]:
    """(2): pushed-marginal W2 with floor, transport cost vs Sinkhorn, per pair x method x seed."""
    out, rows = {}, []
    for src, tgt, s2 in TOY_PAIRS[:1] if quick else TOY_PAIRS:
        for m in METHODS:
            recs = []
            for s in seeds:
                cfg = toy_config(src, tgt, s2, m, s, quick)
                x0, x1, d = load_endpoints(src, tgt, cfg.data_n, s)
                res, _, _ = fit_bridge(cfg, x0, x1, d, progress=False)
                g = torch.Generator().manual_seed(s)
                pairs = res.pairs(x0[:2000], g)
                ev = evaluate_coupling(pairs, x1, s2, 1.0, 1000, seed=s)
                ev["cpu_seconds"] = res.history[-1]["cpu_seconds"]
                recs.append(ev)
                if plot_path is not None and s == seeds[0] and m == "dsbm" and src == "8gaussians":
                    coupling_plot(pairs[:, 0], pairs[:, 1], str(plot_path),
                                  title=f"DSBM {src} -> {tgt}, sigma^2 = {s2}, seed {s}")
            out[f"{src}->{tgt}:{m}"] = recs
            rows.append([f"{src} -> {tgt}", s2, m, fmt_mean_std([r["w2_pushed_to_target"] for r in recs], ".3f"),
                         fmt_mean_std([r["w2_floor"] for r in recs], ".3f"),
                         fmt_mean_std([r["transport_cost"] for r in recs], ".3f"),
                         fmt_mean_std([r["sinkhorn_cost"] for r in recs], ".3f"),
                         fmt_mean_std([r["cpu_seconds"] for r in recs], ".0f")])
    md = table(["pair", "sigma^2", "method", "W2 pushed vs target", "W2 floor", "E‖X0 − XN‖²", "Sinkhorn cost",
                "CPU-s"], rows)
    return out, md


# -- (3) generative data -> N(0, I) ---------------------------------------------------------------------------------
def generative_run(cfg: BridgeConfig, data: torch.Tensor) -> list[dict]:
    """One data -> N(0, I) bridge; per iteration, W2 of 1000 samples generated backward from N(0, I) to the data."""
    x0, _, d = load_endpoints(cfg.source, cfg.target, cfg.data_n, cfg.seed)
    ref = make_reference(cfg.reference, cfg.reference_variance, cfg.steps, cfg.schedule)

    def measure(n, F, B):
        g = torch.Generator().manual_seed(cfg.seed)
        xs = simulate_backward(B, torch.randn(1000, d, generator=g), ref, g)[:, 0]
        return {"w2_generated": w2_exact(xs, data[:1000])}

    return fit_bridge(cfg, x0, None, d, progress=False, callback=measure)[0].history


def part_generative(seeds: list[int], quick: bool) -> tuple[dict, list[str]]:
    """(3): W2 of samples from N(0, I) pulled back to moons, per iteration, N = NFE = 10 (VP reference, 0.9)."""
    out, rows = {}, []
    data = load_endpoints("moons", "gauss", 5000, 99)[0]
    floor = w2_exact(data[:1000], data[1000:2000])
    for m in METHODS:
        per_seed = [generative_run(replace(toy_config("moons", "gauss", 0.9, m, s, quick), reference="vp", steps=10,
                                           init="reference"), data) for s in seeds]
        out[m] = per_seed
        for i in range(len(per_seed[0])):
            rows.append([m, i + 1, fmt_mean_std([h[i]["w2_generated"] for h in per_seed], ".3f"),
                         f"{floor:.3f}", fmt_mean_std([h[i]["cpu_seconds"] for h in per_seed], ".0f")])
    out["w2_floor"] = floor
    md = table(["method", "iteration", "W2 to data (NFE 10)", "W2 floor", "CPU-s"], rows)
    return out, md


def main() -> None:
    """Run the parts, print the tables and write results/bridge.{md,json} (and bridge_coupling.png)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="held-out seeds 1..S")
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny grids, 1 seed")
    ap.add_argument("--tag", default="bridge")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = heldout_seeds(1, 1 if args.quick else args.seeds)
    parts = {p.strip() for p in args.parts.split(",")}
    t0, c0 = time.time(), time.process_time()
    payload, md = {"seeds": seeds, "quick": args.quick}, []
    if "1" in parts:
        payload["gaussian"], tab = part_gaussian(seeds, args.quick)
        md += ["## (1) Gaussian pairs: final errors vs the closed form (mean ± std over seeds)", "", *tab, ""]
        for key in payload["gaussian"]:
            if key.startswith("d8") or args.quick:
                md += [f"Per iteration ({key}; relative cross-covariance error of the forward coupling, mean ± std, "
                       "and cumulative CPU-s):", "", *per_iteration_table(payload["gaussian"], key), ""]
    if "2" in parts:
        out = Path(os.environ.get("SCORELAB_BENCH_RESULTS") or RESULTS)
        payload["toys"], tab = part_toys(seeds, args.quick, out / f"{args.tag}_coupling.png")
        md += ["## (2) Toy data <-> data (MLP nets, 3 iterations)", "", *tab, ""]
    if "3" in parts:
        payload["generative"], tab = part_generative(seeds, args.quick)
        md += ["## (3) moons -> N(0, I), generating from N(0, I) with NFE = 10 (DSB iteration 1 = the plain "
               "diffusion model)", "", *tab, ""]
    wall, cpu = time.time() - t0, time.process_time() - c0
    payload.update(wall_seconds=wall, cpu_seconds=cpu)
    md += [f"Wall {wall:.0f} s, CPU {cpu:.0f} s (one thread), seeds {seeds}."]
    write_results(args.tag, payload, "\n".join(md))


if __name__ == "__main__":
    main()
