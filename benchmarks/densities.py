"""Benchmark: DIS, PIS, DDS x {KL, log-variance} on GMM-9, Funnel-10, double well (5, 5, 4) and (20, 5, 3).

Reports |Delta log Z| of the importance-sampling estimate and of the ELBO bound, ESS, the E||x||^2 error, CPU wall
time and iterations/s, median over seeds, against the anchors of Richter & Berner 2024 (median of 5 runs, |Delta
log Z|, KL -> log-variance): GMM-9 PIS 1.094 -> 0.046, DIS 1.551 -> 0.056; DW(5,5,4) PIS 3.567 -> 0.214,
DIS 1.462 -> 0.375.

    python benchmarks/densities.py --quick            # minutes: GMM-9 and DW(5,5,4), 1 seed, short runs
    python benchmarks/densities.py                    # full protocol: 4 targets x 3 methods x 2 losses x 5 seeds
    python benchmarks/densities.py --only gmm9 --set iterations=900 time_limit=110 --tag part_gmm9   # a part
    python benchmarks/densities.py --merge part_*.json --tag densities                           # join parts
    python benchmarks/densities.py --profile --threads 1  # seconds per LV iteration (batch 512, 100 steps)

Time limits are on the CPU clock of the (single-threaded) process by default, so that a run on a shared machine
trains as long as it would on an idle core; wall time is reported too.  Writes benchmarks/results/<tag>.json
(config, seeds, versions, git commit, wall and CPU time, load average, results; rewritten after every
configuration), <tag>.md (markdown table) and <tag>_<target>_<method>_<loss>.png (samples of the first seed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from scorelab.densities import DensityConfig, run

ANCHORS = {("gmm9", "pis"): (1.094, 0.046), ("gmm9", "dis"): (1.551, 0.056),
           ("dw554", "pis"): (3.567, 0.214), ("dw554", "dis"): (1.462, 0.375)}
RESULTS = Path(__file__).resolve().parent / "results"


def protocol(quick: bool) -> tuple[list[DensityConfig], list[int]]:
    """The run configurations (seed 0; seeds are substituted) and the seeds."""
    if quick:
        base = DensityConfig(steps=50, iterations=500, batch=256, lr=5e-3, lr_final=5e-4, eval_samples=4096,
                             time_limit=60, time_clock="cpu", progress=False)
        targets, seeds = ["gmm9", "dw554"], [0]
    else:
        base = DensityConfig(steps=100, iterations=4000, batch=512, lr=5e-3, lr_final=1e-4, eval_samples=10_000,
                             time_limit=1800, time_clock="cpu", progress=False)
        targets, seeds = ["gmm9", "funnel", "dw554", "dw2053"], [0, 1, 2, 3, 4]
    cfgs = [replace(base, target=t, method=m, loss=loss) for t in targets for m in ("dis", "pis", "dds")
            for loss in ("kl", "lv")]
    return cfgs, seeds


def profile_lv(method: str, target: str = "gmm9", batch: int = 512, steps: int = 100, reps: int = 10) -> dict:
    """Median seconds (wall and CPU) of the three parts of one log-variance iteration: detached rollout, batched
    re-evaluation of log p with the network, backward + Adam step."""
    from scorelab.densities import build
    tgt, sampler = build(DensityConfig(target=target, method=method, steps=steps))
    opt, gen = torch.optim.Adam(sampler.parameters(), 1e-3), torch.Generator().manual_seed(0)
    parts: dict[str, list[float]] = {}

    def mark(name, t, c):
        parts.setdefault(name + "_wall", []).append(time.perf_counter() - t)
        parts.setdefault(name + "_cpu", []).append(time.process_time() - c)
        return time.perf_counter(), time.process_time()

    for i in range(reps + 2):
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            path = sampler.simulate(tgt, batch, gen, keep_scores=True)
        t, c = mark("rollout", t, c)
        log_w, _ = sampler.log_weight(tgt, path)
        obj = (log_w - log_w.mean().detach()).pow(2).mean()
        t, c = mark("weights", t, c)
        opt.zero_grad()
        obj.backward()
        opt.step()
        mark("backward", t, c)
        if i < 2:  # warm-up
            parts = {k: [] for k in parts}
    out = {k: statistics.median(v) for k, v in parts.items()}
    for clock in ("wall", "cpu"):
        out["total_" + clock] = sum(out[f"{p}_{clock}"] for p in ("rollout", "weights", "backward"))
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["iterations=3000", "time_clock=cpu"]`` -> ``{"iterations": 3000, "time_clock": "cpu"}``."""
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in DensityConfig.__dataclass_fields__:
            raise ValueError(f"--set expects KEY=VALUE with KEY a DensityConfig field, got {item!r}")
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def summarize(runs: list[dict]) -> dict:
    """Median over seeds of each metric (NaN-free values only)."""
    keys = ["dlogZ_is", "dlogZ_elbo", "ess", "sq_err", "log_Z_hat", "elbo"]
    out = {k: statistics.median(r["metrics"][k] for r in runs) for k in keys if all(k in r["metrics"] for r in runs)}
    out["train_time_s"] = statistics.median(r["train_time_s"] for r in runs)
    out["train_cpu_s"] = statistics.median(r.get("train_cpu_s", float("nan")) for r in runs)
    out["it_per_s"] = statistics.median(r["it_per_s"] for r in runs)
    out["it_per_cpu_s"] = statistics.median(r["iterations_done"] / max(r.get("train_cpu_s", 0), 1e-9) for r in runs)
    out["iterations_done"] = statistics.median(r["iterations_done"] for r in runs)
    return out


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"## {title}", "", "| target | method | loss | \\|Δlog Z\\| IS | \\|Δlog Z\\| ELBO | ESS | E‖x‖² err | "
             "train s (wall / CPU) | it/s (wall / CPU) | iters | anchor (KL → LV) |", "|" + "---|" * 12]
    for r in rows:
        s, a = r["summary"], ANCHORS.get((r["target"], r["method"]))
        anchor = "" if a is None else f"{a[0] if r['loss'] == 'kl' else a[1]:.3f}"
        lines.append(f"| {r['target']} | {r['method']} | {r['loss']} | {s.get('dlogZ_is', float('nan')):.3f} | "
                     f"{s.get('dlogZ_elbo', float('nan')):.3f} | {s.get('ess', float('nan')):.3f} | "
                     f"{s.get('sq_err', float('nan')):.3f} | {s['train_time_s']:.0f} / {s['train_cpu_s']:.0f} | "
                     f"{s['it_per_s']:.2f} / {s['it_per_cpu_s']:.2f} | "
                     f"{s['iterations_done']:.0f} | {anchor} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs on GMM-9 and DW(5,5,4), one seed")
    ap.add_argument("--only", nargs="*", default=None, help="restrict to target names (e.g. gmm9 dw554)")
    ap.add_argument("--methods", nargs="*", default=None, help="restrict to methods (dis pis dds)")
    ap.add_argument("--losses", nargs="*", default=None, help="restrict to losses (kl lv)")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override DensityConfig fields, e.g. iterations=3000 time_limit=600 time_clock=cpu "
                         "method_kwargs={\"sigma\":3}' (values parsed as JSON where possible)")
    ap.add_argument("--tag", default=None, help="output name stem (default densities or densities_quick)")
    ap.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                    help="combine result files of split runs (e.g. one process per target) into <tag>.json/.md")
    ap.add_argument("--profile", action="store_true", help="time one LV iteration (batch 512, 100 steps) per method")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    if args.profile:
        return profile_main(args)
    if args.merge is not None:
        return merge_main(args)
    cfgs, seeds = protocol(args.quick)
    cfgs = [replace(c, **parse_overrides(args.set)) for c in cfgs]
    seeds = args.seeds if args.seeds is not None else seeds
    cfgs = [c for c in cfgs if (args.only is None or c.target in args.only)
            and (args.methods is None or c.method in args.methods) and (args.losses is None or c.loss in args.losses)]
    out, tag = Path(args.out), args.tag or ("densities_quick" if args.quick else "densities")
    out.mkdir(parents=True, exist_ok=True)
    t_start, rows, md = time.perf_counter(), [], ""
    for cfg in cfgs:
        runs = []
        for seed in seeds:
            tmp = out / f".{tag}_tmp"
            r = run(replace(cfg, seed=seed), tmp if seed == seeds[0] else None)
            if seed == seeds[0]:
                shutil.copy(tmp / "samples.png", out / f"{tag}_{cfg.target}_{cfg.method}_{cfg.loss}.png")
                shutil.rmtree(tmp)
            r.pop("files", None)
            runs.append(r)
            m = r["metrics"]
            print(f"{cfg.target:7s} {cfg.method} {cfg.loss} seed {seed}: |dlogZ| IS {m.get('dlogZ_is', 0):.3f} "
                  f"ELBO {m.get('dlogZ_elbo', 0):.3f} ESS {m['ess']:.3f} ({r['train_time_s']:.0f} s wall, "
                  f"{r['train_cpu_s']:.0f} s CPU, {r['iterations_done']} it, "
                  f"{r['it_per_s']:.2f} it/s)", flush=True)
        rows.append({"target": cfg.target, "method": cfg.method, "loss": cfg.loss, "config": asdict(cfg),
                     "runs": runs, "summary": summarize(runs)})
        md = write_results(out, tag, rows, args, seeds, time.perf_counter() - t_start)  # after every configuration
    print(md)
    return 0


