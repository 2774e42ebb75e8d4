"""Accelerated samplers of Li, Huang, Efimov, Wei, Chi & Chen 2024 (source 003, Part 2) against float64 oracles."""
import math

import pytest
import torch
from _sampler_oracles import F64, lam_grid, mixture, prior, sliced_w2  # noqa: E402
from torchdiffeq import odeint

from scorelab.core.analytic import ring_mixture
from scorelab.core.processes import EDM, VP, Discrete
from scorelab.samplers import SAMPLERS
from scorelab.samplers.accelerated import (
    accel_stoch_transition,
    sample_accel_det,
    sample_accel_det_1eval,
    sample_accel_stoch,
    score_vp,
    step_alpha,
)
from scorelab.samplers.sde import sample_ddpm


def ode_reference(model, x, t0, t1):
    """Probability-flow ODE dx/dt = f x - g^2/2 score from t0 to t1 (dopri5, rtol = atol = 1e-9)."""
    p = model.process

    def f(t, y):
        t = t.clamp(min(t0, t1), max(t0, t1))
        return p.drift_coef(t) * y - 0.5 * p.diffusion_sq(t) * model.score(y, t)

    return odeint(f, x, torch.tensor([t0, t1], dtype=F64), rtol=1e-9, atol=1e-9)[-1]


# -- algebra of one step ------------------------------------------------------------------------------
def test_accel_det_step_is_li_eq2_on_a_discrete_chain():
    """On a Discrete chain's own grid the VP variable is x itself and alpha_k = 1 - beta: check eq. (2) verbatim."""
    p = Discrete.from_schedule("linear", 40)
    model = mixture().as_model(p)
    ts = p.times().flip(0)[:6]  # steps 40 -> 35
    x_T = prior(p, 8, 0)
    x = sample_accel_det(model, x_T, ts, progress=False)
    y = x_T
    for k in range(5):
        i = 40 - k  # Li's t
        a, a_up = p.alphas[i - 1], (p.alphas[i - 1] if k == 0 else p.alphas[i])  # alpha_{t+1} := alpha_t first
        t, t_up = ts[k], (ts[0] if k == 0 else ts[k - 1])  # first step: virtual time clamped to t_max = t_0
        s_t = model.score(y, t)
        y_minus = a_up.sqrt() * (y - (1 - a_up) / 2 * s_t)
        s_up = model.score(y_minus, t_up)
        y = (y + (1 - a) / 2 * s_t + (1 - a) ** 2 / (4 * (1 - a_up)) * (s_t - a_up.sqrt() * s_up)) / a.sqrt()
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_vp_conversion_makes_samplers_process_independent():
    """All three samplers are defined on the VP variable x/c(t): VP and EDM grids with equal log-SNR give the same
    VP-variable samples (same noise), which checks the conversion alpha_vp = alpha/c and score_vp = c score."""
    gm, vp, edm = mixture(), VP(), EDM()
    lam = torch.linspace(-5.0, 6.0, 12, dtype=F64)
    ts_vp, ts_edm = vp.t_from_log_snr(lam), edm.t_from_log_snr(lam)
    c = lambda p, t: torch.sqrt(p.alpha(t) ** 2 + p.sigma(t) ** 2)  # noqa: E731
    y = prior(vp, 16, 1)
    for fn in (sample_accel_det, sample_accel_det_1eval, sample_accel_stoch):
        kw = dict(generator=torch.Generator().manual_seed(2), progress=False)
        x_vp = fn(gm.as_model(vp), y * c(vp, ts_vp[0]), ts_vp, **kw)
        kw = dict(generator=torch.Generator().manual_seed(2), progress=False)
        x_edm = fn(gm.as_model(edm), y * c(edm, ts_edm[0]), ts_edm, **kw)
        torch.testing.assert_close(x_vp / c(vp, ts_vp[-1]), x_edm / c(edm, ts_edm[-1]), rtol=1e-8, atol=1e-8)


