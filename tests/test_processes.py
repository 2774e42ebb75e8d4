"""Process identities: SDE marginals vs closed forms, log-SNR round trips, priors, DDPM posteriors."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from scorelab.core.processes import (
    EDM,
    VE,
    VP,
    Discrete,
    SubVP,
    VPCosine,
    cosine_betas,
    li_betas,
    linear_betas,
    process_from_config,
    sigmoid_betas,
)

CONTINUOUS = [VP(), SubVP(), VPCosine(), VE(), EDM(), Discrete.from_schedule("linear", 100)]
ALL = CONTINUOUS + [Discrete.from_schedule("cosine", 10), Discrete.from_schedule("sigmoid", 10),
                    Discrete.from_schedule("li", 50)]


def _f(p, t):
    return float(p.drift_coef(torch.tensor(t, dtype=torch.float64)))


def _g2(p, t):
    return float(p.diffusion_sq(torch.tensor(t, dtype=torch.float64)))


@pytest.mark.parametrize("p", CONTINUOUS, ids=lambda p: p.name)
def test_marginal_variance_and_mean_follow_the_sde(p):
    """dm/dt = 2 f m + g^2 for the variance of x_t | x_0 and da/dt = f a for its mean scale (Sarkka & Solin 5.51)."""
    t0 = p.t_min if not isinstance(p, Discrete) else 0.0
    t0 = max(t0, 1e-3 * p.t_max)
    ts = np.linspace(t0, p.t_max, 7)
    m0 = float(p.sigma(torch.tensor(t0, dtype=torch.float64))) ** 2
    a0 = float(p.alpha(torch.tensor(t0, dtype=torch.float64)))

    def rhs(t, y):
        return [2 * _f(p, t) * y[0] + _g2(p, t), _f(p, t) * y[1]]

    max_step = 0.25 / p.N if isinstance(p, Discrete) else np.inf
    sol = solve_ivp(rhs, (t0, p.t_max), [m0, a0], t_eval=ts, rtol=1e-11, atol=1e-12, max_step=max_step)
    tt = torch.tensor(ts, dtype=torch.float64)
    var, alpha = p.sigma(tt) ** 2, p.alpha(tt)
    scale = 1.0 if not isinstance(p, (VE, EDM)) else float(var.max())
    np.testing.assert_allclose(sol.y[0] / scale, var.numpy() / scale, atol=1e-5)
    np.testing.assert_allclose(sol.y[1], alpha.numpy(), atol=1e-5)


@pytest.mark.parametrize("p", ALL, ids=lambda p: f"{p.name}")
def test_log_snr_round_trip_and_monotone(p):
    t = torch.linspace(p.t_min, p.t_max, 101, dtype=torch.float64)
    lam = p.log_snr(t)
    assert torch.all(lam[1:] < lam[:-1]), "log-SNR must decrease in t"
    torch.testing.assert_close(p.t_from_log_snr(lam), t, atol=1e-9 * p.t_max, rtol=1e-7)
    torch.testing.assert_close(lam, torch.log(p.alpha(t) ** 2 / p.sigma(t) ** 2), atol=1e-8, rtol=1e-8)


TOLERANCE = {"vp": 1e-4, "subvp": 1e-4, "vp_cosine": 1e-4, "ve": 1e-3, "edm": 1e-3}


@pytest.mark.parametrize("p", [VP(), SubVP(), VPCosine(), VE(), EDM(), Discrete.from_schedule("linear", 1000)],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("data_var", [0.0, 0.25, 1.0])
def test_prior_matches_marginal_at_t_max(p, data_var):
    tol = TOLERANCE.get(p.name, 1e-4)
    assert p.prior_mismatch(data_var) < tol
    x = p.prior_sample((20000, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(x.var().item() / p.prior_std**2 - 1) < 0.03


def test_small_ddpm_chain_is_far_from_its_prior():
    """The SFT-PG setting: sigmoid betas 1e-5..1e-2 with T=10 leave almost all the signal."""
    assert Discrete.from_schedule("sigmoid", 10).prior_mismatch() > 0.9


def test_prior_log_prob_is_normal_density():
    p = VE()
    x = torch.randn(5, 2, 3, dtype=torch.float64) * 30
    ref = torch.distributions.Normal(0.0, p.prior_std).log_prob(x).sum((1, 2))
    torch.testing.assert_close(p.prior_log_prob(x), ref)


def test_subvp_variance_below_vp():
    t = torch.linspace(1e-3, 1, 200, dtype=torch.float64)
    assert torch.all(SubVP().sigma(t) <= VP().sigma(t))
    torch.testing.assert_close(SubVP().alpha(t), VP().alpha(t))


def test_marginal_sample_has_the_right_moments():
    p = VP()
    x0 = torch.full((40000, 1), 2.0, dtype=torch.float64)
    xt, eps = p.marginal_sample(x0, 0.3, torch.Generator().manual_seed(1))
    a, s = p.alpha(torch.tensor(0.3)).item(), p.sigma(torch.tensor(0.3)).item()
    assert abs(xt.mean().item() - 2 * a) < 4 * s / 200
    assert abs(xt.std().item() / s - 1) < 0.02
    torch.testing.assert_close(xt, a * x0 + s * eps)


def test_per_sample_times_broadcast():
    p = VPCosine()
    x0 = torch.ones(3, 2, 2)
    t = torch.tensor([0.1, 0.5, 0.9])
    xt, eps = p.marginal_sample(x0, t, torch.Generator().manual_seed(0))
    ref = p.alpha(t)[:, None, None] * x0 + p.sigma(t)[:, None, None] * eps
    torch.testing.assert_close(xt, ref)
    with pytest.raises(ValueError, match="scalar or a \\[B\\]"):
        p.marginal_sample(x0, torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("n", [10, 100, 1000])
@pytest.mark.parametrize("sched", ["linear", "cosine", "sigmoid", "li"])
def test_discrete_posterior_matches_bayes_rule_numerically(n, sched):
    """q(x_{i-1} | x_i, x_0) from Ho et al. eqs. 6-7 vs. Bayes' rule on a grid, for a scalar x_0."""
    p = Discrete.from_schedule(sched, n)
    x0, xi = 0.7, -0.4
    c0, ci, var = (v.item() for v in p.posterior_coefs(1))
    assert (c0, ci, var) == (pytest.approx(1.0), 0.0, 0.0)  # alpha_bar_0 = 1: x_0 is known
    for i in sorted({2, n // 2, n}):
        c0, ci, var = (v.item() for v in p.posterior_coefs(i))
        ab_prev, a_i = p.alpha_bar[i - 1].item(), p.alphas[i - 1].item()
        m_prior, v_prior = math.sqrt(ab_prev) * x0, max(1 - ab_prev, 1e-300)
        mean_guess = c0 * x0 + ci * xi
        sd = math.sqrt(max(var, 1e-30))
        grid = np.linspace(mean_guess - 12 * sd, mean_guess + 12 * sd, 20001)
        logw = -0.5 * (xi - math.sqrt(a_i) * grid) ** 2 / p.betas[i - 1].item() - 0.5 * (grid - m_prior) ** 2 / v_prior
        w = np.exp(logw - logw.max())
        m = (w * grid).sum() / w.sum()
        v = (w * (grid - m) ** 2).sum() / w.sum()
        assert abs(m - mean_guess) < 1e-6 + 1e-4 * sd
        assert abs(v / var - 1) < 1e-3


def test_discrete_continuous_view_hits_the_chain():
    p = Discrete.from_schedule("linear", 1000)
    t = p.times()
    torch.testing.assert_close(p.alpha(t) ** 2, p.alpha_bar)
    torch.testing.assert_close(p.index(t[1:]), torch.arange(1, 1001, dtype=torch.float64))
    # f is piecewise constant: int f over step i = log sqrt(alpha_i)
    mid = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    torch.testing.assert_close(p.drift_coef(mid) / 1000, 0.5 * torch.log(p.alphas))


def test_beta_schedules_match_their_definitions():
    torch.testing.assert_close(linear_betas(5), torch.tensor([1e-4, 0.0050750, 0.01005, 0.0150250, 0.02],
                                                              dtype=torch.float64), atol=1e-7, rtol=0)
    s = sigmoid_betas(10, 1e-5, 1e-2)
    ref = torch.sigmoid(torch.linspace(-6, 6, 10, dtype=torch.float64)) * (1e-2 - 1e-5) + 1e-5
    torch.testing.assert_close(s, ref)
    c = cosine_betas(1000)
    abar = torch.cumprod(1 - c, 0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abs(abar[499].item() - f(0.5) / f(0.0)) < 1e-9
    n, c0, c1 = 200, 2.0, 4.0
    b = li_betas(n, c0, c1)
    k = c1 * math.log(n) / n
    assert b[0].item() == pytest.approx(n ** -c0)
    assert b[10].item() == pytest.approx(k * min(n ** -c0 * (1 + k) ** 11, 1.0))
    assert b[-1].item() == pytest.approx(k)  # flat phase
    assert torch.all(b[2:] >= b[1:-1] - 1e-15)  # nondecreasing after beta_1 (the formula has beta_2 < beta_1)


def test_config_round_trip_and_errors():
    for p in ALL:
        q = process_from_config(p.config())
        t = torch.linspace(q.t_min, q.t_max, 5, dtype=torch.float64)
        torch.testing.assert_close(q.sigma(t), p.sigma(t))
    with pytest.raises(ValueError, match="unknown process"):
        process_from_config({"name": "nope"})
    with pytest.raises(ValueError, match="betas"):
        Discrete([0.1, 1.5])
    with pytest.raises(ValueError, match="unknown beta schedule"):
        Discrete.from_schedule("exp", 10)
    with pytest.raises(ValueError, match="sigma_max"):
        VE(sigma_min=1.0, sigma_max=0.5)
