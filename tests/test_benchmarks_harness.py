"""The benchmarks' harness (benchmarks/harness.py): paired statistics against scipy, seeds, the markdown table and the
atomic JSON / markdown writers; and every benchmark script's ``--help``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402

FIXED = [0.31, 0.12, 0.27, 0.44, 0.19, -0.05]


def test_paired_matches_scipy_on_a_fixed_example():
    pd = harness.paired(FIXED)
    res = stats.ttest_1samp(FIXED, 0.0, alternative="greater")
    assert pd["mean"] == pytest.approx(np.mean(FIXED), rel=1e-12)
    assert pd["std"] == pytest.approx(np.std(FIXED, ddof=1), rel=1e-12)
    assert pd["p_one_sided"] == pytest.approx(res.pvalue, rel=1e-12)
    assert pd["lower95"] == pytest.approx(res.confidence_interval(0.95).low, rel=1e-10)
    assert (pd["n_seeds"], pd["wins"]) == (6, 5)


def test_paired_clearly_significant_and_clearly_not():
    sig = harness.paired([1.0 + 0.01 * k for k in (-2, -1, 0, 1, 2)])
    assert sig["p_one_sided"] < 1e-6 and sig["lower95"] > 0.9 and sig["wins"] == 5
    flat = harness.paired([-1.0, 1.0, -0.5, 0.5, 0.05])
    assert flat["p_one_sided"] > 0.4 and flat["lower95"] < 0
    worse = harness.paired([-0.2, -0.3, -0.25, -0.1])
    assert worse["p_one_sided"] > 0.99 and worse["wins"] == 0


def test_paired_degenerate_and_bad_input():
    assert harness.paired([0.25, 0.25, 0.25])["p_one_sided"] == 0.0  # exactly equal: zero spread
    assert harness.paired([-0.125, -0.125])["p_one_sided"] == 1.0
    with pytest.raises(ValueError, match="non-empty 1-D"):
        harness.paired([])


def test_seed_differences_pair_by_seed():
    a = {1: {"m": 3.0}, 2: {"m": 5.0}, 3: {"m": 1.0}}
    b = {2: {"m": 4.0}, 1: {"m": 1.0}, 9: {"m": 0.0}}
    assert harness.seed_differences(a, b, "m") == [2.0, 1.0]


def test_mean_std_and_format():
    assert harness.mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(np.sqrt(2.0))}
    assert harness.mean_std([1.0, 3.0], ddof=0)["std"] == 1.0
    assert harness.mean_std([4.0]) == {"mean": 4.0, "std": 0.0}
    assert harness.fmt_mean_std([1.0, 3.0], ".2f") == "2.00 ± 1.41"
    assert harness.fmt_mean_std([4.0]) == "4.000"
    assert harness.fmt_mean_std([4.0], always_std=True) == "4.000 ± 0.000"


def test_heldout_seeds_exclude_the_dev_seed():
    assert harness.heldout_seeds(1, 3) == [1, 2, 3]
    with pytest.raises(ValueError, match="dev seed"):
        harness.heldout_seeds(0, 3)
    with pytest.raises(ValueError, match=">= 1"):
        harness.heldout_seeds(1, 0)


def test_markdown_table():
    assert harness.table(["a", "b"], [[1, "x"], [2.5, "y"]]) == ["| a | b |", "|---|---|", "| 1 | x |",
                                                                 "| 2.5 | y |"]
    with pytest.raises(ValueError, match="2 cells"):
        harness.table(["a"], [[1, 2]])


def test_write_json_round_trip_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "r.json"
    payload = {"x": [1.5, 2.0], "n": 3, "np": np.float64(0.25), "s": "ü"}
    harness.write_json(path, payload)
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": [1.5, 2.0], "n": 3, "np": 0.25, "s": "ü"}

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(harness.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        harness.write_json(path, {"other": 1})
    assert json.loads(path.read_text(encoding="utf-8"))["n"] == 3  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temporary file left


def test_write_results_command_line_and_provenance(tmp_path):
    jpath, mpath = harness.write_results("demo", {"rows": [{"a": 1}]}, "# Title\n\nbody\n", out=tmp_path,
                                         echo=False)
    lines = mpath.read_text().split("\n")
    assert lines[0] == f"Command: `python benchmarks/{harness.command()}`"
    assert lines[2:5] == ["# Title", "", "body"]
    rep = json.loads(jpath.read_text())
    assert rep["rows"] == [{"a": 1}]
    prov = rep["provenance"]
    for key in ("git_commit", "torch", "numpy", "python", "command", "argv", "wall_time_s", "cpu_time_s", "date"):
        assert key in prov
    assert prov["wall_time_s"] >= 0 and prov["cpu_time_s"] >= 0


HELP_ALL = r"""
import runpy, sys
ok = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
        ok.append(path)
    else:
        raise AssertionError(f"{path} --help did not exit")
