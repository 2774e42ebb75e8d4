"""f-Restart (finetune/f_restart.py): the environment against the sampler and the exact forward process, the f-PG
estimator against a closed-form gradient on a tiny discrete MDP, PPO clipping, reproducibility, resume, CLI."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from scorelab.cli.main import main
from scorelab.core.analytic import GaussianMixture, ring_mixture
from scorelab.core.processes import VP
from scorelab.finetune import f_restart as fr
from scorelab.samplers.base import SAMPLERS


def _model(dtype=torch.float32):
    return ring_mixture(8, 2.0, 0.1).as_model(VP())


def _always(policy: fr.RestartPolicy, noise: bool) -> fr.RestartPolicy:
    out = policy.net.trunk.out
    torch.nn.init.zeros_(out.weight)
    torch.nn.init.constant_(out.bias, 30.0 if noise else -30.0)
    return policy


@pytest.mark.parametrize("sampler", ["heun", "dpm_solver_1"])
def test_ode_actions_are_the_samplers_steps(sampler):
    """A policy that always takes the ODE step reproduces the registered sampler over the same grid, NFE counted."""
    model, cfg = _model(), fr.FRestartConfig(sampler=sampler, steps=6)
    env = fr.RestartEnv(model, cfg)
    pol = _always(fr.RestartPolicy(2), noise=False)
    ep = fr.rollout(env, pol, 64, torch.Generator().manual_seed(3), greedy=True)
    x_T = env.reset(64, torch.Generator().manual_seed(3)).x
    ref = SAMPLERS[sampler].fn(model, x_T, env.ts.to(torch.float32), **env.step_opts)  # Heun: Alg. 1 steps
    assert torch.equal(ep.x0, ref)
    assert int(ep.nfe[0]) == env.base_nfe == SAMPLERS[sampler].planned_nfe(6, final_zero=True, **env.step_opts)
    assert bool((ep.nfe == ep.nfe[0]).all()) and not bool(ep.noise.any())


def test_noise_action_is_the_exact_forward_transition():
    """Noise from level k maps the exact diffused law of a Gaussian at t_k onto the one at t_{k-1} (exact moments,
    5 standard errors), costs no evaluation and moves one level up."""
    p, m, s2 = VP(), torch.tensor([1.5, -0.5], dtype=torch.float64), 0.3
    gm = GaussianMixture(torch.ones(1), m[None], s2)
    env = fr.RestartEnv(gm.as_model(p), fr.FRestartConfig(steps=5))
    n, k, g = 200_000, 3, torch.Generator().manual_seed(0)
    x0 = gm.sample(n, g)
    x, _ = p.marginal_sample(x0, torch.full((n,), float(env.ts[k]), dtype=torch.float64), g)
    st = fr.EnvState(x, torch.full((n,), k), 0, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool))
    out = env.step(st, torch.ones(n, dtype=torch.bool), g)
    a, sg, _ = (float(v) for v in p.coefs(env.ts[k - 1]))
    var = a * a * s2 + sg * sg
    assert bool((out.k == k - 1).all()) and int(out.nfe.sum()) == 0
    assert torch.all((out.x.mean(0) - a * m).abs() < 5 * math.sqrt(var / n))
    assert torch.all((out.x.var(0) - var).abs() < 5 * var * math.sqrt(2 / n))
    cross = ((out.x[:, 0] - a * m[0]) * (out.x[:, 1] - a * m[1])).mean()
    assert abs(float(cross)) < 5 * var / math.sqrt(n)


def test_budget_and_length_masks_always_finish():
    """With a budget, random policies end at t = 0 within the budget and L steps; noise obeys noise_t_max."""
    cfg = fr.FRestartConfig(steps=5, nfe_budget=13, episode_length=12, noise_t_max=0.5)
    env = fr.RestartEnv(_model(), cfg)
    pol = _always(fr.RestartPolicy(2, markov=True), noise=True)
    ep = fr.rollout(env, pol, 32, torch.Generator().manual_seed(1))
    assert bool((ep.k_final == env.T).all()) and int(ep.nfe.max()) <= 13 and ep.noise.shape[0] <= 12
    assert bool(ep.noise.any())
    t_up = env.ts[(ep.ks[:-1] - 1).clamp(min=0)]
    assert bool((t_up[ep.noise] <= 0.5).all())
    with pytest.raises(ValueError, match="nfe_budget"):
        fr.RestartEnv(_model(), fr.FRestartConfig(steps=5, nfe_budget=5))


def test_greedy_rollouts_reproducible_from_seed():
    env = fr.RestartEnv(_model(), fr.FRestartConfig(steps=5))
    torch.manual_seed(0)
    pol = fr.RestartPolicy(2)
    a, ia = fr.sample_f_restart(env, pol, 50, seed=7)
    b, ib = fr.sample_f_restart(env, pol, 50, seed=7)
    c, _ = fr.sample_f_restart(env, pol, 50, seed=8)
    assert torch.equal(a, b) and ia == ib and not torch.equal(a, c)


# -- the f-PG estimator on a tiny discrete MDP -------------------------------------------------------------------
T_, L_ = 3, 6


def _valid(k: int, l: int) -> tuple[bool, bool]:
    """The ``finish`` masks of RestartEnv on levels 0..T (T = t = 0, terminal)."""
    return k < T_, k >= 1 and (L_ - l - 1) >= T_ - (k - 1)


def _exact(psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected visits E[eta(k)] ``[T+1]`` and E|tau| by enumerating every trajectory (p(Noise | k) = sigmoid)."""
    visits, zero = torch.zeros(T_ + 1, dtype=torch.float64), psi.sum() * 0
    frontier = [(0, 0, zero + 1)]
    while frontier:
        k, l, prob = frontier.pop()
        visits = visits + prob * torch.nn.functional.one_hot(torch.tensor(k), T_ + 1)
        if k == T_:
            continue
        can_ode, can_noise = _valid(k, l)
        pn = torch.sigmoid(psi[k]) if (can_ode and can_noise) else (zero + float(can_noise and not can_ode))
        if can_noise:
            frontier.append((k - 1, l + 1, prob * pn))
        frontier.append((k + 1, l + 1, prob * (1 - pn)))
    return visits, visits.sum()


