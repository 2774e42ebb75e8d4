"""Guidance wrappers: exact corrections from Gaussian-mixture oracles, currency consistency, time windows, CFG."""
import pytest
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.core.denoisers import DiffusionModel
from scorelab.core.processes import EDM, VP, SubVP
from scorelab.core.schedules import make_grid
from scorelab.evaluation.metrics import mode_stats
from scorelab.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DiscriminatorGuidance,
    EnergyGuidance,
    guidance_from_spec,
    parse_window,
)
from scorelab.guidance.discriminator import MixtureLogRatio
from scorelab.nets import VectorHead
from scorelab.nets.heads import TimeConditionedHead
from scorelab.samplers import SAMPLERS

F64 = torch.float64
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=F64)


def target():
    return GaussianMixture([1.0, 1.0, 1.0], MEANS, 0.15)


def pretrained():  # the "pretrained model": wrong weights, third mode nearly missing, wider components
    return GaussianMixture([0.6, 0.35, 0.05], MEANS, torch.tensor([0.2, 0.15, 0.3], dtype=F64))


def points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n, 2, generator=g, dtype=F64)


def component_log_probs(mix: GaussianMixture, x, t, process):
    """[B, K] log w_k + log N_k,t(x): logits of the exact noisy classifier p(k | x_t)."""
    cols = [GaussianMixture([1.0], mix.means[k:k + 1], mix.covs[k:k + 1]).log_prob_t(x, t, process)
            for k in range(mix.K)]
    return torch.log(mix.weights) + torch.stack(cols, dim=1)


class ConditionalMixtureModel(DiffusionModel):
    """Exact conditional model: y = k is component k of the mixture, y = -1 the whole mixture."""

    def __init__(self, mix, process):
        super().__init__()
        self.process = process
        self.parts = [GaussianMixture([1.0], mix.means[k:k + 1], mix.covs[k:k + 1]).as_model(process)
                      for k in range(mix.K)]
        self.full = mix.as_model(process)

    def eps(self, x, t, y=None, **cond):
        outs = torch.stack([self.full.eps(x, t)] + [m.eps(x, t) for m in self.parts])  # [K+1, B, d]
        return outs[y.long() + 1, torch.arange(x.shape[0])]


