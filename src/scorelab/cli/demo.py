r"""``make demo`` / ``scorelab demo``: the main job on built-in data, about a minute on 2 CPU cores.

1. Train a VP-SDE score model (residual MLP, eps-prediction, denoising score matching) on the swiss roll
   (SFT-PG protocol data).
2. Sample it with a handful of samplers at NFE 5, 10 and 20, every one from the same x_T, plus DPM-Solver++ 2M on a
   grid fitted to the model's own ODE solution (``grid_opt``).
3. Score each sample by its sliced W2 to held-out data, next to the two-sample floor; repeat the sampling on the exact
   score of an 8-mode Gaussian ring, where any error is the solver's, and score it also by the unbiased MMD^2 to the
   exact law (no floor).
4. Write ``OUT/``: ``report.md`` (read this first), ``metrics.json``, ``samples_<case>.png`` (one panel per sampler
   and NFE, data in grey), ``quality_vs_nfe_<case>.png``, and the model (``model/``: checkpoint, log, loss curve).

``run_demo(out, full=True)`` (``scorelab demo --full``) runs the earlier complete sweep instead: every fixed-step
sampler at NFE 5-50, two fitted grids, a longer training (about 15-20 minutes on 2 cores); ``quick=True`` is the
smoke-test size the tests use.

Notation
--------
=============  ===========================================================================================
NFE            network (score-model) evaluations a sampler may spend; ``samplers.budget.grid_for_nfe``
n              samples per (sampler, NFE), and size of each held-out reference sample
x_T            the shared prior draw every sampler starts from (``run_sampler``'s seed)
SW2            sliced 2-Wasserstein distance (``metrics.sliced_w2``) on ``n_projections`` fixed directions
floor          SW2 between two independent data samples of size n: below it a sampler is indistinguishable
MMD^2_exact    unbiased MMD^2 of the samples to the exact mixture law (``metrics.mmd2_to_mixture_by_bandwidth``)
case           ``swiss_roll`` (the trained model) or ``ring8_oracle`` (the exact score of ``ring_mixture(8)``)
=============  ===========================================================================================
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

#: the default demo's samplers: deterministic ODE solvers of order 1, 2 (single- and multistep), 3 and an SDE
DEMO_SAMPLERS = ("ddim", "dpm_solver_pp_2m", "unipc", "heun", "euler_maruyama")
SKIP_IN_DEMO = {"dopri5"}  # adaptive: no NFE budget (``--full`` skips it too)
FIT_SUFFIX = " (fitted grid)"
#: a small grid fit whose teacher is UniPC-3 on 200 fixed steps (a fixed cost) instead of adaptive dopri5 at
#: rtol 1e-7, whose cost on a briefly trained network is several seconds per fit
FAST_FIT = {"n_samples": 128, "n_heldout": 128, "max_objective": 60, "reference": "unipc", "ref_steps": 200}
CASE_TITLES = {"swiss_roll": "The trained model on the swiss roll",
               "ring8_oracle": "The exact ring oracle: solver error only"}


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run (``QUICK``, ``DEFAULT``, ``FULL``)."""

    name: str
    train_steps: int
    width: int  # of the residual MLP (3 blocks)
    batch_size: int
    lr: float
    n: int  # samples per (sampler, NFE), and size of each held-out sample
    nfes: tuple[int, ...]
    samplers: tuple[str, ...]
    #: samplers also run, at ``fit_nfes``, on a grid fitted to the model's own ODE solution (``grid_opt`` with
    #: ``fit_kw``; a fit costs about NFE x max_objective network evaluations)
    fitted: tuple[str, ...] = ("dpm_solver_pp_2m",)
    fit_nfes: tuple[int, ...] = (5, 10)
    fit_kw: dict = field(default_factory=lambda: dict(FAST_FIT))
    n_projections: int = 100  # directions of the sliced W2
    heldout_mmd: bool = False  # also the unbiased MMD^2 to held-out data (``metrics.json`` only)
    n_train: int = 50_000
    #: the swiss roll is ``make_swiss_roll``'s coordinates 0 and 2 divided by this; the SFT-PG protocol's 20 gives
    #: |x| < 0.7, a thin spiral a small net resolves only after thousands of steps, 5 is learnt in about 1500
    data_scale: float = 5.0


