"""Fitted time grids (``samplers.grid_opt``): the parameterisation, the pathwise-error objective and its bound, the
fit itself on an exact mixture oracle, saving / loading, and the CLI's ``--fit-grid`` / ``--grid-file``."""
import json
import math

import numpy as np
import pytest
import torch

from scorelab.cli import main
from scorelab.core.analytic import ring_mixture
from scorelab.core.processes import VP, Discrete
from scorelab.core.schedules import make_grid
from scorelab.samplers import SAMPLERS
from scorelab.samplers.grid_opt import (
    GridFit,
    grid_from_theta,
    load_grid,
    ode_reference,
    optimize_grid,
    theta_from_grid,
)


@pytest.fixture(scope="module")
def oracle():
    return ring_mixture(8, radius=2.0, std=0.1, d=2).as_model(VP())


@pytest.mark.parametrize("process", [VP(), Discrete.from_schedule("linear", 1000)])
def test_theta_round_trip(process):
    ts = make_grid("karras", process, 7)
    p, lo, hi = process, float(process.log_snr(ts[0])), float(process.log_snr(ts[-1]))
    back = grid_from_theta(p, theta_from_grid(p, ts), lo, hi, float(ts[0]), float(ts[-1]), False)
    assert torch.allclose(back, ts, rtol=1e-9, atol=1e-12)
    with_zero = grid_from_theta(p, np.zeros(6), lo, hi, float(ts[0]), float(ts[-1]), True)
    assert with_zero[-1] == 0 and torch.all(with_zero[1:] < with_zero[:-1])
    # theta = 0: equal increments of lambda, i.e. the uniform log-SNR grid
    assert torch.allclose(with_zero[:-1], make_grid("uniform_log_snr", p, 7, t_max=float(ts[0]),
                                                    t_min=float(ts[-1]), snap=False), rtol=1e-8)


def test_reference_is_the_converged_ode_solution(oracle):
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ode_reference(oracle, x_T, 1.0, 1e-3, False)
    fine = SAMPLERS["dpm_solver_pp_2m"].fn(oracle, x_T, make_grid("uniform_log_snr", VP(), 400, t_min=1e-3))
    assert (fine - ref).abs().max() < 1e-4


@pytest.mark.parametrize("final_zero", [False, True])
def test_unipc_reference_matches_a_tight_dopri5(oracle, final_zero):
    """The fixed-step teacher (UniPC-3 on 1000 log-SNR steps) is the same flow as dopri5 at rtol 1e-10 (and the
    same final step to 0); it costs exactly its steps (+1 for the step to 0) in evaluations."""
    from scorelab.core.denoisers import CountingModel

    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tight = ode_reference(oracle, x_T, 1.0, 1e-3, final_zero, rtol=1e-10, atol=1e-10)
    counter = CountingModel(oracle)
    fixed = ode_reference(counter, x_T, 1.0, 1e-3, final_zero, method="unipc", steps=1000)
    assert (fixed - tight).abs().max() < 1e-6
    assert counter.nfe == 1000 + int(final_zero)
    with pytest.raises(ValueError, match="reference solver"):
        ode_reference(oracle, x_T, 1.0, 1e-3, False, method="rk4")
    with pytest.raises(ValueError, match="steps"):
        ode_reference(oracle, x_T, 1.0, 1e-3, False, method="unipc", steps=0)


def test_fit_with_the_unipc_reference(oracle):
    fit = optimize_grid(oracle, "dpm_solver_pp_2m", 3, n_samples=64, n_heldout=64, max_objective=30,
                        dtype=torch.float64, reference="unipc", ref_steps=200)
    assert fit.loss_fit <= fit.loss_init and fit.model_evals >= 2 * 200 and fit.reference == "unipc"


