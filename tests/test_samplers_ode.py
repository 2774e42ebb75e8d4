"""ODE / multistep / restart samplers against the exact Gaussian-mixture oracle (float64).

Convergence orders against a tight dopri5 reference, cross-method identities (DDIM = DPM-Solver-1 = Euler in the
scaled variable), closed-form transitions, exact NFE, per-sample grids on every process, and distributional
improvement with more steps."""
import math

import numpy as np
import ot
import pytest
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.core.processes import EDM, VE, VP, Discrete, SubVP, VPCosine
from scorelab.core.schedules import make_grid
from scorelab.samplers import SAMPLERS
from scorelab.samplers.multistep import ddim_transition
from scorelab.samplers.restart import restart_transition

F64 = torch.float64
PROCESSES = [VP(), SubVP(), VPCosine(), VE(), EDM(), Discrete.from_schedule("linear", 1000)]
GM = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [[[0.3, 0.2], [0.2, 0.5]], [[0.2, 0.0], [0.0, 0.1]]])
FIXED = ["euler", "heun", "edm", "ddim", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2m",
         "dpm_solver_pp_3m", "dpm_solver_pp_2m_sde", "restart"]
DETERMINISTIC = ["euler", "heun", "dopri5", "ddim", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3",
                 "dpm_solver_pp_2m", "dpm_solver_pp_3m"]


def _x_T(p, n, seed=0):
    return p.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


def _run(name, model, x_T, ts, seed=1, **kw):
    return SAMPLERS[name].fn(model, x_T, ts, generator=torch.Generator().manual_seed(seed), **kw)


def _nfe_expected(name, n, to_zero, **kw):
    """Exact evaluations of n steps (the last one into t = 0 when ``to_zero``)."""
    per = {"heun": 2, "edm": 2, "restart": 2, "dpm_solver_2": 2, "dpm_solver_3": 3}.get(name, 1)
    base = per * n - (per - 1) * to_zero
    if name in ("heun", "edm"):  # Euler first step and lower-order final step (into t_min, or into 0 anyway)
        base = 1 if n == 1 else 2 * n - 2
    return base + (2 * kw["K"] * kw["n_restart"] if name == "restart" else 0)


# -- convergence orders -------------------------------------------------------------------------------------------
_REF: dict = {}


def _reference(p, t_end):
    key = (p.name, t_end)
    if key not in _REF:
        x_T = _x_T(p, 64)
        ts = torch.tensor([p.t_max, t_end], dtype=F64)
        _REF[key] = x_T, _run("dopri5", GM.as_model(p), x_T, ts, rtol=1e-9, atol=1e-9)
    return _REF[key]


ORDER_SETUPS = [(VP(), 0.1, "uniform_t"), (EDM(), 0.5, "uniform_log_snr")]


def _slope(name, p, t_end, grid, ns=(32, 64, 128)):
    x_T, ref = _reference(p, t_end)
    errs = [float((_run(name, GM.as_model(p), x_T, make_grid(grid, p, n, t_min=t_end)) - ref).abs().max())
            for n in ns]
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0], errs


@pytest.mark.parametrize("p,t_end,grid", ORDER_SETUPS, ids=["vp", "edm"])
@pytest.mark.parametrize("name", ["euler", "ddim", "heun", "dpm_solver_2", "dpm_solver_pp_2m", "dpm_solver_3"])
def test_convergence_order(p, t_end, grid, name):
    """Log-log slope of the max pathwise error (64 paths) vs steps against dopri5 (rtol = atol = 1e-9), from t_max
    to a moderate t_end where the asymptotic regime is reached with 32-128 steps, against the registry's order."""
    order = SAMPLERS[name].order
    assert order >= 1  # a claim to test
    slope, errs = _slope(name, p, t_end, grid)
    assert abs(slope - order) < 0.3, (name, slope, errs)


@pytest.mark.parametrize("p,t_end,grid", ORDER_SETUPS, ids=["vp", "edm"])
def test_dpm_solver_pp_3m_is_at_least_second_order(p, t_end, grid):
    """3M warms up with orders 1 and 2, so only order >= 2 is guaranteed (measured slopes 2.4 and 3.2)."""
    slope, errs = _slope("dpm_solver_pp_3m", p, t_end, grid)
    assert slope > 1.7 and errs[-1] < 5e-4, (slope, errs)


