"""Tests of scorelab.densities: exact log Z of every target, path log-weights against analytic values, the exact
optimal control of Gaussian(-mixture) targets, unbiasedness of the path-space importance weights, short training runs
recovering log Z, and validation of user targets."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.core.processes import VP, ForwardProcess
from scorelab.densities import (
    DDS,
    DIS,
    PIS,
    DensityConfig,
    DoubleWell,
    FunctionControl,
    Funnel,
    ManyWell,
    Target,
    ZeroControl,
    ess,
    evaluate,
    gaussian,
    get_target,
    gmm9,
    gmm40,
    load_target,
    log_Z_is,
    pretrain_mc_score,
    run,
    train,
)

F64 = torch.float64
G2 = dict(mean=[1.0, -0.5], cov=[[1.0, 0.3], [0.3, 0.5]], log_Z=1.3)  # exp(1.3) N(m, S): log Z = 1.3


def _quad2d(target, lo, hi, n=1201):
    """log of a 2-D trapezoid quadrature of rho on [lo, hi]^2."""
    u = torch.linspace(lo, hi, n, dtype=F64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    lp = target.log_prob_unnorm(torch.stack([X.flatten(), Y.flatten()], 1)).reshape(n, n)
    m = lp.max()
    return float(m + torch.log(torch.trapezoid(torch.trapezoid(torch.exp(lp - m), u), u)))


# ---------------------------------------------------------------------------------------------- targets: log Z
@pytest.mark.parametrize("make,lo,hi", [(gmm9, -10, 10), (lambda: gmm40(), -60, 60),
                                         (lambda: gaussian(**G2), -8, 8)])
def test_2d_targets_log_Z_by_quadrature(make, lo, hi):
    t = make()
    assert abs(_quad2d(t, lo, hi, 481 if hi > 20 else 801) - t.log_Z) < 1e-4


def test_funnel_is_the_normalized_hierarchical_density():
    t = Funnel(10)
    x = t.sample(500, torch.Generator().manual_seed(0))
    ref = torch.distributions.Normal(0.0, 3.0).log_prob(x[:, 0])
    ref = ref + torch.distributions.Normal(0.0, torch.exp(0.5 * x[:, :1])).log_prob(x[:, 1:]).sum(1)
    assert torch.allclose(t.log_prob_unnorm(x), ref, atol=1e-10) and t.log_Z == 0.0
    # and Z = 1 by importance sampling in d = 3 with a heavy-tailed proposal (independent of the sampler)
    t3, n = Funnel(3), 400_000
    q = torch.distributions.StudentT(2.0, 0.0, torch.tensor([3.0, 3.0, 3.0], dtype=F64))
    y = q.sample((n,))
    lw = t3.log_prob_unnorm(y) - q.log_prob(y).sum(1)
    w = torch.exp(lw)
    assert abs(float(w.mean()) - 1.0) < 4 * float(w.std()) / math.sqrt(n) + 1e-3


@pytest.mark.parametrize("d,w,delta", [(5, 5, 4.0), (20, 5, 3.0), (3, 1, 2.0)])
def test_double_well_log_Z_and_moments(d, w, delta):
    t = DoubleWell(d, w, delta)
    u = np.linspace(-8, 8, 200_001)
    z1 = np.trapezoid(np.exp(-((u**2 - delta) ** 2)), u)
    assert abs(t.log_Z - (w * math.log(z1) + 0.5 * (d - w) * math.log(2 * math.pi))) < 1e-8
    x = t.sample(100_000, torch.Generator().manual_seed(0))  # exact inverse-CDF samples
    sq = x.pow(2).sum(1)
    assert abs(float(sq.mean()) - t.moments()["sq"]) < 4 * float(sq.std()) / math.sqrt(len(x))


def test_many_well_log_Z_known_value():
    t = ManyWell(32)
    u = np.linspace(-8, 8, 400_001)
    z1 = np.trapezoid(np.exp(-(u**4) + 6 * u**2 + 0.5 * u), u)
    assert abs(t.log_Z - 16 * (math.log(z1) + 0.5 * math.log(2 * math.pi))) < 1e-7
    assert abs(t.log_Z - 164.6957) < 1e-3  # the value reported by FAB (Midgley et al. 2023)


@pytest.mark.parametrize("name", ["gmm9", "gmm40", "funnel", "dw554", "dw2053", "manywell", "gauss"])
def test_closed_form_scores_match_autograd(name):
    t = get_target(name)
    x = t.sample(64, torch.Generator().manual_seed(1))
    assert torch.allclose(t.score(x), Target.score(t, x), rtol=1e-9, atol=1e-9)


def test_mixture_moments_match_samples():
    t = gmm9()
    x = t.sample(200_000, torch.Generator().manual_seed(0))
    m = t.moments()
    assert abs(float(x.pow(2).sum(1).mean()) - m["sq"]) < 0.15
    assert abs(float(x.abs().sum(1).mean()) - m["abs"]) < 0.03


# ---------------------------------------------------------------------------------------------- user targets
def test_user_targets(tmp_path, monkeypatch):
    (tmp_path / "my_targets_h6.py").write_text(
        "import torch\n"
        "def good(x): return -0.5 * (x ** 2).sum(1)\n"
        "def nan(x): return torch.full((x.shape[0],), float('nan'))\n"
        "def inf(x): return torch.full((x.shape[0],), float('inf'))\n"
        "def shape(x): return -0.5 * x ** 2\n"
        "def numpy(x): return (x ** 2).sum(1).numpy()\n"
        "def only3(x): return -(x[:, :3] ** 2).sum(1) + 0 * x.reshape(x.shape[0], 3).sum(1)\n"
        "not_callable = 3.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = load_target("my_targets_h6:good", 4)
    assert t.dim == 4 and t.log_Z is None
    x = torch.randn(5, 4, dtype=F64)
    assert torch.allclose(t.score(x), -x)
    for spec, dim, msg in [("my_targets_h6:nan", 2, "non-finite"), ("my_targets_h6:inf", 2, "non-finite"),
                           ("my_targets_h6:shape", 2, "shape"), ("my_targets_h6:numpy", 2, "torch.Tensor"),
                           ("my_targets_h6:only3", 5, "failed"), ("my_targets_h6:not_callable", 2, "not callable"),
                           ("my_targets_h6:missing", 2, "no attribute"), ("no_such_module_h6:f", 2, "cannot import"),
                           ("my_targets_h6", 2, "package.module:function")]:
        with pytest.raises(ValueError, match=msg):
            get_target(spec, dim)
    with pytest.raises(ValueError, match="dimension"):
        DensityConfig(target="my_targets_h6:good", dim=3) and run(DensityConfig(target="gmm9", dim=3))


# ---------------------------------------------------------------------------------------------- path log-weights
@pytest.mark.parametrize("cls", [PIS, DDS])
@pytest.mark.parametrize("K", [1, 7, 50])
def test_uncontrolled_log_weight_is_exact(cls, K):
    """u = 0: the sampler *is* the reference, so log w = log rho(X_K) - log p_ref_K(X_K) for every K."""
    t = gaussian(**G2)
    s = cls(2, K, sigma=1.7, net=ZeroControl())
    p = s.simulate(t, 300, torch.Generator().manual_seed(0), F64)
    ref_std = 1.7 * (math.sqrt(s.t_max) if cls is PIS else 1.0)
    ana = t.log_prob_unnorm(p.x) - torch.distributions.Normal(0.0, ref_std).log_prob(p.x).sum(1)
    assert torch.allclose(p.log_w, ana, atol=1e-9)


def test_uncontrolled_dis_log_weight_converges_to_girsanov():
    """u = 0 in DIS: log w -> log rho(X_T) - log N(X_0) - int div f_bar ds = ... + d/2 int beta (source 004)."""
    t = gaussian(**G2)
    errs = []
    for K in (100, 400, 1600):
        s = DIS(2, K, net=ZeroControl())
        p = s.simulate(t, 200, torch.Generator().manual_seed(0), F64)
        ana = t.log_prob_unnorm(p.x) - s.log_prior(p.xs[0]) + float(s.vp.int_beta(1.0))  # d/2 * 2 int beta
        errs.append(float((p.log_w - ana).abs().mean()))
    assert errs[2] < 0.3 and errs[0] / errs[1] > 1.6 and errs[1] / errs[2] > 1.6  # strong order 1/2


class _Scaled(ForwardProcess):  # OU noising with stationary std c: alpha_t as VP, sigma_t = c * sigma_VP
    def __init__(self, base, c):
        self.base, self.c = base, c

    def log_alpha(self, t):
        return self.base.log_alpha(t)

    def log_sigma(self, t):
        return self.base.log_sigma(t) + math.log(self.c)


class _Bridge(ForwardProcess):  # Brownian bridge from 0 to y: X_s = (s/T) y + sig sqrt(s (T - s) / T) eps
    def __init__(self, T, sig):
        self.T, self.sig = T, sig

    def log_alpha(self, t):
        return torch.log(torch.as_tensor(t) / self.T)

    def log_sigma(self, t):
        t = torch.as_tensor(t)
        return 0.5 * torch.log(self.sig**2 * t * (self.T - t) / self.T)


def _optimal(method: str, gm: GaussianMixture, K: int, sig: float = 1.5):
    """Sampler with the exact optimal control for a Gaussian-mixture target, and the log-weight correction
    log Q_0(X_0) - log pi(X_0) (zero for PIS, whose optimal path measure starts at the prior point)."""
    vp = VP(0.1, 10.0)
    if method == "dis":  # v* = score of the VP-noised target at t = T - s
        s = DIS(gm.d, K, net=FunctionControl(lambda x, u: gm.score_t(x, 1 - u, vp)))
        return s, lambda x0: gm.log_prob_t(x0, 1.0, vp) - s.log_prior(x0)
    if method == "dds":  # v* = grad log Q_s + x / sigma^2 with Q_s the OU-noised target
        ou = _Scaled(vp, sig)
        s = DDS(gm.d, K, sigma=sig, net=FunctionControl(lambda x, u: gm.score_t(x, 1 - u, ou) + x / sig**2))
        return s, lambda x0: gm.log_prob_t(x0, 1.0, ou) - s.log_prior(x0)
    br = _Bridge(1.0, sig)  # PIS: drift sigma^2 v* = (E[X_T | X_s = x] - x) / (T - s) (Foellmer drift)

    def v(x, u):
        x0 = gm.mean().to(x).expand_as(x) if float(u[0]) == 0 else gm.x0_t(x, u, br)
        return (x0 - x) / (sig**2 * (1 - u[:, None]))
    return PIS(gm.d, K, sigma=sig, net=FunctionControl(v)), lambda x0: torch.zeros(len(x0), dtype=x0.dtype)


@pytest.mark.parametrize("method", ["dis", "pis", "dds"])
@pytest.mark.parametrize("which", ["gauss", "gmm9"])
def test_optimal_control_gives_vanishing_variance_and_exact_log_Z(method, which):
    """Plugging the closed-form optimal control in: Var(log w - correction) -> 0 at rate h, log Z-hat -> log Z."""
    t = gaussian(**G2) if which == "gauss" else gmm9()
    res = []
    for K in (50, 200):
        s, corr = _optimal(method, t.mixture, K)
        p = s.sample(t, 1000, torch.Generator().manual_seed(0), F64)
        lw = p.log_w - t.log_Z - corr(p.xs[0]).to(F64)
        res.append((float(lw.var()), log_Z_is(lw)))
    (v50, _), (v200, lz200) = res
    assert v200 < v50 / 2.5  # variance O(h)
    assert v200 < (0.8 if method == "dis" else 0.2)
    assert abs(lz200) < 0.05


@pytest.mark.parametrize("method", ["dis", "pis", "dds"])
def test_importance_weights_are_unbiased_for_any_control(method):
    """E[w] = Z exactly for every K and every control: K = 4 steps and a perturbed optimal control."""
    t = gaussian([0.7], [[0.6]], log_Z=-0.4)
    s, _ = _optimal(method, t.mixture, 4)
    v_opt = s.net.fn
    s.net = FunctionControl(lambda x, u: v_opt(x, u) + 0.3 * torch.sin(3 * x + u[:, None]))
    p = s.sample(t, 200_000, torch.Generator().manual_seed(0), F64, batch=200_000)
    w = torch.exp(p.log_w - t.log_Z)
    assert ess(p.log_w) > 0.1  # a usable, non-optimal importance sampler
    assert abs(float(w.mean()) - 1.0) < 4 * float(w.std()) / math.sqrt(len(w))


@pytest.mark.parametrize("t", [1e-6, 1e-3, 0.05, 0.3, 1.0])
def test_separable_noised_score_matches_finite_differences_of_the_noised_density(t):
    """DoubleWell.score_t (windowed 1-D quadrature + Tweedie) against d/dx log int rho(y) N(x; a y, s^2) dy by central
    differences on a dense independent grid, from the data end (narrow window) to the prior end (global grid)."""
    dw, vp = DoubleWell(2, 2, 4.0), VP(0.1, 10.0)
    x = torch.tensor([[0.3, 1.9], [-2.2, 0.05]], dtype=F64)
    a = float(vp.log_alpha(torch.tensor(t)).exp())
    sd = float(vp.log_sigma(torch.tensor(t)).exp())
    y = torch.linspace(-4.0, 4.0, 800_001, dtype=F64)

    def log_p(u: float) -> float:
        return float(torch.logsumexp(-(y * y - 4) ** 2 - 0.5 * ((u - a * y) / sd) ** 2, 0))
    h = 1e-3 * sd
    ref = torch.tensor([[(log_p(u + h) - log_p(u - h)) / (2 * h) for u in row.tolist()] for row in x], dtype=F64)
    got = dw.score_t(x, t, vp)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * (1 + ref.abs().max()))
    assert torch.allclose(dw.score_t(x, 0.0, vp), dw.score(x))  # t = 0: the target score


def test_dis_with_the_exact_double_well_control_has_first_order_discretization_error():
    """DIS with v* = DoubleWell.score_t (the optimal control, source 004): the ELBO gap is pure discretization error,
    so it shrinks ~ 1/K (K = 25 -> 100: ratio ~ 4), and the IS estimate is then accurate."""
    dw, gaps = DoubleWell(2, 2, 4.0), []
    for K in (25, 100):
        s = DIS(2, K)
        s.net = FunctionControl(lambda x, u, s=s: dw.score_t(x, s.t_max - u, s.vp))
        p = s.sample(dw, 2000, torch.Generator().manual_seed(0), F64)
        gaps.append(dw.log_Z - float(p.log_w.mean()))
    assert 2.5 < gaps[0] / gaps[1] < 6.0, gaps
    assert gaps[1] < 0.2 and abs(log_Z_is(p.log_w) - dw.log_Z) < 0.05 and ess(p.log_w) > 0.6


def test_dis_mc_optimal_control_estimates_the_noised_score():
    """DIS.mc_optimal_control (self-normalized IS from rho alone) agrees with the closed-form noised score of a
    Gaussian target at early, middle and late steps, within a few Monte-Carlo standard errors."""
    t = gaussian(**G2)
    s, g = DIS(2, 20), torch.Generator().manual_seed(0)
    x = torch.tensor([[0.5, -0.2], [1.5, 0.3], [-0.8, -1.0]], dtype=F64)
    for k in (2, 10, 18):
        exact = t.mixture.score_t(x, s.t_max - float(s.s[k]), s.vp)
        est = torch.stack([s.mc_optimal_control(t, x, k, 4000, g) for _ in range(8)])
        err = (est.mean(0) - exact).abs()
        if k < 18:
            assert (err <= 4 * est.std(0) / math.sqrt(8) + 1e-3 * (1 + exact.abs())).all(), (k, err)
        else:  # near the prior the proposal is ~10x wider than the target: self-normalized IS has an O(1/n) bias
            assert (err <= 0.1 * (1 + exact.abs())).all(), (k, err)


def test_mc_score_pretraining_lifts_dis_on_a_double_well_without_an_oracle():
    """pretrain_mc_score (rho only) takes DIS on DW(2,2,4) from its interpolation initialization (ESS ~0) to a usable
    importance sampler; only DIS has the method."""
    dw = DoubleWell(2, 2, 4.0)
    torch.manual_seed(0)
    s, g = DIS(2, 50), torch.Generator().manual_seed(0)
    before = ess(s.sample(dw, 2000, torch.Generator().manual_seed(1)).log_w)
    pretrain_mc_score(s, dw, rounds=3, updates=250, paths=256, n_mc=256, batch=512, generator=g)
    p = s.sample(dw, 2000, torch.Generator().manual_seed(1))
    assert before < 0.05 and ess(p.log_w) > 0.3 and abs(log_Z_is(p.log_w) - dw.log_Z) < 0.1
    with pytest.raises(ValueError, match="noised target's score"):
        pretrain_mc_score(PIS(2, 10), dw)


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("method,loss,kw", [("pis", "lv", {}), ("pis", "kl", {}), ("dds", "lv", {"sigma": 1.0}),
                                            ("dis", "lv", {}), ("dis", "kl", {})])
def test_short_training_recovers_log_Z_of_a_gaussian(method, loss, kw):
    """A short run on exp(1.3) N(m, S) in 2-D: ELBO gap shrinks, |log Z-hat - log Z| < 0.05 and ESS > 0.5."""
    t = gaussian(**G2)
    torch.manual_seed(0)
    s = {"pis": PIS, "dds": DDS, "dis": DIS}[method](2, 20, hidden=32, **kw)
    g = torch.Generator().manual_seed(0)
    before = s.sample(t, 2000, torch.Generator().manual_seed(5)).log_w
    train(s, t, loss=loss, iterations=100, batch=128, lr=1e-2, lr_final=1e-3, generator=g, progress=False)
    after = s.sample(t, 4000, torch.Generator().manual_seed(5)).log_w
    gap_before, gap_after = t.log_Z - float(before.mean()), t.log_Z - float(after.mean())
    assert gap_after < 0.5 * gap_before
    assert abs(log_Z_is(after) - t.log_Z) < 0.05 and ess(after) > 0.5


@pytest.mark.parametrize("method", ["dis", "pis", "dds"])
def test_exploration_paths_carry_their_own_unbiased_weights(method):
    """Behaviour paths with noise x 1.5 (off-policy LV): simulate's log w is then the behaviour's importance
    weight, E[w] = Z exactly (K = 4, a non-optimal sampler); the LV loss re-evaluates the sampler's own log p on
    these paths, which differs from the behaviour's."""
    from scorelab.densities import log_variance_loss
    t = gaussian([0.7], [[0.6]], log_Z=-0.4)
    s, _ = _optimal(method, t.mixture, 4)
    beh = s.simulate(t, 200_000, torch.Generator().manual_seed(0), F64, noise_scale=1.5)
    w = torch.exp(beh.log_w - t.log_Z)
    assert abs(float(w.mean()) - 1.0) < 4 * float(w.std()) / math.sqrt(len(w))
    s = {"dis": DIS, "pis": PIS, "dds": DDS}[method](1, 4, hidden=8).double()
    on, p_on = log_variance_loss(s, t, 64, torch.Generator().manual_seed(1), F64)
    assert torch.allclose(p_on.log_p, s.simulate(t, 64, torch.Generator().manual_seed(1), F64).log_p, atol=1e-9)
    _, p_off = log_variance_loss(s, t, 64, torch.Generator().manual_seed(1), F64, explore=1.5)
    beh = s.simulate(t, 64, torch.Generator().manual_seed(1), F64, noise_scale=1.5)
    assert torch.allclose(p_off.xs, beh.xs) and not torch.allclose(p_off.log_p, beh.log_p)
    with pytest.raises(ValueError, match="noise_scale"):
        s.simulate(t, 4, None, F64, noise_scale=0.0)


