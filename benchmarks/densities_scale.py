"""Benchmark: DIS, PIS, DDS x {KL, log-variance} at the benchmarks' scale (ManyWell-32, Funnel-10, LGCP d = 1600,
Bayesian logistic regression d = 31), the reference log Z of the posteriors (adaptive SMC), what the CPU budget buys,
and the stochastic adjoint's memory and time.

    python benchmarks/densities_scale.py --reference          # SMC reference log Z of lgcp and logreg_bc (~6 CPU-min)
    python benchmarks/densities_scale.py --adjoint            # KL: backprop through EM / torchsde vs adjoint
    python benchmarks/densities_scale.py --bdmc               # lgcp log Z bracketed from both sides (~15 CPU-min)
    python benchmarks/densities_scale.py                      # the grid (~45 CPU-min of training + evaluation)
    python benchmarks/densities_scale.py --limits             # what limits ManyWell DIS/LV (~5 CPU-min)
    python benchmarks/densities_scale.py --untrained          # the untrained samplers' errors (~2 CPU-min)
    python benchmarks/densities_scale.py --curve              # what the CPU budget buys (CURVES, ~3 CPU-hours)
    python benchmarks/densities_scale.py --merge              # one markdown from the JSON parts

Budget (stated, not the published one): the published runs (Richter & Berner 2024) train 60k iterations at batch 2048
on a GPU.  Here the whole benchmark shares about an hour of one core: every run is capped on the CPU clock
(``time_clock="cpu"``), seeds are fewer on the big targets.  Writes benchmarks/results/densities_scale*.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from scorelab.densities import DensityConfig, get_target, run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, provenance, table, write_json, write_results  # noqa: E402

# target -> (seeds, CPU-s of training per run, DensityConfig overrides); everything else is the library's default
# (DensityConfig: K = 100, lr 5e-3 -> 5e-4 cosine, hidden 64 x 2); --limits measures K = 50, another lr, batch 64
BUDGET = {
    "manywell": ([0, 1, 2, 3, 4], 40, dict(batch=256, eval_samples=4096)),
    "funnel": ([0, 1, 2, 3, 4], 40, dict(batch=256, eval_samples=4096)),
    "logreg_bc": ([0, 1, 2, 3, 4], 30, dict(steps=50, batch=128, eval_samples=2048)),
    "lgcp": ([0, 1, 2, 3, 4], 45, dict(steps=50, batch=64, eval_samples=256, hidden=64)),
    # the LGCP on DDS's pines file, whose log Z the published 512.6 is: the errors against the published value
    "lgcp_dds": ([0], 45, dict(steps=50, batch=64, eval_samples=256, hidden=64)),
}
# "what the CPU budget buys": (target, method, loss) -> CPU-s of training per run, seed 0, up to the 30 CPU-min
CURVES = {("manywell", "dis", "lv"): [15, 60, 180, 600, 1800], ("funnel", "pis", "lv"): [15, 60, 180, 600],
          # the KL runs at 10 CPU-min, against the published KL figures (Sendera et al. 2024, PUBLISHED_KL below)
          ("funnel", "pis", "kl"): [600], ("funnel", "dds", "kl"): [600, 1800], ("funnel", "dis", "kl"): [600, 1800],
          ("manywell", "dds", "kl"): [100, 600, 1800]}
# the KL rows of CURVES are set against the published figures: trained at the library's default batch (512; 256 in
# the grid), evaluated as the paper does (K = 2000 paths per IS estimate): 4 independent estimates, their mean
# |dlog Z| (dlogZ_is_mean) and the ELBO pooled over the 8000 paths (dlogZ_elbo_pooled, with its standard error)
PUBLISHED_EVAL = dict(batch=512, eval_samples=2000, eval_repeats=4)
REFERENCE = {  # SMC settings: a moderate and a long configuration (the long one is the reference, the first checks it);
    # lgcp also anneals from a second base (the Laplace approximation, LGCP.laplace_base): that long run is lgcp's
    # reference, its error bar widened by the largest shift to the other settings (posteriors.LGCP_REFERENCE)
    "logreg_bc": [dict(n=512, mcmc_steps=10, ess_min=0.8), dict(n=1024, mcmc_steps=20, ess_min=0.9)],
    "lgcp": [dict(n=256, mcmc_steps=10, ess_min=0.8), dict(n=256, mcmc_steps=20, ess_min=0.9),
             dict(n=256, mcmc_steps=20, ess_min=0.9, base="laplace"),
             dict(n=1024, mcmc_steps=20, ess_min=0.9, base="laplace")],  # 4 x the particles: does log Z-hat move?
    "lgcp_dds": [dict(n=256, mcmc_steps=20, ess_min=0.9, base="laplace")],  # DDS's pines file: the published 512.6
}
# bidirectional Monte Carlo on lgcp (smc.bdmc_log_Z): forward / reverse AIS from the Laplace base on ladders refined
# from an adaptive SMC run's; on the pines data the reverse pass starts from the forward pass's end points after
# `burn` MALA steps (the posterior is strictly log-concave: one mode), on simulated counts (lgcp_simulate) from the
# latent that made them (an exact posterior draw: a rigorous upper bound)
BDMC = dict(ladders=[50, 200, 800], n=64, mcmc_steps=5, burn=200, simulated_seeds=[0, 1], simulated_ladder=200,
            smc=dict(n=256, mcmc_steps=20, ess_min=0.9))
# the SMC estimator at d = 1600 against exact values: (a) the pines counts with independent cells (LGCP(beta=1e-4),
# K = sigma2 I), log Z a sum of 1-D quadratures (posteriors.lgcp_log_Z_independent): the Poisson likelihood without
# the prior's correlations; (b) the Gaussian surrogate (gaussian_surrogate): the correlated prior with the Poisson
# likelihood replaced by its second-order expansion at the pines posterior mode, log Z in closed form: the prior's
# correlations and the posterior's location and covariance without the Poisson tails
ORACLE_CHECK = dict(n=64, mcmc_steps=20, ess_min=0.9)
# Sendera et al. 2024 (NeurIPS 2024, arXiv 2402.05098) Table 1, mean over 5 runs, KL-trained (DIS's loss not stated):
# (|dlog Z| of the ELBO, |dlog Z| importance-weighted, K = 2000), Funnel x0 ~ N(0, 9) d = 10, ManyWell d = 32
PUBLISHED_KL = {("funnel", "dis"): (0.839, 0.093), ("funnel", "dds"): (0.424, 0.206),
                ("funnel", "pis"): (0.534, 0.262), ("manywell", "dis"): (10.52, 3.05),
                ("manywell", "dds"): (7.36, 0.23), ("manywell", "pis"): (3.85, 2.69)}
# the same table's LGCP raw estimates (ELBO log Z-hat, importance-weighted log Z-hat): no reference log Z there
PUBLISHED_LGCP_RAW = {"dis": (299.83, 361.15), "dds": (471.64, 489.30), "pis": (381.14, 414.42)}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; Linux ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_run(target: str, method: str, loss: str, seed: int, cpu_s: float, over: dict) -> dict:
    """Train + evaluate one configuration, capped at ``cpu_s`` CPU-seconds of training."""
    cfg = DensityConfig(target=target, method=method, loss=loss, seed=seed, time_clock="cpu", progress=False,
                        **{"iterations": 1_000_000, "time_limit": cpu_s, **over})
    c0 = time.process_time()
    r = run(cfg)
    m = r["metrics"]
    out = {"target": target, "method": method, "loss": loss, "seed": seed, "cpu_budget_s": cpu_s,
           "train_cpu_s": r["train_cpu_s"], "train_wall_s": r["train_time_s"], "total_cpu_s": time.process_time() - c0,
           "eval_wall_s": r["eval_time_s"], "iterations": r["iterations_done"], "peak_rss_mb": peak_rss_mb(),
           "metrics": {k: v for k, v in m.items() if isinstance(v, (int, float, list))}, "config": asdict(cfg)}
    print(f"{target:9s} {method} {loss} seed {seed}: |dlogZ| IS {m.get('dlogZ_is', float('nan')):.3f} ELBO "
          f"{m.get('dlogZ_elbo', float('nan')):.3f} ESS {m['ess']:.3f} left-well "
          f"{m.get('mode_left_frac', math.nan):.3f} it {r['iterations_done']} CPU {out['total_cpu_s']:.0f} s",
          flush=True)
    return out


def median(runs: list[dict], key: str) -> float:
    """Median over seeds of a metric (NaN where absent)."""
    vals = [r["metrics"][key] for r in runs if key in r["metrics"] and math.isfinite(r["metrics"][key])]
    return statistics.median(vals) if vals else float("nan")


def grid_main(args) -> int:
    """The grid: every target (or ``--only`` ones) x method x loss at the BUDGET (the JSON is rewritten after every
    run, so an interrupted grid keeps what it finished)."""
    runs = []
    save = lambda: write_json(Path(args.out) / "densities_scale_grid.json",  # noqa: E731
                              {"provenance": provenance(), "runs": runs, "budget": repr(BUDGET)})
    if set(args.only or []) - set(BUDGET):
        raise SystemExit(f"the grid runs only {list(BUDGET)}, got --only {args.only}")
    for t in args.only or list(BUDGET):
        seeds, cpu_s, over = BUDGET[t]
        for method in ("dis", "pis", "dds"):
            for loss in ("kl", "lv"):
                for seed in seeds:
                    runs.append(one_run(t, method, loss, seed, cpu_s, over))
                    save()
    return 0


def untrained_main(args) -> int:
    """The untrained samplers (zero network heads: the interpolation initialization, what training starts from), one
    evaluation per target x method at the BUDGET's evaluation settings, seed 0: the grid table's "untrained" column."""
    rows = []
    for t in args.only or list(BUDGET):
        for method in ("dis", "pis", "dds"):
            rows.append(one_run(t, method, "kl", 0, 0.0, {**BUDGET[t][2], "iterations": 0, "time_limit": None}))
            write_json(Path(args.out) / "densities_scale_untrained.json", {"provenance": provenance(), "runs": rows})
    return 0


def curve_main(args) -> int:
    """What the CPU budget buys (CURVES): one run per budget, seed 0, the grid's other settings; appends to the part
    densities_scale_curve.json (a run of ``--only funnel`` after one of manywell adds to it), rewritten after every
    run.  ``--budgets`` restricts the budgets run (e.g. only the long ones), ``--rows`` the rows
    (target/method/loss)."""
    path = Path(args.out) / "densities_scale_curve.json"
    rows = json.loads(path.read_text())["curve"] if path.exists() else []
    for (t, method, loss), budgets in CURVES.items():
        if (args.only and t not in args.only) or (args.rows and f"{t}/{method}/{loss}" not in args.rows):
            continue
        for b in budgets:
            if args.budgets and b not in args.budgets:
                continue
            rows = [r for r in rows if (r["target"], r["method"], r["loss"], r["cpu_budget_s"]) != (t, method, loss, b)]
            rows.append(one_run(t, method, loss, 0, b, {**BUDGET[t][2], **(PUBLISHED_EVAL if loss == "kl" else {})}))
            write_json(path, {"provenance": provenance(), "curve": rows})
    return 0


def _reference_runs(tgt, settings: list[dict], repeats: int) -> list[dict]:
    from scorelab.densities.smc import reference_log_Z
    out = []
    for s in settings:
        s = dict(s)
        base = s.pop("base", "prior")
        kw = {"base": tgt.laplace_base()} if base == "laplace" else {}
        r = reference_log_Z(tgt, repeats=repeats, **s, **kw)
        r["settings"]["base"] = base
        print(tgt.name, r["settings"], f"{r['log_Z']:.3f} +- {r['stderr']:.3f}", r["runs"], f"{r['cpu_time']:.0f} s",
              flush=True)
        out.append(r)
    return out


def gaussian_surrogate(lgcp) -> tuple:
    """(target, exact log Z): the LGCP's prior N(mu_0, K) times the second-order expansion of its Poisson likelihood
    at the posterior mode x* (D = a diag(exp x*), g = y - a exp x*): log L~(x) = g (x - x*) - (x - x*)^T D (x - x*) / 2.
    Conjugate: posterior precision P = K^{-1} + D, mean m = P^{-1} (K^{-1} mu_0 + g + D x*), and
    log Z = log rho~(m) + d/2 log 2 pi - log det P / 2 exactly."""
    from scorelab.densities.posteriors import LGCP
    x_star, _ = lgcp.laplace_base()
    D, g = lgcp.area * torch.exp(x_star), lgcp.counts - lgcp.area * torch.exp(x_star)

    class Surrogate(LGCP):
        name = "lgcp_gaussian_surrogate"

        def log_likelihood(self, x):
            r = x - x_star
            return (r * g).sum(1) - 0.5 * (r * r * D).sum(1)

        def log_prob_unnorm(self, x):
            r, pr = self._parts(x)
            return -0.5 * (r * pr).sum(1) + self._log_norm + self.log_likelihood(x)

        def score(self, x):
            _, pr = self._parts(x)
            return -pr + g - (x - x_star) * D
    sur = Surrogate(grid=lgcp.grid, counts=lgcp.counts.numpy())
    P = sur.prec + torch.diag(D)
    m = torch.linalg.solve(P, sur.prec @ torch.full((sur.dim,), sur.mu0, dtype=torch.float64) + g + D * x_star)
    half_logdet = float(torch.log(torch.diagonal(torch.linalg.cholesky(P))).sum())
    return sur, float(sur.log_prob_unnorm(m[None])[0]) + 0.5 * sur.dim * math.log(2 * math.pi) - half_logdet


def reference_main(args) -> int:
    """SMC reference log Z of the posteriors (REFERENCE; the long setting is the reference), and for lgcp the same
    estimator on the independent-cells LGCP against its exact log Z (ORACLE_CHECK).  ``--only`` restricts the targets;
    the part keeps what an earlier run of it wrote for the others."""
    from scorelab.densities.posteriors import LGCP, lgcp_log_Z_independent
    from scorelab.densities.smc import laplace_is_log_Z
    path = Path(args.out) / "densities_scale_reference.json"
    out = json.loads(path.read_text())["reference"] if path.exists() else {}
    for name, settings in REFERENCE.items():
        if args.only and name not in args.only:
            continue
        tgt = get_target(name)
        out[name] = _reference_runs(tgt, settings, repeats=4 if name == "logreg_bc" else 3)
        if name == "logreg_bc":
            out["logreg_bc_laplace_is"] = laplace_is_log_Z(tgt, n=200_000, generator=torch.Generator().manual_seed(0))
        if name == "lgcp":
            ind = LGCP(beta=1e-4)
            ind.name = "lgcp_independent"
            out["lgcp_independent"] = {"exact": lgcp_log_Z_independent(ind.counts.numpy()),
                                       "smc": _reference_runs(ind, [ORACLE_CHECK], repeats=3)[0]}
            sur, exact = gaussian_surrogate(tgt)
            out["lgcp_gaussian_surrogate"] = {"exact": exact, "smc": _reference_runs(sur, [ORACLE_CHECK], repeats=3)[0]}
        write_json(path, {"provenance": provenance(), "reference": out})
    return 0


def bdmc_main(args) -> int:
    """BDMC (BDMC settings) into the reference part, key "lgcp_bdmc": rows of the pines posterior per ladder, of
    DDS's pines file, and of simulated counts with an exact start; ``--rows`` (pines, pines_dds, simulated) reruns
    only those cases and keeps the others' rows."""
    from scorelab.densities.posteriors import LGCP, lgcp_simulate
    from scorelab.densities.smc import bdmc_log_Z, refine_ladder, smc_log_Z
    path = Path(args.out) / "densities_scale_reference.json"
    out = json.loads(path.read_text())["reference"] if path.exists() else {}
    rows = [r for r in out.get("lgcp_bdmc", {}).get("rows", [])
            if args.rows and r["data"].split(" ")[0] not in args.rows]  # rows of the cases not rerun

    def one(label: str, tgt, seed: int, ladders: list[int], posterior=None) -> None:
        base, g = tgt.laplace_base(), torch.Generator().manual_seed(seed)
        smc = smc_log_Z(tgt, base=base, generator=g, **BDMC["smc"])
        for J in ladders:
            r = bdmc_log_Z(tgt, refine_ladder(smc.betas, J), n=BDMC["n"], base=base, mcmc_steps=BDMC["mcmc_steps"],
                           posterior=posterior, burn=BDMC["burn"], generator=g)
            rows.append({"data": label, "seed": seed, "smc_log_Z": smc.log_Z, "smc_temps": len(smc.betas) - 1,
                         "smc_cpu_s": smc.cpu_time, **r})
            print(label, J, {k: round(v, 3) for k, v in r.items() if isinstance(v, float)}, flush=True)
            out["lgcp_bdmc"] = {"settings": repr(BDMC), "rows": rows}
            write_json(path, {"provenance": provenance(), "reference": out})
    if not args.rows or "pines" in args.rows:
        one("pines", get_target("lgcp"), 0, BDMC["ladders"])
    if not args.rows or "pines_dds" in args.rows:
        one("pines_dds", get_target("lgcp_dds"), 0, [BDMC["simulated_ladder"]])
    for seed in BDMC["simulated_seeds"] if (not args.rows or "simulated" in args.rows) else []:
        x, y = lgcp_simulate(seed=seed)
        one(f"simulated (seed {seed})", LGCP(counts=y), seed, [BDMC["simulated_ladder"]],
            posterior=torch.as_tensor(x)[None])
    return 0


