"""Discriminator objectives against exact Gaussian-mixture density ratios: J_CE's minimizer is d* = p/(p + p~),
J_MSE's minimizer is the exact correction (thesis Prop. 1), training, sample cache, checkpoints, CLI entry point."""
import json

import pytest
import safetensors.torch
import torch

from scorelab.cli.guidance import TrainDiscriminatorOptions, train_discriminator_from_options
from scorelab.core.analytic import GaussianMixture
from scorelab.core.denoisers import FunctionModel, NetworkModel
from scorelab.core.processes import VP
from scorelab.guidance import DiscriminatorGuidance, guidance_from_spec
from scorelab.guidance.discriminator import (
    DiscriminatorConfig,
    MixtureLogRatio,
    ce_terms,
    discriminator_loss,
    generate_samples,
    gradient_error,
    load_discriminator,
    make_discriminator,
    mse_terms,
    save_discriminator,
    train_discriminator,
)
from scorelab.io import checkpoints as ckpts
from scorelab.nets import MLP
from scorelab.nets.heads import scalar_field_grad
from scorelab.training.losses import dsm_loss

F64 = torch.float64
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=F64)
PROCESS = VP()


def target():
    return GaussianMixture([1.0, 1.0, 1.0], MEANS, 0.15)


def pretrained():
    return GaussianMixture([0.6, 0.35, 0.05], MEANS, torch.tensor([0.2, 0.15, 0.3], dtype=F64))


