r"""UniPC: multistep unified predictor (UniP-p) and corrector (UniC-p), data prediction.

Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", Alg. 2 (multistep UniP-p), Alg. 3 (UniC-p) in the data-prediction (x0) form, with B(h) = h ("bh1") or
B(h) = e^h - 1 ("bh2"), the warm-up, ``lower_order_final`` and the coefficient rules (rho = 1/2 for UniP-2 and
UniC-1, R rho = b otherwise) of their reference code (``uni_pc.py``, and diffusers' ``UniPCMultistepScheduler``).

One step t_i -> t_{i+1} costs one evaluation:

1. m_i = x0_hat(x_i, t_i) at the *predicted* x_i;
2. UniC (Alg. 3): re-do the previous step from x_{i-1} with m_i as an extra point, giving the corrected x_i^c
   (the evaluation of step 1 is reused, so the corrector is free; it is never applied after the last step);
3. UniP (Alg. 2): predict x_{i+1} from x_i^c with m_i and the p - 1 earlier data predictions.

Both updates are (data prediction, h = lambda_s - lambda_t > 0, hh = -h)

    x_s = (sigma_s/sigma_t) x - alpha_s (e^{hh} - 1) m_0 - alpha_s B(hh) sum_k rho_k D_k,   D_k = (m_k - m_0)/r_k,

with r_k = (lambda_k - lambda_t)/h of the earlier points (r = 1 and D = m_new - m_0 for UniC's new point) and
rho solving sum_k rho_k r_k^{i-1} = b_i = i! h phi_{i+1}(hh)/B(hh), i = 1..p (solved here with Lagrange
polynomials, which broadcast over per-sample grids).

Notation
--------
================  ==============================================================================================
``t -> s``        one step from time t to s < t; lam = log(alpha/sigma) (half the log-SNR), h = lam_s - lam_t
``m0, m_k``       data predictions x0_hat at t and at earlier grid times (history, oldest first)
``r_k``           (lam_k - lam_t)/h: relative positions of earlier points (negative; r = 1 is the new point)
``b_i, rho``      right-hand side and solution of R rho = b (R_{ik} = r_k^{i-1}); B(h) the variant's scale
``k``             order of the step: UniP-k predicts with k points, UniC-k corrects with k + 1 (order k + 1)
================  ==============================================================================================

A step into s = 0 (lam_s = inf) is of order 1, i.e. x_0 = x0_hat where sigma(0) = 0.  Trajectories record the
predicted states x_{i+1}; the corrected x_{i+1}^c is what the next step starts from.

Facts checked in ``tests/test_samplers_unipc.py``: UniP-1 = DDIM and UniP-2 with "bh2" = DPM-Solver++(2M); a solved
rho scales as 1/B(h), so "bh1" and "bh2" differ only in the steps with rho = 1/2 fixed (UniP-2, UniC-1); measured
orders (lower_order_final off) are p for UniP-p and p + 1 for UniPC-p, p = 1..3.  ``lower_order_final`` (on by
default, as in the reference code, for every number of steps) ends with an uncorrected UniP-1 step, which makes the
global order 2 asymptotically but is more stable at 5-10 steps.  Registered: ``unipc`` (UniPC-3, "bh1": best of
orders 2-3 x {bh1, bh2} at NFE 5-20 in ``benchmarks/samplers.py``'s dev sweep) and ``unipc_bh2`` (UniPC-2, "bh2":
diffusers' default).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..core.denoisers import DiffusionModel
from .base import _SCALAR_DTYPES, Callback, GridCoefs, _scalar, combine, data_prediction, data_prediction_at, register
from .loop import prepare, run_loop
from .ode import reaches_zero

VARIANTS = ("bh1", "bh2")
_F64 = torch.float64


class UniPCState(NamedTuple):
    """Explicit multistep history: ``history`` holds (x0_hat, lam) of earlier grid times, oldest first (at most 3);
    ``last`` is (x at the start of the previous step, (alpha, sigma, lam) there, that step's order, (alpha, sigma,
    lam) at its end) for UniC, or None."""

    history: tuple = ()
    last: tuple | None = None


def _coefs64(model: DiffusionModel, t: torch.Tensor) -> tuple:
    """(alpha, sigma, lam) at t in float64: python floats for a scalar time (scalar arithmetic on floats is ~50x
    cheaper than on 0-d tensors, which is most of a step's overhead), ``[B]`` tensors for per-sample times."""
    a, sg, lam = model.process.coefs(t.to(_F64))
    return (a.item(), sg.item(), lam.item()) if t.ndim == 0 else (a, sg, lam)


def _expm1(v):
    return math.expm1(v) if isinstance(v, float) else torch.expm1(v)


def _lagrange_solve(nodes: list, rhs: list) -> list:
    """rho with sum_k rho_k nodes_k^{i-1} = rhs_i (i = 1..K): rho_k = sum_i c_{k,i} rhs_i, where c_{k,.} are the
    coefficients of the Lagrange polynomial L_k (L_k(nodes_j) = delta_kj).  Entries: floats or tensors."""
    rhos = []
    for k, r_k in enumerate(nodes):
        coef, den = [1.0], 1.0  # polynomial coefficients, lowest degree first
        for j, r_j in enumerate(nodes):
            if j != k:
                coef = [(coef[i - 1] if i > 0 else 0.0) - (r_j * coef[i] if i < len(coef) else 0.0)
                        for i in range(len(coef) + 1)]
                den = den * (r_k - r_j)
        rhos.append(sum(c * b for c, b in zip(coef, rhs, strict=True)) / den)
    return rhos


def unipc_b(h, k: int, variant: str = "bh1") -> tuple[list, object]:
    """Right-hand sides b_i = i! h phi_{i+1}(hh) / B(hh), i = 1..k, hh = -h (data prediction), and B(hh):
    B = hh ("bh1") or e^{hh} - 1 ("bh2").  phi by the reference code's recursion h phi_{i+1} = h phi_i / hh - 1/i!.
    h: float or tensor (float64)."""
    hh = -h
    B = hh if variant == "bh1" else _expm1(hh)
    h_phi, fact, b = _expm1(hh) / hh - 1.0, 1.0, []
    for i in range(1, k + 1):
        b.append(h_phi * fact / B)
        fact *= i + 1
        h_phi = h_phi / hh - 1.0 / fact
    return b, B


def uni_coefs(c_t: tuple, c_s: tuple, lams: tuple, k: int, variant: str = "bh1", corrector: bool = False) -> tuple:
    """Coefficients of UniP-k (Alg. 2) or, with ``corrector``, UniC-k (Alg. 3) from t to s:
    x_s = c_x x + c_0 m0 + sum_j nw_j m_j over m_j = the earlier data predictions (most recent first; then the new
    point for UniC).  ``lams``: lam of the history, oldest first, the last one at t (the one of m0).  Floats or
    ``[B]`` tensors.  Returns (c_x, c_0, [nw_j])."""
    (a_s, sg_s, lam_s), sg_t, lam_t = c_s, c_t[1], lams[-1]
    h = lam_s - lam_t
    rks = [(lam_k - lam_t) / h for lam_k in lams[-k:-1][::-1]]  # earlier points, most recent first
    n_terms = len(rks) + corrector
    b, B = unipc_b(h, n_terms if n_terms > 1 else 0, variant) if n_terms else ([], 0.0)
    if not corrector:  # UniP: R[:-1, :-1] rho = b[:-1]; the reference code fixes rho = 1/2 for k = 2
        rhos = [0.5] if k == 2 else _lagrange_solve(rks, b)
    else:  # UniC: nodes r_1.. and r = 1 for the new point; rho = 1/2 for k = 1
        rks = rks + [1.0]
        rhos = [0.5] if k == 1 else _lagrange_solve(rks, b)
    w = [a_s * B * rho / r for rho, r in zip(rhos, rks, strict=True)]  # x_s -= sum_k w_k (m_k - m0)
    return sg_s / sg_t, sum(w, -a_s * _expm1(-h)), [-w_k for w_k in w]


def _apply(x: torch.Tensor, coefs: tuple, m0: torch.Tensor, points) -> torch.Tensor:
    """x_s = c_x x + c_0 m0 + sum_j nw_j m_j (``combine``; float coefficients: one product and in-place adds)."""
    c_x, c_0, nw = coefs
    if isinstance(c_x, float) and isinstance(c_0, float) and c_x != 0.0 and x.dtype in _SCALAR_DTYPES:
        out = (x * _scalar(c_x, x.dtype)).add_(m0, alpha=c_0)  # what ``combine`` does, without building its list
        for nw_k, m_k in zip(nw, points, strict=True):
            out.add_(m_k, alpha=nw_k)
        return out
    return combine(x, [(c_x, x), (c_0, m0)] + [(nw_k, m_k) for nw_k, m_k in zip(nw, points, strict=True)])


def uni_update(x: torch.Tensor, c_t: tuple, c_s: tuple, history: tuple, k: int, variant: str = "bh1",
               m_new: torch.Tensor | None = None) -> torch.Tensor:
    """UniP-k (``m_new`` None; Alg. 2) or UniC-k (``m_new`` = x0_hat at s; Alg. 3) from x at t to s.

    c_t, c_s: (alpha, sigma, lam) at t and s from ``_coefs64``; ``history``: ((x0_hat, lam), ...) oldest first,
    whose last entry is m0 at t; uses its last k entries.  x ``[B, ...]``.  No evaluation.  Returns x_s."""
    coefs = uni_coefs(c_t, c_s, tuple(lam for _, lam in history), k, variant, m_new is not None)
    points = [m for m, _ in history[-k:-1][::-1]] + ([] if m_new is None else [m_new])
    return _apply(x, coefs, history[-1][0], points)


def unipc_step(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, state: UniPCState,
               order: int = 3, variant: str = "bh1", use_corrector: bool = True, c_t: tuple | None = None,
               c_s: tuple | None = None, s_zero: bool | None = None):
    """One UniPC step t -> s: evaluate x0_hat(x, t), correct x with UniC of the previous step's order (when
    ``state.last`` holds that step and ``use_corrector``), predict with UniP of ``order`` (capped by the history;
    1 into s = 0).  ``c_t``, ``c_s``, ``s_zero``: (alpha, sigma, lam) at t and s and whether s = 0, when
    precomputed (the sampler passes its grid's: the values ``_coefs64`` gives).  One evaluation.
    Returns (x_s, x0_hat, new_state)."""
    if state.last is not None:
        c_t = state.last[3]
    elif c_t is None:
        c_t = _coefs64(model, t)
    x0 = data_prediction_at(model, x, t, c_t[0], c_t[1])
    c_s = _coefs64(model, s) if c_s is None else c_s
    if use_corrector and state.last is not None:
        x_prev, c_prev, k_prev = state.last[:3]
        x = uni_update(x_prev, c_prev, c_t, state.history, k_prev, variant, m_new=x0)
    history = (tuple(state.history) + ((x0, c_t[2]),))[-3:]
    k = 1 if (_is_zero(s) if s_zero is None else s_zero) else min(order, len(history))
    return uni_update(x, c_t, c_s, history, k, variant), x0, UniPCState(history, (x, c_t, k, c_s))


def _is_zero(s: torch.Tensor) -> bool:
    """``reaches_zero`` without a tensor reduction for a scalar time."""
    return s.item() == 0 if s.ndim == 0 else reaches_zero(s)


def _step_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """Warm-up (order <= i + 1) and lower_order_final (order <= n - i, on every run) of the reference code."""
    return min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)