def test_score_vp_and_step_alpha():
    p, gm = EDM(), mixture()
    model = gm.as_model(p)
    t, s = torch.tensor(3.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    y = torch.randn(5, 2, dtype=F64)
    c = math.sqrt(1 + 9.0)
    torch.testing.assert_close(score_vp(model, y, t), c * gm.score_t(c * y, t, p))
    a, b = step_alpha(p, t, s)
    torch.testing.assert_close(a, torch.tensor((1 / 10) / (1 / 2), dtype=F64))  # abar = 1/(1 + sigma^2)
    torch.testing.assert_close(a + b, torch.tensor(1.0, dtype=F64))


# -- convergence order of the deterministic samplers ----------------------------------------------------
@pytest.mark.parametrize("proc,t0,t1", [(VP(), 0.5, 0.05), (EDM(), 5.0, 0.05)], ids=["vp", "edm"])
@pytest.mark.parametrize("fn", [sample_accel_det, sample_accel_det_1eval], ids=["2eval", "1eval"])
def test_deterministic_samplers_are_second_order(proc, t0, t1, fn):
    model = ring_mixture(4, radius=2.0, std=0.3).as_model(proc)
    x_T = prior(proc, 32, 2) * float(proc.sigma(torch.tensor(t0)) / proc.prior_std)
    ref = ode_reference(model, x_T, t0, t1)
    ns = (32, 64, 128)
    errs = [float((fn(model, x_T, lam_grid(proc, n, t0, t1), progress=False) - ref).norm(dim=1).mean()) for n in ns]
    slopes = [math.log(errs[i] / errs[i + 1]) / math.log(2) for i in range(2)]
    order = next(info.order for info in SAMPLERS.values() if info.fn is fn)  # the registry's claim
    assert all(abs(sl - order) < 0.3 for sl in slopes), (errs, slopes)


# -- distributional convergence and the stochastic sampler's advantage -------------------------------------
@pytest.mark.parametrize("proc", [VP(), EDM(), Discrete.from_schedule("linear", 1000)], ids=lambda p: p.name)
@pytest.mark.parametrize("name", ["accel_det", "accel_det_1eval", "accel_stoch"])
def test_accelerated_samplers_approach_the_target(proc, name):
    """Same bounds as the SDE samplers' test (SW2 noise of 3000 samples ~0.03-0.15)."""
    gm, b = mixture(), 3000
    target = gm.sample(b, torch.Generator().manual_seed(123))
    model, errs = gm.as_model(proc), []
    for n in (5, 50):
        x = SAMPLERS[name].fn(model, prior(proc, b, 1), lam_grid(proc, n), generator=torch.Generator().manual_seed(2),
                              progress=False)
        errs.append((sliced_w2(x, target), float((gm.responsibilities(x).mean(0) - gm.weights).abs().max())))
    assert errs[1][0] < 0.6 * errs[0][0], errs
    assert errs[1][0] < 0.3 and errs[1][1] < 0.06, errs


@pytest.mark.parametrize("proc,target,n", [(VP(), "ring", 10), (EDM(), "ring", 10), (EDM(), "3mode", 20)],
                         ids=["vp-ring-10", "edm-ring-10", "edm-3mode-20"])
def test_accel_stoch_beats_ddpm_at_equal_nfe(proc, target, n):
    """n steps of 1 evaluation each, 2 seeds x 10000 samples per sampler (SW2 noise ~0.02).  Measured in development
    (mean SW2, ddpm vs accel_stoch): ring VP n=10 0.146 vs 0.095, ring EDM n=10 0.204 vs 0.113, 3-mode EDM n=20 0.294
    vs 0.191.  Not universal: on the sharper 3-mode target under VP, Ho's posterior DDPM is better (n=10: 0.237 vs
    0.308; n=40: 0.096 vs 0.114) -- Li et al. compare against their DDPM-type sampler, not the exact posterior."""
    gm, b = (ring_mixture(4, radius=2.0, std=0.3) if target == "ring" else mixture()), 10000
    ref = gm.sample(20000, torch.Generator().manual_seed(99))
    model, ts, err = gm.as_model(proc), lam_grid(proc, n), {}
    for fn in (sample_ddpm, sample_accel_stoch):
        err[fn.__name__] = sum(
            sliced_w2(fn(model, prior(proc, b, seed), ts, generator=torch.Generator().manual_seed(100 + seed),
                         progress=False), ref) for seed in range(2)) / 2
    assert err["sample_accel_stoch"] < 0.85 * err["sample_ddpm"], err


# -- transitions, trajectories, NFE, options -----------------------------------------------------------
def test_accel_stoch_trajectory_and_transition_log_probs():
    p = VP()
    model = mixture().as_model(p)
    ts = lam_grid(p, 6)
    traj = sample_accel_stoch(model, prior(p, 8, 0), ts, generator=torch.Generator().manual_seed(1),
                              return_trajectory=True, noise_last=True, progress=False)
    assert len(traj.xs) == 7 and traj.log_probs.shape == (6, 8) and traj.nfe == 6
    assert len(traj.extras["x_plus"]) == 6
    for i in range(6):
        x_plus = traj.extras["x_plus"][i]
        mean, std = accel_stoch_transition(model, x_plus, ts[i], ts[i + 1])  # pure: recomputed from stored x^+
        torch.testing.assert_close(mean, traj.means[i], rtol=1e-12, atol=1e-12)
        ref = torch.distributions.Normal(mean, std).log_prob(traj.xs[i + 1]).sum(-1)
        torch.testing.assert_close(traj.log_probs[i], ref, rtol=1e-10, atol=1e-10)
        # the first stage adds variance c(t)^2 (1 - alpha)/2 around x_i
        _, b_ = step_alpha(p, ts[i], ts[i + 1])
        c2 = p.alpha(ts[i]) ** 2 + p.sigma(ts[i]) ** 2
        z = (x_plus - traj.xs[i]) / torch.sqrt(c2 * b_ / 2)
        assert float(z.pow(2).mean()) < 4


@pytest.mark.parametrize("name,nfe", [("accel_det", 14), ("accel_det_1eval", 7), ("accel_stoch", 7)])
def test_exact_nfe_shapes_and_grids(name, nfe):
    gm = mixture()
    for p in (VP(), EDM(), Discrete.from_schedule("cosine", 50)):
        ts = torch.cat([lam_grid(p, 6), torch.zeros(1, dtype=F64)])  # a grid ending at 0
        traj = SAMPLERS[name].fn(gm.as_model(p), prior(p, 4, 0), ts, generator=torch.Generator().manual_seed(0),
                                 return_trajectory=True, progress=False)
        assert traj.nfe == nfe and len(traj.xs) == 8 and traj.log_probs.shape == (7, 4)
        assert all(torch.isfinite(x).all() for x in traj.xs), (p.name, name)
    # per-sample [n+1, B] grid: row b equals a run on row b's own grid
    p = VP()
    model = gm.as_model(p)
    ts2 = torch.stack([lam_grid(p, 5), lam_grid(p, 5, 0.7, 0.01)], 1)
    x_T = prior(p, 2, 3)
    if name == "accel_stoch":
        return
    x = SAMPLERS[name].fn(model, x_T, ts2, progress=False)
    x1 = SAMPLERS[name].fn(model, x_T[1:], ts2[:, 1], progress=False)
    torch.testing.assert_close(x[1:], x1, rtol=1e-10, atol=1e-10)


def test_bad_input_raises():
    p = VP()
    model, x = mixture().as_model(p), prior(p, 4, 0)
    for fn in (sample_accel_det, sample_accel_det_1eval, sample_accel_stoch):
        with pytest.raises(ValueError):
            fn(model, x, torch.tensor([0.5, 0.7], dtype=F64), progress=False)  # increasing
        with pytest.raises(ValueError):
            fn(model, x, torch.tensor([1.5, 0.5], dtype=F64), progress=False)  # beyond t_max
        with pytest.raises(ValueError):
            fn(model, x, torch.ones(3, 2, dtype=F64).cumsum(0).flip(0) / 4, progress=False)  # [n+1, 2] grid, B = 4
