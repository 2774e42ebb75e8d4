"""Model currency conversions and the exact Gaussian-mixture oracle."""
import math

import pytest
import torch
from torch import nn

from scorelab.core.analytic import GaussianMixture, MixtureModel, random_mixture, ring_mixture
from scorelab.core.denoisers import (
    ClippedModel,
    CountingModel,
    DiffusionModel,
    FunctionModel,
    NetworkModel,
    edm_coefs,
    eps_from_v,
    v_from_eps_x0,
    x0_from_v,
)
from scorelab.core.processes import EDM, VE, VP, Discrete, SubVP, VPCosine

PROCS = [VP(), SubVP(), VPCosine(), VE(), EDM(), Discrete.from_schedule("linear", 100)]


def _times(p, b=6):
    return torch.linspace(p.t_min, p.t_max, b, dtype=torch.float64) * 0.999 + 0.001 * p.t_min


def _mixture(d=2):
    return random_mixture(3, d, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("p", PROCS, ids=lambda p: p.name)
def test_score_is_autograd_of_log_prob(p):
    gm = _mixture(3)
    t = _times(p)
    x = (p.alpha(t)[:, None] * gm.sample(6, torch.Generator().manual_seed(0))
         + p.sigma(t)[:, None] * torch.randn(6, 3, dtype=torch.float64))
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(gm.log_prob_t(x, t, p).sum(), x)
    torch.testing.assert_close(gm.score_t(x.detach(), t, p), g, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("p", [VP(), EDM()], ids=lambda p: p.name)
def test_denoiser_equals_monte_carlo_posterior_mean(p):
    """E[x0 | x_t = x] by self-normalised importance sampling from the prior p_0."""
    gm = _mixture(2)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor(0.3 if isinstance(p, VP) else 0.8, dtype=torch.float64)
    a, s = p.alpha(t), p.sigma(t)
    x = (a * gm.sample(4, g) + s * torch.randn(4, 2, generator=g, dtype=torch.float64))
    x0s = gm.sample(400000, g)
    logw = -0.5 * ((x[:, None, :] - a * x0s[None]) ** 2).sum(-1) / s**2
    w = torch.softmax(logw, dim=1)
    mc = w @ x0s
    ess = 1 / (w**2).sum(1)
    assert ess.min() > 200
    err = (mc - gm.x0_t(x, t, p)).abs().max()
    assert err < 0.05, err


@pytest.mark.parametrize("p", PROCS, ids=lambda p: p.name)
def test_oracle_identities(p):
    gm = _mixture(2)
    m = gm.as_model(p)
    t = _times(p)
    x = torch.randn(6, 2, dtype=torch.float64) * (p.alpha(t) + p.sigma(t))[:, None]
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    torch.testing.assert_close(m.eps(x, t), -s * m.score(x, t))
    torch.testing.assert_close(a * m.x0(x, t) + s * m.eps(x, t), x, rtol=1e-9, atol=1e-9)  # Tweedie
    torch.testing.assert_close(m.x0(x, t), (x + s**2 * m.score(x, t)) / a, rtol=1e-7, atol=1e-7)


def test_log_prob_normalised_and_t0_limit():
    gm = GaussianMixture([0.2, 0.8], [[-1.0], [2.0]], [0.3, 0.5])
    u = torch.linspace(-12, 14, 40001, dtype=torch.float64)[:, None]
    dens = torch.exp(gm.log_prob(u))
    assert abs(torch.trapezoid(dens, u[:, 0]).item() - 1) < 1e-8
    p = VP()
    torch.testing.assert_close(gm.log_prob_t(u[::100], 1e-7, p), gm.log_prob(u[::100]), rtol=1e-5, atol=1e-5)
    dens_t = torch.exp(gm.log_prob_t(u, 0.5, p))
    assert abs(torch.trapezoid(dens_t, u[:, 0]).item() - 1) < 1e-8


def test_sampling_moments_and_labels():
    gm = random_mixture(4, 3, generator=torch.Generator().manual_seed(0))
    x, k = gm.sample(200000, torch.Generator().manual_seed(1), return_labels=True)
    torch.testing.assert_close(x.mean(0), gm.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gm.covariance(), atol=0.06, rtol=0.02)
    freq = torch.bincount(k, minlength=4).double() / len(k)
    torch.testing.assert_close(freq, gm.weights, atol=0.005, rtol=0)
    r = gm.responsibilities(gm.means)
    assert torch.all(r.argmax(1) == torch.arange(4))


def test_image_shaped_mixture_and_covariance_forms():
    means = torch.randn(2, 16, dtype=torch.float64)
    for covs in (0.5, torch.tensor([0.5, 0.2]), torch.rand(2, 16, dtype=torch.float64) + 0.1):
        gm = GaussianMixture([1, 1], means, covs, event_shape=(1, 4, 4))
        x = gm.sample(3)
        assert x.shape == (3, 1, 4, 4)
        assert gm.as_model(VP()).x0(x, 0.5).shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1], [[0.0, 0.0]], torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(ValueError, match="covs must be"):
        GaussianMixture([1, 1], means, torch.ones(3))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([1, -1], means)


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    a = torch.rand(5, 1, generator=g, dtype=torch.float64) + 0.1
    s = torch.rand(5, 1, generator=g, dtype=torch.float64) * 3
    x = a * x0 + s * eps
    v = v_from_eps_x0(eps, x0, a, s)
    torch.testing.assert_close(x0_from_v(x, v, a, s), x0)
    torch.testing.assert_close(eps_from_v(x, v, a, s), eps)


class _OracleNet(nn.Module):
    """A 'network' that outputs what an ideal net of the given parameterization would, reading time from t_in."""

    def __init__(self, gm, model, param, time_input):
        super().__init__()
        self.gm, self.m, self.param, self.time_input = gm, model, param, time_input

    def forward(self, xin, t_in):
        p = self.m.process
        if self.param == "edm":
            s_hat = torch.exp(4 * t_in)
            t = p.t_from_log_snr(-2 * torch.log(s_hat))
            a = p.alpha(t)[:, None]
            _, c_out, c_in, _ = edm_coefs(s_hat[:, None], 0.5)
            x = a * xin / c_in
            c_skip = 0.25 / (s_hat[:, None] ** 2 + 0.25)
            return (self.m.x0(x, t) - c_skip * x / a) / c_out
        if self.time_input == "log_snr":
            t = p.t_from_log_snr(t_in)
        else:
            t = t_in / p.N if self.time_input == "index" else t_in
        x = xin
        a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
        return {"eps": self.m.eps(x, t), "x0": self.m.x0(x, t), "score": self.m.score(x, t),
                "v": a * self.m.eps(x, t) - s * self.m.x0(x, t)}[self.param]


@pytest.mark.parametrize("param", ["eps", "x0", "v", "score", "edm"])
@pytest.mark.parametrize("p", [VP(), VE(), EDM(), Discrete.from_schedule("cosine", 50)], ids=lambda p: p.name)
def test_network_model_every_parameterization_gives_the_oracle(param, p):
    gm = ring_mixture(4)
    exact = gm.as_model(p)
    ti = None if param == "edm" else ("log_snr" if param == "v" else None)
    model = NetworkModel(_OracleNet(gm, exact, param, ti or ("index" if isinstance(p, Discrete) else "t")),
                         p, param, time_input=ti)
    t = _times(p, 5)[1:]
    x = torch.randn(4, 2, dtype=torch.float64) * (p.alpha(t) + p.sigma(t))[:, None]
    for name in ("x0", "eps", "score"):
        torch.testing.assert_close(getattr(model, name)(x, t), getattr(exact, name)(x, t), rtol=1e-6, atol=1e-6)


def test_counting_and_errors():
    p = VP()
    m = CountingModel(FunctionModel(lambda x, t: torch.zeros_like(x), p, "eps"))
    x = torch.randn(3, 2)
    m.x0(x, 0.5)
    m.score(x, torch.full((3,), 0.5))
    m.eps(x, 0.1)
    assert m.nfe == 3
    with pytest.raises(ValueError, match="parameterization"):
        NetworkModel(nn.Identity(), p, "foo")
    with pytest.raises(ValueError, match="Discrete"):
        NetworkModel(nn.Identity(), p, "eps", time_input="index")

    class Bad(DiffusionModel):
        process = p

    with pytest.raises(NotImplementedError):
        Bad().x0(x, 0.5)
    assert math.isfinite(float(m.model.score(x, 0.5).sum()))


def test_clipped_model_projects_the_denoiser_into_the_data_box():
    """Data in [-1, 1]^2 (near-atoms): the exact denoiser is inside the box, so clipping leaves it unchanged and can
    only move a wrong denoiser towards it; eps and score follow from the clipped x0."""
    p = VP()
    means = torch.tensor([[-0.9, 0.8], [0.7, -0.6], [0.2, 0.9], [-0.5, -0.95]], dtype=torch.float64)
    exact = MixtureModel(GaussianMixture(torch.ones(4) / 4, means, covs=1e-8), p)
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(512, 2, generator=g, dtype=torch.float64)
    t = torch.rand(512, generator=g, dtype=torch.float64) * 0.99 + 0.01
    torch.testing.assert_close(ClippedModel(exact).x0(x, t), exact.x0(x, t), rtol=0, atol=1e-12)
    bad = FunctionModel(lambda x, t: exact.x0(x, t) + 2 * x, p, "x0")  # extrapolates linearly off the data
    clipped = ClippedModel(bad, (-1, 1))
    err_raw, err_clip = ((m.x0(x, t) - exact.x0(x, t)).abs() for m in (bad, clipped))
    assert torch.all(err_clip <= err_raw + 1e-12) and err_clip.mean() < 0.5 * err_raw.mean()
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    torch.testing.assert_close(clipped.eps(x, t), (x - a * clipped.x0(x, t)) / s)
    torch.testing.assert_close(clipped.score(x, t), -clipped.eps(x, t) / s)
    assert clipped.process is p
    with pytest.raises(ValueError, match="data_range"):
        ClippedModel(exact, (1.0, -1.0))
