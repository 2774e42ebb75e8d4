"""samplers/budget.py: batched sampling under an NFE budget, NFE counted (not assumed), the NFE arithmetic of each
sampler's SamplerInfo (planned == measured for every registered sampler), bad input, and the samplers'
registered Gaussian transitions reproducing their own sampling (what SFT-PG relies on)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import scorelab
from scorelab import VP, GaussianMixture
from scorelab.core.processes import Discrete
from scorelab.core.schedules import make_grid
from scorelab.finetune.sft_pg import SFTPGConfig, make_policy_grid, pg_samplers, rollout
from scorelab.samplers import SAMPLERS
from scorelab.samplers.budget import grid_for_nfe, grid_from_file, planned_nfe_for_grid, run_sampler, sample
from scorelab.samplers.defaults import default_rule

F64 = torch.float64
GM = GaussianMixture([1.0, 1.0], [[-1.0, 0.0], [1.0, 0.0]], 0.2)
MODEL = GM.as_model(VP())
#: options that make a sampler runnable on the exact mixture at small budgets (analytic_dpm's default variances
#: need the data statistic gamma; Langevin's 100 evaluations per level do not fit)
RUNNABLE = {"analytic_dpm": {"variances": "beta"}, "annealed_langevin": {"n_steps": 2}}
BUDGETED = [name for name, info in SAMPLERS.items() if not info.adaptive]


def test_public_names():
    assert scorelab.sample is sample and scorelab.samplers.sample is sample


# -- batches -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dpm_solver_pp_2m", "heun", "dpm_solver_3", "ddim"])
def test_batches_equal_one_batch_for_deterministic_samplers(name):
    one, info1 = sample(MODEL, name, 10, 37, shape=(2,), dtype=F64, seed=3)
    many, info8 = sample(MODEL, name, 10, 37, shape=(2,), dtype=F64, seed=3, batch_size=8)
    torch.testing.assert_close(many, one, rtol=1e-12, atol=1e-12)
    assert info1["n_batches"] == 1 and info8["n_batches"] == 5 and info8["batch_size"] == 8
    assert many.shape == (37, 2) and info1["nfe_planned"] == info8["nfe_planned"]
    assert info8["nfe_measured_per_batch"] == info8["nfe_planned"] <= 10


def test_stochastic_batches_reproducible_per_seed_and_batch_size():
    a = sample(MODEL, "ddpm", 8, 20, shape=(2,), batch_size=6, seed=1)[0]
    b = sample(MODEL, "ddpm", 8, 20, shape=(2,), batch_size=6, seed=1)[0]
    c = sample(MODEL, "ddpm", 8, 20, shape=(2,), batch_size=6, seed=2)[0]
    g = torch.Generator().manual_seed(1)
    d = sample(MODEL, "ddpm", 8, 20, shape=(2,), batch_size=6, generator=g)[0]
    assert torch.equal(a, b) and torch.equal(a, d) and not torch.allclose(a, c)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()


def test_run_sampler_is_sample_with_the_cli_grid_report():
    x, info = run_sampler(MODEL, "heun", 9, 16, shape=(2,), seed=4, dtype=F64)
    y, _ = sample(MODEL, "heun", 9, 16, shape=(2,), seed=4, dtype=F64)
    assert torch.equal(x, y)
    grid, final_zero = default_rule("heun", 9, MODEL.process)  # the measured default (samplers/defaults.py)
    planned = SAMPLERS["heun"].steps_for_nfe(9, final_zero)[1]
    assert info["grid"] == grid and info["final_zero"] == final_zero and info["grid_fit"] is None
    assert info["nfe_planned"] == planned and info["nfe_measured_per_batch"] == planned
    assert info["n"] == 16 and info["seed"] == 4
    _, info = run_sampler(MODEL, "heun", 9, 16, shape=(2,), seed=4, dtype=F64, grid="karras")
    assert info["grid"] == "karras" and info["nfe_planned"] == info["nfe_measured_per_batch"] == 8  # E + 3 H + E


# -- NFE: planned (SamplerInfo) == measured (CountingModel) ------------------------------------------------------------
@pytest.mark.parametrize("name", BUDGETED)
@pytest.mark.parametrize("final_zero", [False, True])
def test_budget_respected_for_every_sampler(name, final_zero):
    """For every registered fixed-step sampler the planned NFE is what the run measures, and within the budget."""
    opts = RUNNABLE.get(name, {})
    for nfe in ((18, 24) if name == "restart" else (15, 24)):  # restart under a budget needs NFE >= 18
        x, info = sample(MODEL, name, nfe, 6, shape=(2,), dtype=F64, options=opts, final_zero=final_zero,
                         batch_size=4)
        assert info["nfe_measured_per_batch"] == info["nfe_planned"] <= nfe, (name, nfe, info)
        assert torch.isfinite(x).all()
        if SAMPLERS[name].evals(**opts) == 1:
            assert info["nfe_planned"] == nfe  # one evaluation per step spends the budget exactly
        if SAMPLERS[name].mixed_orders:
            assert info["nfe_planned"] == nfe and "orders" in info["options"]  # Lu et al. 2022, sec. 3.4


@pytest.mark.parametrize("name,opts", [
    ("pc", {"n_corrector": 2}), ("pc", {"predictor": "none", "n_corrector": 3}), ("pc", {"predictor": "ddpm"}),
    ("annealed_langevin", {"n_steps": 3}), ("restart", {"K": 1, "n_restart": 2}), ("restart", {"K": 0}),
    ("dpm_solver_pp_2m", {"lower_order_final": False}), ("ddim", {"eta": 0.5}), ("edm", {"S_churn": 5.0}),
])
@pytest.mark.parametrize("final_zero", [False, True])
def test_options_change_the_count_through_the_sampler_info(name, opts, final_zero):
    x, info = sample(MODEL, name, 20, 5, shape=(2,), dtype=F64, options=opts, final_zero=final_zero)
    assert info["nfe_measured_per_batch"] == info["nfe_planned"] <= 20, (name, opts, info)


def test_explicit_and_saved_grids_use_the_same_arithmetic(tmp_path):
    p = MODEL.process
    ts = make_grid("karras", p, 4, final_zero=True)  # an Euler step, 3 Heun steps + 1 evaluation into 0
    assert planned_nfe_for_grid(SAMPLERS["heun"], ts) == 8 == SAMPLERS["heun"].planned_nfe(5, True)
    assert planned_nfe_for_grid(SAMPLERS["heun"], ts, {"euler_first": False}) == 9
    assert SAMPLERS["heun"].planned_nfe(5) == 8 == SAMPLERS["heun"].planned_nfe(5, euler_first=False) - 1
    assert planned_nfe_for_grid(SAMPLERS["restart"], ts, {"K": 1, "n_restart": 2}) == 13
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"ts": ts.tolist()}))
    assert grid_from_file(str(path), SAMPLERS["heun"], 8)[1] == 8
    with pytest.raises(ValueError, match="over the --nfe budget 7"):
        grid_from_file(str(path), SAMPLERS["heun"], 7)
    x, info = sample(MODEL, "heun", 9, 4, shape=(2,), grid=ts, dtype=F64)
    assert info["grid"] == "explicit" and info["nfe_measured_per_batch"] == 8
    with pytest.raises(ValueError, match="over the NFE budget 7"):
        sample(MODEL, "heun", 7, 4, shape=(2,), grid=ts)


def test_sampler_info_arithmetic():
    heun, pc = SAMPLERS["heun"], SAMPLERS["pc"]
    assert heun.skip_correction_at_zero and not SAMPLERS["euler"].skip_correction_at_zero
    assert heun.steps_for_nfe(9, final_zero=True) == (5, 8) and heun.steps_for_nfe(10) == (6, 10)  # Euler first/last
    assert heun.steps_for_nfe(9) == (5, 8) and heun.steps_for_nfe(1) == (1, 1) and heun.steps_for_nfe(2) == (2, 2)
    alg1 = dict(euler_first=False, lower_order_final=False)
    assert heun.steps_for_nfe(9, final_zero=True, **alg1) == (5, 9) and heun.steps_for_nfe(9, **alg1) == (4, 8)
    assert pc.evals(n_corrector=3) == 4 and pc.evals_at_zero(n_corrector=3) == 1
    assert SAMPLERS["restart"].extra_nfe(K=3, n_restart=2) == 12 and SAMPLERS["restart"].extra_nfe() == 12
    assert math.isnan(SAMPLERS["dopri5"].evals_per_step) and SAMPLERS["dopri5"].adaptive
    with pytest.raises(ValueError, match="no option"):
        pc.evals(corrector_steps=2)


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(sampler="nope"), r"unknown sampler 'nope'; expected one of \["),
    (dict(n=0), r"n \(number of samples\) must be an integer >= 1, got 0"),
    (dict(n=2.5), r"n \(number of samples\) must be an integer >= 1"),
    (dict(nfe=0), r"nfe must be an integer >= 1, got 0"),
    (dict(nfe=7.5), r"nfe must be an integer >= 1, got 7.5"),
    (dict(sampler="heun", nfe=1, options={"euler_first": False, "lower_order_final": False}),
     r"NFE budget 1 is too small for sampler 'heun' \(2 evaluations per step\); need at least 2"),
    (dict(sampler="heun", nfe=2, final_zero=True, options={"euler_first": False}),
     r"too small for sampler 'heun'.*final step to 0.*need at least 3"),
    (dict(sampler="ddim", nfe=1, final_zero=True), r"too small for sampler 'ddim'.*final step to 0.*need at least 2"),
    (dict(sampler="restart", nfe=10, options={"K": 2}),
     r"NFE budget 10 does not cover the 12 evaluations 'restart' spends"),
    (dict(sampler="restart", nfe=17), r"NFE budget 17 is too small for restart.*needs NFE >= 18 \(or give K"),
    (dict(sampler="dopri5"), r"'dopri5' is adaptive"),
    (dict(options={"etta": 0.5}, sampler="ddim"), r"sampler 'ddim' has no option\(s\) \['etta'\]; expected some of"),
    (dict(sampler="dpm_solver_2", options={"orders": [2, 2]}), r"the budget chooses 'dpm_solver_2'.*drop the option"),
    (dict(shape=None), r"shape must be the shape of one sample"),
    (dict(shape=(2, 0)), r"shape must be the shape of one sample, a tuple of positive integers, got \(2, 0\)"),
    (dict(batch_size=0), r"batch_size must be None \(one batch\) or an integer >= 1, got 0"),
    (dict(grid="nonsense"), r"unknown grid 'nonsense'"),
    (dict(grid=[1.0, 0.5, 0.7]), r"strictly decreasing"),
])
def test_bad_input_raises_value_error_naming_what_is_wrong(kw, match):
    args = {"sampler": "euler", "nfe": 10, "n": 4, "shape": (2,), **kw}
    with pytest.raises(ValueError, match=match):
        sample(MODEL, args.pop("sampler"), args.pop("nfe"), args.pop("n"), **args)


def test_model_must_be_a_diffusion_model():
    with pytest.raises(ValueError, match="model must be a DiffusionModel"):
        sample(lambda x, t: x, "euler", 10, 4, shape=(2,))


def test_grid_for_nfe_counts_sampler_options():
    """PC with two correctors spends 3 evaluations per step (the old fixed count of 2 would overspend)."""
    ts, used = grid_for_nfe("pc", MODEL.process, 20, "karras", options={"n_corrector": 2})  # a grid of its own
    assert used == 18 and len(ts) == 7


# -- registered transitions (SFT-PG's policies) ----------------------------------------------------------------------
@pytest.mark.parametrize("name", pg_samplers())
def test_registered_transition_reproduces_the_sampler(name):
    """A rollout built only from ``SamplerInfo.transition`` / ``pre_transition`` draws the sampler's own samples
    (same generator), so any stochastic sampler that registers its transition is an SFT-PG policy."""
    assert {"ddpm", "ddim", "accel_stoch", "euler_maruyama"} <= set(pg_samplers())
    process = Discrete.from_schedule("linear", 6, start=0.1, end=0.5)
    model, ts = GM.as_model(process), make_policy_grid(process)
    cfg = SFTPGConfig(sampler=name, eta=0.6)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    ro = rollout(model, x_T, ts, cfg, torch.Generator().manual_seed(5))
    ref = SAMPLERS[name].fn(model, x_T, ts, generator=torch.Generator().manual_seed(5),
                            **cfg.options_for(SAMPLERS[name].options))
    torch.testing.assert_close(ro.x0, ref)
    assert bool((ro.stds[:-1] > 0).all())  # every step but possibly the last into t = 0 is a Gaussian policy


@pytest.mark.parametrize("nfe,K", [(18, 1), (35, 1), (36, 2), (100, 2)])
def test_restart_loops_take_at_most_a_third_of_the_budget(nfe, K):
    """Without an explicit K the budget sets it (at most Xu et al.'s K = 2); the run reports and spends it."""
    _, info = sample(MODEL, "restart", nfe, 4, shape=(2,), dtype=F64)
    assert info["options"]["K"] == K and info["nfe_measured_per_batch"] == info["nfe_planned"] <= nfe
    assert 2 * 3 * K <= nfe / 3
    _, info = sample(MODEL, "restart", nfe, 4, shape=(2,), dtype=F64, options={"K": 0})
    assert info["options"]["K"] == 0  # a given K is kept
