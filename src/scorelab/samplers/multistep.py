r"""DDIM, singlestep DPM-Solver-1/2/3, multistep DPM-Solver++ 2M / 3M and DPM-Solver++ 2M-SDE.

All steps are written in the general (alpha, sigma) form with lambda = log(alpha/sigma) (half the log-SNR of
``processes``), so they run on every forward process.  A step into s = 0 (sigma_s = 0, lambda_s = inf) is always a
first-order step, which there returns the data prediction x0_hat exactly.

Notation
--------
================  ==============================================================================================
``t -> s``        one step from time t to s < t;  h = lambda_s - lambda_t > 0
``a, sg``         alpha, sigma at the subscripted time
``eps, x0``       noise / data predictions of the model (DPM-Solver uses eps, DPM-Solver++ uses x0)
``r1, r2``        intermediate lambdas lambda_t + r h (1/2 for order 2; 1/3, 2/3 for order 3)
``history``       multistep memory of ``dpm_solver_pp_step``: tuple of (x0_hat, lambda) of previous steps, oldest
                  first (the sampler's step carries ``x0s``: the data predictions alone, newest first)
================  ==============================================================================================

References: DDIM, Song, Meng & Ermon 2021, eq. 12 (sigma_eta = eta sigma_s sqrt(1 - e^{-2h}) in (alpha, sigma)
form); DPM-Solver, Lu et al. 2022, eq. 3.7 and Algs. 1-2; DPM-Solver++, Lu et al. 2022b, Alg. 2 (2M), the 3M
update and the SDE-DPM-Solver++(2M) midpoint update of their reference code (``dpm_solver_pytorch.py`` and
diffusers' ``DPMSolverMultistepScheduler``), with ``lower_order_final`` as there (steps < 10).
"""
from __future__ import annotations

import torch

from ..core.denoisers import DiffusionModel
from ..core.processes import Discrete
from .base import (
    Callback,
    GridCoefs,
    as_coef_tensor,
    combine,
    data_prediction,
    data_prediction_at,
    fexp,
    fexpm1,
    fsqrt,
    gaussian_step,
    on_chain_states,
    point_coefs,
    register,
)
from .loop import prepare, run_loop
from .ode import reaches_zero

LOWER_ORDER_FINAL_BELOW = 10  # reference code: `if lower_order_final and steps < 10`


# -- DDIM ---------------------------------------------------------------------------------------------------------
def ddim_coefs(c_t: tuple, c_s: tuple, eta: float) -> tuple:
    """eq. 12 and 16 in (alpha, sigma) form from c_t, c_s = (alpha, sigma, lambda/2): std = eta sigma_s
    sqrt(1 - e^{-2h}) and the coefficients of mean = alpha_s x0_hat + sqrt(sigma_s^2 - std^2) eps_hat expanded onto
    (x, eps_hat), then those of x0_hat = (x - sigma_t eps_hat)/alpha_t.  Floats or ``[B]`` tensors."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta}")
    (a_t, sg_t, lam_t), (a_s, sg_s, lam_s) = c_t, c_s
    std = eta * sg_s * fsqrt(-fexpm1(-2 * (lam_s - lam_t)))
    return a_s / a_t, fsqrt(sg_s**2 - std**2) - a_s * sg_t / a_t, std, 1 / a_t, -sg_t / a_t


def ddim_core(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, k: tuple):
    """One evaluation: (mean, std, x0_hat as a zero-argument function) of the step with ``ddim_coefs`` k."""
    eps = model.eps(x, t)
    return combine(x, [(k[0], x), (k[1], eps)]), k[2], lambda: combine(x, [(k[3], x), (k[4], eps)])


def ddim_transition(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                    eta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Song, Meng & Ermon 2021, eq. 12: x_s ~ N(mean, std^2 I) with
    mean = alpha_s x0_hat + sqrt(sigma_s^2 - std^2) eps_hat, std = eta sigma_s sqrt(1 - e^{-2h}) (eq. 16).
    x ``[B, ...]``; t, s scalars or ``[B]``.  Returns (mean ``[B, ...]``, std broadcastable to x); one evaluation."""
    p = model.process
    mean, std, _ = ddim_core(model, x, t, ddim_coefs(point_coefs(p, t), point_coefs(p, s), eta))
    return mean, as_coef_tensor(std, x)