def test_training_with_exploration_and_ema_recovers_log_Z():
    """Off-policy LV (behaviour noise 1.5 -> 1) with an EMA of the weights on exp(1.3) N(m, S)."""
    t = gaussian(**G2)
    torch.manual_seed(0)
    s = DDS(2, 20, hidden=32)
    g = torch.Generator().manual_seed(0)
    train(s, t, loss="lv", iterations=100, batch=128, lr=1e-2, lr_final=1e-3, generator=g, progress=False,
          explore=1.5, ema=0.9)
    after = s.sample(t, 4000, torch.Generator().manual_seed(5)).log_w
    assert abs(log_Z_is(after) - t.log_Z) < 0.05 and ess(after) > 0.5
    with pytest.raises(ValueError, match="explore"):
        train(s, t, loss="kl", iterations=1, batch=8, explore=2.0, progress=False)
    with pytest.raises(ValueError, match="ema"):
        train(s, t, iterations=1, batch=8, ema=1.0, progress=False)


def test_ema_is_the_exponential_average_of_the_iterates():
    """With a constant lr the k-step run's weights are the k-th iterate of any longer run (same seeds), so the EMA
    after 3 steps is 0.9 (0.9 th1 + 0.1 th2) + 0.1 th3."""
    t = gaussian(**G2)

    def fit(n, ema=None):
        torch.manual_seed(0)
        s = PIS(2, 5, hidden=8)
        train(s, t, iterations=n, batch=16, lr=1e-2, generator=torch.Generator().manual_seed(0), progress=False,
              ema=ema)
        return torch.nn.utils.parameters_to_vector(s.parameters()).detach()

    th1, th2, th3 = fit(1), fit(2), fit(3)
    assert torch.allclose(fit(3, ema=0.9), 0.9 * (0.9 * th1 + 0.1 * th2) + 0.1 * th3, atol=1e-6)


