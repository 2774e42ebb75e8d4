r"""Likelihoods and variational bounds: weighting x likelihood, and Analytic-DPM sample quality at few steps.

Part A (weightings).  On toy sets (2-D) and scikit-learn digits (8x8, 17 grey levels) train, per seed and with the
same data order and steps, an eps-model with the simple weighting (Ho et al. 2020: t ~ U, ||eps - eps_hat||^2), one
with likelihood weighting g^2/(2 sigma^2) and importance-sampled t (Song, Durkan, Murray & Ermon 2021, Sec. 5), and
a high-order DSM model: the simple model fine-tuned with Lu et al. 2022's L1 + L2 (trace form; exact divergence in
2-D, one Rademacher probe on digits).  Test-set metrics (held-out points / held-out digits):
  * NLL by the probability-flow ODE (Song et al. 2021, App. D.2; dopri5), exact divergence in 2-D, Hutchinson on
    digits;  * the continuous ELBO (pointwise bound, importance-sampled t);  * the discrete DDPM ELBO (Ho et al.
    2020, eq. 5, all N = 1000 steps, beta_tilde variances) of the same model viewed as a DDPM (below).
Toy values are nats per 2-D point (lower is better).  Digits are trained and evaluated on uniformly dequantized data
x = (v + w) 2/17 - 1 (v in 0..16, w ~ U[0,1)) and reported in bits/dim of the 17-level data (upper bounds;
``likelihood.bits_per_dim`` with scale 2/17; all three numbers bound the same discrete likelihood).

Part B (Analytic-DPM, Bao et al. 2022).  The simple model viewed as a DDPM (Discrete linear betas, N = 1000) is
sampled with K = 10, 25, 50 ancestral steps on even and DP-optimal subsequences (Sec. 4) with reverse variances beta,
beta_tilde, Analytic-DPM sigma*^2 from Gamma_n = E||eps_hat||^2/d (their eq. 7, clipped by Thm. 2; ``analytic``) and
from the residual form Gamma_n = 1 - E||eps - eps_hat||^2/d (``analytic_res``, the imperfect-mean variant of Bao et
al. 2022b; it is never > 1 and defines the DP cost).  Gamma is estimated at all N steps from training data.
Sample quality: sliced W2 to the test set (toy) or FID-digits (digits-CNN features, not Inception) to all 1797
digits; the discrete ELBO at the same K.  ``--sample-clip P ...`` (digits) also draws every cell with the sampling
devices of the Analytic-DPM reference code, for every variance alike: x0_hat clamped to [-1, 1] and the std of the
last noisy step capped at P * (2/17) * sqrt(pi/2) (a mean absolute noise of P grey levels; their clip_pixel = 2 on
255 levels); these rows carry no ELBO (the devices change the sampler, not the model the ELBO scores).
``--clamp-rows`` adds the x0_hat clamp alone and a table of the comparisons the reference code actually makes (its
run_cifar10.py: the beta_tilde baseline and DDIM with the clamp only, Analytic-DPM / -DDIM with clamp and cap) next to
the matched ones (the same devices for both).  ``--ddpm-schedule cosine`` views the same VP-trained model as a cosine
DDPM (Nichol & Dhariwal; the "CS" rows of Bao et al.) instead of the linear one ("LS").
A K = 1000 (toy) / 200 (digits) reference shows the speed-up.

Models.  All models are trained on the VP SDE (beta 0.1..20), the continuous limit of DDPM's linear betas.  The DDPM
view evaluates eps at the VP time with the same log-SNR as the DDPM step: both processes are variance preserving, so
equal log-SNR means equal marginals and the view is exact (no retraining).  Nets: ``nets.MLP`` (2-D) and an MLP on
the flattened 8x8 digit (a UNet is ~6x slower on this CPU).

Anchors.  Bao et al. 2022: Analytic-DPM improves the NLL bound (e.g. CIFAR-10 LS, K = 10: 74.95 -> 5.09 bits/dim with
beta_tilde -> analytic on the even trajectory, further with DP) and FID at few steps, "20x to 80x" speed-ups.  Song
et al. 2021 (score_sde / max-likelihood training): 2.99 bits/dim on CIFAR-10 with likelihood weighting (vs ~3.0-3.2
with the simple weighting).  Lu et al. 2022: high-order DSM lowers the ODE NLL of a DSM-trained model.

    python benchmarks/likelihood.py --quick      # smoke run: 1 seed, short training, small test sets (a few min)
    python benchmarks/likelihood.py              # toy: moons + swiss roll x 3 seeds; digits x 2 seeds
"""
from __future__ import annotations

import argparse
import copy
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, fmt_mean_std, write_results  # noqa: E402

