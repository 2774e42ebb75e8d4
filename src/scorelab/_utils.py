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


# -- YAML with the float resolver every config reader uses ------------------------------------------------------
_FLOAT_RE = r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
|[-+]?\.(?:inf|Inf|INF)
|\.(?:nan|NaN|NAN))$"""


def _yaml_loader():
    """A ``yaml.SafeLoader`` subclass whose float resolver also reads ``1e-4``, ``1E4`` and ``.5`` as floats (YAML
    1.1, which PyYAML follows, needs a dot and a signed exponent: ``1e-4`` would stay the string '1e-4')."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader + YAML 1.2 style floats."""

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT_RE, re.X), list("-+0123456789."))
    return Loader


def load_yaml(text_or_stream):
    """Parse YAML (a string or an open file) with ``yaml.safe_load`` semantics plus floats written ``1e-4``,
    ``1E4``, ``.5``: the one YAML reader of configs and ``--set`` values."""
    import yaml

    return yaml.load(text_or_stream, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)


# -- dataclass field types ----------------------------------------------------------------------------------------
def fits_type(value, hint) -> tuple[bool, object]:
    """(``value`` fits the annotation ``hint``, the value converted: int -> float where a float is expected)."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        return True, value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        for a in args:
            ok, v = fits_type(value, a)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        if isinstance(value, float) and value.is_integer():  # steps: 1e4
            return True, int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (tuple, list) or hint in (tuple, list):
        return isinstance(value, (tuple, list)), value
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value  # anything else (nested dataclasses, Literal, ...) is checked by the class itself


def type_name(hint) -> str:
    """A readable name of the annotation ``hint``: ``float or null``, ``int``, ``tuple``."""
    import typing

    args = typing.get_args(hint)
    if args and typing.get_origin(hint) not in (tuple, list, dict):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    return getattr(hint, "__name__", str(hint)).replace("NoneType", "null")


def check_field_types(cls, values: dict, where: str = "") -> dict:
    """``values`` for the dataclass ``cls`` with each value checked against its field's annotation (ints accepted
    for floats and converted); ``ValueError`` naming the key (``where`` + key), the value and the expected type.
    Unknown keys are the caller's business (they are passed through)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        ok, v = fits_type(values[f.name], hints.get(f.name, typing.Any))
        if not ok:
            raise ValueError(f"{where}{f.name} must be {type_name(hints[f.name])}, got {values[f.name]!r} "
                             f"({type(values[f.name]).__name__})")
        out[f.name] = v
    return out


def suggest(name: str, allowed) -> str:
    """``"; did you mean 'x'?"`` for the nearest names in ``allowed`` (difflib), or ``""``."""
    import difflib

    near = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(m) for m in near)}?" if near else ""


# -- memory -------------------------------------------------------------------------------------------------------
def available_memory_bytes(device="cpu") -> int | None:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` for CUDA, else the free physical memory
    (``os.sysconf``, Linux/macOS); ``None`` where it cannot be told."""
    import os

    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0]) if torch.cuda.is_available() else None
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_device(device, what: str = "--device") -> torch.device:
    """``torch.device(device)`` if this torch can use it, else ``ValueError`` naming ``what`` (e.g. CUDA asked on a
    CPU-only torch)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{what}={device!r} is not a device name ({e}); expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}={device!r} but this torch build has no usable CUDA "
                         f"(torch {torch.__version__}, torch.cuda.is_available() is False); use cpu")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{what}={device!r} but MPS is not available here; use cpu")
    return dev
