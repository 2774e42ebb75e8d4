"""Likelihoods and bounds on exact Gaussian-mixture models (Song et al. 2021; Song, Durkan, Murray & Ermon 2021;
Ho et al. 2020)."""
import math

import pytest
import torch
from scipy import integrate

from scorelab import VE, VP, Discrete, GaussianMixture, SubVP
from scorelab.core.analytic import random_mixture
from scorelab.core.processes import linear_betas
from scorelab.evaluation.likelihood import (
    bits_per_dim,
    continuous_elbo,
    dequantize,
    discrete_elbo,
    discretized_gaussian_log_likelihood,
    gaussian_prior_kl,
    image_bpd,
    ode_log_likelihood,
    reverse_variances,
)

MIX = random_mixture(3, 2, generator=torch.Generator().manual_seed(0))
TOL = dict(rtol=1e-7, atol=1e-7)


def exact_prior(mix, proc):
    return lambda z: mix.log_prob_t(z, proc.t_max, proc)


@pytest.mark.parametrize("proc", [VP(), SubVP(), VE()], ids=["vp", "subvp", "ve"])
def test_ode_likelihood_matches_exact_log_density(proc):
    """With the exact p_T as prior the flow is exact: log p_{t_eps}(x) to 1e-3 nats (we get ~1e-6)."""
    x = MIX.sample(6, generator=torch.Generator().manual_seed(1))
    r = ode_log_likelihood(MIX.as_model(proc), x, prior_log_prob=exact_prior(MIX, proc), **TOL)
    exact = MIX.log_prob_t(x, r.t_eps, proc)
    assert (r.log_likelihood - exact).abs().max() < 1e-3
    assert torch.allclose(r.log_likelihood, r.prior_logp + r.delta_logp)
    assert r.nfe > 10 and r.x_T.shape == x.shape and torch.all(r.std_err == 0)
    # t_eps -> 0: the exact log p_0 (VP: sigma^2(t_eps) ~ 1e-4, covariances >= 0.05, so the gap is < 1e-2 nats)
    assert (r.log_likelihood - MIX.log_prob(x)).abs().max() < 1e-2


def test_default_prior_only_changes_the_prior_term():
    proc = VP()
    x = MIX.sample(4, generator=torch.Generator().manual_seed(2))
    r = ode_log_likelihood(MIX.as_model(proc), x, **TOL)
    assert torch.allclose(r.prior_logp, proc.prior_log_prob(r.x_T))
    exact = MIX.log_prob_t(x, r.t_eps, proc) - MIX.log_prob_t(r.x_T, proc.t_max, proc)
    assert (r.delta_logp - exact).abs().max() < 1e-3


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(probe):
    mix = random_mixture(2, 3, generator=torch.Generator().manual_seed(4))
    proc = VP()
    x = mix.sample(8, generator=torch.Generator().manual_seed(5))
    kw = dict(prior_log_prob=exact_prior(mix, proc), **TOL)
    exact = ode_log_likelihood(mix.as_model(proc), x, **kw)
    hut = ode_log_likelihood(mix.as_model(proc), x, divergence="hutchinson", probe=probe, n_probes=48,
                             generator=torch.Generator().manual_seed(6), **kw)
    z = (hut.log_likelihood - exact.log_likelihood) / hut.std_err
    assert torch.all(hut.std_err > 0) and z.abs().max() < 4.0
    assert abs(float(z.mean()) * math.sqrt(len(z))) < 4.0  # the pooled z-score
    assert torch.allclose(hut.x_T, exact.x_T, atol=1e-5)  # the probes do not change the trajectory


def test_bits_per_dim_known_answers():
    D = 5
    # uniform density on [-1, 1]^D is 8 bits per 8-bit pixel
    assert torch.allclose(bits_per_dim(torch.tensor([-D * math.log(2.0)]), D), torch.tensor([8.0]))
    # a density already on the discrete data: plain conversion
    assert torch.allclose(bits_per_dim(torch.tensor([-D * math.log(256.0)]), D, scale=1.0), torch.tensor([8.0]))
    with pytest.raises(ValueError):
        dequantize(torch.tensor([256]))


def test_bits_per_dim_of_a_gaussian_matches_its_discretized_probability():
    """bpd of dequantized data (averaged over many dequantizations) = -log2 P(u)/D of the exact bin probability,
    for a Gaussian model much wider than a bin (Jensen gap ~ 1e-5)."""
    gen = torch.Generator().manual_seed(7)
    s, D = 0.5, 4
    u = torch.randint(60, 200, (3, D), generator=gen)
    x = dequantize(u.repeat(2000, 1), generator=gen, dtype=torch.float64)
    logp = torch.distributions.Normal(0.0, s).log_prob(x).sum(1)
    bpd = bits_per_dim(logp, D).reshape(2000, 3).mean(0)
    edges = lambda k: torch.special.ndtr(((2 / 256) * k.double() - 1) / s)  # noqa: E731
    exact = -torch.log2(edges(u + 1) - edges(u)).sum(1) / D
    assert (bpd - exact).abs().max() < 2e-3
    assert torch.all(bpd > exact - 2e-3)


def test_image_bpd_through_the_ode():
    mix = GaussianMixture([1.0], [[0.0, 0.0, 0.0, 0.0]], 0.25, event_shape=(1, 2, 2))
    proc = VP()
    u = torch.randint(60, 200, (3, 1, 2, 2), generator=torch.Generator().manual_seed(8))
    bpd, res = image_bpd(mix.as_model(proc), u, generator=torch.Generator().manual_seed(9), dtype=torch.float64,
                         t_eps=1e-5, **TOL)
    xd = dequantize(u, generator=torch.Generator().manual_seed(9), dtype=torch.float64)  # the same dequantization
    direct = bits_per_dim(mix.log_prob_t(xd, 1e-5, proc), 4)
    assert (bpd - direct).abs().max() < 1e-3


