r"""Defaults only: every scorelab sampler and every diffusers scheduler with its defaults, on held-out seeds of the grid
panel's oracles (issue 24's goals), at NFE 5/10/20/50.

    python benchmarks/sampler_defaults.py [--oracles disc_lin_sep8d,...] [--seeds 2] [--n 20000] [--nfes 5,10,20,50]

Protocol
--------
==============  ====================================================================================================
oracles         ``grid_panel.PANEL``: exact ``ExactMixture`` models and networks trained on their mixtures
                (``grid_panel.NETS``, ``panel_nets``); by default its low-dimensional exact members, one per process
                family first, then the three trained ones (the 32- and 64-d exact ones cost 10-30x more per
                evaluation at n = 20,000; they are in the sweep); the results files are rewritten after each oracle
scorelab        every sampler ``grid_panel.swept_samplers`` lists, ``samplers.sample(model, name, nfe, n)`` with no
                grid and no option: the measured defaults of ``samplers/defaults_table.py``; plus ``auto``
diffusers       DDIM, Euler, Heun, DPM-Solver++ 2M and 3M, DPM-Solver-SDE (torchsde), UniPC, DEIS and DPM-Solver
                singlestep ("2S", order 2) of diffusers, each with its defaults but the training betas
                (``trained_betas`` = the process's chain at the index times ``index_times``) and eps prediction; the
                largest ``num_inference_steps`` whose model calls fit the NFE; the exact eps at the process time of
                each call (t of the scheduler's sigma, ``t_from_sigma_hat``; x rescaled by ``vp_scale``); one change
                of a default: DDIM's ``clip_sample`` is off (it clips x0 to [-1, 1], meant for images)
seeds           held-out seeds 1..S (the sweep saw seed 0 only): x_T, sampler noise and the reference draw per seed;
                the same x_T for every method within a seed (paired)
metrics         unbiased MMD^2 to the exact law (``metrics.mmd2_to_mixture``, 4 bandwidths x ``--n-freq``
                frequencies: no floor) and sliced W2 (``--n-proj`` fixed directions) to n exact draws, with its
                two-sample floor (an exact sample of the same n scored the same way)
goals           (1) per solver present in both libraries (``PAIRS``) scorelab <= diffusers at every NFE (mean over
                seeds); (2) the best scorelab default (or auto) beats diffusers' best default at NFE 5, 10, 20 on
                every oracle, NFE 5 by >= 20%; (3) no scorelab sampler worse than 2x DDIM at any NFE it can run
==============  ====================================================================================================
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from grid_panel import PANEL, oracle, swept_samplers
from harness import heldout_seeds, paired, table, write_results

from scorelab.core.denoisers import CountingModel
from scorelab.core.processes import EDM, Discrete
from scorelab.core.schedules import karras, t_from_sigma_hat
from scorelab.evaluation import metrics
from scorelab.samplers.budget import sample

DIFFUSERS = {
    "ddim": ("DDIMScheduler", {"clip_sample": False}),  # its default clips x0 to [-1, 1] (images); data here aren't
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "dpm_2s": ("DPMSolverSinglestepScheduler", {}),
}
#: solvers present in both libraries: scorelab sampler -> diffusers scheduler (UniPC: diffusers' default is UniPC-2
#: with B(h) = e^h - 1, scorelab's ``unipc_bh2``; scorelab's ``unipc`` is UniPC-3 bh1)
PAIRS = {"ddim": "ddim", "heun": "heun", "dpm_solver_pp_2m": "dpmpp_2m", "dpm_solver_pp_3m": "dpmpp_3m",
         "unipc_bh2": "unipc"}
LOW_DIM = ("disc_lin_sep8d", "edm_narrow8d", "vp_grid2d", "vp_grid2d_net", "disc_lin_sep8d_net", "edm_aniso64d_net",
           "disc_lin_ring2d", "disc_cos_aniso16d")


def index_times(process, N: int = 1000) -> torch.Tensor:
    """Process times tau_k of diffusers' training indices k = 0..N-1: (k + 1)/N on a Discrete chain and on VP; on
    EDM the Karras rho = 7 grid of N sigmas from sigma_min to sigma_max (EDM has no chain of its own)."""
    if isinstance(process, Discrete):
        return torch.arange(1, process.N + 1, dtype=torch.float64) / process.N
    if isinstance(process, EDM):
        return karras(process, N - 1).flip(0)
    return torch.arange(1, N + 1, dtype=torch.float64) / N * process.t_max


def trained_betas(process) -> np.ndarray:
    """beta_k = 1 - abar(tau_k)/abar(tau_{k-1}), abar = alpha^2/(alpha^2 + sigma^2) (the VP form of the process)."""
    lam = process.log_snr(index_times(process))
    log_abar = -torch.nn.functional.softplus(-lam)  # log sigmoid(lambda)
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), log_abar[:-1]])
    return (-torch.expm1(log_abar - prev)).clamp(1e-12, 0.999).numpy()


def make_scheduler(name: str, process, seed: int):
    import diffusers

    cls, kw = DIFFUSERS[name]
    if name == "dpmpp_sde":
        kw = {**kw, "noise_sampler_seed": seed}
    return getattr(diffusers, cls)(trained_betas=trained_betas(process), prediction_type="epsilon", **kw)


def _steps_for(name: str, process, nfe: int, seed: int):
    """The scheduler set to the most inference steps whose model calls fit ``nfe`` (None if none does)."""
    for steps in range(nfe, 0, -1):
        sched = make_scheduler(name, process, seed)
        sched.set_timesteps(steps)
        if len(sched.timesteps) <= nfe:
            return sched
    return None


def _call_time(sched, i: int, k, process) -> float:
    """Process time of model call i: the time whose sigma/alpha is the scheduler's sigma (or timestep k's)."""
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None and len(sigmas) > i:
        s = float(sigmas[i])
    else:
        ac = float(sched.alphas_cumprod[int(k)])
        s = math.sqrt((1 - ac) / ac)
    return float(t_from_sigma_hat(process, torch.tensor(s, dtype=torch.float64)))


def vp_scale(process, t: float) -> float:
    """c(t) = sqrt(alpha^2 + sigma^2): the process's x_t is c(t) times diffusers' variance-preserving sample (1 on
    VP and Discrete chains; sqrt(1 + sigma^2) on EDM); eps is the same in both scales."""
    a, s, _ = process.coefs(torch.tensor(float(t), dtype=torch.float64))
    return math.sqrt(float(a) ** 2 + float(s) ** 2)


def run_diffusers(name: str, model, x_T: torch.Tensor, nfe: int, seed: int):
    """diffusers' own loop (scale_model_input, model, step) with the exact eps -> (x_0, NFE counted) or None."""
    sched = _steps_for(name, model.process, nfe, seed)
    if sched is None:
        return None
    p = model.process
    m, x = CountingModel(model), x_T / vp_scale(p, p.t_max) * sched.init_noise_sigma
    g = torch.Generator().manual_seed(50_000 + seed)
    for i, k in enumerate(sched.timesteps):
        t = _call_time(sched, i, k, p)
        eps = m.eps(sched.scale_model_input(x, k) * vp_scale(p, t), torch.tensor(t, dtype=torch.float64))
        kw = {"generator": g} if "generator" in sched.step.__code__.co_varnames else {}
        x = sched.step(eps, k, x, **kw).prev_sample
    return x, m.nfe