def diffused(mix, n, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(n, g)
    t = 0.01 + 0.99 * torch.rand(n, generator=g, dtype=F64)
    x_t, eps = PROCESS.marginal_sample(x0, t, g)
    return x_t, t, eps


def perturbed(base, h, delta):
    return lambda x, t: base(x, t) + delta * h(x, t)


PERTURBATIONS = [lambda x, t: torch.ones_like(t), lambda x, t: torch.sin(x[:, 0]) * (1 - t),
                 lambda x, t: 0.3 * x[:, 1] ** 2]


def test_optimal_discriminator_minimizes_cross_entropy():
    P, Pt = target(), pretrained()
    oracle = MixtureLogRatio(P, Pt, PROCESS)
    xr, tr, _ = diffused(P, 20000, 0)
    xf, tf, _ = diffused(Pt, 20000, 1)

    def J(disc):
        a, b = ce_terms(disc, xr, tr, xf, tf)
        return float(a.mean() + b.mean())

    j_star = J(oracle)
    assert j_star < 2 * 0.6931 - 0.03  # d* beats the blind d = 1/2 (J = log 4)
    for h in PERTURBATIONS:
        for delta in (-0.5, 0.5):  # common random numbers: the second-order increase dominates the MC noise
            assert J(perturbed(oracle, h, delta)) > j_star
        # first-order condition: dJ/d delta at d* = E_P[-(1 - d*) h] + E_P~[d* h] = 0 up to Monte-Carlo error
        d_r, d_f = torch.sigmoid(oracle(xr, tr)), torch.sigmoid(oracle(xf, tf))
        gr, gf = -(1 - d_r) * h(xr, tr), d_f * h(xf, tf)
        se = (gr.var() / len(gr) + gf.var() / len(gf)).sqrt()
        assert abs(float(gr.mean() + gf.mean())) < 4 * se
        w_r, w_f = torch.sigmoid(oracle(xr, tr) + 1), torch.sigmoid(oracle(xf, tf) + 1)  # ... unlike at d != d*
        assert abs(float((-(1 - w_r) * h(xr, tr)).mean() + (w_f * h(xf, tf)).mean())) > 8 * se


def test_mse_minimizer_is_exact_correction():
    """Prop. 1: J_MSE = J_SM + const (lambda = sigma^2), J_SM(l*) = 0, so l* minimizes J_MSE."""
    P, Pt = target(), pretrained()
    oracle, model = MixtureLogRatio(P, Pt, PROCESS), Pt.as_model(PROCESS)
    x_t, t, eps = diffused(P, 20000, 2)
    sigma = PROCESS.sigma(t)[:, None]
    true_score = P.score_t(x_t, t, PROCESS)

    def j_mse(disc):
        return mse_terms(disc, model, x_t, t, eps, create_graph=False)

    def j_sm(disc):
        return (sigma * (true_score - model.score(x_t, t) - scalar_field_grad(disc, x_t, t))).pow(2).sum(1)

    assert float(j_sm(oracle).abs().max()) < 1e-16 + 1e-10  # the exact correction has zero score error
    gap_star = j_mse(oracle) - j_sm(oracle)
    discs = [lambda x, t: torch.zeros_like(t)] + [perturbed(oracle, h, 0.4) for h in PERTURBATIONS[1:]]
    for disc in discs:
        diff = (j_mse(disc) - j_sm(disc)) - gap_star  # zero-mean: the constant of Prop. 1 does not depend on phi
        assert abs(float(diff.mean())) <= 4 * float(diff.std()) / len(diff) ** 0.5
        assert float(j_sm(disc).mean()) > 1e-3  # and these really are worse
        assert float(j_mse(disc).mean()) > float(j_mse(oracle).mean())


def test_blind_discriminator_mse_equals_dsm_loss():
    """With l = 0 and lambda = sigma^2, J_MSE is the DSM (eps) loss of the pretrained model on the same draws."""
    model = pretrained().as_model(PROCESS)
    x0 = target().sample(512, torch.Generator().manual_seed(3))
    cfg = DiscriminatorConfig(objective="mse", lam="sigma2")
    zero = lambda x, t: 0.0 * x.sum(1)  # noqa: E731
    ours = discriminator_loss(zero, model, x0, None, cfg, torch.Generator().manual_seed(4))["mse"]
    ref = dsm_loss(model, x0, generator=torch.Generator().manual_seed(4)).mean()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_training_learns_the_correction():
    torch.manual_seed(0)
    P, Pt = target(), pretrained()
    oracle, model = MixtureLogRatio(P, Pt, PROCESS), Pt.as_model(PROCESS)
    g = torch.Generator().manual_seed(5)
    x_real, x_fake = P.sample(4000, g, dtype=torch.float32), Pt.sample(4000, g, dtype=torch.float32)
    xs, ts, _ = diffused(P, 2000, 6)
    xs, ts = xs.float(), ts.float()
    blind = gradient_error(lambda x, t: 0.0 * x.sum(1), oracle, xs, ts).pow(2).mean()
    cfg = DiscriminatorConfig(objective="mse+ce", gamma=0.1, steps=300, batch_size=256, lr=3e-3, log_every=100)
    disc = make_discriminator((2,), PROCESS, width=64, depth=2)
    res = train_discriminator(disc, model, x_real, x_fake, cfg, progress=False, eval_every=100,
                              callback=lambda step, d: float(gradient_error(d, oracle, xs, ts).pow(2).mean()))
    assert [h["step"] for h in res.history] == [100, 200, 300] and len(res.evaluations) == 3
    assert res.evaluations[-1] < 0.35 * float(blind), (res.evaluations, float(blind))
    ce = DiscriminatorConfig(objective="ce", steps=300, batch_size=256, lr=3e-3)
    disc_ce = train_discriminator(make_discriminator((2,), PROCESS, width=64, depth=2), model, x_real, x_fake, ce,
                                  progress=False).discriminator
    xr, tr, _ = diffused(P, 4000, 7)
    xf, tf, _ = diffused(Pt, 4000, 8)
    a, b = ce_terms(disc_ce, xr.float(), tr.float(), xf.float(), tf.float())
    a_s, b_s = ce_terms(oracle, xr, tr, xf, tf)
    held_out, optimum = float((a.mean() + b.mean()).detach()), float(a_s.mean() + b_s.mean())
    assert held_out < 0.5 * (optimum + 2 * 0.6931), (held_out, optimum)  # at least half way from blind to d*


def test_objectives_on_images_and_bad_input():
    torch.manual_seed(0)
    model = FunctionModel(lambda x, t: 0.1 * x, PROCESS)
    disc = make_discriminator((1, 8, 8), PROCESS, base_channels=8, channel_mults=(1,), groups=4)
    g = torch.Generator().manual_seed(0)
    x_real, x_fake = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g)
    cfg = DiscriminatorConfig(objective="mse+ce", gamma=0.5)
    out = discriminator_loss(disc, model, x_real, x_fake, cfg, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["total"], out["mse"] + 0.5 * out["ce"])
    out["total"].backward()
    grads = [p.grad for p in disc.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads) and any(gr.abs().sum() > 0 for gr in grads)
    with pytest.raises(ValueError, match="generated samples"):
        discriminator_loss(disc, model, x_real, None, DiscriminatorConfig(objective="ce"))
    for bad in ({"objective": "kl"}, {"gamma": -1.0}, {"lam": "snr"}, {"steps": 0}, {"t_min": 0.5, "t_max": 0.1}):
        with pytest.raises(ValueError):
            DiscriminatorConfig(**bad)
    with pytest.raises(ValueError, match="event_shape"):
        make_discriminator((2, 3), PROCESS)


