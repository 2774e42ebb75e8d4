r"""Floor-free comparison of deterministic samplers: pathwise error to the exact probability-flow ODE solution.

    python benchmarks/samplers_pathwise.py --target aniso16d [--nfes 5 10 20 50] [--n-dev 2000] [--n 20000]
                                           [--seeds 5] [--rtol 1e-9]

Why.  Sliced W2 to target draws has a two-sample floor that shrinks slowly with n (ring2d: 0.033 at n = 100k, 0.023
at 400k): once two samplers are at it, no affordable n separates them.  For *deterministic* samplers on an exact
model there is a floor-free measure: every such sampler approximates the same map x_T -> x_0, the probability-flow
ODE flow Phi from t_max to t = 0, and with exact scores Phi pushes N(0, I) to the data law (up to the prior
mismatch at t_max, ~1e-5 here).  The pathwise error

    E(S) = ( E_{x_T ~ N(0, I)} ||S(x_T) - Phi(x_T)||^2 )^{1/2}

bounds the sampler's W2 to the ODE's law from above (couple the outputs by x_T), and it is estimated without a
noise floor (the only noise is the Monte-Carlo average over x_T, the same x_T for both libraries, so the paired
difference is precise).  Phi is adaptive dopri5 in float64 at ``--rtol`` = ``--atol`` down to t = 1e-9 (sigma =
1e-5; the mixture's covariances are full rank, so the flow is smooth there); its own error is reported (rtol 1e-7 vs
1e-9).

What is compared: every deterministic configuration of ``benchmarks/samplers.py`` (scorelab's ODE samplers on every
grid, Karras rho and option variant, and on grids fitted by ``grid_opt``; every diffusers scheduler variant, all of
which are deterministic) is run on ``--n-dev`` x_T of dev seed 0; per library and NFE the configuration of least
pathwise error is the contender (the same rule for both libraries, dev seed only); the contenders are then compared
on held-out seeds 1..S (fresh x_T, shared by both libraries within a seed): paired difference, one-sided t-test.
Samplers that stop at t_min = 1/N without a last step to 0 are compared with Phi(x_T) all the same: not denoising
is part of their error.
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
from _common import write_results  # noqa: E402
from samplers import ExactMixture, diffusers_configs, paired, run, scorelab_configs, targets  # noqa: E402

from scorelab.processes import Discrete  # noqa: E402
from scorelab.samplers import SAMPLERS  # noqa: E402

T_END = 1e-9  # sigma(T_END) = 1e-5 on DDPM-linear: the flow's end point, t = 0 to far below the errors measured


def exact_flow(model, x_T: torch.Tensor, rtol: float) -> torch.Tensor:
    """Phi(x_T): dopri5 on the PF-ODE from t_max to T_END in float64 (a grid ending at 0 would make the solver take
    its final "denoise" step instead of integrating)."""
    ts = torch.tensor([model.process.t_max, T_END], dtype=torch.float64)
    return SAMPLERS["dopri5"].fn(model, x_T.double(), ts, rtol=rtol, atol=rtol)


def deterministic(cfg: dict) -> bool:
    """scorelab: the registry's flag; diffusers: every configuration benchmarked is a deterministic ODE solver."""
    return cfg["lib"] == "diffusers" or not SAMPLERS[cfg["method"]].stochastic


def rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).pow(2).sum(1).mean().sqrt())


def dev_stage(model, configs: list[dict], nfes, n_dev: int, d: int, rtol: float) -> list[dict]:
    """Pathwise error of every configuration at every NFE on n_dev x_T of dev seed 0."""
    x_T = torch.randn(n_dev, d, generator=torch.Generator().manual_seed(900))
    ref, rows = exact_flow(model, x_T, rtol), []
    for cfg in tqdm(configs, desc="pathwise dev", leave=False):
        for nfe in nfes:
            row = {k: cfg[k] for k in ("lib", "method", "label")} | {"nfe": nfe}
            try:
                x, used = run(cfg, model, x_T.float(), nfe, 0)
            except ValueError as e:  # budget too small for this sampler
                rows.append(row | {"error": str(e)})
                continue
            err = rms(x, ref)
            rows.append(row | {"nfe_used": used, "rms": err if math.isfinite(err) else float("inf")})
    return rows


def contenders(rows: list[dict], nfes) -> dict:
    """(lib, nfe) -> (method, label) of least dev pathwise error within the budget."""
    best: dict = {}
    for r in rows:
        if "rms" in r and math.isfinite(r["rms"]) and r["nfe_used"] <= r["nfe"]:
            key = (r["lib"], r["nfe"])
            if key not in best or r["rms"] < best[key][0]:
                best[key] = (r["rms"], r["method"], r["label"])
    return {k: v[1:] for k, v in best.items()}


