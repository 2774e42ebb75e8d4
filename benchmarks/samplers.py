r"""Samplers benchmark: quality against NFE on exact Gaussian-mixture oracles, scorelab vs. diffusers side by side.

    python benchmarks/samplers.py [--quick] [--n 20000] [--seeds 3] [--n-dev 2000] [--skip-overhead]

Anchor: diffusers' DDIM, Euler, DPM-Solver++(2M), UniPC and DEIS schedulers (the ``bench`` extra), run in the same
process, on the same forward process (DDPM linear betas 1e-4..0.02, N = 1000 = ``Discrete.from_schedule("linear",
1000)`` = diffusers' ``beta_schedule="linear"``), the same exact model (``GaussianMixture.as_model``: eps is exact at
every time), the same x_T, the same number of samples.  diffusers' 0-based timestep k is scorelab's state k+1, time
t = (k+1)/1000 (checked: alpha_bar agrees to float32 rounding); where a scheduler's sigma is not a trained one
(Karras sigmas, Euler's interpolated sigmas) the model is evaluated at the time whose sigma/alpha is that sigma.

Protocol
--------
==================  ===========================================================================================
targets             ``ring2d``: ring of 8 modes (radius 2, std 0.1, d = 2); ``aniso16d``: ``random_mixture(8, 16)``
                    with random full covariances (seed 7)
NFE                 {5, 10, 20, 50}, counted by wrapping the model (both libraries), never assumed
configurations      scorelab: every fixed-step sampler x grid {uniform_t, uniform_log_snr, karras, quadratic} x
                    {ending at t_min = 1/N, plus a last step to t = 0}; diffusers: each scheduler with its documented
                    settings (timestep_spacing linspace/trailing, Karras sigmas, Lu lambdas, solver orders)
selection           *dev* stage: every configuration on ``n_dev`` samples with a separate seed; per (method, target,
                    NFE) the configuration of least sliced W2 is kept (both libraries selected the same way)
final               the kept configuration per method on ``n`` samples (seed 0); the best scorelab sampler and best
                    diffusers scheduler per NFE *on that seed-0 run* (the dev stage's n_dev samples rank methods
                    badly: its floor favours under-dispersed samplers) are re-run on ``seeds`` held-out seeds
                    1..S, whose mean +- std decides the goal
metrics             sliced W2 (1000 directions of POT's ``sliced_wasserstein_distance``; equal-size samples are
                    computed by sorting, checked against ``scorelab.metrics.sliced_w2``), its two-sample noise floor,
                    mode-weight TV and outlier fraction (``scorelab.metrics.mode_stats``)
overhead            batch 1, a model returning eps = 0, ``--overhead-steps`` steps, median of repeats: us per step of
                    scorelab sampler functions vs. diffusers ``scheduler.step`` loops; ``set_timesteps`` / grid
                    construction timed separately
==================  ===========================================================================================

The exact model here (``ExactMixture``) evaluates the formulas of ``scorelab.analytic`` in each component's
eigenbasis (one matmul instead of batched triangular solves, ~10x faster at d = 16); it is checked against
``GaussianMixture.as_model`` to 1e-10 before any run.
"""
from __future__ import annotations

import argparse
import inspect
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

from scorelab import metrics  # noqa: E402
from scorelab.analytic import GaussianMixture, random_mixture, ring_mixture  # noqa: E402
from scorelab.denoisers import CountingModel, DiffusionModel  # noqa: E402
from scorelab.processes import Discrete  # noqa: E402
from scorelab.samplers import SAMPLERS  # noqa: E402
from scorelab.schedules import grid_for_nfe, make_grid, t_from_sigma_hat  # noqa: E402

NFES = (5, 10, 20, 50)
GRIDS = ("uniform_t", "uniform_log_snr", "karras", "quadratic")
SKIP = {"dopri5": "adaptive step size (NFE not budgeted)", "annealed_langevin": "100 evaluations per noise level"}
SAMPLER_OPTS = {"edm": {"S_churn": 5.0}, "restart": {"K": 1, "n_restart": 1}, "analytic_dpm": {"variances": "analytic"}}


