r"""Classifier / discriminator / critic heads: time-conditioned for vectors and images, plus a plain critic MLP.

Heads return logits: ``[B]`` when ``num_outputs == 1`` (a discriminator's logit, a critic's value), else
``[B, num_outputs]`` (class logits for classifier guidance).

Notation
--------
================  =========================================================================================
``head(x, t_in)`` time-conditioned head, t_in ``[B]`` as for score networks (see ``nets.mlp``)
``critic(x)``     plain critic f(x) of SFT-PG (Fan & Lee 2023, Alg. 1; official ``fstar_tanh``: 2 -> 256 -> 256
                  -> 1, ReLU), optionally spectrally normalised (official ``fstar``)
``n_steps``       VectorHead with a per-step embedding instead of a sinusoidal one (SFT-PG value net ``value``)
================  =========================================================================================
"""
from __future__ import annotations

from itertools import pairwise
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import TimeLike, batch_time
from ..core.denoisers import net_time_input
from ..core.processes import EDM, Discrete, ForwardProcess
from .mlp import MLP, ConfigMixin, StepEmbedMLP, TimeLabelEmbedding, _check_int, check_time_input, make_activation
from .unet import ResBlock, group_norm


def _squeeze(logits: torch.Tensor, num_outputs: int) -> torch.Tensor:
    return logits.squeeze(-1) if num_outputs == 1 else logits