def test_run_writes_samples_plot_and_report(tmp_path):
    cfg = DensityConfig(target="gmm9", method="dds", loss="lv", steps=10, iterations=3, batch=32, eval_samples=256,
                        progress=False)
    r = run(cfg, tmp_path)
    for k in ("log_Z_hat", "elbo", "ess", "dlogZ_is", "sq_err", "w2"):
        assert k in r["metrics"] and math.isfinite(r["metrics"][k])
    assert {p.split("/")[-1] for p in r["files"]} == {"samples.npy", "samples.safetensors", "samples.png",
                                                       "report.json"}
    from safetensors.torch import load_file
    assert load_file(tmp_path / "samples.safetensors")["x"].shape == (256, 2)
    npy = torch.from_numpy(np.load(tmp_path / "samples.npy"))
    assert torch.equal(npy, load_file(tmp_path / "samples.safetensors")["x"])
    r = run(replace(cfg, eval_repeats=3))
    lz = torch.tensor(r["metrics"]["log_Z_hat_reps"], dtype=F64)
    assert len(lz) == 3 and abs(r["metrics"]["log_Z_hat_pooled"] - float(torch.logsumexp(lz, 0) - math.log(3))) < 1e-12
    assert abs(r["metrics"]["log_Z_hat_sd"] - float(lz.std())) < 1e-12
    assert abs(r["metrics"]["dlogZ_is_mean"] - float((lz - r["metrics"]["log_Z"]).abs().mean())) < 1e-12
    assert r["metrics"]["dlogZ_is_mean"] != r["metrics"]["dlogZ_is"]  # the 3 repeats' estimates differ
    assert r["metrics"]["elbo_pooled"] < r["metrics"]["log_Z_hat_pooled"]  # Jensen
    assert 0 < r["metrics"]["elbo_pooled_se"] < r["metrics"]["elbo_se"]  # 3x the paths: about 1/sqrt(3) the error
    with pytest.raises(ValueError, match="unknown method"):
        DensityConfig(method="nope")
    with pytest.raises(ValueError, match="unknown loss"):
        DensityConfig(loss="nope")


