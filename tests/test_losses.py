"""DSM losses against the exact Gaussian-mixture model; time proposals' distributions; sliced score matching."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from scorelab.core.analytic import random_mixture
from scorelab.core.denoisers import DiffusionModel, NetworkModel
from scorelab.core.processes import EDM, VE, VP, Discrete, VPCosine
from scorelab.nets import MLP
from scorelab.training.losses import (
    DSMLoss,
    LossConfig,
    dsm_loss,
    likelihood_rate,
    loss_weight,
    sample_times,
    sliced_score_matching_loss,
)


def _g(seed):
    return torch.Generator().manual_seed(seed)


MIX = random_mixture(3, 2, generator=_g(1))


class Perturbed(DiffusionModel):
    """eps_theta = exact eps + theta * phi(x, t) (space "eps"), or x0_theta = exact x0 + theta * phi (space "x0");
    theta is a scalar or a per-example [B] tensor."""

    def __init__(self, process, phi, theta, space="eps"):
        super().__init__()
        self.exact, self.process, self.phi, self.theta, self.space = MIX.as_model(process), process, phi, theta, space

    def _delta(self, x, t):
        th = torch.as_tensor(self.theta, dtype=x.dtype)
        th = th.reshape(-1, *([1] * (x.ndim - 1))) if th.ndim == 1 else th
        return th * self.phi(x, torch.as_tensor(t, dtype=x.dtype))

    def eps(self, x, t, **cond):
        if self.space == "x0":
            return super().eps(x, t)
        return self.exact.eps(x, t) + self._delta(x, t)

    def x0(self, x, t, **cond):
        if self.space == "eps":
            return super().x0(x, t)
        return self.exact.x0(x, t) + self._delta(x, t)


PHIS = {
    "shift": lambda x, t: torch.tensor([1.0, -0.5], dtype=x.dtype).expand_as(x),
    "tanh": lambda x, t: 0.5 * torch.tanh(x),
    "time": lambda x, t: torch.sin(3 * t.reshape(-1, 1)) * torch.tanh(x.flip(-1)),
}
CASES = [  # (process, proposal, weighting, space of the perturbation)
    (VP(), "uniform", "eps", "eps"),
    (VP(), "importance", "likelihood", "eps"),
    (EDM(), "lognormal", "edm", "x0"),
    (VPCosine(), "uniform", "min_snr", "x0"),
    (VP(), "uniform", "snr", "eps"),
    (VE(sigma_max=10.0), "uniform", "x0", "x0"),
    (Discrete.from_schedule("linear", 100), "discrete", "eps", "eps"),
]
IDS = [f"{c[0].name}-{c[1]}-{c[2]}" for c in CASES]


def _per_example_grad(process, proposal, weighting, space, phi, theta0, n=4000, seed=3):
    """Per-example d loss / d theta at theta0 (theta as a [B] leaf so each example gets its own derivative)."""
    x0 = MIX.sample(n, generator=_g(2))
    theta = torch.full((n,), float(theta0), dtype=torch.float64, requires_grad=True)
    loss = dsm_loss(Perturbed(process, phi, theta, space), x0, proposal=proposal, weighting=weighting,
                    generator=_g(seed))
    (grad,) = torch.autograd.grad(loss.sum(), theta)
    return grad


def _z(v):
    return float(v.mean() / (v.std() / math.sqrt(v.numel())))


@pytest.mark.parametrize("process,proposal,weighting,space", CASES, ids=IDS)
def test_exact_model_has_lower_expected_loss_than_perturbations(process, proposal, weighting, space):
    x0 = MIX.sample(4000, generator=_g(2))
    exact = dsm_loss(MIX.as_model(process), x0, proposal=proposal, weighting=weighting, generator=_g(5))
    assert exact.shape == (4000,) and torch.all(torch.isfinite(exact))
    for name, phi in PHIS.items():
        for theta in (0.5, -0.5):
            pert = dsm_loss(Perturbed(process, phi, theta), x0, proposal=proposal, weighting=weighting,
                            generator=_g(5))  # common random numbers
            assert _z(pert - exact) > 3, (name, theta)


@pytest.mark.parametrize("process,proposal,weighting,space", CASES, ids=IDS)
def test_loss_gradient_vanishes_at_the_exact_model_only(process, proposal, weighting, space):
    for name, phi in PHIS.items():
        g0 = _per_example_grad(process, proposal, weighting, space, phi, 0.0)
        assert abs(_z(g0)) < 3.5, name  # E[d/dtheta loss] = 0 at the minimiser (within Monte-Carlo error)
        g1 = _per_example_grad(process, proposal, weighting, space, phi, 0.5)
        assert _z(g1) > 5, name  # d/dtheta E = 2 theta E[w ||phi||^2] > 0


def test_weightings_match_their_formulas_on_common_draws():
    process, x0 = VP(), MIX.sample(500, generator=_g(2))
    model = Perturbed(process, PHIS["time"], 0.3)

    def loss(weighting, **kw):
        return dsm_loss(model, x0, config=LossConfig(weighting=weighting, **kw), generator=_g(9))

    t, _ = sample_times(process, 500, LossConfig(), _g(9), dtype=torch.float64)  # the same t dsm_loss draws first
    a, s = process.alpha(t), process.sigma(t)
    eps_l, x0_l = loss("eps"), loss("x0")
    torch.testing.assert_close(loss("snr"), eps_l, rtol=1e-9, atol=1e-12)  # SNR ||dx0||^2 = ||d eps||^2
    torch.testing.assert_close(loss("snr"), a**2 / s**2 * x0_l, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss("min_snr", gamma=1e30), loss("snr"))
    torch.testing.assert_close(loss("min_snr", gamma=2.0), torch.clamp(a**2 / s**2, max=2.0) * x0_l)
    g2 = process.diffusion_sq(t)
    torch.testing.assert_close(loss("likelihood"), g2 / (2 * s**2) * eps_l)
    sc, sd = s / a, 0.5
    torch.testing.assert_close(loss("edm"), (sc**2 + sd**2) / (sc * sd) ** 2 * x0_l)
    torch.testing.assert_close(loss("eps", reduction="mean"), eps_l / 2)


def test_discrete_proposal_is_antithetic_and_uniform():
    p, n = Discrete.from_schedule("linear", 10), 1001
    t, u = sample_times(p, n, LossConfig(proposal="discrete"), _g(0), dtype=torch.float64)
    k = t * p.N - 1
    assert torch.allclose(k, k.round()) and k.min() >= 0 and k.max() <= p.N - 1 and torch.all(u == 1)
    half = n // 2 + 1
    assert torch.all(k[:n - half] + k[half:] == p.N - 1)  # pairs (k, N-1-k) as in the DDPM / SFT-PG code
    for antithetic in (True, False):
        t, _ = sample_times(p, 20000, LossConfig(proposal="discrete", antithetic=antithetic), _g(1))
        counts = torch.bincount((t * p.N).round().long() - 1, minlength=p.N).numpy()
        assert stats.chisquare(counts).pvalue > 1e-3
    with pytest.raises(ValueError, match="Discrete"):
        sample_times(VP(), 4, LossConfig(proposal="discrete"))


def test_uniform_proposal_is_uniform_on_the_interval():
    t, u = sample_times(VP(), 20000, LossConfig(t_min=0.1, t_max=0.6), _g(0), dtype=torch.float64)
    assert torch.all(u == 1) and t.min() >= 0.1 and t.max() <= 0.6
    assert stats.kstest(t.numpy(), stats.uniform(0.1, 0.5).cdf).pvalue > 1e-3


@pytest.mark.parametrize("process", [EDM(), VP(), Discrete.from_schedule("linear", 1000)], ids=lambda p: p.name)
def test_lognormal_proposal_has_edm_quantiles(process):
    n = 20000
    t, _ = sample_times(process, n, LossConfig(proposal="lognormal"), _g(0), dtype=torch.float64)
    log_s = torch.log(process.sigma(t) / process.alpha(t)).numpy()  # ln sigma ~ N(-1.2, 1.2^2) (Karras et al.)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        frac = float(np.mean(log_s <= stats.norm.ppf(q, loc=-1.2, scale=1.2)))
        assert abs(frac - q) < 4 * math.sqrt(q * (1 - q) / n), q


@pytest.mark.parametrize("process", [VP(), VE(), EDM(), VPCosine(), Discrete.from_schedule("linear", 100)],
                         ids=lambda p: p.name)
def test_importance_proposal_has_density_g2_over_sigma2(process):
    """KS test against the CDF of g^2/sigma^2 integrated numerically (trapezoid on a fine grid), an independent
    route from the log-SNR inversion the proposal uses; the weight is the exact density ratio to uniform."""
    lo, hi = process.t_min, process.t_max
    grid = torch.tensor(np.unique(np.concatenate([np.geomspace(lo, hi, 40001), np.linspace(lo, hi, 40001)])))
    rate = likelihood_rate(process, grid).numpy()
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * np.diff(grid.numpy()))])
    Z = cdf[-1]
    t, u = sample_times(process, 20000, LossConfig(proposal="importance"), _g(0), dtype=torch.float64)
    assert stats.kstest(t.numpy(), lambda s: np.interp(s, grid.numpy(), cdf / Z)).pvalue > 1e-3
    np.testing.assert_allclose((u * (hi - lo) * likelihood_rate(process, t)).numpy(), Z, rtol=1e-3)
    assert abs(_z(u - 1)) < 4  # E_p[1 / ((hi - lo) p)] = 1


def test_importance_sampled_likelihood_loss_is_unbiased_and_has_lower_variance():
    process, n = VP(), 20000
    x0 = MIX.sample(n, generator=_g(2))
    model = Perturbed(process, PHIS["shift"], 0.3)
    uni = dsm_loss(model, x0, weighting="likelihood", generator=_g(11))
    imp = dsm_loss(model, x0, proposal="importance", weighting="likelihood", generator=_g(12))
    se = math.sqrt(uni.var() / n + imp.var() / n)
    assert abs(float(uni.mean() - imp.mean())) < 4 * se
    assert imp.var() < uni.var()


def test_loss_weight_min_snr_is_clipped_snr():
    p, t = VP(), torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    snr = p.alpha(t) ** 2 / p.sigma(t) ** 2
    torch.testing.assert_close(loss_weight(p, t, LossConfig(weighting="min_snr", gamma=5.0)), snr.clamp(max=5.0))
    torch.testing.assert_close(loss_weight(p, t, LossConfig(weighting="edm", sigma_data=0.5)), snr + 4.0)


def test_dsm_with_a_network_passes_labels_and_backpropagates():
    torch.manual_seed(0)
    model = NetworkModel(MLP(2, width=32, depth=1, num_classes=3), VP())
    x0 = torch.randn(16, 2)
    y = torch.tensor([0, 1, 2, -1] * 4)
    loss_fn = DSMLoss(LossConfig(weighting="min_snr"))
    la = loss_fn(model, x0, generator=_g(0), y=y)
    lb = loss_fn(model, x0, generator=_g(0), y=torch.full((16,), -1))
    assert la.shape == (16,) and la.dtype == torch.float32 and not torch.allclose(la, lb)
    la.mean().backward()
    assert all(p.grad is not None for p in model.net.embed.label.parameters())


def test_bad_loss_options_raise():
    with pytest.raises(ValueError, match="weighting"):
        LossConfig(weighting="l2")
    with pytest.raises(ValueError, match="proposal"):
        LossConfig(proposal="beta")
    with pytest.raises(ValueError, match="config"):
        dsm_loss(MIX.as_model(VP()), torch.zeros(2, 2), weighting="edm", config=LossConfig(weighting="x0"))
    with pytest.raises(ValueError, match="interval"):
        sample_times(VP(), 3, LossConfig(t_min=0.5, t_max=2.0))


# -- sliced score matching -----------------------------------------------------------------------
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)


def _gaussian(n, seed):
    return torch.randn(n, 2, generator=_g(seed), dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T


@pytest.mark.parametrize("vr", [True, False])
def test_ssm_matches_the_hyvarinen_objective_of_a_linear_score(vr):
    """For s(x) = -A x and x ~ N(0, Sigma): E[v^T grad(v^T s) + 1/2 ||s||^2] = -tr A + 1/2 tr(A^T A Sigma)."""
    x = _gaussian(20000, 0)
    for A in (torch.linalg.inv(SIGMA), torch.tensor([[1.0, 0.2], [0.0, 2.0]], dtype=torch.float64)):
        vals = sliced_score_matching_loss(lambda z, A=A: -z @ A.T, x, n_projections=2, generator=_g(1),
                                          variance_reduction=vr)
        exact = -torch.trace(A) + 0.5 * torch.trace(A.T @ A @ SIGMA)
        assert vals.shape == (20000,)
        vals = vals.detach()
        assert abs(float(vals.mean() - exact)) < 4 * float(vals.std()) / math.sqrt(20000)


def test_ssm_is_minimised_by_the_true_score_and_trains_a_module():
    x = _gaussian(20000, 2)
    lin = torch.nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(-torch.linalg.inv(SIGMA))
    best = sliced_score_matching_loss(lin, x, 1, _g(3))
    for dA in (0.5 * torch.eye(2, dtype=torch.float64), torch.tensor([[0.0, 0.6], [0.6, 0.0]], dtype=torch.float64)):
        worse = sliced_score_matching_loss(lambda z, dA=dA: lin(z) - z @ dA.T, x, 1, _g(3))
        assert _z((worse - best).detach()) > 3  # E[difference] = 1/2 tr(dA^T dA Sigma) > 0
    best.mean().backward()  # E[d loss / dA] = A Sigma - I: zero at A = Sigma^{-1}, 0.5 Sigma at A + 0.5 I
    g_true = lin.weight.grad.clone()
    lin.weight.grad = None
    with torch.no_grad():
        lin.weight.sub_(0.5 * torch.eye(2, dtype=torch.float64))
    sliced_score_matching_loss(lin, x, 1, _g(3)).mean().backward()
    assert g_true.norm() < 0.1 and torch.allclose(lin.weight.grad, -0.5 * SIGMA, atol=0.1)  # weight = -A
    with pytest.raises(ValueError, match="n_projections"):
        sliced_score_matching_loss(lin, x, 0)
