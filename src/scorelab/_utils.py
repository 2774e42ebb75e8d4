"""Small shared helpers: time broadcasting, tensor conversion, input checks.

Notation: ``x`` is a batch ``[B, ...]``; ``t`` is a scalar or a ``[B]`` tensor of times.
"""
from __future__ import annotations

from typing import Union

import torch

TimeLike = Union[float, int, torch.Tensor]


def as_tensor(t: TimeLike, like: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``t`` as a tensor (dtype/device of ``like`` when given, else float64 for python numbers)."""
    if isinstance(t, torch.Tensor):
        if like is not None:
            return t.to(device=like.device, dtype=like.dtype)
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    if like is not None:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return torch.as_tensor(float(t), dtype=torch.get_default_dtype())


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or ``[B]`` tensor ``v`` so it broadcasts against ``x`` of shape ``[B, ...]``."""
    v = as_tensor(v, x)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or v.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"time must be a scalar or a [B] tensor with B={x.shape[0]}, got shape {tuple(v.shape)}"
        )
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def batch_time(t: TimeLike, x: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a ``[B]`` tensor matching the batch of ``x`` (for network inputs)."""
    t = as_tensor(t, x)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"time must be a scalar or a [B] tensor with B={x.shape[0]}, got shape {tuple(t.shape)}"
        )
    return t.expand(x.shape[0])


def check_positive(name: str, value: float) -> float:
    """``value`` if it is > 0, else ``ValueError`` naming ``name``."""
    if not (value > 0):
        raise ValueError(f"{name} must be > 0, got {value}")
    return value
