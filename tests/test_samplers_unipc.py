"""UniPC (Zhao et al. 2023) against the exact Gaussian-mixture oracle (float64).

Convergence orders against a tight dopri5 reference (UniP-p: p; UniPC-p = UniP-p + UniC: p + 1), the coefficient
system R rho = b (closed-form b, Lagrange solve vs. a dense solve), identities (UniP-1 = DDIM, UniP-2 with
B(h) = e^h - 1 = DPM-Solver++(2M), solved steps independent of B(h)), agreement with diffusers' scheduler when it is
installed, exact NFE, per-sample grids on every process, the step into t = 0, and distributional improvement."""
import math

import numpy as np
import ot
import pytest
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.core.processes import EDM, VE, VP, Discrete, SubVP, VPCosine
from scorelab.core.schedules import make_grid
from scorelab.samplers import SAMPLERS
from scorelab.samplers.unipc import UniPCState, _lagrange_solve, sample_unipc, uni_update, unipc_b, unipc_step

F64 = torch.float64
PROCESSES = [VP(), SubVP(), VPCosine(), VE(), EDM(), Discrete.from_schedule("linear", 1000)]
GM = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [[[0.3, 0.2], [0.2, 0.5]], [[0.2, 0.0], [0.0, 0.1]]])


def _x_T(p, n, seed=0):
    return p.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- coefficients -------------------------------------------------------------------------------------------------
def _phi(k: int, z: float) -> float:
    """phi_k(z) = sum_j z^j / (j + k)!  (phi_1 = (e^z - 1)/z), by its series."""
    return sum(z**j / math.factorial(j + k) for j in range(60))


@pytest.mark.parametrize("h", [0.05, 0.5, 2.0])
def test_b_is_factorial_times_phi(h):
    """b_i = i! phi_{i+1}(-h) for B(h) = h ("bh1"); b_i = i! (-h) phi_{i+1}(-h) / (e^{-h} - 1) for "bh2"."""
    hh = torch.tensor(-h, dtype=F64)
    b1, B1 = unipc_b(-hh, 3, "bh1")
    b2, B2 = unipc_b(-hh, 3, "bh2")
    for i in (1, 2, 3):
        expect = math.factorial(i) * _phi(i + 1, -h)
        assert abs(b1[i - 1].item() - expect) < 1e-10  # the recursion loses ~eps / h^i to cancellation
        assert abs(b2[i - 1].item() - expect * (-h) / math.expm1(-h)) < 1e-10
    assert B1.item() == -h and abs(B2.item() - math.expm1(-h)) < 1e-15
    assert abs(unipc_b(1e-4, 1, "bh1")[0][0] - 0.5) < 1e-4  # b_1 -> 1/2 (the reference code's rho for k = 2)


def test_lagrange_solve_matches_dense_solve():
    """rho with sum_k rho_k r_k^{i-1} = b_i (R rho = b of the reference code), for floats and [B] tensors."""
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3):
        nodes = (-torch.rand(k - 1, generator=g, dtype=F64) * 2 - 0.1).tolist() + [1.0]
        b = torch.randn(k, generator=g, dtype=F64)
        R = torch.tensor([[r ** i for r in nodes] for i in range(k)], dtype=F64)
        expect = torch.linalg.solve(R, b)
        got = torch.tensor(_lagrange_solve(nodes, b.tolist()), dtype=F64)
        assert torch.allclose(got, expect, atol=1e-12, rtol=0), k
    batched = _lagrange_solve([torch.tensor([-0.5, -1.0], dtype=F64), 1.0], [torch.ones(2, dtype=F64), 0.25])
    for j, r in enumerate((-0.5, -1.0)):
        R, b = torch.tensor([[1.0, 1.0], [r, 1.0]], dtype=F64), torch.tensor([1.0, 0.25], dtype=F64)
        expect = torch.linalg.solve(R, b)
        assert all(abs(batched[i][j].item() - expect[i].item()) < 1e-12 for i in (0, 1))