def bdmc_md(ref: dict) -> list[str]:
    """The BDMC table and where the published LGCP value falls against its bounds."""
    from scorelab.densities.posteriors import LGCP_PUBLISHED
    b = ref.get("lgcp_bdmc")
    if not b:
        return []
    rows = [[r["data"], str(r["temps"]), f"{r['lower_mean']:.3f} ± {r['se_lower_mean']:.3f}",
             f"{r['upper_mean']:.3f} ± {r['se_upper_mean']:.3f}", f"{r['lower']:.3f}", f"{r['upper']:.3f}",
             f"{r['smc_log_Z']:.3f} ({r['smc_temps']})", "exact latent" if r["exact_start"] else "forward end + burn",
             f"{r['cpu_time']:.0f}"] for r in b["rows"]]
    md = ["", "### LGCP log Z bracketed from both sides (bidirectional Monte Carlo, `smc.bdmc_log_Z`)", "",
          f"Settings: `{b['settings']}`.  Forward AIS from the Laplace base (lower bound: E S ≤ log Z), reverse AIS "
          "down the same ladder (upper bound: E S ≥ log Z); ladders refined from the adaptive SMC run's in the same "
          "row.  Mean bounds ± standard error over the chains; log-mean-exp bounds are tighter but stochastic.", ""]
    md += table(["data", "ladder", "lower (mean S)", "upper (mean S)", "lower (log-mean-exp)", "upper (log-mean-exp)",
                 "adaptive SMC (temps)", "reverse start", "CPU s"], rows)
    pines = [r for r in b["rows"] if r["data"] == "pines"]
    if pines:
        r, ref_lz = max(pines, key=lambda r: r["temps"]), get_target("lgcp").log_Z
        lo, hi = r["lower_mean"] - 4 * r["se_lower_mean"], r["upper_mean"] + 4 * r["se_upper_mean"]
        md += ["", f"- Pines (`pines.csv`, ours), finest ladder ({r['temps']}): log Z in [{r['lower_mean']:.2f}, "
               f"{r['upper_mean']:.2f}] (± {max(r['se_lower_mean'], r['se_upper_mean']):.2f}); our SMC reference "
               f"{ref_lz:.3f} is " + ("inside the bracket" if r["lower_mean"] <= ref_lz <= r["upper_mean"] else
                                      "within its 4-standard-error edges" if lo <= ref_lz <= hi else "outside it")
               + f", the published {LGCP_PUBLISHED[0]} {LGCP_PUBLISHED[0] - r['upper_mean']:.1f} nats above it."]
    for r in (r for r in b["rows"] if r["data"] == "pines_dds"):
        inside = r["lower_mean"] - 4 * r["se_lower_mean"] <= LGCP_PUBLISHED[0] <= r["upper_mean"] + 4 * r[
            "se_upper_mean"]
        md += [f"- DDS's pines file (`pines_dds.csv`, `lgcp_dds`), ladder {r['temps']}: log Z in "
               f"[{r['lower_mean']:.2f}, {r['upper_mean']:.2f}]; the published {LGCP_PUBLISHED[0]} is "
               + ("inside (4 s.e.): it is this file's log Z." if inside else "outside.")]
    sim = [r for r in b["rows"] if r["exact_start"]]
    if sim:
        inside = sum(r["lower_mean"] - 4 * r["se_lower_mean"] <= r["smc_log_Z"] <= r["upper_mean"]
                     + 4 * r["se_upper_mean"] for r in sim)
        md += ["- Simulated counts (the same prior and construction, exact reverse start): bracket widths "
               + ", ".join(f"{r['upper_mean'] - r['lower_mean']:.2f}" for r in sim)
               + f"; adaptive SMC inside the bracket (4 s.e.) in {inside} of {len(sim)}."]
    return md


