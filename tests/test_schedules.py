"""Time grids: monotonicity, endpoints, the defining uniformity of each grid, Li's schedule, NFE budgets."""
import math

import pytest
import torch

from scorelab.core.processes import EDM, VE, VP, Discrete, SubVP, VPCosine, li_betas
from scorelab.core.schedules import (
    GRIDS,
    dpm_solver_orders,
    karras,
    li,
    make_grid,
    quadratic,
    sigma_hat,
    uniform_log_snr,
    uniform_t,
)
from scorelab.samplers import SAMPLERS
from scorelab.samplers.budget import grid_for_nfe

PROCESSES = [VP(), SubVP(), VPCosine(), VE(), EDM(), Discrete.from_schedule("linear", 1000)]
SMOOTH_GRIDS = ["uniform_t", "uniform_log_snr", "karras", "quadratic"]
MINE = ["euler", "heun", "edm", "ddim", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2m",
        "dpm_solver_pp_3m", "dpm_solver_pp_2m_sde", "restart"]


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
@pytest.mark.parametrize("name", SMOOTH_GRIDS)
def test_grids_decrease_between_the_endpoints(p, name):
    ts = make_grid(name, p, 12)
    assert ts.shape == (13,) and ts.dtype == torch.float64
    assert torch.all(ts[1:] < ts[:-1])
    assert ts[0].item() == p.t_max and ts[-1].item() == p.t_min
    tz = make_grid(name, p, 12, final_zero=True)
    assert tz.shape == (14,) and tz[-1].item() == 0.0 and torch.equal(tz[:-1], ts)
    tc = make_grid(name, p, 5, t_max=0.5 * p.t_max, t_min=2 * p.t_min)
    assert math.isclose(tc[0].item(), 0.5 * p.t_max) and math.isclose(tc[-1].item(), 2 * p.t_min)


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
def test_uniform_grids_are_uniform_in_their_variable(p):
    n = 9
    assert torch.allclose(torch.diff(uniform_t(p, n)), torch.full((n,), (p.t_min - p.t_max) / n, dtype=torch.float64))
    lam = p.log_snr(uniform_log_snr(p, n))
    assert torch.allclose(torch.diff(lam), (lam[-1] - lam[0]) / n * torch.ones(n, dtype=torch.float64), rtol=1e-6)
    r = quadratic(p, n).sqrt()
    assert torch.allclose(torch.diff(r), (r[-1] - r[0]) / n * torch.ones(n, dtype=torch.float64))


@pytest.mark.parametrize("p", PROCESSES, ids=lambda p: p.name)
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_is_uniform_in_sigma_hat_power(p, rho):
    n = 10
    u = sigma_hat(p, karras(p, n, rho=rho)) ** (1 / rho)
    assert torch.allclose(torch.diff(u), (u[-1] - u[0]) / n * torch.ones(n, dtype=torch.float64), rtol=1e-6)


def test_karras_on_edm_is_eq_5():
    """On EDM (alpha = 1, sigma = t) the grid is Karras et al. 2022, eq. 5 verbatim."""
    p, n, rho = EDM(), 18, 7.0
    i = torch.arange(n + 1, dtype=torch.float64)
    expect = (p.t_max ** (1 / rho) + i / n * (p.t_min ** (1 / rho) - p.t_max ** (1 / rho))) ** rho
    assert torch.allclose(karras(p, n), expect, rtol=1e-12)
    # larger rho concentrates steps near the data
    assert karras(p, n, rho=7.0)[-2] < karras(p, n, rho=2.0)[-2]


