r"""Training loop for diffusion samplers (KL through the rollout, or the log-variance loss on detached paths).

Richter & Berner 2024 ("Improved sampling via learned diffusions"): the log-variance loss Var(log w) on detached
trajectories needs no backpropagation through the SDE solver; the reverse KL (source 004) differentiates through
the Euler-Maruyama rollout.  Adam with gradient-norm clipping and an optional cosine learning-rate decay.

``time_limit`` caps training on the wall clock or on the process CPU clock (``clock="cpu"``: on a shared machine
the run then trains as long as it would on idle cores).

``pretrain_mc_score`` (DIS): a warm start from rho alone, regressing the control onto self-normalized importance-
sampling estimates of the noised target's score (iDEM's MC score estimator, Akhound-Sadegh et al. 2024) along the
sampler's own paths; on-policy LV from the interpolation initialization can stall far from the optimum (DW(5,5,4)).

Notation: ``loss`` in {"kl", "lv"}; ``batch`` paths per iteration; the progress bar shows the running
(exponentially averaged) log Z-hat and ESS of the training batches.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .._utils import progress as tqdm
from .controlled import LOSSES, DiffusionSampler
from .dis import DIS
from .estimators import ess, log_Z_is


def _kl_adjoint(*args, **kwargs):
    from .adjoint import kl_adjoint_loss  # torchsde only when asked for
    return kl_adjoint_loss(*args, **kwargs)


TRAIN_LOSSES = {**LOSSES, "kl_adjoint": _kl_adjoint}  # "kl_adjoint": KL by the stochastic adjoint (adjoint.py)


def pretrain_mc_score(sampler: DiffusionSampler, target, *, rounds: int = 6, updates: int = 700, paths: int = 1024,
                      n_mc: int = 512, batch: int = 1024, lr: float = 3e-3, lr_decay: float = 0.6,
                      generator: torch.Generator | None = None) -> dict:
    """Warm start from rho alone: ``rounds`` times, simulate ``paths`` paths with the current control, estimate the
    optimal control at every visited (x_k, s_k) by Monte Carlo (``sampler.mc_optimal_control``, n_mc draws), and
    regress the network onto it for ``updates`` Adam steps on ``batch`` random (step, path) pairs, squared error
    weighted by the step's KL weight c2_k (for DIS, dB_k: the path KL is sum_k dB_k |v - v*|^2 / 2); lr x
    ``lr_decay`` per round.  Needs a sampler whose optimal control is a noised-target score (DIS).  Motivation
    (``benchmarks/densities.py`` on DW(5,5,4); docs/benchmarks.md): there on-policy LV training stalls at ESS ~0.02
    while the same network regressed onto the exact control reaches ESS 0.47, and LV started there stays there.  Returns
    {"rounds", "cpu_time", "wall_time"}."""
    if not isinstance(sampler, DIS):
        raise ValueError(f"MC-score pretraining needs a sampler whose optimal control is the noised target's score "
                         f"(DIS); {sampler.name!r} has none")
    if min(rounds, updates, paths, n_mc, batch) < 1:
        raise ValueError("rounds, updates, paths, n_mc and batch must be >= 1")
    t0, c0, K = time.perf_counter(), time.process_time(), sampler.K
    s, w = sampler.s[:-1].float(), sampler.c2.float()
    opt = torch.optim.Adam([p for p in sampler.net.parameters() if p.requires_grad], lr=lr)
    for _ in range(rounds):
        with torch.no_grad():
            path = sampler.simulate(target, paths, generator, keep_scores=True)
            xs, sc = path.xs[:-1], path.scores
            v_star = torch.stack([sampler.mc_optimal_control(target, xs[k], k, n_mc, generator) for k in range(K)])
            ok = torch.isfinite(v_star).all(-1)  # [K, paths]: drop points whose estimate failed
        for _ in range(updates):
            k = torch.randint(0, K, (batch,), generator=generator)
            b = torch.randint(0, paths, (batch,), generator=generator)
            m = ok[k, b]
            if not m.any():  # every drawn estimate failed: skip rather than step on a NaN loss
                continue
            err = sampler.net(xs[k, b][m], s[k][m], sc[k, b][m]) - v_star[k, b][m]
            loss = 0.5 * K * (w[k][m, None] * err.pow(2)).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for group in opt.param_groups:
            group["lr"] *= lr_decay
    return {"rounds": rounds, "cpu_time": time.process_time() - c0, "wall_time": time.perf_counter() - t0}


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
        """The history as a JSON-serialisable dict (lists of per-iteration floats, times, iteration count)."""
        return {"loss": self.loss, "log_Z_hat": self.log_Z_hat, "ess": self.ess, "wall_time": self.wall_time,
                "cpu_time": self.cpu_time, "iterations": self.iterations}


def train(sampler: DiffusionSampler, target, *, loss: str = "lv", iterations: int = 1000, batch: int = 512,
          lr: float = 1e-3, lr_final: float | None = None, grad_clip: float = 10.0,
          generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32, progress: bool = True,
          time_limit: float | None = None, clock: str = "wall", explore: float = 1.0,
          ema: float | None = None) -> TrainHistory:
    """Train ``sampler.net`` in place; returns a ``TrainHistory``.

    Args:
        loss: "kl" (reverse KL, backprop through time), "lv" (log-variance, detached paths) or "kl_adjoint" (reverse
            KL by torchsde's stochastic adjoint, PIS; adjoint.py).
        lr_final: if given, cosine decay from ``lr`` to ``lr_final`` over the budget: the fraction done is the larger
            of iterations done / ``iterations`` and elapsed / ``time_limit`` (so a time-capped run still anneals).
        time_limit: stop after this many seconds of training, if given, measured on ``clock``: "wall" (wall clock)
            or "cpu" (CPU time of this process: on a shared machine, the time the run would take on idle cores).
        explore: LV only: behaviour noise factor at the first iteration, decayed linearly to 1 over the budget
            (off-policy exploration, ``log_variance_loss``); the logged log Z-hat / ESS of such batches are not the
            sampler's.
        ema: if given, an exponential moving average of the weights with this decay is kept and copied into the
            sampler at the end (also when stopped by ``time_limit``).
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if loss not in TRAIN_LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(TRAIN_LOSSES)}")
    if iterations < 0 or batch < 2:
        raise ValueError(f"need iterations >= 0 and batch >= 2, got {iterations}, {batch}")
    if not explore > 0 or (explore != 1.0 and loss != "lv"):
        raise ValueError(f"explore must be > 0 and needs loss='lv' when != 1, got {explore} with loss {loss!r}")
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"ema decay must be in (0, 1), got {ema}")
    loss_fn = TRAIN_LOSSES[loss]
    params = [p for p in sampler.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    hist, t0, c0 = TrainHistory(), time.perf_counter(), time.process_time()
    elapsed = (lambda: time.perf_counter() - t0) if clock == "wall" else (lambda: time.process_time() - c0)

    def progress_frac(it: int) -> float:  # fraction of the budget used: iterations or time, whichever is further
        f = it / max(iterations, 1)
        return min(1.0, max(f, elapsed() / time_limit) if time_limit else f)
    run_lz, run_ess = None, None
    bar = tqdm(range(iterations), disable=not progress, desc=f"{sampler.name}/{loss}", leave=False)
    avg = torch.optim.swa_utils.AveragedModel(
        sampler, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema)) if ema is not None else None
    for it in bar:
        frac = progress_frac(it)
        if lr_final is not None:
            for group in opt.param_groups:
                group["lr"] = lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * frac))
        lam = 1.0 + (explore - 1.0) * (1.0 - frac)
        values, path = loss_fn(sampler, target, batch, generator, dtype, **({"explore": lam} if lam != 1.0 else {}))
        finite = torch.isfinite(values)
        obj = values[finite].mean() if finite.any() else values.sum() * 0.0
        opt.zero_grad(set_to_none=True)
        obj.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
            opt.step()
            if avg is not None:
                avg.update_parameters(sampler)
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
    if avg is not None and hist.iterations:
        sampler.load_state_dict(avg.module.state_dict())
    hist.wall_time, hist.cpu_time = time.perf_counter() - t0, time.process_time() - c0
    return hist
