r"""Why the likelihood-weighted digits model's ODE likelihood fails on held-out digits: a training-curve diagnosis.

``likelihood_digits20k_lr5e-4.md`` found that likelihood weighting (Song, Durkan, Murray & Ermon 2021) lowers both
ELBOs of the flattened-digits MLP after 20k steps, but its probability-flow ODE carries some held-out digits to
|x_T| ~ 1e9 (the simple-weighting model's flow stays bounded).  This script trains both weightings once (same init,
data order, lr 5e-4, the schedule of a 20k-step run) and, at snapshots along the run, evaluates the same number of
*training* and *held-out* digits (fresh dequantization noise for both): ODE NLL (median, mean, max |x_T|),
continuous and discrete ELBO, in bits/dim of the 17-level data.  ``--clip`` also evaluates every snapshot as a
``ClippedModel`` (x0 projected into [-1, 1], where the exact denoiser of this data lies); ``--trace`` integrates the
raw flows of the last snapshot on a time grid and reports where the blown-up trajectories leave the others.

Hypothesis tested first: memorization at small t (the flow repelled from the nearest training digit).  The run
refutes it (``results/likelihood_findings.md``): training digits blow up too, and the trajectories separate at
t ~ 0.3-0.5, where the network's eps grows with |x| off the data (extrapolation), not at small t.

    python benchmarks/likelihood_lw_digits.py --seeds S --clip --trace --stem likelihood_lw_digits_clip_sS
    python benchmarks/likelihood_lw_digits.py --merge benchmarks/results/likelihood_lw_digits_clip_s{0,1}.json

Writes ``benchmarks/results/<stem>.{json,md,png}`` (default stem ``likelihood_lw_digits``).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import RESULTS, provenance, write_json, write_text_atomic  # noqa: E402
from likelihood import (  # noqa: E402
    SCALE,
    VP_PROCESS,
    Dequantized,
    make_net,
    nll_metrics,
)

from scorelab.core.denoisers import ClippedModel, NetworkModel  # noqa: E402
from scorelab.data.images import digits_split  # noqa: E402
from scorelab.evaluation.likelihood import dequantize  # noqa: E402
from scorelab.plotting import line_plot  # noqa: E402
from scorelab.training.loop import TrainConfig, train  # noqa: E402
from scorelab.training.losses import DSMLoss, LossConfig  # noqa: E402

LOSSES = {"simple": LossConfig(proposal="uniform", weighting="eps"),
          "likelihood": LossConfig(proposal="importance", weighting="likelihood")}
DENOISERS = {"raw": "the network's denoiser", "clipped": "x0 clipped to [-1, 1] (`ClippedModel`)"}
TRACE_TS = (1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
METRICS = ("ode_nll_median", "ode_nll", "ode_max_abs_xT", "cont_elbo_nll", "disc_elbo_nll")


def _flat(m: dict) -> dict:
    return {k: (v["mean"] if isinstance(v, dict) else v) for k, v in m.items() if k in METRICS}


@torch.no_grad()
def trace_flow(model, x: torch.Tensor, ts: tuple[float, ...], rtol: float) -> list[dict]:
    """Where the probability-flow ODE leaves the data: integrate x_0 -> x_T (dopri5) and, at each t in ``ts``, the
    largest |x| coordinate and the largest RMS of eps_hat among trajectories that end with |x_T|_inf > 10 ("blown
    up") and among the others."""
    from torchdiffeq import odeint

    from scorelab.samplers.ode import pf_ode_drift

    def f(t, y):
        return pf_ode_drift(model, y, t.expand(y.shape[0]))[0]

    grid = torch.tensor(ts, dtype=x.dtype)
    traj = odeint(f, x, grid, rtol=rtol, atol=rtol, method="dopri5")
    blown = traj[-1].flatten(1).abs().amax(1) > 10
    out = []
    for i, t in enumerate(ts):
        xi = traj[i].flatten(1).abs().amax(1)
        ei = model.eps(traj[i], grid[i].expand(x.shape[0])).flatten(1).pow(2).mean(1).sqrt()
        row = {"t": t, "n_blown": int(blown.sum())}
        for tag, m in (("blown", blown), ("others", ~blown)):
            row[f"max_abs_x_{tag}"] = float(xi[m].max()) if m.any() else None
            row[f"max_rms_eps_{tag}"] = float(ei[m].max()) if m.any() else None
        out.append(row)
    return out


def run_seed(seed: int, a) -> list[dict]:
    """Snapshots of both weightings on training and held-out digits (same count, same evaluation settings)."""
    xtr, _, xte, _ = digits_split(seed=0)
    n = a.n_eval
    sets = {"train": xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:n]], "test": xte[:n]}
    ev = SimpleNamespace(rtol_img=a.rtol, elbo_samples=a.elbo_samples)
    torch.manual_seed(seed)
    init = NetworkModel(make_net("digits"), VP_PROCESS, "eps")
    cfg = TrainConfig(steps=a.steps, batch_size=256, lr=a.lr, warmup_steps=50, ema_decay=0.999, seed=seed,
                      log_every=10**9, keep_checkpoints=1, weight_decay=a.weight_decay)
    rows, traces = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, lc in LOSSES.items():
            run_dir, t_train = Path(tmp) / name, 0.0
            for k in a.snapshots:
                t0 = time.perf_counter()
                res = train(copy.deepcopy(init), xtr, cfg, run_dir=run_dir, resume=True, until_step=k,
                            loss_fn=Dequantized(DSMLoss(lc)), progress=False)
                t_train += time.perf_counter() - t0
                models = {"raw": res.ema_model.eval()}
                if a.clip:
                    models["clipped"] = ClippedModel(models["raw"], (-1.0, 1.0))
                for denoiser, model in models.items():
                    for split, x in sets.items():
                        rows.append({"seed": seed, "weighting": name, "step": k, "split": split, "denoiser": denoiser,
                                     **_flat(nll_metrics(model, x, "digits", seed, ev))})
                    print(f"[seed {seed}] {name} ({denoiser}) step {k}: " + ", ".join(
                        f"{r['split']} ode med {r['ode_nll_median']:.3f} max|xT| {r['ode_max_abs_xT']:.3g} "
                        f"cont {r['cont_elbo_nll']:.3f}" for r in rows[-2:]) + f" (train {t_train:.0f}s)", flush=True)
                if a.trace and k == a.snapshots[-1]:
                    for split, x in sets.items():
                        gen = torch.Generator().manual_seed(20_000 + seed)  # the dequantization of nll_metrics
                        xd = dequantize(torch.round((x + 1) * 8), generator=gen, scale=SCALE)
                        traces.append({"seed": seed, "weighting": name, "step": k, "split": split,
                                       "rows": trace_flow(models["raw"], xd, TRACE_TS, a.rtol)})
    return rows, traces


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 100 else f"{v:.3f}"