def heldout(model, by_label: dict, best: dict, args, d: int) -> tuple[list[dict], float]:
    rows, ref_err = [], float("nan")
    for seed in range(1, args.seeds + 1):
        x_T = torch.randn(args.n, d, generator=torch.Generator().manual_seed(900 + seed))
        ref = exact_flow(model, x_T, args.rtol)
        if seed == 1:
            ref_err = rms(exact_flow(model, x_T, 1e-7), ref)
        for (lib, nfe), (method, label) in tqdm(sorted(best.items()), desc=f"held-out seed {seed}", leave=False):
            x, used = run(by_label[(method, label)], model, x_T.float(), nfe, seed)
            rows.append({"seed": seed, "nfe": nfe, "lib": lib, "method": method, "label": label, "nfe_used": used,
                         "rms": rms(x, ref)})
    return rows, ref_err


def summarize(rows: list[dict], best: dict, nfes) -> dict:
    out = {}
    for nfe in nfes:
        per = {lib: {r["seed"]: r["rms"] for r in rows if r["nfe"] == nfe and r["lib"] == lib}
               for lib in ("scorelab", "diffusers")}
        ent = {lib: {"method": best[(lib, nfe)][0], "label": best[(lib, nfe)][1],
                     "rms_mean": float(np.mean(list(v.values()))), "rms_std": float(np.std(list(v.values()), ddof=1))}
               for lib, v in per.items() if v}
        if len(ent) == 2:
            ent["paired_diff_diffusers_minus_scorelab"] = paired(
                [per["diffusers"][s] - per["scorelab"][s] for s in sorted(per["scorelab"])])
        out[nfe] = ent
    return out


def markdown(summary: dict, dev: list[dict], args, d: int, ref_err: float) -> str:
    lines = [f"## Pathwise error to the exact PF-ODE flow ({args.target}, d = {d})", "",
             f"RMS ||S(x_T) - Phi(x_T)||; Phi = dopri5 (float64, rtol = atol = {args.rtol:g}) to t = {T_END:g}; "
             f"Phi's own error (rtol 1e-7 vs {args.rtol:g}): {ref_err:.2e}.  An upper bound on W2(sampler law, ODE "
             "law) with no two-sample floor.  Contenders: least error on dev seed 0 "
             f"({args.n_dev} x_T; {len({(r['method'], r['label']) for r in dev})} deterministic configurations); "
             f"held-out seeds 1..{args.seeds}, {args.n} x_T each, shared by both libraries.", "",
             "| NFE | best scorelab | RMS error | best diffusers | RMS error | paired diff (diffusers - scorelab) "
             "| one-sided p | 95% lower bound | seeds won | ratio diffusers / scorelab |", "|---" * 10 + "|"]
    for nfe, e in summary.items():
        if "paired_diff_diffusers_minus_scorelab" not in e:
            continue
        s, f, pd = e["scorelab"], e["diffusers"], e["paired_diff_diffusers_minus_scorelab"]
        lines.append(f"| {nfe} | {s['method']} `{s['label']}` | {s['rms_mean']:.5f} +- {s['rms_std']:.5f} | "
                     f"{f['method']} `{f['label']}` | {f['rms_mean']:.5f} +- {f['rms_std']:.5f} | "
                     f"{pd['mean']:+.5f} +- {pd['std']:.5f} | {pd['p_one_sided']:.3g} | {pd['lower95']:+.5f} | "
                     f"{pd['wins']}/{pd['n_seeds']} | {f['rms_mean'] / s['rms_mean']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True, choices=list(targets()))
    ap.add_argument("--nfes", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--n-dev", type=int, default=2000, help="x_T of the dev seed 0 (selection)")
    ap.add_argument("--n", type=int, default=20_000, help="x_T per held-out seed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rtol", type=float, default=1e-9)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    gm, process = targets()[args.target], Discrete.from_schedule("linear", 1000)
    model = ExactMixture(gm, process)
    configs = [c for c in scorelab_configs(False) + diffusers_configs(False) if deterministic(c)]
    by_label = {(c["method"], c["label"]): c for c in configs}
    dev = dev_stage(model, configs, args.nfes, args.n_dev, gm.d, args.rtol)
    best = contenders(dev, args.nfes)
    rows, ref_err = heldout(model, by_label, best, args, gm.d)
    summary = summarize(rows, best, args.nfes)
    payload = {"config": vars(args), "summary": {str(k): v for k, v in summary.items()}, "dev": dev,
               "heldout": rows, "reference_error_rtol1e-7": ref_err, "wall_seconds": time.time() - t0}
    write_results(args.name or f"samplers_pathwise_{args.target}", payload,
                  markdown(summary, dev, args, gm.d, ref_err))
    return payload


if __name__ == "__main__":
    main()