print("HELP-OK", len(ok))
"""


def test_every_benchmark_script_parses_help():
    """One interpreter runs every ``benchmarks/*.py --help`` in turn (torch is imported once)."""
    scripts = sorted(str(p) for p in BENCH.glob("*.py") if p.name != "harness.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", HELP_ALL, *scripts], capture_output=True, text=True, env=env,
                         timeout=300, cwd=BENCH.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"HELP-OK {len(scripts)}" in out.stdout
    assert out.stdout.count("usage:") == len(scripts)


def test_grid_panel_members_carry_the_family_the_library_looks_up():
    """A panel member's family decides which member votes for which default (grid_panel.choose_rules); the library
    reads the table by ``samplers.defaults.family(process)``: the two must agree for every member."""
    from grid_panel import PANEL

    from scorelab.samplers.defaults import family
    assert {name: fam for name, (fam, proc, _) in PANEL.items()} == {name: family(proc()) for name, (_, proc, _) in
                                                                      PANEL.items()}
    assert {fam for fam, _, _ in PANEL.values()} == {"discrete", "discrete_cosine", "vp", "edm"}


def test_grid_panel_breaks_near_ties_over_the_kin_only():
    """choose_rules: within a family the rule of least geometric-mean ratio wins; rules within TIE of it are tied, and
    the tie goes to the rule best over the kin (both Discrete families), never a rule beyond TIE."""
    from grid_panel import RULES, TIE, choose_rules

    def res(lin_a: float, lin_b: float, cos_a: float, cos_b: float) -> dict:
        def member(a: float, b: float) -> dict:
            return {5: {"ddim": [a, b] + [1.0] * (len(RULES) - 2)}}
        return {"disc_lin_ring2d": member(lin_a, lin_b), "disc_lin_sep8d": member(lin_a, lin_b),
                "disc_cos_aniso16d": member(cos_a, cos_b)}
    near = 1e-3 * (1 + (TIE - 1) / 2)  # rule 1 trails rule 0 on the linear chain by half the tie margin
    picks = choose_rules(res(1e-3, near, 1e-2, 1e-3), ["ddim"], [5])
    assert picks["discrete"]["ddim"][5][0] == RULES[1]  # tied: the cosine member decides
    assert picks["discrete_cosine"]["ddim"][5][0] == RULES[1]
    far = 1e-3 * TIE * 1.5
    picks = choose_rules(res(1e-3, far, 1e-2, 1e-3), ["ddim"], [5])
    assert picks["discrete"]["ddim"][5][0] == RULES[0]  # not tied: the family's own best
    assert picks["all"]["ddim"][5][0] == RULES[1]  # "all" pools every member, no tie-break


def test_grid_panel_auto_prefers_a_deterministic_sampler_only_within_the_noise():
    """choose_auto: a stochastic sampler whose lead lies within the members' noise level ties with the deterministic
    one, which is then chosen; a lead beyond the noise (by more than TIE) keeps the stochastic sampler."""
    from grid_panel import RULES, choose_auto

    stoch, det = "euler_maruyama", "ddim"
    rule = {stoch: {20: (RULES[0], 1.0)}, det: {20: (RULES[0], 1.0)}}
    rules = {f: rule for f in ("discrete", "all")}
    members = ("disc_lin_ring2d", "disc_lin_sep8d")

    def res(v_stoch: float, v_det: float) -> dict:
        return {o: {20: {stoch: [v_stoch] * len(RULES), det: [v_det] * len(RULES)}} for o in members}
    floors = {o: 1e-4 for o in members}
    picks = choose_auto(res(2e-5, 8e-5), rules, [stoch, det], [20], floors)  # both below the noise: tied
    assert picks["discrete"][20][0] == det and picks["discrete"][20][1] == pytest.approx(4.0)
    picks = choose_auto(res(1e-4, 5e-4), rules, [stoch, det], [20], floors)  # 5x, beyond the noise
    assert picks["discrete"][20][0] == stoch
    picks = choose_auto(res(2e-5, 8e-5), rules, [stoch, det], [20], {o: 1e-5 for o in members})  # no noise: 4x
    assert picks["discrete"][20][0] == stoch