def ddim_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, eta: float = 0.0,
              generator: torch.Generator | None = None):
    """One DDIM step.  Returns (x_s, x0_hat, mean, std); mean/std are None when the step is deterministic."""
    p = model.process
    mean, std, x0 = ddim_core(model, x, t, ddim_coefs(point_coefs(p, t), point_coefs(p, s), eta))
    x_s, mean, std = gaussian_step(mean, std, eta > 0, generator)
    return x_s, x0(), mean, None if std is None else as_coef_tensor(std, x)


@register("ddim", order=1, evals_per_step=1, stochastic=True, options=("eta",),
          reference="Song, Meng & Ermon 2021, eq. 12", default_grid="uniform_log_snr",
          weak_order=1, transition=ddim_transition, transition_options=("eta",))
def sample_ddim(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                eta: float = 0.0):
    """DDIM over ``ts`` (``[n+1]`` or ``[n+1, B]``); eta = 0 is deterministic (= DPM-Solver-1), eta = 1 is
    DDPM-like; eta > 0 records Gaussian transitions and log-probs in the trajectory.  NFE = n."""
    m, ts = prepare(model, x_T, ts)
    g = GridCoefs.of(m.process, ts, x_T)
    ks = g.memo(("ddim", eta), lambda: [ddim_coefs(g.c(i), g.c(i + 1), eta) for i in range(ts.shape[0] - 1)])

    def step(i, x, state):
        mean, std, x0 = ddim_core(m, x, g.t[i], ks[i])
        x_s, mean, std = gaussian_step(mean, std, eta > 0, generator)
        return x_s, x0, mean, std, state, None

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


# -- DPM-Solver (singlestep, noise prediction) ---------------------------------------------------------------------
#: intermediate lambdas lambda_t + r h of each order (Alg. 1: r1 = 1/2; Alg. 2: r1 = 1/3, r2 = 2/3)
MID_R = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def _mid_times(process, lam_t, lam_s, order: int):
    """Times whose lambda is lambda_t + r h for the ``order``'s r's (floats in, 0-d float64 tensors out, or
    float64 ``[B]`` in and out)."""
    h = lam_s - lam_t
    return [process.t_from_log_snr(2.0 * torch.as_tensor(lam_t + r * h, dtype=torch.float64)) for r in MID_R[order]]


def _first_terms(x, eps, c_t, c_u):
    """eq. 3.7 (k = 1) from t to u: x_u = (alpha_u/alpha_t) x - sigma_u (e^{h} - 1) eps, as ``combine`` terms."""
    return [(c_u[0] / c_t[0], x), (-c_u[1] * fexpm1(c_u[2] - c_t[2]), eps)]


def dpm_solver_core(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, c_t: tuple, c_s: tuple, s_zero: bool,
                    order: int, mids: list):
    """One singlestep DPM-Solver step with precomputed coefficients: c_t, c_s = (alpha, sigma, lambda/2);
    ``mids`` = [(time in x's dtype, its coefficients)] at lambda_t + r h (``MID_R``).  ``order`` evaluations (1 into
    s = 0).  Returns (x_s, x0_hat as a zero-argument function)."""
    eps = model.eps(x, t)

    def x0():
        return combine(x, [(1 / c_t[0], x), (-c_t[1] / c_t[0], eps)])

    if s_zero:
        return combine(x, [(c_s[0], x0()), (c_s[1], eps)]), x0
    if order == 1:
        return combine(x, _first_terms(x, eps, c_t, c_s)), x0
    (s1, c1), h = mids[0], c_s[2] - c_t[2]
    r1 = (c1[2] - c_t[2]) / h  # = MID_R[order][0] up to rounding, or the r of a time moved onto a chain state
    D1 = model.eps(combine(x, _first_terms(x, eps, c_t, c1)), s1) - eps
    if order == 2:  # Alg. 1, line 4
        return combine(x, _first_terms(x, eps, c_t, c_s) + [(-c_s[1] / (2 * r1) * fexpm1(h), D1)]), x0
    (s2, c2) = mids[1]  # Alg. 2
    r2 = (c2[2] - c_t[2]) / h
    u2 = combine(x, _first_terms(x, eps, c_t, c2) + [(-c2[1] * (r2 / r1) * (fexpm1(r2 * h) / (r2 * h) - 1), D1)])
    D2 = model.eps(u2, s2) - eps
    return combine(x, _first_terms(x, eps, c_t, c_s) + [(-c_s[1] / r2 * (fexpm1(h) / h - 1), D2)]), x0