def test_solved_steps_do_not_depend_on_B():
    """rho ~ 1/B(h) when solved from R rho = b, so UniP-3 and UniC-2 are the same for B(h) = h and e^h - 1, while
    UniP-2 and UniC-1 (rho = 1/2 fixed) are not (Zhao et al.: the B(h) choice only matters through those)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, generator=g, dtype=F64)
    ms = [torch.randn(4, 2, generator=g, dtype=F64) for _ in range(4)]
    lams = [-1.3, -0.9, -0.4]
    hist = tuple(zip(ms[:3], lams, strict=True))
    c_t, c_s = (0.7, 0.5, -0.4), (0.8, 0.3, 0.2)
    for k, m_new, same in [(3, None, True), (2, ms[3], True), (2, None, False), (1, ms[3], False)]:
        a = uni_update(x, c_t, c_s, hist, k, "bh1", m_new=m_new)
        b = uni_update(x, c_t, c_s, hist, k, "bh2", m_new=m_new)
        assert torch.allclose(a, b, atol=1e-12) == same, (k, m_new is None)


# -- identities ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [VP(), EDM()], ids=lambda p: p.name)
def test_unip1_is_ddim_and_unip2_bh2_is_dpm_solver_pp_2m(p):
    """Without the corrector: UniP-1 = DDIM (= DPM-Solver++ 1); UniP-2 with B(h) = e^h - 1 and rho = 1/2 is
    DPM-Solver++(2M) (Zhao et al., sec. 3.3)."""
    model, x_T, ts = GM.as_model(p), _x_T(p, 16), make_grid("uniform_log_snr", p, 8, final_zero=True)
    ddim = SAMPLERS["ddim"].fn(model, x_T, ts)
    assert torch.allclose(sample_unipc(model, x_T, ts, order=1, use_corrector=False), ddim, atol=1e-12)
    pp = SAMPLERS["dpm_solver_pp_2m"].fn(model, x_T, ts, lower_order_final=False)
    uni = sample_unipc(model, x_T, ts, order=2, variant="bh2", use_corrector=False, lower_order_final=False)
    assert torch.allclose(uni, pp, atol=1e-12)
    assert not torch.allclose(sample_unipc(model, x_T, ts, order=2, variant="bh2"), pp, atol=1e-4)  # UniC acts


def test_matches_diffusers_unipc_scheduler():
    """Same algorithm as diffusers' UniPCMultistepScheduler (orders 1-3, bh1/bh2) on the DDPM-linear chain: the
    scheduler's timestep k is time (k+1)/1000, its final sigma_min is t = 1/1000.  diffusers works in float32."""
    diffusers = pytest.importorskip("diffusers")
    p = Discrete.from_schedule("linear", 1000)
    model, x_T = GM.as_model(p), _x_T(p, 64)
    for order, variant, lof in [(1, "bh1", True), (2, "bh2", True), (3, "bh1", True), (3, "bh2", False)]:
        sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                                  beta_schedule="linear", solver_order=order, solver_type=variant,
                                                  final_sigmas_type="sigma_min", lower_order_final=lof)
        sched.set_timesteps(8)
        ts = [(int(k) + 1) / 1000 for k in sched.timesteps] + [1 / 1000]
        x = x_T.clone()
        for i, k in enumerate(sched.timesteps):
            x = sched.step(model.eps(x, torch.tensor(ts[i], dtype=F64)), k, x).prev_sample
        ours = sample_unipc(model, x_T, torch.tensor(ts, dtype=F64), order=order, variant=variant,
                            lower_order_final=lof)
        assert (ours - x).abs().max() < 1e-4 * (1 + x.abs().max()), (order, variant)


# -- convergence orders -------------------------------------------------------------------------------------------
_REF: dict = {}
ORDER_SETUPS = [(VP(), 0.1, "uniform_t"), (EDM(), 0.5, "uniform_log_snr")]