QUICK = DemoPlan("quick", train_steps=150, width=32, batch_size=256, lr=3e-3, n=500, nfes=(5, 10, 20),
                 samplers=("ddim", "dpm_solver_pp_2m", "heun"), n_projections=50, n_train=5_000,
                 fit_kw={**FAST_FIT, "n_samples": 64, "n_heldout": 64, "max_objective": 15, "ref_steps": 100})
DEFAULT = DemoPlan("default", train_steps=1500, width=64, batch_size=256, lr=3e-3, n=2000, nfes=(5, 10, 20),
                   samplers=DEMO_SAMPLERS)
#: the complete sweep (``--full``; every fixed-step sampler is filled in by ``choose_plan``)
FULL = DemoPlan("full", train_steps=5000, width=128, batch_size=512, lr=2e-3, n=5000, nfes=(5, 10, 20, 50),
                samplers=(), fitted=("unipc", "dpm_solver_pp_2m"), fit_nfes=(5, 10, 20, 50),
                fit_kw={"n_samples": 256, "n_heldout": 256, "max_objective": 150}, n_projections=1000,
                heldout_mmd=True, data_scale=20.0)


def choose_plan(quick: bool = False, full: bool = False) -> DemoPlan:
    """``QUICK``, ``DEFAULT`` or ``FULL`` (with every registered fixed-step sampler)."""
    from ..samplers import SAMPLERS

    if quick and full:
        raise ValueError("choose at most one of --quick and --full")
    if full:
        return replace(FULL, samplers=tuple(s for s in SAMPLERS if s not in SKIP_IN_DEMO))
    return QUICK if quick else DEFAULT


def check_out(out: str | os.PathLike) -> Path:
    """The output folder, refused (``ValueError``) if it exists and is not empty: a demo never overwrites a run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; expected a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        held = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ValueError(f"--out {str(out)!r} already holds an earlier run ({held}); pass a new --out folder or "
                         "remove this one")
    return out


def _progress(t0: float) -> Callable[[str], None]:
    c0 = time.process_time()

    def log(msg: str) -> None:
        print(f"[demo {time.perf_counter() - t0:4.0f} s wall {time.process_time() - c0:4.0f} s CPU] {msg}", flush=True)

    return log


def _write_text(path: Path, text: str) -> None:
    from ..io.checkpoints import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


# -- 1. train ----------------------------------------------------------------------------------------------------
def _demo_experiment(out: Path, plan: DemoPlan):
    from ..training.experiment import experiment_from_dict

    return experiment_from_dict({
        "run_dir": str(out / "model"),
        "data": {"name": "swiss_roll", "n": plan.n_train, "seed": 0, "params": {"scale": plan.data_scale}},
        "process": {"name": "vp"},
        "model": {"net": {"name": "mlp", "width": plan.width, "depth": 3}, "parameterization": "eps"},
        "loss": {"proposal": "uniform", "weighting": "eps"},
        "train": {"steps": plan.train_steps, "batch_size": plan.batch_size, "lr": plan.lr,
                  "warmup_steps": min(200, plan.train_steps // 10), "ema_decay": 0.995, "log_every": 100, "seed": 0},
    })


def _train(out: Path, plan: DemoPlan, log) -> dict:
    """Train on the swiss roll -> ``run_training``'s result (``model``: the EMA model, ``step``, ``wall_s``, ...)."""
    from ..training.experiment import run_training

    exp = _demo_experiment(out, plan)
    log(f"training a width-{plan.width} MLP for {plan.train_steps} steps on the swiss roll -> {out / 'model'}")
    trained = run_training(exp, progress=True)
    log(f"trained in {trained['wall_s']:.0f} s, final loss {trained['final_loss']:.4f}")
    return trained


# -- 2. sample ---------------------------------------------------------------------------------------------------
def _budget_ok(name: str, nfe: int) -> bool:
    from ..samplers import SAMPLERS

    e = SAMPLERS[name].evals_per_step
    return not (math.isnan(e) or e > nfe)