def dpm_solver_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, order: int = 2):
    """One singlestep DPM-Solver step of order 1, 2 (Alg. 1, r1 = 1/2) or 3 (Alg. 2, r1 = 1/3, r2 = 2/3).
    ``order`` evaluations; a step into s = 0 is the first-order DDIM step (x0_hat where sigma(0) = 0).  Between two
    states of a ``Discrete`` chain the intermediate times move onto states too (``_snap_step``), as in the loop.
    Returns (x_s, x0_hat)."""
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
    p, zero = model.process, reaches_zero(s)
    c_t, c_s = point_coefs(p, t), point_coefs(p, s)
    u = [] if zero else _mid_times(p, c_t[2], c_s[2], order)
    if u and on_chain_states(p, torch.stack([torch.as_tensor(t), torch.as_tensor(s)]).to(torch.float64)):
        u = _snap_step(p, torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64), u)
    mids = [(v.to(device=x.device, dtype=x.dtype), point_coefs(p, v)) for v in u]
    x_s, x0 = dpm_solver_core(model, x, t, c_t, c_s, zero, order, mids)
    return x_s, x0()


def _grid_mids(g: GridCoefs, orders: list[int], x: torch.Tensor) -> list[list]:
    """Intermediate (time, coefficients) of every step, computed before the loop (1-D grid: one vectorised
    ``t_from_log_snr`` and the coefficient memo; per-sample grid: per step)."""
    p, n = g.process, len(orders)
    need = [[] if g.zero[i + 1] or orders[i] == 1 else MID_R[orders[i]] for i in range(n)]
    snap = on_chain_states(p, g.ts64)
    if g.per_sample:
        def times(i):
            us = _mid_times(p, g.lam[i].cpu(), g.lam[i + 1].cpu(), orders[i])
            return _snap_step(p, g.ts64[i], g.ts64[i + 1], us) if snap else us

        return [[(u.to(device=x.device, dtype=x.dtype), p.coefs(u.to(x.device))) for u in times(i)] if need[i] else []
                for i in range(n)]
    lams = [g.lam[i] + r * (g.lam[i + 1] - g.lam[i]) for i in range(n) for r in need[i]]
    if not lams:
        return [[] for _ in range(n)]
    u = p.t_from_log_snr(2.0 * torch.tensor(lams, dtype=torch.float64)).to(torch.float64)
    if snap:
        u, j = u.clone(), 0
        for i in range(n):
            if need[i]:
                u[j:j + len(need[i])] = torch.stack(_snap_step(p, g.ts64[i], g.ts64[i + 1],
                                                               list(u[j:j + len(need[i])])))
                j += len(need[i])
    cs, ux = iter(p.coefs_at(u)), iter(u.to(device=x.device, dtype=x.dtype).unbind(0))
    return [[(next(ux), next(cs)) for _ in need[i]] for i in range(n)]


