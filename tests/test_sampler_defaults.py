"""Defaults chosen by measurement (issue 24): diffusers' DDPM-index grids, the measured default rules, ``auto``,
small-NFE robustness on exact oracles, analytic_dpm's declared input, and fitted grids stored with the model."""
import json

import numpy as np
import pytest
import torch
import yaml

from scorelab.cli import main
from scorelab.core.analytic import GaussianMixture, ring_mixture
from scorelab.core.processes import EDM, VP, Discrete
from scorelab.core.schedules import make_grid
from scorelab.evaluation.metrics import mixture_frequencies, mmd2_to_mixture
from scorelab.samplers import SAMPLERS, sample
from scorelab.samplers.defaults import default_rule, describe_rules, family, nfe_bucket, recommend
from scorelab.samplers.defaults_table import AUTO, GRID_RULES, PANEL_NFES

LIN = Discrete.from_schedule("linear", 1000)


def _mmd(gm, x, omega):
    return mmd2_to_mixture(x.double().numpy(), gm, omega)


# -- diffusers' timestep spacings -------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
@pytest.mark.parametrize("steps", [5, 7, 10, 20])
def test_ddpm_grids_are_diffusers_timesteps(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    # linspace as the multistep schedulers (DPM-Solver++, UniPC, DEIS) space it; leading / trailing as DDIM does
    cls = diffusers.DPMSolverMultistepScheduler if spacing == "linspace" else diffusers.DDIMScheduler
    sched = cls(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=spacing, steps_offset=0)
    sched.set_timesteps(steps)
    ts = make_grid(f"ddpm_{spacing}", LIN, steps - 1, final_zero=True)
    expect = (sched.timesteps.double() + 1) / 1000  # diffusers' 0-based timestep k is state k + 1
    assert torch.equal(ts[:-1], expect) and ts[-1] == 0
    assert make_grid(f"ddpm_{spacing}", LIN, steps - 1).shape == (steps,)


def test_ddpm_grids_reject_bad_input():
    with pytest.raises(ValueError, match="t_max"):
        make_grid("ddpm_trailing", LIN, 4, t_max=0.5)
    with pytest.raises(ValueError, match="exceed"):
        make_grid("ddpm_linspace", Discrete.from_schedule("linear", 10), 12)
    ts = make_grid("ddpm_trailing", EDM(), 4, final_zero=True)  # continuous: 1000 indices over [t_min, t_max]
    assert ts[0] == EDM().t_max and ts[-1] == 0 and torch.all(ts[1:] < ts[:-1])


# -- the measured table -----------------------------------------------------------------------------------------
def test_table_entries_are_registered_and_runnable():
    assert set(GRID_RULES) == set(AUTO) == {"discrete", "discrete_cosine", "vp", "edm", "all"}
    for fam, table in GRID_RULES.items():
        for s, rules in table.items():
            assert s in SAMPLERS and not SAMPLERS[s].needs, s
            for k, r in rules.items():
                assert k in PANEL_NFES and r["grid"] in ("uniform_t", "uniform_log_snr", "karras", "quadratic", "li",
                                                         "ddpm_linspace", "ddpm_trailing", "ddpm_leading")
        assert "analytic_dpm" not in table
        assert set(AUTO[fam]) == set(PANEL_NFES) and all(v["sampler"] in table for v in AUTO[fam].values())
    assert describe_rules("analytic_dpm") == "-"


def test_nfe_buckets_and_rules():
    assert [nfe_bucket(k) for k in (1, 5, 7, 8, 10, 14, 15, 20, 31, 32, 50, 1000)] == [5, 5, 5, 10, 10, 10, 20, 20,
                                                                                    20, 50, 50, 50]
    with pytest.raises(ValueError, match="nfe"):
        nfe_bucket(0)
    COS = Discrete.from_schedule("cosine", 1000)
    for fam, process in (("discrete", LIN), ("discrete_cosine", COS), ("vp", VP()), ("edm", EDM()), ("all", None)):
        r = GRID_RULES[fam]["ddim"][10]
        assert default_rule("ddim", 12, process) == (r["grid"], r["final_zero"])
    assert family(LIN) == "discrete" and family(VP()) == "vp" and family(EDM()) == "edm"
    # the cosine chain has a family of its own (a rule in process time lands at other noise levels there)
    assert family(COS) == "discrete_cosine" and family(Discrete.from_schedule("sigmoid", 100)) == "discrete"
    # a chain given by its betas (an imported model's, in float32) is recognised by them
    assert family(Discrete(COS.betas.float().double())) == "discrete_cosine"
    assert family(Discrete(LIN.betas.float().double())) == "discrete"
    assert family(Discrete(COS.betas * 1.001)) == "discrete"
    assert GRID_RULES["discrete"] != GRID_RULES["discrete_cosine"]


def test_a_measured_rule_that_cannot_spend_the_budget_falls_back_to_the_registered_grid():
    short = Discrete.from_schedule("sigmoid", 10)  # 10 states: ddpm_* grids have at most 10 points
    model = ring_mixture(8, 2.0, 0.1).as_model(short)
    for s in ("ddim", "unipc", "dpm_solver_3"):
        rule = default_rule(s, 10, short)
        _, info = sample(model, s, 10, 8, shape=(2,))
        if rule[0].startswith("ddpm_"):
            assert (info["grid"], info["final_zero"]) == (SAMPLERS[s].default_grid, False)
        assert info["nfe_measured_per_batch"] <= 10


@pytest.mark.parametrize("process", [LIN, VP(), EDM()], ids=["discrete", "vp", "edm"])
def test_auto_samples_within_budget_and_reports_its_choice(process):
    gm = ring_mixture(8, 2.0, 0.1)
    x, info = sample(gm.as_model(process), "auto", 10, 200, shape=(2,), seed=1)
    rec = recommend(process, 10)
    assert info["sampler"] == rec["sampler"] and info["auto"] == rec
    assert info["grid"] == rec["grid"] and info["final_zero"] == rec["final_zero"]
    assert info["nfe_measured_per_batch"] <= 10 and torch.all(torch.isfinite(x))


def test_auto_refuses_an_explicit_grid():
    with pytest.raises(ValueError, match="auto"):
        sample(ring_mixture().as_model(VP()), "auto", 10, 10, shape=(2,), grid=torch.linspace(1, 1e-3, 11))


# -- small-NFE robustness on an exact oracle ---------------------------------------------------------------------
def _oracle():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, torch.tensor([0.1, 0.05, 0.15]))


