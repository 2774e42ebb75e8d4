r"""Samplers benchmark: quality against NFE on exact Gaussian-mixture oracles, scorelab vs. diffusers side by side.

    python benchmarks/samplers.py [--quick] [--targets ring2d,aniso16d] [--n 100000] [--n-dev 10000] [--seeds 5]
                                  [--first-seed 1] [--metric sw2|mmd] [--ref-factor 4] [--n-proj 200]
                                  [--skip-overhead]

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
                    settings (timestep_spacing linspace/trailing, Karras sigmas, Lu lambdas, solver orders);
                    scorelab also runs DPM-Solver++ 2M/3M and UniPC (bh1, bh2) on grids fitted by
                    ``samplers.grid_opt.optimize_grid`` to the model's own dopri5 ODE solution (model only, x_T of
                    seed 1000, never a dev or held-out seed)
dev stage           every configuration on ``n_dev`` samples of the dev seed 0; per (method, NFE) the configuration
                    of least selection metric (``--metric``) is kept, and per (library, NFE) the method of least
                    metric is the contender (both libraries selected the same way, on the dev seed only)
held-out stage      the contenders on seeds ``--first-seed`` .. + S - 1 at ``n`` samples with common random numbers:
                    within a seed both libraries get the same x_T, the same reference sample and the same
                    sampler-noise seed; the goal is the *paired* difference metric(diffusers) - metric(scorelab) over
                    the seeds: mean +- std, one-sided t-test and 95% lower confidence bound (met when the bound is
                    > 0); the floor is an exact target sample of the same n scored the same way
metrics             both always reported; ``--metric`` picks the one that selects and judges.  ``sw2``: sliced W2 on
                    ``n_proj`` fixed directions (POT's, seed 0) against a reference of ``ref_factor * n`` target
                    draws, exact for unequal sizes by block means of the sorted reference (checked against
                    ``evaluation.metrics.sliced_w2``); it has a two-sample floor that hides differences below it.
                    ``mmd``: unbiased MMD^2 to the exact target (``evaluation.metrics.mmd2_to_mixture``, the mixture's
                    characteristic function in closed form; Gaussian kernels of 4 bandwidths c sqrt(tr Cov), c = 1/16
                    .. 1/2, 1024 fixed frequencies each, mean of the 4): 0 in expectation for an exact sample at any
                    n, so no floor.  Plus mode-weight TV and outlier fraction (``evaluation.metrics.mode_stats``)
overhead            batch 1, a model returning eps = 0, ``--overhead-steps`` evaluations, all implementations timed in
                    interleaved rounds (median and min): us per step of scorelab sampler functions vs. diffusers
                    ``scheduler.step`` loops; one-time grid work (``set_timesteps``; scorelab's grid and first-call
                    coefficients) reported separately
==================  ===========================================================================================

Each stage writes ``<name>.partial.json`` as it goes (removed when the run completes).
The exact model here (``ExactMixture``) evaluates the formulas of ``scorelab.core.analytic`` in each component's
eigenbasis (one matmul instead of batched triangular solves, ~10x faster at d = 16); it is checked against
``GaussianMixture.as_model`` to 1e-10 before any run.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    DEV_SEED,
    RESULTS,
    heldout_seeds,
    mean_std,
    paired,
    paired_cells,
    seed_differences,
    write_json,
    write_results,
)
from overhead import ZeroEps  # noqa: E402

from scorelab.core.analytic import GaussianMixture, random_mixture, ring_mixture  # noqa: E402
from scorelab.core.denoisers import CountingModel, DiffusionModel  # noqa: E402
from scorelab.core.processes import Discrete  # noqa: E402
from scorelab.core.schedules import make_grid, t_from_sigma_hat  # noqa: E402
from scorelab.evaluation import metrics  # noqa: E402
from scorelab.samplers import SAMPLERS  # noqa: E402
from scorelab.samplers.budget import grid_for_nfe  # noqa: E402

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
    """Sliced W2 against a reference sample of ``ref_factor * n`` target draws, exact for unequal sizes, on ``n_proj``
    fixed directions (POT's, seed 0: the same metric for every method, seed and target), plus mode statistics.

    In 1-D the optimal coupling of n sorted points x_(i) (mass 1/n) with r n sorted reference points y_(j) (mass
    1/(r n)) matches x_(i) with the i-th block of r reference points, so W2^2 = mean_i (x_(i) - m_i)^2 + mean_i v_i
    with m_i, v_i the mean and variance of block i: only m [n, n_proj] and mean v [n_proj] are stored."""

    def __init__(self, gm: GaussianMixture, n: int, n_proj: int, seed: int, ref_factor: int = 1, chunk: int = 25,
                 ref: np.ndarray | None = None):
        """``ref``: a given reference of ``ref_factor * n`` points instead of target draws (e.g. the exact ODE flow
        of the sampler's own x_T: ``samplers_pathwise.py``'s coupled sliced W2, which has no two-sample floor).
        Against target draws each call also reports MMD^2 to the exact target
        (``metrics.mmd2_to_mixture_by_bandwidth``: 4 bandwidths x 1024 fixed frequencies), overall and per bandwidth."""
        self.gm, self.n, self.n_proj, self.chunk = gm, n, n_proj, chunk
        self.to_target = ref is None
        P = np.random.RandomState(0).randn(gm.d, n_proj)  # = ot.sliced.get_random_projections(d, n_proj, seed=0)
        self.P = P / np.sqrt((P**2).sum(0, keepdims=True))
        if ref is None:
            ref = gm.sample(ref_factor * n, torch.Generator().manual_seed(10_000 + seed)).numpy()
        elif ref.shape != (ref_factor * n, gm.d):
            raise ValueError(f"reference of shape {tuple(ref.shape)}, expected ({ref_factor * n}, {gm.d})")
        self.m, self.vbar = np.empty((n, n_proj)), np.empty(n_proj)
        for j in range(0, n_proj, chunk):
            y = np.sort(ref @ self.P[:, j:j + chunk], axis=0).reshape(n, ref_factor, -1)
            self.m[:, j:j + chunk] = y.mean(1)
            self.vbar[j:j + chunk] = y.var(1).mean(0)

    def sw2(self, x: np.ndarray) -> float:
        if x.shape[0] != self.n:
            raise ValueError(f"sample size {x.shape[0]} != {self.n} (the reference was built for n)")
        w2 = self.vbar.copy()
        for j in range(0, self.n_proj, self.chunk):
            xs = np.sort(x @ self.P[:, j:j + self.chunk], axis=0)
            w2[j:j + self.chunk] += ((xs - self.m[:, j:j + self.chunk]) ** 2).mean(0)
        return float(np.sqrt(w2.mean()))

    def __call__(self, x: torch.Tensor) -> dict:
        xn = x.to(torch.float64).reshape(x.shape[0], -1).numpy()
        if not np.all(np.isfinite(xn)):
            return {"sw2": float("inf"), "tv": 1.0, "outliers": 1.0, "mmd": float("inf")}
        ms = metrics.mode_stats(xn, self.gm)
        out = {"sw2": self.sw2(xn), "tv": ms["tv"], "outliers": ms["outlier_fraction"]}
        if self.to_target:
            mmd = metrics.mmd2_to_mixture_by_bandwidth(xn, self.gm)
            out.update(mmd=mmd["mmd2"], mmd_per_bandwidth=list(mmd["per_bandwidth"].values()))
        return out


def check_sw2(gm: GaussianMixture) -> float:
    """Our sliced W2 equals ``metrics.sliced_w2`` (POT, exact 1-D W2 of unequal sizes) with a 1x and a 4x reference."""
    diff = 0.0
    for r in (1, 4):
        q = Quality(gm, 600, 200, 0, ref_factor=r)
        ref = gm.sample(r * 600, torch.Generator().manual_seed(10_000)).numpy()
        x = gm.sample(600, torch.Generator().manual_seed(5)).numpy()
        diff = max(diff, abs(q.sw2(x) - metrics.sliced_w2(x, ref, n_projections=200, seed=0)))
    if diff > 1e-9:
        raise RuntimeError(f"block-mean sliced W2 differs from evaluation.metrics.sliced_w2 by {diff:.3g}")
    return diff


# -- the selection metric -------------------------------------------------------------------------------------------
SEL = {"key": "sw2"}  # --metric: the metric of every selection and of the verdict ("sw2" or "mmd"); both are reported
METRIC_NAMES = {"sw2": "sliced W2", "mmd": "MMD^2 to the exact target"}


def score(r: dict) -> float | None:
    """The selection metric of a row, or None when it failed, is not finite, or broke its NFE budget."""
    v = r.get(SEL["key"])
    ok = v is not None and math.isfinite(v) and r.get("nfe_used", 0) <= r["nfe"]
    return v if ok else None


def metric_name() -> str:
    return METRIC_NAMES[SEL["key"]]


def fmt(v: float, key: str | None = None) -> str:
    """A metric value for the tables: sliced W2 as 0.01234, MMD^2 (~1e-5 here) as 1.234e-05."""
    return f"{v:.3e}" if (key or SEL["key"]) == "mmd" else f"{v:.5f}"


# -- scorelab side --------------------------------------------------------------------------------------------------
# public sampler options and grid parameters swept for the high-order multistep solvers (as diffusers' side sweeps
# solver_order / solver_type / sigma spacings): (label suffix, sampler options, grid keywords)
VARIANTS = {
    "unipc": [("order=2", {"order": 2}, {}), ("bh2", {"variant": "bh2"}, {}),
              ("order=2,bh2", {"order": 2, "variant": "bh2"}, {})],
    "unipc_bh2": [("order=3", {"order": 3}, {})],
}
RHO_SAMPLERS = ("ddim", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc", "unipc_bh2")
RHOS = (3.0, 5.0)
# deterministic samplers also run on a grid fitted to the model's own ODE solution (``samplers.grid_opt``, sliced-W2
# objective; model only, no data): (sampler, label suffix, options); from each grid of FIT["inits"] (--fit-inits), x_T
# of seed FIT_SEED, teacher FIT["reference"] (--fit-reference: dopri5 at rtol 1e-7 or UniPC-3 on 1000 log-SNR steps)
OPT_SAMPLERS = [("dpm_solver_pp_2m", "", {}), ("dpm_solver_pp_3m", "", {}), ("unipc", "", {}),
                ("unipc", "bh2", {"variant": "bh2"})]
FIT_SEED, FIT_N, FIT_BUDGET = 1000, 512, 400
FIT = {"inits": ("uniform_log_snr",), "reference": "dopri5"}  # set by set_fit from the command line


def add_fit_args(ap) -> None:
    ap.add_argument("--fit-inits", nargs="+", default=list(FIT["inits"]), choices=sorted(GRIDS),
                    help="initial grids of the fitted configurations (one fitted configuration per init)")
    ap.add_argument("--fit-reference", default=FIT["reference"], choices=["dopri5", "unipc"],
                    help="teacher of the grid fits (samplers.grid_opt.ode_reference)")


def set_fit(args) -> None:
    FIT.update(inits=tuple(args.fit_inits), reference=args.fit_reference)


FITTED: dict = {}  # (method, label, nfe) -> GridFit report (JSON), filled as the configurations run


def scorelab_configs(quick: bool) -> list[dict]:
    """Every fixed-step sampler x grid x final step to 0, plus public option variants (``VARIANTS``) and Karras rho
    in ``RHOS`` for the high-order solvers (the dev stage sweeps them all)."""
    names = [n for n in SAMPLERS if n not in SKIP]
    grids = ("uniform_log_snr", "karras") if quick else GRIDS
    out = []
    for n in names:
        variants = [("", {}, {})] + ([] if quick else VARIANTS.get(n, []))
        for suffix, opts, gkw in variants:
            for g in grids:
                for fz in (False, True):
                    label = ",".join(filter(None, [g + ("+0" if fz else ""), suffix]))
                    out.append({"lib": "scorelab", "method": n, "grid": g, "final_zero": fz, "label": label,
                                "opts": opts, "grid_kw": gkw})
            if n in RHO_SAMPLERS and not quick:
                for rho in RHOS:
                    for fz in (False, True):
                        label = ",".join(filter(None, [f"karras{'+0' if fz else ''},rho={rho:g}", suffix]))
                        out.append({"lib": "scorelab", "method": n, "grid": "karras", "final_zero": fz,
                                    "label": label, "opts": opts, "grid_kw": {**gkw, "rho": rho}})
    for init in [] if quick else FIT["inits"]:
        for n, suffix, opts in OPT_SAMPLERS:
            label = ",".join(filter(None, [f"fit[{init}]", suffix]))
            out.append({"lib": "scorelab", "method": n, "grid": init, "final_zero": False, "label": label,
                        "opts": opts, "grid_kw": {}, "optimize": True})
    return out


def fitted_grid(cfg: dict, model: DiffusionModel, ts: torch.Tensor, nfe: int, opts: dict) -> torch.Tensor:
    """The grid of ``cfg`` refitted by ``samplers.grid_opt.optimize_grid`` (same steps, endpoints and sampler
    options), once per (method, label, NFE); its report goes to ``FITTED``."""
    from scorelab.samplers.grid_opt import GridFit, optimize_grid

    key = (cfg["method"], cfg["label"], nfe)
    if key not in FITTED:
        n_steps = len(ts) - 1 - int(cfg["final_zero"])
        if n_steps < 2:
            return ts
        fit: GridFit = optimize_grid(model, cfg["method"], n_steps, init=cfg["grid"], final_zero=cfg["final_zero"],
                                     n_samples=FIT_N, n_heldout=FIT_N, max_objective=FIT_BUDGET, sampler_opts=opts,
                                     reference=FIT["reference"],
                                     grid_kw=cfg.get("grid_kw", {}), sample_shape=(model.gm.d,),
                                     generator=torch.Generator().manual_seed(FIT_SEED))
        FITTED[key] = {k: v for k, v in fit.to_json().items() if k != "history"}
    return torch.tensor(FITTED[key]["ts"], dtype=torch.float64)


def run_scorelab(cfg: dict, model: DiffusionModel, x_T: torch.Tensor, nfe: int, seed: int):
    """One scorelab run within the NFE budget -> (x_0 [B, d], NFE counted)."""
    name, p = cfg["method"], model.process
    opts = {**SAMPLER_OPTS.get(name, {}), **cfg.get("opts", {})}
    grid_kw = {**{k: opts[k] for k in ("K", "n_restart") if k in opts}, **cfg.get("grid_kw", {})}
    ts, _, extra = grid_for_nfe(name, p, nfe, cfg["grid"], return_opts=True, final_zero=cfg["final_zero"], **grid_kw)
    if name == "analytic_dpm":  # Gamma_t at the grid times from fresh data (a precomputation, not counted as NFE)
        from scorelab.samplers.analytic_dpm import estimate_gamma

        g = torch.Generator().manual_seed(77)
        opts["gamma"] = estimate_gamma(model, model.gm.sample(4000, g), ts[:-1], generator=g).gamma
    if cfg.get("optimize"):
        ts = fitted_grid(cfg, model, ts, nfe, {**opts, **extra})
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


def dev_stage(gm, model, configs, n_dev: int, nfes, args) -> list[dict]:
    """Every configuration on n_dev samples of the dev seed 0 (same x_T, reference, projections for all) -> rows."""
    x_T = torch.randn(n_dev, gm.d, generator=torch.Generator().manual_seed(DEV_SEED))
    q, rows = Quality(gm, n_dev, args.n_proj, 0, args.ref_factor), []
    for cfg in tqdm(configs, desc="dev", leave=False):
        for nfe in nfes:
            rows.append({**{k: cfg[k] for k in ("lib", "method", "label")}, "nfe": nfe, "seed": 0,
                         **evaluate(cfg, model, x_T, nfe, 0, q)})
    return rows


def select(rows: list[dict], configs: list[dict]) -> dict:
    """(method, nfe) -> the configuration of least dev selection metric (finite, within budget)."""
    by_label = {(c["method"], c["label"]): c for c in configs}
    best: dict = {}
    for r in rows:
        if (v := score(r)) is not None:
            key = (r["method"], r["nfe"])
            if key not in best or v < best[key][0]:
                best[key] = (v, by_label[(r["method"], r["label"])])
    return {k: v[1] for k, v in best.items()}


def contenders(chosen: dict, rows: list[dict], nfes) -> dict:
    """Per NFE and library, the method (with its chosen configuration) of least dev selection metric."""
    dev = {(r["method"], r["label"], r["nfe"]): score(r) for r in rows if score(r) is not None}
    out = {}
    for nfe in nfes:
        for lib in ("scorelab", "diffusers"):
            cands = [(dev[(m, c["label"], nfe)], m) for (m, k), c in chosen.items() if k == nfe and c["lib"] == lib]
            if cands:
                out[(lib, nfe)] = min(cands)[1]
    return out


def refine_stage(gm, model, dev: list[dict], configs: list[dict], chosen: dict, args, nfes) -> tuple[dict, list]:
    """Successive halving of the dev stage, the same for both libraries: per library and NFE the ``args.refine_top``
    configurations of least dev selection metric (any method; exact duplicates, e.g. ``unipc,bh2`` =
    ``unipc_bh2,order=3``, counted once) are re-run on the dev seed 0 at ``args.n`` samples, and the least wins.
    Held-out seeds are not touched.  Updates ``chosen`` for the winners; returns ({(lib, nfe): method}, rows)."""
    by_label = {(c["method"], c["label"]): c for c in configs}
    x_T = torch.randn(args.n, gm.d, generator=torch.Generator().manual_seed(DEV_SEED))
    q, rows, best = Quality(gm, args.n, args.n_proj, 0, args.ref_factor), [], {}
    for nfe in nfes:
        for lib in ("scorelab", "diffusers"):
            ok = sorted((score(r), r["method"], r["label"]) for r in dev if r["lib"] == lib and r["nfe"] == nfe
                        and score(r) is not None)
            cands = [c for i, c in enumerate(ok) if i == 0 or c[0] != ok[i - 1][0]][: args.refine_top]
            res = []
            for _, method, label in tqdm(cands, desc=f"refine {lib} NFE {nfe}", leave=False):
                r = {"lib": lib, "method": method, "label": label, "nfe": nfe, "seed": 0,
                     **evaluate(by_label[(method, label)], model, x_T, nfe, 0, q)}
                rows.append(r)
                if score(r) is not None:
                    res.append((score(r), method, label))
            if res:
                _, method, label = min(res)
                best[(lib, nfe)], chosen[(method, nfe)] = method, by_label[(method, label)]
    return best, rows


def load_dev(path: str, name: str, configs: list[dict], gm, model, nfes, args) -> list[dict]:
    """Dev rows of target ``name`` from an earlier results JSON (``--dev-from``, run with the same ``--n-dev``: same
    x_T, reference and projections); configurations it lacks, that failed there, or whose rows lack the selection
    metric (an older file without MMD), are run now on the same dev seed."""
    data = json.loads(Path(path).read_text())
    if data["config"]["n_dev"] != args.n_dev:
        raise ValueError(f"{path} was run with --n-dev {data['config']['n_dev']}, not {args.n_dev}")
    known = {(c["method"], c["label"]) for c in configs}
    old = [r for r in data["targets"][name]["dev"] if (r["method"], r["label"]) in known]
    failed = {(r["method"], r["label"]) for r in old if "error" in r}
    rows = [r for r in old if (r["method"], r["label"]) not in failed and SEL["key"] in r]
    have = {(r["method"], r["label"]) for r in rows}
    missing = [c for c in configs if (c["method"], c["label"]) not in have]
    return rows + (dev_stage(gm, model, missing, args.n_dev, nfes, args) if missing else [])


def heldout_stage(gm, model, chosen: dict, best: dict, args, name: str, partial: dict) -> list[dict]:
    """The contenders on seeds 1..S at n samples with common random numbers: per seed one x_T, one reference, one
    sampler noise seed for both libraries; plus the floor row (an independent n-sample of the target).  The rows
    so far are written to ``<name>.partial.json`` after each seed."""
    rows = []
    for seed in heldout_seeds(args.first_seed, args.seeds):
        x_T = torch.randn(args.n, gm.d, generator=torch.Generator().manual_seed(seed))
        q = Quality(gm, args.n, args.n_proj, seed, args.ref_factor)
        for (lib, nfe), method in tqdm(sorted(best.items()), desc=f"held-out seed {seed}", leave=False):
            cfg = chosen[(method, nfe)]
            rows.append({"lib": lib, "method": method, "label": cfg["label"], "nfe": nfe, "seed": seed,
                         **evaluate(cfg, model, x_T, nfe, seed, q)})
        rows.append({"lib": "target", "method": "floor", "label": "exact target sample", "nfe": 0, "seed": seed,
                     **q(gm.sample(args.n, torch.Generator().manual_seed(20_000 + seed)))})
        partial["heldout"] = rows
        write_json(RESULTS / f"{name}.partial.json", partial, indent=1)
    return rows


# -- per-step overhead (the near-free eps = 0 model ``ZeroEps`` is benchmarks/overhead.py's) -----------------------
OVERHEAD_SCORELAB = ("ddim", "euler", "heun", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2m",
                     "dpm_solver_pp_3m", "dpm_solver_pp_2m_sde", "unipc", "unipc_bh2", "accel_det", "accel_det_1eval",
                     "accel_stoch", "ddpm", "euler_maruyama")
OVERHEAD_DIFFUSERS = {"ddim": {"timestep_spacing": "trailing"}, "euler": {}, "dpmpp_2m": {},
                      "unipc": {"solver_order": 2}, "unipc_3": {"solver_order": 3, "solver_type": "bh1"},
                      "deis": {"solver_order": 2}}


def _timer(fn, setup=None):
    def once():
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return once


def _scorelab_timer(name: str, model: DiffusionModel, steps: int):
    """Sampler call on a fresh coefficient memo every time (its per-grid precomputation is counted in the steps)."""
    info, p, x1 = SAMPLERS[name], model.process, torch.randn(1, 2)
    grid = info.default_grid if info.default_grid in GRIDS else "uniform_t"
    n = steps // int(info.evals_per_step)
    ts = make_grid(grid, p, n)
    clear = lambda: p.__dict__.pop("_coef_cache", None)  # noqa: E731
    run_ = lambda: info.fn(model, x1, ts)  # noqa: E731
    return n, info.evals_per_step, _timer(run_), _timer(lambda: make_grid(grid, p, n)), _timer(run_, clear)


def _diffusers_timer(cfg: dict, steps: int):
    sched, x1 = make_scheduler(cfg), torch.randn(1, 2)

    def loop():
        x = x1 * sched.init_noise_sigma
        for k in sched.timesteps:
            x = sched.step(torch.zeros_like(sched.scale_model_input(x, k)), k, x).prev_sample

    return steps, 1, _timer(loop, lambda: sched.set_timesteps(steps)), _timer(lambda: sched.set_timesteps(steps)), None


def overhead(steps: int, repeats: int) -> dict:
    """us per step at batch 1 with ``ZeroEps``: scorelab sampler functions vs diffusers ``scheduler.step`` loops.
    One-time grid work is excluded on both sides and reported apart: diffusers' ``set_timesteps``; scorelab's grid
    construction and the first call's coefficient computation (a call on a cleared memo, minus a repeated call).
    All implementations are timed in interleaved rounds (one call each per round, so they share the machine's
    load) -> median and min."""
    model = ZeroEps(Discrete.from_schedule("linear", 1000))
    timers = {f"scorelab:{name}": _scorelab_timer(name, model, steps) for name in OVERHEAD_SCORELAB}
    cfgs = {c["method"].split(":")[1]: c for c in diffusers_configs(False)}
    for short, kw in OVERHEAD_DIFFUSERS.items():
        base = cfgs[short if short in cfgs else short.rsplit("_", 1)[0]]  # "unipc_3": unipc with other kwargs
        timers[f"diffusers:{short}"] = _diffusers_timer({**base, "kwargs": {**base["kwargs"], **kw}}, steps)
    times: dict = {k: [] for k in timers}
    for _ in tqdm(range(repeats + 1), desc="overhead rounds", leave=False):
        for k, (_, _, run_, grid, cold) in timers.items():
            times[k].append((run_(), grid(), cold() if cold is not None else float("nan")))
    out = {}
    for k, (n, e, _, _, _) in timers.items():
        rows = times[k][1:]  # round 0 is a warm-up
        run_t, med = [a for a, _, _ in rows], lambda i, rows=rows: statistics.median([r[i] for r in rows])
        out[k] = {"steps": n, "evals_per_step": e, "us_per_step": 1e6 * med(0) / n,
                  "us_per_step_min": 1e6 * min(run_t) / n, "us_per_eval": 1e6 * med(0) / (n * e),
                  "grid_us": 1e6 * med(1), "first_call_extra_us": 1e6 * (med(2) - med(0))}
    ref = out["diffusers:dpmpp_2m"]
    for v in out.values():
        v["ratio_to_diffusers_dpmpp_2m"] = v["us_per_step"] / ref["us_per_step"]
        v["ratio_per_eval"] = v["us_per_eval"] / ref["us_per_eval"]
        v["ratio_min"] = v["us_per_step_min"] / ref["us_per_step_min"]
    return out


# -- reporting ------------------------------------------------------------------------------------------------------
def summarize(rows: list[dict], best: dict, nfes) -> dict:
    """Per NFE: each contender's held-out selection metric (``metric_mean``, ``metric_std``; plus sliced W2 and, when
    measured, MMD^2), the paired difference diffusers - scorelab of the selection metric over the held-out seeds (same
    x_T, reference and projections within a seed) with its one-sided test, and the floor (an exact target sample)."""
    key = SEL["key"]
    floor_ = [r for r in rows if r["method"] == "floor"]
    goals = {"metric": key, "floor_sw2": mean_std([r["sw2"] for r in floor_])}
    if all("mmd" in r for r in floor_):
        goals["floor_mmd"] = mean_std([r["mmd"] for r in floor_])
    for nfe in nfes:
        entry, per = {}, {}
        for lib in ("scorelab", "diffusers"):
            rs = {r["seed"]: r for r in rows if r["lib"] == lib and r["nfe"] == nfe and key in r}
            if rs:
                e = {"method": best[(lib, nfe)], "label": next(iter(rs.values()))["label"], "seeds": len(rs)}
                for k in dict.fromkeys([key, "sw2", "mmd"]):
                    if all(k in r for r in rs.values()):
                        ms = mean_std([r[k] for r in rs.values()])
                        e.update({f"{k}_mean": ms["mean"], f"{k}_std": ms["std"]})
                e.update(metric_mean=e[f"{key}_mean"], metric_std=e[f"{key}_std"],
                         tv_mean=float(np.mean([r["tv"] for r in rs.values()])))
                entry[lib] = e
                per[lib] = rs
        if len(per) == 2:
            entry["paired_diff_diffusers_minus_scorelab"] = paired(
                seed_differences(per["diffusers"], per["scorelab"], key))
            entry["scorelab_better"] = entry["paired_diff_diffusers_minus_scorelab"]["lower95"] > 0
        goals[nfe] = entry
    return goals


def markdown_refine(refine: list[dict], args) -> list[str]:
    if not refine:
        return []
    lines = ["", f"Refinement (dev seed 0 at n = {args.n}; top {args.refine_top} dev configurations per library and "
             "NFE; the least is the contender):", "", f"| NFE | library | method | configuration | {metric_name()} |",
             "|---|---|---|---|---|"]
    for r in sorted(refine, key=lambda r: (r["nfe"], r["lib"], r.get(SEL["key"], math.inf))):
        val = fmt(r[SEL["key"]]) if SEL["key"] in r else r.get("error", "-")
        lines.append(f"| {r['nfe']} | {r['lib']} | {r['method']} | `{r['label']}` | {val} |")
    return lines


def markdown_fitted(refine) -> list[str]:
    """Fitted grids among the refinement rows: their objective (squared sliced W2 to the ODE solution's outputs from
    the same fresh x_T) before / after fitting."""
    keys = [(r["method"], r["label"], r["nfe"]) for r in refine if (r["method"], r["label"], r["nfe"]) in FITTED]
    if not keys:
        return []
    lines = ["", f"Fitted grids (``samplers.grid_opt.optimize_grid``, init {' / '.join(FIT['inits'])}, {FIT_N} x_T of "
             f"seed {FIT_SEED}, Powell, {FIT_BUDGET} objective evaluations; model only, no data): squared sliced W2 "
             f"between the sampler's and the {FIT['reference']} ODE solution's outputs from the same {FIT_N} fresh "
             "x_T, before -> after; "
             "network evaluations spent fitting.", "",
             "| NFE | method | configuration | held-out error, init | fitted | evaluations | grid (t x 1000) |",
             "|---|---|---|---|---|---|---|"]
    for m, lab, k in dict.fromkeys(keys):
        f = FITTED[(m, lab, k)]
        lines.append(f"| {k} | {m} | `{lab}` | {f['heldout_init']:.3e} | {f['heldout_fit']:.3e} | "
                     f"{f['model_evals']} | {[round(1000 * t, 1) for t in f['ts']]} |")
    return lines


def markdown_target(name: str, dev: list[dict], goals: dict, nfes, args, n_dev: int, refine=()) -> str:
    key = SEL["key"]
    fl = goals[f"floor_{key}"]
    lines = [f"### {name}: dev stage (seed 0, n = {n_dev}): {metric_name()} of each method's best configuration "
             "(TV in parentheses)", "", "| method | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
             "|---" * (len(nfes) + 1) + "|"]
    cell: dict = {}
    for r in dev:
        if (v := score(r)) is not None:
            ck = (r["method"], r["nfe"])
            if ck not in cell or v < cell[ck][key]:
                cell[ck] = r
    for method in dict.fromkeys(r["method"] for r in dev):
        vals = [f"{fmt(c[key])} ({c['tv']:.3f}) `{c['label']}`" if (c := cell.get((method, k))) else "-"
                for k in nfes]
        lines.append(f"| {method} | " + " | ".join(vals) + " |")
    lines += markdown_refine(list(refine), args)
    lines += markdown_fitted(refine)
    last = args.first_seed + args.seeds - 1
    lines += ["", f"Goal ({metric_name()}): contenders chosen on the dev seed only; held-out seeds "
              f"{args.first_seed}..{last}, n = {args.n}, reference {args.ref_factor} n, {args.n_proj} fixed "
              "directions, common x_T / reference / noise seed within a seed.  Floor (an exact target sample of the "
              f"same n): {fmt(fl['mean'])} +- {fmt(fl['std'])}" + (" (unbiased: 0 in expectation)." if key == "mmd"
                                                                    else "."),
              "", f"| NFE | best scorelab | {metric_name()} | best diffusers | {metric_name()} | "
              "paired diff (diffusers - scorelab) | one-sided p | 95% lower bound | seeds won | scorelab better? |",
              "|---" * 10 + "|"]
    for k in nfes:
        g = goals[k]
        if "paired_diff_diffusers_minus_scorelab" not in g:
            continue
        s, d, pd = g["scorelab"], g["diffusers"], g["paired_diff_diffusers_minus_scorelab"]
        spec = ".3e" if key == "mmd" else ".5f"
        lines.append(f"| {k} | {s['method']} `{s['label']}` | {fmt(s['metric_mean'])} +- {fmt(s['metric_std'])} | "
                     f"{d['method']} `{d['label']}` | {fmt(d['metric_mean'])} +- {fmt(d['metric_std'])} | "
                     f"{paired_cells(pd, spec)} | {'yes' if g['scorelab_better'] else 'no'} |")
    if key != "sw2":
        lines += ["", "The same held-out samples on sliced W2 (floor "
                  f"{fmt(goals['floor_sw2']['mean'], 'sw2')} +- {fmt(goals['floor_sw2']['std'], 'sw2')}):", "",
                  "| NFE | scorelab | diffusers |", "|---|---|---|"]
        lines += [f"| {k} | {fmt(goals[k]['scorelab']['sw2_mean'], 'sw2')} | "
                  f"{fmt(goals[k]['diffusers']['sw2_mean'], 'sw2')} |" for k in nfes
                  if "paired_diff_diffusers_minus_scorelab" in goals[k]]
    return "\n".join(lines)


def markdown_overhead(ov: dict, steps: int, repeats: int) -> str:
    lines = [f"### Per-step overhead (batch 1, eps = 0 model, {steps} evaluations per call, median of {repeats} "
             "interleaved rounds)", "",
             "| implementation | us / step (median) | us / step (min) | us / eval | grid or set_timesteps (us) "
             "| first-call coefficients (us) | ratio to diffusers DPM++2M: per step | per eval | min |",
             "|---" * 9 + "|"]
    for k, v in ov.items():
        extra = "-" if math.isnan(v["first_call_extra_us"]) else f"{v['first_call_extra_us']:.0f}"
        lines.append(f"| {k} | {v['us_per_step']:.1f} | {v['us_per_step_min']:.1f} | {v['us_per_eval']:.1f} | "
                     f"{v['grid_us']:.0f} | {extra} | {v['ratio_to_diffusers_dpmpp_2m']:.3f} | "
                     f"{v['ratio_per_eval']:.3f} | {v['ratio_min']:.3f} |")
    worst = max((v["ratio_per_eval"], k) for k, v in ov.items() if k.startswith("scorelab:"))
    lines += ["", f"Goal (per-eval overhead <= 0.5 x diffusers DPM-Solver++ 2M): worst scorelab sampler {worst[1]} at "
              f"{worst[0]:.3f} -> {'met' if worst[0] <= 0.5 else 'not met'}."]
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
    FITTED.clear()
    stem = args.name if args.name.endswith(name) else f"{args.name}_{name}"
    configs = scorelab_configs(args.quick) + diffusers_configs(args.quick)
    dev = load_dev(args.dev_from, name, configs, gm, model, nfes, args) if args.dev_from else \
        dev_stage(gm, model, configs, args.n_dev, nfes, args)
    chosen = select(dev, configs)
    best = contenders(chosen, dev, nfes)  # chosen on the dev seed only
    refine: list = []
    if args.refine_top:
        best, refine = refine_stage(gm, model, dev, configs, chosen, args, nfes)
    partial = {"dev": dev, "refine": refine, "contenders": {f"{lib}@{k}": m for (lib, k), m in best.items()}}
    write_json(RESULTS / f"{stem}.partial.json", partial, indent=1)
    held = heldout_stage(gm, model, chosen, best, args, stem, partial)
    goals = summarize(held, best, nfes)
    curves = {}
    for method in dict.fromkeys(r["method"] for r in dev):
        pts = sorted((r["nfe_used"], score(r)) for r in dev if r["method"] == method and r["label"] ==
                     chosen.get((method, r["nfe"]), {}).get("label") and score(r) is not None)
        if pts:
            curves[method] = ([p[0] for p in pts], [p[1] for p in pts])
    png = quality_vs_nfe(curves, str(RESULTS / f"{stem}.png"), ylabel=metric_name(),
                         title=f"{name} (d={gm.d}): scorelab vs diffusers, dev seed, n={args.n_dev}"
                         + (" (values <= 0 not drawn)" if SEL["key"] == "mmd" else ""))
    payload = {"d": gm.d, "K": gm.K, "dev": dev, "refine": refine, "heldout": held, "goals": goals,
               "fitted_grids": [{"method": m, "label": lab, "nfe": k, **v} for (m, lab, k), v in FITTED.items()],
               "contenders": {f"{lib}@{k}": m for (lib, k), m in best.items()},
               "chosen": {f"{m}@{k}": c["label"] for (m, k), c in chosen.items()}, "plot": Path(png).name}
    (RESULTS / f"{stem}.partial.json").unlink(missing_ok=True)
    return payload, markdown_target(name, dev, goals, nfes, args, args.n_dev, refine)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small n, NFE 5 and 10, fewer configurations")
    ap.add_argument("--n", type=int, default=100_000, help="samples per held-out seed")
    ap.add_argument("--n-dev", type=int, default=10_000, help="samples of the dev stage (seed 0)")
    ap.add_argument("--seeds", type=int, default=5, help="number of held-out seeds")
    ap.add_argument("--first-seed", type=int, default=1, help="held-out seeds first-seed .. first-seed + S - 1 "
                    "(>= 1: seed 0 is the dev seed)")
    ap.add_argument("--metric", choices=sorted(METRIC_NAMES), default="sw2",
                    help="metric of the dev selection, the refinement and the verdict: sw2 (sliced W2 to target "
                    "draws) or mmd (unbiased MMD^2 to the exact target, no two-sample floor); both are reported")
    ap.add_argument("--ref-factor", type=int, default=4, help="reference sample size / n")
    ap.add_argument("--n-proj", type=int, default=200, help="fixed projection directions of sliced W2")
    ap.add_argument("--refine-top", type=int, default=10, help="configurations per library and NFE re-run on the "
                    "dev seed at n samples before the held-out stage (0: pick on the dev stage alone)")
    ap.add_argument("--dev-from", default=None, help="reuse the dev-stage rows of this earlier results JSON")
    ap.add_argument("--targets", default="ring2d,aniso16d")
    ap.add_argument("--overhead-steps", type=int, default=500)
    ap.add_argument("--overhead-repeats", type=int, default=15)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--name", default=None, help="results file stem (default samplers / samplers_quick)")
    ap.add_argument("--nfes", type=int, nargs="+", default=None,
                    help=f"NFE budgets to run (default {' '.join(map(str, NFES))}; --quick: 5 10)")
    add_fit_args(ap)
    args = ap.parse_args(argv)
    set_fit(args)
    SEL["key"] = args.metric
    if args.first_seed < 1:
        ap.error(f"--first-seed must be >= 1 (seed 0 is the dev seed), got {args.first_seed}")
    nfes = tuple(args.nfes) if args.nfes else ((5, 10) if args.quick else NFES)
    if any(k < 1 for k in nfes):
        ap.error(f"--nfes must be positive integers, got {nfes}")
    if args.quick:
        args.n, args.n_dev, args.seeds, args.overhead_steps, args.overhead_repeats = 4000, 1000, 3, 100, 3
    args.name = args.name or ("samplers_quick" if args.quick else "samplers")
    torch.set_num_threads(1)
    process, t_start = Discrete.from_schedule("linear", 1000), time.time()
    gms = {k: v for k, v in targets().items() if k in args.targets.split(",")}
    import diffusers

    checks = {"index_convention": check_index_convention(process),
              "exact_model_max_err": {k: check_exact(g, process) for k, g in gms.items()},
              "block_sw2_vs_metrics": {k: check_sw2(g) for k, g in gms.items()}}
    payload = {"config": {**vars(args), "nfes": nfes, "skipped_samplers": SKIP, "sampler_opts": SAMPLER_OPTS,
                          "diffusers": diffusers.__version__}, "checks": checks, "targets": {}}
    md = [f"## Samplers vs. diffusers {diffusers.__version__} (same DDPM-linear process, exact mixture model)", ""]
    for name, gm in gms.items():
        payload["targets"][name], text = run_target(name, gm, process, args, nfes)
        md += [text, ""]
    if not args.skip_overhead:
        payload["overhead"] = overhead(args.overhead_steps, args.overhead_repeats)
        md.append(markdown_overhead(payload["overhead"], args.overhead_steps, args.overhead_repeats))
    payload["wall_seconds"] = time.time() - t_start
    write_results(args.name, payload, "\n".join(md))


if __name__ == "__main__":
    main()