def _sample_one(model, name: str, nfe: int, plan: DemoPlan, dtype, fitted: bool, seed: int, stem: str | None = None):
    """``run_sampler`` -> (samples ``[n, 2]`` float32 or None, info); an impossible budget is kept as an error.
    A fitted grid for a checkpoint ``stem`` is fitted once, stored with the model (``io.grids.fit_and_store``) and
    sampled from the stored file (what ``scorelab sample`` reuses later); without one it is fitted in place."""
    from ..samplers.budget import run_sampler

    try:
        if fitted and stem is not None:
            path, opts = _fit_stored(model, name, nfe, plan, stem, seed)
            x, info = run_sampler(model, name, nfe, plan.n, seed=seed, shape=(2,), dtype=dtype, grid_file=str(path),
                                  options=opts)
        else:
            x, info = run_sampler(model, name, nfe, plan.n, seed=seed, shape=(2,), dtype=dtype, fit_grid=fitted,
                                  fit_kw=plan.fit_kw if fitted else None)
    except ValueError as e:
        return None, {"error": str(e)}
    return x.float(), info


def _fit_stored(model, name: str, nfe: int, plan: DemoPlan, stem: str, seed: int):
    """(path, sampler options) of the grid of (checkpoint ``stem``, ``name``, ``nfe``) stored with the model: fitted
    now unless already there."""
    from ..io.grids import find_stored_grid, fit_and_store
    from ..io.loading import LoadedModel

    loaded = LoadedModel(model, (2,), None, stem)
    found = find_stored_grid(loaded, name, nfe)
    if found is None:
        fit_and_store(loaded, name, nfe, seed=seed, fit_kw=plan.fit_kw)
        found = find_stored_grid(loaded, name, nfe)
    return found


def _sample_all(model, plan: DemoPlan, dtype, log, seed: int = 0,
                stem: str | None = None) -> dict[str, dict[int, tuple]]:
    """Every plan sampler (and fitted grid) at every NFE -> ``{label: {nfe: (samples or None, info)}}``; ``stem``:
    the model's checkpoint, with which fitted grids are stored."""
    runs = [(s, False, plan.nfes) for s in plan.samplers] + [(s, True, plan.fit_nfes) for s in plan.fitted]
    out: dict[str, dict[int, tuple]] = {}
    for name, fitted, nfes in runs:
        label = name + (FIT_SUFFIX if fitted else "")
        t = time.perf_counter()
        runs_nfe = [nfe for nfe in nfes if _budget_ok(name, nfe)]
        if not runs_nfe:
            log(f"  {label}: skipped, one step costs more than NFE {max(nfes)}")
            continue
        out[label] = {nfe: _sample_one(model, name, nfe, plan, dtype, fitted, seed, stem) for nfe in runs_nfe}
        log(f"  {label}: NFE {'/'.join(map(str, runs_nfe))} in {time.perf_counter() - t:.1f} s")
    return out


# -- 3. score ----------------------------------------------------------------------------------------------------
def _score(results, reference, mixture=None, *, n_projections: int = 200, heldout_mmd: bool = False):
    """Sliced W2 (and with ``heldout_mmd`` the unbiased MMD^2) to the held-out ``reference``; with the exact
    ``mixture`` also the unbiased MMD^2 to its law (``metrics.mmd2_to_mixture_by_bandwidth``: no two-sample floor).
    -> ``{label: {str(nfe): row}}``; a failed or non-finite run gets ``error`` instead of scores."""
    from ..evaluation.metrics import mmd2_to_mixture_by_bandwidth, mmd2_unbiased, sliced_w2

    table: dict[str, dict[str, dict]] = {}
    for name, by_nfe in results.items():
        for nfe, (x, info) in by_nfe.items():
            row = {k: info[k] for k in ("nfe_planned", "nfe_measured_per_batch", "wall_s") if k in info}
            if x is None or not torch.isfinite(x).all():
                row["error"] = info.get("error", "non-finite samples")
            else:
                row["sliced_w2"] = sliced_w2(x, reference, n_projections=n_projections)
                if heldout_mmd:
                    row["mmd2"] = mmd2_unbiased(x[:2000], reference[:2000])
                if mixture is not None:
                    row["mmd2_exact"] = mmd2_to_mixture_by_bandwidth(x, mixture)["mmd2"]
            table.setdefault(name, {})[str(nfe)] = row
    return table


def _best(table, nfe, key="sliced_w2"):
    """(lowest ``key`` at this NFE, its sampler), or (nan, "-") when no sampler has a score there."""
    rows = [(v[str(nfe)][key], k) for k, v in table.items() if str(nfe) in v and key in v[str(nfe)]]
    return min(rows) if rows else (float("nan"), "-")