# "what limits them": ManyWell-32, DIS/LV, seed 0, 40 CPU-s each, one change at a time against the grid's run
LIMITS = {"K = 50": dict(steps=50), "lr 1e-3 -> 1e-4": dict(lr=1e-3, lr_final=1e-4), "batch 64": dict(batch=64),
          "hidden 128": dict(hidden=128), "explore 2 (off-policy LV)": dict(explore=2.0),
          # the exact control varies fast in time near the end (where each coordinate's well is chosen): more and
          # higher time frequencies (FourierTime: 64 frequencies up to 32 cycles over [0, T] instead of 16 up to 8)
          "Fourier time features 64": dict(method_kwargs={"n_freq": 64})}
FUNNEL_CHECK = ("Fourier time features 64",)  # changes also run on Funnel-10 DIS/LV seed 0 (must not hurt there)


def oracle_gap(steps: int, n: int = 256) -> dict:
    """DIS on ManyWell-32 with the exact optimal control v* = grad log p_t (``ManyWell.score_t``, 1-D quadrature per
    coordinate; source 004): its ELBO gap is the discretization error alone at this K."""
    from scorelab.densities.control import FunctionControl
    from scorelab.densities.dis import DIS
    from scorelab.densities.estimators import elbo, ess, log_Z_is
    mw, c0 = get_target("manywell"), time.process_time()
    s = DIS(mw.dim, steps)
    s.net = FunctionControl(lambda x, u: mw.score_t(x, s.t_max - u, s.vp))
    lw = s.sample(mw, n, torch.Generator().manual_seed(0), torch.float64).log_w
    return {"steps": steps, "n": n, "dlogZ_elbo": mw.log_Z - elbo(lw), "dlogZ_is": abs(log_Z_is(lw) - mw.log_Z),
            "ess": ess(lw), "cpu_s": time.process_time() - c0}