# -- the exact model ------------------------------------------------------------------------------------------------
class ExactMixture(DiffusionModel):
    """Exact eps / x0 of a diffused Gaussian mixture (analytic.py formulas in each component's eigenbasis,
    Sigma_k = U_k diag(l_k) U_k^T, C_k^{-1} = U_k diag(1/(alpha^2 l_k + sigma^2)) U_k^T); float64 inside."""

    def __init__(self, gm: GaussianMixture, process):
        super().__init__()
        self.gm, self.process = gm, process
        self.lam, self.U = torch.linalg.eigh(gm.covs)  # [K, d], [K, d, d]
        self.muU = torch.einsum("kd,kde->ke", gm.means, self.U)
        self.logw = torch.log(gm.weights)

    def _terms(self, x: torch.Tensor, t):
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1)
        a, s = self.process.alpha(t), self.process.sigma(t)
        v = a**2 * self.lam + s**2  # [B|1, K, d]
        proj = torch.einsum("bd,kde->bke", xf, self.U) - a * self.muU  # U_k^T (x - alpha mu_k)
        logw = self.logw - 0.5 * (proj**2 / v).sum(-1) - 0.5 * torch.log(v).sum(-1)
        r = torch.softmax(logw, 1).unsqueeze(-1)  # responsibilities [B, K, 1]
        return r, proj / v, a, s

    def eps(self, x, t, **cond):
        r, w, a, s = self._terms(x, t)
        g = torch.einsum("bke,kde->bd", r * w, self.U)  # sum_k r_k C_k^{-1} (x - alpha mu_k)
        return (s[:, 0] * g).to(x.dtype).reshape(x.shape)

    def x0(self, x, t, **cond):
        r, w, a, s = self._terms(x, t)
        post = self.gm.means + torch.einsum("bke,kde->bkd", a * self.lam * w, self.U)  # Tweedie per component
        return (r * post).sum(1).to(x.dtype).reshape(x.shape)


