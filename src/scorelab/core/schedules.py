r"""Inference time grids: n steps (n+1 points) from t_max (noise) down to t_min, optionally followed by t = 0.

Every grid is defined on a quantity of the forward process and mapped back to process time, so one grid
definition serves VP, SubVP, VP-cosine, VE, EDM and discrete chains alike.

Notation
--------
==================  ===========================================================================================
``lam``             log-SNR lambda(t) = log(alpha^2 / sigma^2); mapped back with ``process.t_from_log_snr``
``sigma_hat``       sigma / alpha = exp(-lam / 2): the noise level of the scaled variable x / alpha (Karras)
``rho``             Karras et al. 2022, eq. 5: sigma_i = (s_max^(1/rho) + i/n (s_min^(1/rho) - s_max^(1/rho)))^rho
``alpha_bar``       alpha^2 (DDPM notation); ``li`` matches cumulative products of ``processes.li_betas``
==================  ===========================================================================================

Grids: ``uniform_t`` (Song et al. 2021), ``uniform_log_snr`` (Lu et al. 2022, "logSNR" steps), ``karras`` (Karras
et al. 2022, eq. 5), ``quadratic`` (Song, Meng & Ermon 2021, "quad": uniform in sqrt t), ``li`` (the two-phase
theory schedule of Li et al. 2024, source 003), and diffusers' three ways of spacing n inference steps over a DDPM
chain of N = 1000 training steps (``timestep_spacing``; von Platen et al., diffusers 0.42, the table of Lin et al.
2024, "Common diffusion noise schedules and sample steps are flawed", Table 2): ``ddpm_linspace`` (k_j = round((N -
1)(1 - j/n))), ``ddpm_trailing`` (k_j = round(N (1 - j/n)) - 1) and ``ddpm_leading`` (k_j = (n - 1 - j) floor(N/n)),
j = 0..n-1 for n inference steps, at the times ``ddpm_index_time`` of the indices k.  ``dpm_solver_orders`` gives
the mixed orders that spend a budget exactly (Lu et al. 2022, sec. 3.4); turning a budget of network evaluations
into a grid for a named sampler is ``samplers.budget.grid_for_nfe`` (the NFE arithmetic belongs to each sampler's
``SamplerInfo``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .processes import Discrete, ForwardProcess, li_betas

_F64 = torch.float64


def _t64(t: float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=_F64)


def _endpoints(process: ForwardProcess, n: int, t_max: float | None, t_min: float | None) -> tuple[float, float]:
    if int(n) != n or n < 1:
        raise ValueError(f"number of steps n must be an integer >= 1, got {n}")
    t_max = float(process.t_max if t_max is None else t_max)
    t_min = float(process.t_min if t_min is None else t_min)
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if t_max > process.t_max * (1 + 1e-9):
        raise ValueError(f"t_max={t_max} exceeds the process interval end {process.t_max}")
    return t_max, t_min


def _finish(ts: torch.Tensor, t_max: float, t_min: float, final_zero: bool) -> torch.Tensor:
    """Pin the endpoints exactly (round trips through lambda lose a few ulps), check, append 0 if asked."""
    ts = ts.to(_F64).clone()
    ts[0], ts[-1] = t_max, t_min
    if not torch.all(ts[1:] < ts[:-1]):
        raise ValueError("grid is not strictly decreasing (too many steps for float64 resolution?)")
    if final_zero:
        ts = torch.cat([ts, ts.new_zeros(1)])
    return ts


def sigma_hat(process: ForwardProcess, t: float | torch.Tensor) -> torch.Tensor:
    """sigma(t)/alpha(t) = exp(-lambda(t)/2), the noise level of the scaled variable x/alpha (float64)."""
    return torch.exp(-0.5 * process.log_snr(_t64(t)))


def t_from_sigma_hat(process: ForwardProcess, s: torch.Tensor) -> torch.Tensor:
    """Inverse of ``sigma_hat``: the time whose sigma/alpha equals ``s`` (lambda = -2 log s)."""
    return process.t_from_log_snr(-2.0 * torch.log(_t64(s)))


def uniform_t(process: ForwardProcess, n: int, *, t_max: float | None = None, t_min: float | None = None,
              final_zero: bool = False) -> torch.Tensor:
    """t_i = t_max + i/n (t_min - t_max), i = 0..n -> ``[n+1]`` float64 (``[n+2]`` with ``final_zero``)."""
    t_max, t_min = _endpoints(process, n, t_max, t_min)
    return _finish(torch.linspace(t_max, t_min, n + 1, dtype=_F64), t_max, t_min, final_zero)


def uniform_log_snr(process: ForwardProcess, n: int, *, t_max: float | None = None, t_min: float | None = None,
                    final_zero: bool = False) -> torch.Tensor:
    """lambda(t_i) uniform between lambda(t_max) and lambda(t_min) (Lu et al. 2022, "logSNR" steps)."""
    t_max, t_min = _endpoints(process, n, t_max, t_min)
    lam = torch.linspace(0.0, 1.0, n + 1, dtype=_F64)
    lam_hi, lam_lo = process.log_snr(_t64(t_max)), process.log_snr(_t64(t_min))
    return _finish(process.t_from_log_snr(lam_hi + lam * (lam_lo - lam_hi)), t_max, t_min, final_zero)


def karras_between(process: ForwardProcess, t_hi: torch.Tensor, t_lo: torch.Tensor, n: int,
                   rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5 between times ``t_hi > t_lo`` (scalars or ``[B]``) -> ``[n+1]`` or ``[n+1, B]``,
    uniform in sigma_hat^(1/rho), endpoints exact.  Used by ``karras`` and by restart's inner grids."""
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    t_hi, t_lo = torch.broadcast_tensors(_t64(t_hi), _t64(t_lo))
    u = torch.linspace(0.0, 1.0, n + 1, dtype=_F64).reshape(-1, *([1] * t_hi.ndim))
    a, b = sigma_hat(process, t_hi) ** (1 / rho), sigma_hat(process, t_lo) ** (1 / rho)
    ts = t_from_sigma_hat(process, (a + u * (b - a)) ** rho).to(_F64)
    ts[0], ts[-1] = t_hi, t_lo
    return ts