def _reference(p, t_end):
    key = (p.name, t_end)
    if key not in _REF:
        x_T = _x_T(p, 64)
        ts = torch.tensor([p.t_max, t_end], dtype=F64)
        _REF[key] = x_T, SAMPLERS["dopri5"].fn(GM.as_model(p), x_T, ts, rtol=1e-9, atol=1e-9)
    return _REF[key]


def _slope(p, t_end, grid, ns, **kw):
    x_T, ref = _reference(p, t_end)
    errs = [float((sample_unipc(GM.as_model(p), x_T, make_grid(grid, p, n, t_min=t_end), **kw) - ref).abs().max())
            for n in ns]
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0], errs


@pytest.mark.parametrize("p,t_end,grid", ORDER_SETUPS, ids=["vp", "edm"])
@pytest.mark.parametrize("order,corrector", [(1, False), (2, False), (1, True), (2, True), (3, True)])
def test_convergence_order(p, t_end, grid, order, corrector):
    """Log-log slope of the max pathwise error vs steps (64, 128, 256) against dopri5 (rtol = atol = 1e-9), from
    t_max to a moderate t_end, lower_order_final off: UniP-p has order p, UniPC-p order p + 1 (Zhao et al.,
    Thm. 3.3).  (The order-1 warm-up step corrected by UniC-1 formally caps UniPC-3 at 3; its constant is tiny in
    the nearly linear high-noise regime, and the measured slopes are 3.9-4.2.)"""
    expect = SAMPLERS["unipc"].order_with(order=order, use_corrector=corrector, lower_order_final=False)
    slope, errs = _slope(p, t_end, grid, (64, 128, 256), order=order, use_corrector=corrector,
                         lower_order_final=False)
    assert abs(slope - expect) < 0.3, (slope, errs)


def test_lower_order_final_makes_the_last_step_first_order():
    """With lower_order_final the last step is UniP-1 without a corrector: local error O(h^2), so the global
    order is 2 (not 4) for UniPC-3 -- the reference code's trade of accuracy at many steps for stability at few."""
    slope, errs = _slope(VP(), 0.1, "uniform_t", (64, 128, 256), order=3)
    assert abs(slope - SAMPLERS["unipc"].order_with(order=3)) < 0.3, (slope, errs)


def test_corrector_reduces_the_error_at_20_steps():
    """At 20 steps (defaults: lower_order_final on) UniC lowers the max pathwise error of UniP-p, p = 1, 2, 3
    (measured ratios 0.42, 0.77, 0.83).  Not a theorem below the asymptotic regime: at 10 steps without
    lower_order_final UniPC-2/3 are slightly worse than UniP-2/3 on this target."""
    p = VP()
    x_T, ref = _reference(p, 0.1)
    ts = make_grid("uniform_t", p, 20, t_min=0.1)
    for order in (1, 2, 3):
        err = [float((sample_unipc(GM.as_model(p), x_T, ts, order=order, use_corrector=c) - ref).abs().max())
               for c in (False, True)]
        assert err[1] < err[0], (order, err)


# -- NFE, grids, processes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["unipc", "unipc_bh2"])
def test_nfe_is_one_per_step_and_callback(name):
    p = VP()
    model, x_T = GM.as_model(p), _x_T(p, 4)
    for ts in (make_grid("karras", p, 7), make_grid("karras", p, 6, final_zero=True)):
        seen = []
        traj = SAMPLERS[name].fn(model, x_T, ts, return_trajectory=True, callback=seen.append)
        assert traj.nfe == 7 and len(traj.xs) == 8
        assert [c["i"] for c in seen] == list(range(7))
        assert torch.equal(seen[-1]["x"], traj.x0) and seen[-1]["x0_hat"].shape == x_T.shape


