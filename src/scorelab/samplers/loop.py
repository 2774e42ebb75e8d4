r"""The one sampler loop: every sampler is a step function that ``run_loop`` runs over its grid.

Step format (DESIGN.md, idea 3)::

    step(i, x, state) -> (x_next, x0_hat, mean, std, state, extra)

=============  =====================================================================================================
``i``          step index; the step looks its times and precomputed coefficients up with it (``GridCoefs``)
``x``          the state ``[B, ...]`` at the step's start; ``x_next`` the state at its end
``x0_hat``     the data prediction of the step (a tensor, or a zero-argument function called only for a callback)
``mean, std``  the step's Gaussian transition x_next ~ N(mean, std^2 I); both None for a deterministic step
``state``      explicit multistep history: what the step returned last time goes in (``None`` for one-step methods)
``extra``      None or a dict of per-step values for the callback (and ``Trajectory.extras`` for keys in ``keep``)
=============  =====================================================================================================

Compositions (predictor-corrector, restart's loops, several Langevin steps per level) are steps too.  NFE is always
measured: ``prepare`` wraps the model in a ``CountingModel`` and ``run_loop`` records the evaluations made between
its start and its end.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._utils import progress as tqdm
from ..core.denoisers import CountingModel, DiffusionModel
from .base import Callback, TrajectoryRecorder, check_grid, counted

#: step(i, x, state) -> (x_next, x0_hat, mean, std, state, extra)
StepFn = Callable[[int, torch.Tensor, object], tuple]


def prepare(model: DiffusionModel, x_T: torch.Tensor, ts) -> tuple[CountingModel, torch.Tensor]:
    """Validate x_T ``[B, ...]`` and the grid (``[n+1]``, or ``[n+1, B]`` matching x_T's batch) against the model's
    process; return ``(counted model, grid on x_T's device)``."""
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 1:
        raise ValueError("x_T must be a tensor of shape [B, ...]")
    ts = check_grid(ts, model.process)
    if ts.ndim == 2 and ts.shape[1] != x_T.shape[0]:
        raise ValueError(f"a per-sample grid must have shape [n+1, B] with B={x_T.shape[0]}, got {tuple(ts.shape)}")
    return counted(model), ts.to(x_T.device)


def run_loop(model: CountingModel, x_T: torch.Tensor, ts: torch.Tensor, step: StepFn, *, n: int | None = None,
             state=None, times: list | None = None, callback: Callback | None = None, return_trajectory: bool = False,
             progress: bool = False, report: list | None = None, keep: tuple[str, ...] = ()):
    """Run ``step`` for i = 0..n-1 (n = len(ts) - 1 by default) from x_T ``[B, ...]``; return the final x or a
    ``Trajectory`` (states, Gaussian transitions and log-probs, ``ts``, measured NFE, ``extras[k]`` for k in ``keep``).

    ``times``: the time each step ends at is ``times[i + 1]`` (default: ``ts`` in x's dtype); ``report[i]``: the step
    index the callback sees after step i, or None for no callback there (default: i).  The callback gets
    ``dict(i, t, x, x0_hat)`` updated with the step's ``extra``."""
    n = ts.shape[0] - 1 if n is None else n
    nfe0, x = model.nfe, x_T
    if callback is None and not return_trajectory and not progress:  # the hot path: nothing but the steps
        for i in range(n):
            x, _, _, _, state, _ = step(i, x, state)
        return x
    times = list(ts.to(x_T).unbind(0)) if times is None else times
    rec, kept = TrajectoryRecorder(x_T, ts, return_trajectory), {k: [] for k in keep}
    for i in tqdm(range(n), disable=not progress, leave=False):
        x, x0_hat, mean, std, state, extra = step(i, x, state)
        rec.add(x, mean, std)
        for k in keep:
            kept[k].append(extra[k])
        j = i if report is None else report[i]
        if callback is not None and j is not None:
            info = dict(i=j, t=times[i + 1], x=x, x0_hat=x0_hat() if callable(x0_hat) else x0_hat)
            callback(info if extra is None else {**info, **extra})
    out = rec.finish(x, model.nfe - nfe0)
    if return_trajectory:
        out.extras.update(kept)
    return out