def test_dopri5_reference_is_converged():
    """dopri5 at 1e-9 agrees with itself at 1e-11 (the reference is not the error we measure)."""
    p = VP()
    x_T, ref = _reference(p, 0.1)
    tight = _run("dopri5", GM.as_model(p), x_T, torch.tensor([p.t_max, 0.1], dtype=F64), rtol=1e-11, atol=1e-11)
    assert (tight - ref).abs().max() < 1e-7


# -- identities ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_ddim_equals_dpm_solver_1_equals_scaled_euler(p):
    """DDIM(eta=0) = DPM-Solver-1 = Euler on dx_hat/dsigma_hat = eps (x_hat = x/alpha, sigma_hat = sigma/alpha)."""
    model, x_T = GM.as_model(p), _x_T(p, 16)
    ts = make_grid("uniform_log_snr", p, 7)
    a = _run("ddim", model, x_T, ts)
    b = _run("dpm_solver_1", model, x_T, ts)
    x = x_T
    for t, s in zip(ts[:-1], ts[1:], strict=True):  # hand-written scaled Euler
        sh_t, sh_s = p.sigma(t) / p.alpha(t), p.sigma(s) / p.alpha(s)
        x = p.alpha(s) * (x / p.alpha(t) + (sh_s - sh_t) * model.eps(x, t))
    assert torch.allclose(a, b, atol=1e-6, rtol=0) and torch.allclose(a, x, atol=1e-6, rtol=0)


def test_euler_in_t_is_ddim_on_edm():
    """On EDM (alpha = 1, sigma = t) the PF-ODE is dx/dt = eps, so Euler in t is DDIM."""
    p = EDM()
    model, x_T, ts = GM.as_model(p), _x_T(p, 16), make_grid("karras", p, 9, final_zero=True)
    assert torch.allclose(_run("euler", model, x_T, ts), _run("ddim", model, x_T, ts), atol=1e-9)


@pytest.mark.parametrize("p", [VP(), EDM()], ids=lambda p: p.name)
def test_edm_without_churn_and_restart_without_loops_are_heun(p):
    model, x_T, ts = GM.as_model(p), _x_T(p, 16), make_grid("karras", p, 8, final_zero=True)
    heun = _run("heun", model, x_T, ts)
    assert torch.equal(_run("edm", model, x_T, ts), heun)
    alg1 = _run("heun", model, x_T, ts, euler_first=False, lower_order_final=False)  # Alg. 1 as printed
    assert torch.equal(_run("edm", model, x_T, ts, euler_first=False, lower_order_final=False), alg1)
    assert not torch.equal(alg1, heun)
    assert torch.equal(_run("restart", model, x_T, ts, K=0), alg1)
    assert not torch.allclose(_run("edm", model, x_T, ts, S_churn=5.0), heun, atol=1e-3)


def test_single_step_into_zero_is_the_denoiser():
    """Every fixed-step sampler's step into t = 0 (where sigma = 0) returns x0_hat = E[x_0 | x_t] exactly."""
    p = VP()
    model, x_T, t = GM.as_model(p), _x_T(p, 8) * 0.5, 0.3
    ts = torch.tensor([t, 0.0], dtype=F64)
    expect = GM.x0_t(x_T, torch.tensor(t, dtype=F64), p)
    for name in FIXED + ["dopri5"]:
        if name != "euler":
            assert torch.allclose(_run(name, model, x_T, ts), expect, atol=1e-12), name


# -- Gaussian transitions -----------------------------------------------------------------------------------------
def test_ddim_eta_one_is_the_ddpm_posterior():
    """DDIM with eta = 1 is q(x_s | x_t, x0_hat) (Ho et al. 2020, eqs. 6-7 in (alpha, sigma) form)."""
    p = VP()
    model, x = GM.as_model(p), _x_T(p, 8)
    t, s = torch.tensor(0.6, dtype=F64), torch.tensor(0.35, dtype=F64)
    mean, std = ddim_transition(model, x, t, s, eta=1.0)
    a_t, a_s, sg_t, sg_s = p.alpha(t), p.alpha(s), p.sigma(t), p.sigma(s)
    a_ts, var_ts = a_t / a_s, sg_t**2 - (a_t / a_s) ** 2 * sg_s**2
    x0 = GM.x0_t(x, t, p)
    post_mean = a_s * var_ts / sg_t**2 * x0 + a_ts * sg_s**2 / sg_t**2 * x
    assert torch.allclose(mean, post_mean, atol=1e-12)
    assert torch.allclose(torch.as_tensor(std) ** 2, var_ts * sg_s**2 / sg_t**2, rtol=1e-10)