def write_results(out: Path, tag: str, rows: list[dict], args, seeds: list[int], wall: float) -> str:
    """Write ``<tag>.json`` and ``<tag>.md``; returns the markdown."""
    title = f"Diffusion samplers for unnormalized densities ({'quick' if args.quick else 'full'} protocol, " \
            f"median over seeds {seeds})"
    md = markdown(rows, title)
    report = {"benchmark": "densities", "quick": args.quick, "seeds": seeds, "git_commit": git_commit(),
              "versions": {"python": platform.python_version(), "torch": torch.__version__},
              "threads": args.threads, "cpu_count": os.cpu_count(), "wall_time_s": wall,
              "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "anchors": {f"{k[0]}/{k[1]}": v for k, v in ANCHORS.items()}, "results": rows}
    (out / f"{tag}.json").write_text(json.dumps(report, indent=1, default=float))
    (out / f"{tag}.md").write_text(md)
    return md


def merge_main(args) -> int:
    """Concatenate the ``results`` of several JSON reports (same seeds) into ``<tag>.json`` / ``<tag>.md``."""
    reports = [json.loads(Path(f).read_text()) for f in args.merge]
    if not reports:
        raise ValueError("--merge needs at least one JSON file")
    rows = [r for rep in reports for r in rep["results"]]
    seeds = sorted({s for rep in reports for s in rep["seeds"]})
    args.quick = all(rep["quick"] for rep in reports)
    out, tag = Path(args.out), args.tag or "densities"
    out.mkdir(parents=True, exist_ok=True)
    md = write_results(out, tag, rows, args, seeds, sum(rep["wall_time_s"] for rep in reports))
    print(md)
    return 0


def profile_main(args) -> int:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    res = {m: profile_lv(m) for m in (args.methods or ["dis", "pis", "dds"])}
    report = {"benchmark": "densities_profile", "threads": args.threads, "cpu_count": os.cpu_count(),
              "load_avg_1min": load, "batch": 512, "steps": 100, "target": "gmm9", "git_commit": git_commit(),
              "torch": torch.__version__, "seconds_per_iteration": res}
    tag = args.tag or f"densities_profile_t{args.threads}"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{tag}.json").write_text(json.dumps(report, indent=1))
    print(f"load average {load:.1f}, {args.threads} thread(s); seconds per LV iteration (batch 512, 100 steps):")
    for m, r in res.items():
        print(f"  {m}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