class Scores:
    """MMD^2 to the exact law and sliced W2 to n exact draws (fixed frequencies and directions per oracle)."""

    def __init__(self, gm, n: int, seed: int, n_freq: int, n_proj: int):
        self.gm = gm
        self.omega, _ = metrics.mixture_frequencies(gm, n_freq)
        P = np.random.RandomState(0).randn(gm.d, n_proj)
        self.P = P / np.linalg.norm(P, axis=0, keepdims=True)
        self.ref = np.sort(gm.sample(n, torch.Generator().manual_seed(10_000 + seed)).numpy() @ self.P, axis=0)
        self.floor = self.sw2(gm.sample(n, torch.Generator().manual_seed(20_000 + seed)).numpy())

    def sw2(self, x: np.ndarray) -> float:
        return float(np.sqrt(((np.sort(x @ self.P, axis=0) - self.ref) ** 2).mean()))

    def __call__(self, x: torch.Tensor) -> dict:
        xn = x.to(torch.float64).reshape(x.shape[0], -1).numpy()
        if not np.all(np.isfinite(xn)):
            return {"mmd": math.inf, "sw2": math.inf}
        return {"mmd": metrics.mmd2_to_mixture(xn, self.gm, self.omega), "sw2": self.sw2(xn)}


def run_oracle(name: str, seeds: list[int], nfes: list[int], n: int, args) -> dict:
    """{method: {nfe: [per-seed dict(mmd, sw2, nfe_used)]}} plus the floors."""
    fam, p, gm, model = oracle(name)
    out, floors = {}, []
    methods = [("scorelab", s) for s in swept_samplers() + ["auto"]] + [("diffusers", d) for d in DIFFUSERS]
    for seed in seeds:
        sc = Scores(gm, n, seed, args.n_freq, args.n_proj)
        floors.append(sc.floor)
        x_T = p.prior_sample((n, gm.d), generator=torch.Generator().manual_seed(seed))
        for lib, meth in methods:
            key = f"{lib}:{meth}"
            for nfe in nfes:
                try:
                    if lib == "scorelab":
                        x, info = sample(model, meth, nfe, n, shape=(gm.d,), seed=seed)
                        res = (x, info["nfe_measured_per_batch"])
                    else:
                        res = run_diffusers(meth, model, x_T, nfe, seed)
                except ValueError:
                    res = None
                row = None if res is None else {**sc(res[0]), "nfe_used": res[1]}
                out.setdefault(key, {}).setdefault(nfe, []).append(row)
    return {"runs": out, "sw2_floor": floors, "family": fam}