def test_generated_samples_are_cached(tmp_path):
    model = pretrained().as_model(PROCESS)
    kw = dict(sampler="euler", nfe=10, seed=0, cache_dir=tmp_path, progress=False, dtype=F64)
    x1 = generate_samples(model, 300, (2,), **kw)
    files = sorted(tmp_path.glob("samples_*.safetensors"))
    assert x1.shape == (300, 2) and len(files) == 1
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert meta["sampler"] == "euler" and meta["nfe_used"] == 10
    files[0].write_bytes(safetensors.torch.save({"samples": torch.zeros(300, 2, dtype=F64)}))
    assert torch.equal(generate_samples(model, 300, (2,), **kw), torch.zeros(300, 2, dtype=F64))  # read from cache
    x2 = generate_samples(model, 300, (2,), **{**kw, "seed": 1})  # other settings: new samples, new file
    assert len(list(tmp_path.glob("samples_*.safetensors"))) == 2 and not torch.equal(x1, x2)
    other = target().as_model(PROCESS)  # another model: another key
    generate_samples(other, 300, (2,), **kw)
    assert len(list(tmp_path.glob("samples_*.safetensors"))) == 3


def test_save_load_and_guidance_spec(tmp_path):
    torch.manual_seed(0)
    disc = make_discriminator((2,), PROCESS, width=16, depth=1)
    path = save_discriminator(tmp_path / "disc", disc, DiscriminatorConfig(steps=5))
    loaded = load_discriminator(path)
    x, t = torch.randn(7, 2), torch.rand(7)
    torch.testing.assert_close(loaded(x, t), disc(x, t))
    base = pretrained().as_model(PROCESS)
    guided = guidance_from_spec(base, f"discriminator:{tmp_path / 'disc'}", scale=2.0, window="0.1,0.9")
    want = DiscriminatorGuidance(base, disc, scale=2.0, window=(0.1, 0.9))
    torch.testing.assert_close(guided.score(x.double(), 0.5), want.score(x.double(), 0.5))
    ckpts.save_checkpoint(tmp_path / "model", NetworkModel(MLP(2, width=8, depth=1), PROCESS))
    with pytest.raises(ValueError, match="not a discriminator"):
        load_discriminator(tmp_path / "model")


def test_train_discriminator_cli(tmp_path):
    torch.manual_seed(0)
    ckpts.save_checkpoint(tmp_path / "ckpt", NetworkModel(MLP(2, width=16, depth=1), PROCESS), step=1)
    cfg = TrainDiscriminatorOptions(data="8gaussians", data_n=256, n_generated=128, sampler="euler", nfe=8,
                                      head={"width": 16, "depth": 1}, progress=False)
    cfg = cfg.with_train(objective="mse+ce", gamma=0.1, steps=10, batch_size=32, log_every=5)
    summary = train_discriminator_from_options(cfg, tmp_path / "ckpt", tmp_path / "out")
    assert (tmp_path / "out" / "discriminator.safetensors").is_file()
    assert len(list((tmp_path / "out" / "cache").glob("samples_*.safetensors"))) == 1
    saved = json.loads((tmp_path / "out" / "train_discriminator.json").read_text())
    assert saved["config"]["train"]["objective"] == "mse+ce" and len(saved["history"]) == 2
    assert {"total", "ce", "mse"} <= set(summary["final"])
    disc = load_discriminator(summary["discriminator"])
    assert disc(torch.zeros(3, 2), 0.5).shape == (3,)
