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


class _LogProgress:
    """A tqdm stand-in for non-terminal output: one log line every ``every`` seconds, none of tqdm's ``\\r`` lines.

    Supports the part of tqdm's interface scorelab uses: iteration, ``update``, ``set_postfix``, ``close``.
    """

    def __init__(self, iterable=None, *, total=None, desc: str = "", initial: int = 0, every: float = 30.0):
        import time

        self._time = time.monotonic
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, initial
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)
        self.every, self.postfix = every, ""
        self._start = self._last = self._time()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, k: int = 1) -> None:
        """Advance by ``k``; log a line when ``every`` seconds have passed since the last one."""
        self.n += k
        now = self._time()
        if now - self._last >= self.every:
            self._last = now
            self._log(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        """Remember ``key=value`` pairs to append to the next log line (tqdm's signature)."""
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def _log(self, now: float) -> None:
        import sys

        total = f"/{self.total}" if self.total is not None else ""
        extra = f" {self.postfix}" if self.postfix else ""
        print(f"[{self.desc or 'progress'}] {self.n}{total} ({now - self._start:.0f} s){extra}", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        """Nothing to tear down (kept for tqdm compatibility)."""


def progress(iterable=None, *, total=None, desc: str = "", disable: bool = False, initial: int = 0,
             leave: bool = True, every: float = 30.0):
    """A progress bar: tqdm on a terminal, else one log line on stderr every ``every`` seconds.

    ``disable=True`` silences both. CI, ``nohup`` and log files get no ``\\r``-flooded lines (issue #21).
    """
    import sys

    if not disable and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave)
    if disable:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=True)
    return _LogProgress(iterable, total=total, desc=desc, initial=initial, every=every)
