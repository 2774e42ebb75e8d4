r"""Networks for vectors ``[B, d]``: a time-embedded MLP and the SFT-PG toy step-embedding MLP.

Network contract: ``net(x, t_in, **cond) -> tensor shaped like x`` where ``t_in`` is a ``[B]`` float tensor chosen by
``denoisers.NetworkModel.net_time`` (process time t in [0, 1], a DDPM step index in [0, N], or EDM's c_noise).

Notation
--------
================  ===========================================================================================
``t_in``          the network's time input, ``[B]``
``time_scale``    multiplier applied before the sinusoidal embedding: 1000 for t in [0, 1], 1 for step indices
``emb(t)``        [cos(t_s w_k), sin(t_s w_k)], w_k = max_period^{-k/half}, t_s = time_scale * t_in
                  (Vaswani et al. 2017; Ho et al. 2020, App. B)
``y``             class label in {0..C-1}; -1 (or ``y=None``) is the null label of classifier-free guidance
                  (Ho & Salimans 2022), stored as embedding row 0
``gamma_i``       SFT-PG toy net (Fan & Lee 2023, official ``toy_exp/models.py``): hidden layer output
                  multiplied by a learned per-step vector ``nn.Embedding(n_steps, width)[i]``
================  ===========================================================================================
"""
from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import torch
from torch import nn

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "softplus": nn.Softplus, "tanh": nn.Tanh,
               "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_int(name: str, value: int, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_time_input(t_in: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Validate the ``[B]`` time input of a network against the batch ``x`` ``[B, ...]``; returns it as ``[B]``."""
    t_in = torch.as_tensor(t_in, device=x.device)
    if t_in.ndim == 0:
        t_in = t_in.expand(x.shape[0])
    if t_in.ndim != 1 or t_in.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"time input must be a scalar or a [B] tensor with B={x.shape[0]}, got {tuple(t_in.shape)}")
    return t_in.expand(x.shape[0])


class ConfigMixin:
    """Stores the constructor arguments so ``config()`` can rebuild the net from JSON (``nets.build_net``)."""

    net_name: str = "net"

    def _store_config(self, **kwargs: Any) -> None:
        self._config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments plus ``name``; ``build_net(net.config())`` rebuilds the net."""
        return {"name": self.net_name, **self._config}


class SinusoidalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of ``time_scale * t_in``: ``[B] -> [B, dim]`` (cos half, then sin half)."""

    def __init__(self, dim: int, time_scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        self.dim = _check_int("embedding dim", dim, 2)
        if self.dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.time_scale = float(time_scale)
        half = self.dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t_in: torch.Tensor) -> torch.Tensor:
        """[cos(time_scale t_in f_k), sin(time_scale t_in f_k)] over the dim/2 frequencies f_k. Shapes: t_in
        [B] -> [B, dim]."""
        args = (self.time_scale * t_in.float())[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimeLabelEmbedding(nn.Module):
    """Sinusoidal time embedding -> MLP, plus an optional label embedding (row 0 = null label): ``[B] -> [B, dim]``."""

    def __init__(self, dim: int, time_scale: float, num_classes: int = 0, activation: str = "silu"):
        super().__init__()
        self.num_classes = _check_int("num_classes", num_classes, 0)
        self.sin = SinusoidalEmbedding(dim, time_scale)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), make_activation(activation), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def forward(self, t_in: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """MLP of the sinusoidal embedding of t_in, plus the label embedding of y (y = -1 or None: no label).
        Shapes: t_in [B], y [B] or None -> [B, dim]."""
        emb = self.mlp(self.sin(t_in))
        if self.label is None:
            if y is not None and torch.any(torch.as_tensor(y) >= 0):
                raise ValueError("labels y were given but the network was built with num_classes=0")
            return emb
        return emb + self.label(label_index(y, t_in.shape[0], self.num_classes, t_in.device))


def label_index(y: torch.Tensor | int | None, batch: int, num_classes: int, device) -> torch.Tensor:
    """Map labels ``y`` (``[B]`` ints, -1 = null, or None) to embedding rows ``y + 1`` (row 0 = null label)."""
    if y is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.ndim > 1:
        raise ValueError(f"labels y must be an integer scalar or [B] tensor, got {y.dtype} {tuple(y.shape)}")
    y = y.long().expand(batch) if y.ndim == 0 else y.long()
    if y.shape[0] != batch:
        raise ValueError(f"labels y must have B={batch} entries, got {y.shape[0]}")
    if torch.any(y < -1) or torch.any(y >= num_classes):
        raise ValueError(f"labels must be in -1..{num_classes - 1} (-1 = unconditional)")
    return y + 1


class MLP(ConfigMixin, nn.Module):
    """Residual MLP for vectors ``[B, dim]`` with a sinusoidal time embedding and optional class conditioning.

    Each of ``depth`` blocks computes h <- h + W2 act(W1 act(h) + E emb) (Ho et al. 2020 ResBlock, on vectors).

    Args:
        dim: data dimension d.  out_dim: output size (default ``dim``; heads use other sizes).
        width: hidden width.  depth: number of residual blocks.  activation: name in ``ACTIVATIONS``.
        time_scale: 1000 for t in [0, 1] (default), 1 for step indices in [0, 1000], ~250 for c_noise.
        emb_dim: time-embedding width (default ``width``).  num_classes: > 0 adds a label embedding (cond ``y``).
    """

    net_name = "mlp"

    def __init__(self, dim: int, width: int = 128, depth: int = 3, activation: str = "silu",
                 time_scale: float = 1000.0, emb_dim: int | None = None, num_classes: int = 0,
                 out_dim: int | None = None):
        super().__init__()
        self._store_config(dim=dim, width=width, depth=depth, activation=activation, time_scale=time_scale,
                           emb_dim=emb_dim, num_classes=num_classes, out_dim=out_dim)
        self.dim = _check_int("dim", dim, 1)
        width, depth = _check_int("width", width, 1), _check_int("depth", depth, 1)
        emb_dim = _check_int("emb_dim", emb_dim or width + width % 2, 2)
        self.embed = TimeLabelEmbedding(emb_dim, time_scale, num_classes, activation)
        self.inp = nn.Linear(self.dim, width)
        self.lin1 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, width) for _ in range(depth))
        self.lin2 = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.act = make_activation(activation)
        self.out = nn.Linear(width, _check_int("out_dim", out_dim or self.dim, 1))

    def forward(self, x: torch.Tensor, t_in: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, dim]``, t_in ``[B]``, y ``[B]`` labels or None -> ``[B, out_dim]``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape [B, {self.dim}], got {tuple(x.shape)}")
        emb = self.embed(check_time_input(t_in, x), y)
        h = self.inp(x)
        for l1, proj, l2 in zip(self.lin1, self.emb_proj, self.lin2, strict=True):
            h = h + l2(self.act(l1(self.act(h)) + proj(emb)))
        return self.out(self.act(h))


