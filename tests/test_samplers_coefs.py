"""Precomputed per-grid coefficients (the samplers' per-step overhead) give what the unmemoised formulas give.

Samplers compute alpha, sigma, lambda/2 (and f, g^2, posterior and VP coefficients) for their whole grid once
(``GridCoefs``, ``process.coefs_at``) instead of per step; these tests check the memo against the plain process
formulas, and every sampler's loop against its public step function applied time by time."""
from __future__ import annotations

import pytest
import torch
from _sampler_oracles import EpsOnly  # noqa: E402

from scorelab.core.analytic import GaussianMixture
from scorelab.core.processes import EDM, VE, VP, Discrete, SubVP, VPCosine
from scorelab.core.schedules import make_grid
from scorelab.samplers import SAMPLERS
from scorelab.samplers.accelerated import accel_det_1eval_step, accel_det_step
from scorelab.samplers.base import GridCoefs, eps_native
from scorelab.samplers.multistep import ddim_step, dpm_solver_pp_step, dpm_solver_step
from scorelab.samplers.ode import euler_step, heun_step
from scorelab.samplers.sde import ddpm_transition
from scorelab.samplers.unipc import UniPCState, unipc_step

F64 = torch.float64
PROCESSES = [VP(), SubVP(), VPCosine(), VE(), EDM(), Discrete.from_schedule("linear", 1000)]
GM = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [[[0.3, 0.2], [0.2, 0.5]], [[0.2, 0.0], [0.0, 0.1]]])


def _fresh(p):
    p.__dict__.pop("_coef_cache", None)
    return p


def _x_T(p, n, seed=0):
    return p.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_coefs_at_equals_the_unmemoised_formulas_and_the_scalar_memo(p):
    ts = make_grid("karras", _fresh(p), 12, final_zero=True)
    got = p.coefs_at(ts)
    ref = torch.stack([p.alpha(ts), p.sigma(ts), 0.5 * p.log_snr(ts)], 1)
    torch.testing.assert_close(torch.tensor(got, dtype=F64), ref, rtol=1e-14, atol=0)
    for t, row in zip(ts, got, strict=True):  # scalar calls read the very same memo entries: bit-identical
        assert tuple(v.item() for v in p.coefs(t)) == row
    f_g2 = torch.tensor(p.sde_coefs_at(ts[:-1]), dtype=F64)
    torch.testing.assert_close(f_g2, torch.stack([p.drift_coef(ts[:-1]), p.diffusion_sq(ts[:-1])], 1), rtol=1e-14,
                               atol=0)


def test_coefs_at_fills_misses_only_and_scalar_first_order_does_not_matter():
    p = _fresh(VP())
    ts = make_grid("uniform_log_snr", p, 9)
    scalar_first = [tuple(v.item() for v in p.coefs(t)) for t in ts[::2]]  # half the grid through the scalar memo
    got = p.coefs_at(ts)
    assert got[::2] == scalar_first
    assert len(p.__dict__["_coef_cache"]) == len(ts)
    with pytest.raises(ValueError):
        p.coefs_at(torch.stack([ts, ts], 1))


def test_grid_coefs_per_sample_rows_equal_the_1d_grids():
    p = _fresh(Discrete.from_schedule("linear", 1000))
    grids = [make_grid(g, p, 6, final_zero=True) for g in ("karras", "uniform_log_snr")]
    x = torch.zeros(2, 2, dtype=F64)
    g2 = GridCoefs(p, torch.stack(grids, 1), x)
    for b, ts in enumerate(grids):
        g1 = GridCoefs(p, ts, x[:1])
        for i in range(len(ts)):
            c1, c2 = g1.c(i), g2.c(i)
            for u, v in zip(c1, c2, strict=True):
                assert torch.allclose(torch.as_tensor(u, dtype=F64), v[b], rtol=1e-13, atol=0)
        assert g1.zero == [False] * (len(ts) - 1) + [True]
    assert g2.zero[-1] and not g2.zero[0]


# -- sampler loops with precomputed coefficients == public step functions time by time ----------------------------
def _loop(step, x, ts):
    for i in range(len(ts) - 1):
        x = step(i, x, ts[i], ts[i + 1])
    return x


def _pp_loop(model, x, ts, order):
    history, n = (), len(ts) - 1
    for i in range(n):
        k = min(order, i + 1, n - i) if n < 10 else min(order, i + 1)
        x, _, _, _, history = dpm_solver_pp_step(model, x, ts[i], ts[i + 1], history, k)
    return x


def _accel_1eval_loop(model, x, ts):
    prev = None
    for i in range(len(ts) - 1):
        x, prev, _ = accel_det_1eval_step(model, x, ts[i], ts[i + 1], prev)
    return x


STEPWISE = {
    "ddim": lambda m, x, ts: _loop(lambda i, x, t, s: ddim_step(m, x, t, s)[0], x, ts),
    "euler": lambda m, x, ts: _loop(lambda i, x, t, s: euler_step(m, x, t, s)[0], x, ts),
    "heun": lambda m, x, ts: _loop(lambda i, x, t, s: heun_step(m, x, t, s, 0 < i < len(ts) - 2)[0], x, ts),
    "dpm_solver_2": lambda m, x, ts: _loop(lambda i, x, t, s: dpm_solver_step(m, x, t, s, 2)[0], x, ts),
    "dpm_solver_3": lambda m, x, ts: _loop(lambda i, x, t, s: dpm_solver_step(m, x, t, s, 3)[0], x, ts),
    "dpm_solver_pp_2m": lambda m, x, ts: _pp_loop(m, x, ts, 2),
    "dpm_solver_pp_3m": lambda m, x, ts: _pp_loop(m, x, ts, 3),
    "accel_det": lambda m, x, ts: _loop(lambda i, x, t, s: accel_det_step(m, x, t, s, ts[i - 1] if i else None)[0],
                                        x, ts),
    "accel_det_1eval": _accel_1eval_loop,
}