def _rank_key(table) -> str:
    """The metric that picks the winner: the floor-free MMD^2 to the exact law where there is one, else SW2."""
    return "mmd2_exact" if any("mmd2_exact" in r for rows in table.values() for r in rows.values()) else "sliced_w2"


def _winners(table, nfes) -> dict[str, dict]:
    key = _rank_key(table)
    return {str(n): {"sampler": s, "metric": key, "value": v} for n in nfes for v, s in [_best(table, n, key)]}


# -- 4. plots and report -----------------------------------------------------------------------------------------
def _plots(results, table, reference, out: Path, floor: float, tag: str, nfes) -> list[str]:
    """``samples_<tag>.png`` (rows: samplers, columns: NFE, data in grey) and ``quality_vs_nfe_<tag>.png``."""
    from .. import plotting

    panels = {f"{name}, NFE {nfe}": r[nfe][0] for name, r in results.items() for nfe in nfes
              if nfe in r and r[nfe][0] is not None and torch.isfinite(r[nfe][0]).all()}
    files = [f"samples_{tag}.png", f"quality_vs_nfe_{tag}.png"]
    plotting.scatter_panels(panels, str(out / files[0]), reference=reference, ncols=len(nfes), max_points=2000,
                            title=f"{tag}: samples (blue) over held-out data (grey)")
    curves = {}
    for name, rows in table.items():
        pts = sorted((int(k), v["sliced_w2"]) for k, v in rows.items() if "sliced_w2" in v)
        if pts:
            curves[name] = ([p[0] for p in pts], [p[1] for p in pts])
    plotting.quality_vs_nfe(curves, str(out / files[1]), floor=floor,
                            title=f"{tag}: sliced W2 to held-out data vs NFE")
    return files


def _table(table: dict, nfes, key: str, spec: str) -> list[str]:
    lines = ["| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for name, rows in table.items():
        cells = ["-" if (r := rows.get(str(n))) is None or key not in r else f"{r[key]:{spec}}" for n in nfes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", "Best at each budget: " + ", ".join(
        f"NFE {n}: {_best(table, n, key)[1]} ({_best(table, n, key)[0]:{spec}})" for n in nfes), ""]


def _intro_lines(meta: dict) -> list[str]:
    p = meta["plan"]
    return ["# scorelab demo", "",
            f"`{meta['command']}` ran in {meta['wall_s']:.0f} s wall ({meta['cpu_s']:.0f} s CPU) on {meta['machine']} "
            f"(plan `{p['name']}`).", "",
            "## What was trained", "",
            f"A VP-SDE noise-prediction (eps) model, a residual MLP of width {p['width']} with 3 blocks, trained by "
            f"denoising score matching on {p['n_train']} swiss-roll points (scikit-learn's `make_swiss_roll`, "
            f"coordinates 0 and 2 divided by {p['data_scale']:g}) for {meta['train_steps']} steps of batch "
            f"{p['batch_size']} (final loss {meta['final_loss']:.4f}, {meta['train_wall_s']:.0f} s). Its checkpoint, "
            "training log and loss curve are in `model/`; sample it again with "
            f"`scorelab sample --checkpoint {meta['out']}/model --sampler dpm_solver_pp_2m --nfe 10`.", "",
            "## How the samplers are compared", "",
            f"Every sampler starts from the same {meta['n_ref']} prior draws x_T and may call the network at most NFE "
            "times. Quality is the sliced 2-Wasserstein distance (sliced W2, lower is better; "
            f"{p['n_projections']} fixed random directions) between its samples and {meta['n_ref']} held-out points. "
            "Two independent samples of the same law are not at distance 0 either: the *two-sample floor* is the "
            "sliced W2 between two data samples of this size, and a sampler at the floor cannot be told apart from "
            "the data. A fitted grid places the same number of steps where they help most for this model "
            "(`grid_opt`, fitted to the model's own ODE solution; fitted here at NFE "
            f"{', '.join(map(str, p['fit_nfes']))}). "
            "`-` marks a run not made: a budget the sampler cannot meet, or no fitted grid at that NFE.", ""]