from scorelab.core.denoisers import FunctionModel, NetworkModel  # noqa: E402
from scorelab.core.processes import VP, Discrete  # noqa: E402
from scorelab.data import load_dataset  # noqa: E402
from scorelab.data.images import digits_split  # noqa: E402
from scorelab.evaluation.likelihood import (
    bits_per_dim,
    continuous_elbo,
    dequantize,
    discrete_elbo,
    ode_log_likelihood,
)  # noqa
from scorelab.evaluation.metrics import digits_features, fid_from_features, sliced_w2  # noqa: E402
from scorelab.nets import MLP  # noqa: E402
from scorelab.samplers.analytic_dpm import (
    analytic_variances,
    cost_matrix,
    estimate_gamma,
    even_subsequence,
    grid_variances,
    optimal_subsequence,
    sample_analytic_dpm,
    subsequence_cost,
)
from scorelab.training.hodsm import hodsm_loss  # noqa: E402
from scorelab.training.loop import TrainConfig, train  # noqa: E402
from scorelab.training.losses import DSMLoss, LossConfig  # noqa: E402

VP_PROCESS = VP()
DDPM = Discrete.from_schedule("linear", 1000)
LEVELS, SCALE = 17, 2 / 17  # digits: v in 0..16; dequantized x = SCALE (v + w) - 1 in [-1, 1)
WEIGHTINGS = ("simple", "likelihood", "hodsm")
VARIANCES = {"beta": "beta", "beta_tilde": "lambda", "analytic": "analytic", "analytic_res": "analytic"}


# -- models ---------------------------------------------------------------------------------------------------------
class FlatMLP(nn.Module):
    """``nets.MLP`` on flattened images: ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, shape: tuple[int, ...], width: int, depth: int):
        super().__init__()
        self.mlp = MLP(int(np.prod(shape)), width=width, depth=depth)

    def forward(self, x: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.flatten(1), t_in).view_as(x)


def ddpm_view(model) -> FunctionModel:
    """The VP model as a DDPM model: eps at DDPM time t is the VP model's eps at the VP time of equal log-SNR."""
    def eps(x, t):
        t_vp = VP_PROCESS.t_from_log_snr(DDPM.log_snr(t.double())).clamp(0, 1)
        return model.eps(x, t_vp.to(x.dtype))
    return FunctionModel(eps, DDPM, "eps")


