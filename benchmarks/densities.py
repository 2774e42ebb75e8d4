"""Benchmark: DIS, PIS, DDS x {KL, log-variance} on GMM-9, Funnel-10, double well (5, 5, 4) and (20, 5, 3).

Reports |Delta log Z| of the importance-sampling estimate and of the ELBO bound, ESS, the E||x||^2 error, CPU wall
time and iterations/s, median over seeds, against the anchors of Richter & Berner 2024 (median of 5 runs, |Delta
log Z|, KL -> log-variance): GMM-9 PIS 1.094 -> 0.046, DIS 1.551 -> 0.056; DW(5,5,4) PIS 3.567 -> 0.214,
DIS 1.462 -> 0.375.

    python benchmarks/densities.py --quick            # minutes: GMM-9 and DW(5,5,4), 1 seed, short runs
    python benchmarks/densities.py --resume           # the grid: 4 targets x 3 methods x 2 losses x 5 seeds, 24 CPU-s
                                                      # per run (~1 h of CPU); --resume continues an interrupted one
    python benchmarks/densities.py --mode full        # the goal recipe on the whole grid (30 CPU-min per run: days)
    python benchmarks/densities.py --mode full --only gmm9 --methods dis --losses lv --seeds 0 \
        --set steps=200 time_limit=900 iterations=4500 eval_repeats=10 --tag densities_goal_gmm9   # GMM-9 goal run
    python benchmarks/densities.py --merge a.json b.json --tag densities_x   # join parts run in separate processes
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
import shutil
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from scorelab.densities import DensityConfig, run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, command_line, git_commit, provenance, write_json, write_text_atomic  # noqa: E402

ANCHORS = {("gmm9", "pis"): (1.094, 0.046), ("gmm9", "dis"): (1.551, 0.056),
           ("dw554", "pis"): (3.567, 0.214), ("dw554", "dis"): (1.462, 0.375)}
MODE_NOTES = {"grid": (
    "\n**Reduced budget, not the goal recipe:** every run is capped at 24 s of single-thread CPU (120 runs ≈ 1 h "
    "of CPU), K = 50 steps, batch 256, Adam 5e-3 → 5e-4 cosine over the 24 s, default method settings (DIS prior "
    "std 1, PIS σ = 1, DDS σ = 1), 4096 evaluation paths; medians over 5 seeds (fewer where the seeds column says "
    "so: an interrupted grid continues with `--resume`).  Command: `OMP_NUM_THREADS=1 python benchmarks/densities.py "
    "--mode grid --threads 1 --tag densities_grid5 --resume`.  Anchors (Richter & Berner 2024) used 60k iterations "
    "at batch 2048 and 200 steps, ~10^4 times this compute: the table ranks methods and losses at a small budget.  "
    "With ESS < 0.1 the IS estimate of log Z is unreliable (heavy-tailed weights).  Goal runs: densities_goal.md.\n")}


def protocol(mode: str) -> tuple[list[DensityConfig], list[int]]:
    """The run configurations (seed 0; seeds are substituted) and the seeds for ``mode``:

    * ``quick``: minutes, GMM-9 and DW(5,5,4), one seed;
    * ``grid``: the 4 x 3 x 2 grid, 5 seeds, each run capped at 24 s of single-thread CPU (K = 50, batch 256), so
      that the 120 runs fit in about an hour of CPU;
    * ``full``: the goal recipe on the whole grid (days of CPU): K = 200 steps (at K = 100 even the exact optimal
      control has ESS ~0.87 on GMM-9: a discretization ceiling), batch 512, Adam 5e-3 -> 1e-5 cosine over the budget,
      on-policy LV, up to 30 CPU-minutes per run, log Z evaluated 10 x 10 000 paths (spread = statistical error).
    """
    if mode == "quick":
        base = DensityConfig(steps=50, iterations=500, batch=256, lr=5e-3, lr_final=5e-4, eval_samples=4096,
                             time_limit=60, time_clock="cpu", progress=False)
        targets, seeds = ["gmm9", "dw554"], [0]
    elif mode == "grid":
        base = DensityConfig(steps=50, iterations=100_000, batch=256, lr=5e-3, lr_final=5e-4, eval_samples=4096,
                             time_limit=24, time_clock="cpu", progress=False)
        targets, seeds = ["gmm9", "funnel", "dw554", "dw2053"], [0, 1, 2, 3, 4]
    else:
        base = DensityConfig(steps=200, iterations=9000, batch=512, lr=5e-3, lr_final=1e-5, eval_samples=10_000,
                             eval_repeats=10, time_limit=1800, time_clock="cpu", progress=False)
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


def summarize(runs: list[dict]) -> dict:
    """Median over seeds of each metric (NaN-free values only)."""
    keys = ["dlogZ_is", "dlogZ_elbo", "ess", "sq_err", "log_Z_hat", "elbo", "log_Z_hat_sd", "dlogZ_is_pooled"]
    out = {k: statistics.median(r["metrics"][k] for r in runs) for k in keys if all(k in r["metrics"] for r in runs)}
    out["train_time_s"] = statistics.median(r["train_time_s"] for r in runs)
    out["train_cpu_s"] = statistics.median(r.get("train_cpu_s", float("nan")) for r in runs)
    out["it_per_s"] = statistics.median(r["it_per_s"] for r in runs)
    out["it_per_cpu_s"] = statistics.median(r["iterations_done"] / max(r.get("train_cpu_s", 0), 1e-9) for r in runs)
    out["iterations_done"] = statistics.median(r["iterations_done"] for r in runs)
    out["n_seeds"] = len(runs)
    return out


def markdown(rows: list[dict], title: str) -> str:
    """One line per (target, method, loss); |Δlog Z| IS shows ± the std of one estimate where evaluations were
    repeated, and the seeds column says how many seeds the medians are over (fewer while a run is in progress)."""
    lines = [f"## {title}", "", "| target | method | loss | \\|Δlog Z\\| IS | \\|Δlog Z\\| ELBO | ESS | E‖x‖² err | "
             "train s (wall / CPU) | it/s (wall / CPU) | iters | seeds | anchor (KL → LV) |", "|" + "---|" * 13]
    for r in rows:
        s, a = r["summary"], ANCHORS.get((r["target"], r["method"]))
        anchor = "" if a is None else f"{a[0] if r['loss'] == 'kl' else a[1]:.3f}"
        err = f" ± {s['log_Z_hat_sd']:.3f}" if "log_Z_hat_sd" in s else ""
        lines.append(f"| {r['target']} | {r['method']} | {r['loss']} | {s.get('dlogZ_is', float('nan')):.3f}{err} | "
                     f"{s.get('dlogZ_elbo', float('nan')):.3f} | {s.get('ess', float('nan')):.3f} | "
                     f"{s.get('sq_err', float('nan')):.3f} | {s['train_time_s']:.0f} / {s['train_cpu_s']:.0f} | "
                     f"{s['it_per_s']:.2f} / {s['it_per_cpu_s']:.2f} | "
                     f"{s['iterations_done']:.0f} | {s.get('n_seeds', len(r['runs']))} | {anchor} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["quick", "grid", "full"], default="grid", help="protocol (see protocol())")
    ap.add_argument("--quick", action="store_true", help="same as --mode quick")
    ap.add_argument("--only", nargs="*", default=None, help="restrict to target names (e.g. gmm9 dw554)")
    ap.add_argument("--methods", nargs="*", default=None, help="restrict to methods (dis pis dds)")
    ap.add_argument("--losses", nargs="*", default=None, help="restrict to losses (kl lv)")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override DensityConfig fields, e.g. iterations=3000 time_limit=600 time_clock=cpu "
                         "method_kwargs={\"sigma\":3}' (values parsed as JSON where possible)")
    ap.add_argument("--tag", default=None, help="output name stem (default densities_<mode>)")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in <tag>.json (same config and "
                    "seed) and run only the missing ones")
    ap.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                    help="combine result files of split runs (e.g. one process per target) into <tag>.json/.md")
    ap.add_argument("--profile", action="store_true", help="time one LV iteration (batch 512, 100 steps) per method")
    ap.add_argument("--oracle", action="store_true", help="DIS with the exact optimal control (quadrature score of the "
                    "noised target) on the separable targets (--only, default dw554) at K = 50, 100, 200: the "
                    "discretization ceiling a trained network is measured against")
    ap.add_argument("--oracle-fit", nargs=3, type=int, default=None, metavar=("HIDDEN", "LAYERS", "UPDATES"),
                    help="with --oracle: instead of the table, regress a ControlNet of this size onto the exact "
                    "control (K = 100) and report the sampler it gives (can the network represent the control?)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    args.mode = "quick" if args.quick else args.mode
    torch.set_num_threads(max(1, args.threads))
    if args.profile:
        return profile_main(args)
    if args.oracle:
        return oracle_main(args)
    if args.merge is not None:
        return merge_main(args)
    cfgs, seeds = protocol(args.mode)
    seeds = args.seeds if args.seeds is not None else seeds
    cfgs = [c for c in cfgs if (args.only is None or c.target in args.only)
            and (args.methods is None or c.method in args.methods) and (args.losses is None or c.loss in args.losses)]
    cfgs = [replace(c, **parse_overrides(args.set)) for c in cfgs]  # after the filter: some options are per method
    out, tag = Path(args.out), args.tag or f"densities_{args.mode}"
    out.mkdir(parents=True, exist_ok=True)
    done = previous_runs(out / f"{tag}.json") if args.resume else {}
    t_start, rows, md = time.perf_counter(), [], ""
    for cfg in cfgs:
        row = {"target": cfg.target, "method": cfg.method, "loss": cfg.loss, "config": asdict(cfg), "runs": []}
        rows.append(row)
        for seed in seeds:
            r = done.get(run_key(replace(cfg, seed=seed))) or run_one(cfg, seed, seeds[0], out, tag)
            row["runs"].append(r)
            row["summary"] = summarize(row["runs"])
            md = write_results(out, tag, rows, args, seeds, time.perf_counter() - t_start)  # after every run
    print(md)
    return 0


def run_key(cfg: DensityConfig) -> str:
    return json.dumps({k: v for k, v in asdict(cfg).items() if k != "progress"}, sort_keys=True)


def previous_runs(path: Path) -> dict[str, dict]:
    """Runs of an earlier (interrupted) invocation, keyed by their full config (seed included)."""
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["results"]
    return {run_key(DensityConfig(**r["config"])): r for row in rows for r in row["runs"]}


def run_one(cfg: DensityConfig, seed: int, first_seed: int, out: Path, tag: str) -> dict:
    """Train + evaluate one seed; the first seed's sample plot is kept as <tag>_<target>_<method>_<loss>.png."""
    tmp = out / f".{tag}_tmp"
    r = run(replace(cfg, seed=seed), tmp if seed == first_seed else None)
    if seed == first_seed:
        shutil.copy(tmp / "samples.png", out / f"{tag}_{cfg.target}_{cfg.method}_{cfg.loss}.png")
        shutil.rmtree(tmp)
    r.pop("files", None)
    m = r["metrics"]
    print(f"{cfg.target:7s} {cfg.method} {cfg.loss} seed {seed}: |dlogZ| IS {m.get('dlogZ_is', 0):.3f} "
          f"ELBO {m.get('dlogZ_elbo', 0):.3f} ESS {m['ess']:.3f} ({r['train_time_s']:.0f} s wall, "
          f"{r['train_cpu_s']:.0f} s CPU, {r['iterations_done']} it, {r['it_per_s']:.2f} it/s)", flush=True)
    return r


