"""SFT-PG toy protocol (Fan & Lee, ICML 2023, Table 1; official ``toy_exp``): DDPM T = 10, 100, 1000 vs SFT-PG (B)
at T = 10 on swiss roll and two moons.

Protocol (as in the official code): data ``make_swiss_roll(10000, noise=0.05)[:, [0, 2]] / 20`` and
``make_moons(10000, noise=0.05) / 2``; sigmoid betas 1e-5 .. 1e-2 for every T; ``StepEmbedMLP`` 2-128-128-128-2
(softplus, per-step embeddings); eps loss with antithetic steps, RMSprop lr 1e-3, clip 1, batch 128, 158k steps
(2000 epochs); ancestral sampler with variance beta_t and noise at every step.  Fine-tuning: critic 2-256-256-1
(ReLU), step-conditioned baseline 2-256-256-1, Adam 5e-5 / 1e-3 / 1e-3, n_critic 5, one generator step per outer
step on 128 transitions, lambda 1, 300 epochs of batch 128.

Metrics (mean +- std over seeds): (a) the paper's: POT sliced W2, 100 projections, 10,000 samples vs the 10,000
training points; (b) sliced W2, 1,000 fixed projections, vs 10,000 fresh held-out points; (c) exact W2 (POT emd),
5,000 vs 5,000 fresh points.  Two-sample floors of each metric from independent data draws (moons: an i.i.d. sampler,
since ``make_moons`` puts points on a fixed grid of angles; the moons held-out sets use it too).
Anchor (paper, swiss roll, x1e-2): DDPM T=10 8.29, T=100 2.36, T=1000 1.78, SFT-PG (B) T=10 0.64.

    python benchmarks/sft_pg_toy.py --quick          # minutes: short pretraining / fine-tuning, 1 seed
    python benchmarks/sft_pg_toy.py                  # full protocol, 3 seeds (hours on 2 CPU cores)
    python benchmarks/sft_pg_toy.py --seeds 1 --runs-only   # a worker: fills the cache of runs; a call without
                                                            # --runs-only (same options) merges the cached seeds
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from sklearn.datasets import make_moons, make_swiss_roll

from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import Discrete
from scorelab.evaluation.metrics import sliced_w2, subsample, w2_exact
from scorelab.finetune.sft_pg import SFTPGConfig, pg_variance, sample_policy, sft_pg
from scorelab.nets import StepEmbedMLP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, mean_std, write_json, write_results  # noqa: E402

ANCHOR = {"DDPM T=10": 8.29e-2, "DDPM T=100": 2.36e-2, "DDPM T=1000": 1.78e-2, "SFT-PG(B) T=10": 0.64e-2}


# -- data ---------------------------------------------------------------------------------------------------------
def swiss_train(n: int, seed: int) -> torch.Tensor:
    x, _ = make_swiss_roll(n, noise=0.05, random_state=seed)
    return torch.from_numpy(x[:, [0, 2]] / 20).float()


def moons_train(n: int, seed: int) -> torch.Tensor:
    x, _ = make_moons(n, noise=0.05, random_state=seed)
    return torch.from_numpy(x / 2).float()


def moons_iid(n: int, seed: int) -> torch.Tensor:
    """Two moons with i.i.d. uniform angles (make_moons' distribution without its fixed angle grid), / 2."""
    rng = np.random.default_rng(seed)
    th = rng.uniform(0, math.pi, n)
    outer = rng.random(n) < 0.5
    x = np.where(outer[:, None], np.c_[np.cos(th), np.sin(th)], np.c_[1 - np.cos(th), 0.5 - np.sin(th)])
    return torch.from_numpy((x + 0.05 * rng.standard_normal((n, 2))) / 2).float()


DATA = {"swiss_roll": (swiss_train, swiss_train), "moons": (moons_train, moons_iid)}


# -- models -------------------------------------------------------------------------------------------------------
def pretrain(data: torch.Tensor, T: int, steps: int, seed: int) -> NetworkModel:
    """The official DDPM: sigmoid betas, StepEmbedMLP, eps loss (mean over coordinates and batch), antithetic discrete
    steps k and T-1-k, RMSprop 1e-3, gradient-norm clip 1, batch 128 (epochs of a random permutation), constant lr;
    the raw weights are used, as in the official code.

    This is ``training.train`` with ``DSMLoss(proposal="discrete", reduction="mean")`` written as a bare loop: the
    marginal coefficients are tabulated once, step draws and noise come in chunks of 1000 steps, and there is no EMA,
    logging or per-step synchronisation (2-3x less CPU per step on this 2-128-128-128-2 net)."""
    torch.manual_seed(seed)
    proc = Discrete.from_schedule("sigmoid", T, start=1e-5, end=1e-2)
    model = NetworkModel(StepEmbedMLP(T), proc, "eps", "index")
    net, g = model.net, torch.Generator().manual_seed(seed)
    t = (torch.arange(T, dtype=torch.float64) + 1) / T  # step k <-> t = (k+1)/T, embedding row k
    a, s = proc.alpha(t).float()[:, None], proc.sigma(t).float()[:, None]
    params = list(net.parameters())
    opt = torch.optim.RMSprop(params, lr=1e-3, foreach=True)
    n, B, perm, pos = data.shape[0], 128, torch.randperm(data.shape[0], generator=g), 0
    for i0 in range(0, steps, 1000):
        m = min(1000, steps - i0)
        K = torch.randint(0, T, (m, B // 2 + 1), generator=g)
        K, E = torch.cat([K, T - 1 - K], 1)[:, :B], torch.randn(m, B, data.shape[1], generator=g)
        for j in range(m):
            if pos + B > n:
                perm, pos = torch.randperm(n, generator=g), 0
            x0, k, eps = data[perm[pos:pos + B]], K[j], E[j]
            pos += B
            h = a[k] * x0 + s[k] * eps
            for layer in net.layers:  # StepEmbedMLP.forward without its per-call index checks
                h = net.act(layer(h, k))
            loss = ((net.out(h) - eps) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
    return model.eval()


def pretrained(data: torch.Tensor, T: int, steps: int, seed: int, path: Path) -> tuple[NetworkModel, float]:
    """``pretrain`` cached in ``path`` (safetensors of the net); returns (model, pretraining wall time, s)."""
    if path.exists():
        model = NetworkModel(StepEmbedMLP(T), Discrete.from_schedule("sigmoid", T, start=1e-5, end=1e-2), "eps",
                             "index")
        model.net.load_state_dict(safetensors.torch.load_file(str(path)))
        return model.eval(), json.loads(path.with_suffix(".json").read_text())["pretrain_s"]
    t0 = time.perf_counter()
    model = pretrain(data, T, steps, seed)
    wall = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(path))
    write_json(path.with_suffix(".json"), {"pretrain_s": wall, "steps": steps}, indent=None)
    return model, wall


def metrics(samples: torch.Tensor, train_x: torch.Tensor, held_out: torch.Tensor, held_small: torch.Tensor,
            n_exact: int, seed: int) -> dict:
    return {"paper_sw2": sliced_w2(samples, train_x, 100, seed=seed),
            "sw2_1000_heldout": sliced_w2(samples, held_out, 1000, seed=12345),
            "w2_exact_heldout": w2_exact(subsample(samples, n_exact, seed), held_small)}


def draw_metrics(model, name: str, seed: int, train_x: torch.Tensor, args) -> dict:
    """Each metric averaged over ``args.eval_draws`` independent evaluations (fresh model samples, fresh held-out
    sets, fresh paper-metric projections; (b) keeps its fixed directions, as its floor does): the estimate of the
    metric's expectation, comparable with the floors' mean over their draws.  Draw seeds (2e4 + 100 seed + r ...)
    stay clear of the training, held-out and floor seeds.  ``model`` may also be a function (n, generator) -> [n, 2]."""
    held_fn, cfg, vals = DATA[name][1], SFTPGConfig(), {}
    draw = model if callable(model) and not isinstance(model, torch.nn.Module) else (
        lambda n, g: sample_policy(model, n, cfg, g, (2,)))
    for r in range(args.eval_draws):
        s = draw(10_000, torch.Generator().manual_seed(40_000 + 100 * seed + r))
        held, small = held_fn(10_000, 20_000 + 100 * seed + r), held_fn(args.n_exact, 30_000 + 100 * seed + r)
        m = {"paper_sw2": sliced_w2(s, train_x, 100, seed=50_000 + 100 * seed + r),
             "sw2_1000_heldout": sliced_w2(s, held, 1000, seed=12345),
             "w2_exact_heldout": w2_exact(subsample(s, args.n_exact, seed), small)}
        for k, v in m.items():
            vals.setdefault(k, []).append(v)
    return {k: {"mean": float(np.mean(v)), "values": v} for k, v in vals.items()}


RESAMPLED = "training sample, resampled"


def seed_data(name: str, seed: int, n_exact: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seed's 10,000 training points, its 10,000 held-out points and its ``n_exact`` points for exact W2."""
    train_fn, held_fn = DATA[name]
    return train_fn(10_000, seed), held_fn(10_000, 100 + seed), held_fn(n_exact, 200 + seed)


def scored_reference(path: Path, name: str, seed: int, make_draw, args) -> dict:
    """Score a reference sampler exactly like a model (same seeds for the single draw and the evaluation draws);
    ``make_draw(x_train) -> (n, generator) -> [n, 2]``; cached at ``path``."""
    if path.exists():
        return json.loads(path.read_text())
    x, held, held_small = seed_data(name, seed, args.n_exact)
    draw = make_draw(x)
    row = metrics(draw(10_000, torch.Generator().manual_seed(seed)), x, held, held_small, args.n_exact, seed)
    if args.eval_draws > 1:
        row["draws"] = draw_metrics(draw, name, seed, x, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, row, indent=None)
    return row


def resampled_train_row(name: str, seed: int, args) -> dict:
    """The reference a critic trained on the training points pulls towards: draws with replacement from the 10,000
    training points themselves (their empirical law, where every IPM against the training sample is 0).  Its
    held-out metrics are what fitting the training sample perfectly buys; cached in ``args.work``."""
    return scored_reference(args.work / f"{name}_seed{seed}_resampled_{args.eval_draws}.json", name, seed,
                            lambda x: lambda n, g: x[torch.randint(0, x.shape[0], (n,), generator=g)], args)


DATA_ROW = "data distribution, fresh draws"


def mixture_label(w: float) -> str:
    return DATA_ROW if w == 0 else f"{1 - w:g} data + {w:g} training sample (mixture)"


def mixture_row(name: str, seed: int, w: float, args) -> dict:
    """A sampler whose law is (1 - w) q + w q_hat_train: fresh points of the data distribution q itself (w = 0: the
    perfect model, scored exactly like a model, on the same held-out draws) mixed with draws from the 10,000 training
    points (w = 1 is the resampled training sample).  It measures what a metric's value is for a model that matches
    q, and how far fitting the training sample moves (a) down and (b) up.  Fresh-data seeds lie in [1e6, 2e6), clear
    of every other data seed; cached in ``args.work``."""
    held_fn = DATA[name][1]

    def make_draw(x):
        def draw(n, g):
            fresh = held_fn(n, int(torch.randint(10**6, 2 * 10**6, (1,), generator=g)))
            pick = torch.rand(n, generator=g) < w
            return torch.where(pick[:, None], x[torch.randint(0, x.shape[0], (n,), generator=g)], fresh)
        return draw

    return scored_reference(args.work / f"{name}_seed{seed}_mixture{w:g}_{args.eval_draws}.json", name, seed,
                            make_draw, args)


def kde_label(h: float) -> str:
    return f"training sample + N(0, {h:g}^2 I) (smoothed bootstrap / KDE)"


def kde_row(name: str, seed: int, h: float, args) -> dict:
    """Draws of the Gaussian kernel density estimate of the 10,000 training points with bandwidth h (a resampled
    training point plus N(0, h^2 I)): the classic smoothed estimator of a law from its sample, a learner that uses
    nothing but the training points.  Scanning h shows how close to the data law smoothing the sample can get (choosing
    h by the held-out metric gives it an oracle's advantage); cached in ``args.work``."""
    def make_draw(x):
        def draw(n, g):
            return x[torch.randint(0, x.shape[0], (n,), generator=g)] + h * torch.randn(n, x.shape[1], generator=g)
        return draw

    return scored_reference(args.work / f"{name}_seed{seed}_kde{h:g}_{args.eval_draws}.json", name, seed,
                            make_draw, args)


def floors(train_fn, held_fn, n: int, n_exact: int, repeats: int) -> dict:
    out = {k: [] for k in ("paper_sw2", "sw2_1000_heldout", "w2_exact_heldout")}
    for r in range(repeats):
        a, b = train_fn(n, 1000 + 2 * r), held_fn(n, 1001 + 2 * r)
        out["paper_sw2"].append(sliced_w2(a, b, 100, seed=r))
        out["sw2_1000_heldout"].append(sliced_w2(held_fn(n, 5000 + r), b, 1000, seed=12345))
        out["w2_exact_heldout"].append(w2_exact(held_fn(n_exact, 7000 + r), held_fn(n_exact, 8000 + r)))
    return {k: mean_std(v) for k, v in out.items()}


def run_one(name: str, seed: int, args) -> dict:
    """DDPMs at every T, then SFT-PG (B) of T=10, for one dataset and seed; cached in ``args.work`` (the pretrained
    nets and the run's rows), so runs can be split over processes and merged by a later call."""
    cache = args.work / f"{name}_seed{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    x, held, held_small = seed_data(name, seed, args.n_exact)
    rows, samples, eval_cfg = {}, {}, SFTPGConfig()
    for T in args.Ts:
        nets = args.work if args.pretrained_from is None else RESULTS / f".sft_pg_toy_{args.pretrained_from}_runs"
        model, t_train = pretrained(x, T, args.pretrain_steps, seed, nets / f"{name}_seed{seed}_T{T}.safetensors")
        s = sample_policy(model, 10_000, eval_cfg, torch.Generator().manual_seed(seed), (2,))
        rows[f"DDPM T={T}"] = {**metrics(s, x, held, held_small, args.n_exact, seed), "pretrain_s": t_train}
        if args.eval_draws > 1:
            rows[f"DDPM T={T}"]["draws"] = draw_metrics(model, name, seed, x, args)
        samples[f"DDPM T={T}"] = s
        if T == 10:
            base10 = model.requires_grad_(True)
    cfg = SFTPGConfig(epochs=args.epochs, seed=seed, eval_every=max(1, args.epochs // 10), lam=args.lam,
                      gp_weight=args.gp_weight, ema_decay=args.ema_decay, ckpt_every=max(1, args.epochs // 10),
                      lr_generator=args.lr_generator, lr_generator_final=args.lr_generator_final,
                      generator_batch=args.generator_batch)
    res = sft_pg(base10, x, cfg, run_dir=args.work / f"{name}_seed{seed}_ft", resume=True, progress=args.progress)
    s = sample_policy(res.ema_model, 10_000, eval_cfg, torch.Generator().manual_seed(seed), (2,))
    var = pg_variance(res.model, res.critic, res.baseline, lambda n, g: torch.randn(n, 2, generator=g), cfg,
                      n_batches=16, generator=torch.Generator().manual_seed(seed))
    rows["SFT-PG(B) T=10"] = {**metrics(s, x, held, held_small, args.n_exact, seed), "finetune_s": res.wall_time,
                              "pg_variance": var, "history": res.history}
    if args.eval_draws > 1:
        rows["SFT-PG(B) T=10"]["draws"] = draw_metrics(res.ema_model, name, seed, x, args)
    samples["SFT-PG(B) T=10"] = s
    out = {"rows": rows, "samples": {k: v[:3000].tolist() for k, v in samples.items()}, "train": x[:3000].tolist()}
    write_json(cache, out, indent=None)
    return out


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in runs[0]["rows"]:
        out[key] = {}
        for m in ("paper_sw2", "sw2_1000_heldout", "w2_exact_heldout", "pretrain_s", "finetune_s"):
            vals = [r["rows"][key][m] for r in runs if m in r["rows"][key]]
            if vals:
                out[key][m] = {**mean_std(vals), "values": vals}
        if all("draws" in r["rows"][key] for r in runs):
            out[key]["draws"] = {m: {**mean_std(v := [r["rows"][key]["draws"][m]["mean"] for r in runs]), "values": v,
                                     "n_draws": len(runs[0]["rows"][key]["draws"][m]["values"])}
                                 for m in runs[0]["rows"][key]["draws"]}
        if "pg_variance" in runs[0]["rows"][key]:
            out[key]["pg_variance_ratio"] = [r["rows"][key]["pg_variance"].get("ratio") for r in runs]
    return out


def markdown(summary: dict, fl: dict, args) -> str:
    lines = [f"# SFT-PG toy benchmark ({'quick' if args.quick else 'full'} run)", "",
             f"Command: `python benchmarks/sft_pg_toy.py {' '.join(args.argv)}`; seeds {args.seeds}; "
             f"pretraining {args.pretrain_steps} steps, fine-tuning {args.epochs} epochs.", "",
             "Values x1e-2, mean +- std over seeds.  (a) paper metric: sliced W2 (100 proj.) vs the training points; "
             "(b) sliced W2 (1000 proj.) vs 10k held-out; (c) exact W2, "
             f"{args.n_exact} vs {args.n_exact} held-out.", ""]
    for name, summ in summary.items():
        lines += [f"## {name}", "", "| model | (a) paper | (b) SW2 held-out | (c) W2 exact | anchor (a) | time s |",
                  "|---|---|---|---|---|---|"]
        for key, r in summ.items():
            cells = [f"{100 * r[m]['mean']:.3f} +- {100 * r[m]['std']:.3f}" for m in
                     ("paper_sw2", "sw2_1000_heldout", "w2_exact_heldout")]
            anchor = f"{100 * ANCHOR[key]:.2f}" if name == "swiss_roll" and key in ANCHOR else "-"
            tkey = "finetune_s" if "finetune_s" in r else "pretrain_s"
            wall = f"{r[tkey]['mean']:.0f}" if tkey in r else "-"
            lines.append(f"| {key} | {' | '.join(cells)} | {anchor} | {wall} |")
        f = fl[name]
        cells = [f"{100 * f[m]['mean']:.3f} +- {100 * f[m]['std']:.3f}" for m in
                 ("paper_sw2", "sw2_1000_heldout", "w2_exact_heldout")]
        lines.append("| two-sample floor | " + " | ".join(cells) + " | | |")
        lines += _draws_table(summ, fl[name])
        ratios = summ["SFT-PG(B) T=10"].get("pg_variance_ratio")
        lines += ["", f"PG-estimate variance with / without baseline (after fine-tuning): {ratios}", ""]
    return "\n".join(lines)


def _draws_table(summ: dict, f: dict) -> list[str]:
    """Rows with ``--eval-draws``: per seed the mean over the draws, then mean +- std over seeds, and the ratio to
    the floor's mean (which is a mean over its own draws)."""
    keys = [k for k, r in summ.items() if "draws" in r]
    if not keys:
        return []
    mets = ("paper_sw2", "sw2_1000_heldout", "w2_exact_heldout")
    n = summ[keys[0]]["draws"]["paper_sw2"]["n_draws"]
    lines = ["", f"Each metric averaged over {n} independent evaluation draws per seed (`--eval-draws {n}`: fresh "
             "samples, held-out sets and paper-metric projections), then mean +- std over seeds; in brackets the "
             "ratio to the floor's mean.", "", "| model | (a) paper | (b) SW2 held-out | (c) W2 exact |",
             "|---|---|---|---|"]
    for key in keys:
        d = summ[key]["draws"]
        cells = [f"{100 * d[m]['mean']:.3f} +- {100 * d[m]['std']:.3f} [{d[m]['mean'] / f[m]['mean']:.2f}]"
                 for m in mets]
        lines.append(f"| {key} | {' | '.join(cells)} |")
    if DATA_ROW in keys:
        perfect = summ[DATA_ROW]["draws"]
        lines += ["", f"Ratio to the perfect model ('{DATA_ROW}': the same held-out draws, so paired per seed), "
                  "mean +- std over seeds:", "", "| model | (a) paper | (b) SW2 held-out | (c) W2 exact |",
                  "|---|---|---|---|"]
        for key in keys:
            r = {m: np.divide(summ[key]["draws"][m]["values"], perfect[m]["values"]) for m in mets}
            sd = {m: r[m].std(ddof=1) if r[m].size > 1 else 0.0 for m in mets}
            lines.append(f"| {key} | " + " | ".join(f"{r[m].mean():.2f} +- {sd[m]:.2f}" for m in mets) + " |")
    return lines


def plot(runs_by_data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["train", "DDPM T=10", "SFT-PG(B) T=10", "DDPM T=1000"]
    fig, axes = plt.subplots(len(runs_by_data), 4, figsize=(13, 3.3 * len(runs_by_data)), squeeze=False)
    for i, (name, run) in enumerate(runs_by_data.items()):
        for j, key in enumerate(keys):
            pts = np.asarray(run["train"] if key == "train" else run["samples"].get(key, [[0, 0]]))
            axes[i, j].scatter(pts[:, 0], pts[:, 1], s=1)
            axes[i, j].set_title(f"{name}: {key}", fontsize=9)
            axes[i, j].set_xlim(-1.1, 1.1)
            axes[i, j].set_ylim(-1.1, 1.1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curves(runs_by_data: dict, fl: dict, path: Path) -> None:
    """The fine-tuning curve: the paper's metric (on the EMA weights) against the epoch, one line per seed, with the
    two-sample floor as a band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs_by_data), figsize=(5.5 * len(runs_by_data), 3.6), squeeze=False)
    for ax, (name, runs) in zip(axes[0], runs_by_data.items(), strict=True):
        for seed, run in runs:
            hist = [h for h in run["rows"]["SFT-PG(B) T=10"]["history"] if "metric" in h]
            ax.plot([h["epoch"] for h in hist], [100 * h["metric"] for h in hist], marker=".", label=f"seed {seed}")
        f = fl[name]["paper_sw2"]
        ax.axhspan(100 * (f["mean"] - f["std"]), 100 * (f["mean"] + f["std"]), color="grey", alpha=0.3,
                   label="two-sample floor")
        ax.set(yscale="log", xlabel="epoch", ylabel="paper metric (x1e-2)", title=f"{name}: SFT-PG (B), T = 10")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--datasets", nargs="+", default=["swiss_roll", "moons"], choices=list(DATA))
    p.add_argument("--Ts", type=int, nargs="+")
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--gp-weight", type=float, default=0.0)
    p.add_argument("--ema-decay", type=float, default=0.0)
    p.add_argument("--lr-generator", type=float, default=5e-5)
    p.add_argument("--lr-generator-final", type=float, default=None, help="cosine decay of the generator lr to this")
    p.add_argument("--generator-batch", type=int, default=None,
                   help="buffer transitions per generator step (default: the batch size, 128, as in the paper)")
    p.add_argument("--resampled-reference", action="store_true",
                   help=f"add the row '{RESAMPLED}' (the IPM minimiser against the training points) at the merge")
    p.add_argument("--mixtures", type=float, nargs="+", metavar="W",
                   help=f"add rows of the sampler (1 - W) data + W training sample at the merge; W = 0 is the row "
                        f"'{DATA_ROW}' (a perfect model, scored like one; the ratios are then also given against it)")
    p.add_argument("--kde", type=float, nargs="+", metavar="H",
                   help="add rows of the Gaussian KDE of the training points with bandwidth H at the merge (a learner "
                        "from the sample alone: how far smoothing it goes towards the data law)")
    p.add_argument("--pretrained-from", default=None, help="reuse the cached DDPMs of the run with this --tag")
    p.add_argument("--floor-repeats", type=int)
    p.add_argument("--tag", default="")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--runs-only", action="store_true", help="only fill the run cache (for parallel workers)")
    p.add_argument("--eval-draws", type=int, default=1,
                   help="also average each metric over this many independent evaluation draws per model (> 1)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    q = args.quick
    args.seeds = args.seeds or ([0] if q else [0, 1, 2])
    args.Ts = args.Ts or [10, 100, 1000]
    args.pretrain_steps = args.pretrain_steps or (3000 if q else 158_000)
    args.epochs = args.epochs or (20 if q else 300)
    args.floor_repeats = args.floor_repeats or (3 if q else 10)
    args.n_exact = 2000 if q else 5000
    stem = "sft_pg_toy" + ("_quick" if q else "") + (f"_{args.tag}" if args.tag else "")
    args.work = RESULTS / f".{stem}_runs"
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.runs_only:  # worker: fill the cache of (dataset, seed) runs; a later call without it merges them
        return {name: [run_one(name, s, args) for s in args.seeds] for name in args.datasets}
    out = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "anchor": ANCHOR,
           "floors": {}, "summary": {}, "runs": {}}
    plots, curves = {}, {}
    for name in args.datasets:
        fpath = args.work / f"{name}_floors_{args.floor_repeats}.json"
        if not fpath.exists():
            fpath.parent.mkdir(parents=True, exist_ok=True)
            write_json(fpath, floors(*DATA[name], 10_000, args.n_exact, args.floor_repeats), indent=None)
        out["floors"][name] = json.loads(fpath.read_text())
        runs = [run_one(name, s, args) for s in args.seeds]
        if args.resampled_reference:
            for s, run in zip(args.seeds, runs, strict=True):
                run["rows"][RESAMPLED] = resampled_train_row(name, s, args)
        for h in args.kde or ():
            for s, run in zip(args.seeds, runs, strict=True):
                run["rows"][kde_label(h)] = kde_row(name, s, h, args)
        for w in args.mixtures or ():
            for s, run in zip(args.seeds, runs, strict=True):
                run["rows"][mixture_label(w)] = mixture_row(name, s, w, args)
        out["summary"][name] = summarise(runs)
        out["runs"][name] = [{"seed": s, "rows": r["rows"]} for s, r in zip(args.seeds, runs, strict=True)]
        plots[name] = runs[0]
        curves[name] = list(zip(args.seeds, runs, strict=True))
    out["wall_time_s_this_call"] = time.perf_counter() - t0
    plot(plots, RESULTS / f"{stem}.png")
    plot_curves(curves, out["floors"], RESULTS / f"{stem}_curve.png")
    write_results(stem, out, markdown(out["summary"], out["floors"], args))
    return out


if __name__ == "__main__":
    main()
