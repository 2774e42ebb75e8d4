r"""One call for the CLI: ``run(DensityConfig(...), out_dir) -> dict`` trains a diffusion sampler on a target,
evaluates it, and writes samples (.npy and safetensors), a PNG scatter plot and a JSON report into ``out_dir``.

Notation: ``method`` in {dis, pis, dds}; ``loss`` in {kl, lv}; ``steps`` K; ``iterations``, ``batch``, ``lr`` as
in train.py; the report holds log Z-hat (importance sampling on path space), the ELBO bound, ESS and, where the
target's log Z is known, |Delta log Z| (estimators.py).
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .dds import DDS
from .dis import DIS
from .estimators import evaluate
from .pis import PIS
from .targets import get_target
from .train import TRAIN_LOSSES, pretrain_mc_score, train

METHODS = {"dis": DIS, "pis": PIS, "dds": DDS}


@dataclass(frozen=True)
class DensityConfig:
    """Configuration of one density-sampler run (the CLI maps flags / YAML onto it).

    ``target``: a name from ``targets.TARGETS`` or ``package.module:function`` (then ``dim`` is required).
    ``method_kwargs``: extra sampler options, e.g. ``{"sigma": 2.0}`` for PIS/DDS, ``{"prior_std": 2.0}`` for DIS.
    ``time_limit``: optional cap on training time (seconds) on ``time_clock`` ("wall" or "cpu", see ``train``).
    ``eval_repeats``: independent evaluations of ``eval_samples`` paths each; the report then adds their spread
    (``log_Z_hat_sd``: the statistical error of one estimate) and the pooled estimate over all of them.
    ``explore``, ``ema``: off-policy exploration factor (LV only) and weight EMA decay, see ``train``.
    ``mc_pretrain_rounds``: if > 0, warm start by ``pretrain_mc_score`` (DIS only; ``mc_samples`` draws per point)
    before the ``iterations`` of ``loss``; its CPU time counts in the training time (``time_limit`` caps the rest).
    ``log_z``: a known log Z of the target (e.g. of a user's density): the report then shows the errors against it
    (it replaces a built-in target's reference value).  ``loss`` "kl_adjoint": KL by the stochastic adjoint
    (adjoint.py).
    """

    target: str = "gmm9"
    method: str = "dis"
    loss: str = "lv"
    steps: int = 100
    iterations: int = 2000
    batch: int = 512
    lr: float = 5e-3
    lr_final: float | None = 5e-4
    seed: int = 0
    dim: int | None = None
    hidden: int = 64
    layers: int = 2
    eval_samples: int = 4096
    eval_repeats: int = 1
    time_limit: float | None = None
    time_clock: str = "wall"
    progress: bool = True
    explore: float = 1.0
    ema: float | None = None
    mc_pretrain_rounds: int = 0
    mc_samples: int = 512
    log_z: float | None = None
    method_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {sorted(METHODS)}")
        if self.loss not in TRAIN_LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {sorted(TRAIN_LOSSES)}")
        for k in ("steps", "batch", "eval_samples", "eval_repeats"):
            if int(getattr(self, k)) != getattr(self, k) or getattr(self, k) < 1:
                raise ValueError(f"{k} must be a positive integer, got {getattr(self, k)}")
        if self.time_clock not in ("wall", "cpu"):
            raise ValueError(f"time_clock must be 'wall' or 'cpu', got {self.time_clock!r}")
        if self.mc_pretrain_rounds < 0 or self.mc_samples < 1:
            raise ValueError(f"need mc_pretrain_rounds >= 0 and mc_samples >= 1, got {self.mc_pretrain_rounds}, "
                             f"{self.mc_samples}")
        if self.mc_pretrain_rounds and self.method != "dis":
            raise ValueError(f"mc_pretrain_rounds needs method 'dis' (its optimal control is a noised score), got "
                             f"{self.method!r}")
        if self.loss == "kl_adjoint" and self.method != "pis":
            raise ValueError(f"loss 'kl_adjoint' supports method 'pis' (DIS: the reversible Heun scheme is unstable on "
                             f"its stiff VP drift, see densities/adjoint.py), got {self.method!r}")
        if self.log_z is not None and not math.isfinite(self.log_z):
            raise ValueError(f"log_z must be a finite number, got {self.log_z}")
        if self.iterations < 0 or not self.lr > 0:
            raise ValueError(f"need iterations >= 0 and lr > 0, got {self.iterations}, {self.lr}")


def build(config: DensityConfig):
    """(target, sampler) for a config; the network is initialized from ``config.seed``."""
    target = get_target(config.target, config.dim)
    if config.log_z is not None:
        target.log_Z, target.log_Z_source = float(config.log_z), "given by the user (log_z)"
    torch.manual_seed(config.seed)  # network initialization only (zero-initialized heads; hidden layers random)
    sampler = METHODS[config.method](target.dim, config.steps, hidden=config.hidden, layers=config.layers,
                                     **config.method_kwargs)
    return target, sampler


def evaluate_repeated(sampler, target, n: int, repeats: int, generator: torch.Generator):
    """``evaluate`` ``repeats`` times (n paths each): metrics of the first, plus (repeats > 1) the list of log Z-hat and
    ESS, the sample std of log Z-hat (error of one n-path estimate), the pooled estimates over repeats * n paths
    (IS ``log_Z_hat_pooled``, ``elbo_pooled`` with its standard error) and, where log Z is known, the mean over
    repeats of one n-path estimate's |Delta log Z| (``dlogZ_is_mean``)."""
    metrics, x = evaluate(sampler, target, n, generator)
    if repeats > 1:
        reps = [metrics] + [evaluate(sampler, target, n, generator)[0] for _ in range(repeats - 1)]
        lz = torch.tensor([m["log_Z_hat"] for m in reps], dtype=torch.float64)
        metrics["log_Z_hat_reps"], metrics["ess_reps"] = lz.tolist(), [m["ess"] for m in reps]
        metrics["log_Z_hat_sd"] = float(lz.std())
        metrics["log_Z_hat_pooled"] = float(torch.logsumexp(lz, 0) - math.log(repeats))  # = IS over all paths
        metrics["elbo_pooled"] = sum(m["elbo"] for m in reps) / repeats  # = the ELBO over all paths (equal n)
        metrics["elbo_pooled_se"] = math.sqrt(sum(m["elbo_se"] ** 2 for m in reps)) / repeats
        if target.log_Z is not None:
            metrics["dlogZ_is_pooled"] = abs(metrics["log_Z_hat_pooled"] - target.log_Z)
            metrics["dlogZ_elbo_pooled"] = abs(metrics["elbo_pooled"] - target.log_Z)
            # the expected error of one n-path IS estimate (what "|dlog Z| at K = n, mean over runs" measures)
            metrics["dlogZ_is_mean"] = float((lz - target.log_Z).abs().mean())
    return metrics, x


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def run(config: DensityConfig, out_dir: str | os.PathLike | None = None) -> dict:
    """Train, evaluate and (if ``out_dir``) write ``samples.npy`` (+ the same as ``samples.safetensors``),
    ``samples.png``, ``report.json``."""
    target, sampler = build(config)
    gen = torch.Generator().manual_seed(config.seed)
    pre = pretrain_mc_score(sampler, target, rounds=config.mc_pretrain_rounds, n_mc=config.mc_samples,
                            generator=gen) if config.mc_pretrain_rounds else {"cpu_time": 0.0, "wall_time": 0.0}
    hist = train(sampler, target, loss=config.loss, iterations=config.iterations, batch=config.batch, lr=config.lr,
                 lr_final=config.lr_final, generator=gen, progress=config.progress, time_limit=config.time_limit,
                 clock=config.time_clock, explore=config.explore, ema=config.ema)
    t0 = time.perf_counter()
    metrics, x = evaluate_repeated(sampler, target, config.eval_samples, config.eval_repeats, gen)
    report = {"config": asdict(config), "metrics": metrics, "log_Z_source": target.log_Z_source,
              "log_Z_stderr": target.log_Z_stderr, "train_time_s": hist.wall_time + pre["wall_time"],
              "train_cpu_s": hist.cpu_time + pre["cpu_time"], "mc_pretrain_cpu_s": pre["cpu_time"],
              "threads": torch.get_num_threads(),
              "iterations_done": hist.iterations, "it_per_s": hist.iterations / max(hist.wall_time, 1e-9),
              "eval_time_s": time.perf_counter() - t0, "torch": torch.__version__, "python": platform.python_version()}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save
        _atomic_write(out / "samples.safetensors", save({"x": x.contiguous().float()}))
        _atomic_write(out / "samples.npy", _npy_bytes(x))  # the same samples as every other command writes them
        _atomic_write(out / "report.json", json.dumps(report, indent=2, default=float).encode())
        plot_samples(x, target, out / "samples.png", title=f"{config.method}/{config.loss} on {target.name}")
        report["files"] = [str(out / n) for n in ("samples.npy", "samples.safetensors", "samples.png", "report.json")]
    return report


def _npy_bytes(x: torch.Tensor) -> bytes:
    """``x`` as the bytes of a float32 ``.npy`` file."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, x.detach().float().cpu().numpy())
    return buf.getvalue()


def plot_samples(x: torch.Tensor, target, path: str | os.PathLike, title: str = "", n: int = 2000) -> None:
    """Scatter of the first two coordinates of the samples over exact target samples (where available)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    try:
        y = target.sample(n, torch.Generator().manual_seed(0))
        ax.scatter(y[:, 0], y[:, 1 % target.dim], s=2, alpha=0.4, c="tab:gray", label="target")
    except NotImplementedError:
        pass
    xs = x[:n].detach().cpu().double()
    ax.scatter(xs[:, 0], xs[:, 1 % target.dim], s=2, alpha=0.5, c="tab:blue", label="sampler")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