class StepEmbedLinear(nn.Module):
    """``gamma_i * (W x + b)`` with gamma = ``nn.Embedding(n_steps, out)`` (SFT-PG ``ConditionalLinear``)."""

    def __init__(self, n_in: int, n_out: int, n_steps: int):
        super().__init__()
        self.lin = nn.Linear(n_in, n_out)
        self.embed = nn.Embedding(n_steps, n_out)
        nn.init.uniform_(self.embed.weight)  # as in the official code: U(0, 1)
        nn.init.xavier_normal_(self.lin.weight)

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """gamma_rows * (W x + b). Shapes: x [B, n_in], rows [B] (integer step indices) -> [B, n_out]."""
        return self.embed(rows) * self.lin(x)


class StepEmbedMLP(ConfigMixin, nn.Module):
    """SFT-PG toy DDPM net (Fan & Lee 2023, ``toy_exp/models.py::ConditionalModel``): dim -> width x depth -> out.

    Each hidden layer is act(gamma_i * (W h + b)) with a learned per-step vector gamma_i (``nn.Embedding``).
    Defaults reproduce the paper's net: 2 -> 128 -> 128 -> 128 -> 2 with softplus.

    Time input: the DDPM step index i in 1..N as produced by ``NetworkModel`` with ``time_input="index"``
    (t = i/N).  Step i uses embedding row ``i - index_offset``; with the default ``index_offset=1`` row k is the
    official code's 0-based step k (its alphas_prod[k] = alpha_bar_{k+1}).  Non-integer indices raise ``ValueError``
    (the net only knows the trained steps).
    """

    net_name = "step_embed_mlp"

    def __init__(self, n_steps: int, dim: int = 2, width: int = 128, depth: int = 3, activation: str = "softplus",
                 out_dim: int | None = None, index_offset: int = 1):
        super().__init__()
        self._store_config(n_steps=n_steps, dim=dim, width=width, depth=depth, activation=activation,
                           out_dim=out_dim, index_offset=index_offset)
        self.n_steps, self.dim = _check_int("n_steps", n_steps, 1), _check_int("dim", dim, 1)
        width, depth = _check_int("width", width, 1), _check_int("depth", depth, 1)
        self.index_offset = int(index_offset)
        sizes = [self.dim] + [width] * depth
        self.layers = nn.ModuleList(StepEmbedLinear(a, b, self.n_steps) for a, b in pairwise(sizes))
        self.act = make_activation(activation)
        self.out = nn.Linear(width, _check_int("out_dim", out_dim or self.dim, 1))

    def rows(self, t_in: torch.Tensor) -> torch.Tensor:
        """Embedding rows for step indices ``t_in`` ``[B]`` (float or int)."""
        k = torch.round(t_in.double())
        if torch.any((t_in.double() - k).abs() > 1e-4):
            raise ValueError("StepEmbedMLP needs integer step indices (time_input='index' at the chain's times i/N)")
        rows = k.long() - self.index_offset
        if torch.any(rows < 0) or torch.any(rows >= self.n_steps):
            lo, hi = self.index_offset, self.n_steps - 1 + self.index_offset
            raise ValueError(f"step index out of range: {lo}..{hi} are valid, got {int(k.min())}..{int(k.max())}")
        return rows

    def forward(self, x: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        """x ``[B, dim]``, t_in ``[B]`` step indices -> ``[B, out_dim]``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"StepEmbedMLP expects x of shape [B, {self.dim}], got {tuple(x.shape)}")
        rows = self.rows(check_time_input(t_in, x))
        h = x
        for layer in self.layers:
            h = self.act(layer(h, rows))
        return self.out(h)