def karras(process: ForwardProcess, n: int, *, t_max: float | None = None, t_min: float | None = None,
           final_zero: bool = False, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5 in sigma_hat = sigma/alpha, mapped back to t via ``t_from_log_snr``."""
    t_max, t_min = _endpoints(process, n, t_max, t_min)
    return _finish(karras_between(process, t_max, t_min, n, rho), t_max, t_min, final_zero)


def quadratic(process: ForwardProcess, n: int, *, t_max: float | None = None, t_min: float | None = None,
              final_zero: bool = False) -> torch.Tensor:
    """Uniform in sqrt(t) (Song, Meng & Ermon 2021, sec. D.2, "quad" time steps): dense near the data."""
    t_max, t_min = _endpoints(process, n, t_max, t_min)
    r = torch.linspace(math.sqrt(t_max), math.sqrt(t_min), n + 1, dtype=_F64)
    return _finish(r**2, t_max, t_min, final_zero)


def li(process: ForwardProcess, n: int, *, t_max: float | None = None, t_min: float | None = None,
       final_zero: bool = False, c0: float | None = None, c1: float | None = None) -> torch.Tensor:
    """Theory schedule of Li et al. 2024 (source 003): the chain of T = n+1 states with betas ``li_betas(T)``.

    Point j (j = 0..n) is the time of state T - j, i.e. alpha(t)^2 = alpha_bar_{T-j} = prod_{k<=T-j} (1 - beta_k),
    found through lambda = log(alpha_bar / (1 - alpha_bar)); their sampler runs Y_T -> Y_1 (Theorem 1 compares
    p_{X_1} and p_{Y_1}), and ``final_zero`` adds the step to state 0 (t = 0).  Times are clipped to
    [t_min, t_max]; they are *not* stretched to the endpoints, so ts[0] < t_max when alpha_bar_T is not small
    (c1 <= c0): start such a run from the marginal at ts[0], not the prior.  States that clip onto the same end
    are merged, so the grid has *fewer than n steps* when Li's chain runs past the interval (e.g. beyond EDM's
    sigma_max = 80 for T > 80): check ``len(ts)``.  c0, c1 default to ``li_betas``'s.
    On ``Discrete.from_schedule("li", n + 1)`` the grid is exactly the chain's states n+1..1."""
    t_max, t_min = _endpoints(process, n, t_max, t_min)
    kw = {k: v for k, v in (("c0", c0), ("c1", c1)) if v is not None}
    log_abar = torch.cumsum(torch.log1p(-li_betas(n + 1, **kw)), 0)  # states 1..T
    lam = log_abar - torch.log(-torch.expm1(log_abar))
    ts = torch.unique_consecutive(process.t_from_log_snr(lam.flip(0)).to(_F64).clamp(t_min, t_max))
    if ts.numel() < 2 or not torch.all(ts[1:] < ts[:-1]):
        raise ValueError(f"li grid: Li's chain of {n + 1} states has fewer than 2 distinct times in "
                         f"[{t_min}, {t_max}] of {type(process).__name__}")
    return torch.cat([ts, ts.new_zeros(1)]) if final_zero else ts