def check_exact(gm: GaussianMixture, process) -> float:
    """Max |difference| of eps and x0 against ``gm.as_model(process)`` over times in [0, 1] (float64)."""
    ref, fast = gm.as_model(process), ExactMixture(gm, process)
    x = 2.0 * torch.randn(300, gm.d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    err = 0.0
    for t in (0.0, 1e-3, 0.0137, 0.2, 0.6, 1.0):
        err = max(err, (ref.eps(x, t) - fast.eps(x, t)).abs().max().item(),
                  (ref.x0(x, t) - fast.x0(x, t)).abs().max().item())
    if err > 1e-8:
        raise RuntimeError(f"ExactMixture disagrees with GaussianMixture.as_model by {err:.3g}")
    return err


# -- metrics --------------------------------------------------------------------------------------------------------
class Quality:
    """Sliced W2 against a fixed reference sample (POT's directions, sorted projections cached) and mode stats."""

    def __init__(self, gm: GaussianMixture, n: int, n_proj: int, seed: int):
        self.gm, self.n_proj = gm, n_proj
        P = np.random.RandomState(0).randn(gm.d, n_proj)  # = ot.sliced.get_random_projections(d, n_proj, seed=0)
        self.P = P / np.sqrt((P**2).sum(0, keepdims=True))
        self.ref = gm.sample(n, torch.Generator().manual_seed(10_000 + seed)).numpy()
        self.ref_sorted = np.sort(self.ref @ self.P, axis=0)

    def sw2(self, x: np.ndarray) -> float:
        if x.shape[0] != self.ref.shape[0]:
            raise ValueError("sliced W2 by sorting needs equal sample sizes")
        return float(np.sqrt(np.mean((np.sort(x @ self.P, axis=0) - self.ref_sorted) ** 2)))

    def __call__(self, x: torch.Tensor) -> dict:
        xn = x.to(torch.float64).reshape(x.shape[0], -1).numpy()
        if not np.all(np.isfinite(xn)):
            return {"sw2": float("inf"), "tv": 1.0, "outliers": 1.0}
        ms = metrics.mode_stats(xn, self.gm)
        return {"sw2": self.sw2(xn), "tv": ms["tv"], "outliers": ms["outlier_fraction"]}


def check_sw2(gm: GaussianMixture) -> float:
    """Our sorted sliced W2 equals ``metrics.sliced_w2`` (POT) on equal-size samples."""
    q = Quality(gm, 1500, 200, 0)
    x = gm.sample(1500, torch.Generator().manual_seed(5)).numpy()
    diff = abs(q.sw2(x) - metrics.sliced_w2(x, q.ref, n_projections=200, seed=0))
    if diff > 1e-9:
        raise RuntimeError(f"sorted sliced W2 differs from scorelab.metrics.sliced_w2 by {diff:.3g}")
    return diff


def floor(gm: GaussianMixture, n: int, repeats: int, n_proj: int) -> dict:
    """Two-sample floor of sliced W2 (two independent target samples of size n), ``metrics.two_sample_floor``."""
    q = Quality(gm, 2, n_proj, 0)

    def metric(a, b):
        pa, pb = np.sort(np.asarray(a) @ q.P, 0), np.sort(np.asarray(b) @ q.P, 0)
        return float(np.sqrt(np.mean((pa - pb) ** 2)))

    return metrics.two_sample_floor(gm, n, metric, n_repeats=repeats, seed=123)


# -- scorelab side --------------------------------------------------------------------------------------------------
def scorelab_configs(quick: bool) -> list[dict]:
    """Every fixed-step sampler x grid x final step to 0 (the dev stage sweeps them all)."""
    names = [n for n in SAMPLERS if n not in SKIP]
    grids = ("uniform_log_snr", "karras") if quick else GRIDS
    return [{"lib": "scorelab", "method": n, "grid": g, "final_zero": fz, "label": g + ("+0" if fz else "")}
            for n in names for g in grids for fz in (False, True)]


def run_scorelab(cfg: dict, model: DiffusionModel, x_T: torch.Tensor, nfe: int, seed: int):
    """One scorelab run within the NFE budget -> (x_0 [B, d], NFE counted)."""
    name, p = cfg["method"], model.process
    opts = dict(SAMPLER_OPTS.get(name, {}))
    grid_kw = {k: opts[k] for k in ("K", "n_restart") if k in opts}
    ts, _, extra = grid_for_nfe(name, p, nfe, cfg["grid"], return_opts=True, final_zero=cfg["final_zero"], **grid_kw)
    if name == "analytic_dpm":  # Gamma_t at the grid times from fresh data (a precomputation, not counted as NFE)
        from scorelab.analytic_dpm import estimate_gamma

        g = torch.Generator().manual_seed(77)
        opts["gamma"] = estimate_gamma(model, model.gm.sample(4000, g), ts[:-1], generator=g).gamma
    fn, m = SAMPLERS[name].fn, CountingModel(model)
    if "progress" in inspect.signature(fn).parameters:
        opts["progress"] = False
    x = fn(m, x_T, ts, generator=torch.Generator().manual_seed(seed + 1), **opts, **extra)
    return x, m.nfe


# -- diffusers side -------------------------------------------------------------------------------------------------
def diffusers_configs(quick: bool) -> list[dict]:
    """Each scheduler with the settings its documentation recommends (variants are selected on the dev stage)."""
    lin, trail, kar = {"timestep_spacing": "linspace"}, {"timestep_spacing": "trailing"}, {"use_karras_sigmas": True}
    smin = {"final_sigmas_type": "sigma_min"}  # bh1 into sigma = 0 gives NaN in diffusers 0.42 (h = inf)
    table = {
        "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}, [trail, lin]),
        "euler": ("EulerDiscreteScheduler", {}, [lin, trail, kar]),
        "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                     [lin, trail, kar, {"use_lu_lambdas": True}]),
        "unipc": ("UniPCMultistepScheduler", {}, [
            {"solver_order": 2, "solver_type": "bh2"}, {"solver_order": 3, "solver_type": "bh1", **smin},
            {"solver_order": 3, "solver_type": "bh2"}, {"solver_order": 2, "solver_type": "bh2", **kar},
            {"solver_order": 3, "solver_type": "bh1", **smin, **kar}]),
        "deis": ("DEISMultistepScheduler", {}, [{"solver_order": 2}, {"solver_order": 3},
                                                {"solver_order": 2, **kar}, {"solver_order": 3, **kar}]),
    }
    out = []
    for short, (cls, base, variants) in table.items():
        for v in variants[:2] if quick else variants:
            label = ",".join(f"{k}={val}" for k, val in v.items()) or "default"
            out.append({"lib": "diffusers", "method": f"diffusers:{short}", "cls": cls, "kwargs": {**base, **v},
                        "label": label})
    return out


def make_scheduler(cfg: dict):
    import diffusers

    return getattr(diffusers, cfg["cls"])(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                          beta_schedule="linear", prediction_type="epsilon", **cfg["kwargs"])


def call_times(sched, process) -> tuple[list[float], int]:
    """Process time of each model call of a scheduler after ``set_timesteps``: t = (k+1)/1000 at a trained
    timestep k, else the time whose sigma/alpha is the scheduler's sigma.  Also returns how many are off-grid."""
    ac = sched.alphas_cumprod.to(torch.float64)
    sig_train = ((1 - ac) / ac).sqrt()
    sigmas = getattr(sched, "sigmas", None)
    ts, off = [], 0
    for i, k in enumerate(sched.timesteps.tolist()):
        if sigmas is None:  # DDIM: integer timesteps only
            ts.append((int(k) + 1) / 1000)
            continue
        s = float(sigmas[i])
        if float(k).is_integer() and abs(s - float(sig_train[int(k)])) <= 1e-4 * s:
            ts.append((int(k) + 1) / 1000)
        else:
            ts.append(float(t_from_sigma_hat(process, torch.tensor(s, dtype=torch.float64))))
            off += 1
    return ts, off


def run_diffusers(cfg: dict, model: DiffusionModel, x_T: torch.Tensor, nfe: int, seed: int):
    """diffusers' own loop (scale_model_input, model, step) with the exact eps -> (x_0, NFE counted)."""
    sched = make_scheduler(cfg)
    sched.set_timesteps(nfe)
    ts, _ = call_times(sched, model.process)
    m, x = CountingModel(model), x_T * sched.init_noise_sigma
    for i, k in enumerate(sched.timesteps):
        eps = m.eps(sched.scale_model_input(x, k), ts[i])
        x = sched.step(eps, k, x).prev_sample
    return x, m.nfe


def run(cfg, model, x_T, nfe, seed):
    return (run_scorelab if cfg["lib"] == "scorelab" else run_diffusers)(cfg, model, x_T, nfe, seed)


# -- stages ---------------------------------------------------------------------------------------------------------
def targets() -> dict[str, GaussianMixture]:
    return {"ring2d": ring_mixture(8, radius=2.0, std=0.1, d=2),
            "aniso16d": random_mixture(8, 16, generator=torch.Generator().manual_seed(7))}


def evaluate(cfg, model, x_T, nfe, seed, quality) -> dict:
    t0 = time.perf_counter()
    try:
        x, used = run(cfg, model, x_T, nfe, seed)
    except ValueError as e:  # budget too small for this sampler (e.g. restart's loops at NFE 5)
        return {"error": str(e)}
    return {"nfe_used": used, **quality(x), "seconds": time.perf_counter() - t0}


def dev_stage(gm, model, configs, n_dev: int, nfes) -> list[dict]:
    """Every configuration on n_dev samples (seed 1000, 200 directions) -> rows."""
    x_T = torch.randn(n_dev, gm.d, generator=torch.Generator().manual_seed(1000))
    q, rows = Quality(gm, n_dev, 200, 1000), []
    for cfg in tqdm(configs, desc="dev", leave=False):
        for nfe in nfes:
            rows.append({**{k: cfg[k] for k in ("lib", "method", "label")}, "nfe": nfe,
                         **evaluate(cfg, model, x_T, nfe, 1000, q)})
    return rows


def select(rows: list[dict], configs: list[dict]) -> dict:
    """(method, nfe) -> the configuration of least dev sliced W2 (finite, within budget)."""
    by_label = {(c["method"], c["label"]): c for c in configs}
    best: dict = {}
    for r in rows:
        if "sw2" in r and math.isfinite(r["sw2"]) and r["nfe_used"] <= r["nfe"]:
            key = (r["method"], r["nfe"])
            if key not in best or r["sw2"] < best[key][0]:
                best[key] = (r["sw2"], by_label[(r["method"], r["label"])])
    return {k: v[1] for k, v in best.items()}


def contenders(chosen: dict, rows: list[dict], nfes) -> dict:
    """Per NFE and library, the method with least dev sliced W2 (the goal compares these)."""
    dev = {(r["method"], r["label"], r["nfe"]): r["sw2"] for r in rows if "sw2" in r}
    out = {}
    for nfe in nfes:
        for lib in ("scorelab", "diffusers"):
            cands = [(dev[(m, c["label"], nfe)], m) for (m, k), c in chosen.items() if k == nfe and c["lib"] == lib]
            if cands:
                out[(lib, nfe)] = min(cands)[1]
    return out


def final_stage(gm, model, chosen: dict, todo: list, n: int, seeds) -> list[dict]:
    """The chosen configuration of each (method, nfe) in ``todo`` on n samples, for each seed in ``seeds``."""
    rows = []
    for seed in seeds:
        x_T = torch.randn(n, gm.d, generator=torch.Generator().manual_seed(seed))
        q = Quality(gm, n, 1000, seed)
        for method, nfe in tqdm(todo, desc=f"final seed {seed}", leave=False):
            cfg = chosen[(method, nfe)]
            rows.append({"lib": cfg["lib"], "method": method, "label": cfg["label"], "nfe": nfe, "seed": seed,
                         **evaluate(cfg, model, x_T, nfe, seed, q)})
    return rows


def final_contenders(rows: list[dict], nfes) -> dict:
    """Per NFE and library, the method of least seed-0 sliced W2 on the full n samples.  (The dev stage's n_dev
    samples are too few to rank methods: its sliced W2 is dominated by a sampling floor that favours
    under-dispersed samplers; ``contenders`` on the dev rows is kept in the JSON for comparison.)"""
    out = {}
    for nfe in nfes:
        for lib in ("scorelab", "diffusers"):
            cands = [(r["sw2"], r["method"]) for r in rows if r["lib"] == lib and r["nfe"] == nfe and r["seed"] == 0
                     and "sw2" in r and math.isfinite(r["sw2"])]
            if cands:
                out[(lib, nfe)] = min(cands)[1]
    return out


# -- per-step overhead ----------------------------------------------------------------------------------------------
class ZeroEps(DiffusionModel):
    """A near-free model: eps = 0 (x0 follows from the model currency's conversion)."""

    def __init__(self, process):
        super().__init__()
        self.process = process

    def eps(self, x, t, **cond):
        return torch.zeros_like(x)


OVERHEAD_SCORELAB = ("ddim", "euler", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc", "unipc_bh2", "dpm_solver_2",
                     "heun", "accel_det_1eval")
OVERHEAD_DIFFUSERS = {"ddim": {"timestep_spacing": "trailing"}, "euler": {}, "dpmpp_2m": {},
                      "unipc": {"solver_order": 2}, "unipc_3": {"solver_order": 3, "solver_type": "bh1"},
                      "deis": {"solver_order": 2}}


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _overhead_scorelab(name: str, model: DiffusionModel, steps: int, repeats: int) -> dict:
    info, p, x1 = SAMPLERS[name], model.process, torch.randn(1, 2)
    grid = info.default_grid if info.default_grid in GRIDS else "uniform_t"
    n = steps // int(info.evals_per_step)
    ts = make_grid(grid, p, n)
    total = _median_time(lambda: info.fn(model, x1, ts), repeats)
    return {"us_per_step": 1e6 * total / n, "us_per_eval": 1e6 * total / (n * info.evals_per_step),
            "grid_us": 1e6 * _median_time(lambda: make_grid(grid, p, n), repeats)}


def _overhead_diffusers(cfg: dict, steps: int, repeats: int) -> dict:
    sched, x1 = make_scheduler(cfg), torch.randn(1, 2)

    def loop():
        sched.set_timesteps(steps)
        x = x1 * sched.init_noise_sigma
        for k in sched.timesteps:
            x = sched.step(torch.zeros_like(sched.scale_model_input(x, k)), k, x).prev_sample

    grid = _median_time(lambda: sched.set_timesteps(steps), repeats)
    total = _median_time(loop, repeats) - grid
    return {"us_per_step": 1e6 * total / steps, "us_per_eval": 1e6 * total / steps, "grid_us": 1e6 * grid}


def overhead(steps: int, repeats: int) -> dict:
    """us per step at batch 1 with ``ZeroEps``: scorelab sampler functions vs diffusers scheduler.step loops
    (diffusers: loop time minus its ``set_timesteps`` time, which is reported separately)."""
    model = ZeroEps(Discrete.from_schedule("linear", 1000))
    out = {f"scorelab:{name}": _overhead_scorelab(name, model, steps, repeats) for name in OVERHEAD_SCORELAB}
    cfgs = {c["method"].split(":")[1]: c for c in diffusers_configs(False)}
    for short, kw in OVERHEAD_DIFFUSERS.items():
        base = cfgs[short if short in cfgs else short.rsplit("_", 1)[0]]  # "unipc_3": unipc with other kwargs
        cfg = {**base, "kwargs": {**base["kwargs"], **kw}}
        out[f"diffusers:{short}"] = _overhead_diffusers(cfg, steps, repeats)
    ref = out["diffusers:dpmpp_2m"]["us_per_step"]
    for v in out.values():
        v["ratio_to_diffusers_dpmpp_2m"] = v["us_per_step"] / ref
    return out


# -- reporting ------------------------------------------------------------------------------------------------------
def summarize(final: list[dict], best: dict, nfes) -> dict:
    """Goal 1 per NFE: mean (std) over the held-out seeds (1..S) of the contenders' sliced W2 and TV, and the ratio
    diffusers/scorelab."""
    goals = {}
    for nfe in nfes:
        entry = {}
        for lib in ("scorelab", "diffusers"):
            rs = [r for r in final if r["method"] == best.get((lib, nfe)) and r["nfe"] == nfe and "sw2" in r
                  and r["seed"] > 0]  # held-out seeds
            if rs:
                sw = [r["sw2"] for r in rs]
                entry[lib] = {"method": rs[0]["method"], "label": rs[0]["label"], "seeds": len(rs),
                              "sw2_mean": float(np.mean(sw)), "sw2_std": float(np.std(sw, ddof=1)) if len(sw) > 1
                              else float("nan"), "tv_mean": float(np.mean([r["tv"] for r in rs]))}
        if len(entry) == 2:
            entry["ratio_sw2_diffusers_over_scorelab"] = entry["diffusers"]["sw2_mean"] / entry["scorelab"]["sw2_mean"]
            entry["scorelab_better"] = entry["scorelab"]["sw2_mean"] < entry["diffusers"]["sw2_mean"]
        goals[nfe] = entry
    return goals


def markdown_target(name: str, final: list[dict], floor_: dict, goals: dict, nfes) -> str:
    lines = [f"### {name}: sliced W2 (seed 0; TV in parentheses); two-sample floor {floor_['mean']:.4f} "
             f"+- {floor_['std']:.4f}", "", "| method | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
             "|---" * (len(nfes) + 1) + "|"]
    cell = {(r["method"], r["nfe"]): r for r in final if r["seed"] == 0}
    for method in dict.fromkeys(r["method"] for r in final):
        vals = []
        for k in nfes:
            r = cell.get((method, k))
            vals.append("-" if r is None or "sw2" not in r else f"{r['sw2']:.4f} ({r['tv']:.3f}) `{r['label']}`")
        lines.append(f"| {method} | " + " | ".join(vals) + " |")
    lines += ["", "Goal (contenders: least seed-0 sliced W2 above; mean +- std over held-out seeds 1..S):", "",
              "| NFE | best scorelab | sliced W2 | best diffusers | sliced W2 | diffusers / scorelab |",
              "|---|---|---|---|---|---|"]
    for k in nfes:
        g = goals[k]
        if "scorelab" in g and "diffusers" in g:
            s, d = g["scorelab"], g["diffusers"]
            lines.append(f"| {k} | {s['method']} `{s['label']}` | {s['sw2_mean']:.4f} +- {s['sw2_std']:.4f} | "
                         f"{d['method']} `{d['label']}` | {d['sw2_mean']:.4f} +- {d['sw2_std']:.4f} | "
                         f"{g['ratio_sw2_diffusers_over_scorelab']:.3f} |")
    return "\n".join(lines)


def markdown_overhead(ov: dict) -> str:
    lines = ["### Per-step overhead (batch 1, eps = 0 model, median of repeats)", "",
             "| implementation | us / step | us / eval | grid or set_timesteps (us) | ratio to diffusers DPM++2M |",
             "|---|---|---|---|---|"]
    for k, v in ov.items():
        lines.append(f"| {k} | {v['us_per_step']:.1f} | {v['us_per_eval']:.1f} | {v['grid_us']:.0f} | "
                     f"{v['ratio_to_diffusers_dpmpp_2m']:.3f} |")
    return "\n".join(lines)


def check_index_convention(process) -> dict:
    """diffusers' alphas_cumprod[k] must be scorelab's alpha(t)^2 at t = (k+1)/1000 (and not at k/1000)."""
    ac = make_scheduler(diffusers_configs(False)[0]).alphas_cumprod.to(torch.float64)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    err = float((process.alpha(t) ** 2 - ac).abs().max())
    err_shift = float((process.alpha(t - 1e-3) ** 2 - ac).abs().max())
    if err > 1e-6 or err_shift < 1e-4:
        raise RuntimeError(f"index convention check failed: {err:.3g} (k+1) vs {err_shift:.3g} (k)")
    return {"max_abs_alpha_bar_diff_k_plus_1": err, "max_abs_alpha_bar_diff_k": err_shift}


def run_target(name, gm, process, args, nfes) -> tuple[dict, str]:
    from scorelab.plotting import quality_vs_nfe

    model = ExactMixture(gm, process)
    configs = scorelab_configs(args.quick) + diffusers_configs(args.quick)
    dev = dev_stage(gm, model, configs, args.n_dev, nfes)
    chosen = select(dev, configs)
    dev_best = contenders(chosen, dev, nfes)
    final = final_stage(gm, model, chosen, [mk for mk in chosen if mk[1] in nfes], args.n, [0])
    best = final_contenders(final, nfes)  # contenders on seed 0, goal on the held-out seeds 1..S
    final += final_stage(gm, model, chosen, [(m, k) for (_, k), m in best.items()], args.n, range(1, args.seeds + 1))
    fl = floor(gm, args.n, 3 if args.quick else 5, 1000)
    goals = summarize(final, best, nfes)
    curves = {}
    for method in dict.fromkeys(r["method"] for r in final):
        pts = sorted((r["nfe_used"], r["sw2"]) for r in final if r["method"] == method and r["seed"] == 0
                     and "sw2" in r and math.isfinite(r["sw2"]))
        if pts:
            curves[method] = ([p[0] for p in pts], [p[1] for p in pts])
    stem = args.name if args.name.endswith(name) else f"{args.name}_{name}"
    png = quality_vs_nfe(curves, str(RESULTS / f"{stem}.png"), floor=fl["mean"],
                         title=f"{name} (d={gm.d}): scorelab vs diffusers, n={args.n}")
    payload = {"d": gm.d, "K": gm.K, "floor_sw2": fl, "dev": dev, "final": final, "goals": goals,
               "contenders": {f"{lib}@{k}": m for (lib, k), m in best.items()},
               "dev_contenders": {f"{lib}@{k}": m for (lib, k), m in dev_best.items()},
               "chosen": {f"{m}@{k}": c["label"] for (m, k), c in chosen.items()}, "plot": Path(png).name}
    return payload, markdown_target(name, final, fl, goals, nfes)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: n=2000, NFE 5 and 10, fewer configurations")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--n-dev", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--targets", default="ring2d,aniso16d")
    ap.add_argument("--overhead-steps", type=int, default=500)
    ap.add_argument("--overhead-repeats", type=int, default=7)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--name", default=None, help="results file stem (default samplers / samplers_quick)")
    args = ap.parse_args(argv)
    nfes = (5, 10) if args.quick else NFES
    if args.quick:
        args.n, args.n_dev, args.seeds, args.overhead_steps, args.overhead_repeats = 2000, 1000, 2, 100, 3
    args.name = args.name or ("samplers_quick" if args.quick else "samplers")
    torch.set_num_threads(1)
    process, t_start = Discrete.from_schedule("linear", 1000), time.time()
    gms = {k: v for k, v in targets().items() if k in args.targets.split(",")}
    import diffusers

    checks = {"index_convention": check_index_convention(process),
              "exact_model_max_err": {k: check_exact(g, process) for k, g in gms.items()},
              "sorted_sw2_vs_metrics": {k: check_sw2(g) for k, g in gms.items()}}
    payload = {"config": {**vars(args), "nfes": nfes, "skipped_samplers": SKIP, "sampler_opts": SAMPLER_OPTS,
                          "diffusers": diffusers.__version__}, "checks": checks, "targets": {}}
    md = [f"## Samplers vs. diffusers {diffusers.__version__} (same DDPM-linear process, exact mixture model, "
          f"n = {args.n}, {args.seeds} seeds for the contenders)", ""]
    for name, gm in gms.items():
        payload["targets"][name], text = run_target(name, gm, process, args, nfes)
        md += [text, ""]
    if not args.skip_overhead:
        payload["overhead"] = overhead(args.overhead_steps, args.overhead_repeats)
        md.append(markdown_overhead(payload["overhead"]))
    payload["wall_seconds"] = time.time() - t_start
    write_results(args.name, payload, "\n".join(md))


if __name__ == "__main__":
    main()