def test_measured_defaults_beat_the_old_ones_at_small_nfe():
    """On a 2-D three-mode oracle (not in the panel), DPM-Solver++(2M) and UniPC on their measured default rule are
    at least as good as on the old default (log-SNR grid ending at t_min) at NFE 5 and 10, on two seeds."""
    gm, omega = _oracle(), mixture_frequencies(_oracle(), 512)[0]
    model = gm.as_model(LIN)
    for s in ("dpm_solver_pp_2m", "unipc"):
        for nfe in (5, 10):
            new = np.mean([_mmd(gm, sample(model, s, nfe, 4000, shape=(2,), seed=k)[0], omega) for k in (1, 2)])
            old = np.mean([_mmd(gm, sample(model, s, nfe, 4000, shape=(2,), seed=k, grid="uniform_log_snr",
                                       final_zero=False)[0], omega) for k in (1, 2)])
            assert new <= old * 1.05 + 1e-4, (s, nfe, new, old)


#: samplers measured above 2x DDIM at NFE 10 on this oracle (issue 24, goal 3, not met for them: two evaluations
#: per step; see docs/guide/choosing.md, "Known limits"); they must still not diverge
OVER_2X_DDIM_NFE10 = {"accel_det", "accel_det_1eval", "heun", "edm", "pc"}


@pytest.mark.parametrize("process", [LIN, pytest.param(VP(), marks=pytest.mark.slow)], ids=["discrete", "vp"])
def test_no_sampler_diverges_at_nfe_10(process):
    """Every swept sampler on its measured default at NFE 10 on a 2-D three-mode oracle: within 2x DDIM's MMD^2 to
    the exact law, all but ``OVER_2X_DDIM_NFE10``, which stay within 10x."""
    gm = _oracle()
    omega, model = mixture_frequencies(gm, 256)[0], gm.as_model(process)
    names = [s for s, i in SAMPLERS.items() if not i.adaptive and not i.needs and i.evals_per_step <= 3]
    mmd = {s: max(_mmd(gm, sample(model, s, 10, 2000, shape=(2,), seed=1)[0], omega), 0.0) for s in names
           if s != "restart"}  # restart's loops alone cost 12 evaluations
    ddim = max(mmd["ddim"], 1e-5)
    assert {s for s, v in mmd.items() if v > 2 * ddim} <= OVER_2X_DDIM_NFE10, (ddim, mmd)
    assert all(v < 10 * ddim for v in mmd.values()), (ddim, mmd)