def _trace_lines(traces: list[dict]) -> list[str]:
    """Per (seed, weighting, split): largest |x| coordinate and RMS eps_hat along the flow, blown-up vs others."""
    if not traces:
        return []
    lines = ["## Where the flow leaves the data (last snapshot, raw denoiser)", "",
             "Trajectories x_0 -> x_T of the same digits (dopri5); \"blown up\" = |x_T|_inf > 10.  Cells: largest "
             "|x| coordinate / largest RMS of eps_hat, blown-up trajectories vs the others.", "",
             "| seed | weighting | split | blown up | " + " | ".join(f"t = {t:g}" for t in TRACE_TS) + " |",
             "|---" * (4 + len(TRACE_TS)) + "|"]
    for tr in traces:
        cells = []
        for r in tr["rows"]:
            b = "-" if r["max_abs_x_blown"] is None else f"{_fmt(r['max_abs_x_blown'])}/{_fmt(r['max_rms_eps_blown'])}"
            cells.append(f"{b} vs {_fmt(r['max_abs_x_others'])}/{_fmt(r['max_rms_eps_others'])}")
        lines.append(f"| {tr['seed']} | {tr['weighting']} | {'held-out' if tr['split'] == 'test' else 'train'} | "
                     f"{tr['rows'][0]['n_blown']} | " + " | ".join(cells) + " |")
    return lines + [""]