def _snap_step(p: Discrete, t: torch.Tensor, s: torch.Tensor, us: list) -> list:
    """One step's intermediate times ``us`` (0-d or ``[B]`` float64, latest first) moved onto the chain's states
    strictly inside (s, t), in order; where the step has fewer inner states than points they keep their exact
    times.  ``dpm_solver_core`` takes the r's of the times it is given, so the step stays exact for its actual
    points (Lu et al. 2022, Alg. 1-2 hold for any 0 < r1 < r2 < 1); a network trained on integer steps is then
    evaluated only where it was trained."""
    hi, lo = torch.round(t * p.N) - 1, torch.round(s * p.N) + 1
    ks = [torch.minimum(torch.maximum(torch.round(u * p.N), lo), hi) for u in us]
    for a in range(1, len(ks)):
        ks[a] = torch.minimum(ks[a], ks[a - 1] - 1)
    ok = (hi - lo + 1 >= len(us)) & (ks[-1] >= lo)
    return [torch.where(ok, k / p.N, u) for k, u in zip(ks, us, strict=True)]


def sample_dpm_solver(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                      callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                      order: int = 2, orders: list[int] | None = None):
    """Singlestep DPM-Solver (Lu et al. 2022) of fixed ``order`` or with per-step ``orders`` (one per step, e.g.
    from ``schedules.grid_for_nfe(..., return_opts=True)``, sec. 3.4).  NFE = sum of the orders (a step into
    t = 0 costs 1)."""
    m, ts = prepare(model, x_T, ts)
    n = ts.shape[0] - 1
    orders = [order] * n if orders is None else [int(k) for k in orders]
    if len(orders) != n or any(k not in (1, 2, 3) for k in orders):
        raise ValueError(f"orders must list {n} values in (1, 2, 3) (one per step), got {orders}")
    g = GridCoefs.of(m.process, ts, x_T)
    mids = g.memo(("dpm_solver", tuple(orders)), lambda: _grid_mids(g, orders, x_T))

    def step(i, x, state):
        x_s, x0 = dpm_solver_core(m, x, g.t[i], g.c(i), g.c(i + 1), g.zero[i + 1], orders[i], mids[i])
        return x_s, x0, None, None, state, None

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


def _register_dpm_solver(k: int):
    ref = {1: "Lu et al. 2022, eq. 3.7 (k=1)", 2: "Lu et al. 2022, Alg. 1", 3: "Lu et al. 2022, Alg. 2"}[k]

    @register(f"dpm_solver_{k}", order=k, evals_per_step=k, stochastic=False, options=("orders",),
              reference=ref, default_grid="uniform_log_snr", skip_correction_at_zero=k > 1,
              mixed_orders=k if k > 1 else 0)
    def fn(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False, progress=False, orders=None):
        return sample_dpm_solver(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                                 return_trajectory=return_trajectory, order=k, orders=orders)

    fn.__name__ = fn.__qualname__ = f"sample_dpm_solver_{k}"
    fn.__doc__ = f"DPM-Solver-{k} (singlestep); see ``sample_dpm_solver``."
    return fn


sample_dpm_solver_1 = _register_dpm_solver(1)
sample_dpm_solver_2 = _register_dpm_solver(2)
sample_dpm_solver_3 = _register_dpm_solver(3)


# -- DPM-Solver++ (multistep, data prediction) -----------------------------------------------------------------------
def _pp_diff(lam_t, h, lams: tuple, order: int, A, B=None) -> tuple:
    """A D1 - B D2, the finite differences (D1, D2) of the data prediction in lambda scaled by h (reference code,
    2M / 3M), as coefficients (on x0, on the history's data predictions newest first); ``lams``: the history's
    lambda/2, oldest first."""
    if order == 1:
        return 0.0, ()
    r0 = (lam_t - lams[-1]) / h
    if order == 2:  # D1 = (x0 - x0_1)/r0
        return A / r0, (-A / r0,)
    r1 = (lams[-1] - lams[-2]) / h
    q = r0 / (r0 + r1)  # D1 = (1 + q) u - q v, D2 = (u - v)/(r0 + r1); u = (x0 - x0_1)/r0, v = (x0_1 - x0_2)/r1
    cu, cv = A * (1 + q) - B / (r0 + r1), B / (r0 + r1) - A * q
    return cu / r0, (cv / r1 - cu / r0, -cv / r1)