@pytest.mark.parametrize("p", [VP(), EDM(), Discrete.from_schedule("linear", 1000)], ids=lambda p: p.name)
@pytest.mark.parametrize("name", sorted(STEPWISE))
def test_sampler_loop_equals_public_steps_time_by_time(p, name):
    model, x_T = GM.as_model(p), _x_T(p, 8)
    ts = make_grid("uniform_log_snr", p, 7, final_zero=True)
    _fresh(p)
    fast = SAMPLERS[name].fn(model, x_T, ts)
    slow = STEPWISE[name](GM.as_model(_fresh(p)), x_T, ts)
    torch.testing.assert_close(fast, slow, rtol=1e-11, atol=1e-11)


def test_ddpm_loop_equals_its_transitions_and_cold_equals_warm_memo():
    p = _fresh(Discrete.from_schedule("linear", 1000))
    model, x_T = GM.as_model(p), _x_T(p, 8)
    ts = make_grid("uniform_t", p, 6)
    x = SAMPLERS["ddpm"].fn(model, x_T, ts, generator=torch.Generator().manual_seed(3))
    gen, y = torch.Generator().manual_seed(3), x_T
    for i in range(6):
        mean, std = ddpm_transition(model, y, ts[i], ts[i + 1])
        y = mean + std * torch.randn(mean.shape, generator=gen, dtype=F64) if i < 5 else mean
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    for name in ("unipc", "accel_stoch", "euler_maruyama", "dpm_solver_pp_2m_sde"):
        warm = SAMPLERS[name].fn(model, x_T, ts, generator=torch.Generator().manual_seed(1))
        cold = SAMPLERS[name].fn(GM.as_model(_fresh(p)), x_T, ts, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(warm, cold, rtol=1e-12, atol=1e-12)


def test_float32_samples_match_float64_to_float32_accuracy():
    """Coefficients are float64 for any x dtype: a float32 run tracks the float64 run to float32 rounding."""
    p = _fresh(VP())
    model, x_T = GM.as_model(p), _x_T(p, 16)
    ts = make_grid("uniform_log_snr", p, 10)
    for name in ("ddim", "dpm_solver_pp_2m", "unipc", "accel_det_1eval", "heun"):
        x64 = SAMPLERS[name].fn(model, x_T, ts)
        x32 = SAMPLERS[name].fn(model, x_T.float(), ts)
        assert x32.dtype == torch.float32
        torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)


# -- eps-native models: the model currency's x0 = (x - sigma eps)/alpha folded into the steps' coefficients ----------
FOLDED = ("dpm_solver_pp_2m", "dpm_solver_pp_3m", "dpm_solver_pp_2m_sde", "unipc", "unipc_bh2", "ddpm",
          "euler_maruyama", "accel_det", "accel_stoch", "analytic_dpm", "pc")


@pytest.mark.parametrize("p", [VP(), Discrete.from_schedule("linear", 1000)], ids=lambda p: p.name)
def test_eps_model_fast_paths_equal_the_x0_paths_to_rounding(p):
    """Samplers fed an eps-only model (x0_hat and the score folded into precomputed coefficients, x0_hat computed
    only for a callback) give the samples, log-probs and callback x0_hat of the same model called through x0."""
    exact, x_T = GM.as_model(p), _x_T(p, 8)
    assert eps_native(EpsOnly(exact)) and eps_native(EpsOnly(exact), score=True) and not eps_native(exact)
    ts = make_grid("uniform_log_snr", p, 8, final_zero=True)
    for name in FOLDED:
        kw = {"variances": "beta"} if name == "analytic_dpm" else {}
        runs = []
        for model in (exact, EpsOnly(exact)):
            seen = []
            traj = SAMPLERS[name].fn(model, x_T, ts, generator=torch.Generator().manual_seed(1), callback=seen.append,
                                     return_trajectory=True, **kw)
            runs.append((traj, [d["x0_hat"] for d in seen]))
        (a, xa), (b, xb) = runs
        torch.testing.assert_close(b.x0, a.x0, rtol=1e-10, atol=1e-10, msg=name)
        torch.testing.assert_close(b.log_probs, a.log_probs, rtol=1e-10, atol=1e-10, equal_nan=True, msg=name)
        for u, v in zip(xa, xb, strict=True):
            torch.testing.assert_close(v, u, rtol=1e-10, atol=1e-10, msg=name)


def test_eps_model_step_functions_reproduce_the_samplers():
    """The public step functions fold x0_hat the same way: looping them gives the samplers (UniPC bit for bit)."""
    p = VP()
    model, x_T, ts = EpsOnly(GM.as_model(p)), _x_T(p, 4), make_grid("uniform_t", p, 6)
    x, state = x_T, UniPCState()
    for i in range(6):
        x, _, state = unipc_step(model, x, ts[i], ts[i + 1], state, min(3, i + 1, 6 - i))
    assert torch.equal(x, SAMPLERS["unipc"].fn(model, x_T, ts))
    torch.testing.assert_close(_pp_loop(model, x_T, ts, 2), SAMPLERS["dpm_solver_pp_2m"].fn(model, x_T, ts),
                               rtol=1e-12, atol=1e-12)