def write_results(out: Path, tag: str, rows: list[dict], args, seeds: list[int], wall: float) -> str:
    """Write ``<tag>.json`` and ``<tag>.md``; returns the markdown."""
    title = f"Diffusion samplers for unnormalized densities ({args.mode} protocol, median over seeds {seeds})"
    md = markdown([r for r in rows if r.get("runs")], title) + MODE_NOTES.get(args.mode, "")
    prov = provenance()
    report = {"benchmark": "densities", "mode": args.mode, "quick": args.mode == "quick", "seeds": seeds,
              "git_commit": prov["git_commit"], "argv": sys.argv, "provenance": prov,
              "versions": {"python": prov["python"], "torch": prov["torch"]},
              "threads": args.threads, "cpu_count": os.cpu_count(), "wall_time_s": wall,
              "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "anchors": {f"{k[0]}/{k[1]}": v for k, v in ANCHORS.items()}, "results": rows}
    write_json(out / f"{tag}.json", report, indent=1)
    write_text_atomic(out / f"{tag}.md", command_line() + "\n\n" + md)
    if len(rows) > 1:
        plot_summary([r for r in rows if r.get("runs")], out / f"{tag}_summary.png")
    return md


def plot_summary(rows: list[dict], path: Path) -> None:
    """Median |Δlog Z| (IS, log scale) and ESS per target, one bar per method x loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    targets = list(dict.fromkeys(r["target"] for r in rows))
    combos = [(m, loss) for m in ("dis", "pis", "dds") for loss in ("kl", "lv")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for j, (m, loss) in enumerate(combos):
        got = {r["target"]: r["summary"] for r in rows if r["method"] == m and r["loss"] == loss}
        xs = [i + (j - 2.5) * 0.13 for i in range(len(targets))]
        for ax, key in zip(axes, ("dlogZ_is", "ess"), strict=True):
            ax.bar(xs, [got.get(t, {}).get(key, float("nan")) for t in targets], width=0.12, label=f"{m}/{loss}",
                   color=plt.cm.tab20(2 * ("dis", "pis", "dds").index(m) + (loss == "kl")))
    for ax, title in zip(axes, ("median |Δlog Z| (IS)", "median ESS"), strict=True):
        ax.set_xticks(range(len(targets)), targets)
        ax.set_xlim(-0.5, len(targets) - 0.5)
        ax.set_title(title, fontsize=9)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_main(args) -> int:
    """Concatenate the ``results`` of several JSON reports (same seeds) into ``<tag>.json`` / ``<tag>.md``."""
    reports = [json.loads(Path(f).read_text()) for f in args.merge]
    if not reports:
        raise ValueError("--merge needs at least one JSON file")
    rows = [r for rep in reports for r in rep["results"]]
    seeds = sorted({s for rep in reports for s in rep["seeds"]})
    args.mode = reports[0].get("mode", "quick" if reports[0]["quick"] else "full")
    out, tag = Path(args.out), args.tag or "densities"
    out.mkdir(parents=True, exist_ok=True)
    md = write_results(out, tag, rows, args, seeds, sum(rep["wall_time_s"] for rep in reports))
    print(md)
    return 0


def oracle_main(args, n: int = 4096, repeats: int = 5) -> int:
    """DIS driven by v* = score of the VP-noised target (``SeparableTarget.score_t``): ELBO gap (= path KL, pure
    discretization error), |Delta log Z| of the IS estimate (median over ``repeats`` x n paths), ESS, per K."""
    from scorelab.densities import DIS, FunctionControl, ess, get_target, log_Z_is
    rows, names = [], args.only or ["dw554"]
    for name in names:
        tgt = get_target(name)
        for K in () if args.oracle_fit else (50, 100, 200):
            smp = DIS(tgt.dim, K)
            smp.net = FunctionControl(lambda x, u, smp=smp, tgt=tgt: tgt.score_t(x, smp.t_max - u, smp.vp, n_grid=501))
            g, res = torch.Generator().manual_seed(0), []
            for _ in range(repeats):
                lw = smp.sample(tgt, n, g, torch.float64).log_w
                res.append((tgt.log_Z - float(lw.mean()), abs(log_Z_is(lw) - tgt.log_Z), ess(lw)))
            gap, dlz, e = (statistics.median(r[i] for r in res) for i in range(3))
            rows.append({"target": name, "K": K, "elbo_gap": gap, "abs_dlogZ_is": dlz, "ess": e, "n": n,
                         "repeats": repeats})
            print(rows[-1], flush=True)
    fits = [oracle_fit(get_target(name), *args.oracle_fit) for name in names] if args.oracle_fit else []
    tag = args.tag or "densities_oracle"
    report = {"benchmark": "densities_oracle", "fits": fits,
              "command": "python benchmarks/densities.py " + " ".join(sys.argv[1:]),
              "git_commit": git_commit(), "torch": torch.__version__, "rows": rows}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out) / f"{tag}.json", report, indent=1)
    md = [command_line(), "",
          "## DIS with the exact optimal control (discretization ceiling)", "",
          f"VP reference (beta 0.1 -> 10, T = 1), uniform grid, {n} paths x {repeats} repeats (medians).", ""]
    if rows:
        md += ["| target | K | ELBO gap | \\|Δlog Z\\| IS | ESS |", "|---|---|---|---|---|"]
        md += [f"| {r['target']} | {r['K']} | {r['elbo_gap']:.3f} | {r['abs_dlogZ_is']:.4f} | {r['ess']:.3f} |"
               for r in rows]
    if fits:
        md += ["", "Network regressed onto the exact control (K = 100; 2048 oracle paths, Adam 3e-3 -> 1e-5 cosine, "
               "1024 (step, path) pairs per update, squared error weighted by the step's KL weight dB_k / 2), then "
               "run as the sampler's control (4096 fresh paths):", "",
               "| target | network | updates | fit loss (KL proxy) | ELBO gap | \\|Δlog Z\\| IS | ESS |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {f['target']} | {f['hidden']} x {f['layers']} | {f['updates']} | {f['fit_loss']:.3f} | "
               f"{f['elbo_gap']:.3f} | {f['abs_dlogZ_is']:.4f} | {f['ess']:.3f} |" for f in fits]
    write_text_atomic(Path(args.out) / f"{tag}.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def oracle_fit(tgt, hidden: int, layers: int, updates: int, K: int = 100, n_paths: int = 2048) -> dict:
    """Supervised regression of the DIS ``ControlNet`` onto v* = ``tgt.score_t`` along oracle paths, then the
    sampler it gives: separates what the network can represent from what a training loss finds."""
    from scorelab.densities import DIS, FunctionControl, ess, log_Z_is
    smp = DIS(tgt.dim, K, hidden=hidden, layers=layers)
    net, g = smp.net, torch.Generator().manual_seed(0)
    oracle = FunctionControl(lambda x, u: tgt.score_t(x, smp.t_max - u, smp.vp, n_grid=501))
    smp.net = oracle
    with torch.no_grad():
        p = smp.simulate(tgt, n_paths, g, keep_scores=True)
        xs, sc, s = p.xs[:-1], p.scores, smp.s[:-1].float()
        v_star = torch.stack([oracle(xs[k], s[k]) for k in range(K)])
    smp.net, w = net, smp.c2.float()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, updates, 1e-5)
    for _ in range(updates):
        k, b = torch.randint(0, K, (1024,), generator=g), torch.randint(0, n_paths, (1024,), generator=g)
        loss = 0.5 * K * (w[k, None] * (net(xs[k, b], s[k], sc[k, b]) - v_star[k, b]) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        lw = smp.sample(tgt, 4096, torch.Generator().manual_seed(1)).log_w.double()
    out = {"target": tgt.name, "hidden": hidden, "layers": layers, "updates": updates, "fit_loss": float(loss),
           "elbo_gap": tgt.log_Z - float(lw.mean()), "abs_dlogZ_is": abs(log_Z_is(lw) - tgt.log_Z), "ess": ess(lw)}
    print(out, flush=True)
    return out


def profile_main(args) -> int:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    res = {m: profile_lv(m) for m in (args.methods or ["dis", "pis", "dds"])}
    report = {"benchmark": "densities_profile", "threads": args.threads, "cpu_count": os.cpu_count(),
              "load_avg_1min": load, "batch": 512, "steps": 100, "target": "gmm9", "git_commit": git_commit(),
              "torch": torch.__version__, "seconds_per_iteration": res}
    tag = args.tag or f"densities_profile_t{args.threads}"
    write_json(Path(args.out) / f"{tag}.json", report, indent=1)
    print(f"load average {load:.1f}, {args.threads} thread(s); seconds per LV iteration (batch 512, 100 steps):")
    for m, r in res.items():
        print(f"  {m}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