def test_elbo_standard_error_matches_the_spread_of_repeated_estimates():
    """elbo_se = std(log w)/sqrt(n) is the CLT error of the ELBO: over 400 independent n = 64 draws of Gaussian log
    weights the ELBOs' spread matches the mean reported s.e. within 10%."""
    g = torch.Generator().manual_seed(0)

    class Paths:  # a stand-in sampler: log w ~ N(-1, 2^2), x ~ N(0, 1)
        def sample(self, target, n, generator, dtype):
            from types import SimpleNamespace
            return SimpleNamespace(log_w=-1 + 2 * torch.randn(n, generator=generator, dtype=F64),
                                   x=torch.randn(n, 2, generator=generator, dtype=F64))

    runs = [evaluate(Paths(), Target(2), 64, g)[0] for _ in range(400)]  # no log Z, samples or moments: fast
    spread = torch.tensor([m["elbo"] for m in runs], dtype=F64).std()
    se = sum(m["elbo_se"] for m in runs) / len(runs)
    assert abs(se / float(spread) - 1) < 0.1 and abs(se - 2 / 8) < 0.02


def test_estimators_known_values():
    lw = torch.log(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=F64)) + 2.0
    assert abs(log_Z_is(lw) - 2.0) < 1e-12 and abs(ess(lw) - 1.0) < 1e-12
    lw = torch.log(torch.tensor([3.0, 1.0], dtype=F64))
    assert abs(log_Z_is(lw) - math.log(2.0)) < 1e-12 and abs(ess(lw) - 16 / (2 * 10)) < 1e-12
    with pytest.raises(ValueError):
        ess(torch.zeros(2, 2))


