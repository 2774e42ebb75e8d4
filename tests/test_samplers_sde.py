"""DDPM ancestral, reverse-SDE Euler-Maruyama, predictor-corrector and annealed Langevin samplers (float64 oracles)."""
import math

import pytest
import torch
from _sampler_oracles import F64, EpsOnly, lam_grid, mixture, prior, sliced_w2  # noqa: E402

from scorelab.core.analytic import GaussianMixture
from scorelab.core.processes import EDM, VE, VP, Discrete, SubVP, VPCosine
from scorelab.samplers import SAMPLERS
from scorelab.samplers.base import transition_log_prob
from scorelab.samplers.pc import langevin_transition, sample_annealed_langevin, sample_pc
from scorelab.samplers.sde import (
    ddpm_transition,
    euler_maruyama_transition,
    posterior_coefs,
    sample_ddpm,
    sample_euler_maruyama,
)


def mode_error(gm, x):
    return float((gm.responsibilities(x).mean(0) - gm.weights).abs().max())


# -- DDPM on a Discrete chain's own grid ----------------------------------------------------------------
def test_posterior_coefs_match_discrete_chain():
    p = Discrete.from_schedule("linear", 50)
    ts = p.times().flip(0)
    for i in range(p.N, 0, -1):
        t, s = ts[p.N - i], ts[p.N - i + 1]
        c = posterior_coefs(p, t, s)
        c0, ci, beta_tilde = p.posterior_coefs(i)
        torch.testing.assert_close(c["c_x"], ci, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c["c_0"], c0, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c["var_small"], beta_tilde, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(c["var_large"], p.betas[i - 1], rtol=1e-10, atol=1e-14)  # "large" = beta_t


def test_ddpm_transition_is_ho_alg2_on_discrete_grid():
    p = Discrete.from_schedule("cosine", 20)
    model = mixture().as_model(p)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for i in (20, 11, 1):
        t, s = torch.tensor(i / 20, dtype=F64), torch.tensor((i - 1) / 20, dtype=F64)
        mean, std = ddpm_transition(model, x, t, s, variance="large")
        a, ab, b = p.alphas[i - 1], p.alpha_bar[i], p.betas[i - 1]
        ho = (x - b / (1 - ab).sqrt() * model.eps(x, t)) / a.sqrt()  # Alg. 2, line 4
        torch.testing.assert_close(mean, ho, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(std, b.sqrt(), rtol=1e-10, atol=0)
        _, std_small = ddpm_transition(model, x, t, s, variance="small")
        torch.testing.assert_close(std_small ** 2, p.posterior_coefs(i)[2], rtol=1e-10, atol=1e-15)


def test_ddpm_reproduces_sft_pg_toy_sampler():
    """SFT-PG toy code: x_{t-1} = (x_t - beta_t/sqrt(1-abar_t) eps)/sqrt(alpha_t) + sqrt(beta_t) z at every step."""
    p = Discrete.from_schedule("sigmoid", 10)
    model = mixture().as_model(p)
    x_T = prior(p, 64, 0)
    out = sample_ddpm(model, x_T, p.times().flip(0), generator=torch.Generator().manual_seed(1),
                      variance="large", noise_last=True, progress=False)
    g, x = torch.Generator().manual_seed(1), x_T
    for i in range(p.N, 0, -1):
        t = torch.tensor(i / p.N, dtype=F64)
        b, ab = p.betas[i - 1], p.alpha_bar[i]
        x = (x - b / (1 - ab).sqrt() * model.eps(x, t)) / (1 - b).sqrt()
        x = x + b.sqrt() * torch.randn(x.shape, generator=g, dtype=F64)
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_ddpm_small_variance_is_invariant_under_process_change():
    """With beta_tilde the step in the scaled variable x/alpha depends only on the log-SNR values: EDM and VP grids
    with equal log-SNR give the same samples of x/alpha (same noise draws).  ("large" is not invariant: sigma_{t|s}^2
    depends on alpha_{t|s}, as DDPM's beta_t does.)"""
    gm, vp, edm = mixture(), VP(), EDM()
    lam = torch.linspace(-6.0, 6.0, 13, dtype=F64)  # increasing log-SNR = decreasing time
    ts_vp, ts_edm = vp.t_from_log_snr(lam), edm.t_from_log_snr(lam)
    y = prior(vp, 32, 3) * math.exp(-lam[0] / 2)  # a sample of x/alpha at the first time
    kw = dict(variance="small", noise_last=True, progress=False)
    x_vp = sample_ddpm(gm.as_model(vp), y * vp.alpha(ts_vp[0]), ts_vp, generator=torch.Generator().manual_seed(4), **kw)
    x_edm = sample_ddpm(gm.as_model(edm), y, ts_edm, generator=torch.Generator().manual_seed(4), **kw)
    torch.testing.assert_close(x_vp / vp.alpha(ts_vp[-1]), x_edm, rtol=1e-8, atol=1e-8)


# -- transitions, trajectories, NFE ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddpm", "euler_maruyama"])
def test_recorded_log_probs_match_torch_normal(name):
    p = VP()
    model = mixture().as_model(p)
    ts = lam_grid(p, 6)
    traj = SAMPLERS[name].fn(model, prior(p, 16, 0), ts, generator=torch.Generator().manual_seed(2),
                             return_trajectory=True, noise_last=True, progress=False)
    step = ddpm_transition if name == "ddpm" else euler_maruyama_transition
    for i in range(6):
        mean, std = step(model, traj.xs[i], ts[i], ts[i + 1])  # pure: recomputed from the stored state
        torch.testing.assert_close(mean, traj.means[i], rtol=1e-12, atol=1e-12)
        ref = torch.distributions.Normal(mean, std).log_prob(traj.xs[i + 1]).sum(-1)
        torch.testing.assert_close(traj.log_probs[i], ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(transition_log_prob(traj.xs[i + 1], mean, std), ref, rtol=1e-10, atol=1e-10)


def test_langevin_transition_log_prob():
    p = VE()
    model = mixture().as_model(p)
    x = prior(p, 8, 0) / 20
    mean, std = langevin_transition(model, x, torch.tensor(0.3, dtype=F64), step_size=torch.rand(8, dtype=F64) + 0.1)
    y = mean + std[:, None] * torch.randn(8, 2, dtype=F64)
    ref = torch.distributions.Normal(mean, std[:, None].expand_as(mean)).log_prob(y).sum(-1)
    torch.testing.assert_close(transition_log_prob(y, mean, std), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,opts,nfe", [
    ("ddpm", {}, 5), ("euler_maruyama", {}, 5), ("pc", {"n_corrector": 2}, 15),
    ("pc", {"predictor": "none", "n_corrector": 1, "step_norm": "expected"}, 5),
    ("annealed_langevin", {"n_steps": 3, "eps": 1e-5}, 15),
])
def test_trajectory_shapes_and_exact_nfe(name, opts, nfe):
    p = VP()
    model = mixture().as_model(p)
    ts = lam_grid(p, 5)
    traj = SAMPLERS[name].fn(model, prior(p, 4, 0), ts, generator=torch.Generator().manual_seed(0),
                             return_trajectory=True, progress=False, **opts)
    assert len(traj.xs) == 6 and all(x.shape == (4, 2) for x in traj.xs)
    assert traj.ts.shape == (6,) and traj.log_probs.shape == (5, 4)
    assert traj.nfe == nfe
    gaussian = torch.isfinite(traj.log_probs).all(1)
    if name in ("ddpm", "euler_maruyama"):
        assert gaussian[:-1].all() and not gaussian[-1]  # noise_last=False: the last step is deterministic
    if name == "pc" and opts.get("predictor") == "none":
        assert gaussian[:-1].all()  # a single "expected"-rule corrector step is an exact Gaussian


def test_grid_ending_at_zero_and_per_sample_grid():
    gm = mixture()
    for p in (EDM(), VP(), Discrete.from_schedule("linear", 100)):
        ts = torch.cat([lam_grid(p, 8)[:-1], torch.zeros(1, dtype=F64)])
        for name in ("ddpm", "euler_maruyama", "pc", "annealed_langevin"):
            opts = {"eps": 1e-6, "n_steps": 2} if name == "annealed_langevin" else {}
            x = SAMPLERS[name].fn(gm.as_model(p), prior(p, 8, 0), ts, generator=torch.Generator().manual_seed(0),
                                  progress=False, **opts)
            assert torch.isfinite(x).all(), (p.name, name)
    # a [n+1, B] grid equals running each sample on its own 1-D grid (deterministic last step, same per-row grid)
    p = VP()
    model = gm.as_model(p)
    ts = torch.stack([lam_grid(p, 6), lam_grid(p, 6, 0.8, 0.01)], 1)
    x_T = prior(p, 2, 5)
    x = sample_ddpm(model, x_T, ts, generator=torch.Generator().manual_seed(1), variance="small", progress=False)
    mean0, _ = ddpm_transition(model, x_T, ts[0], ts[1], variance="small")
    mean0_row1, std_row1 = ddpm_transition(model, x_T[1:], ts[0, 1], ts[1, 1], variance="small")
    torch.testing.assert_close(mean0[1:], mean0_row1, rtol=1e-12, atol=1e-12)
    assert x.shape == (2, 2) and std_row1.ndim == 0


# -- convergence to the target ---------------------------------------------------------------------------
# The sliced W2 between two independent 3000-sample sets of this mixture fluctuates between ~0.03 and ~0.15 and mode
# weights by ~0.01-0.03 (mode counts, seed of x_T), hence the absolute bounds; on the coarse grid (n = 5) every
# sampler is at SW2 >= 0.34 (>= 0.45 except annealed Langevin) and mostly far worse.
CONV = [
    ("ddpm", {}), ("ddpm", {"variance": "small"}), ("euler_maruyama", {}),
    ("pc", {"snr": 0.05, "step_norm": "batch"}), ("pc", {"predictor": "ddpm", "snr": 0.01}),
    ("annealed_langevin", {"n_steps": 10}),
]


@pytest.mark.parametrize("proc", [VP(), EDM(), Discrete.from_schedule("linear", 1000)], ids=lambda p: p.name)
@pytest.mark.parametrize("name,opts", CONV, ids=lambda v: str(v))
def test_samplers_approach_the_target(proc, name, opts):
    gm, b = mixture(), 3000
    target = gm.sample(b, torch.Generator().manual_seed(123))
    model, errs = gm.as_model(proc), []
    for n in (5, 25 if name == "annealed_langevin" else 50):
        o = dict(opts)
        if name == "annealed_langevin":
            sig_l = float(proc.sigma(torch.tensor(proc.t_min, dtype=F64)) / proc.alpha(torch.tensor(proc.t_min)))
            o["eps"] = 0.5 * sig_l**2
        x = SAMPLERS[name].fn(model, prior(proc, b, 1), lam_grid(proc, n), generator=torch.Generator().manual_seed(2),
                              progress=False, **o)
        errs.append((sliced_w2(x, target), mode_error(gm, x)))
    assert errs[1][0] < 0.6 * errs[0][0], errs
    assert errs[1][0] < 0.3 and errs[1][1] < 0.06, errs


@pytest.mark.parametrize("proc", [SubVP(), VPCosine(), VE()], ids=lambda p: p.name)
def test_ddpm_and_euler_maruyama_on_other_processes(proc):
    gm, b = mixture(), 3000
    target = gm.sample(b, torch.Generator().manual_seed(123))
    for fn in (sample_ddpm, sample_euler_maruyama):
        x = fn(gm.as_model(proc), prior(proc, b, 1), lam_grid(proc, 50), generator=torch.Generator().manual_seed(2),
               progress=False)
        assert sliced_w2(x, target) < 0.2 and mode_error(gm, x) < 0.05, (proc.name, fn.__name__)


@pytest.mark.parametrize("step_norm,d", [("batch", 2), ("expected", 64), ("sample", 64)])
def test_langevin_corrector_alone_relaxes_to_the_marginal(step_norm, d):
    """predictor='none': corrector steps at t_1 turn an over-dispersed start (1.5 x a sample of p_{t_1}) into samples
    of p_{t_1} (Gaussian data: Var p_t = 0.09 + sigma_t^2 per coordinate; eps ~ 2 snr^2 Var, so ~1/(2 snr^2) steps).
    The per-sample rules need norms that concentrate (d = 64); in d = 2 they are heavy-tailed (see pc.py)."""
    proc, b = VE(), 2000 if d == 2 else 500
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, d, dtype=F64), 0.09)
    ts = torch.tensor([0.31, 0.3], dtype=F64)
    var_t1 = 0.09 + float(proc.sigma(ts[1])) ** 2
    x_start = 1.5 * var_t1**0.5 * torch.randn(b, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = sample_pc(gm.as_model(proc), x_start, ts, predictor="none", n_corrector=250, snr=0.12, step_norm=step_norm,
                  noise_last=True, generator=torch.Generator().manual_seed(2), progress=False)
    assert abs(float(x.var(0).mean()) / var_t1 - 1) < 0.1, float(x.var(0).mean()) / var_t1
    assert float(x.mean(0).abs().max()) < 0.1


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_options_raise():
    p = VP()
    model, x, ts = mixture().as_model(p), prior(p, 4, 0), lam_grid(p, 4)
    bad = [
        (sample_pc, {"predictor": "heun"}), (sample_pc, {"snr": -0.1}), (sample_pc, {"snr": 0.0}),
        (sample_pc, {"n_corrector": -1}), (sample_pc, {"n_corrector": 1.5}), (sample_pc, {"step_norm": "median"}),
        (sample_pc, {"predictor": "none", "n_corrector": 0}), (sample_ddpm, {"variance": "medium"}),
        (sample_annealed_langevin, {"eps": -1.0}), (sample_annealed_langevin, {"n_steps": 0}),
        (sample_annealed_langevin, {"eps": 1.0}),  # unstable: eps >= 4 sigma_L^2
    ]
    for fn, opts in bad:
        with pytest.raises(ValueError):
            fn(model, x, ts, progress=False, **opts)
    with pytest.raises(ValueError):
        sample_ddpm(model, x, ts.flip(0), progress=False)  # increasing grid
    with pytest.raises(ValueError):
        sample_euler_maruyama(model, x, torch.stack([ts, ts, ts], 1), progress=False)  # [n+1, 3] grid for B=4
    with pytest.raises(ValueError):
        sample_ddpm(model, x, torch.tensor([2.0, 0.5], dtype=F64), progress=False)  # outside [0, t_max]
    with pytest.raises(ValueError):
        langevin_transition(model, x, 0.5, step_size=0.0)


# -- small budgets: the last step onto sigma = 0, PC's predictor on VE-type processes ---------------------------
@pytest.mark.parametrize("proc", [EDM(), VP(), Discrete.from_schedule("linear", 1000)], ids=["edm", "vp", "ddpm"])
def test_euler_maruyama_last_step_onto_zero_is_the_denoiser(proc):
    """A last step onto sigma = 0 returns alpha_0 x0_hat(x_t, t) (the denoiser), on every process; the Euler step there
    would return x + g^2 h score (on EDM: 2 x0_hat - x, a reflection that keeps the noise of x)."""
    gm = mixture()
    model = gm.as_model(proc)
    t = torch.tensor(0.5 if proc.name != "edm" else 5.0, dtype=F64)
    x, _ = proc.marginal_sample(gm.sample(256, generator=torch.Generator().manual_seed(3)), t,
                                generator=torch.Generator().manual_seed(4))
    ts = torch.tensor([float(t), 0.0], dtype=F64)
    out = sample_euler_maruyama(model, x, ts)
    torch.testing.assert_close(out, proc.alpha(torch.zeros((), dtype=F64)) * model.x0(x, t), rtol=1e-10, atol=1e-10)
    euler = sample_euler_maruyama(model, x, ts, noise_last=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(euler, out, atol=1e-3)  # a noisy last step keeps Euler-Maruyama (a Gaussian policy)
    for dtype in (F64, torch.float32):  # the eps-native fast path, after the denoiser's run on the same cached grid
        xd, eps_model = x.to(dtype), EpsOnly(model)
        sample_euler_maruyama(eps_model, xd, ts.to(dtype))
        mean = (sample_euler_maruyama(eps_model, xd, ts.to(dtype), noise_last=True, return_trajectory=True,
                                      generator=torch.Generator().manual_seed(0)).means[-1])
        em_mean = xd + (proc.diffusion_sq(t) * t).to(dtype) * eps_model.score(xd, t.to(dtype)) \
            - (proc.drift_coef(t) * t).to(dtype) * xd
        torch.testing.assert_close(mean, em_mean, rtol=1e-4, atol=1e-4)  # the Euler step, not the cached denoiser


def test_pc_auto_predictor_per_process():
    from scorelab.samplers.pc import resolve_predictor

    assert resolve_predictor("auto", EDM()) == "ddpm" and resolve_predictor("auto", VE()) == "ddpm"
    for p in (VP(), SubVP(), VPCosine(), Discrete.from_schedule("linear", 100)):
        assert resolve_predictor("auto", p) == "euler_maruyama"
    assert resolve_predictor("euler_maruyama", EDM()) == "euler_maruyama"


def test_pc_on_edm_at_nfe_5_does_not_diverge():
    """PC with 3 levels on EDM (grid 80 -> 10 -> 1 -> 0.002, 5 evaluations): Song et al.'s VE predictor (the
    default "auto" here) keeps the samples at the data's scale; Euler-Maruyama's mean overshoots x0_hat once
    sigma_s < sigma_t / 2 and leaves samples far away (the divergence measured on the grid panel)."""
    proc, gm = EDM(), mixture()
    model, x_T = gm.as_model(proc), prior(proc, 2000, 0)
    ts = torch.tensor([80.0, 10.0, 1.0, 0.002], dtype=F64)
    out = {pr: sample_pc(model, x_T, ts, predictor=pr, generator=torch.Generator().manual_seed(1))
           for pr in ("auto", "euler_maruyama")}
    spread = {pr: float(torch.cdist(x, gm.means).min(1).values.median()) for pr, x in out.items()}
    assert spread["auto"] < 1.0 < 10.0 < spread["euler_maruyama"], spread