def pp_coefs(c_t: tuple, c_s: tuple, lams: tuple, order: int, sde: bool = False) -> tuple:
    """Coefficients of one DPM-Solver++ step: x_s (ODE) or its mean (SDE) = c_x x + c_0 x0_hat + sum_j c_j x0_j
    over the history's data predictions newest first, and std (None for the ODE).  ``order`` already capped.

    ODE (2M/3M): x_s = (sg_s/sg_t) x - alpha_s phi_1 x0 + (A D1 - B D2) terms, phi_1 = e^{-h} - 1;
    SDE midpoint: mean = (sg_s/sg_t) e^{-h} x + alpha_s (1 - e^{-2h}) (x0 + D1/2), std = sg_s sqrt(1 - e^{-2h})."""
    (sg_t, lam_t), (a_s, sg_s, lam_s) = c_t[1:], c_s
    h = lam_s - lam_t
    if sde:
        one_m = -fexpm1(-2 * h)
        c0, hist = _pp_diff(lam_t, h, lams, order, 0.5 * a_s * one_m)
        return (sg_s / sg_t * fexp(-h), a_s * one_m + c0) + hist, sg_s * fsqrt(one_m)
    phi_1 = fexpm1(-h)
    A, B = (-0.5 * a_s * phi_1, None) if order == 2 else (a_s * (phi_1 / h + 1), a_s * ((phi_1 / h + 1) / h - 0.5))
    c0, hist = _pp_diff(lam_t, h, lams, order, A, B)
    return (sg_s / sg_t, -a_s * phi_1 + c0) + hist, None


def dpm_solver_pp_core(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, k: tuple, x0s: tuple,
                       generator: torch.Generator | None = None, c_t: tuple | None = None):
    """One evaluation x0_hat = model.x0(x, t) (``data_prediction_at`` given c_t = (alpha, sigma, ...) at t) and the
    update with ``pp_coefs`` k; ``x0s``: the data predictions of earlier steps, newest first.  Returns (x_s, x0_hat,
    mean, std); mean/std None for the ODE."""
    (c, std), x0 = k, model.x0(x, t) if c_t is None else data_prediction_at(model, x, t, c_t[0], c_t[1])
    terms = [(c[0], x), (c[1], x0)]
    for j in range(len(c) - 2):
        terms.append((c[j + 2], x0s[j]))
    if std is None:
        return combine(x, terms), x0, None, None
    x_s, mean, std = gaussian_step(combine(x, terms), std, True, generator)
    return x_s, x0, mean, std


def dpm_solver_pp_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, history: tuple,
                       order: int = 2, sde: bool = False, generator: torch.Generator | None = None):
    """One multistep DPM-Solver++ step (ODE: Lu et al. 2022b, Alg. 2 and 3M; ``sde``: SDE-DPM-Solver++ midpoint,
    order <= 2).  ``history``: tuple of (x0_hat, lambda/2) of earlier steps; ``order`` is capped by its length + 1
    and is 1 into s = 0.  One evaluation.  Returns (x_s, x0_hat, mean, std, new_history); mean/std None for ODE."""
    p = model.process
    c_t, c_s = point_coefs(p, t), point_coefs(p, s)
    order = 1 if reaches_zero(s) else min(order, len(history) + 1)
    k = pp_coefs(c_t, c_s, tuple(lam for _, lam in history), order, sde)
    x_s, x0, mean, std = dpm_solver_pp_core(model, x, t, k, tuple(x0 for x0, _ in history[::-1]), generator, c_t)
    new_history = (tuple(history) + ((x0, c_t[2]),))[-2:]
    return x_s, x0, mean, None if std is None else as_coef_tensor(std, x), new_history


def _step_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """Warm-up (order <= i+1) and, for short runs, lower order on the last steps (reference code)."""
    if lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
        return min(order, i + 1, n - i)
    return min(order, i + 1)