@pytest.mark.parametrize("name,kw", [("ddim", dict(eta=0.7)), ("dpm_solver_pp_2m_sde", {}),
                                     ("restart", dict(K=1, n_restart=2))])
def test_stochastic_trajectories_record_gaussian_log_probs(name, kw):
    p = VP()
    model, x_T, ts = GM.as_model(p), _x_T(p, 6), make_grid("karras", p, 6, final_zero=True)
    traj = _run(name, model, x_T, ts, return_trajectory=True, **kw)
    recorded = 0
    for i, (mean, std) in enumerate(zip(traj.means, traj.stds, strict=True)):
        if mean is None:
            assert torch.isnan(traj.log_probs[i]).all()
            continue
        recorded += 1
        d = torch.distributions.Normal(mean, torch.as_tensor(std).expand_as(mean))
        assert torch.allclose(traj.log_probs[i], d.log_prob(traj.xs[i + 1]).sum(1), atol=1e-10)
    assert recorded >= (1 if name == "restart" else len(ts) - 2)
    assert len(traj.xs) == traj.log_probs.shape[0] + 1 == (len(traj.ts) if name == "restart" else len(ts))


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_restart_transition_is_the_forward_marginal_map(p):
    """x_lo = alpha_lo x0 + sigma_lo eps mapped by the restart transition has the marginal law at t_hi."""
    x0 = torch.zeros(1, 2, dtype=F64)
    t_lo, t_hi = torch.tensor(0.1 * p.t_max, dtype=F64), torch.tensor(0.4 * p.t_max, dtype=F64)
    mean, std = restart_transition(GM.as_model(p), p.alpha(t_lo) * x0 + 1.0, t_lo, t_hi)
    ratio = p.alpha(t_hi) / p.alpha(t_lo)
    assert torch.allclose(mean, ratio * (p.alpha(t_lo) * x0 + 1.0))
    assert torch.allclose(ratio**2 * p.sigma(t_lo) ** 2 + std**2, p.sigma(t_hi) ** 2, rtol=1e-10)
    x = p.alpha(t_lo) * x0 + p.sigma(t_lo) * torch.randn(20000, 2, generator=torch.Generator().manual_seed(0),
                                                         dtype=F64)
    m, sd = restart_transition(GM.as_model(p), x, t_lo, t_hi)
    y = m + sd * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert abs(y.std().item() / p.sigma(t_hi).item() - 1) < 0.02


# -- every sampler, every process, per-sample grids, exact NFE ---------------------------------------------------------
@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
@pytest.mark.parametrize("name", FIXED + ["dopri5"])
def test_every_sampler_runs_with_per_sample_grids_and_exact_nfe(p, name):
    model, x_T = GM.as_model(p), _x_T(p, 4)
    n = 5
    grids = [make_grid(g, p, n, final_zero=True) for g in ("karras", "uniform_log_snr", "karras", "uniform_log_snr")]
    ts2 = torch.stack(grids, 1)  # [n+2, B]
    kw = dict(K=1, n_restart=2, t_min_r=0.2 * p.t_max, t_max_r=0.5 * p.t_max) if name == "restart" else {}
    if name == "restart" and isinstance(p, VE):
        kw.update(t_min_r=0.5, t_max_r=0.8)  # karras and log-SNR grids on VE both pass below 0.5 at one index
    if name == "dopri5":  # a batch shares one adaptive step size: compare at tight tolerance (f, g jump on Discrete)
        kw.update(rtol=1e-5, atol=1e-5) if isinstance(p, Discrete) else kw.update(rtol=1e-9, atol=1e-9)
    traj = _run(name, model, x_T, ts2, return_trajectory=True, **kw)
    assert traj.x0.shape == x_T.shape and torch.isfinite(traj.x0).all()
    if name != "dopri5":
        assert traj.nfe == _nfe_expected(name, n + 1, True, **kw), (traj.nfe, name)
    if name in DETERMINISTIC:  # each column equals the 1-D run on its own grid
        for b in (0, 1):
            one = _run(name, model, x_T[b:b + 1], grids[b], **(kw if name == "dopri5" else {}))
            tol = (1e-3 if isinstance(p, Discrete) else 1e-6) if name == "dopri5" else 1e-10
            assert torch.allclose(traj.x0[b:b + 1], one, atol=tol), name


