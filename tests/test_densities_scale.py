"""Density samplers at the benchmarks' scale: exact log Z of ManyWell-32 and Funnel-10 by independent quadrature /
Monte Carlo, exact samples against closed-form moments, the SMC reference estimator on Gaussians of known log Z, the
posterior targets (LGCP, logistic regression) against direct formulas and an independent estimator, the stochastic
adjoint against backpropagation on the same Brownian path, and the CLI for user targets (cwd, --log-z, --dim)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _cli import run_cli  # noqa: E402

from scorelab.densities import DIS, PIS, Funnel, ManyWell, evaluate, gaussian, get_target, kl_loss
from scorelab.densities.adjoint import adjoint_kl_loss, brownian
from scorelab.densities.posteriors import LGCP, LogisticRegression, lgcp_counts
from scorelab.densities.smc import laplace_is_log_Z, reference_log_Z, smc_log_Z

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- ManyWell-32, Funnel
def test_manywell32_log_Z_against_fab_constant_and_2d_trapezoid():
    t = ManyWell(32)
    # FAB's published normalizer of the x1 factor (fab-torch many_well.py: log Z_dim0 = log(11784.50927)) and N(0, 1)
    fab = 16 * (math.log(11784.50927) + 0.5 * math.log(2 * math.pi))
    assert abs(t.log_Z - fab) < 1e-6
    # independent: one 2-D factor by a trapezoid rule on a fine grid (not scipy.quad), times 16
    u = torch.linspace(-12, 12, 12001, dtype=F64)
    f1 = torch.trapezoid(torch.exp(-u**4 + 6 * u**2 + 0.5 * u - 9.0), u)
    f2 = torch.trapezoid(torch.exp(-0.5 * u**2), u)
    assert abs(t.log_Z - 16 * (float(torch.log(f1)) + 9.0 + float(torch.log(f2)))) < 1e-7


def test_manywell32_samples_match_quadrature_moments():
    t = ManyWell(32)
    x = t.sample(40_000, torch.Generator().manual_seed(0))
    u = torch.linspace(-6, 6, 6001, dtype=F64)
    p = torch.exp(-u**4 + 6 * u**2 + 0.5 * u - 9.0)
    m2 = float(torch.trapezoid(u**2 * p, u) / torch.trapezoid(p, u))
    pos = float(torch.trapezoid(p * (u > 0), u) / torch.trapezoid(p, u))  # mass of the right well (x1 > 0)
    n = x.shape[0] * 16
    assert abs(float(x[:, 0::2].pow(2).mean()) - m2) < 5 * math.sqrt(float(x[:, 0::2].pow(2).var()) / n)
    assert abs(float((x[:, 0::2] > 0).double().mean()) - pos) < 5 * math.sqrt(pos * (1 - pos) / n)
    assert abs(float(x[:, 1::2].pow(2).mean()) - 1.0) < 5 * math.sqrt(2.0 / n)
    assert abs(t.moments()["sq"] - 16 * (m2 + 1.0)) < 1e-6


def test_mode_weights_of_manywell_against_an_independent_barrier_and_quadrature():
    """ManyWell's barrier is the root of d/du (-u^4 + 6u^2 + u/2) between the wells (bisection here), its left mass a
    trapezoid integral; exact samples match it, a sampler collapsed onto the heavier well scores 0 and an error equal to
    that mass; the symmetric double well has 1/2, the funnel (no known modes) None; ``evaluate`` reports them."""
    t = ManyWell(32)
    lo, hi = -1.0, 1.0  # f'(u) = -4u^3 + 12u + 1/2: f'(-1) < 0 < f'(1), one root in between (the barrier)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if -4 * mid**3 + 12 * mid + 0.5 < 0 else (lo, mid)
    u = torch.linspace(-6, 6, 120001, dtype=F64)
    p = torch.exp(-u**4 + 6 * u**2 + 0.5 * u - 9.0)
    left = float(torch.trapezoid(p * (u < lo), u) / torch.trapezoid(p, u))
    assert abs(left - 0.1557) < 1e-3
    x = t.sample(40_000, torch.Generator().manual_seed(3))
    m = t.mode_weights(x)
    assert abs(m["mode_left_exact"] - left) < 2e-4
    assert abs(m["mode_left_frac"] - left) < 5 * math.sqrt(left * (1 - left) / (16 * 40_000))
    assert m["mode_weight_err"] < 0.01
    x[:, 0::2] = x[:, 0::2].abs() + 0.1  # every factor in its heavier (right) well
    m = t.mode_weights(x)
    assert m["mode_left_frac"] == 0.0 and abs(m["mode_weight_err"] - left) < 2e-4
    assert abs(get_target("dw554").mode_weights(get_target("dw554").sample(4000))["mode_left_exact"] - 0.5) < 1e-6
    assert Funnel(10).mode_weights(torch.zeros(3, 10)) is None
    metrics, _ = evaluate(PIS(32, 5), t, 64, torch.Generator().manual_seed(0), w2_n=64)
    assert {"mode_left_frac", "mode_left_exact", "mode_weight_err"} <= set(metrics)


def test_funnel10_log_Z_by_independent_importance_sampling_and_sample_moments():
    t = Funnel(10)
    g = torch.Generator().manual_seed(0)
    n = 200_000  # proposal: x0 ~ N(0, 3.3^2), x_i | x0 ~ N(0, 1.3^2 e^{x0}) (wider than the funnel's conditionals)
    x0 = 3.3 * torch.randn(n, 1, generator=g, dtype=F64)
    xr = 1.3 * torch.exp(0.5 * x0) * torch.randn(n, 9, generator=g, dtype=F64)
    log_q = (torch.distributions.Normal(0.0, 3.3).log_prob(x0[:, 0])
             + torch.distributions.Normal(0.0, 1.3 * torch.exp(0.5 * x0)).log_prob(xr).sum(1))
    lw = t.log_prob_unnorm(torch.cat([x0, xr], 1)) - log_q
    w = torch.exp(lw - lw.max())
    se = float(w.std() / (w.mean() * math.sqrt(n)))
    assert abs(float(torch.logsumexp(lw, 0) - math.log(n)) - t.log_Z) < 5 * se + 1e-3
    y = t.sample(100_000, torch.Generator().manual_seed(1))
    assert abs(float(y[:, 0].pow(2).mean()) - 9.0) < 5 * 9.0 * math.sqrt(2 / 1e5)
    # E[x_i^2 e^{-x_0}] = 1 exactly (light-tailed, unlike E x_i^2 = e^{4.5})
    assert abs(float((y[:, 1:].pow(2) * torch.exp(-y[:, :1])).mean()) - 1.0) < 5 * math.sqrt(2 / 9e5)


# ---------------------------------------------------------------------------------------------- SMC reference
def test_smc_recovers_the_log_Z_of_a_correlated_gaussian():
    d = 8
    A = torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=F64) / math.sqrt(d)
    cov = A @ A.T + 0.3 * torch.eye(d, dtype=F64)
    t = gaussian(torch.linspace(-2, 2, d), cov, log_Z=-3.7)
    r = reference_log_Z(t, repeats=3, n=512, mcmc_steps=5, base=(torch.zeros(d), 2.0 * torch.eye(d)))
    assert abs(r["log_Z"] + 3.7) < 0.1 and r["stderr"] < 0.1
    # a wrong base normalization would show: the same run with the log |det C| term is what makes it right
    lap = laplace_is_log_Z(t, n=40_000, generator=torch.Generator().manual_seed(0))
    assert abs(lap["laplace"] + 3.7) < 1e-6 and abs(lap["log_Z"] + 3.7) < 5 * lap["stderr"] + 1e-3


def test_smc_rejects_bad_settings():
    with pytest.raises(ValueError, match="reference_base"):
        smc_log_Z(gaussian([0.0, 0.0]))
    with pytest.raises(ValueError, match="repeats >= 2"):
        reference_log_Z(gaussian([0.0, 0.0]), repeats=1, base=(torch.zeros(2), torch.eye(2)))


# ---------------------------------------------------------------------------------------------- posteriors
def test_lgcp_density_against_direct_formulas_and_deterministic_counts():
    y = lgcp_counts(seed=0)
    assert y.shape == (1600,) and np.array_equal(y, lgcp_counts(seed=0)) and y.sum() == 113
    t = LGCP()
    x = t.mu0 + torch.randn(3, 1600, generator=torch.Generator().manual_seed(0), dtype=F64)
    K = t.chol @ t.chol.T
    prior = torch.distributions.MultivariateNormal(torch.full((1600,), t.mu0, dtype=F64), scale_tril=t.chol)
    direct = prior.log_prob(x) + (x * t.counts - torch.exp(x) / 1600).sum(1)
    assert torch.allclose(t.log_prob_unnorm(x), direct, rtol=1e-10, atol=1e-6)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(t.log_prob_unnorm(xr).sum(), xr)
    assert torch.allclose(t.score(x), g, atol=1e-8)
    assert abs(float(K[0, 1]) - 1.91 * math.exp(-33 / 40)) < 1e-12  # neighbours: distance 1 cell = 1/40


def test_logistic_regression_reference_agrees_with_an_independent_estimator():
    t = LogisticRegression()
    assert t.dim == 31 and t.log_Z is not None and t.log_Z_stderr is not None
    x = torch.randn(4, 31, generator=torch.Generator().manual_seed(0), dtype=F64)
    z = x @ t.X.T
    direct = (torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
              + torch.distributions.Bernoulli(logits=z).log_prob(t.y.expand_as(z)).sum(1))
    assert torch.allclose(t.log_prob_unnorm(x), direct, atol=1e-9)
    lap = laplace_is_log_Z(t, n=60_000, generator=torch.Generator().manual_seed(1))
    assert abs(lap["log_Z"] - t.log_Z) < 4 * math.hypot(lap["stderr"], t.log_Z_stderr) + 0.03


def test_new_targets_by_name_and_dim_check():
    assert get_target("lgcp").dim == 1600 and get_target("logreg_bc").dim == 31
    with pytest.raises(ValueError, match="dimension 31"):
        get_target("logreg_bc", 30)


# ---------------------------------------------------------------------------------------------- stochastic adjoint
@pytest.mark.parametrize("cls", [PIS, DIS])
def test_adjoint_gradient_equals_backprop_gradient_on_the_same_brownian_path(cls):
    t = gaussian([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]], log_Z=1.3)
    torch.manual_seed(0)
    s = cls(2, steps=40, hidden=16).double()
    with torch.no_grad():  # move off the zero-initialized heads so that every parameter gets a gradient
        for p in s.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    grads = []
    for adjoint in (False, True):
        bm = brownian(s, 32, torch.Generator().manual_seed(1), F64)
        s.zero_grad()
        loss, _ = adjoint_kl_loss(s, t, 32, torch.Generator().manual_seed(2), F64, adjoint=adjoint, bm=bm)
        loss.mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in s.net.parameters()]))
    assert grads[0].norm() > 1e-3
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-6


def test_adjoint_objective_matches_the_euler_kl_objective():
    """PIS: both estimate KL(P^u | Q/Z) - log Z: equal means up to Monte-Carlo and O(h) discretization error.
    (DIS is not: the reversible Heun scheme's parasitic mode is excited by its stiff VP drift, adjoint.py.)"""
    t = gaussian([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]], log_Z=1.3)
    torch.manual_seed(0)
    s = PIS(2, steps=100, hidden=16).double()
    with torch.no_grad():
        a, _ = adjoint_kl_loss(s, t, 6000, torch.Generator().manual_seed(3), F64, adjoint=False)
        b, _ = kl_loss(s, t, 6000, torch.Generator().manual_seed(4), F64)
    se = math.hypot(float(a.std()), float(b.std())) / math.sqrt(6000)
    assert abs(float(a.mean()) - float(b.mean())) < 4 * se + 0.02
    assert float(a.mean()) > -1.3 - 4 * se  # KL >= 0: the objective is bounded below by -log Z