def _simulate(psi: torch.Tensor, n: int, g: torch.Generator):
    """n trajectories as Episode-like tensors: ks [S, n], alive [S, n], noise/free [S-1, n]."""
    k, done = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    ks, alive, noise, free = [k], [~done], [], []
    for l in range(L_):
        v = [_valid(int(j), l) for j in range(T_ + 1)]
        co, cn = torch.tensor([a for a, _ in v])[k] & ~done, torch.tensor([b for _, b in v])[k] & ~done
        fr_ = co & cn
        a = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(psi.detach())[k]
        nz = torch.where(fr_, a, cn & ~co)
        k = torch.where(done, k, torch.where(nz, k - 1, k + 1))
        done = done | (k == T_)
        ks.append(k)
        alive.append(alive[-1] & ~((ks[-2] == T_)))
        noise.append(nz & ~(ks[-2] == T_))
        free.append(fr_)
    return torch.stack(ks), torch.stack(alive), torch.stack(noise), torch.stack(free)


@pytest.mark.parametrize("f", fr.F_DIVERGENCES)
def test_fpg_estimator_unbiased_against_closed_form(f):
    """E[surrogate gradient] = Z grad D_f(p_psi || p*) (eq. 4.7 with the visitation of eq. 4.4, variable lengths):
    the PPO surrogate's autograd gradient at psi = psi' averaged over 40k trajectories matches the exact gradient
    of D_f computed by enumerating all trajectories, within 4 standard errors."""
    psi = torch.tensor([0.0, 0.3, -0.4, 0.0], dtype=torch.float64, requires_grad=True)
    p_star = torch.tensor([0.2, 0.3, 0.3, 0.2], dtype=torch.float64)
    visits, Z = _exact(psi)
    log_u = torch.log(visits / Z / p_star)
    gens = {"kl": lambda u: u * torch.log(u), "rkl": lambda u: -torch.log(u), "chi2": lambda u: (u - 1) ** 2,
            "js": lambda u: u * torch.log(u) - (1 + u) * torch.log((1 + u) / 2)}
    D = (p_star * gens[f](torch.exp(log_u))).sum()
    (exact,) = torch.autograd.grad(D, psi)
    fp = fr.f_prime(f, log_u.detach())
    center = float((visits.detach() / Z.detach() * fp).sum())
    n = 40_000
    ks, alive, noise, free = _simulate(psi, n, torch.Generator().manual_seed(0))
    c = fp[ks] * alive
    F_rtg = fr.returns_to_go(c, alive, 1.0, center)
    logit = psi[ks[:-1]]
    logp = torch.where(free, torch.nn.functional.logsigmoid(torch.where(noise, logit, -logit)), 0 * logit)
    loss = fr.fpg_surrogate(logp, logp.detach(), F_rtg, free, 0.2)
    (est,) = torch.autograd.grad(loss, psi)
    per = torch.stack([((F_rtg * (noise.double() - torch.sigmoid(logit.detach())) * free * (ks[:-1] == j)).sum(0))
                       for j in range(T_ + 1)], 1)  # [n, T+1]: per-trajectory estimates
    assert torch.allclose(est, per.mean(0), atol=1e-10)
    se = per.std(0) / math.sqrt(n)
    target = float(Z.detach()) * exact
    assert torch.all((est - target).abs() <= 4 * se + 1e-12), (est, target, se)
    assert float(exact[1:3].abs().min()) > 8 * float(se[1:3].max()) / float(Z.detach())  # detects a wrong one