def limits_main(args) -> int:
    """One change at a time on ManyWell DIS/LV (LIMITS, or only ``--changes``), the FUNNEL_CHECK changes also on
    Funnel-10, and the exact-control discretization floor at K = 50 (when all changes run)."""
    names = args.changes or list(LIMITS)
    unknown = [n for n in names if n not in LIMITS]
    if unknown:
        raise SystemExit(f"--changes: unknown {unknown}; expected some of {list(LIMITS)}")
    path, rows = Path(args.out) / "densities_scale_limits.json", []
    for name in names:
        for t in ("manywell", "funnel") if name in FUNNEL_CHECK else ("manywell",):
            rows.append({"change": name, **one_run(t, "dis", "lv", 0, BUDGET[t][1], {**BUDGET[t][2], **LIMITS[name]})})
            write_json(path, {"provenance": provenance(), "rows": rows})
    oracle = [oracle_gap(50)] if args.changes is None else []
    write_json(path, {"provenance": provenance(), "rows": rows, **({"oracle": oracle} if oracle else {})})
    return 0


def _adjoint_child(method: str, mode: str, steps: int, batch: int, q) -> None:
    torch.set_num_threads(1)
    from scorelab.densities import METHODS, kl_loss
    from scorelab.densities.adjoint import adjoint_kl_loss
    tgt = get_target("funnel")
    torch.manual_seed(0)
    sampler = METHODS[method](tgt.dim, steps)
    opt, gen = torch.optim.Adam(sampler.parameters(), 1e-3), torch.Generator().manual_seed(0)
    base = peak_rss_mb()
    times = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        if mode == "em_backprop":
            values, _ = kl_loss(sampler, tgt, batch, gen)
        else:
            values, _ = adjoint_kl_loss(sampler, tgt, batch, gen, adjoint=mode == "torchsde_adjoint")
        opt.zero_grad()
        values.mean().backward()
        opt.step()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    q.put({"method": method, "mode": mode, "steps": steps, "batch": batch, "wall_s_per_it": statistics.median(
        t[0] for t in times[1:]), "cpu_s_per_it": statistics.median(t[1] for t in times[1:]),
        "peak_rss_increase_mb": peak_rss_mb() - base})


def adjoint_main(args) -> int:
    """Memory (peak RSS increase over the set-up, fresh process each) and time of one KL iteration on Funnel-10."""
    ctx, rows = mp.get_context("spawn"), []
    for method in ("pis", "dis"):
        for steps in (50, 200):
            for mode in ("em_backprop", "torchsde_backprop", "torchsde_adjoint"):
                q = ctx.Queue()
                p = ctx.Process(target=_adjoint_child, args=(method, mode, steps, 128, q))
                p.start()
                rows.append(q.get())
                p.join()
                print(rows[-1], flush=True)
    write_json(Path(args.out) / "densities_scale_adjoint.json", {"provenance": provenance(), "rows": rows})
    return 0


