"""The demo's scoring and report: sliced W2 tables, and on the exact oracle the floor-free MMD^2 to its law."""
import torch

from scorelab.cli.demo import _report, _score
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
    meta = {"command": "test", "wall_s": 1.0, "machine": "cpu", "train_steps": 1, "final_loss": 0.1,
            "train_wall_s": 1.0, "n_ref": 3000}
    _report(tmp_path, meta, {"ring8_oracle": table}, {"ring8_oracle": 0.05}, [5, 10])
    text = (tmp_path / "report.md").read_text()
    assert "Unbiased MMD^2 to the exact law" in text and "NFE 5: perfect" in text
    assert text.count("Best at each budget") == 2