def test_adjoint_loss_trains_from_the_runner(tmp_path):
    from scorelab.densities import DensityConfig, run
    r = run(DensityConfig(target="gauss", method="pis", loss="kl_adjoint", steps=10, iterations=3, batch=32,
                          progress=False, eval_samples=256))
    assert r["iterations_done"] == 3 and math.isfinite(r["metrics"]["log_Z_hat"])
    for method in ("dds", "dis"):
        with pytest.raises(ValueError, match="kl_adjoint"):
            DensityConfig(method=method, loss="kl_adjoint")


# ---------------------------------------------------------------------------------------------- CLI
def _cli(capsys, *args):
    return run_cli(capsys, list(args))


def test_cli_user_target_in_cwd_with_log_z_and_dim_checks(capsys, tmp_path, monkeypatch):
    (tmp_path / "my_banana.py").write_text(
        "import torch\n"
        "def log_rho(x):\n"
        "    return -0.5 * (x[:, 0] ** 2 / 4 + (x[:, 1] - 0.25 * x[:, 0] ** 2) ** 2)\n"
        "def log_rho3(x):\n"
        "    return -0.5 * x.pow(2).sum(1)\n"
        "log_rho3.dim = 3\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, "density", "--target", "my_banana:log_rho", "--dim", "2", "--method", "pis",
                          "--steps", "10", "--iterations", "5", "--batch", "64", "--log-z", str(math.log(4 * math.pi)),
                          "--out", str(tmp_path / "run"))
    assert code == 0, err
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    m = rep["metrics"]
    assert m["log_Z"] == pytest.approx(math.log(4 * math.pi)) and m["dlogZ_is"] == pytest.approx(
        abs(m["log_Z_hat"] - m["log_Z"]))
    assert "dlogZ_elbo" in m and rep["log_Z_source"].startswith("given by the user")
    code, _, err = _cli(capsys, "density", "--target", "my_banana:log_rho3", "--dim", "4")
    assert code == 2 and "does not match the dimension 3" in err and "Traceback" not in err
    code, _, err = _cli(capsys, "density", "--target", "my_banana:log_rho", "--dim", "1")
    assert code == 2 and "--dim 1" in err
    code, _, err = _cli(capsys, "density", "--target", "no_such_module_here:f", "--dim", "2")
    assert code == 2 and "current directory" in err
    code, _, err = _cli(capsys, "density", "--target", "gauss", "--log-z", "nan")
    assert code == 2 and "--log-z" in err and "nan" in err