def test_ppo_clipping_bounds_the_update():
    """Maximising the clipped surrogate moves each ratio at most to the clip boundary (gradient 0 beyond it); the
    unclipped one runs away."""
    g = torch.Generator().manual_seed(0)
    logp_old = torch.log(torch.rand(1, 200, generator=g, dtype=torch.float64) * 0.8 + 0.1)
    F_rtg = torch.randn(1, 200, generator=g, dtype=torch.float64)
    mask, eps = torch.ones(1, 200, dtype=torch.bool), 0.2
    ratios = {}
    for clip in (eps, None):
        z = torch.zeros(1, 200, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([z], lr=0.5)
        for _ in range(100):
            loss = fr.fpg_surrogate(logp_old + z, logp_old, F_rtg, mask, clip)
            opt.zero_grad()
            (loss * 200).backward()
            opt.step()
        ratios[clip] = torch.exp(z).detach()
    r, A = ratios[eps], -F_rtg
    step = 0.5 * A.abs() * (1 + eps)  # the last SGD step can cross the boundary by at most this (in log r)
    assert bool((r[A > 0] <= (1 + eps) * torch.exp(step[A > 0]) + 1e-12).all())
    assert bool((r[A < 0] >= (1 - eps) * torch.exp(-step[A < 0]) - 1e-12).all())
    assert float(ratios[None][A > 0].max()) > 2.0 * float(r[A > 0].max())  # unclipped goes far further
    z = torch.tensor([[math.log(1.5), math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    fr.fpg_surrogate(z, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[-1.0, 1.0]], dtype=torch.float64),
                     torch.ones(1, 2, dtype=torch.bool), eps).backward()
    assert torch.equal(z.grad, torch.zeros_like(z.grad))  # outside the band in the improving direction: no gradient


def test_f_prime_matches_autograd_and_time_weight():
    u = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64, requires_grad=True)
    gens = {"kl": lambda u: u * torch.log(u), "rkl": lambda u: -torch.log(u), "chi2": lambda u: (u - 1) ** 2,
            "js": lambda u: u * torch.log(u) - (1 + u) * torch.log((1 + u) / 2)}
    for name, f in gens.items():
        (d,) = torch.autograd.grad(f(u).sum(), u)
        assert torch.allclose(fr.f_prime(name, torch.log(u.detach())), d)
    assert torch.allclose(fr.time_weight("linear", torch.tensor([0.0, 0.25, 1.0])), torch.tensor([1.0, 0.75, 0.0]))
    with pytest.raises(ValueError, match="f-divergence"):
        fr.f_prime("tv", u)


def test_train_resume_bit_exact(tmp_path):
    """Two iterations in one go equal one iteration, a checkpoint, and a resumed second iteration."""
    model = _model()
    data = ring_mixture(8, 2.0, 0.1).sample(500, torch.Generator().manual_seed(0)).float()
    cfg = fr.FRestartConfig(steps=3, iterations=2, batch_size=16, disc_steps=3, disc_batch=32, ckpt_every=1,
                            markov=True, nfe_target=6.0)
    full = fr.train_f_restart(model, data, cfg, run_dir=tmp_path / "a", progress=False)
    fr.train_f_restart(model, data, fr.FRestartConfig(**{**cfg.__dict__, "iterations": 1}), run_dir=tmp_path / "b",
                       progress=False)
    res = fr.train_f_restart(model, data, cfg, run_dir=tmp_path / "b", resume=True, progress=False)
    assert res.history == full.history
    for a, b in zip(full.policy.parameters(), res.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="cannot resume"):
        fr.train_f_restart(model, data, fr.FRestartConfig(**{**cfg.__dict__, "f": "js"}), run_dir=tmp_path / "b",
                           resume=True, progress=False)


def test_cli_smoke_and_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["finetune", "f-restart", "--model", "gmm:ring8", "--out", str(out), "--quiet", "--set",
                 "steps=3", "iterations=1", "batch_size=8", "disc_steps=2", "disc_batch=16", "eval_samples=64",
                 "data_n=200", "nfe_budget=8"])
    assert code == 0 and (out / "f_restart_result.json").is_file()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["sampler"] == "heun" and prov["model"] == "gmm:ring8" and prov["argv"][1:3] == ["finetune", "f-restart"]
    assert "sliced_w2_f_restart" in capsys.readouterr().out
    for bad in (["f=tv"], ["steps=0"], ["nfe_budget=2", "steps=3"], ["bogus=1"], ["sampler=ddpm"]):
        code = main(["finetune", "f-restart", "--model", "gmm:ring8", "--out", str(tmp_path / "x"), "--quiet",
                     "--set", *bad])
        assert code == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("scorelab: error:") and len(err.strip().splitlines()) == 1
    assert main(["finetune", "f-restart", "--model", "gmm:ring8", "--out", str(out), "--quiet", "--set",
                 "steps=3"]) == 2  # an existing run is never overwritten


