r"""Reference processes of the Schrödinger bridge: linear Gaussian chains and their bridges.

A reference is the discrete-time chain p(x_{0:N}) with X_{k+1} = a_k X_k + sqrt(v_k) Z_k, Z_k ~ N(0, I)
(De Bortoli et al., NeurIPS 2021, eq. 3, with v_k = 2 gamma_{k+1}).  Two references are built in:

* Brownian (the seed's VE case, sources/002 "Schrödinger Bridge: Background"): a_k = 1 and sum_k v_k = sigma^2, so
  p_{N|0}(x_N | x_0) = N(x_0, sigma^2 I) and the static bridge is entropic OT with cost |x_0 - x_N|^2, reg 2 sigma^2;
* VP / Ornstein-Uhlenbeck dX = -X dt + sqrt(2) dB, discretized exactly: a_k = exp(-gamma_k), v_k = 1 - a_k^2, total
  time T with 1 - exp(-2T) = sigma^2, so p_{N|0} = N(e^{-T} x_0, sigma^2 I) and N(0, I) is stationary.

=============  ====================================================================================================
``N``          number of transitions (steps); states x_0 .. x_N
``a, v``       per-step scale a_k and variance v_k of X_{k+1} | X_k, ``[N]`` float64
``P_k``        prod_{i<k} a_i;  X_k | X_0 ~ N(P_k x_0, V(0, k) I)
``V(j, k)``    variance of X_k | X_j:  P_k^2 sum_{i=j}^{k-1} v_i / P_{i+1}^2
``m, n, w``    the bridge X_k | X_0 = x_0, X_N = x_N ~ N(m_k x_0 + n_k x_N, w_k I)
``sigma2``     Var(X_N | X_0) per coordinate (the reference variance of the CLI)
=============  ====================================================================================================

Shapes: states ``[B, d]``; step indices ``k`` are ints or ``[B]`` int64 tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("uniform", "symmetric")


def step_weights(n_steps: int, schedule: str = "symmetric") -> torch.Tensor:
    """Relative step sizes ``[N]`` (float64, summing to 1): constant (``uniform``) or the DSB ``symmetric`` schedule,
    linear up to the middle step and back down (small steps at both ends; De Bortoli et al. 2021, App. I)."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"steps must be a positive integer, got {n_steps!r}")
    if schedule == "uniform":
        w = torch.ones(n_steps, dtype=torch.float64)
    elif schedule == "symmetric":
        half = torch.linspace(1.0, 2.0, (n_steps + 1) // 2, dtype=torch.float64)
        w = torch.cat([half, half[: n_steps // 2].flip(0)])
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return w / w.sum()


def _posterior(A1: float, V1: float, A2: float, V2: float) -> tuple[float, float, float]:
    """X ~ N(A1 x, V1), Y | X ~ N(A2 X, V2): X | x, y ~ N(m x + n y, w) -> (m, n, w); exact when V1 or V2 is 0."""
    if V1 <= 0.0:
        return 1.0, 0.0, 0.0
    if V2 <= 0.0:
        return 0.0, 1.0 / A2, 0.0
    w = 1.0 / (1.0 / V1 + A2 * A2 / V2)
    return w * A1 / V1, w * A2 / V2, w


@dataclass(frozen=True)
class LinearReference:
    """The chain X_{k+1} = a_k X_k + sqrt(v_k) Z: transition, marginal and bridge coefficients (module table)."""

    a: torch.Tensor
    v: torch.Tensor
    name: str = "linear"

    def __post_init__(self):
        a, v = torch.as_tensor(self.a, dtype=torch.float64), torch.as_tensor(self.v, dtype=torch.float64)
        if a.ndim != 1 or a.shape != v.shape or a.numel() < 1:
            raise ValueError(f"a and v must be 1-D of one length N >= 1, got {tuple(a.shape)}, {tuple(v.shape)}")
        if not (torch.all(v > 0) and torch.all(a > 0)):
            raise ValueError("reference steps need a_k > 0 and v_k > 0")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "v", v)

    @property
    def n_steps(self) -> int:
        """N, the number of transitions."""
        return int(self.a.numel())

    def P(self, k: int) -> float:
        """prod_{i<k} a_i (the scale of X_k | X_0)."""
        return float(torch.prod(self.a[:k]))

    def A(self, j: int, k: int) -> float:
        """Scale of X_k | X_j (j <= k)."""
        return float(torch.prod(self.a[j:k]))

    def V(self, j: int, k: int) -> float:
        """Variance of X_k | X_j per coordinate (j <= k)."""
        return sum(float(self.v[i]) * self.A(i + 1, k) ** 2 for i in range(j, k))

    @property
    def sigma2(self) -> float:
        """Var(X_N | X_0) per coordinate."""
        return self.V(0, self.n_steps)

    def forward_mean(self, k: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """The reference's forward mean F_k(x) = a_k x, ``[B, d]`` (the first IPF iteration's forward network)."""
        a = self.a.to(x)[torch.as_tensor(k, device=x.device)]
        return a.reshape(-1, 1) * x if a.ndim else a * x

    def bridge_coefs(self) -> torch.Tensor:
        """``[N+1, 3]`` float64 rows (m_k, n_k, w_k): X_k | X_0 = x_0, X_N = x_N ~ N(m_k x_0 + n_k x_N, w_k I)."""
        N = self.n_steps
        rows = [_posterior(self.A(0, k), self.V(0, k), self.A(k, N), self.V(k, N)) for k in range(N + 1)]
        return torch.tensor(rows, dtype=torch.float64)

    def forward_bridge_coefs(self) -> torch.Tensor:
        """``[N, 2]`` rows (c_k, e_k): E[X_{k+1} | X_k = x, X_N = y] = c_k x + e_k y (the forward bridge-matching
        target, Shi et al. 2023, eq. 8 in discrete time)."""
        N = self.n_steps
        rows = [_posterior(self.A(k, k + 1), self.V(k, k + 1), self.A(k + 1, N), self.V(k + 1, N))[:2]
                for k in range(N)]
        return torch.tensor(rows, dtype=torch.float64)

    def backward_bridge_coefs(self) -> torch.Tensor:
        """``[N, 2]`` rows (c_k, e_k): E[X_k | X_0 = x_0, X_{k+1} = x] = c_k x_0 + e_k x (backward bridge matching)."""
        rows = [_posterior(self.A(0, k), self.V(0, k), self.A(k, k + 1), self.V(k, k + 1))[:2]
                for k in range(self.n_steps)]
        return torch.tensor(rows, dtype=torch.float64)


def brownian(sigma2: float, n_steps: int, schedule: str = "symmetric") -> LinearReference:
    """Brownian reference with total variance ``sigma2``: a_k = 1, v_k = sigma2 * w_k (``step_weights``)."""
    if not (isinstance(sigma2, (int, float)) and math.isfinite(sigma2) and sigma2 > 0):
        raise ValueError(f"reference variance sigma^2 must be a finite number > 0, got {sigma2!r}")
    w = step_weights(n_steps, schedule)
    return LinearReference(torch.ones_like(w), float(sigma2) * w, name="brownian")


def ou(sigma2: float, n_steps: int, schedule: str = "symmetric") -> LinearReference:
    """VP / Ornstein-Uhlenbeck reference to N(0, I), exact steps a_k = exp(-gamma_k), v_k = 1 - a_k^2, with total time
    T = -log(1 - sigma2) / 2 split by ``step_weights`` so that Var(X_N | X_0) = ``sigma2`` (needs 0 < sigma2 < 1)."""
    if not (isinstance(sigma2, (int, float)) and math.isfinite(sigma2) and 0 < sigma2 < 1):
        raise ValueError(f"the VP reference needs a reference variance sigma^2 in (0, 1), got {sigma2!r}")
    T = -0.5 * math.log1p(-float(sigma2))
    gamma = T * step_weights(n_steps, schedule)
    a = torch.exp(-gamma)
    return LinearReference(a, -torch.expm1(-2 * gamma), name="vp")


REFERENCES = {"brownian": brownian, "vp": ou}


def make_reference(name: str, sigma2: float, n_steps: int, schedule: str = "symmetric") -> LinearReference:
    """A reference by name (``brownian`` or ``vp``) with Var(X_N | X_0) = ``sigma2`` per coordinate."""
    if name not in REFERENCES:
        raise ValueError(f"reference must be one of {sorted(REFERENCES)}, got {name!r}")
    return REFERENCES[name](sigma2, n_steps, schedule)