def test_li_grid_reproduces_the_discrete_li_chain():
    """On Discrete.from_schedule('li', N) the n = N-1 step grid is exactly the chain's states N..1 (t = i/N)."""
    N = 30
    p = Discrete.from_schedule("li", N)
    ts = li(p, N - 1)
    assert torch.allclose(ts, torch.arange(N, 0, -1, dtype=torch.float64) / N, atol=1e-9)
    assert torch.allclose(li(p, N - 1, final_zero=True)[-1], torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize("c0,c1", [(2.0, 4.0), (4.0, 4.0)])
def test_li_grid_matches_li_betas_alpha_bar(c0, c1):
    p, n = VP(), 12
    abar = torch.cumprod(1 - li_betas(n + 1, c0=c0, c1=c1), 0).flip(0)  # states T..1
    ts = li(p, n, c0=c0, c1=c1)
    inside = (ts > p.t_min) & (ts < p.t_max)
    assert inside.sum() >= n - 2  # only the clipped ends may differ
    assert torch.allclose(p.alpha(ts[inside]) ** 2, abar[inside], rtol=1e-10)
    assert torch.all(ts[1:] < ts[:-1]) and ts.min() >= p.t_min and ts.max() <= p.t_max
    if c1 == c0:  # the exponential phase never ends: the chain stays far from the noise (ts[0] < t_max / 2)
        assert ts[0].item() < 0.5 * p.t_max and len(ts) == n + 1


def test_li_grid_merges_states_clipped_onto_the_ends():
    """On EDM (sigma_hat <= 80) Li's chain of 201 states runs past t_max: those states merge into t_max."""
    p = EDM()
    ts = li(p, 200)
    abar = torch.cumprod(1 - li_betas(201), 0).flip(0)
    n_out = int((abar < p.alpha(torch.tensor(p.t_max)) ** 2 / (1 + p.t_max**2)).sum())
    assert n_out > 1 and len(ts) == 201 - n_out + 1 and ts[0].item() == p.t_max
    assert torch.all(ts[1:] < ts[:-1])
    assert torch.allclose(1 / (1 + ts[1:-1] ** 2), abar[n_out:-1], rtol=1e-9)  # alpha_bar of EDM = 1/(1+sigma^2)
    ts_budget, used = grid_for_nfe("euler", p, 200, grid="li")
    assert used == len(ts_budget) - 1 < 200


@pytest.mark.parametrize("bad", [dict(name="nope", n=5), dict(name="karras", n=0), dict(name="karras", n=2.5),
                                 dict(name="uniform_t", n=5, t_min=0.5, t_max=0.1),
                                 dict(name="uniform_t", n=5, t_max=2.0), dict(name="karras", n=5, rho=-1.0),
                                 dict(name="karras", n=5, bogus=1)])
def test_make_grid_rejects_bad_input(bad):
    bad = dict(bad)
    with pytest.raises(ValueError):
        make_grid(bad.pop("name"), VP(), bad.pop("n"), **bad)


def test_grid_registry_names_cover_sampler_defaults():
    assert {"uniform_t", "uniform_log_snr", "karras", "quadratic", "li"} <= set(GRIDS)
    for name in MINE:
        assert SAMPLERS[name].default_grid in GRIDS


# -- NFE budgets ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nfe", range(1, 16))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_orders_spend_the_budget(nfe, order):
    orders = dpm_solver_orders(nfe, order)
    assert sum(orders) == nfe and max(orders) <= order
    if order == 3 and nfe >= 6:
        assert orders[0] == 3 and orders.count(3) == len(orders) - (2 if nfe % 3 == 0 else 1)


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("final_zero", [False, True])
@pytest.mark.parametrize("nfe", [7, 20])
def test_grid_for_nfe_reports_the_nfe_a_run_uses(name, final_zero, nfe):
    from scorelab.core.analytic import GaussianMixture

    p = VP()
    model = GaussianMixture([1.0, 1.0], [[-1.0, 0.0], [1.0, 0.0]], 0.2).as_model(p)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(K=1, n_restart=2) if name == "restart" else {}
    ts, used, opts = grid_for_nfe(name, p, nfe, final_zero=final_zero, return_opts=True, **kw)
    run_kw = dict(t_min_r=float(ts[len(ts) // 2]), t_max_r=p.t_max, **kw) if name == "restart" else {}
    traj = SAMPLERS[name].fn(model, x_T, ts, return_trajectory=True, generator=torch.Generator().manual_seed(1),
                             **opts, **run_kw)
    assert traj.nfe == used <= nfe
    if name in ("dpm_solver_2", "dpm_solver_3") or SAMPLERS[name].evals_per_step == 1:
        assert used == nfe  # mixed orders (sec. 3.4) or one evaluation per step spend the budget exactly


def test_grid_for_nfe_heun_and_errors():
    p = VP()
    ts, used = grid_for_nfe("heun", p, 9, final_zero=True)
    assert used == 8 and len(ts) == 6  # Euler first, 3 Heun steps, Euler into 0 (a 4th Heun step would need 10)
    ts, used = grid_for_nfe("heun", p, 9)
    assert used == 8 and len(ts) == 6  # Euler first, 3 Heun steps, lower-order final step
    ts, used = grid_for_nfe("heun", p, 9, final_zero=True, euler_first=False, lower_order_final=False)
    assert used == 9 and len(ts) == 6  # Karras Alg. 1: 4 Heun steps + Euler into 0 = 2*5 - 1
    assert grid_for_nfe("heun", p, 2, final_zero=True)[1] == 2  # Euler, then Euler into 0
    for args in [("heun", p, 1), ("euler", p, 0), ("dopri5", p, 50), ("nope", p, 5)]:
        with pytest.raises(ValueError):
            grid_for_nfe(*args, final_zero=True) if args[0] == "heun" else grid_for_nfe(*args)
    with pytest.raises(ValueError, match="need at least 3"):
        grid_for_nfe("heun", p, 2, final_zero=True, euler_first=False)
    with pytest.raises(ValueError):
        grid_for_nfe("restart", p, 10, K=2, n_restart=3)  # 12 restart evaluations do not fit


# -- grids on a DDPM chain lie on its states ------------------------------------------------------------------------
def test_snap_to_states_keeps_the_count_and_order_and_pushes_collisions_apart():
    p = Discrete.from_schedule("linear", 10)
    ts = torch.tensor([1.0, 0.94, 0.93, 0.26, 0.12, 0.101, 0.0], dtype=torch.float64)  # 0.94, 0.93 -> state 9
    out = p.snap_to_states(ts)
    k = out[:-1] * p.N
    assert out.shape == ts.shape and out[-1] == 0 and torch.all(out[1:] < out[:-1])
    assert torch.equal(k, torch.round(k)) and k.tolist() == [10.0, 9.0, 8.0, 3.0, 2.0, 1.0]
    top = p.snap_to_states(torch.tensor([1.0, 0.99, 0.98], dtype=torch.float64))  # all round to 10: pushed down
    assert (top * p.N).tolist() == [10.0, 9.0, 8.0]
    with pytest.raises(ValueError, match="11 positive times cannot lie on the 10 states"):
        p.snap_to_states(torch.linspace(1.0, 0.05, 11, dtype=torch.float64))


@pytest.mark.parametrize("name", ["uniform_t", "uniform_log_snr", "karras", "quadratic", "li"])
def test_make_grid_on_a_chain_lies_on_its_states_unless_asked_not_to(name):
    p = Discrete.from_schedule("linear", 1000)
    raw, snapped = make_grid(name, p, 8, snap=False, final_zero=True), make_grid(name, p, 8, final_zero=True)
    k = snapped[:-1] * p.N
    assert snapped.shape == raw.shape and torch.equal(k, torch.round(k)) and snapped[-1] == 0
    assert torch.all((snapped[:-1] - raw[:-1]).abs() <= 0.5 / p.N + 1e-12)  # the nearest state (no collision here)
    assert not torch.equal(raw, snapped)
    assert torch.equal(make_grid(name, VP(), 9), make_grid(name, VP(), 9, snap=False))  # other processes: as is


def _states_only_model(process, gm):
    """Exact at the chain's states, wrong between them (like a network trained on integer steps only)."""
    from scorelab.core.denoisers import FunctionModel

    exact = gm.as_model(process)

    def eps(x, t):
        off = torch.sin(math.pi * torch.as_tensor(t, dtype=torch.float64) * process.N) ** 2  # 0 at states
        return exact.eps(x, t) + 0.5 * off.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))

    return FunctionModel(eps, process), exact


@pytest.mark.parametrize("sampler", ["unipc", "dpm_solver_pp_2m", "dpm_solver_2", "dpm_solver_3", "restart",
                                     "accel_det"])
def test_a_model_trained_on_states_only_samples_exactly_on_the_default_grids(sampler):
    """With grids (and the times a sampler evaluates between grid points: singlestep DPM-Solver's intermediate
    points, restart's inner grids, accel_det's first virtual time) on the chain's states, a model that is exact there
    and wrong in between samples exactly like the exact model; on the rule's own times it does not."""
    from scorelab.core.analytic import ring_mixture

    p = Discrete.from_schedule("linear", 1000)
    model, exact = _states_only_model(p, ring_mixture(8, 2.0, 0.1))
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nfe = {"restart": 20, "accel_det": 40}.get(sampler, 12)  # restart runs from NFE 18; accel_det: u < t_max
    top = {"t_max": 0.9}  # a grid starting below the chain's top state (accel_det's virtual time lies above it)

    def run(m, g, opts):  # a stochastic sampler gets the same noise (seed 1) in every run
        gen = {"generator": torch.Generator().manual_seed(1)} if SAMPLERS[sampler].stochastic else {}
        return SAMPLERS[sampler].fn(m, x_T, g, **opts, **gen)

    for grid in ("uniform_log_snr", "karras"):
        ts, _, opts = grid_for_nfe(sampler, p, nfe, grid, return_opts=True, final_zero=True, **top)
        torch.testing.assert_close(run(model, ts, opts), run(exact, ts, opts), rtol=1e-10, atol=1e-10)
        raw = make_grid(grid, p, len(ts) - 2, final_zero=True, snap=False, **top)
        assert (run(model, raw, opts) - run(exact, raw, opts)).abs().max() > 1e-3