# ---------------------------------------------------------------------------------------------- fast paths
@pytest.mark.parametrize("cls", [DIS, PIS, DDS])
def test_precomputed_time_features_give_the_same_rollout(cls):
    """The rollout's per-grid time features (ControlNet.time_features / step) reproduce the plain per-step network
    call: same generator -> the same path and log-weights as with the network wrapped in FunctionControl."""
    t = gmm9()
    torch.manual_seed(3)
    s = cls(2, 12, hidden=16).double()
    for p in s.net.parameters():  # leave the zero initialization so that every head matters
        torch.nn.init.normal_(p, std=0.3)
    fast = s.simulate(t, 64, torch.Generator().manual_seed(1), F64)
    net = s.net
    s.net = FunctionControl(lambda x, u: net(x, u, s.target_score(t, x)))
    slow = s.simulate(t, 64, torch.Generator().manual_seed(1), F64)
    assert torch.allclose(fast.xs, slow.xs, atol=1e-10) and torch.allclose(fast.log_w, slow.log_w, atol=1e-9)


def test_diagonal_mixture_fast_path_matches_full_covariance_path():
    t = gmm9()
    x = 4 * torch.randn(50, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    lp, sc = t.log_prob_unnorm(x), t.score(x)
    t._diag = None  # force the batched-matmul path
    assert torch.allclose(lp, t.log_prob_unnorm(x), atol=1e-12) and torch.allclose(sc, t.score(x), atol=1e-12)


def test_train_time_limit_on_cpu_clock():
    t = gaussian(**G2)
    s = PIS(2, 5, hidden=8)
    h = train(s, t, iterations=50, batch=8, time_limit=0.0, clock="cpu", progress=False)
    assert h.iterations == 1 and h.cpu_time > 0
    with pytest.raises(ValueError, match="clock"):
        train(s, t, iterations=1, batch=8, clock="gpu", progress=False)
    with pytest.raises(ValueError, match="time_clock"):
        DensityConfig(time_clock="gpu")
