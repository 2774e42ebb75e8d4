"""The target protocol of the density samplers (DESIGN.md, idea 4): the base class every target derives from.

A target gives ``log_prob_unnorm(x) -> [B]``, ``score(x) -> [B, d]`` (autograd by default), ``log_Z`` with
``log_Z_source`` (how it was obtained) and ``log_Z_stderr`` (Monte-Carlo references), ``sample(n)`` where exact
samples exist and ``moments()``.  Concrete targets: targets.py, posteriors.py.
"""
from __future__ import annotations

import torch


class Target:
    """Base class: subclasses define ``log_prob_unnorm`` and may override ``score``, ``sample``, ``moments``."""

    name: str = "target"
    log_Z: float | None = None
    log_Z_source: str | None = None  # how log_Z was obtained
    log_Z_stderr: float | None = None  # its statistical error (Monte-Carlo references), 0 / None when exact

    def __init__(self, dim: int):
        if int(dim) != dim or dim < 1:
            raise ValueError(f"target dimension must be a positive integer, got {dim}")
        self.dim = int(dim)

    def log_prob_unnorm(self, x: torch.Tensor) -> torch.Tensor:
        """log rho(x) for x ``[B, d]`` -> ``[B]``."""
        raise NotImplementedError

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad log rho(x) ``[B, d]`` by autograd (differentiable when grad mode is on: create_graph)."""
        create = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            xr = x if x.requires_grad else x.detach().requires_grad_(True)
            lp = self.log_prob_unnorm(xr).sum()
            (g,) = torch.autograd.grad(lp, xr, create_graph=create)
        return g

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples ``[n, d]`` (float64)."""
        raise NotImplementedError(f"target {self.name!r} cannot be sampled exactly")

    def moments(self) -> dict[str, float] | None:
        """Exact E||x||^2 and E||x||_1 (keys ``sq``, ``abs``) or None."""
        return None

    def mode_weights(self, x: torch.Tensor) -> dict[str, float] | None:
        """Mode statistics of samples x ``[n, d]`` against the exact ones, where the target knows its modes (None
        otherwise); see ``SeparableTarget.mode_weights``."""
        return None

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{self.name}: expected x of shape [B, {self.dim}], got {tuple(x.shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, log_Z={self.log_Z})"