def test_dpm_solver_3_spends_the_whole_budget():
    model = _oracle().as_model(LIN)
    for nfe in (5, 6, 7, 10):
        _, info = sample(model, "dpm_solver_3", nfe, 16, shape=(2,))
        assert info["nfe_measured_per_batch"] == nfe


# -- analytic_dpm's declared input --------------------------------------------------------------------------------
def test_analytic_dpm_says_what_it_needs_and_estimates_gamma_from_data(tmp_path):
    info = SAMPLERS["analytic_dpm"]
    assert info.needs and "gamma_data" in info.needs
    assert all(not SAMPLERS[s].needs for s in SAMPLERS if s != "analytic_dpm")
    gm = _oracle()
    model = gm.as_model(LIN)
    with pytest.raises(ValueError, match="gamma_data"):
        sample(model, "analytic_dpm", 20, 100, shape=(2,))
    path = tmp_path / "data.npy"
    np.save(path, gm.sample(400, torch.Generator().manual_seed(5)).float().numpy())
    omega = mixture_frequencies(gm, 512)[0]
    x, _ = sample(model, "analytic_dpm", 20, 4000, shape=(2,), seed=1, grid="uniform_t", final_zero=True,
                  options={"gamma_data": str(path)})
    ddpm, _ = sample(model, "ddpm", 20, 4000, shape=(2,), seed=1, grid="uniform_t", final_zero=True)
    assert _mmd(gm, x, omega) < _mmd(gm, ddpm, omega)  # optimal variances beat DDPM's at 20 steps (Bao et al.)


# -- fitted grids stored with the model -------------------------------------------------------------------------
def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_grid_is_stored_with_the_model_and_reused(capsys, tmp_path):
    cfg = {"run_dir": str(tmp_path / "run"), "data": {"name": "moons", "n": 1000},
           "model": {"net": {"name": "mlp", "width": 16, "depth": 1}},
           "train": {"steps": 10, "batch_size": 64, "log_every": 10}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert _run(capsys, "train", "--config", str(tmp_path / "c.yaml"), "--quiet")[0] == 0
    run = str(tmp_path / "run")
    code, out, err = _run(capsys, "fit-grid", "--checkpoint", run, "--sampler", "dpm_solver_pp_2m", "--nfe", "5",
                          "--n-samples", "32", "--max-objective", "8", "--fit-reference", "unipc")
    assert code == 0, err
    stored = list((tmp_path / "run").rglob("grids/*.dpm_solver_pp_2m.nfe5.json"))
    assert len(stored) == 1
    rec = json.loads(stored[0].read_text())
    assert rec["sampler"] == "dpm_solver_pp_2m" and rec["nfe"] == 5 and len(rec["ts"]) >= 2
    assert {"heldout_init", "heldout_fit"} <= set(rec["fit"]) and rec["provenance"]["checkpoint"]
    code, out, _ = _run(capsys, "sample", "--checkpoint", run, "--sampler", "dpm_solver_pp_2m", "--nfe", "5",
                        "--n", "50", "--out", str(tmp_path / "s1"))
    assert code == 0 and "using the grid fit-grid stored" in out
    assert json.loads((tmp_path / "s1" / "sample.json").read_text())["grid"] == str(stored[0])
    code, out, _ = _run(capsys, "sample", "--checkpoint", run, "--sampler", "dpm_solver_pp_2m", "--nfe", "5",
                        "--grid", "karras", "--n", "50", "--out", str(tmp_path / "s2"))
    assert code == 0 and "using the grid" not in out
    code, _, err = _run(capsys, "fit-grid", "--model", "gmm:ring8", "--sampler", "ddim", "--nfe", "5")
    assert code == 2 and "checkpoint" in err
    code, out, err = _run(capsys, "fit-grid", "--checkpoint", run, "--sampler", "unipc", "--nfe", "5", "--free-end",
                          "--n-samples", "32", "--max-objective", "8", "--fit-reference", "unipc")
    assert code == 0, err
    rec = json.loads(next((tmp_path / "run").rglob("grids/*.unipc.nfe5.json")).read_text())
    assert rec["ts"][-1] == 0.0 and rec["fit"]["free_end"] is True and rec["fit"]["final_zero"] is True


def test_samplers_listing_shows_defaults_and_auto(capsys):
    code, out, _ = _run(capsys, "samplers")
    assert code == 0 and "auto (--sampler auto)" in out and "needs input" in out
    assert describe_rules("ddim") in out