def _winner_cell(table: dict, nfe: int, floor: float) -> str:
    w = _winners(table, [nfe])[str(nfe)]
    if w["sampler"] == "-":
        return "-"
    note = f" ({w['value'] / floor:.1f}x the floor)" if w["metric"] == "sliced_w2" and floor > 0 else ""
    return f"**{w['sampler']}**: {w['value']:.3g}{note}"


def _winner_lines(tables: dict, floors: dict, nfes) -> list[str]:
    """One row per NFE: the winning sampler of each case and its score (sliced W2 also as a multiple of the floor)."""
    tags = list(tables)
    heads = [f"`{t}`, by {'MMD^2 to the exact law' if _rank_key(tables[t]) == 'mmd2_exact' else 'sliced W2'}"
             for t in tags]
    lines = ["## Which sampler won", "",
             "The lowest score at each budget: on the trained model by sliced W2 to held-out data, on the exact "
             "oracle by the floor-free MMD^2 to the exact law. Scores that differ by less than the two-sample floor "
             "(sliced W2) or the score of exact draws (MMD^2), both given with each table below, are within sampling "
             "noise: a tie, not a ranking.", "",
             "| NFE | " + " | ".join(heads) + " |", "|---|" + "---|" * len(tags)]
    lines += [f"| {n} | " + " | ".join(_winner_cell(tables[t], n, floors[t]) for t in tags) + " |" for n in nfes]
    return lines + [""]


FIGURE_CAPTIONS = {"samples": "samples: one panel per sampler (rows) and NFE (columns), samples in blue over "
                              "held-out data in grey",
                   "quality": "sliced W2 to held-out data against NFE, one line per sampler, the floor dashed"}
CASE_INTROS = {
    "swiss_roll": "As NFE grows every sampler converges to the trained model's own distribution; what then remains "
                  "above the floor is the model's error, not the sampler's.",
    "ring8_oracle": "The same samplers from the same x_T, now with the exact score of a known law (8 Gaussian modes "
                    "of std 0.1 on a circle of radius 2, `core.analytic.ring_mixture`) instead of a network: every "
                    "error here is the sampler's own discretization error."}


def _case_lines(tag: str, table: dict, floor: float, meta: dict, nfes, figures: list[str]) -> list[str]:
    lines = [f"## {CASE_TITLES.get(tag, tag)} (`{tag}`)", ""] + ([CASE_INTROS[tag], ""] if tag in CASE_INTROS else [])
    lines += [f"Sliced W2 to {meta['n_ref']} held-out points (two-sample floor {floor:.4f}); lower is better.", ""]
    lines += _table(table, nfes, "sliced_w2", ".4f")
    if _rank_key(table) == "mmd2_exact":
        noise = f" Exact draws of the same size score {meta['mmd2_exact_draws'][tag]:.1e}: differences of that " \
            "size are noise."
        lines += ["Unbiased MMD^2 to the exact law (`metrics.mmd2_to_mixture`: 0 in expectation for a perfect "
                  "sampler, no two-sample floor, so it ranks samplers where sliced W2 sits at its floor; it can be "
                  "slightly negative)." + noise, ""]
        lines += _table(table, nfes, "mmd2_exact", ".2e")
    return lines + [f"![{FIGURE_CAPTIONS.get(f.split('_')[0], f)}]({f})\n" for f in figures]


def _report(out: Path, meta: dict, tables: dict, floors: dict, nfes, figures: dict | None = None) -> None:
    """``out/report.md``: what ran, the winners per NFE, then per case its tables and figures."""
    lines = _intro_lines(meta) + _winner_lines(tables, floors, nfes)
    for tag, table in tables.items():
        lines += _case_lines(tag, table, floors[tag], meta, nfes, (figures or {}).get(tag, []))
    _write_text(out / "report.md", "\n".join(lines))