def test_final_step_into_zero_is_the_denoiser():
    """The step into t = 0 is first order, i.e. x_0 = x0_hat(x, t_{n-1}) of the corrected state (sigma(0) = 0);
    a single step [t, 0] returns E[x_0 | x_t] exactly."""
    p = VP()
    model, x_T = GM.as_model(p), _x_T(p, 8)
    ts = make_grid("uniform_log_snr", p, 6, final_zero=True)
    seen = []
    out = sample_unipc(model, x_T, ts, callback=seen.append, lower_order_final=False)
    assert torch.allclose(out, seen[-1]["x0_hat"], atol=1e-12)
    x = 0.5 * x_T
    one = sample_unipc(model, x, torch.tensor([0.3, 0.0], dtype=F64))
    assert torch.allclose(one, GM.x0_t(x, torch.tensor(0.3, dtype=F64), p), atol=1e-12)


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_per_sample_grids_on_every_process(p):
    """A [n+1, B] grid runs each column as its own 1-D grid (coefficients per sample), NFE = n, on every process."""
    model, x_T = GM.as_model(p), _x_T(p, 4)
    grids = [make_grid(g, p, 6, final_zero=True) for g in ("karras", "uniform_log_snr", "uniform_t", "quadratic")]
    for kw in (dict(order=3, variant="bh1"), dict(order=2, variant="bh2")):
        traj = sample_unipc(model, x_T, torch.stack(grids, 1), return_trajectory=True, **kw)
        assert traj.nfe == 7 and torch.isfinite(traj.x0).all()
        for b in range(4):
            one = sample_unipc(model, x_T[b:b + 1], grids[b], **kw)
            assert torch.allclose(traj.x0[b:b + 1], one, atol=1e-10), (p.name, b, kw)


def test_step_function_with_explicit_state_reproduces_the_sampler():
    """Looping the pure ``unipc_step`` over the grid with its returned state gives ``sample_unipc`` exactly; the
    history never holds more than three data predictions."""
    p = VP()
    model, x_T, ts = GM.as_model(p), _x_T(p, 4), make_grid("uniform_t", p, 6)
    x, state = x_T, UniPCState()
    for i in range(6):
        k = min(3, i + 1, 6 - i)  # warm-up and lower_order_final
        x, _, state = unipc_step(model, x, ts[i], ts[i + 1], state, k)
        assert len(state.history) == min(i + 1, 3) and state.last[2] == k
    assert torch.equal(x, sample_unipc(model, x_T, ts))


@pytest.mark.parametrize("kw", [dict(order=4), dict(order=0), dict(variant="bh3")])
def test_bad_options_raise(kw):
    p = VP()
    with pytest.raises(ValueError):
        sample_unipc(GM.as_model(p), _x_T(p, 4), make_grid("karras", p, 4), **kw)


@pytest.mark.parametrize("bad", [torch.tensor([0.5, 0.7, 0.1]), torch.tensor([1.5, 0.5]), torch.tensor([1.0])])
def test_bad_grids_raise(bad):
    p = VP()
    with pytest.raises(ValueError):
        sample_unipc(GM.as_model(p), _x_T(p, 4), bad)


# -- distributional improvement ------------------------------------------------------------------------------------
_TARGET = GM.sample(5000, generator=torch.Generator().manual_seed(7)).numpy()


@pytest.mark.parametrize("p", [VP(), EDM()], ids=lambda p: p.name)
@pytest.mark.parametrize("name", ["unipc", "unipc_bh2"])
def test_samples_approach_the_target_as_steps_grow(p, name):
    """Sliced W2 to exact mixture samples shrinks from 3 to 40 steps (Karras grid into t = 0) and ends within the
    sampling noise of 1000 exact samples (~0.04-0.09)."""
    model, x_T = GM.as_model(p), _x_T(p, 1000)
    sw = [ot.sliced_wasserstein_distance(
        SAMPLERS[name].fn(model, x_T, make_grid("karras", p, n, final_zero=True)).numpy(), _TARGET,
        n_projections=100, seed=0) for n in (3, 40)]
    assert sw[1] < 0.12 and sw[0] > sw[1] + 0.02, sw