def mean_of(rows: list, key: str) -> float:
    if any(r is None for r in rows):
        return math.nan
    return float(np.mean([r[key] for r in rows]))


def goals(res: dict, nfes: list[int], key: str) -> dict:
    """The issue's three goals on metric ``key`` (mean over seeds; paired differences for goal 2)."""
    g1, g2, g3 = [], [], []
    for o, r in res.items():
        runs = r["runs"]
        for s, d in PAIRS.items():
            for nfe in nfes:
                a, b = mean_of(runs[f"scorelab:{s}"][nfe], key), mean_of(runs[f"diffusers:{d}"][nfe], key)
                g1.append({"oracle": o, "solver": s, "nfe": nfe, "scorelab": a, "diffusers": b, "met": a <= b})
        for nfe in [k for k in nfes if k <= 20]:
            sl = {m: mean_of(v[nfe], key) for m, v in runs.items() if m.startswith("scorelab:")}
            df = {m: mean_of(v[nfe], key) for m, v in runs.items() if m.startswith("diffusers:")}
            bs, bd = min(sl, key=lambda m: _nan_inf(sl[m])), min(df, key=lambda m: _nan_inf(df[m]))
            diffs = [db[key] - sb[key] for sb, db in zip(runs[bs][nfe], runs[bd][nfe], strict=True)]
            g2.append({"oracle": o, "nfe": nfe, "scorelab_best": bs, "value": sl[bs], "diffusers_best": bd,
                       "diffusers": df[bd], "ratio": sl[bs] / df[bd] if df[bd] else math.nan,
                       "paired": paired(diffs),  # NFE 5: scorelab <= 0.8 diffusers (better by >= 20%)
                       "met": bool(sl[bs] <= df[bd] * (0.8 if nfe == 5 else 1.0))})
        for nfe in nfes:
            ddim = mean_of(runs["scorelab:ddim"][nfe], key)
            for m, v in runs.items():
                val = mean_of(v[nfe], key)
                if m.startswith("scorelab:") and not math.isnan(val):
                    g3.append({"oracle": o, "sampler": m.split(":")[1], "nfe": nfe, "value": val, "ddim": ddim,
                               "met": _ok3(val, ddim, key)})
    return {"goal1": g1, "goal2": g2, "goal3": g3}


def _ok3(val: float, ddim: float, key: str) -> bool:
    """Goal 3: not worse than 2x DDIM (MMD^2 is unbiased and can be ~0 or negative: below 1e-5 counts as 0)."""
    if key == "mmd":
        return max(val, 0.0) <= 2 * max(ddim, 1e-5)
    return val <= 2 * ddim


def _nan_inf(v: float) -> float:
    return math.inf if math.isnan(v) else v