def test_fit_lowers_the_held_out_pathwise_error(oracle):
    """The fitted grid is a valid grid on the same endpoints, and it lowers the pathwise error on x_T it never saw
    by a large factor (DDIM with 4 steps on the 8-mode ring)."""
    fit = optimize_grid(oracle, "ddim", 4, init="uniform_log_snr", objective="pathwise", n_samples=128,
                        n_heldout=128, max_objective=120, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    ts0 = make_grid("uniform_log_snr", VP(), 4)
    assert fit.ts[0] == ts0[0] and fit.ts[-1] == ts0[-1] and len(fit.ts) == 5
    assert torch.all(fit.ts[1:] < fit.ts[:-1])
    assert fit.loss_fit < fit.loss_init and fit.heldout_fit < 0.5 * fit.heldout_init
    assert fit.n_objective <= 120 and fit.model_evals > 0
    assert all(a >= b for a, b in zip(fit.history, fit.history[1:], strict=False))  # running best
    # the objective is E|S(x_T) - Phi(x_T)|^2 per coordinate: recompute it on the held-out batch
    g = torch.Generator().manual_seed(1)
    VP().prior_sample((128, 2), generator=g, dtype=torch.float64)
    x_held = VP().prior_sample((128, 2), generator=g, dtype=torch.float64)
    out = SAMPLERS["ddim"].fn(oracle, x_held, fit.ts)
    err = float(((out - ode_reference(oracle, x_held, 1.0, float(ts0[-1]), False)) ** 2).mean())
    assert math.isclose(err, fit.heldout_fit, rel_tol=1e-6)


def test_sliced_objective_lowers_the_distributional_error(oracle):
    """Default objective: squared sliced W2 between S(x_i) and Phi(x_i); recomputed here on the held-out batch with
    the same directions, and it bounds nothing from below: it never exceeds the pathwise error of the same grid."""
    kw = dict(init="uniform_t", n_samples=256, n_heldout=256, max_objective=120, dtype=torch.float64)
    fit = optimize_grid(oracle, "dpm_solver_pp_2m", 3, generator=torch.Generator().manual_seed(2), **kw)
    assert fit.objective == "sliced_w2" and fit.heldout_fit < 0.5 * fit.heldout_init
    g = torch.Generator().manual_seed(2)
    VP().prior_sample((256, 2), generator=g, dtype=torch.float64)
    x_held = VP().prior_sample((256, 2), generator=g, dtype=torch.float64)
    u = torch.randn(2, 128, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    out, ref = SAMPLERS["dpm_solver_pp_2m"].fn(oracle, x_held, fit.ts), ode_reference(oracle, x_held, 1.0, 1e-3, False)
    sw = float(((torch.sort(out @ u, 0).values - torch.sort(ref @ u, 0).values) ** 2).mean())
    assert math.isclose(sw, fit.heldout_fit, rel_tol=1e-6)
    assert sw <= float(((out - ref) ** 2).sum(1).mean())


def test_pathwise_error_bounds_the_sliced_w2(oracle):
    """W2(law S, law Phi)^2 <= E|S - Phi|^2, so every 1-D projection obeys it too (checked on the sorted coupling)."""
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(512, 2, generator=g, dtype=torch.float64)
    ts = make_grid("uniform_t", VP(), 3)
    out, ref = SAMPLERS["ddim"].fn(oracle, x_T, ts), ode_reference(oracle, x_T, 1.0, float(ts[-1]), False)
    bound = float(((out - ref) ** 2).sum(1).mean())
    for theta in np.linspace(0, np.pi, 7):
        u = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
        w2_sq = float(((torch.sort(out @ u).values - torch.sort(ref @ u).values) ** 2).mean())
        assert w2_sq <= bound + 1e-12


def test_final_zero_and_multistep(oracle):
    fit = optimize_grid(oracle, "dpm_solver_pp_2m", 3, final_zero=True, n_samples=64, n_heldout=64, max_objective=40,
                        dtype=torch.float64)
    assert fit.objective == "sliced_w2"
    assert len(fit.ts) == 5 and fit.ts[-1] == 0 and fit.loss_fit <= fit.loss_init


@pytest.fixture(scope="module")
def discrete_oracle():
    return ring_mixture(8, radius=2.0, std=0.1, d=2).as_model(Discrete.from_schedule("linear", 1000))


def test_free_end_moves_t_min_and_fits_the_full_ode(discrete_oracle):
    """``free_end``: the last time before the step to 0 is fitted too, against the model's full ODE solution (down to
    the process's own t_min = 1/N, then the step to 0).  Started from diffusers' linspace timesteps (last one at k =
    250, t = 0.251) the fit moves that time down, and it lowers the held-out error, recomputed here."""
    p = discrete_oracle.process
    ts0 = make_grid("ddpm_linspace", p, 3)
    fit = optimize_grid(discrete_oracle, "dpm_solver_pp_2m", 3, init="ddpm_linspace", final_zero=True, free_end=True,
                        objective="pathwise", n_samples=64, n_heldout=64, max_objective=60, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(5))
    assert fit.free_end and len(fit.ts) == 5 and fit.ts[0] == ts0[0] and fit.ts[-1] == 0
    assert torch.all(fit.ts[1:] < fit.ts[:-1]) and p.t_min <= float(fit.ts[-2]) < 0.9 * float(ts0[-1])
    assert fit.heldout_fit < 0.5 * fit.heldout_init
    g = torch.Generator().manual_seed(5)
    p.prior_sample((64, 2), generator=g, dtype=torch.float64)
    x_held = p.prior_sample((64, 2), generator=g, dtype=torch.float64)
    full = ode_reference(discrete_oracle, x_held, 1.0, p.t_min, True)
    for ts, held in ((fit.ts, fit.heldout_fit), (torch.cat([ts0, ts0.new_zeros(1)]), fit.heldout_init)):
        err = float(((SAMPLERS["dpm_solver_pp_2m"].fn(discrete_oracle, x_held, ts) - full) ** 2).mean())
        assert math.isclose(err, held, rel_tol=1e-6)


def test_the_fit_starts_from_the_best_initial_grid(discrete_oracle):
    """A list of initial grids (names or explicit grids, a trailing 0 allowed with ``final_zero``) is scored on the
    fitting batch and the fit starts from the best; with no budget left for Powell that grid is the result."""
    p = discrete_oracle.process
    explicit = make_grid("uniform_t", p, 3, final_zero=True)
    kw = dict(final_zero=True, free_end=True, objective="pathwise", n_samples=32, n_heldout=0, dtype=torch.float64)
    fit = optimize_grid(discrete_oracle, "ddim", 3, init=["karras", "ddpm_linspace", explicit], max_objective=3, **kw)
    assert set(fit.init_losses) == {"karras", "ddpm_linspace", "grid2"} and fit.n_objective == 3
    assert fit.init == min(fit.init_losses, key=fit.init_losses.get)
    assert fit.loss_init == fit.loss_fit == min(fit.init_losses.values())
    best = explicit[:-1] if fit.init == "grid2" else make_grid(fit.init, p, 3)
    assert torch.allclose(fit.ts[:-1], best, rtol=1e-9) and fit.ts[-1] == 0
    with pytest.raises(ValueError, match="t_min"):  # without free_end the starts must share both endpoints
        optimize_grid(discrete_oracle, "ddim", 3, init=["karras", "ddpm_linspace"], final_zero=True)
    with pytest.raises(ValueError, match="expected 4 times"):
        optimize_grid(discrete_oracle, "ddim", 3, init=[make_grid("karras", p, 5)], final_zero=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "ddpm", "n_steps": 4}, "deterministic"),
    ({"sampler": "dopri5", "n_steps": 4}, "adaptive"),
    ({"sampler": "nope", "n_steps": 4}, "unknown sampler"),
    ({"sampler": "ddim", "n_steps": 1}, "n_steps"),
    ({"sampler": "ddim", "n_steps": 3, "objective": "kl"}, "objective"),
    ({"sampler": "ddim", "n_steps": 3, "grid_kw": {"final_zero": True}}, "final_zero"),
    ({"sampler": "ddim", "n_steps": 3, "reference": "rk4"}, "reference solver"),
    ({"sampler": "ddim", "n_steps": 3, "free_end": True}, "final_zero"),
    ({"sampler": "ddim", "n_steps": 3, "init": []}, "at least one"),
])
def test_bad_requests(oracle, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimize_grid(oracle, **kwargs)


def test_save_and_load(tmp_path):
    ts = make_grid("karras", VP(), 5)
    fit = GridFit(ts=ts, sampler="ddim", init="karras", final_zero=False, objective="pathwise", loss_init=1.0,
                  loss_fit=0.5,
                  heldout_init=1.0, heldout_fit=0.6, n_objective=3, model_evals=30)
    fit.save(tmp_path / "g.json")
    assert torch.equal(load_grid(tmp_path / "g.json"), ts)
    (tmp_path / "bad.json").write_text(json.dumps({"ts": [0.1, 0.5]}))
    with pytest.raises(ValueError, match="strictly decreasing"):
        load_grid(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="'ts'"):
        load_grid(tmp_path / "bad2.json")


def test_cli_fit_grid_then_reuse(capsys, tmp_path):
    args = ["sample", "--model", "gmm:ring8", "--process", "vp", "--sampler", "dpm_solver_pp_2m", "--nfe", "4",
            "--n", "300"]
    assert main(args + ["--fit-grid", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "fitted grid" in out
    info = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert info["grid"].startswith("fitted:") and info["grid_fit"]["heldout_fit"] <= info["grid_fit"]["heldout_init"]
    grid = tmp_path / "a" / "grid.json"
    assert main(args + ["--grid-file", str(grid), "--out", str(tmp_path / "b")]) == 0
    a, b = np.load(tmp_path / "a" / "samples.npy"), np.load(tmp_path / "b" / "samples.npy")
    assert np.allclose(a, b)  # same grid, same seed: the same samples
    assert main(args[:-4] + ["--nfe", "3", "--n", "300", "--grid-file", str(grid)]) == 2
    assert "over the --nfe budget" in capsys.readouterr().err
    assert main(["sample", "--model", "gmm:ring8", "--sampler", "ddpm", "--nfe", "5", "--fit-grid"]) == 2
    assert "deterministic" in capsys.readouterr().err
    assert main(args + ["--fit-grid", "--grid-file", str(grid)]) == 2
    assert "give one of them" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(args + ["--grid-file", str(tmp_path / "bad.json")]) == 2
    assert "'ts'" in capsys.readouterr().err
    assert info["grid_fit"]["reference"] == "dopri5"  # the default teacher
    assert main(args + ["--fit-grid", "--fit-reference", "unipc", "--out", str(tmp_path / "c")]) == 0
    fit_c = json.loads((tmp_path / "c" / "sample.json").read_text())["grid_fit"]
    assert fit_c["reference"] == "unipc" and fit_c["model_evals"] >= 2 * 1000
