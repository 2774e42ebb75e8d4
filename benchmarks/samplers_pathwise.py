r"""Floor-free comparison of deterministic samplers: pathwise error to the exact probability-flow ODE solution.

    python benchmarks/samplers_pathwise.py --target aniso16d [--nfes 5 10 20 50] [--n-dev 2000] [--n 20000]
                                           [--seeds 5] [--reference unipc|dopri5] [--ref-steps 1000]
                                           [--rtol 1e-9] [--dopri-check 100] [--flows-only --flow-seeds 0 1 2]
                                           [--fit-inits uniform_log_snr uniform_t] [--fit-reference unipc]

Why.  Sliced W2 to target draws has a two-sample floor that shrinks slowly with n (ring2d: 0.033 at n = 100k, 0.023
at 400k): once two samplers are at it, no affordable n separates them.  For *deterministic* samplers on an exact
model there is a floor-free measure: every such sampler approximates the same map x_T -> x_0, the probability-flow
ODE flow Phi from t_max to t = 0, and with exact scores Phi pushes N(0, I) to the data law (up to the prior
mismatch at t_max, ~1e-5 here).  The pathwise error

    E(S) = ( E_{x_T ~ N(0, I)} ||S(x_T) - Phi(x_T)||^2 )^{1/2}

bounds the sampler's W2 to the ODE's law from above (couple the outputs by x_T), and it is estimated without a
noise floor (the only noise is the Monte-Carlo average over x_T, the same x_T for both libraries, so the paired
difference is precise).  Phi runs in float64 from t_max down to t = 1e-9 (sigma = 1e-5; the mixture's covariances
are full rank, so the flow is smooth there), by one of two solvers:

- ``--reference unipc`` (default): UniPC-3 on ``--ref-steps`` steps uniform in log-SNR, cross-checked on every seed
  by an independent solver, singlestep DPM-Solver-3 on as many quadratic-in-t steps (3x the evaluations); their
  RMS gap is reported.  On aniso16d with 1000 steps the two agree to 4.4e-6 (RMS) and UniPC is 3.6e-6 from dopri5
  at rtol 1e-11 (100 x_T), ~50x cheaper than dopri5 at rtol 1e-9, which is itself 2.1e-4 off (adaptive dopri5
  takes one step size for the whole batch and accumulates error over its many steps near t = 0).
  ``--dopri-check N`` reports the gap to dopri5 at rtol 1e-11 on N x_T of seed 1.
- ``--reference dopri5``: adaptive dopri5 at ``--rtol`` = ``--atol``, cross-checked by rtol 1e-7.

A second floor-free measure, at the level of distributions: the *coupled* sliced W2

    SW2_c(S) = SW2( {S(x_T^i)}_i , {Phi(x_T^i)}_i )     (the same n draws x_T^i for both clouds)

on the 200 fixed directions of ``samplers.py``.  It estimates SW2(S # N(0, I), data law) -- the quantity the sliced-W2
table of ``samplers.py`` measures -- with common random numbers in place of an independent target sample: it is
exactly 0 for S = Phi, so no two-sample floor, and it is not inflated by trajectories that swap between modes as
long as the mode weights stay right (the pathwise RMS counts each swap at the full distance between modes, which
dominates it in d = 16).  The coupled mode-weight TV (modes of S(x_T) vs. of Phi(x_T)) is reported with it.  It is
also ``scorelab.samplers.grid_opt``'s objective (on other x_T: seed 1000, 512 draws).

What is compared: every deterministic configuration of ``benchmarks/samplers.py`` (scorelab's ODE samplers on every
grid, Karras rho and option variant, and on grids fitted by ``grid_opt`` from each grid of ``--fit-inits`` with the
teacher ``--fit-reference``; every diffusers scheduler variant, all of
which are deterministic) is run on ``--n-dev`` x_T of dev seed 0; per library and NFE the configuration of least
pathwise error, and separately the one of least coupled sliced W2, is the contender (the same rule for both
libraries, dev seed only); the contenders are then compared
on held-out seeds 1..S (fresh x_T, shared by both libraries within a seed): paired difference, one-sided t-test.
Samplers that stop at t_min = 1/N without a last step to 0 are compared with Phi(x_T) all the same: not denoising
is part of their error.  The flows are cached (``--cache``, NumPy files without pickle) so that ``--flows-only`` can
compute the seeds' flows in parallel processes beforehand.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import samplers as bench  # noqa: E402
from harness import DEV_SEED, RESULTS, heldout_seeds, paired, paired_cells, write_results  # noqa: E402

from scorelab.core.processes import Discrete  # noqa: E402
from scorelab.core.schedules import make_grid  # noqa: E402
from scorelab.evaluation import metrics  # noqa: E402
from scorelab.samplers import SAMPLERS  # noqa: E402

T_END = 1e-9  # sigma(T_END) = 1e-5 on DDPM-linear: the flow's end point, t = 0 to far below the errors measured
N_PROJ = 200  # fixed directions of the coupled sliced W2 (those of samplers.py)
METRICS = {"rms": "pathwise RMS error", "sw2": "coupled sliced W2"}
REFERENCES = {"unipc": "UniPC-3 on {a.ref_steps} uniform log-SNR steps",
              "dopri5": "dopri5 (rtol = atol = {a.rtol:g})"}
CHECKS = {"unipc": "DPM-Solver-3, same number of quadratic steps", "dopri5": "dopri5 at rtol 1e-7"}


def exact_flow(model, x_T: torch.Tensor, rtol: float) -> torch.Tensor:
    """Phi(x_T): dopri5 on the PF-ODE from t_max to T_END in float64 (a grid ending at 0 would make the solver take
    its final "denoise" step instead of integrating)."""
    ts = torch.tensor([model.process.t_max, T_END], dtype=torch.float64)
    return SAMPLERS["dopri5"].fn(model, x_T.double(), ts, rtol=rtol, atol=rtol)


def highorder_flow(model, x_T: torch.Tensor, steps: int, sampler: str = "unipc",
                   grid: str = "uniform_log_snr") -> torch.Tensor:
    """Phi(x_T) by a fixed-step high-order solver on ``steps`` steps from t_max to T_END in float64."""
    p = model.process
    return SAMPLERS[sampler].fn(model, x_T.double(), make_grid(grid, p, steps, t_max=p.t_max, t_min=T_END))


def flow(model, x_T: torch.Tensor, args, check: bool = False) -> torch.Tensor:
    """Phi(x_T) by the ``--reference`` solver, or (``check``) by its independent cross-check."""
    if args.reference == "dopri5":
        return exact_flow(model, x_T, 1e-7 if check else args.rtol)
    return highorder_flow(model, x_T, args.ref_steps, *(("dpm_solver_3", "quadratic") if check else ()))


def flow_tag(args) -> str:
    return f"rtol{args.rtol:g}" if args.reference == "dopri5" else f"unipc{args.ref_steps}"


def deterministic(cfg: dict) -> bool:
    """scorelab: the registry's flag; diffusers: every configuration benchmarked is a deterministic ODE solver."""
    return cfg["lib"] == "diffusers" or not SAMPLERS[cfg["method"]].stochastic


def rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).pow(2).sum(1).mean().sqrt())


def x_T_of(seed: int, n: int, d: int) -> torch.Tensor:
    """x_T of seed 0 (dev) and 1..S (held-out), shared by both libraries."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(900 + seed))


def flow_of(model, seed: int, n: int, args, check: bool = False) -> torch.Tensor:
    """Phi(x_T) of ``x_T_of(seed, n, d)`` (or its cross-check), from ``args.cache`` if there (``.npy``, loaded
    without pickle)."""
    tag = flow_tag(args) + ("_check" if check else "")
    path = args.cache / f"{args.target}_s{seed}_n{n}_{tag}.npy" if args.cache else None
    if path is not None and path.exists():
        return torch.from_numpy(np.load(path, allow_pickle=False))
    ref = flow(model, x_T_of(seed, n, model.gm.d), args, check)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, ref.numpy(), allow_pickle=False)
        tmp.replace(path)  # atomic: a parallel reader never sees half a file
    return ref


class Coupled:
    """Errors of a sampler's outputs S(x_T) against Phi(x_T) from the same x_T: pathwise RMS, coupled sliced W2
    (``samplers.Quality`` with Phi(x_T) as its reference: 1-D optimal matching of the sorted projections) and the
    coupled mode-weight TV (1/2 sum_k |w_k(S) - w_k(Phi)|, each point to its most responsible component)."""

    def __init__(self, gm, ref: torch.Tensor):
        self.gm, self.ref = gm, ref
        self.q = bench.Quality(gm, ref.shape[0], N_PROJ, 0, ref=ref.numpy())
        self.w_ref = metrics.mode_stats(ref.numpy(), gm)["weights"]

    def __call__(self, x: torch.Tensor) -> dict:
        xn = x.double().numpy()
        if not np.all(np.isfinite(xn)):
            return {"rms": float("inf"), "sw2": float("inf"), "tv": 1.0}
        w = metrics.mode_stats(xn, self.gm)["weights"]
        return {"rms": rms(x, self.ref), "sw2": self.q.sw2(xn), "tv": 0.5 * float(np.abs(w - self.w_ref).sum())}


def dev_stage(model, configs: list[dict], nfes, ref: torch.Tensor) -> list[dict]:
    """Both errors of every configuration at every NFE on the x_T of dev seed 0 (``ref`` = their flow)."""
    x_T, err, rows = x_T_of(0, ref.shape[0], ref.shape[1]), Coupled(model.gm, ref), []
    for cfg in tqdm(configs, desc="pathwise dev", leave=False):
        for nfe in nfes:
            row = {k: cfg[k] for k in ("lib", "method", "label")} | {"nfe": nfe}
            try:
                x, used = bench.run(cfg, model, x_T.float(), nfe, 0)
            except ValueError as e:  # budget too small for this sampler
                rows.append(row | {"error": str(e)})
                continue
            rows.append(row | {"nfe_used": used} | {k: v if math.isfinite(v) else float("inf")
                                                     for k, v in err(x).items()})
    return rows


def contenders(rows: list[dict], nfes, metric: str = "rms") -> dict:
    """(lib, nfe) -> (method, label) of least dev ``metric`` within the budget."""
    best: dict = {}
    for r in rows:
        if metric in r and math.isfinite(r[metric]) and r["nfe_used"] <= r["nfe"]:
            key = (r["lib"], r["nfe"])
            if key not in best or r[metric] < best[key][0]:
                best[key] = (r[metric], r["method"], r["label"])
    return {k: v[1:] for k, v in best.items()}


def heldout(model, by_label: dict, best: dict, args, d: int) -> tuple[list[dict], dict]:
    """Every contender (of either metric) on the held-out seeds; per seed the gap between Phi and its cross-check
    (the largest is reported), and on seed 1 the gap to dopri5 at rtol 1e-11 on ``args.dopri_check`` x_T."""
    runs = sorted({(lib, nfe, m, lab) for b in best.values() for (lib, nfe), (m, lab) in b.items()})
    rows, ref_err = [], {"rms": 0.0, "sw2": 0.0}
    for seed in heldout_seeds(DEV_SEED + 1, args.seeds):
        x_T, ref = x_T_of(seed, args.n, d), flow_of(model, seed, args.n, args)
        err = Coupled(model.gm, ref)
        gap = err(flow_of(model, seed, args.n, args, check=True))
        ref_err |= {k: max(ref_err[k], gap[k]) for k in ("rms", "sw2")}
        if seed == 1 and args.dopri_check:
            m = args.dopri_check
            ref_err["dopri5_1e-11_rms"] = rms(exact_flow(model, x_T[:m], 1e-11), ref[:m])
        for lib, nfe, method, label in tqdm(runs, desc=f"held-out seed {seed}", leave=False):
            x, used = bench.run(by_label[(method, label)], model, x_T.float(), nfe, seed)
            rows.append({"seed": seed, "nfe": nfe, "lib": lib, "method": method, "label": label, "nfe_used": used,
                         **err(x)})
    return rows, ref_err


def summarize(rows: list[dict], best: dict, nfes, metric: str = "rms") -> dict:
    """Per NFE: each contender's held-out ``metric`` (mean, std; for sw2 also the coupled TV) and the paired
    difference diffusers - scorelab over the held-out seeds."""
    out = {}
    for nfe in nfes:
        per, ent = {}, {}
        for lib in ("scorelab", "diffusers"):
            if (lib, nfe) not in best:
                continue
            method, label = best[(lib, nfe)]
            rs = {r["seed"]: r for r in rows if (r["nfe"], r["lib"], r["method"], r["label"]) == (nfe, lib, method,
                                                                                              label)}
            per[lib] = {s: r[metric] for s, r in rs.items()}
            v, tv = list(per[lib].values()), [r["tv"] for r in rs.values()]
            ent[lib] = {"method": method, "label": label, f"{metric}_mean": float(np.mean(v)),
                        f"{metric}_std": float(np.std(v, ddof=1)), "tv_mean": float(np.mean(tv))}
        if len(ent) == 2:
            ent["paired_diff_diffusers_minus_scorelab"] = paired(
                [per["diffusers"][s] - per["scorelab"][s] for s in sorted(per["scorelab"])])
        out[nfe] = ent
    return out


def _cell(entry: dict, metric: str) -> str:
    tv = f" ({entry['tv_mean']:.4f})" if metric == "sw2" else ""
    return f"{entry[metric + '_mean']:.5f} +- {entry[metric + '_std']:.5f}{tv}"


def markdown(summaries: dict, dev: list[dict], args, d: int, ref_err: dict) -> str:
    lines = [f"## Floor-free errors against the exact PF-ODE flow ({args.target}, d = {d})", "",
             f"Phi = {REFERENCES[args.reference].format(a=args)} to t = {T_END:g} in float64; largest gap to its "
             f"cross-check ({CHECKS[args.reference]}) over the held-out seeds: RMS {ref_err['rms']:.2e}, coupled "
             f"sliced W2 {ref_err['sw2']:.2e}"
             + (f"; RMS gap to dopri5 at rtol 1e-11 ({args.dopri_check} x_T of seed 1): "
                f"{ref_err['dopri5_1e-11_rms']:.2e}" if "dopri5_1e-11_rms" in ref_err else "")
             + ".  Contenders: least "
             f"error on dev seed 0 ({args.n_dev} x_T; {len({(r['method'], r['label']) for r in dev})} deterministic "
             f"configurations), chosen separately for each measure; held-out seeds 1..{args.seeds}, {args.n} x_T "
             "each, shared by both libraries."]
    for metric, summary in summaries.items():
        tv = " (coupled mode TV)" if metric == "sw2" else ""
        lines += ["", f"### {METRICS[metric]}", "",
                  f"| NFE | best scorelab | {METRICS[metric]}{tv} | best diffusers | {METRICS[metric]}{tv} | paired "
                  "diff (diffusers - scorelab) | one-sided p | 95% lower bound | seeds won | ratio diffusers / "
                  "scorelab |", "|---" * 10 + "|"]
        for nfe, e in summary.items():
            if "paired_diff_diffusers_minus_scorelab" not in e:
                continue
            s, f, pd = e["scorelab"], e["diffusers"], e["paired_diff_diffusers_minus_scorelab"]
            lines.append(f"| {nfe} | {s['method']} `{s['label']}` | {_cell(s, metric)} | {f['method']} "
                         f"`{f['label']}` | {_cell(f, metric)} | {paired_cells(pd)} | "
                         f"{f[metric + '_mean'] / s[metric + '_mean']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True, choices=list(bench.targets()))
    ap.add_argument("--nfes", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--n-dev", type=int, default=2000, help="x_T of the dev seed 0 (selection)")
    ap.add_argument("--n", type=int, default=20_000, help="x_T per held-out seed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--reference", choices=list(REFERENCES), default="unipc", help="solver of the exact flow Phi")
    ap.add_argument("--ref-steps", type=int, default=1000, help="steps of the high-order reference")
    ap.add_argument("--rtol", type=float, default=1e-9, help="tolerance of the dopri5 reference")
    ap.add_argument("--dopri-check", type=int, default=0, help="x_T of seed 1 also solved by dopri5 at rtol 1e-11")
    ap.add_argument("--cache", type=Path, default=RESULTS / ".pathwise_flows",
                    help="folder of cached exact flows (reused when target, x_T seed, n and reference match)")
    ap.add_argument("--flows-only", action="store_true", help="compute and cache the flows of --flow-seeds, then stop")
    ap.add_argument("--flow-seeds", type=int, nargs="+", default=None, help="with --flows-only (0 = dev seed)")
    ap.add_argument("--name", default=None)
    bench.add_fit_args(ap)
    args = ap.parse_args(argv)
    bench.set_fit(args)
    torch.set_num_threads(1)
    t0 = time.time()
    gm, process = bench.targets()[args.target], Discrete.from_schedule("linear", 1000)
    model = bench.ExactMixture(gm, process)
    if args.flows_only:
        for seed in args.flow_seeds if args.flow_seeds is not None else range(args.seeds + 1):
            flow_of(model, seed, args.n_dev if seed == 0 else args.n, args)
            if seed > 0:
                flow_of(model, seed, args.n, args, check=True)
        return None
    configs = [c for c in bench.scorelab_configs(False) + bench.diffusers_configs(False) if deterministic(c)]
    by_label = {(c["method"], c["label"]): c for c in configs}
    dev = dev_stage(model, configs, args.nfes, flow_of(model, DEV_SEED, args.n_dev, args))
    best = {m: contenders(dev, args.nfes, m) for m in METRICS}
    rows, ref_err = heldout(model, by_label, best, args, gm.d)
    summaries = {m: summarize(rows, best[m], args.nfes, m) for m in METRICS}
    payload = {"config": {**vars(args), "cache": str(args.cache)},
               "summary": {m: {str(k): v for k, v in sm.items()} for m, sm in summaries.items()}, "dev": dev,
               "heldout": rows, "reference_error": ref_err, "wall_seconds": time.time() - t0}
    write_results(args.name or f"samplers_pathwise_{args.target}", payload,
                  markdown(summaries, dev, args, gm.d, ref_err))
    return payload


if __name__ == "__main__":
    main()
