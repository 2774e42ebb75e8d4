"""Analytic-DPM (Bao et al. 2022): Gamma estimates, optimal variances, their ELBO gain, optimal subsequences."""
import itertools
import math

import pytest
import torch

from scorelab import Discrete, GaussianMixture
from scorelab.core.processes import linear_betas
from scorelab.evaluation.likelihood import discrete_elbo, gaussian_prior_kl, reverse_variances
from scorelab.samplers.analytic_dpm import (
    analytic_variances,
    cost_matrix,
    estimate_gamma,
    even_subsequence,
    gamma_gaussian,
    grid_variances,
    optimal_subsequence,
    optimal_variance,
    sample_analytic_dpm,
    subsequence_cost,
)
from scorelab.samplers.base import SAMPLERS

PROC = Discrete(linear_betas(100, 1e-3, 0.2))
GAUSS = GaussianMixture([1.0], [[0.3, -0.2]], 0.05)
MIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.05, 0.02])


@pytest.mark.parametrize("kind", ["norm", "residual"])
def test_gamma_estimate_matches_the_gaussian_closed_form(kind):
    ts = PROC.times()[[1, 5, 20, 50, 100]]
    est = estimate_gamma(GAUSS.as_model(PROC), GAUSS.sample(4000, generator=torch.Generator().manual_seed(0)), ts,
                         kind=kind, n_mc=2, batch_size=1000, generator=torch.Generator().manual_seed(1))
    exact = gamma_gaussian(PROC, ts, 0.05)
    assert torch.all((est.gamma - exact).abs() < 4 * est.std_err + 1e-12)
    assert torch.all(est.std_err < 0.02)