def markdown(res: dict, gl: dict, nfes: list[int], meta: dict) -> str:
    key = meta["metric"]
    lines = [f"# Defaults only: scorelab vs diffusers on the grid panel (held-out seeds {meta['seeds']}, "
             f"n = {meta['n']})", "",
             f"Metric for the goals: {'unbiased MMD^2 to the exact law' if key == 'mmd' else 'sliced W2'}; "
             f"wall {meta['wall_s']:.0f} s, CPU {meta['cpu_s']:.0f} s.  Oracles measured: "
             f"{', '.join(meta['oracles'])} (of {', '.join(meta['oracles_requested'])}).", ""]
    for o, r in res.items():
        lines += [f"## {o} ({r['family']}; sliced-W2 floor {np.mean(r['sw2_floor']):.4f})", ""]
        rows = []
        for m, v in r["runs"].items():
            rows.append([m] + [f"{mean_of(v[k], 'mmd'):.2e} / {mean_of(v[k], 'sw2'):.3f}" for k in nfes])
        lines += table(["method (MMD^2 / sliced W2)"] + [f"NFE {k}" for k in nfes], rows) + [""]
    met = {g: sum(x["met"] for x in gl[g]) for g in gl}
    lines += ["## Goals", "",
              f"- (1) same solver, scorelab <= diffusers: {met['goal1']}/{len(gl['goal1'])} (oracle, solver, NFE) "
              "cells. Misses: " + (", ".join(f"{x['solver']}@{x['oracle']}/NFE{x['nfe']} ({x['scorelab']:.2e} vs "
                                             f"{x['diffusers']:.2e})" for x in gl["goal1"] if not x["met"]) or "none"),
              f"- (2) best scorelab default vs best diffusers default (NFE 5: by >= 20%): {met['goal2']}/"
              f"{len(gl['goal2'])}.", ""]
    lines += table(["oracle", "NFE", "scorelab best", "value", "diffusers best", "value", "ratio", "met"],
                   [[x["oracle"], x["nfe"], x["scorelab_best"], f"{x['value']:.2e}", x["diffusers_best"],
                     f"{x['diffusers']:.2e}", f"{x['ratio']:.2f}", "yes" if x["met"] else "no"] for x in gl["goal2"]])
    bad = [x for x in gl["goal3"] if not x["met"]]
    lines += ["", f"- (3) scorelab samplers within 2x DDIM: {met['goal3']}/{len(gl['goal3'])} cells. Misses: "
              + (", ".join(f"{x['sampler']}@{x['oracle']}/NFE{x['nfe']} ({x['value'] / max(x['ddim'], 1e-12):.1f}x)"
                           for x in bad) or "none")]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracles", default=",".join(LOW_DIM))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--nfes", default="5,10,20,50")
    ap.add_argument("--n-freq", type=int, default=128, help="MMD frequencies per bandwidth")
    ap.add_argument("--n-proj", type=int, default=64, help="sliced-W2 directions")
    ap.add_argument("--metric", choices=["mmd", "sw2"], default="mmd")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    wall0, cpu0 = time.time(), time.process_time()
    seeds, nfes = heldout_seeds(args.first_seed, args.seeds), [int(v) for v in args.nfes.split(",")]
    names = list(PANEL) if args.oracles == "all" else args.oracles.split(",")
    res = {}
    for name in names:  # the results files are rewritten after each oracle: a cut-short run keeps what it measured
        t0 = time.perf_counter()
        res[name] = run_oracle(name, seeds, nfes, args.n, args)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        gl = goals(res, nfes, args.metric)
        meta = {"oracles": list(res), "oracles_requested": names, "seeds": seeds, "n": args.n, "nfes": nfes,
                "metric": args.metric, "n_freq": args.n_freq, "n_proj": args.n_proj, "wall_s": time.time() - wall0,
                "cpu_s": time.process_time() - cpu0}
        payload = {"config": meta, "goals": gl,
                   "results": {o: {"family": r["family"], "sw2_floor": r["sw2_floor"],
                                   "runs": {m: {str(k): v for k, v in d.items()} for m, d in r["runs"].items()}}
                               for o, r in res.items()}}
        write_results("sampler_defaults", payload, markdown(res, gl, nfes, meta), echo=False)
    print(markdown(res, gl, nfes, meta))


if __name__ == "__main__":
    main()