def summarize(rows: list[dict], meta: dict, stem: str, traces: list[dict] | None = None) -> None:
    seeds = sorted({r["seed"] for r in rows})
    steps = sorted({r["step"] for r in rows})
    lines = [f"Command: `{meta['command']}`", "",
             "# Likelihood weighting on digits: train vs held-out along training", "",
             f"Flattened-digits MLP (width 256, depth 3), lr {meta['lr']}, AdamW weight decay "
             f"{meta.get('weight_decay', 0.0)}, batch 256, schedule of {meta['steps']} steps (warmup 50 + cosine), "
             f"EMA 0.999; {meta['n_eval']} training and {meta['n_eval']} held-out digits, "
             "fresh uniform dequantization for both; ODE with one Rademacher probe, dopri5 rtol = atol = "
             f"{meta['rtol']}; bits/dim of the 17-level data; seeds {seeds} (per-seed values separated by /).", ""]
    for name, denoiser in ((n, d) for d in DENOISERS for n in LOSSES if any(r.get("denoiser", "raw") == d
                                                                            for r in rows)):
        lines += [f"## {name} weighting, {DENOISERS[denoiser]}", "",
                  "| step | ODE median train | ODE median held-out | max abs x_T train | max abs x_T held-out | "
                  "-cont. ELBO train | -cont. ELBO held-out | -disc. ELBO train | -disc. ELBO held-out |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k in steps:
            cells = []
            for metric in ("ode_nll_median", "ode_max_abs_xT", "cont_elbo_nll", "disc_elbo_nll"):
                for split in ("train", "test"):
                    vals = [r[metric] for s in seeds for r in rows if (r["seed"], r["weighting"], r["step"], r["split"],
                                                                       r.get("denoiser", "raw")) ==
                            (s, name, k, split, denoiser)]
                    cells.append(" / ".join(_fmt(v) for v in vals))
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _trace_lines(traces or [])
    write_text_atomic(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    write_json(RESULTS / f"{stem}.json", {"provenance": provenance(), "meta": meta, "rows": rows,
                                          "traces": traces or []}, indent=1)
    curves = {}
    for name in LOSSES:
        for metric, split, label in (("ode_nll_median", "test", "ODE median, held-out"),
                                     ("ode_nll_median", "train", "ODE median, train"),
                                     ("cont_elbo_nll", "test", "-cont. ELBO, held-out")):
            curves[f"{name}: {label}"] = [float(np.mean([r[metric] for r in rows if (
                r["weighting"], r["step"], r["split"], r.get("denoiser", "raw")) == (name, k, split, "raw")]))
                for k in steps]
        if any(r.get("denoiser") == "clipped" for r in rows):
            curves[f"{name}: ODE median, held-out, clipped x0"] = [float(np.mean([r["ode_nll_median"] for r in rows if (
                r["weighting"], r["step"], r["split"], r.get("denoiser")) == (name, k, "test", "clipped")]))
                for k in steps]
    line_plot(steps, curves, str(RESULTS / f"{stem}.png"), xlabel="training step", ylabel="bits/dim (mean of seeds)",
              title="digits: simple vs likelihood weighting along training")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--snapshots", type=int, nargs="+", default=[1250, 2500, 5000, 10000, 20000])
    p.add_argument("--steps", type=int, default=20000, help="the schedule's length (last snapshot <= steps)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay")
    p.add_argument("--n-eval", type=int, default=200, help="digits per split")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--elbo-samples", type=int, default=32)
    p.add_argument("--clip", action="store_true", help="also evaluate each snapshot as a ClippedModel (x0 in [-1, 1])")
    p.add_argument("--trace", action="store_true",
                   help="at the last snapshot, trace where the raw model's flow leaves the data (|x|, eps along t)")
    p.add_argument("--stem", default="likelihood_lw_digits")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only merge these per-seed result files into --stem")
    a = p.parse_args(argv)
    if a.merge:
        parts = [json.loads(Path(f).read_text()) for f in a.merge]
        cmds = [part["meta"]["command"] for part in parts]
        meta = {**parts[0]["meta"], "command": "; ".join(cmds + ["python benchmarks/likelihood_lw_digits.py --merge "
                                                                 + " ".join(a.merge) + f" --stem {a.stem}"])}
        summarize([r for part in parts for r in part["rows"]], meta, a.stem,
                  [tr for part in parts for tr in part.get("traces", [])])
        return 0
    if sorted(a.snapshots) != a.snapshots or a.snapshots[-1] > a.steps or a.snapshots[0] < 1:
        p.error("--snapshots must be increasing, >= 1 and <= --steps")
    torch.set_num_threads(1)
    rows, traces = [], []
    for s in a.seeds:
        r, tr = run_seed(s, a)
        rows, traces = rows + r, traces + tr
    meta = {"command": "python benchmarks/likelihood_lw_digits.py " + " ".join(argv or sys.argv[1:]),
            "steps": a.steps, "lr": a.lr, "weight_decay": a.weight_decay, "n_eval": a.n_eval, "rtol": a.rtol,
            "elbo_samples": a.elbo_samples}
    summarize(rows, meta, a.stem, traces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