class VectorHead(ConfigMixin, nn.Module):
    """Time-conditioned MLP head for vectors: ``head(x [B, dim], t_in [B]) -> [B]`` or ``[B, num_outputs]``.

    With ``n_steps`` set, the trunk is a ``StepEmbedMLP`` (t_in = step index i in 1..N) instead of the residual MLP
    with a sinusoidal time embedding."""

    net_name = "vector_head"

    def __init__(self, dim: int, num_outputs: int = 1, width: int = 128, depth: int = 2, activation: str = "silu",
                 time_scale: float = 1000.0, n_steps: int | None = None):
        super().__init__()
        self._store_config(dim=dim, num_outputs=num_outputs, width=width, depth=depth, activation=activation,
                           time_scale=time_scale, n_steps=n_steps)
        self.num_outputs = _check_int("num_outputs", num_outputs, 1)
        if n_steps is None:
            self.trunk = MLP(dim, width, depth, activation, time_scale, out_dim=self.num_outputs)
        else:
            self.trunk = StepEmbedMLP(n_steps, dim, width, depth, activation, out_dim=self.num_outputs)

    def forward(self, x: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        """Logits of x at network time t_in. Shapes: x [B, dim], t_in [B] -> [B] (num_outputs = 1) or [B,
        num_outputs]."""
        return _squeeze(self.trunk(x, t_in), self.num_outputs)


class ImageHead(ConfigMixin, nn.Module):
    """Small time-conditioned CNN head for images: conv -> [ResBlock, stride-2 conv] per level -> GN, SiLU,
    global average pool -> linear.  ``head(x [B, C, H, W], t_in [B]) -> [B]`` or ``[B, num_outputs]``."""

    net_name = "image_head"

    def __init__(self, in_channels: int = 1, num_outputs: int = 1, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2), groups: int = 8, time_scale: float = 1000.0,
                 dropout: float = 0.0):
        super().__init__()
        self._store_config(in_channels=in_channels, num_outputs=num_outputs, base_channels=base_channels,
                           channel_mults=channel_mults, groups=groups, time_scale=time_scale, dropout=dropout)
        self.in_channels, self.num_outputs = _check_int("in_channels", in_channels, 1), _check_int(
            "num_outputs", num_outputs, 1)
        chans = [_check_int("base_channels", base_channels, 1) * _check_int("mult", m, 1) for m in channel_mults]
        if not chans:
            raise ValueError("channel_mults must have at least one level")
        emb_dim = 4 * base_channels
        self.embed = TimeLabelEmbedding(emb_dim, time_scale)
        self.conv_in = nn.Conv2d(self.in_channels, chans[0], 3, padding=1)
        c_ins = [chans[0]] + chans[:-1]
        self.blocks = nn.ModuleList(ResBlock(a, b, emb_dim, groups, dropout) for a, b in zip(c_ins, chans, strict=True))
        self.pools = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chans)
        self.norm, self.out = group_norm(chans[-1], groups), nn.Linear(chans[-1], self.num_outputs)

    def forward(self, x: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        """Logits of images x at network time t_in. Shapes: x [B, C, H, W], t_in [B] -> [B] (num_outputs = 1)
        or [B, num_outputs]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ImageHead expects x of shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        emb = self.embed(check_time_input(t_in, x))
        h = self.conv_in(x)
        for block, pool in zip(self.blocks, self.pools, strict=True):
            h = pool(block(h, emb))
        h = F.silu(self.norm(h)).mean(dim=(2, 3))
        return _squeeze(self.out(h), self.num_outputs)


class CriticMLP(ConfigMixin, nn.Module):
    """Plain critic / discriminator MLP without time: ``critic(x [B, dim]) -> [B]`` (or ``[B, num_outputs]``).

    Defaults reproduce the SFT-PG toy critic (2 -> 256 -> 256 -> 1, ReLU); ``spectral_norm=True`` wraps every
    linear layer in ``torch.nn.utils.parametrizations.spectral_norm`` (Miyato et al. 2018)."""

    net_name = "critic_mlp"

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 2, activation: str = "relu",
                 num_outputs: int = 1, spectral_norm: bool = False):
        super().__init__()
        self._store_config(dim=dim, width=width, depth=depth, activation=activation, num_outputs=num_outputs,
                           spectral_norm=spectral_norm)
        self.dim, self.num_outputs = _check_int("dim", dim, 1), _check_int("num_outputs", num_outputs, 1)
        sizes = [self.dim] + [_check_int("width", width, 1)] * _check_int("depth", depth, 1) + [self.num_outputs]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(sizes)):
            lin = nn.Linear(a, b)
            layers.append(nn.utils.parametrizations.spectral_norm(lin) if spectral_norm else lin)
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t_in: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, dim]`` -> ``[B]``; ``t_in`` is accepted and ignored (uniform call signature)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"CriticMLP expects x of shape [B, {self.dim}], got {tuple(x.shape)}")
        return _squeeze(self.body(x), self.num_outputs)


# -- heads called in process time (discriminators, classifiers, critics) ----------------------------------------
HEAD_TIME_INPUTS = ("t", "index", "log_snr", "c_noise")


ScalarField = Callable[..., torch.Tensor]  # f(x [B, ...], t [B]) -> [B]


def _param_dtype(fn) -> torch.dtype | None:
    """Floating dtype of a module's first parameter (None for plain functions / parameter-free modules)."""
    for p in getattr(fn, "parameters", lambda: [])():
        return p.dtype if p.is_floating_point() else None
    return None


def scalar_field_grad(fn: ScalarField, x: torch.Tensor, t: TimeLike, create_graph: bool = False) -> torch.Tensor:
    """grad_x sum_b fn(x, t)_b for a per-example scalar field ``fn(x [B, ...], t [B]) -> [B]``; shape of ``x``.

    Works inside ``torch.no_grad``.  A module is evaluated in its parameters' dtype and the gradient returned in
    x's dtype.  With ``create_graph=True`` the result stays differentiable in fn's parameters (needed to train a
    discriminator through its gradient, J_MSE).  A field that does not depend on x has gradient 0."""
    dtype = _param_dtype(fn) or x.dtype
    with torch.enable_grad():
        x_ = x.to(dtype) if (create_graph and x.requires_grad) else x.detach().to(dtype).requires_grad_(True)
        t_ = batch_time(t, x_)
        val = fn(x_, t_)
        if val.shape != (x.shape[0],):
            raise ValueError(f"the scalar field must return one value per example [{x.shape[0]}], "
                             f"got shape {tuple(val.shape)}")
        if not val.requires_grad:
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(val.sum(), x_, create_graph=create_graph, allow_unused=True)
    if grad is None:
        return torch.zeros_like(x)
    return (grad if create_graph else grad.detach()).to(x.dtype)


class TimeConditionedHead(nn.Module):
    """A head network ``net(x, t_in) -> logits`` (``nets.VectorHead``/``ImageHead``) called in process time.

    ``time_input`` chooses t_in as for score networks: ``"t"`` (process time; default), ``"index"`` (t N, Discrete
    processes), ``"log_snr"`` or ``"c_noise"`` (log(sigma/alpha)/4; default for EDM).  ``forward(x, t)`` with t a
    scalar or ``[B]`` returns ``[B]`` (one output: a discriminator logit) or ``[B, C]`` (class logits)."""

    def __init__(self, net: nn.Module, process: ForwardProcess, time_input: str | None = None):
        super().__init__()
        time_input = time_input or ("c_noise" if isinstance(process, EDM) else "t")
        if time_input not in HEAD_TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; expected one of {HEAD_TIME_INPUTS}")
        if time_input == "index" and not isinstance(process, Discrete):
            raise ValueError("time_input='index' needs a Discrete process")
        self.net, self.process, self.time_input = net, process, time_input

    def net_time(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """The ``[B]`` time input of the head for process time t (see ``core.denoisers.net_time_input``).
        Shapes: x [B, ...], t scalar or [B] -> [B]."""
        return net_time_input(self.process, self.time_input, x, t)

    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """Head logits at process time t. Shapes: x [B, ...], t scalar or [B] -> [B] or [B, C]."""
        return self.net(x, self.net_time(x, t).to(x.dtype))