def _fmt(x: float, spec: str = ".3f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _load_parts(out: Path) -> tuple[dict, list[str]]:
    """The parts (densities_scale_<part>.json, not committed) combined with the committed headline JSON: grid runs of
    the targets a new grid part holds replace the committed runs of those targets; curve rows replace those of the
    same (target, method, loss, budget); reference entries replace those of the same name; adjoint and limits are
    taken whole.  A part whose JSON is absent is taken from the headline.  Returns (parts, what came from where)."""
    head_path = out / "densities_scale.json"
    head = json.loads(head_path.read_text()) if head_path.exists() else {}

    def part(name: str) -> dict | None:
        p = out / f"densities_scale_{name}.json"
        return json.loads(p.read_text()) if p.exists() else None
    g_new, g_old = part("grid"), head.get("grid")
    if g_new is None and g_old is None:
        raise FileNotFoundError(f"{out / 'densities_scale_grid.json'} is missing: run the grid first")
    new_runs = g_new["runs"] if g_new else []
    new_t = sorted({r["target"] for r in new_runs})
    runs = [r for r in (g_old or {}).get("runs", []) if r["target"] not in new_t] + new_runs
    key = lambda r: (r["target"], r["method"], r["loss"], r["cpu_budget_s"])  # noqa: E731
    c_new = (part("curve") or {}).get("curve", [])
    new_keys = {key(r) for r in c_new}
    old_curve = (g_old or {}).get("curve", []) + (head.get("curve") or {}).get("curve", [])  # older files: in grid
    curve = sorted([r for r in old_curve if key(r) not in new_keys] + c_new, key=key)
    r_new = (part("reference") or {}).get("reference", {})
    ref = {**(head.get("reference") or {}).get("reference", {}), **r_new}
    u_new = part("untrained")
    u_rerun = (u_new or {}).get("runs", [])
    u_runs = [r for r in (head.get("untrained") or {}).get("runs", [])
              if r["target"] not in {x["target"] for x in u_rerun}] + u_rerun
    adj, lim_new = part("adjoint"), part("limits")
    lim = head.get("limits")
    if lim_new:  # rows replace those of the same change and target; the oracle is kept unless rerun
        keyl = lambda r: (r["change"], r.get("target", "manywell"))  # noqa: E731
        new_l = {keyl(r) for r in lim_new["rows"]}
        lim = {"rows": [r for r in (lim or {}).get("rows", []) if keyl(r) not in new_l] + lim_new["rows"],
               "oracle": lim_new.get("oracle") or (lim or {}).get("oracle", [])}
    src = [f"grid: {', '.join(new_t) or 'none'} rerun, the other targets kept",
           f"curve: {len(c_new)} of {len(curve)} rows rerun", f"reference: {', '.join(r_new) or 'none'} rerun",
           f"adjoint {'rerun' if adj else 'kept'}", f"untrained: {len((u_new or {}).get('runs', []))} rows rerun",
           "limits: " + (", ".join(f"{r['change']} ({r.get('target', 'manywell')})" for r in lim_new["rows"])
                          if lim_new else "none") + " rerun"]
    return {"grid": {"runs": runs, "budget": repr(BUDGET)}, "curve": {"curve": curve},
            "reference": {"reference": ref}, "adjoint": adj or head.get("adjoint"),
            "limits": lim, "untrained": {"runs": u_runs}}, src


def _rescore(runs: list[dict]) -> None:
    """|dlog Z| of every run from its log Z-hat and ELBO against the target's current reference log Z (the posteriors'
    references may be set after a run), and against a published value where the target has one."""
    for r in runs:
        m, tgt = r["metrics"], get_target(r["target"])
        if tgt.log_Z is not None and "log_Z_hat" in m:
            m["dlogZ_is"], m["dlogZ_elbo"] = abs(m["log_Z_hat"] - tgt.log_Z), abs(m["elbo"] - tgt.log_Z)
            if "elbo_pooled" in m:  # repeated evaluations (runner.evaluate_repeated)
                m["dlogZ_elbo_pooled"] = abs(m["elbo_pooled"] - tgt.log_Z)
                m["dlogZ_is_mean"] = statistics.fmean(abs(z - tgt.log_Z) for z in m["log_Z_hat_reps"])
        if getattr(tgt, "log_Z_published", None) is not None:
            pub = tgt.log_Z_published
            m["dlogZ_is_published"], m["dlogZ_elbo_published"] = abs(m["log_Z_hat"] - pub), abs(m["elbo"] - pub)
        else:  # runs scored when lgcp still carried DDS's 512.6 (it belongs to lgcp_dds: posteriors module)
            m.pop("dlogZ_is_published", None), m.pop("dlogZ_elbo_published", None)


def merge_main(args) -> int:
    """densities_scale.md/json (and the budget-curve PNG) from the parts (``_load_parts``)."""
    out = Path(args.out)
    parts, src = _load_parts(out)
    grid, curve, ref = parts["grid"], parts["curve"]["curve"], parts["reference"]["reference"]
    _rescore(grid["runs"] + curve + parts["untrained"]["runs"])
    used_grid = sum(r["total_cpu_s"] for r in grid["runs"])
    used_curve = sum(r["total_cpu_s"] for r in curve)
    used_ref = sum(r["cpu_time"] for name in REFERENCE for r in ref.get(name, []))
    md = ["## Density samplers at scale (CPU budget, not the published one)", "",
          "Regenerate: `python benchmarks/densities_scale.py --reference`, `... --bdmc`, `... --adjoint`, `...` (the "
          "grid; `--only T` reruns target T), `... --curve` (`--only`, `--rows`, `--budgets`), `... --limits`, "
          "`... --untrained`, then `... --merge`, "
          "which writes this file from the parts (a part whose JSON is absent is taken from this file's JSON). This "
          "merge: " + "; ".join(src) + ".", "",
          f"Budget: one core of a shared 2-core machine (used: grid {used_grid / 60:.1f} CPU-min, budget curve "
          f"{used_curve / 60:.1f} CPU-min, SMC references {used_ref / 60:.1f} CPU-min); per run (training, CPU "
          "clock): " + "; ".join(f"{t}: {b[1]} s × {len(b[0])} seed(s), K = {b[2].get('steps', DensityConfig.steps)}"
                                 f", batch {b[2]['batch']}" for t, b in BUDGET.items())
          + "; other settings the library's defaults (`DensityConfig`: lr 5e-3 → 5e-4 cosine, hidden 64 × 2, "
          "clip 10).  Published: 60k iterations at batch 2048 on a GPU (Richter & Berner 2024) — about 10^3 × this "
          "compute.  Medians over the seeds listed (the issue's 5 where the column says 5).  Left-well fraction: "
          "ManyWell's mode weights (`target.mode_weights`), the fraction of the 16 double-well coordinates left of "
          "the barrier, exact 0.156; 0 is a sampler collapsed onto the heavier well of every factor.", ""]
    md += grid_md(grid, parts["untrained"]["runs"]) + lgcp_md(grid) + reference_md(ref) + bdmc_md(ref) + curve_md(curve)
    adj = parts["adjoint"]
    md += ["", "### KL gradient: backprop through Euler-Maruyama vs torchsde (backprop / stochastic adjoint)", "",
           "Funnel-10, batch 128, one Adam iteration (median of 2 after a warm-up); each row a fresh process (peak RSS "
           "increase over its set-up)."]
    md += [""] + table(["method", "K", "mode", "wall s / it", "CPU s / it", "peak RSS increase MB"],
                       [[r["method"], str(r["steps"]), r["mode"], f"{r['wall_s_per_it']:.3f}",
                         f"{r['cpu_s_per_it']:.3f}", f"{r['peak_rss_increase_mb']:.0f}"] for r in adj["rows"]])
    md += limits_md(parts["limits"], grid) if parts["limits"] else []
    md += ["", verdict(grid, curve, parts["untrained"]["runs"]), "", NOTES]
    if curve:
        plot_curve(curve, out / "densities_scale_budget.png", grid)
    write_results("densities_scale", {**parts, "budget": repr(BUDGET)}, "\n".join(md), out=out)
    return 0


def grid_md(grid: dict, untrained: list[dict]) -> list[str]:
    """The grid table: medians over seeds per target x method x loss, next to the untrained sampler's ELBO gap."""
    rows, init = [], {(r["target"], r["method"]): r["metrics"].get("dlogZ_elbo", math.nan) for r in untrained}
    for t in BUDGET:
        for method in ("dis", "pis", "dds"):
            for loss in ("kl", "lv"):
                rs = [r for r in grid["runs"] if (r["target"], r["method"], r["loss"]) == (t, method, loss)]
                if not rs:
                    continue
                rows.append([t, method, loss, _fmt(median(rs, "dlogZ_is")), _fmt(median(rs, "dlogZ_elbo")),
                             _fmt(init.get((t, method), math.nan)),
                             _fmt(median(rs, "ess")), _fmt(median(rs, "w2")), _fmt(median(rs, "mode_left_frac")),
                             str(statistics.median(r["iterations"] for r in rs)),
                             f"{statistics.median(r['train_wall_s'] for r in rs):.0f} / "
                             f"{statistics.median(r['total_cpu_s'] for r in rs):.0f}",
                             f"{max(r['peak_rss_mb'] for r in rs):.0f}", str(len(rs))])
    return table(["target", "method", "loss", "\\|Δlog Z\\| IS", "\\|Δlog Z\\| ELBO", "ELBO gap untrained", "ESS",
                  "W2 (sliced if d>10)", "left-well fraction", "iters", "train wall / total CPU s",
                  "process peak RSS MB", "seeds"], rows)


def lgcp_md(grid: dict) -> list[str]:
    """The LGCP rows (medians over seeds): raw log Z-hat and ELBO next to Sendera et al.'s raw figures
    (PUBLISHED_LGCP_RAW) and the error against our reference; the lgcp_dds runs against the published value."""
    from scorelab.densities.posteriors import LGCP_PUBLISHED
    rows = []
    for method in ("dis", "pis", "dds"):
        for loss in ("kl", "lv"):
            rs = [r for r in grid["runs"] if (r["target"], r["method"], r["loss"]) == ("lgcp", method, loss)]
            if not rs:
                continue
            pub = PUBLISHED_LGCP_RAW.get(method) if loss == "kl" else None
            rows.append([method, loss, _fmt(median(rs, "log_Z_hat")), _fmt(median(rs, "elbo")),
                         f"{pub[1]:.2f} / {pub[0]:.2f}" if pub else "—", _fmt(median(rs, "dlogZ_is")),
                         _fmt(median(rs, "dlogZ_elbo")), _fmt(median(rs, "ess")), str(len(rs))])
    if not rows:
        return []
    tgt = get_target("lgcp")
    md = ["", f"### LGCP (pines, d = 1600): raw estimates, and errors against our reference {tgt.log_Z:.3f} ± "
          f"{tgt.log_Z_stderr:.3f} (`LGCP_REFERENCE`)", "",
          "Sendera et al. 2024 (Table 1; KL, 25k iterations at batch 300, 100 steps, on a GPU) report raw log Z-hat "
          "for LGCP, no error (the pines file they used is not stated); medians over the seeds here.", ""]
    md += table(["method", "loss", "log Z-hat (IS)", "ELBO", "Sendera et al.: IS / ELBO", "\\|Δ\\| IS",
                 "\\|Δ\\| ELBO", "ESS", "seeds"], rows)
    dds = [r for r in grid["runs"] if r["target"] == "lgcp_dds" and "dlogZ_is_published" in r["metrics"]]
    if dds:
        md += ["", f"The same runs on DDS's pines file (`lgcp_dds`) against the published {LGCP_PUBLISHED[0]} (its "
               f"log Z; ours {get_target('lgcp_dds').log_Z:.3f}):", ""]
        md += table(["method", "loss", "\\|Δ\\| IS vs published", "\\|Δ\\| ELBO vs published", "ESS", "seed"],
                    [[r["method"], r["loss"], _fmt(r["metrics"]["dlogZ_is_published"]),
                      _fmt(r["metrics"]["dlogZ_elbo_published"]), _fmt(r["metrics"]["ess"]), str(r["seed"])]
                     for r in dds])
    return md


def reference_md(ref: dict) -> list[str]:
    """The SMC reference table, the independent-cells check against its exact log Z, the logreg IS check."""
    md = ["", "### Reference log Z of the posteriors (adaptive SMC, `densities.smc`)", ""]
    rows = []
    for name in REFERENCE:
        for r in ref.get(name, []):
            s = r["settings"]
            rows.append([name, s.get("base", "prior"), f"n={s['n']}, MALA {s['mcmc_steps']}, ESS {s['ess_min']}",
                         str(r["temps"]), f"{r['log_Z']:.3f} ± {r['stderr']:.3f}",
                         ", ".join(f"{v:.3f}" for v in r["runs"]), f"{r['cpu_time']:.0f}"])
    for key, label in (("lgcp_independent", "independent cells"), ("lgcp_gaussian_surrogate", "Gaussian surrogate")):
        if key in ref:
            r, s = ref[key]["smc"], ref[key]["smc"]["settings"]
            rows.append([f"lgcp {label} (exact {ref[key]['exact']:.3f})", s.get("base", "prior"),
                         f"n={s['n']}, MALA {s['mcmc_steps']}, ESS {s['ess_min']}", str(r["temps"]),
                         f"{r['log_Z']:.3f} ± {r['stderr']:.3f}", ", ".join(f"{v:.3f}" for v in r["runs"]),
                         f"{r['cpu_time']:.0f}"])
    ind = ref.get("lgcp_independent")
    md += table(["target", "base", "SMC settings", "temperatures", "log Z (mean ± s.e.)", "runs", "CPU s"], rows)
    lap = ref.get("logreg_bc_laplace_is")
    if lap:
        md += ["", f"Independent check (logreg_bc): importance sampling from a Student-t(10) Laplace proposal, 200k "
               f"draws: {lap['log_Z']:.3f} ± {lap['stderr']:.3f} (ESS {lap['ess']:.3f}; plain Laplace "
               f"{lap['laplace']:.3f})."]
    if ind:
        md += ["", "Checks of the SMC estimator at d = 1600 against exact values: independent cells = the pines counts "
               "with K = σ² I (`LGCP(beta=1e-4)`), log Z a sum of 1-D quadratures "
               "(`posteriors.lgcp_log_Z_independent`): the same Poisson likelihood without the prior's correlations; "
               "Gaussian surrogate = the correlated prior times the second-order expansion of the pines likelihood at "
               "the posterior mode (`gaussian_surrogate` in this script), log Z in closed form: the prior's "
               "correlations and the posterior's location and covariance without the Poisson tails."]
    return md


def curve_md(curve: list[dict]) -> list[str]:
    """What the CPU budget buys: one table per (target, method, loss) of CURVES."""
    md = []
    for (t, method, loss) in CURVES:
        rs = [r for r in curve if (r["target"], r["method"], r["loss"]) == (t, method, loss)]
        if not rs:
            continue
        md += ["", f"### What the CPU budget buys ({t}, {method}/{loss}, seed 0; headline plot "
               "`densities_scale_budget.png`)", ""]
        if loss == "kl":
            md += ["Batch and evaluation as set against the published figures (`PUBLISHED_EVAL`): IS the mean "
                   "\\|Δlog Z\\| of K = 2000 estimates, ELBO pooled over their paths.", ""]
        md += table(["CPU-s training", "CPU-min", "iters", "batch", "\\|Δlog Z\\| IS", "\\|Δlog Z\\| ELBO", "ESS",
                     "left-well fraction", "train wall s"],
                    [[f"{r['cpu_budget_s']:g}", f"{r['cpu_budget_s'] / 60:.2g}", str(r["iterations"]),
                      str(r["config"]["batch"]), _fmt(_kl_metric(r, "dlogZ_is")), _fmt(_kl_metric(r, "dlogZ_elbo")),
                      _fmt(r["metrics"]["ess"]), _fmt(r["metrics"].get("mode_left_frac", math.nan)),
                      f"{r['train_wall_s']:.0f}"] for r in rs])
    return md


def plot_curve(curve: list[dict], path: Path, grid: dict | None = None) -> None:
    """ELBO gap against CPU-minutes of training (log-log), one panel per target: a line per (method, loss) of CURVES
    (colour: method; solid LV, dashed KL), the grid's KL medians (crosses) and the published KL ELBO gap
    (PUBLISHED_KL) as a dotted level."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    targets = list(dict.fromkeys(t for t, _, _ in CURVES))
    colors = {"dis": "C0", "pis": "C1", "dds": "C2"}
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.6), dpi=100, squeeze=False)
    for ax, t in zip(axes[0], targets, strict=True):
        for (t2, method, loss) in CURVES:
            rs = sorted((r for r in curve if (r["target"], r["method"], r["loss"]) == (t2, method, loss)),
                        key=lambda r: r["cpu_budget_s"])
            if t2 != t or not rs:
                continue
            ax.plot([r["cpu_budget_s"] / 60 for r in rs], [_kl_metric(r, "dlogZ_elbo") for r in rs],
                    "o-" if loss == "lv" else "s--", color=colors[method], label=f"{method}/{loss}")
        for (t2, method), (p_elbo, _) in PUBLISHED_KL.items():
            if t2 == t:
                ax.axhline(p_elbo, color=colors[method], ls=":", lw=1, label=f"{method}/kl published")
                rs = [r for r in (grid or {}).get("runs", []) if (r["target"], r["method"], r["loss"]) == (t, method,
                                                                                                          "kl")]
                if rs and t in BUDGET:
                    ax.plot([BUDGET[t][1] / 60], [median(rs, "dlogZ_elbo")], "x", color=colors[method], ms=7,
                            label=f"{method}/kl grid median")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("CPU-minutes of training (one core)")
        ax.set_ylabel("ELBO gap |Δlog Z|")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def verdict(grid: dict, curve: list[dict] | None = None, untrained: list[dict] | None = None) -> str:
    """Findings computed from the runs: best errors per target, how many rows have a degenerate ESS, ManyWell's mode
    collapse by loss, the references used, and which goals of the issue can be judged."""
    lines = ["### Findings (computed from the rows above)", ""]
    for t in BUDGET:
        rs = [r for r in grid["runs"] if r["target"] == t]
        if not rs:
            continue
        ref = get_target(t)
        best = min(rs, key=lambda r: r["metrics"].get("dlogZ_elbo", math.inf))
        its = sorted(r["iterations"] for r in rs)
        lines.append(f"- {t}: reference log Z = {ref.log_Z:.3f} ({ref.log_Z_source}"
                     + (f", ± {ref.log_Z_stderr:.2f}" if ref.log_Z_stderr else "") + f"); smallest ELBO gap "
                     f"{best['metrics']['dlogZ_elbo']:.3f} ({best['method']}/{best['loss']}, seed {best['seed']}); "
                     f"runs with ESS < 0.01: {sum(r['metrics']['ess'] < 0.01 for r in rs)} of {len(rs)}; "
                     f"iterations {its[0]}-{its[-1]}.")
        if getattr(ref, "log_Z_published", None) is not None and ref.log_Z is not None:
            gap = ref.log_Z - ref.log_Z_published
            lines.append(f"  - SMC reference - published ({ref.log_Z_published}): {gap:+.3f} = "
                         f"{gap / ref.log_Z_stderr:+.1f} × the SMC error bar: "
                         + ("they agree." if abs(gap) <= 3 * ref.log_Z_stderr
                            else "they disagree (see the posteriors module and the notes)."))
        init = {r["method"]: r["metrics"]["dlogZ_elbo"] for r in untrained or [] if r["target"] == t}
        if init:  # how much of the untrained sampler's ELBO gap training closed, per loss (median over methods, seeds)
            closed = {loss: statistics.median(1 - r["metrics"]["dlogZ_elbo"] / init[r["method"]] for r in rs
                                              if r["loss"] == loss and r["method"] in init) for loss in ("kl", "lv")}
            lines.append(f"  - ELBO gap untrained {min(init.values()):.3f}-{max(init.values()):.3f}; the fraction of "
                         f"it closed by training (median): KL {closed['kl']:.2f}, LV {closed['lv']:.2f}"
                         + (" (LV learns slower here; it does not diverge)" if 0 < closed["lv"] < closed["kl"] / 2
                            else "") + ".")
        if "w2" in rs[0]["metrics"]:  # the metric's own noise: two independent exact sample sets of the same size
            from scorelab.densities import w2_exact, w2_sliced
            y1, y2 = (ref.sample(2000, torch.Generator().manual_seed(k)) for k in (1, 2))
            floor = w2_exact(y1, y2) if ref.dim <= 10 else w2_sliced(y1, y2)
            lines.append(f"  - W2 between two independent exact 2000-sample sets (the metric's noise floor): "
                         f"{floor:.3f}.")
        if "mode_left_frac" in rs[0]["metrics"]:
            for loss in ("kl", "lv"):
                rl = [r for r in rs if r["loss"] == loss]
                lines.append(f"  - {loss}: {sum(r['metrics']['mode_left_frac'] < 0.05 for r in rl)} of {len(rl)} runs "
                             f"collapsed (left-well fraction < 0.05; exact {rs[0]['metrics']['mode_left_exact']:.3f}), "
                             f"left-well fraction median {median(rl, 'mode_left_frac'):.3f}.")
    for (t, method, loss) in CURVES:
        rs = sorted((r for r in curve or [] if (r["target"], r["method"], r["loss"]) == (t, method, loss)),
                    key=lambda r: r["cpu_budget_s"])
        if len(rs) >= 2:
            m0, m1 = rs[0]["metrics"], rs[-1]["metrics"]
            e0, e1, i0, i1 = (_kl_metric(r, k) for k in ("dlogZ_elbo", "dlogZ_is") for r in (rs[0], rs[-1]))
            lines.append(f"- budget curve {t} {method}/{loss}: ELBO gap {e0:.3f} at "
                         f"{rs[0]['cpu_budget_s']:g} CPU-s -> {e1:.3f} at "
                         f"{rs[-1]['cpu_budget_s']:g} CPU-s "
                         f"(|Δlog Z| IS {i0:.3f} -> {i1:.3f}, ESS {m0['ess']:.3f} -> "
                         f"{m1['ess']:.3f}" + (f", left-well fraction {m0['mode_left_frac']:.3f} -> "
                                               f"{m1['mode_left_frac']:.3f}" if "mode_left_frac" in m1 else "") + ").")
    lines += ["", "With ESS < 0.01 the importance-sampling estimate rests on a handful of weights: its |Δlog Z| is "
              "then luck, not accuracy, and the ELBO gap (a bound that cannot be lucky) is the honest measure.  On "
              "ManyWell a sampler collapsed onto the heavier well of every factor misses 16 × -log(1 - 0.156) = 2.71 "
              "nats of log Z that no importance weight can restore (its IS error tends to 2.71, not 0).  No GPU was "
              "lent to this task, so the LGCP row at the published batch size was not run."]
    lines += published_md(grid, curve or [])
    return "\n".join(lines)


def _kl_metric(run: dict, key: str) -> float:
    """A run's ELBO gap / IS error as set against the published figures: pooled over the repeated evaluations and
    the mean |dlog Z| of one K = 2000 estimate (PUBLISHED_EVAL) where the run has them, else its single evaluation."""
    m = run["metrics"]
    return m.get({"dlogZ_elbo": "dlogZ_elbo_pooled", "dlogZ_is": "dlogZ_is_mean"}[key], m[key])


def published_md(grid: dict, curve: list[dict]) -> list[str]:
    """Ours against the published KL figures (PUBLISHED_KL): the grid's median at its budget and the longest curve
    run of the same method and loss, each metric (ELBO gap, IS error) met when either of ours is at most the
    published one; ManyWell runs collapsed onto the heavier wells are marked."""
    def cell(t: str, g: float, c: dict | None, key: str, pub: float) -> str:
        at = ([f"{BUDGET[t][1]} s"] if g <= pub else []) + (
            [f"{c['cpu_budget_s']:g} s"] if c and _kl_metric(c, key) <= pub else [])
        return "yes (" + ", ".join(at) + ")" if at else "no"

    rows, met = [], {"ELBO": 0, "IS": 0, "both": 0}
    for (t, method), (p_elbo, p_rw) in PUBLISHED_KL.items():
        rs = [r for r in grid["runs"] if (r["target"], r["method"], r["loss"]) == (t, method, "kl")]
        cs = [r for r in curve if (r["target"], r["method"], r["loss"]) == (t, method, "kl")]
        c = max(cs, key=lambda r: r["cpu_budget_s"]) if cs else None
        g_elbo, g_is = median(rs, "dlogZ_elbo"), median(rs, "dlogZ_is")
        e_ok, i_ok = cell(t, g_elbo, c, "dlogZ_elbo", p_elbo), cell(t, g_is, c, "dlogZ_is", p_rw)
        met["ELBO"] += e_ok != "no"
        met["IS"] += i_ok != "no"
        met["both"] += e_ok != "no" and i_ok != "no"
        col = lambda m: " collapsed" if m.get("mode_left_frac", 1.0) < 0.05 else ""  # noqa: E731
        g_col = col({"mode_left_frac": median(rs, "mode_left_frac")}) if t == "manywell" else ""
        rows.append([t, method, f"{p_elbo:.3f} / {p_rw:.3f}", f"{g_elbo:.3f} / {g_is:.3f} ({len(rs)}){g_col}",
                     f"{_kl_metric(c, 'dlogZ_elbo'):.3f}" + (f" ± {c['metrics']['elbo_pooled_se']:.3f}"
                                                              if "elbo_pooled_se" in c["metrics"] else "")
                     + f" / {_kl_metric(c, 'dlogZ_is'):.3f} ({c['cpu_budget_s']:g} s)" + col(c["metrics"])
                     if c else "—", e_ok, i_ok])
    md = ["", "### Against the published figures (KL loss)", "",
          "Sendera et al. 2024 (\"Improved off-policy training of diffusion samplers\", NeurIPS 2024, Table 1; mean "
          "over 5 runs; 25k iterations at batch 300, 100 Euler-Maruyama steps, on a GPU; the loss of PIS and DDS is "
          "the reverse KL, DIS's is not stated): |Δlog Z| of the ELBO and of the importance-weighted estimate (K = "
          "2000).  Ours: the grid's median (seeds in brackets) at its CPU budget (batch 256, one evaluation of "
          "4096 paths), and the longest single run (seed 0; batch 512; evaluated as the paper does: the ELBO pooled "
          "over 4 × 2000 paths ± its standard error, the mean |Δlog Z| of 4 independent K = 2000 IS estimates).  "
          "The ELBO cannot be lucky; the IS error can at ESS < 0.01; "
          "\"collapsed\": ManyWell runs with "
          "left-well fraction < 0.05, whose IS error tends to 2.71 (the published PIS row is such a run too).  No "
          "published log-variance figure for these targets was found (Richter & Berner 2024's tables are not in the "
          "stored corpora).", ""]
    md += table(["target", "method", "published ELBO / IS", "ours, grid: ELBO / IS", "ours, longest run: ELBO / IS",
                 "ELBO ≤ published", "IS ≤ published"], rows)
    md += ["", f"Met: ELBO gap in {met['ELBO']} of {len(rows)} cells, IS error in {met['IS']}, both in "
           f"{met['both']}."]
    return md


def limits_md(limits: dict, grid: dict) -> list[str]:
    """The "what limits them" table: the grid's ManyWell DIS/LV seed-0 run and one change at a time, and the exact
    control's discretization floor."""
    base = [r for r in grid["runs"] if (r["target"], r["method"], r["loss"], r["seed"]) == ("manywell", "dis", "lv", 0)]
    rows = [{"change": "none (the grid's run)", **base[0]}] if base else []
    md = ["", "### What limits them (ManyWell-32, DIS/LV, seed 0, one change at a time, same CPU budget)", ""]
    md += table(["change", "iters", "\\|Δlog Z\\| IS", "\\|Δlog Z\\| ELBO", "ESS", "left-well fraction"],
                [[r["change"], str(r["iterations"]), _fmt(r["metrics"]["dlogZ_is"]), _fmt(r["metrics"]["dlogZ_elbo"]),
                  _fmt(r["metrics"]["ess"]), _fmt(r["metrics"]["mode_left_frac"])]
                 for r in rows + limits["rows"] if r.get("target", "manywell") == "manywell"])
    fun = [r for r in limits["rows"] if r.get("target") == "funnel"]
    if fun:
        key0 = ("funnel", "dis", "lv", 0)
        base_f = [r for r in grid["runs"] if (r["target"], r["method"], r["loss"], r["seed"]) == key0]
        md += ["", "The same changes on Funnel-10 (DIS/LV, seed 0, same CPU budget; a change is kept only if it does "
               "not hurt there):", ""]
        md += table(["change", "iters", "\\|Δlog Z\\| IS", "\\|Δlog Z\\| ELBO", "ESS"],
                    [[r["change"], str(r["iterations"]), _fmt(r["metrics"]["dlogZ_is"]),
                      _fmt(r["metrics"]["dlogZ_elbo"]), _fmt(r["metrics"]["ess"])]
                     for r in [{"change": "none (the grid's run)", **b} for b in base_f] + fun])
    for o in limits.get("oracle", []):
        md += ["", f"Exact optimal control (DIS, v* = grad log p_t by quadrature, K = {o['steps']}, {o['n']} paths): "
               f"ELBO gap {o['dlogZ_elbo']:.3f}, |Δlog Z| IS {o['dlogZ_is']:.3f}, ESS {o['ess']:.3f} — the "
               f"discretization floor at this K ({o['cpu_s']:.0f} CPU-s)."]
    return md


NOTES = """### Published anchors and where they come from

- Funnel-10 and ManyWell-32, KL: Sendera et al. 2024 ("Improved off-policy training of diffusion samplers", NeurIPS
  2024, arXiv 2402.05098), Table 1, read from two full-text copies of the paper (the table above).  Their Funnel is
  the standard one (x0 ~ N(0, 9)); the PIS paper's Funnel (x0 ~ N(0, 1), qsh-zh/pis) is another target.
- Richter & Berner 2024 ("Improved sampling via learned diffusions", ICLR 2024), median |Δlog Z| over 5 runs, KL →
  LV, as quoted in `benchmarks/densities.py`: DW(5,5,4) — their "MW" (sde_sampler `conf/target/mw.yaml`, not
  ManyWell-32) — PIS 3.567 → 0.214, DIS 1.462 → 0.375; GMM-9 PIS 1.094 → 0.046, DIS 1.551 → 0.056.  Their Funnel and
  log-variance figures on these targets are not in the stored corpora, so the LV rows have no published partner.
- LGCP: two pines files are in use.  sde_sampler, Beyond ELBOs, SCLD and gfn-diffusion read the 126-point file that
  scorelab ships (`pines.csv`); DDS and CMCD read a 127-row file, min-max scaled to [0, 1], first row repeated
  (`pines_dds.csv`, from franciscovargas/denoising_diffusion_samplers, MIT); 63 of the 1600 cell counts differ.  The
  published 512.6 (DDS's notebooks' "ground truth", quoted in sde_sampler `cox.py` next to the other file) is the
  log Z of DDS's file: our SMC and BDMC reproduce it there (tables above), and give 501.8 on ours.  Sendera et al.
  (§B.1) note that both 512.6 and 501.8 are used in the literature.  The DDS repository's raw results
  (`dds_data/results/dds_results.py`, 30 seeds, on its own file) at 512 steps: DDS 503.0 ± 0.8, PIS 506.3 ± 0.6,
  SMC 504.2 ± 2.8 (importance-weighted log Z-hat)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", action="store_true", help="SMC reference log Z of lgcp and logreg_bc")
    ap.add_argument("--adjoint", action="store_true", help="memory and time of the KL gradient variants")
    ap.add_argument("--bdmc", action="store_true", help="lgcp log Z bracketed by forward / reverse AIS")
    ap.add_argument("--merge", action="store_true", help="write densities_scale.md/json from the parts")
    ap.add_argument("--limits", action="store_true", help="what limits ManyWell DIS/LV: one change at a time")
    ap.add_argument("--only", nargs="*", default=None, choices=list(dict.fromkeys([*BUDGET, *REFERENCE])),
                    help="grid, --reference, --curve: restrict to these targets")
    ap.add_argument("--changes", nargs="*", default=None, help="--limits: only these LIMITS rows")
    ap.add_argument("--curve", action="store_true", help="what the CPU budget buys (CURVES)")
    ap.add_argument("--untrained", action="store_true", help="the untrained samplers (what training starts from)")
    ap.add_argument("--budgets", nargs="*", type=float, default=None, help="--curve: only these CPU-s budgets")
    ap.add_argument("--rows", nargs="*", default=None, help="--curve: only these CURVES rows, as target/method/loss; "
                    "--bdmc: only these cases (pines, pines_dds, simulated)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.reference:
        return reference_main(args)
    if args.adjoint:
        return adjoint_main(args)
    if args.bdmc:
        return bdmc_main(args)
    if args.merge:
        return merge_main(args)
    if args.limits:
        return limits_main(args)
    if args.curve:
        return curve_main(args)
    if args.untrained:
        return untrained_main(args)
    return grid_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