def _pp_fast_step(m, g: GridCoefs, ks: list, key: tuple, generator: torch.Generator | None):
    """``dpm_solver_pp_core`` on a 1-D grid: x_s (ODE) or its mean (SDE) = c_x x + c_0 x0_hat + sum_j c_j x0_j as
    one product and in-place adds (what ``combine`` does), c_x a cached 0-d tensor, x0_hat from
    ``data_prediction``."""
    c_x = g.scalars(key, lambda: [k[0][0] for k in ks])
    rest, std = g.memo(("fast",) + key, lambda: ([k[0][1:] for k in ks], [k[1] for k in ks]))
    x0_of = data_prediction(m, g)

    def step(i, x, x0s):
        x0, c = x0_of(x, i), rest[i]
        x_s = (x * c_x[i]).add_(x0, alpha=c[0])
        if len(c) > 1:
            x_s.add_(x0s[0], alpha=c[1])
            if len(c) > 2:
                x_s.add_(x0s[1], alpha=c[2])
        if std[i] is None:
            return x_s, x0, None, None, (x0,) + x0s[:1], None
        x_s, mean, sd = gaussian_step(x_s, std[i], True, generator)
        return x_s, x0, mean, sd, (x0,) + x0s[:1], None

    return step


def sample_dpm_solver_pp(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                         callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                         order: int = 2, sde: bool = False, lower_order_final: bool = True):
    """Multistep DPM-Solver++ of ``order`` 1-3 (``sde=True``: SDE-DPM-Solver++, order 1-2).  NFE = n."""
    if order not in (1, 2, 3) or (sde and order == 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3 (1 or 2 with sde=True), got {order}")
    m, ts = prepare(model, x_T, ts)
    n, g = ts.shape[0] - 1, GridCoefs.of(m.process, ts, x_T)
    key = ("dpm_solver_pp", order, sde, lower_order_final)
    ks = g.memo(key, lambda: [
        pp_coefs(g.c(i), g.c(i + 1), tuple(g.lam[max(i - 2, 0):i]),
                 1 if g.zero[i + 1] else _step_order(i, n, order, lower_order_final), sde) for i in range(n)])

    def step(i, x, x0s):  # history: the data predictions of the last <= 2 steps, newest first
        x_s, x0, mean, std = dpm_solver_pp_core(m, x, g.t[i], ks[i], x0s, generator)
        return x_s, x0, mean, std, (x0,) + x0s[:1], None

    if g.fast:  # the same update with cached coefficients and the model currency's x0 folded in
        step = _pp_fast_step(m, g, ks, key, generator)

    return run_loop(m, x_T, ts, step, state=(), times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


@register("dpm_solver_pp_2m", order=2, evals_per_step=1, stochastic=False, options=("lower_order_final",),
          reference="Lu et al. 2022b (DPM-Solver++), Alg. 2", default_grid="uniform_log_snr")
def sample_dpm_solver_pp_2m(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False,
                            progress=False, lower_order_final=True):
    """DPM-Solver++(2M); see ``sample_dpm_solver_pp``."""
    return sample_dpm_solver_pp(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                                return_trajectory=return_trajectory, order=2, lower_order_final=lower_order_final)


@register("dpm_solver_pp_3m", order=3, evals_per_step=1, stochastic=False, options=("lower_order_final",),
          reference="Lu et al. 2022b (DPM-Solver++), 3M multistep update of the reference code",
          default_grid="uniform_log_snr")
def sample_dpm_solver_pp_3m(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False,
                            progress=False, lower_order_final=True):
    """DPM-Solver++(3M); see ``sample_dpm_solver_pp``."""
    return sample_dpm_solver_pp(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                                return_trajectory=return_trajectory, order=3, lower_order_final=lower_order_final)


@register("dpm_solver_pp_2m_sde", order=1, evals_per_step=1, stochastic=True, options=("lower_order_final",),
          reference="Lu et al. 2022b, SDE-DPM-Solver++(2M) (midpoint) of the reference code",
          default_grid="uniform_log_snr")
def sample_dpm_solver_pp_2m_sde(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False,
                                progress=False, lower_order_final=True):
    """SDE-DPM-Solver++(2M): Gaussian steps (recorded with log-probs); see ``sample_dpm_solver_pp``."""
    return sample_dpm_solver_pp(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                                return_trajectory=return_trajectory, order=2, sde=True,
                                lower_order_final=lower_order_final)
