"""High-order DSM (Lu et al. 2022a): the exact Gaussian-mixture model is a stationary point of every loss.

The regression targets are checked conditionally on a fixed x_t: x_0 is drawn from the exact posterior q(x_0 | x_t)
of the mixture and eps = (x_t - alpha x_0)/sigma, so the average loss gradient in any perturbation direction must
vanish at the exact scores (and a wrong target formula gives a gradient many standard errors away from 0)."""
import math

import pytest
import torch
from torch import nn

from scorelab import VP, GaussianMixture, NetworkModel
from scorelab.core.denoisers import DiffusionModel
from scorelab.training import hodsm

MIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [[0.2, 0.1], [0.1, 0.15]])
PROC = VP()
BASE = MIX.as_model(PROC)
LOSSES = ["dsm1_loss", "dsm2_loss", "dsm2_trace_loss", "dsm3_loss"]


class Perturbed(DiffusionModel):
    """score = exact score + e_b * sin(W x + c): one perturbation size per example (per-example gradients)."""

    def __init__(self, n: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.process = PROC
        self.W = torch.randn(2, 2, generator=g, dtype=torch.float64)
        self.c = torch.randn(2, generator=g, dtype=torch.float64)
        self.e = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def score(self, x, t, **cond):
        return BASE.score(x, t) + self.e[:, None] * torch.sin(x @ self.W.T + self.c)

    def eps(self, x, t, **cond):
        _, s = self._coefs(x, t)
        return -s * self.score(x, t)


def posterior_draws(xt: torch.Tensor, t: float, m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x_0 ~ q(x_0 | x_t) for the mixture (component posterior, then the Gaussian posterior) and the matching eps."""
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = PROC.alpha(tt), PROC.sigma(tt)
    r = torch.softmax(torch.log(MIX.weights) + torch.stack([
        torch.distributions.MultivariateNormal(a * MIX.means[k], a**2 * MIX.covs[k] + s**2 * torch.eye(2)).log_prob(xt)
        for k in range(MIX.K)]), 0)
    k = torch.multinomial(r, m, replacement=True, generator=gen)
    prec = torch.linalg.inv(MIX.covs) + (a**2 / s**2) * torch.eye(2)
    V = torch.linalg.inv(prec)
    mean = (V @ (torch.linalg.solve(MIX.covs, MIX.means[..., None]) + (a / s**2) * xt[:, None]))[..., 0]
    z = torch.randn(m, 2, 1, generator=gen, dtype=torch.float64)
    x0 = mean[k] + (torch.linalg.cholesky(V)[k] @ z)[..., 0]
    return x0, (xt - a * x0) / s


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("t", [0.1, 0.3])
def test_exact_scores_are_stationary_given_xt(name, t):
    gen = torch.Generator().manual_seed(3)
    m = 6000
    for point in ([0.0, 0.0], [0.8, -0.4]):  # between the components the third derivative is large
        xt = torch.tensor(point, dtype=torch.float64)
        x0, eps = posterior_draws(xt, t, m, gen)
        tt = torch.tensor(t, dtype=torch.float64)
        assert torch.allclose(PROC.alpha(tt) * x0 + PROC.sigma(tt) * eps, xt.expand(m, 2))
        for seed in (0, 1):
            model = Perturbed(m, seed)
            loss = getattr(hodsm, name)(model, x0, t=t, eps=eps)
            (g,) = torch.autograd.grad(loss.sum(), model.e)
            z = g.mean() / (g.std() / math.sqrt(m))
            assert abs(z) < 4.5, (name, t, point, seed, float(z))


@pytest.mark.parametrize("name", LOSSES)
def test_exact_scores_are_stationary_over_data(name):
    """The perturbation test over x_0 ~ q_0, t ~ U: the mean training gradient at the exact model is 0."""
    m = 4000
    x0 = MIX.sample(m, generator=torch.Generator().manual_seed(1))
    model = Perturbed(m, 2)
    kw = {} if name == "dsm1_loss" else {"reference": BASE}
    loss = getattr(hodsm, name)(model, x0, generator=torch.Generator().manual_seed(2), **kw)
    (g,) = torch.autograd.grad(loss.sum(), model.e)
    assert abs(g.mean() / (g.std() / math.sqrt(m))) < 4.5


@pytest.mark.parametrize("name", LOSSES[1:])
def test_perturbing_the_model_increases_the_loss(name):
    """With targets from the exact reference, the loss is a convex quadratic in the perturbation size."""
    t, m = 0.2, 4000
    x0, eps = posterior_draws(torch.tensor([0.3, 0.2], dtype=torch.float64), t, m, torch.Generator().manual_seed(5))
    model = Perturbed(m, 4)
    vals = []
    for e in (0.0, -0.5, 0.5):
        with torch.no_grad():
            model.e.fill_(e)
        vals.append(float(getattr(hodsm, name)(model, x0, t=t, eps=eps, reference=BASE).mean().detach()))
    assert vals[1] > vals[0] and vals[2] > vals[0]


def test_own_targets_equal_reference_targets_at_the_exact_model():
    x0 = MIX.sample(64, generator=torch.Generator().manual_seed(0))
    model = Perturbed(64, 0)
    for name in LOSSES[1:]:
        a = getattr(hodsm, name)(model, x0, generator=torch.Generator().manual_seed(1))
        b = getattr(hodsm, name)(model, x0, generator=torch.Generator().manual_seed(1), reference=BASE)
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_hutchinson_trace_loss_approaches_exact_with_many_probes():
    x0 = MIX.sample(256, generator=torch.Generator().manual_seed(0))
    exact = hodsm.dsm2_trace_loss(BASE, x0, generator=torch.Generator().manual_seed(1))
    hut = hodsm.dsm2_trace_loss(BASE, x0, generator=torch.Generator().manual_seed(1), divergence="hutchinson",
                                n_probes=400)
    assert (hut - exact).abs().mean() < 0.05 * exact.abs().mean() + 1e-3


def test_combined_loss_is_the_sum_of_its_terms_at_one_draw():
    x0 = MIX.sample(32, generator=torch.Generator().manual_seed(0))
    model = Perturbed(32, 1)
    with torch.no_grad():
        model.e.fill_(0.1)
    total = hodsm.hodsm_loss(model, x0, generator=torch.Generator().manual_seed(7), lambda2=0.5, lambda3=0.25)
    parts = [getattr(hodsm, n)(model, x0, generator=torch.Generator().manual_seed(7))
             for n in ("dsm1_loss", "dsm2_trace_loss", "dsm3_loss")]
    assert torch.allclose(total, parts[0] + 0.5 * parts[1] + 0.25 * parts[2])
    with pytest.raises(ValueError):
        hodsm.hodsm_loss(model, x0, order=4)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2))

    def forward(self, x, t):
        return self.body(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("name", LOSSES)
def test_losses_train_a_network_model(name):
    torch.manual_seed(0)
    model = NetworkModel(TinyNet().double(), PROC, "eps")
    x0 = MIX.sample(16, generator=torch.Generator().manual_seed(0))
    loss = getattr(hodsm, name)(model, x0, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (16,) and torch.all(torch.isfinite(loss))
    loss.mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]  # the last bias has no Jacobian
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError):
        getattr(hodsm, name)(model, x0, eps=torch.zeros(3, 2))
