r"""Training loop for diffusion samplers (KL through the rollout, or the log-variance loss on detached paths).

Richter & Berner 2024 ("Improved sampling via learned diffusions"): the log-variance loss Var(log w) on detached
trajectories needs no backpropagation through the SDE solver; the reverse KL (source 004) differentiates through
the Euler-Maruyama rollout.  Adam with gradient-norm clipping and an optional cosine learning-rate decay.

``time_limit`` caps training on the wall clock or on the process CPU clock (``clock="cpu"``: on a shared machine
the run then trains as long as it would on idle cores).

Notation: ``loss`` in {"kl", "lv"}; ``batch`` paths per iteration; the progress bar shows the running
(exponentially averaged) log Z-hat and ESS of the training batches.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .controlled import LOSSES, DiffusionSampler
from .estimators import ess, log_Z_is


@dataclass
class TrainHistory:
    """Per-iteration loss, log Z-hat and ESS of the training batch, and wall time (seconds)."""

    loss: list[float] = field(default_factory=list)
    log_Z_hat: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    cpu_time: float = 0.0
    iterations: int = 0

    def as_dict(self) -> dict:
        return {"loss": self.loss, "log_Z_hat": self.log_Z_hat, "ess": self.ess, "wall_time": self.wall_time,
                "cpu_time": self.cpu_time, "iterations": self.iterations}


def train(sampler: DiffusionSampler, target, *, loss: str = "lv", iterations: int = 1000, batch: int = 512,
          lr: float = 1e-3, lr_final: float | None = None, grad_clip: float = 10.0,
          generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32, progress: bool = True,
          time_limit: float | None = None, clock: str = "wall") -> TrainHistory:
    """Train ``sampler.net`` in place; returns a ``TrainHistory``.

    Args:
        loss: "kl" (reverse KL, backprop through time) or "lv" (log-variance, detached paths).
        lr_final: if given, cosine decay from ``lr`` to ``lr_final`` over ``iterations``.
        time_limit: stop after this many seconds of training, if given, measured on ``clock``: "wall" (wall clock)
            or "cpu" (CPU time of this process: on a shared machine, the time the run would take on idle cores).
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
    if iterations < 0 or batch < 2:
        raise ValueError(f"need iterations >= 0 and batch >= 2, got {iterations}, {batch}")
    loss_fn = LOSSES[loss]
    params = [p for p in sampler.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = None
    if lr_final is not None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iterations, 1), eta_min=lr_final)
    hist, t0, c0 = TrainHistory(), time.perf_counter(), time.process_time()
    elapsed = (lambda: time.perf_counter() - t0) if clock == "wall" else (lambda: time.process_time() - c0)
    run_lz, run_ess = None, None
    bar = tqdm(range(iterations), disable=not progress, desc=f"{sampler.name}/{loss}", leave=False)
    for _ in bar:
        values, path = loss_fn(sampler, target, batch, generator, dtype)
        finite = torch.isfinite(values)
        obj = values[finite].mean() if finite.any() else values.sum() * 0.0
        opt.zero_grad(set_to_none=True)
        obj.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
            opt.step()
        if sched is not None:
            sched.step()
        lz, e = log_Z_is(path.log_w), ess(path.log_w)
        run_lz = lz if run_lz is None or not math.isfinite(run_lz) else 0.95 * run_lz + 0.05 * lz
        run_ess = e if run_ess is None else 0.95 * run_ess + 0.05 * e
        hist.loss.append(float(obj.detach()))
        hist.log_Z_hat.append(lz)
        hist.ess.append(e)
        hist.iterations += 1
        bar.set_postfix(loss=f"{hist.loss[-1]:.3g}", logZ=f"{run_lz:.3f}", ess=f"{run_ess:.3f}", refresh=False)
        if time_limit is not None and elapsed() > time_limit:
            break
    hist.wall_time, hist.cpu_time = time.perf_counter() - t0, time.process_time() - c0
    return hist