@pytest.mark.parametrize("name", FIXED)
def test_nfe_without_final_zero_and_callback(name):
    p = VP()
    model, x_T, ts = GM.as_model(p), _x_T(p, 4), make_grid("karras", p, 7)
    seen = []
    kw = dict(K=2, n_restart=2) if name == "restart" else {}
    traj = _run(name, model, x_T, ts, return_trajectory=True, callback=seen.append, **kw)
    assert traj.nfe == _nfe_expected(name, 7, False, **kw)
    assert [c["i"] for c in seen] == list(range(7))
    assert torch.equal(seen[-1]["x"], traj.x0) and seen[-1]["x0_hat"].shape == x_T.shape


@pytest.mark.parametrize("bad", [
    torch.tensor([0.5, 0.7, 0.1]),  # not decreasing
    torch.tensor([1.0]),  # one point
    torch.tensor([1.0, float("nan")]),
    torch.tensor([1.5, 0.5]),  # beyond t_max of VP
    torch.tensor([1.0, -0.1]),
    torch.ones(3, 5).cumsum(0).flip(0) / 3,  # [n+1, B] with B != batch
])
@pytest.mark.parametrize("name", FIXED + ["dopri5"])
def test_bad_grids_raise(bad, name):
    p = VP()
    with pytest.raises(ValueError):
        _run(name, GM.as_model(p), _x_T(p, 4), bad)


def test_bad_options_raise():
    p = VP()
    model, x_T, ts = GM.as_model(p), _x_T(p, 4), make_grid("karras", p, 4)
    for name, kw in [("ddim", dict(eta=1.5)), ("dpm_solver_3", dict(orders=[3, 3])),
                     ("dpm_solver_2", dict(orders=[2, 2, 4, 1])), ("edm", dict(S_churn=-1.0)),
                     ("restart", dict(t_min_r=0.5, t_max_r=0.2)), ("restart", dict(n_restart=0)),
                     ("dopri5", dict(rtol=0.0))]:
        with pytest.raises(ValueError):
            _run(name, model, x_T, ts, **kw)


def test_dpm_solver_mixed_orders_spend_exactly_their_sum():
    p = VP()
    model, x_T, ts = GM.as_model(p), _x_T(p, 4), make_grid("uniform_log_snr", p, 4)
    traj = _run("dpm_solver_3", model, x_T, ts, orders=[3, 3, 2, 1], return_trajectory=True)
    assert traj.nfe == 9


# -- distributional improvement ----------------------------------------------------------------------------------
VARIANTS = [(n, {}) for n in FIXED] + [("ddim", dict(eta=1.0)), ("edm", dict(S_churn=10.0)),
                                       ("restart", dict(K=3, n_restart=4))]
_TARGET = GM.sample(5000, generator=torch.Generator().manual_seed(7)).numpy()
N_SW = 1000  # sliced W2 of N_SW exact samples to _TARGET is ~0.04-0.09 (sampling noise)


def _sw(x):
    return ot.sliced_wasserstein_distance(np.asarray(x), _TARGET, n_projections=100, seed=0)


@pytest.mark.parametrize("p", [VP(), EDM()], ids=lambda p: p.name)
@pytest.mark.parametrize("name,kw", VARIANTS, ids=lambda v: str(v))
def test_samples_approach_the_target_as_steps_grow(p, name, kw):
    """Sliced W2 to exact mixture samples shrinks from 3 to 40 steps (Karras grid into t = 0) and ends within the
    sampling noise of N_SW exact samples.  (dopri5 is adaptive, so steps do not set its accuracy.)"""
    model, x_T = GM.as_model(p), _x_T(p, N_SW)
    sw = [_sw(_run(name, model, x_T, make_grid("karras", p, n, final_zero=True), **kw)) for n in (3, 40)]
    assert sw[1] < 0.12 and sw[0] > sw[1] + 0.02, sw


def test_mode_weights_are_recovered():
    """Fraction of samples assigned to each component matches the weights (0.3, 0.7) within sampling error."""
    p = VP()
    x = _run("dpm_solver_3", GM.as_model(p), _x_T(p, 4000), make_grid("uniform_log_snr", p, 10, final_zero=True))
    w = GM.responsibilities(x).mean(0)
    assert abs(w[0].item() - 0.3) < 3 * math.sqrt(0.21 / 4000) + 0.01