class Dequantized:
    """Loss wrapper for digits: replace x0 = v/8 - 1 by a fresh uniform dequantization SCALE (v + w) - 1."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, model, x0, *, generator=None, **cond):
        v = torch.round((x0 + 1) * 8)
        w = torch.rand(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return self.loss(model, SCALE * (v + w) - 1, generator=generator, **cond)


def make_net(kind: str) -> nn.Module:
    return MLP(2, width=128, depth=3) if kind == "toy" else FlatMLP((1, 8, 8), width=256, depth=3)


def train_models(x: torch.Tensor, kind: str, seed: int, a) -> dict:
    """simple / likelihood (same init, data order, steps) and high-order DSM fine-tuning of the simple model
    (only the simple model with ``a.adpm_only``)."""
    wrap = Dequantized if kind == "digits" else (lambda f: f)
    losses = {"simple": DSMLoss(LossConfig(proposal="uniform", weighting="eps")),
              "likelihood": DSMLoss(LossConfig(proposal="importance", weighting="likelihood"))}
    if a.adpm_only:
        losses.pop("likelihood")
    torch.manual_seed(seed)
    init = NetworkModel(make_net(kind), VP_PROCESS, "eps")
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, warmup_steps=50, ema_decay=0.999, seed=seed,
                      log_every=10**9)
    out, times = {}, {}
    for name, loss in losses.items():
        t0 = time.perf_counter()
        out[name] = train(copy.deepcopy(init), x, cfg, loss_fn=wrap(loss), progress=a.progress).ema_model.eval()
        times[name] = time.perf_counter() - t0
    if a.adpm_only:
        return out, times
    ho = functools.partial(hodsm_loss, order=2, trace=True, divergence="exact" if kind == "toy" else "hutchinson")
    ft = TrainConfig(steps=a.ft_steps, batch_size=a.batch, lr=a.lr / 5, ema_decay=0.999, seed=seed + 7919,
                     log_every=10**9)
    t0 = time.perf_counter()
    base = copy.deepcopy(out["simple"]).requires_grad_(True).train()
    out["hodsm"] = train(base, x, ft, loss_fn=wrap(ho), progress=a.progress).ema_model.eval()
    times["hodsm"] = time.perf_counter() - t0
    return out, times


# -- Part A: likelihoods ------------------------------------------------------------------------------------------
def _ms(v: torch.Tensor) -> dict:
    v = v.double()
    return {"mean": float(v.mean()), "se": float(v.std() / math.sqrt(v.numel()))}


def nll_metrics(model, x_test: torch.Tensor, kind: str, seed: int, a) -> dict:
    """Test NLL (ODE), -continuous ELBO and -discrete ELBO (beta_tilde, all steps): nats/point or bits/dim."""
    g = torch.Generator().manual_seed(20_000 + seed)
    if kind == "toy":
        m64, x = copy.deepcopy(model).double(), x_test.double()
        ode = ode_log_likelihood(m64, x, divergence="exact", rtol=1e-5, atol=1e-5)
        conv = lambda ll: -ll  # noqa: E731
    else:
        x = dequantize(torch.round((x_test + 1) * 8), generator=g, scale=SCALE)
        ode = ode_log_likelihood(model, x, divergence="hutchinson", n_probes=1, generator=g, rtol=a.rtol_img,
                                 atol=a.rtol_img)
        conv = lambda ll: bits_per_dim(ll, x[0].numel(), scale=SCALE)  # noqa: E731
    with torch.no_grad():
        cel = continuous_elbo(model, x.float(), n_samples=a.elbo_samples, importance=True, generator=g)
        del_ = discrete_elbo(ddpm_view(model), x.float(), variances="beta_tilde", generator=g)
    nll = conv(ode.log_likelihood)
    return {"ode_nll": _ms(nll), "ode_nll_median": float(nll.double().median()), "ode_nfe": ode.nfe,
            "ode_max_abs_xT": float(ode.x_T.abs().amax()), "cont_elbo_nll": _ms(conv(cel.elbo)),
            "disc_elbo_nll": _ms(conv(del_.elbo))}


# -- Part B: Analytic-DPM -----------------------------------------------------------------------------------------
def gammas(model, x_train: torch.Tensor, kind: str, seed: int, a) -> dict:
    """Gamma at all DDPM steps 1..N, in both forms (norm: Bao et al. eq. 7; residual: imperfect mean)."""
    g = torch.Generator().manual_seed(30_000 + seed)
    idx = torch.randperm(x_train.shape[0], generator=g)[: a.gamma_m]
    x = x_train[idx]
    if kind == "digits":
        x = dequantize(torch.round((x + 1) * 8), generator=g, scale=SCALE)
    ts = DDPM.times()[1:]
    view = ddpm_view(model)
    return {k: estimate_gamma(view, x, ts, kind=k, generator=g, progress=a.progress).gamma
            for k in ("norm", "residual")}


def subsequences(gam: dict, d: int, K: int) -> dict:
    """Even and DP subsequences; the DP cost uses the residual Gamma and no data-range clipping (see _variances)."""
    J = cost_matrix(DDPM, gam["residual"], d)
    even = even_subsequence(DDPM.N, K)
    dp, _ = optimal_subsequence(J, K)
    return {"even": even, "dp": dp, "cost_even": subsequence_cost(J, even), "cost_dp": subsequence_cost(J, dp)}


def _variances(var: str, steps: torch.Tensor, gam: dict, data_range):
    """(sampler variances argument, its gamma at the decreasing grid, discrete_elbo variances argument)."""
    if var in ("beta", "beta_tilde"):
        return VARIANCES[var], None, var
    # Thm. 2's data-range bound holds for the exact mean only; with the residual Gamma (the model's own mean, whose
    # x0_hat error at large t can exceed the data range) that clipping makes the variance, and the DP cost, wrong.
    gm = gam["norm" if var == "analytic" else "residual"][steps - 1]
    data_range = data_range if var == "analytic" else None
    return "analytic", gm.flip(0), analytic_variances(DDPM, gm, steps, clip=True, data_range=data_range)


@torch.no_grad()
def draw(model, steps: torch.Tensor, var: str, gam: dict, n: int, shape, seed: int, data_range,
         clip_pixels: float | None = None, eta: float = 1.0, clamp: bool = False) -> torch.Tensor:
    """n samples on the subsequence ``steps``; with ``clip_pixels`` the reference code's sampling devices (module
    doc): x0_hat clamped to the data range, last noisy std <= clip_pixels * SCALE * sqrt(pi/2); with ``clamp``
    alone only the x0_hat clamp (the reference code's beta_tilde baseline).  ``eta`` = 0: the DDIM family (Bao et
    al. Sec. 3.1: ``beta_tilde`` becomes deterministic DDIM, ``analytic`` Analytic-DDIM).  The same x_T and noise
    seed for every variance, family and setting."""
    kind, gamma, _ = _variances(var, steps, gam, data_range)
    ts = torch.cat([steps.flip(0).double() / DDPM.N, torch.zeros(1, dtype=torch.float64)])
    # Thm. 2's data-range bound is a variance clip of "analytic" only (see _variances)
    v = grid_variances(DDPM, ts, kind, gamma=gamma, eta=eta, data_range=data_range if var == "analytic" else None)
    clip = {"clip_x0": True, "data_range": data_range} if clamp or clip_pixels is not None else {}
    if clip_pixels is not None:
        clip["max_last_std"] = clip_pixels * SCALE * math.sqrt(math.pi / 2)
    g = torch.Generator().manual_seed(40_000 + seed)
    x_T = torch.randn((n, *shape), generator=g)
    return sample_analytic_dpm(ddpm_view(model), x_T, ts, generator=g, variances=v, eta=eta, **clip)


def ddim_rows(model, K: int, sub: str, steps, gam: dict, shape, seed: int, data_range, ref, kind: str, a) -> list:
    """Sample quality of the DDIM family (eta = 0): DDIM (no noise) vs Analytic-DDIM (norm-form Gamma), plain and
    with each ``--sample-clip`` device, on the same x_T as the DDPM rows (Bao et al. Table 3's comparison)."""
    rows = []
    for var, name in (("beta_tilde", "ddim"), ("analytic", "analytic_ddim")):
        for P, suffix in devices(a, kind):
            x = draw(model, steps, var, gam, a.n_samples, shape, seed, data_range, P, eta=0.0, clamp=suffix == "+clamp")
            rows.append({"K": K, "subsequence": sub, "variance": name + suffix, "quality": quality(x, ref, kind),
                         "kl_cost": None, "clip": P, "eta": 0.0})
    return rows


def devices(a, kind: str) -> list[tuple[float | None, str]]:
    """(cap P or None, variance-name suffix) of every sampling-device setting: plain, each ``--sample-clip`` P
    (clamp + cap) and, with ``--clamp-rows``, the x0_hat clamp alone (digits only)."""
    if kind != "digits":
        return [(None, "")]
    caps = [(P, f"+clip{P:g}") for P in (getattr(a, "sample_clip", None) or ())]
    return [(None, ""), *caps, *([(None, "+clamp")] if getattr(a, "clamp_rows", False) else [])]


def quality(x: torch.Tensor, ref, kind: str) -> float:
    if kind == "toy":
        return sliced_w2(x, ref, n_projections=500, seed=0)
    v = torch.floor((x.clamp(-1, 1 - 1e-6) + 1) / SCALE).clamp(0, LEVELS - 1)  # quantize back to the 17 levels
    return fid_from_features(digits_features(v / 8 - 1), ref)


def analytic_dpm_part(model, x_train, x_test, kind: str, seed: int, a) -> dict:
    shape, d = tuple(x_train.shape[1:]), x_train[0].numel()
    data_range = (-1.0, 1.0) if kind == "digits" else None
    gam = gammas(model, x_train, kind, seed, a)
    ref = x_test if kind == "toy" else digits_features(load_dataset("digits")[0])
    x_elbo = x_test if kind == "toy" else dequantize(torch.round((x_test + 1) * 8),
                                                     generator=torch.Generator().manual_seed(seed), scale=SCALE)
    conv = (lambda ll: -ll) if kind == "toy" else (lambda ll: bits_per_dim(ll, d, scale=SCALE))
    rows, ge = [], torch.Generator().manual_seed(50_000 + seed)
    plan = [(K, sub) for K in a.ks for sub in ("even", "dp")] + [(a.ref_k, "even")]
    for K, sub in plan:
        seqs = subsequences(gam, d, K) if K < DDPM.N else {"even": torch.arange(1, DDPM.N + 1),
                                                                         "cost_even": float("nan")}
        steps = seqs[sub]
        for var in VARIANCES:
            if K == a.ref_k and var == "analytic_res":
                continue
            x = draw(model, steps, var, gam, a.n_samples, shape, seed, data_range)
            row = {"K": K, "subsequence": sub, "variance": var, "quality": quality(x, ref, kind),
                   "kl_cost": seqs.get(f"cost_{sub}")}
            if K < DDPM.N:
                r = discrete_elbo(ddpm_view(model), x_elbo, steps=steps, generator=ge,
                                  variances=_variances(var, steps, gam, data_range)[2])
                row["elbo_nll"] = _ms(conv(r.elbo))
            rows.append(row)
            for P, suffix in devices(a, kind)[1:]:
                xc = draw(model, steps, var, gam, a.n_samples, shape, seed, data_range, P, clamp=suffix == "+clamp")
                rows.append({"K": K, "subsequence": sub, "variance": var + suffix,
                             "quality": quality(xc, ref, kind), "kl_cost": row["kl_cost"], "clip": P})
        rows += ddim_rows(model, K, sub, steps, gam, shape, seed, data_range, ref, kind, a) if a.ddim else []
    return {"rows": rows, "gamma_norm_gt1": int((gam["norm"] > 1).sum())}


# -- data, summary, plots -----------------------------------------------------------------------------------------
def load(name: str, seed: int, a):
    if name == "digits":
        xtr, _, xte, _ = digits_split(seed=0)
        return xtr, xte[: a.n_test_digits]
    return load_dataset(name, n=a.n_train, seed=seed)[0], load_dataset(name, n=a.n_test, seed=10_000 + seed)[0]


def run_one(name: str, seed: int, a) -> dict:
    kind = "digits" if name == "digits" else "toy"
    xtr, xte = load(name, seed, a)
    t0 = time.perf_counter()
    models, times = train_models(xtr, kind, seed, a)
    part_a = {} if a.adpm_only else {w: nll_metrics(m, xte, kind, seed, a) for w, m in models.items()}
    t1 = time.perf_counter()
    part_b = analytic_dpm_part(models["simple"], xtr, xte, kind, seed, a)
    floor = sliced_w2(xtr[: a.n_test], xte, n_projections=500, seed=0) if kind == "toy" else None
    print(f"[{name} seed {seed}] train+A {t1 - t0:.0f}s, B {time.perf_counter() - t1:.0f}s", flush=True)
    return {"train_s": times, "nll": part_a, "adpm": part_b, "data_floor": floor}


_agg = functools.partial(fmt_mean_std, always_std=True)  # "mean ± std" over seeds (std 0 for one seed)


def summarize(runs: dict, a) -> tuple[dict, str]:
    summary, lines = {}, []
    for name, seeds in runs.items():
        unit = "bits/dim (17-level)" if name == "digits" else "nats per point"
        has_nll = all(s["nll"] for s in seeds.values())
        if has_nll:
            lines += [f"## {name}: test NLL by weighting ({unit}; mean ± std over seeds {list(seeds)})", "",
                      "| weighting | ODE NLL | ODE NLL (median) | max abs x_T | -cont. ELBO "
                      "| -discrete ELBO (N=1000, β̃) | ODE NFE |", "|---|---|---|---|---|---|---|"]
        for w in WEIGHTINGS if has_nll else ():
            r = [s["nll"][w] for s in seeds.values()]
            vals = {k: [x[k]["mean"] for x in r] for k in ("ode_nll", "cont_elbo_nll", "disc_elbo_nll")}
            summary[f"{name}/{w}"] = {k: [float(np.mean(v)), float(np.std(v, ddof=1) if len(v) > 1 else 0)]
                                      for k, v in vals.items()}
            med = _agg([x["ode_nll_median"] for x in r]) if all("ode_nll_median" in x for x in r) else "-"
            xt = f"{max(x['ode_max_abs_xT'] for x in r):.3g}" if all("ode_max_abs_xT" in x for x in r) else "-"
            lines.append(f"| {w} | {_agg(vals['ode_nll'])} | {med} | {xt} | {_agg(vals['cont_elbo_nll'])} | "
                         f"{_agg(vals['disc_elbo_nll'])} | {np.mean([x['ode_nfe'] for x in r]):.0f} |")
        metric = "FID-digits" if name == "digits" else "sliced W2 to test"
        lines += ["", f"## {name}: Analytic-DPM, simple model as DDPM ({metric}; -discrete ELBO in {unit}; "
                  f"seeds {list(seeds)})", "",
                  f"| K | subseq. | {' | '.join(VARIANCES)} | -ELBO: {' | '.join(VARIANCES)} |",
                  "|---" * (2 + 2 * len(VARIANCES)) + "|"]
        first = next(iter(seeds.values()))["adpm"]["rows"]
        for K, sub in dict.fromkeys((r["K"], r["subsequence"]) for r in first):
            q, e = [], []
            for var in VARIANCES:
                rs = [r for s in seeds.values() for r in s["adpm"]["rows"]
                      if (r["K"], r["subsequence"], r["variance"]) == (K, sub, var)]
                q.append(_agg([r["quality"] for r in rs]) if rs else "-")
                e.append(_agg([r["elbo_nll"]["mean"] for r in rs]) if rs and "elbo_nll" in rs[0] else "-")
                if rs:
                    summary[f"{name}/adpm/K{K}/{sub}/{var}"] = {
                        "quality": [r["quality"] for r in rs],
                        "elbo_nll": [r["elbo_nll"]["mean"] for r in rs if "elbo_nll" in r]}
            lines.append(f"| {K} | {sub} | {' | '.join(q)} | {' | '.join(e)} |")
        lines += _clip_table(name, seeds, summary) + _ddim_table(name, seeds, summary) + _reference_table(name, seeds)
        if name != "digits":
            lines.append(f"\nTwo-sample floor (train vs test sliced W2): "
                         f"{_agg([s['data_floor'] for s in seeds.values()])}.")
        lines.append("")
    return summary, "\n".join(lines)


def _clip_table(name: str, seeds: dict, summary: dict) -> list[str]:
    """FID rows of the ``--sample-clip`` / ``--clamp-rows`` draws next to the plain ones (same x_T and noise)."""
    rows = [r for s in seeds.values() for r in s["adpm"]["rows"]]
    suffixes = [f"+clip{P:g}" for P in dict.fromkeys(r["clip"] for r in rows if r.get("clip"))]
    suffixes += ["+clamp"] if any(r["variance"].endswith("+clamp") for r in rows) else []
    out = []
    for suffix in suffixes:
        what = ("x0_hat clamped to [-1, 1] (`--clamp-rows`)" if suffix == "+clamp" else
                f"x0_hat clamped to [-1, 1] and the last noisy std capped at {suffix[5:]} grey levels "
                f"(`--sample-clip {suffix[5:]}`)")
        out += ["", f"## {name}: the same cells sampled with {what}; FID-digits, seeds {list(seeds)}; plain values in "
                "parentheses", "", f"| K | subseq. | {' | '.join(VARIANCES)} |", "|---" * (2 + len(VARIANCES)) + "|"]
        for K, sub in dict.fromkeys((r["K"], r["subsequence"]) for r in rows if r["variance"].endswith(suffix)):
            cells = []
            for var in VARIANCES:
                key = (K, sub, var + suffix)
                c = [r["quality"] for r in rows if (r["K"], r["subsequence"], r["variance"]) == key]
                p = [r["quality"] for r in rows if (r["K"], r["subsequence"], r["variance"]) == (K, sub, var)]
                cells.append(f"{_agg(c)} ({_agg(p)})" if c else "-")
                if c:
                    summary[f"{name}/adpm/K{K}/{sub}/{key[2]}"] = {"quality": c}
            out.append(f"| {K} | {sub} | {' | '.join(cells)} |")
    return out


def _ddim_table(name: str, seeds: dict, summary: dict) -> list[str]:
    """DDIM vs Analytic-DDIM (``--ddim``): per cell both qualities and the paired difference over seeds."""
    rows = [r for s in seeds.values() for r in s["adpm"]["rows"] if r.get("eta") == 0.0]
    if not rows:
        return []
    metric = "FID-digits" if name == "digits" else "sliced W2 to test"
    out = ["", f"## {name}: DDIM family (eta = 0), DDIM vs Analytic-DDIM ({metric}; seeds {list(seeds)}; same x_T "
           "as above; difference = analytic - DDIM, paired by seed, and the seeds where Analytic-DDIM is better)", "",
           "| K | subseq. | devices | DDIM | Analytic-DDIM | difference | better |", "|---|---|---|---|---|---|---|"]
    ddim = [r for r in rows if not r["variance"].startswith("analytic_ddim")]
    for K, sub, suffix in dict.fromkeys((r["K"], r["subsequence"], r["variance"][len("ddim"):]) for r in ddim):
        q = {v: [r["quality"] for r in rows if (r["K"], r["subsequence"], r["variance"]) == (K, sub, v + suffix)]
             for v in ("ddim", "analytic_ddim")}
        diff = np.subtract(q["analytic_ddim"], q["ddim"])
        for v, vals in q.items():
            summary[f"{name}/adpm/K{K}/{sub}/{v}{suffix}"] = {"quality": vals}
        out.append(f"| {K} | {sub} | {_device_label(suffix)} | {_agg(q['ddim'])} | "
                   f"{_agg(q['analytic_ddim'])} | {_agg(diff)} | {int((diff < 0).sum())}/{diff.size} |")
    return out


def _device_label(suffix: str) -> str:
    if not suffix:
        return "plain"
    return "x0 clamp" if suffix == "+clamp" else f"clamp + cap P = {suffix[len('+clip'):]}"


def _reference_table(name: str, seeds: dict) -> list[str]:
    """Analytic vs baseline as the Analytic-DPM reference code compares them (its run_cifar10.py): the beta_tilde
    baseline and deterministic DDIM with the x0 clamp only, Analytic-DPM / -DDIM with the clamp and the last-step
    cap; next to the matched comparison (the same devices for both).  Paired by seed.  (Their DDIM clamps x0_hat but
    keeps the raw eps_hat in the direction term; ``sample_analytic_dpm`` recomputes eps_hat from the clamped x0_hat,
    which is what their DDPM posterior-mean form amounts to.)"""
    rows = [r for s in seeds.values() for r in s["adpm"]["rows"]]
    names = {r["variance"] for r in rows}
    caps = sorted({r["variance"].split("+clip")[1] for r in rows if "+clip" in r["variance"]}, key=float)
    pairs = []
    for P in caps:
        pairs += [(f"DDPM, reference: β̃ + clamp vs analytic + clamp + cap {P}", "beta_tilde+clamp",
                   f"analytic+clip{P}"),
                  (f"DDPM, matched: both clamp + cap {P}", f"beta_tilde+clip{P}", f"analytic+clip{P}"),
                  (f"DDIM, reference: DDIM + clamp vs Analytic-DDIM + clamp + cap {P}", "ddim+clamp",
                   f"analytic_ddim+clip{P}")]  # DDIM adds no noise: its cap does nothing, reference = matched
    pairs += [("DDPM, matched: both clamp", "beta_tilde+clamp", "analytic+clamp"),
              ("DDIM, matched: both clamp", "ddim+clamp", "analytic_ddim+clamp")]
    pairs = [p for p in pairs if p[1] in names and p[2] in names]
    if not pairs:
        return []
    out = ["", f"## {name}: Analytic-DPM vs its baseline as the reference code compares them, and matched "
           f"(FID-digits; seeds {list(seeds)}; difference = analytic - baseline, paired by seed)", "",
           "| K | subseq. | comparison | baseline | analytic | difference | analytic better |",
           "|---|---|---|---|---|---|---|"]
    for K, sub in dict.fromkeys((r["K"], r["subsequence"]) for r in rows):
        for label, base, cand in pairs:
            q = [[r["quality"] for r in rows if (r["K"], r["subsequence"], r["variance"]) == (K, sub, v)]
                 for v in (base, cand)]
            if not q[0] or len(q[0]) != len(q[1]):
                continue
            diff = np.subtract(q[1], q[0])
            out.append(f"| {K} | {sub} | {label} | {_agg(q[0])} | {_agg(q[1])} | {_agg(diff)} | "
                       f"{int((diff < 0).sum())}/{diff.size} |")
    return out


def _nll_plot(plt, runs: dict, names: list[str], stem: str) -> str:
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for j, key in enumerate(("ode_nll", "cont_elbo_nll", "disc_elbo_nll")):
            def val(r, key=key):  # the ODE bar shows the per-example median when recorded (robust to blow-ups)
                return r["ode_nll_median"] if key == "ode_nll" and "ode_nll_median" in r else r[key]["mean"]
            v = np.array([[val(s["nll"][w]) for w in WEIGHTINGS] for s in runs[name].values()])
            label = "ode_nll (median)" if key == "ode_nll" and v.size and "ode_nll_median" in next(
                iter(runs[name].values()))["nll"][WEIGHTINGS[0]] else key
            ax.bar(np.arange(3) + 0.27 * (j - 1), v.mean(0), 0.27, yerr=v.std(0), label=label, capsize=2)
        ax.set_yscale("symlog", linthresh=10.0)
        ax.set_xticks(range(3), WEIGHTINGS)
        ax.set_title(name)
        ax.set_ylabel("bits/dim" if name == "digits" else "nats / point")
    axes[0][0].legend(fontsize=7)
    path = str(RESULTS / f"{stem}_nll.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plots(runs: dict, stem: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, paths = list(runs), []
    nll_names = [n for n in names if all(s["nll"] for s in runs[n].values())]
    if nll_names:
        paths.append(_nll_plot(plt, runs, nll_names, stem))
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False)
    for c, name in enumerate(names):
        rows = [r for s in runs[name].values() for r in s["adpm"]["rows"] if r["K"] != max(r2["K"] for r2 in
                next(iter(runs[name].values()))["adpm"]["rows"])]
        for ci, var in enumerate(VARIANCES):
            for sub, ls in (("even", "-"), ("dp", "--")):
                ks = sorted({r["K"] for r in rows})
                q = [np.mean([r["quality"] for r in rows if (r["K"], r["subsequence"], r["variance"]) == (k, sub, var)])
                     for k in ks]
                e = [np.mean([r["elbo_nll"]["mean"] for r in rows
                              if (r["K"], r["subsequence"], r["variance"]) == (k, sub, var)]) for k in ks]
                axes[0][c].plot(ks, q, ls, color=f"C{ci}", marker="o", label=f"{var} {sub}")
                axes[1][c].plot(ks, e, ls, color=f"C{ci}", marker="o", label=f"{var} {sub}")
        axes[0][c].set_title(f"{name}: {'FID-digits' if name == 'digits' else 'sliced W2'} vs K")
        axes[1][c].set_title(f"{name}: -ELBO vs K")
        axes[1][c].set_yscale("symlog", linthresh=1.0)
        for r in (0, 1):
            axes[r][c].set_xlabel("K")
    axes[0][0].legend(fontsize=6)
    paths.append(str(RESULTS / f"{stem}_adpm.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close("all")
    return paths


def merge(paths: list[str], stem: str) -> dict:
    """Combine the ``runs`` of several result JSONs (e.g. one process per data set and seed) into one report."""
    import json

    runs, cfgs, wall = {}, [], 0.0
    for path in paths:
        d = json.loads(Path(path).read_text())
        cfgs.append(d["config"])
        wall += d["wall_time_s"]
        for name, seeds in d["runs"].items():
            runs.setdefault(name, {}).update(seeds)
    summary, md = summarize(runs, None)
    figs = plots(runs, stem)
    a = cfgs[0]
    train = (f"Analytic-DPM part only (`--adpm-only`): the simple model, {a['steps']} steps (batch {a['batch']}, lr "
             f"{a['lr']}), Gamma from {a['gamma_m']} training points per step" if a.get("adpm_only") else
             f"Training: {a['steps']} steps (batch {a['batch']}, lr {a['lr']}) per weighting; high-order DSM = "
             f"simple model + {a['ft_steps']} steps (toy) of L1 + L2 (trace) at lr {a['lr'] / 5}")
    header = (f"# Likelihood benchmark (merged from {len(paths)} runs, {wall / 60:.1f} CPU-process minutes in all)\n\n"
              f"{train}.  Plots: {', '.join(Path(f).name for f in figs)}.\n\n")
    write_results(stem, {"config": cfgs, "merged_from": paths, "summary": summary, "runs": runs,
                         "figures": figs}, header + md)
    return {"summary": summary, "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--toy", nargs="*", default=["moons", "swiss_roll"])
    p.add_argument("--no-digits", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--digit-seeds", type=int, nargs="+")
    p.add_argument("--steps", type=int, help="training steps per weighting")
    p.add_argument("--ft-steps", type=int, help="high-order DSM fine-tuning steps")
    p.add_argument("--lr", type=float, help="training learning rate of every weighting (default 2e-3; HODSM: lr / 5)")
    p.add_argument("--gamma-m", type=int, help="data points per step for the Gamma estimate")
    p.add_argument("--adpm-only", action="store_true",
                   help="Part B only: train just the simple model (e.g. longer, with --steps) and skip the NLL part")
    p.add_argument("--digit-samples", type=int, help="digits drawn per (K, subsequence, variance) (default 500)")
    p.add_argument("--digit-ref-k", type=int, help="digits reference budget K on the even grid (default 100)")
    p.add_argument("--ks", type=int, nargs="+", help="step budgets K for Analytic-DPM (default 10 25 50)")
    p.add_argument("--stem", help="result file stem (default likelihood or likelihood_quick)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only merge these result files into --stem")
    p.add_argument("--sample-clip", type=float, nargs="+", metavar="P",
                   help="digits: also sample every cell with x0 clamped to [-1, 1] and the last noisy std capped at "
                        "P grey levels of mean absolute noise (Analytic-DPM reference code: P = 2 of 255)")
    p.add_argument("--ddim", action="store_true",
                   help="also sample the DDIM family (eta = 0): DDIM vs Analytic-DDIM, sample quality only")
    p.add_argument("--clamp-rows", action="store_true",
                   help="digits: also sample every cell with the x0 clamp alone (the reference code's beta_tilde "
                        "baseline) and report the reference code's comparison next to the matched one")
    p.add_argument("--ddpm-schedule", choices=("linear", "cosine"), default="linear",
                   help="beta schedule of the DDPM view of the VP-trained model (Part B; default linear).  The cosine "
                        "chain's top steps lie below the VP model's log-SNR range (-10.05; the view clamps the VP time "
                        "to 1), so with cosine only rows with the x0 clamp are meaningful")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    global DDPM
    DDPM = Discrete.from_schedule(a.ddpm_schedule, 1000)
    if a.merge:
        return merge(a.merge, a.stem or "likelihood")
    q = a.quick
    a.seeds = a.seeds or ([0] if q else [0, 1, 2])
    a.digit_seeds = a.digit_seeds or ([0] if q else [0, 1])
    user_ft, user_gm = a.ft_steps, a.gamma_m
    steps, ft_steps, a.batch, lr = (300, 60, 256, 2e-3) if q else (800, 150, 256, 2e-3)
    a.lr = a.lr or lr
    a.steps, a.ft_steps = a.steps or steps, a.ft_steps or ft_steps
    a.n_train, a.n_test, a.n_test_digits = (4000, 500, 120) if q else (10_000, 1000, 200)
    a.elbo_samples, a.rtol_img, gamma_m = (8, 1e-3, 100) if q else (32, 1e-4, 1000)
    a.gamma_m = a.gamma_m or gamma_m
    ks, a.ref_k, a.n_samples = ((10, 25), 1000, 500) if q else ((10, 25, 50), 1000, 1000)
    a.ks = tuple(a.ks or ks)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = {name: {s: run_one(name, s, a) for s in a.seeds} for name in a.toy}
    if not a.no_digits:
        b = copy.copy(a)
        b.n_samples, b.ref_k = (a.digit_samples or (300 if q else 500)), (a.digit_ref_k or 100)
        b.ft_steps, b.gamma_m = user_ft or (30 if q else 100), user_gm or (100 if q else 200)
        runs["digits"] = {s: run_one("digits", s, b) for s in a.digit_seeds}
    stem = a.stem or ("likelihood" + ("_quick" if q else ""))
    summary, md = summarize(runs, a)
    figs = plots(runs, stem)
    wall = time.perf_counter() - t0
    train = (f"Analytic-DPM part only (`--adpm-only`): the simple model, {a.steps} steps (batch {a.batch}, lr {a.lr})"
             if a.adpm_only else f"Training: {a.steps} steps (batch {a.batch}, lr {a.lr}) per weighting; high-order "
             f"DSM = simple model + {a.ft_steps} steps of L1 + L2 (trace) at lr {a.lr / 5}")
    header = (f"# Likelihood benchmark ({'quick' if q else 'full'} run, {wall / 60:.1f} min on CPU)\n\n"
              f"{train}.  "
              f"Plots: {', '.join(Path(f).name for f in figs)}.\n\n")
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()}
    write_results(stem, {"config": cfg, "summary": summary, "runs": {n: {str(s): r for s, r in v.items()}
                                                                     for n, v in runs.items()},
                         "wall_time_s": wall, "figures": figs}, header + md)
    return {"summary": summary, "runs": runs}


if __name__ == "__main__":
    main()
