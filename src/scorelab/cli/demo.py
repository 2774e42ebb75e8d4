"""``make demo`` / ``scorelab demo``: the main job on built-in data, a few minutes on 2 CPU cores.

1. Train a VP-SDE score model (MLP, eps-prediction) on the swiss roll (SFT-PG protocol data).
2. Sample with every registered sampler at several NFE budgets, from the same x_T, plus UniPC and DPM-Solver++ 2M
   on grids fitted to the model's own ODE solution (``grid_opt``, model only).
3. Measure sliced W2 and MMD to held-out data (with the two-sample floor), and repeat the sampling on the exact
   Gaussian-mixture oracle of an 8-mode ring so solver error is seen apart from model error (there also the unbiased
   MMD^2 to the exact law, which has no floor).
4. Write ``runs/demo/``: ``samples_nfe*.png``, ``quality_vs_nfe.png``, ``metrics.json``, ``report.md``, the model's
   checkpoint (``model/``) and training log.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import torch

SKIP_IN_DEMO = {"dopri5"}  # adaptive: reported separately with its measured NFE
#: samplers also run on a grid fitted to the model's own ODE solution (``grid_opt``; small fits to keep the demo short)
FITTED_IN_DEMO = ("unipc", "dpm_solver_pp_2m")
DEMO_FIT = {"n_samples": 256, "n_heldout": 256, "max_objective": 150}


def _demo_experiment(out: Path, quick: bool):
    from ..training.experiment import experiment_from_dict

    steps = 400 if quick else 5000
    return experiment_from_dict({
        "run_dir": str(out / "model"),
        "data": {"name": "swiss_roll", "n": 50_000, "seed": 0},
        "process": {"name": "vp"},
        "model": {"net": {"name": "mlp", "width": 128, "depth": 3}, "parameterization": "eps"},
        "loss": {"proposal": "uniform", "weighting": "eps"},
        "train": {"steps": steps, "batch_size": 512, "lr": 2e-3, "warmup_steps": min(200, steps // 10),
                  "ema_decay": 0.995, "log_every": 100, "seed": 0},
    })


def _budget_ok(name: str, nfe: int) -> bool:
    from ..samplers import SAMPLERS

    e = SAMPLERS[name].evals_per_step
    return not (math.isnan(e) or e > nfe)


def _sample_all(model, nfes, n, seed, dtype):
    from ..samplers import SAMPLERS
    from ..samplers.budget import run_sampler

    out: dict[str, dict[int, tuple[torch.Tensor, dict]]] = {}
    for name in SAMPLERS:
        if name in SKIP_IN_DEMO:
            continue
        for nfe in nfes:
            if not _budget_ok(name, nfe):
                continue
            try:
                x, info = run_sampler(model, name, nfe, n, seed=seed, shape=(2,), dtype=dtype)
            except ValueError as e:  # an impossible budget for this sampler: say so in the report
                out.setdefault(name, {})[nfe] = (None, {"error": str(e)})
                continue
            x = x.x0 if hasattr(x, "xs") else x
            out.setdefault(name, {})[nfe] = (x.float(), info)
    for name in FITTED_IN_DEMO:
        for nfe in nfes:
            x, info = run_sampler(model, name, nfe, n, seed=seed, shape=(2,), dtype=dtype, fit_grid=True,
                                  fit_kw=DEMO_FIT)
            out.setdefault(f"{name} (fitted grid)", {})[nfe] = (x.float(), info)
    return out


def _score(results, reference, mixture=None):
    """Sliced W2 and MMD^2 to the held-out ``reference``; with the exact ``mixture`` also the unbiased MMD^2 to its
    law (``metrics.mmd2_to_mixture_by_bandwidth``: no two-sample floor)."""
    from ..evaluation.metrics import mmd2_to_mixture_by_bandwidth, mmd2_unbiased, sliced_w2

    table: dict[str, dict[str, dict]] = {}
    for name, by_nfe in results.items():
        for nfe, (x, info) in by_nfe.items():
            row = {k: info[k] for k in ("nfe_planned", "nfe_measured_per_batch", "wall_s") if k in info}
            if x is None or not torch.isfinite(x).all():
                row["error"] = info.get("error", "non-finite samples")
            else:
                row["sliced_w2"] = sliced_w2(x, reference)
                row["mmd2"] = mmd2_unbiased(x[:2000], reference[:2000])
                if mixture is not None:
                    row["mmd2_exact"] = mmd2_to_mixture_by_bandwidth(x, mixture)["mmd2"]
            table.setdefault(name, {})[str(nfe)] = row
    return table


def _plots(results, table, reference, out: Path, floor: float, tag: str, nfe_show: int):
    from .. import plotting

    panels = {f"{n} ({r[nfe_show][1].get('nfe_planned')} NFE)": r[nfe_show][0] for n, r in results.items()
              if nfe_show in r and r[nfe_show][0] is not None}
    plotting.scatter_panels(panels, str(out / f"samples_{tag}_nfe{nfe_show}.png"), reference=reference,
                            title=f"{tag}: samples at NFE {nfe_show} (grey: data)")
    curves = {}
    for name, rows in table.items():
        pts = sorted((int(k), v["sliced_w2"]) for k, v in rows.items() if "sliced_w2" in v)
        if pts:
            curves[name] = ([p[0] for p in pts], [p[1] for p in pts])
    plotting.quality_vs_nfe(curves, str(out / f"quality_vs_nfe_{tag}.png"), floor=floor,
                            title=f"{tag}: sliced W2 to held-out data vs NFE")


def _best(table, nfe, key="sliced_w2"):
    rows = [(v[str(nfe)][key], k) for k, v in table.items() if str(nfe) in v and key in v[str(nfe)]]
    return min(rows) if rows else (float("nan"), "-")


def _table(table: dict, nfes, key: str, spec: str) -> list[str]:
    lines = ["| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for name, rows in table.items():
        cells = ["-" if (r := rows.get(str(n))) is None or key not in r else f"{r[key]:{spec}}" for n in nfes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", "Best at each budget: " + ", ".join(
        f"NFE {n}: {_best(table, n, key)[1]} ({_best(table, n, key)[0]:{spec}})" for n in nfes), ""]


def _report(out: Path, meta: dict, tables: dict, floors: dict, nfes) -> None:
    lines = ["# scorelab demo", "", f"Command: `{meta['command']}` — wall time {meta['wall_s']:.0f} s on "
             f"{meta['machine']}.", "",
             "Trained a VP-SDE eps-model (residual MLP, width 128, 3 blocks) on the swiss roll for "
             f"{meta['train_steps']} steps "
             f"(final loss {meta['final_loss']:.4f}, {meta['train_wall_s']:.0f} s).", ""]
    for tag, table in tables.items():
        lines += [f"## {tag}", "", f"Sliced W2 to {meta['n_ref']} held-out points "
                  f"(two-sample floor {floors[tag]:.4f}); lower is better.", ""]
        lines += _table(table, nfes, "sliced_w2", ".4f")
        if any("mmd2_exact" in r for rows in table.values() for r in rows.values()):
            lines += ["Unbiased MMD^2 to the exact law (`metrics.mmd2_to_mixture`: 0 in expectation for a perfect "
                      "sampler, no two-sample floor, so it ranks samplers where sliced W2 sits at its floor; it can be "
                      "slightly negative).", ""]
            lines += _table(table, nfes, "mmd2_exact", ".2e")
        lines += [f"![samples](samples_{tag}_nfe{nfes[1]}.png)", "", f"![quality](quality_vs_nfe_{tag}.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def run_demo(out: str | os.PathLike = "runs/demo", quick: bool = False, seed: int = 0) -> dict:
    from .._version import __version__
    from ..core.analytic import ring_mixture
    from ..core.processes import VP
    from ..data import load_dataset
    from ..evaluation.metrics import sliced_w2
    from ..training.experiment import run_training

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exp = _demo_experiment(out, quick)
    print(f"[demo] training {exp.train.steps} steps on the swiss roll -> {out / 'model'}")
    trained = run_training(exp, progress=True)
    model = trained["model"].eval()
    nfes = (5, 10, 20, 50) if not quick else (5, 10)
    n = 5000 if not quick else 2000
    ref, _ = load_dataset("swiss_roll", n=n, seed=12345)
    ref2, _ = load_dataset("swiss_roll", n=n, seed=54321)
    floors = {"swiss_roll": sliced_w2(ref, ref2)}
    print("[demo] sampling the trained model with every sampler")
    res_model = _sample_all(model, nfes, n, seed, torch.float32)
    tables = {"swiss_roll": _score(res_model, ref)}
    _plots(res_model, tables["swiss_roll"], ref, out, floors["swiss_roll"], "swiss_roll", nfes[1])
    print("[demo] the same samplers on the exact 8-mode ring oracle (solver error only)")
    gm = ring_mixture(8, 2.0, 0.1)
    oracle = gm.as_model(VP())
    gref = gm.sample(n, torch.Generator().manual_seed(1)).float()
    floors["ring8_oracle"] = sliced_w2(gref, gm.sample(n, torch.Generator().manual_seed(2)).float())
    res_oracle = _sample_all(oracle, nfes, n, seed, torch.float64)
    tables["ring8_oracle"] = _score(res_oracle, gref, gm)
    _plots(res_oracle, tables["ring8_oracle"], gref, out, floors["ring8_oracle"], "ring8_oracle", nfes[1])
    meta = {"command": "make demo" if not quick else "scorelab demo --quick", "wall_s": time.perf_counter() - t0,
            "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
            "scorelab": __version__, "train_steps": trained["step"],
            "final_loss": trained["final_loss"] or float("nan"),
            "train_wall_s": trained["wall_s"], "n_ref": n, "seed": seed}
    metrics = {"meta": meta, "floors": floors, "tables": tables}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    _report(out, meta, tables, floors, list(nfes))
    print(f"[demo] wrote {out}/report.md, metrics.json and plots in {meta['wall_s']:.0f} s")
    return metrics