def test_optimal_variance_reduces_to_ddpm_formula_and_respects_bounds():
    """Bao et al. Thm. 1 in DDPM notation: sigma*^2 = beta_tilde_n + beta_n^2/(alpha_n bbar_n) (1 - Gamma_n)."""
    n = torch.arange(2, 101)
    s, t = (n - 1).double() / 100, n.double() / 100
    ab, b = PROC.alpha_bar, PROC.betas
    gam = torch.rand(99, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rv = optimal_variance(PROC, s, t, gam)
    bt = (1 - ab[n - 1]) / (1 - ab[n]) * b[n - 1]
    ref = bt + b[n - 1] ** 2 / ((1 - b[n - 1]) * (1 - ab[n])) * (1 - gam)
    assert torch.allclose(rv.sigma_sq, ref, rtol=1e-6) and torch.allclose(rv.lambda_sq, bt, rtol=1e-6)
    assert torch.allclose(rv.upper, b[n - 1] / (1 - b[n - 1]), rtol=1e-6)  # the Gamma = 0 end: beta/(1 - beta)
    assert torch.allclose(rv.beta, b[n - 1], rtol=1e-6)
    clipped = optimal_variance(PROC, s, t, gam * 0 + 1.5).sigma_sq  # Gamma > 1 -> lower
    assert torch.allclose(clipped, rv.lower)
    tight = optimal_variance(PROC, s, t, gam * 0, data_range=(-1.0, 1.0))
    assert torch.all(tight.sigma_sq <= rv.upper + 1e-15)
    with pytest.raises(ValueError):
        optimal_variance(PROC, 0.5, 0.4, 0.5)


def _gamma_all(mix, seed=3):
    return estimate_gamma(mix.as_model(PROC), mix.sample(4000, generator=torch.Generator().manual_seed(seed)),
                          PROC.times()[1:], kind="residual", generator=torch.Generator().manual_seed(seed + 1)).gamma


def test_analytic_variances_give_a_larger_discrete_elbo():
    """Exact model, same Monte-Carlo noise: Analytic-DPM's ELBO >= the ones with beta or beta_tilde variances."""
    x = MIX.sample(1000, generator=torch.Generator().manual_seed(5))
    gam = _gamma_all(MIX)
    for steps in (None, even_subsequence(100, 10)):
        g = gam if steps is None else gam[steps - 1]
        elbo = {name: discrete_elbo(MIX.as_model(PROC), x, variances=v, steps=steps,
                                    generator=torch.Generator().manual_seed(6)).elbo.mean()
                for name, v in (("analytic", analytic_variances(PROC, g, steps)), ("beta", "beta"),
                                ("beta_tilde", "beta_tilde"))}
        assert elbo["analytic"] > elbo["beta"] and elbo["analytic"] > elbo["beta_tilde"], elbo


def test_discrete_elbo_with_optimal_variances_equals_minus_the_kl_cost():
    """For Gaussian data (exact Gamma, exact model): E[ELBO] = -E[KL(q(x_N|x0) || p_N)] - sum_k J(tau_{k-1}, tau_k)."""
    gam = gamma_gaussian(PROC, PROC.times()[1:], 0.05)
    J = cost_matrix(PROC, gam, d=2)
    x = GAUSS.sample(4000, generator=torch.Generator().manual_seed(7))
    for steps in (torch.arange(1, 101), torch.tensor([3, 10, 30, 100])):
        r = discrete_elbo(GAUSS.as_model(PROC), x, variances=analytic_variances(PROC, gam[steps - 1], steps),
                          steps=steps, generator=torch.Generator().manual_seed(8))
        pred = -float(gaussian_prior_kl(PROC, x).mean()) - subsequence_cost(J, steps)
        se = float(r.elbo.std()) / math.sqrt(len(x))
        assert abs(float(r.elbo.mean()) - pred) < 4 * se + 1e-3, (float(r.elbo.mean()), pred, se)


def test_dp_subsequence_is_optimal():
    gam = _gamma_all(MIX)
    J = cost_matrix(PROC, gam, d=2)
    for K in (2, 5, 10, 25):
        steps, cost = optimal_subsequence(J, K)
        assert steps.numel() == K and steps[-1] == 100 and torch.all(steps[1:] > steps[:-1]) and steps[0] >= 1
        assert math.isclose(cost, subsequence_cost(J, steps), rel_tol=1e-9, abs_tol=1e-9)
        assert cost <= subsequence_cost(J, even_subsequence(100, K)) + 1e-9
    # brute force on a short chain
    small = Discrete(linear_betas(12, 1e-2, 0.3))
    Js = cost_matrix(small, gamma_gaussian(small, small.times()[1:], 0.05), d=2)
    for K in (1, 2, 3, 4):
        best = min(subsequence_cost(Js, list(c) + [12]) for c in itertools.combinations(range(1, 12), K - 1))
        assert math.isclose(optimal_subsequence(Js, K)[1], best, rel_tol=1e-12)


def test_dp_subsequence_gives_a_larger_elbo_than_the_even_one():
    gam = _gamma_all(MIX)
    J = cost_matrix(PROC, gam, d=2)
    x = MIX.sample(1000, generator=torch.Generator().manual_seed(9))
    vals = []
    for steps in (optimal_subsequence(J, 5)[0], even_subsequence(100, 5)):
        r = discrete_elbo(MIX.as_model(PROC), x, variances=analytic_variances(PROC, gam[steps - 1], steps),
                          steps=steps, generator=torch.Generator().manual_seed(10))
        vals.append((float(r.elbo.mean()), float(r.elbo.std()) / math.sqrt(len(x))))
    assert vals[0][0] - vals[1][0] > 3 * math.hypot(vals[0][1], vals[1][1]), vals


def test_sampler_variances_and_registration():
    assert "analytic_dpm" in SAMPLERS and SAMPLERS["analytic_dpm"].stochastic
    steps = torch.tensor([5, 20, 50, 100])
    ts = torch.cat([steps.flip(0).double() / 100, torch.zeros(1, dtype=torch.float64)])
    # grid variances agree with the discrete ELBO's per-step choices
    assert torch.allclose(grid_variances(PROC, ts, "beta").flip(0), reverse_variances(PROC, steps, "beta"))
    bt = reverse_variances(PROC, steps, "beta_tilde")
    assert torch.allclose(grid_variances(PROC, ts, "lambda").flip(0)[1:], bt[1:])
    gam = gamma_gaussian(PROC, ts[:-1], 0.05)
    assert torch.allclose(grid_variances(PROC, ts, "analytic", gamma=gam).flip(0),
                          analytic_variances(PROC, gam.flip(0), steps))
    with pytest.raises(ValueError):
        grid_variances(PROC, ts, "analytic")


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_analytic_dpm_sampler_recovers_a_gaussian(eta):
    """For Gaussian data the optimal variance is the exact reverse variance, so 10-step sampling with exact Gamma
    (and the decoder noise kept) reproduces N(m, 0.05 I)."""
    steps = even_subsequence(100, 10)
    ts = torch.cat([steps.flip(0).double() / 100, torch.zeros(1, dtype=torch.float64)])
    gam = gamma_gaussian(PROC, ts[:-1], 0.05)
    xT = PROC.prior_sample((20000, 2), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    traj = sample_analytic_dpm(GAUSS.as_model(PROC), xT, ts, gamma=gam, eta=eta, final_noise=True,
                               generator=torch.Generator().manual_seed(12), return_trajectory=True)
    x = traj.x0
    assert traj.nfe == 10 and len(traj.xs) == 11 and torch.isfinite(traj.log_probs).all()
    assert torch.allclose(x.mean(0), GAUSS.means[0], atol=0.01)
    assert torch.allclose(x.var(0), torch.full((2,), 0.05, dtype=torch.float64), rtol=0.06)


def test_sampler_clip_x0_and_last_noise_cap():
    """clip_x0 clamps x0_hat into data_range (the s = 0 step then returns it: a data-range sample); max_last_std caps
    only the std of the step that lands on the smallest t > 0 (Analytic-DPM code's clip_sigma_idx = 1)."""
    far = GaussianMixture([1.0], [[3.0, -3.0]], 0.05)  # x0_hat lies far outside [-1, 1]
    steps = even_subsequence(100, 10)
    ts = torch.cat([steps.flip(0).double() / 100, torch.zeros(1, dtype=torch.float64)])
    xT = PROC.prior_sample((500, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seen = []

    def run(**kw):
        seen.clear()
        return sample_analytic_dpm(far.as_model(PROC), xT, ts, variances="beta", callback=seen.append,
                                   generator=torch.Generator().manual_seed(2), **kw)

    free = run()
    free_std = [c["std"] for c in seen]
    assert free.abs().max() > 2.0  # without clipping the samples sit near (3, -3)
    out = run(clip_x0=True, data_range=(-1.0, 1.0), max_last_std=0.05)
    assert out.abs().max() <= 1.0 and all(c["x0_hat"].abs().max() <= 1.0 for c in seen)
    capped = [c["std"] for c in seen]
    assert free_std[-2] > 0.05 and capped[-2] == pytest.approx(0.05)  # the step landing on t = 1/100
    assert capped[:-2] == free_std[:-2] and capped[-1] == free_std[-1]
    with pytest.raises(ValueError, match="data_range"):
        run(clip_x0=True)
    with pytest.raises(ValueError, match="max_last_std"):
        run(max_last_std=-1.0)