@register("unipc", order=4, evals_per_step=1, stochastic=False,
          options=("order", "variant", "lower_order_final", "use_corrector"),
          reference="Zhao et al. 2023 (UniPC), Algs. 2-3; default UniPC-3 with B(h) = h",
          default_grid="uniform_log_snr",
          order_of=lambda order=3, use_corrector=True, lower_order_final=True, **_:
          min(order + bool(use_corrector), 2) if lower_order_final else order + bool(use_corrector))
def sample_unipc(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                 callback: Callback | None = None, return_trajectory: bool = False, progress: bool = False,
                 order: int = 3, variant: str = "bh1", lower_order_final: bool = True, use_corrector: bool = True):
    """Multistep UniPC (UniP-``order`` + UniC, data prediction) over ``ts`` (``[n+1]`` or ``[n+1, B]``); x_T
    ``[B, ...]``.  ``variant``: "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1).  NFE = n (the corrector reuses the
    next step's evaluation).  Returns x at ts[-1] ``[B, ...]`` or a ``Trajectory``."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"UniPC variant must be one of {VARIANTS}, got {variant!r}")
    m, ts = prepare(model, x_T, ts)
    g = GridCoefs.of(m.process, ts, x_T)
    pred, corr = g.memo(("unipc", order, variant, lower_order_final, use_corrector),
                        lambda: _grid_unipc(g, order, variant, lower_order_final, use_corrector))

    x0_of = data_prediction(m, g)
    if g.fast:
        step = _fast_step(g, pred, corr, x0_of, (order, variant, lower_order_final, use_corrector))
        return run_loop(m, x_T, ts, step, state=((), None), times=g.t, callback=callback,
                        return_trajectory=return_trajectory, progress=progress)

    def step(i, x, state):  # state: (data predictions of the last <= 3 grid times, oldest first; x_{i-1})
        x0 = x0_of(x, i)
        hist, x_prev = state
        if corr[i] is not None:  # UniC of the previous step with x0 as its new point (Alg. 3)
            k_prev, coefs = corr[i]
            x = _apply(x_prev, coefs, hist[-1], hist[-k_prev:-1][::-1] + (x0,))
        hist = (hist + (x0,))[-3:]
        k, coefs = pred[i]  # UniP (Alg. 2)
        return _apply(x, coefs, x0, hist[-k:-1][::-1]), x0, None, None, (hist, x), None

    return run_loop(m, x_T, ts, step, state=((), None), times=g.t, callback=callback,
                    return_trajectory=return_trajectory, progress=progress)


def _fast_step(g: GridCoefs, pred: list, corr: list, x0_of, key: tuple):
    """``sample_unipc``'s step on a 1-D grid: the same products and in-place adds as ``_apply`` (bit for bit), with
    c_x as cached 0-d tensors and the points taken from the history by position (no per-step lists)."""
    cx_p = g.scalars(("unipc_p",) + key, lambda: [c[1][0] for c in pred])
    cx_c = g.scalars(("unipc_c",) + key, lambda: [1.0 if c is None else c[1][0] for c in corr])
    # per step: (c_0, ((history position, coefficient), ...)) of UniP, and of UniC (its last coefficient on x0)
    pf, cf = g.memo(("unipc_fast",) + key, lambda: (
        [(c[1][1], tuple((-1 - j, w) for j, w in enumerate(c[1][2]))) for c in pred],
        [None if c is None else (c[1][1], tuple((-2 - j, w) for j, w in enumerate(c[1][2][:-1])), c[1][2][-1])
         for c in corr]))

    def step(i, x, state):  # state: (data predictions of the last <= 3 grid times, oldest first; x_{i-1})
        x0 = x0_of(x, i)
        hist, x_prev = state
        c = cf[i]
        if c is not None:  # UniC: x_prev, hist[-1], hist[-2], ..., then x0 (Alg. 3)
            x = (x_prev * cx_c[i]).add_(hist[-1], alpha=c[0])
            for j, w in c[1]:
                x.add_(hist[j], alpha=w)
            x.add_(x0, alpha=c[2])
        c0, nw = pf[i]  # UniP: x, x0, then hist[-1], hist[-2] (Alg. 2)
        x_s = (x * cx_p[i]).add_(x0, alpha=c0)
        for j, w in nw:
            x_s.add_(hist[j], alpha=w)
        return x_s, x0, None, None, (hist[-2:] + (x0,), x), None

    return step


def _grid_unipc(g: GridCoefs, order: int, variant: str, lower_order_final: bool, use_corrector: bool) -> tuple:
    """Per step i: (k, ``uni_coefs``) of the predictor and, from step 1 on with ``use_corrector``, of the
    corrector of step i - 1 (else None): the order warm-up, lower_order_final and the step into 0 as in
    ``unipc_step``."""
    n = len(g.t) - 1
    ks = [1 if g.zero[i + 1] else min(_step_order(i, n, order, lower_order_final), min(i + 1, 3)) for i in range(n)]
    pred = [(ks[i], uni_coefs(g.c(i), g.c(i + 1), tuple(g.lam[max(i - 2, 0):i + 1]), ks[i], variant))
            for i in range(n)]
    corr = [None] + [(ks[i - 1], uni_coefs(g.c(i - 1), g.c(i), tuple(g.lam[max(i - 3, 0):i]), ks[i - 1], variant,
                                           True)) if use_corrector else None for i in range(1, n)]
    return pred, corr


@register("unipc_bh2", order=3, evals_per_step=1, stochastic=False,
          options=("order", "lower_order_final", "use_corrector"),
          reference="Zhao et al. 2023 (UniPC), Algs. 2-3, UniPC-2 with B(h) = e^h - 1", default_grid="uniform_log_snr",
          order_of=lambda order=2, use_corrector=True, lower_order_final=True, **_:
          min(order + bool(use_corrector), 2) if lower_order_final else order + bool(use_corrector))
def sample_unipc_bh2(model, x_T, ts, *, generator=None, callback=None, return_trajectory=False, progress=False,
                     order=2, lower_order_final=True, use_corrector=True):
    """UniPC-2, B(h) = e^h - 1 ("bh2", diffusers' default); see ``sample_unipc``."""
    return sample_unipc(model, x_T, ts, generator=generator, callback=callback, progress=progress,
                        return_trajectory=return_trajectory, order=order, variant="bh2",
                        lower_order_final=lower_order_final, use_corrector=use_corrector)