def _gaussian_elbo_quadrature(proc, m, v, x, t_eps):
    """Continuous ELBO of x for data N(m, v I) and the exact model, by quadrature of the closed-form integrand
    E||eps - eps_hat||^2 = d (alpha^2 v / c)^2 + sigma^2 alpha^2 ||x - m||^2 / c^2, c = alpha^2 v + sigma^2."""
    d, r2 = x.numel(), float((x - m).pow(2).sum())

    def integrand(t):
        tt = torch.tensor(t, dtype=torch.float64)
        a2, s2, g2 = proc.alpha(tt) ** 2, proc.sigma(tt) ** 2, proc.diffusion_sq(tt)
        c = a2 * v + s2
        return float(g2 / (2 * s2) * (d * (a2 * v / c) ** 2 + s2 * a2 * r2 / c**2))

    diff = integrate.quad(integrand, t_eps, proc.t_max, limit=200, epsabs=1e-10)[0]
    te = torch.tensor(t_eps, dtype=torch.float64)
    recon = 0.5 * d * (math.log(2 * math.pi * math.e) + float(torch.log(proc.sigma(te) ** 2 / proc.alpha(te) ** 2)))
    return -float(gaussian_prior_kl(proc, x[None])[0]) - diff - recon


@pytest.mark.parametrize("importance", [True, False])
def test_continuous_elbo_estimator_matches_quadrature(importance):
    proc, v = VP(), 0.3
    mix = GaussianMixture([1.0], [[0.5, -0.5]], v)
    x = mix.sample(4, generator=torch.Generator().manual_seed(10))
    r = continuous_elbo(mix.as_model(proc), x, n_samples=4000, importance=importance,
                        generator=torch.Generator().manual_seed(11))
    for i in range(4):
        ref = _gaussian_elbo_quadrature(proc, mix.means[0], v, x[i], proc.t_min)
        assert abs(float(r.elbo[i]) - ref) < 4 * float(r.std_err[i]), (i, float(r.elbo[i]), ref)
    assert torch.allclose(r.elbo, -r.prior_kl - r.diffusion - r.reconstruction)


def test_continuous_elbo_is_a_tight_lower_bound_for_the_exact_model():
    proc = VP()
    mix = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.2, 0.1])
    x = mix.sample(4096, generator=torch.Generator().manual_seed(12))
    r = continuous_elbo(mix.as_model(proc), x, n_samples=8, generator=torch.Generator().manual_seed(13))
    gap = r.elbo - mix.log_prob(x)
    mean, se = float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))
    assert mean < 3 * se  # E_q[ELBO] <= E_q[log p_model] <= E_q[log q] (Gibbs)
    assert mean > -0.3  # and the exact model's bound is nearly tight
    uni = continuous_elbo(mix.as_model(proc), x[:512], n_samples=8, importance=False,
                          generator=torch.Generator().manual_seed(13))
    assert float(r.std_err[:512].mean()) < 0.8 * float(uni.std_err.mean())  # importance sampling cuts variance


DPROC = Discrete(linear_betas(100, 1e-3, 0.2))
DMIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.05, 0.02])


def test_discrete_elbo_is_a_lower_bound_for_the_exact_model():
    x = DMIX.sample(2000, generator=torch.Generator().manual_seed(14))
    lq = DMIX.log_prob(x)
    for var in ("beta", "beta_tilde"):
        r = discrete_elbo(DMIX.as_model(DPROC), x, variances=var, generator=torch.Generator().manual_seed(15))
        gap = r.elbo - lq
        assert float(gap.mean()) < 3 * float(gap.std() / math.sqrt(len(gap)))
        assert torch.allclose(r.elbo, -r.prior_kl - r.terms.sum(1) - r.decoder_nll)
        assert r.terms.shape == (2000, 99) and torch.all(r.terms > -1e-9)


def test_discrete_elbo_pieces_and_standard_error():
    x = DMIX.sample(64, generator=torch.Generator().manual_seed(16))
    r = discrete_elbo(DMIX.as_model(DPROC), x, steps=[10, 40, 100], n_mc=4, generator=torch.Generator().manual_seed(1))
    assert r.terms.shape == (64, 2) and r.nfe == 12 and torch.all(r.std_err > 0)
    assert torch.allclose(r.prior_kl, gaussian_prior_kl(DPROC, x))
    v = reverse_variances(DPROC, [10, 40, 100], "beta")
    ab = DPROC.alpha_bar
    assert torch.allclose(v, torch.stack([1 - ab[10], 1 - ab[40] / ab[10], 1 - ab[100] / ab[40]]))
    with pytest.raises(ValueError):
        discrete_elbo(DMIX.as_model(DPROC), x, steps=[5, 3])
    with pytest.raises(ValueError):
        discrete_elbo(DMIX.as_model(VP()), x)


def test_discretized_decoder_is_normalized():
    """Summed over the 256 bins of each pixel the discretized Gaussian has probability 1 (Ho et al. 2020, eq. 13)."""
    grid = (2 * torch.arange(256, dtype=torch.float64) / 255 - 1)[:, None]
    for mean, std in ((0.1, 0.05), (-0.97, 0.3), (0.999, 0.004)):
        lp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.tensor(std))
        assert abs(float(torch.logsumexp(lp, 0))) < 1e-9