#: diffusers' training-step count, the N of the ``ddpm_*`` grids on a process that is not a ``Discrete`` chain
DDPM_N = 1000


def ddpm_index_time(process: ForwardProcess, k: torch.Tensor) -> torch.Tensor:
    """Time of 0-based DDPM index k (float64): on a ``Discrete`` chain of N steps diffusers' timestep k is state
    k + 1, t = (k + 1)/N; on any other process k = 0..DDPM_N-1 spans [t_min, t_max] uniformly."""
    k = torch.as_tensor(k, dtype=_F64)
    if isinstance(process, Discrete):
        return (k + 1) / process.N
    return process.t_min + k / (DDPM_N - 1) * (process.t_max - process.t_min)


def _ddpm_spaced(process: ForwardProcess, n: int, spacing: str, final_zero: bool, t_max, t_min) -> torch.Tensor:
    """The n + 1 DDPM indices of diffusers' ``timestep_spacing`` for n + 1 inference steps, as times (the grid's
    n + 1 points: no stretching to t_min), then 0 with ``final_zero`` (diffusers' final step to alpha_bar = 1)."""
    if t_max is not None or t_min is not None:
        raise ValueError(f"grid ddpm_{spacing} is fixed by the DDPM indices; it takes no t_max / t_min")
    _endpoints(process, n, None, None)
    N, m = (process.N if isinstance(process, Discrete) else DDPM_N), n + 1
    if m > N:
        raise ValueError(f"ddpm_{spacing}: {m} points exceed the {N} DDPM indices")
    j = torch.arange(m, dtype=_F64)
    if spacing == "linspace":
        k = torch.round((N - 1) * (1 - j / m))
    elif spacing == "trailing":
        k = torch.round(N * (1 - j / m)) - 1
    else:  # leading
        k = (m - 1 - j) * (N // m)
    ts = ddpm_index_time(process, k)
    if not torch.all(ts[1:] < ts[:-1]):
        raise ValueError(f"ddpm_{spacing} grid with {m} points is not strictly decreasing")
    return torch.cat([ts, ts.new_zeros(1)]) if final_zero else ts


def ddpm_linspace(process: ForwardProcess, n: int, *, t_max: float | None = None, t_min: float | None = None,
                  final_zero: bool = False) -> torch.Tensor:
    """diffusers' ``timestep_spacing="linspace"`` of its multistep schedulers (DPMSolverMultistep, UniPC, DEIS; DDIM
    and Euler space "linspace" slightly differently): k_j = round((N-1)(1 - j/(n+1))), j = 0..n -> ``[n+1]`` times
    (``ddpm_index_time``), ``[n+2]`` with the final step to 0.  Starts at t_max; ends above t_min."""
    return _ddpm_spaced(process, n, "linspace", final_zero, t_max, t_min)


def ddpm_trailing(process: ForwardProcess, n: int, *, t_max: float | None = None, t_min: float | None = None,
                  final_zero: bool = False) -> torch.Tensor:
    """diffusers' ``timestep_spacing="trailing"`` (Lin et al. 2024; DDIM's and the multistep schedulers'):
    k_j = round(N (1 - j/(n+1))) - 1, j = 0..n."""
    return _ddpm_spaced(process, n, "trailing", final_zero, t_max, t_min)


def ddpm_leading(process: ForwardProcess, n: int, *, t_max: float | None = None, t_min: float | None = None,
                 final_zero: bool = False) -> torch.Tensor:
    """diffusers' ``timestep_spacing="leading"`` as DDIM, its default, spaces it: k_j = (n - j) floor(N/(n+1)),
    j = 0..n; starts *below* t_max (the flaw Lin et al. 2024 point out): a run from the prior at ts[0] starts with a
    mismatched marginal."""
    return _ddpm_spaced(process, n, "leading", final_zero, t_max, t_min)


GRIDS: dict[str, Callable[..., torch.Tensor]] = {
    "uniform_t": uniform_t, "uniform": uniform_t, "uniform_log_snr": uniform_log_snr, "karras": karras,
    "quadratic": quadratic, "li": li, "ddpm_linspace": ddpm_linspace, "ddpm_trailing": ddpm_trailing,
    "ddpm_leading": ddpm_leading,
}


def make_grid(name: str, process: ForwardProcess, n: int, *, snap: bool = True, **kwargs) -> torch.Tensor:
    """Grid ``name`` (a key of ``GRIDS``) with n steps on ``process``; kwargs: t_max, t_min, final_zero, rho, ...

    On a ``Discrete`` chain the grid is moved onto the chain's states (``Discrete.snap_to_states``, same number of
    points) unless ``snap=False`` or it has more positive points than the chain has states: a network trained on
    integer steps is evaluated only where it was trained.  Measured on a network trained by scorelab
    (benchmarks/panel_nets.py): UniPC at NFE 20 on a DDPM chain, MMD^2 3.4e-2 on the rule's own times vs 5.1e-4 on
    the chain's states (exact scores: 2.07e-4 both)."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; expected one of {sorted(GRIDS)}")
    try:
        ts = GRIDS[name](process, n, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad options for grid {name!r}: {e}") from None
    if snap and isinstance(process, Discrete) and int((ts > 0).sum()) <= process.N:
        return process.snap_to_states(ts)
    return ts


def dpm_solver_orders(nfe: int, order: int) -> list[int]:
    """Per-step orders spending exactly ``nfe`` evaluations (Lu et al. 2022, sec. 3.4, "DPM-Solver-fast"):
    order 3: K = nfe//3 + 1 steps, [3]*(K-2)+[2,1] / [3]*(K-1)+[1] / [3]*(K-1)+[2] for nfe % 3 = 0 / 1 / 2;
    order 2: [2]*(nfe//2) (+ [1] when nfe is odd); order 1: [1]*nfe."""
    if int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe}")
    if order == 1:
        return [1] * nfe
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    if order == 3:
        k = nfe // 3 + 1
        return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[nfe % 3]
    raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}")


def check_steps(process: Discrete, steps, what: str = "this method") -> torch.Tensor:
    """A step subsequence tau_1 < ... < tau_K of a ``Discrete`` chain as a long tensor ``[K]`` (None: all steps
    1..N), or ``ValueError`` saying that ``what`` needs a Discrete process / strictly increasing steps in 1..N."""
    if not isinstance(process, Discrete):
        raise ValueError(f"{what} needs a Discrete process, got {type(process).__name__}")
    steps = torch.arange(1, process.N + 1) if steps is None else torch.as_tensor(steps).long().flatten()
    if steps.numel() < 1 or steps[0] < 1 or steps[-1] > process.N or torch.any(steps[1:] <= steps[:-1]):
        raise ValueError(f"steps must be strictly increasing integers in 1..{process.N}")
    return steps