# -- the two cases -----------------------------------------------------------------------------------------------
def _run_case(tag: str, model, dtype, refs, mixture, plan: DemoPlan, out: Path, log, stem: str | None = None) -> dict:
    """Sample, score and plot one case -> dict(table, floor, figures, and with an exact ``mixture``
    ``mmd2_exact_draws``: the MMD^2 to the exact law of exact draws of the same size, the noise level); ``stem``:
    the checkpoint fitted grids are stored with."""
    from ..evaluation.metrics import mmd2_to_mixture_by_bandwidth, sliced_w2

    ref, ref2 = refs
    results = _sample_all(model, plan, dtype, log, stem=stem)
    log(f"scoring {tag}")
    case = {"floor": sliced_w2(ref, ref2, n_projections=plan.n_projections),
            "table": _score(results, ref, mixture, n_projections=plan.n_projections, heldout_mmd=plan.heldout_mmd)}
    if mixture is not None:
        case["mmd2_exact_draws"] = mmd2_to_mixture_by_bandwidth(ref2, mixture)["mmd2"]
    for nfe, w in _winners(case["table"], plan.nfes).items():
        log(f"  NFE {nfe}: best {w['sampler']} ({w['metric']} {w['value']:.3g}; sliced W2 floor {case['floor']:.4f})")
    case["figures"] = _plots(results, case["table"], ref, out, case["floor"], tag, plan.nfes)
    return case


def _swiss_roll_refs(n: int, scale: float):
    """Two held-out swiss-roll samples of size n (seeds apart from the training data's 0)."""
    from ..data import load_dataset

    return tuple(load_dataset("swiss_roll", n=n, seed=s, scale=scale)[0] for s in (12345, 54321))


def _ring_oracle(n: int):
    """(mixture, its exact-score model, two held-out samples of size n)."""
    from ..core.analytic import ring_mixture
    from ..core.processes import VP

    gm = ring_mixture(8, 2.0, 0.1)
    refs = tuple(gm.sample(n, torch.Generator().manual_seed(s)).float() for s in (1, 2))
    return gm, gm.as_model(VP()), refs


def run_demo(out: str | os.PathLike = "runs/demo", *, quick: bool = False, full: bool = False) -> dict:
    """Train, sample, score and report into the new (or empty) folder ``out`` (module docstring) -> metrics dict
    (``meta``, ``floors``, ``tables``, ``winners``), also written to ``out/metrics.json``."""
    plan, out, t0, c0 = choose_plan(quick, full), check_out(out), time.perf_counter(), time.process_time()
    log = _progress(t0)
    out.mkdir(parents=True, exist_ok=True)
    trained = _train(out, plan, log)
    log(f"sampling the trained model: {len(plan.samplers) + len(plan.fitted)} samplers x NFE {plan.nfes}")
    from ..io.checkpoints import latest_checkpoint

    stem = latest_checkpoint(out / "model")
    cases = {"swiss_roll": _run_case("swiss_roll", trained["model"].eval(), torch.float32,
                                     _swiss_roll_refs(plan.n, plan.data_scale), None, plan, out, log,
                                     None if stem is None else str(stem))}
    log("the same samplers on the exact score of an 8-mode ring (solver error only)")
    gm, oracle, refs = _ring_oracle(plan.n)
    cases["ring8_oracle"] = _run_case("ring8_oracle", oracle, torch.float64, refs, gm, plan, out, log)
    meta = _meta(out, plan, trained, cases, time.perf_counter() - t0, time.process_time() - c0)
    tables = {tag: c["table"] for tag, c in cases.items()}
    metrics = {"meta": meta, "floors": {tag: c["floor"] for tag, c in cases.items()}, "tables": tables,
               "winners": {tag: _winners(t, plan.nfes) for tag, t in tables.items()}}
    _write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    _report(out, meta, tables, metrics["floors"], list(plan.nfes), {tag: c["figures"] for tag, c in cases.items()})
    log(f"wrote {out / 'report.md'} (read it first), metrics.json and {2 * len(cases)} plots")
    return metrics


def _meta(out: Path, plan: DemoPlan, trained: dict, cases: dict, wall_s: float, cpu_s: float) -> dict:
    from .._version import __version__

    flag = {"quick": " --quick", "full": " --full"}.get(plan.name, "")
    return {"command": f"scorelab demo --out {out}{flag}", "out": str(out), "wall_s": wall_s, "cpu_s": cpu_s,
            "machine": f"{platform.machine()} with {os.cpu_count()} cores, torch {torch.__version__}",
            "scorelab": __version__, "plan": asdict(plan), "train_steps": trained["step"],
            "final_loss": trained["final_loss"] or float("nan"), "train_wall_s": trained["wall_s"], "n_ref": plan.n,
            "mmd2_exact_draws": {tag: c["mmd2_exact_draws"] for tag, c in cases.items() if "mmd2_exact_draws" in c}}
