"""The demo's scoring and report (sliced W2 tables, and on the exact oracle the floor-free MMD^2 to its law), and the
quick demo end to end: files written, a winner named per NFE, an earlier run never overwritten."""
import json
from dataclasses import asdict

import pytest
import torch

from scorelab.cli.demo import QUICK, _report, _score, choose_plan, run_demo
from scorelab.core.analytic import ring_mixture


def test_demo_scores_oracle_samples_against_the_exact_law_and_reports_both_tables(tmp_path):
    gm = ring_mixture(8, 2.0, 0.1)
    g = torch.Generator().manual_seed(0)
    ref = gm.sample(3000, g).float()
    exact, blurred = gm.sample(3000, g), 1.3 * gm.sample(3000, g)  # a perfect sampler and a 30% too wide one
    results = {"perfect": {5: (exact, {"nfe_planned": 5})}, "wide": {5: (blurred, {"nfe_planned": 5})},
               "broken": {5: (torch.full((10, 2), float("nan")), {"nfe_planned": 5})}}
    table = _score(results, ref, gm)
    assert abs(table["perfect"]["5"]["mmd2_exact"]) < 1e-3 < table["wide"]["5"]["mmd2_exact"]
    assert "error" in table["broken"]["5"] and "mmd2_exact" not in table["broken"]["5"]
    assert "mmd2_exact" not in _score(results, ref)["perfect"]["5"]  # only with an exact mixture
    meta = {"command": "test", "wall_s": 1.0, "cpu_s": 1.0, "machine": "cpu", "train_steps": 1, "final_loss": 0.1,
            "train_wall_s": 1.0, "n_ref": 3000, "plan": asdict(QUICK), "out": "runs/test",
            "mmd2_exact_draws": {"ring8_oracle": 1e-4}}
    _report(tmp_path, meta, {"ring8_oracle": table}, {"ring8_oracle": 0.05}, [5, 10])
    text = (tmp_path / "report.md").read_text()
    assert "Unbiased MMD^2 to the exact law" in text and "NFE 5: perfect" in text
    assert text.count("Best at each budget") == 2


def test_quick_demo_writes_report_metrics_and_plots_and_names_a_winner_per_nfe(tmp_path, capsys):
    out = tmp_path / "demo"
    metrics = run_demo(str(out), quick=True)
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "metrics.json", "model"} <= names
    for tag in ("swiss_roll", "ring8_oracle"):
        assert {f"samples_{tag}.png", f"quality_vs_nfe_{tag}.png"} <= names
        assert (out / f"samples_{tag}.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["winners"] == metrics["winners"]
    text = (out / "report.md").read_text()
    samplers = set(QUICK.samplers) | {s + " (fitted grid)" for s in QUICK.fitted}
    for by_nfe in metrics["winners"].values():
        assert set(by_nfe) == {str(n) for n in QUICK.nfes}
        for nfe, w in by_nfe.items():
            assert w["sampler"] in samplers and w["value"] == w["value"]  # a real sampler with a finite score
            row = next(line for line in text.splitlines() if line.startswith(f"| {nfe} | "))
            assert w["sampler"] in row
    assert "Which sampler won" in text and "[demo" in capsys.readouterr().out
    for s in QUICK.fitted:  # fitted once, stored with the trained model (what `scorelab sample` reuses)
        for nfe in QUICK.fit_nfes:
            assert len(list((out / "model").rglob(f"grids/*.{s}.nfe{nfe}.json"))) == 1


def test_demo_refuses_an_earlier_run_and_conflicting_sizes(tmp_path):
    (tmp_path / "report.md").write_text("an earlier run")
    with pytest.raises(ValueError, match="--out"):
        run_demo(str(tmp_path), quick=True)
    assert (tmp_path / "report.md").read_text() == "an earlier run"
    with pytest.raises(ValueError, match="--quick and --full"):
        choose_plan(quick=True, full=True)
    full = choose_plan(full=True)
    assert "dopri5" not in full.samplers and {"ddim", "restart", "annealed_langevin"} <= set(full.samplers)
