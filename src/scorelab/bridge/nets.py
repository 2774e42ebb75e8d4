r"""Step-conditioned networks for the bridge's forward and backward means F(k, x) and B(k, x).

Both are residual: net(k, x) = x + delta(k, x), and delta starts at 0 (the identity, i.e. the Brownian reference).
DSB learns ``B_beta(k, x) ~ B_k(x)`` and ``F_alpha(k, x) ~ F_k(x)`` with one network and a step input each
(sources/002, "Diffusion Schrödinger Bridge"; De Bortoli et al., 2021, Sec. 3.3).

============  =====================================================================================================
``k``         step index in 0..N-1, int or ``[B]`` int64 (transition k <-> k+1)
``x``         state ``[B, d]``
``N``         number of steps
============  =====================================================================================================

``StepAffine`` (delta = W_k x + b_k, one affine map per step) is exact for Gaussian problems, where every IPF/IMF
iterate has affine means, and has a least-squares solver (``fit_lstsq``); ``StepMLP`` wraps ``nets.MLP`` with the
step as its time input (k / N, sinusoidal embedding).
"""
from __future__ import annotations

import torch
from torch import nn

from ..nets.mlp import MLP, ConfigMixin


def _steps(k: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
    k = torch.as_tensor(k, device=x.device, dtype=torch.long)
    return k.expand(x.shape[0]) if k.ndim == 0 else k


class StepAffine(ConfigMixin, nn.Module):
    """F(k, x) = x + W_k x + b_k with ``W [N, d, d]``, ``b [N, d]`` (zero-initialized)."""

    net_name = "bridge_step_affine"

    def __init__(self, dim: int, n_steps: int):
        super().__init__()
        self._store_config(dim=dim, n_steps=n_steps)
        self.dim, self.n_steps = int(dim), int(n_steps)
        self.W = nn.Parameter(torch.zeros(n_steps, dim, dim))
        self.b = nn.Parameter(torch.zeros(n_steps, dim))

    def forward(self, k: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, d]``, k int or ``[B]`` -> ``[B, d]``."""
        k = _steps(k, x)
        return x + torch.einsum("bij,bj->bi", self.W[k], x) + self.b[k]

    @torch.no_grad()
    def fit_lstsq(self, k: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set (W_k, b_k) for every step to the exact least-squares minimizer of sum |F(k, x) - y|^2 over the rows of
        step k (``k [M]``, ``x, y [M, d]``): the mean-matching / bridge-matching regression solved exactly."""
        for step in range(self.n_steps):
            rows = k == step
            if int(rows.sum()) <= self.dim:
                raise ValueError(f"fit_lstsq: step {step} has {int(rows.sum())} rows, need > d = {self.dim}")
            xs = x[rows].double()
            design = torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype)], 1)
            sol = torch.linalg.lstsq(design, (y[rows].double() - xs)).solution  # [d + 1, d]
            self.W[step] = sol[:-1].T.to(self.W)
            self.b[step] = sol[-1].to(self.b)


class StepMLP(ConfigMixin, nn.Module):
    """F(k, x) = x + MLP(x, k / N) (``nets.MLP`` with a sinusoidal step embedding; output layer zero-initialized)."""

    net_name = "bridge_step_mlp"

    def __init__(self, dim: int, n_steps: int, width: int = 128, depth: int = 3, activation: str = "silu"):
        super().__init__()
        self._store_config(dim=dim, n_steps=n_steps, width=width, depth=depth, activation=activation)
        self.dim, self.n_steps = int(dim), int(n_steps)
        self.mlp = MLP(dim, width=width, depth=depth, activation=activation)
        nn.init.zeros_(self.mlp.out.weight)
        nn.init.zeros_(self.mlp.out.bias)

    def forward(self, k: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, d]``, k int or ``[B]`` -> ``[B, d]``."""
        k = _steps(k, x)
        return x + self.mlp(x, k.to(x.dtype) / self.n_steps)


NETS = {"affine": StepAffine, "mlp": StepMLP}


def make_net(kind: str, dim: int, n_steps: int, **kwargs) -> nn.Module:
    """A step-conditioned residual net by name: ``affine`` (``StepAffine``) or ``mlp`` (``StepMLP``, ``kwargs``:
    width, depth, activation)."""
    if kind not in NETS:
        raise ValueError(f"net must be one of {sorted(NETS)}, got {kind!r}")
    return NETS[kind](dim, n_steps, **({} if kind == "affine" else kwargs))