def check_currency(model, x, t):
    t64 = torch.as_tensor(t, dtype=F64)
    alpha, sigma = model.process.alpha(t64), model.process.sigma(t64)
    a = alpha.reshape(-1, 1) if alpha.ndim else alpha
    s = sigma.reshape(-1, 1) if sigma.ndim else sigma
    score, eps, x0 = model.score(x, t), model.eps(x, t), model.x0(x, t)
    torch.testing.assert_close(eps, -s * score, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0, (x + s**2 * score) / a, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("process", [VP(), SubVP()])
def test_exact_discriminator_correction_reproduces_target(process):
    P, Pt = target(), pretrained()
    guided = DiscriminatorGuidance(Pt.as_model(process), MixtureLogRatio(P, Pt, process), scale=1.0)
    x = points()
    ts = [0.01, 0.1, 0.4, 1.0, torch.linspace(0.01, 1.0, 64, dtype=F64)]
    for t in ts:
        torch.testing.assert_close(guided.score(x, t), P.score_t(x, t, process), rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(guided.eps(x, t), P.eps_t(x, t, process), rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(guided.x0(x, t), P.x0_t(x, t, process), rtol=1e-8, atol=1e-8)
    # the correction is not zero: the pretrained score is really wrong
    assert (Pt.score_t(x, 0.1, process) - P.score_t(x, 0.1, process)).abs().max() > 0.5


def test_exact_guided_sampling_samples_target():
    """Heun on s~ + grad log r* follows the same ODE as the exact target model: same x_T -> same samples."""
    process = VP()
    P, Pt = target(), pretrained()
    guided = DiscriminatorGuidance(Pt.as_model(process), MixtureLogRatio(P, Pt, process))
    ts = make_grid("karras", process, 30)
    g = torch.Generator().manual_seed(1)
    x_T = process.prior_sample((3000, 2), generator=g, dtype=F64)
    with torch.no_grad():  # as the CLI runs samplers: guidance must still get its gradients
        x_g = SAMPLERS["heun"].fn(guided, x_T, ts, generator=g)
        x_p = SAMPLERS["heun"].fn(P.as_model(process), x_T, ts, generator=g)
        x_u = SAMPLERS["heun"].fn(Pt.as_model(process), x_T, ts, generator=g)
    torch.testing.assert_close(x_g, x_p, rtol=1e-6, atol=1e-6)
    tv_guided, tv_base = mode_stats(x_g, P)["tv"], mode_stats(x_u, P)["tv"]
    assert tv_guided < 0.05, tv_guided
    assert tv_base > 0.2, tv_base  # the unguided pretrained model is far from P


def test_window_and_scale():
    process = VP()
    P, Pt = target(), pretrained()
    calls = []

    def logit(x, t):
        calls.append(1)
        return MixtureLogRatio(P, Pt, process)(x, t)

    base = Pt.as_model(process)
    x = points(8)
    guided = DiscriminatorGuidance(base, logit, scale=1.0, window=(0.2, 0.5))
    torch.testing.assert_close(guided.score(x, 0.1), base.score(x, 0.1))
    torch.testing.assert_close(guided.x0(x, 0.9), base.x0(x, 0.9))
    assert not calls  # outside the window the discriminator is never evaluated
    torch.testing.assert_close(guided.score(x, 0.3), P.score_t(x, 0.3, process))
    t = torch.tensor([0.1, 0.3] * 4, dtype=F64)  # per-example times: masked per example
    want = torch.where((t > 0.2)[:, None], P.score_t(x, t, process), base.score(x, t))
    torch.testing.assert_close(guided.score(x, t), want)
    # the correction is linear in the scale; scale 0 is the base model
    s1 = DiscriminatorGuidance(base, logit, scale=1.0).score(x, 0.3)
    s3 = DiscriminatorGuidance(base, logit, scale=3.0).score(x, 0.3)
    torch.testing.assert_close(s3 - base.score(x, 0.3), 3 * (s1 - base.score(x, 0.3)))
    torch.testing.assert_close(DiscriminatorGuidance(base, logit, scale=0.0).eps(x, 0.3), base.eps(x, 0.3))


def test_every_wrapper_is_consistent():
    process = VP()
    P = target()
    torch.manual_seed(0)
    disc = TimeConditionedHead(VectorHead(2, num_outputs=1, width=32), process).double()
    clf = TimeConditionedHead(VectorHead(2, num_outputs=3, width=32), process).double()
    base = P.as_model(process)
    models = [
        DiscriminatorGuidance(base, disc, scale=2.0),
        ClassifierGuidance(base, clf, y=torch.tensor([0, 1, 2, 1] * 4), scale=1.5),
        EnergyGuidance(base, lambda x, t: (x**2).sum(1) * (1 + t), scale=0.7),
        ClassifierFreeGuidance(ConditionalMixtureModel(P, process), y=torch.tensor([0, 1, 2, -1] * 4), scale=2.0),
    ]
    x = points(16)
    for m in models:
        for t in (0.05, 0.5, torch.linspace(0.05, 0.9, 16, dtype=F64)):
            check_currency(m, x, t)


def test_classifier_free_guidance_identities():
    process = VP()
    P = target()
    cond = ConditionalMixtureModel(P, process)
    x = points(12)
    y = torch.tensor([0, 1, 2] * 4)
    for t in (0.05, 0.3):
        # w = 0 is the conditional model; the conditional model is the exact component model
        torch.testing.assert_close(ClassifierFreeGuidance(cond, y=y, scale=0.0).eps(x, t), cond.eps(x, t, y=y))
        comp = torch.stack([GaussianMixture([1.0], MEANS[k:k + 1], 0.15).score_t(x, t, process) for k in range(3)])
        torch.testing.assert_close(cond.score(x, t, y=y), comp[y, torch.arange(12)])

    def exact_classifier(x_, t_):
        return component_log_probs(P, x_, t_, process)

    for w in (0.5, 3.0):  # CFG(w) = classifier guidance with the exact noisy classifier and scale 1 + w
        cfg = ClassifierFreeGuidance(cond, y=y, scale=w)
        cg = ClassifierGuidance(P.as_model(process), exact_classifier, y=y, scale=1 + w)
        torch.testing.assert_close(cfg.score(x, 0.2), cg.score(x, 0.2), rtol=1e-7, atol=1e-7)
    # labels at call time override the constructor's, and missing labels are an error
    cfg = ClassifierFreeGuidance(cond, scale=1.0)
    torch.testing.assert_close(cfg.eps(x, 0.2, y=y), ClassifierFreeGuidance(cond, y=y, scale=1.0).eps(x, 0.2))
    with pytest.raises(ValueError, match="labels"):
        cfg.eps(x, 0.2)


def test_energy_guidance_closed_form():
    process = VP()
    base = GaussianMixture([1.0], torch.zeros(1, 2, dtype=F64), 1.0).as_model(process)  # N(0, I) is stationary
    m, v = torch.tensor([1.0, -0.5], dtype=F64), 0.5
    guided = EnergyGuidance(base, lambda x, t: 0.5 * ((x - m) ** 2).sum(1) / v, scale=2.0, window=(0.0, 0.5))
    x = points(10)
    torch.testing.assert_close(guided.score(x, 0.3), -x - 2.0 * (x - m) / v)
    torch.testing.assert_close(guided.score(x, 0.7), -x)


def test_time_inputs_and_bad_input():
    head = VectorHead(2, num_outputs=1, width=16)
    edm = TimeConditionedHead(head, EDM())
    assert edm.time_input == "c_noise"
    x = torch.zeros(3, 2)
    torch.testing.assert_close(edm.net_time(x, 1.0), torch.zeros(3))  # c_noise = log(sigma)/4 = 0 at sigma = 1
    with pytest.raises(ValueError, match="time_input"):
        TimeConditionedHead(head, VP(), "index")
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        DiscriminatorGuidance(target().as_model(VP()), lambda x, t: x.sum(1), window=(0.5, 0.2))
    assert parse_window("0.1,0.6") == (0.1, 0.6) and parse_window(None) is None
    with pytest.raises(ValueError, match="t_lo,t_hi"):
        parse_window("0.1;0.6")
    with pytest.raises(ValueError, match="discriminator:PATH"):
        guidance_from_spec(target().as_model(VP()), "classifier:foo")
    bad = DiscriminatorGuidance(target().as_model(VP()), lambda x, t: x)  # returns [B, d], not [B]
    with pytest.raises(ValueError, match="one value per example"):
        bad.score(points(4), 0.5)