def test_config_validation():
    for kw in ({"episode": "fixed", "nfe_budget": 30}, {"episode_length": 2, "steps": 5}, {"clip_eps": 1.5},
               {"time_weight": "quadratic"}, {"center": "x"}):
        with pytest.raises(ValueError):
            fr.FRestartConfig(**kw)
    assert list(itertools.islice(fr.F_DIVERGENCES, 4)) == ["kl", "rkl", "chi2", "js"]


def test_image_shaped_model_trains_and_samples():
    """On an image model ``(1, 8, 8)`` the discriminator is an ``ImageHead`` with ``disc_width`` base channels, an
    iteration of Alg. 7 runs, the always-ODE policy reproduces the sampler and samples keep the image shape."""
    from scorelab.core.denoisers import NetworkModel
    from scorelab.nets import ImageHead, UNet

    torch.manual_seed(0)
    model = NetworkModel(UNet(1, base_channels=8, channel_mults=(1,), attn_resolutions=(), mid_attention=False), VP(),
                         "eps").eval().requires_grad_(False)
    cfg = fr.FRestartConfig(sampler="dpm_solver_1", steps=4, nfe_budget=6, iterations=1, batch_size=8,
                            disc_steps=2, disc_batch=8, disc_width=8, ckpt_every=0)
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    res = fr.train_f_restart(model, data, cfg, progress=False)
    assert isinstance(res.disc.net, ImageHead) and res.disc.net.config()["base_channels"] == 8
    x, info = fr.sample_f_restart(res.env, res.policy, 5, seed=1, shape=(1, 8, 8))
    assert x.shape == (5, 1, 8, 8) and info["nfe_max"] <= 6 and bool(torch.isfinite(x).all())
    ep = fr.rollout(res.env, _always(fr.RestartPolicy(64), noise=False), 5, torch.Generator().manual_seed(2),
                    greedy=True, shape=(1, 8, 8))
    x_T = res.env.reset(5, torch.Generator().manual_seed(2), shape=(1, 8, 8)).x
    assert torch.equal(ep.x0, SAMPLERS["dpm_solver_1"].fn(model, x_T, res.env.ts.to(torch.float32)))
