"""SFT-PG (Fan & Lee 2023): unbiased policy gradients against exact gradients, log-probs against
torch.distributions, rollouts against the library samplers, a short fine-tuning run, and exact resume."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from scorelab.core.denoisers import DiffusionModel
from scorelab.core.processes import Discrete
from scorelab.evaluation.metrics import sliced_w2
from scorelab.finetune.sft_pg import (
    SFTPGConfig,
    check_resume_config,
    generator_lr,
    gradient_penalty,
    make_policy_grid,
    paper_metric,
    pg_surrogate,
    policy_transition,
    rollout,
    sft_pg,
    step_surrogate,
)
from scorelab.samplers.accelerated import accel_stoch_noise, sample_accel_stoch
from scorelab.samplers.base import transition_log_prob
from scorelab.samplers.multistep import sample_ddim
from scorelab.samplers.sde import sample_ddpm

D64 = torch.float64
CONFIGS = {
    "ddpm": SFTPGConfig(sampler="ddpm"),
    "ddpm_small": SFTPGConfig(sampler="ddpm", variance="small", noise_last=False),
    "ddim": SFTPGConfig(sampler="ddim", eta=0.6),  # its last step into t = 0 is deterministic: pathwise term
    "accel_stoch": SFTPGConfig(sampler="accel_stoch"),
}


class AffineEps(DiffusionModel):
    """eps_theta(x, t) = theta_0 x + theta_1: every Gaussian step is affine in x, so x_0 is Gaussian with moments
    that are closed-form (differentiable) functions of theta."""

    def __init__(self, process, theta=(0.3, 0.2)):
        super().__init__()
        self.process = process
        self.theta = nn.Parameter(torch.tensor(theta, dtype=D64))

    def eps(self, x, t, **cond):
        return self.theta[0] * x + self.theta[1]


def f_reward(x):
    return ((x - 1.5) ** 2).sum(1)


def exact_objective(model, ts, config, k0=0, m=None, v=None):
    """E f(x_0) (and the moments) from step k0 with x_{k0} ~ N(m, v) (default the prior): propagate mean and variance
    through the affine Gaussian steps (accel_stoch: plus its model-free first stage).  Differentiable in theta."""
    m = torch.zeros((), dtype=D64) if m is None else m
    v = torch.ones((), dtype=D64) if v is None else v
    one, zero = torch.ones(1, 1, dtype=D64), torch.zeros(1, 1, dtype=D64)
    T = ts.shape[0] - 1
    for k in range(k0, T):
        t, s = ts[k], ts[k + 1]
        if config.sampler == "accel_stoch":
            v = v + accel_stoch_noise(model.process, zero, t, s)[1] ** 2
        b = policy_transition(model, zero, t, s, config)[0].reshape(())
        A = policy_transition(model, one, t, s, config)[0].reshape(()) - b
        std = torch.as_tensor(policy_transition(model, zero, t, s, config)[1], dtype=D64).reshape(())
        if k == T - 1 and not config.noise_last:
            std = std * 0
        m, v = A * m + b, A**2 * v + std**2
    return (m - 1.5) ** 2 + v, m, v


def exact_value(model, ts, config, k, x):
    """V_k(x) = E[f(x_0) | x_k = x] for the state x ``[B, 1]`` before step k (exact baseline)."""
    with torch.no_grad():
        _, m1, v = exact_objective(model, ts, config, k, torch.ones((), dtype=D64), torch.zeros((), dtype=D64))
        _, m0, _ = exact_objective(model, ts, config, k, torch.zeros((), dtype=D64), torch.zeros((), dtype=D64))
    mean = m0 + (m1 - m0) * x[:, 0]
    return (mean - 1.5) ** 2 + v


def grad_estimates(model, ts, config, estimator, n_groups=30, batch=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_groups):
        x_T = torch.randn(batch, 1, generator=g, dtype=D64)
        if estimator == "sft":
            val = f_reward(rollout(model, x_T, ts, config, g).x0).mean()
        else:
            with torch.no_grad():
                ro = rollout(model, x_T, ts, config, g)
            base = None
            if estimator == "pg_b":
                base = torch.stack([exact_value(model, ts, config, k, ro.xs[k]) for k in range(len(ro.inputs))])
            val = pg_surrogate(model, ro, f_reward, config, base).mean()
        out.append(torch.autograd.grad(val, model.theta)[0])
    return torch.stack(out)


@pytest.fixture(scope="module")
def tiny():
    process = Discrete.from_schedule("linear", 4, start=0.1, end=0.5)
    return process, make_policy_grid(process)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_policy_gradient_unbiased_and_baseline_reduces_variance(tiny, name):
    process, ts = tiny
    config = CONFIGS[name]
    model = AffineEps(process)
    exact = torch.autograd.grad(exact_objective(model, ts, config)[0], model.theta)[0]
    assert exact.abs().max() > 0.05  # the objective really depends on theta
    var = {}
    for est in ("pg", "pg_b", "sft"):
        G = grad_estimates(model, ts, config, est)
        mean, se = G.mean(0), G.std(0) / math.sqrt(G.shape[0])
        assert torch.all((mean - exact).abs() < 4.0 * se + 1e-9), (est, mean, exact, se)
        var[est] = G.var(0).sum()
    assert var["pg_b"] < 0.5 * var["pg"]  # the exact value baseline removes most of the PG variance


def test_biased_estimator_is_detected(tiny):
    """The check above has power: dropping the log-prob of the first step (a biased estimator) is caught."""
    process, ts = tiny
    config = CONFIGS["ddpm"]
    model = AffineEps(process)
    exact = torch.autograd.grad(exact_objective(model, ts, config)[0], model.theta)[0]
    g = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(30):
        with torch.no_grad():
            ro = rollout(model, torch.randn(2000, 1, generator=g, dtype=D64), ts, config, g)
        r = f_reward(ro.x0)
        val = sum(step_surrogate(model, ro.inputs[k], ro.xs[k + 1], ts[k], ts[k + 1], r, config).mean()
                  for k in range(1, len(ro.inputs)))
        grads.append(torch.autograd.grad(val, model.theta)[0])
    G = torch.stack(grads)
    assert torch.any((G.mean(0) - exact).abs() > 4.0 * G.std(0) / math.sqrt(30))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "accel_stoch"])
def test_log_probs_match_torch_distributions_and_rollout_matches_sampler(tiny, name):
    process, ts = tiny
    config = CONFIGS[name]
    model = AffineEps(process)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=D64)
    with torch.no_grad():
        ro = rollout(model, x_T, ts, config, torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        if name == "ddpm":
            ref = sample_ddpm(model, x_T, ts, generator=g, noise_last=True, progress=False)
        elif name == "ddim":
            ref = sample_ddim(model, x_T, ts, generator=g, eta=config.eta)
        else:
            ref = sample_accel_stoch(model, x_T, ts, generator=g, noise_last=True, progress=False)
        torch.testing.assert_close(ro.x0, ref)
        for k in range(len(ro.inputs)):
            if not bool(ro.stds[k].gt(0).all()):
                continue
            mean, std = policy_transition(model, ro.inputs[k], ts[k], ts[k + 1], config)
            std_b = torch.as_tensor(std, dtype=D64).reshape(-1, *([1] * (mean.ndim - 1))) * torch.ones_like(mean)
            ref_lp = torch.distributions.Normal(mean, std_b).log_prob(ro.xs[k + 1]).sum(1)
            ones = torch.ones(64, dtype=D64)
            lp = step_surrogate(model, ro.inputs[k], ro.xs[k + 1], ts[k], ts[k + 1], ones, config)
            torch.testing.assert_close(lp, ref_lp)
            torch.testing.assert_close(transition_log_prob(ro.xs[k + 1], mean, std), ref_lp)


# -- fine-tuning on a biased few-step sampler ------------------------------------------------------------------------
MU, S = torch.tensor([0.5, -0.3]), 0.1
SMALL_NETS = dict(critic_net={"name": "critic_mlp", "dim": 2, "width": 64},
                  baseline_net={"name": "vector_head", "dim": 2, "width": 64, "depth": 2, "activation": "relu",
                                "n_steps": 10})


class GaussianWithCorrection(DiffusionModel):
    """Exact denoiser of N(MU, S^2 I) data plus a learnable per-step affine correction (zero at start).  On the
    SFT-PG sigmoid chain with T = 10 (alpha_bar_T ~ 0.95) sampling from N(0, I) is strongly biased."""

    def __init__(self, process):
        super().__init__()
        self.process = process
        self.W = nn.Parameter(torch.zeros(process.N, 2, 2))
        self.c = nn.Parameter(torch.zeros(process.N, 2))

    def x0(self, x, t, **cond):
        t = torch.as_tensor(t, dtype=x.dtype)
        a, s = self._coefs(x, t)
        base = MU + a * S**2 / (a**2 * S**2 + s**2) * (x - a * MU)
        k = (t.double() * self.process.N).round().long().clamp(1, self.process.N).expand(x.shape[0]) - 1
        return base + torch.einsum("bij,bj->bi", self.W[k], x) + self.c[k]


@pytest.fixture(scope="module")
def biased():
    process = Discrete.from_schedule("sigmoid", 10, start=1e-5, end=1e-2)
    data = (MU + S * torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))).float()
    return process, data


def test_short_finetuning_reduces_sliced_w2(biased):
    process, data = biased
    torch.manual_seed(0)
    model = GaussianWithCorrection(process)
    cfg = SFTPGConfig(epochs=8, epoch_size=25, lr_generator=1e-2, eval_every=4, eval_samples=2000, **SMALL_NETS)
    before = paper_metric(model, data, cfg)
    floor = sliced_w2(data, (MU + S * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))), 100)
    assert before > 10 * floor  # the base T = 10 sampler is clearly biased
    res = sft_pg(model, data, cfg, progress=False)
    held_out = MU + S * torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    after = paper_metric(res.ema_model, held_out, cfg, seed=3)
    assert after < 0.7 * before, (before, after)
    assert [h["epoch"] for h in res.history] == list(range(1, 9)) and "metric" in res.history[3]


@pytest.mark.parametrize("lr_final", [None, 1e-3])
def test_resume_is_exact(biased, tmp_path, lr_final):
    process, data = biased
    cfg = SFTPGConfig(epochs=2, epoch_size=7, lr_generator=1e-2, lr_generator_final=lr_final, eval_every=0,
                      ckpt_every=1, **SMALL_NETS)
    full = sft_pg(GaussianWithCorrection(process), data, cfg, run_dir=tmp_path, progress=False)
    (tmp_path / "ckpt_00000014.json").unlink()  # "crash" before the second epoch's checkpoint
    res = sft_pg(GaussianWithCorrection(process), data, cfg, run_dir=tmp_path, resume=True, progress=False)
    for a, b in zip(full.model.parameters(), res.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(full.critic.parameters(), res.critic.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert res.history == full.history


def test_resume_refuses_changed_settings_and_may_extend(biased, tmp_path):
    process, data = biased
    cfg = SFTPGConfig(epochs=1, epoch_size=5, lr_generator=1e-2, eval_every=0, ckpt_every=1, **SMALL_NETS)
    sft_pg(GaussianWithCorrection(process), data, cfg, run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"lr_generator=0\.01 vs 0\.02"):
        sft_pg(GaussianWithCorrection(process), data, replace(cfg, lr_generator=2e-2), run_dir=tmp_path, resume=True,
               progress=False)
    cosine = replace(cfg, lr_generator_final=1e-3)
    with pytest.raises(ValueError, match="lr_generator_final"):
        sft_pg(GaussianWithCorrection(process), data, cosine, run_dir=tmp_path, resume=True, progress=False)
    res = sft_pg(GaussianWithCorrection(process), data, replace(cfg, epochs=2), run_dir=tmp_path, resume=True,
                 progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2]
    with pytest.raises(ValueError, match="epochs"):  # with a cosine lr, epochs fixes the schedule
        check_resume_config(replace(cosine, epochs=2).to_dict(), replace(cosine, epochs=3))


@pytest.mark.parametrize("method, generator_batch, expected", [
    ("sft_pg_b", None, 16), ("sft_pg_b", 96, 96), ("sft_pg_b", 10_000, 5 * 10 * 16), ("sft_pg", 96, 96),
    ("sft", 48, 48)])
def test_generator_batch_sets_the_transitions_per_generator_step(biased, monkeypatch, method, generator_batch,
                                                                 expected):
    """Each generator step sees ``generator_batch`` buffer transitions (default ``batch_size``; at most the buffer's
    n_critic x T x batch_size), or that many fresh chains for the reparameterised ``sft``."""
    import scorelab.finetune.sft_pg as mod
    process, data = biased
    seen = []
    if method == "sft":
        real = mod.rollout
        monkeypatch.setattr(mod, "rollout", lambda m, x_T, *a, **k: seen.append(x_T.shape[0]) or real(m, x_T, *a, **k))
    else:
        real = mod.step_surrogate
        monkeypatch.setattr(mod, "step_surrogate",
                            lambda m, x_in, *a, **k: seen.append(x_in.shape[0]) or real(m, x_in, *a, **k))
    cfg = SFTPGConfig(method=method, epochs=1, epoch_size=10, batch_size=16, generator_batch=generator_batch,
                      eval_every=0, ckpt_every=0, **SMALL_NETS)
    sft_pg(GaussianWithCorrection(process), data, cfg, progress=False)
    gen_calls = seen if method != "sft" else [n for n in seen if n != 16]  # the critic's rollouts have 16 chains
    assert gen_calls == [expected, expected], seen
    with pytest.raises(ValueError, match="generator_batch"):
        SFTPGConfig(generator_batch=0)


def test_gradient_penalty_is_exact_for_a_linear_critic_and_pairs_unequal_batches():
    """f(x) = w.x has ||grad f|| = ||w|| everywhere, so R_GP = (||w|| - 1)^2 whatever the interpolates; an epoch's
    last data batch may be shorter than the rollout batch."""
    class Linear(nn.Linear):  # critics take (x, t_in)
        def forward(self, x, t_in):
            return super().forward(x)

    critic = Linear(2, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[1.2, 1.6]]))  # ||w|| = 2
    g = torch.Generator().manual_seed(0)
    fake, real = torch.randn(128, 2, generator=g), torch.randn(16, 2, generator=g)
    assert gradient_penalty(critic, fake, real, g).item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[0.6, 0.8]]))  # a 1-Lipschitz critic: no penalty
    assert gradient_penalty(critic, real, fake, g).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_run_with_a_short_last_batch(biased):
    """40 data points in batches of 16: the third critic step sees 8 real points against 16 generated ones."""
    process, data = biased
    cfg = SFTPGConfig(epochs=1, batch_size=16, n_critic=3, gp_weight=10.0, eval_every=0, ckpt_every=0, **SMALL_NETS)
    res = sft_pg(GaussianWithCorrection(process), data[:40], cfg, progress=False)
    assert math.isfinite(res.history[0]["gap"])


def test_generator_lr_cosine():
    cfg = SFTPGConfig(epochs=11, lr_generator=1e-3, lr_generator_final=1e-5)
    lrs = [generator_lr(cfg, e) for e in range(11)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert lrs[5] == pytest.approx(0.5 * (1e-3 + 1e-5))  # cosine midpoint
    assert all(a > b for a, b in zip(lrs[:-1], lrs[1:], strict=True))
    assert generator_lr(SFTPGConfig(epochs=11), 7) == SFTPGConfig().lr_generator  # constant by default
    with pytest.raises(ValueError, match="lr_generator_final"):
        SFTPGConfig(lr_generator=1e-4, lr_generator_final=1e-3)


def test_config_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        SFTPGConfig(method="ppo")
    with pytest.raises(ValueError, match="Gaussian policy"):
        SFTPGConfig(sampler="dpm_solver_pp_2m")
    with pytest.raises(ValueError, match="n_critic"):
        SFTPGConfig(n_critic=0)
    with pytest.raises(ValueError, match="native"):
        make_policy_grid(Discrete.from_schedule("linear", 10), n_steps=5)
