r"""Control networks for diffusion samplers (PIS-Grad style, with the DIS initialization).

Zhang & Chen 2022 (PIS, "PIS-Grad" network, Sec. 4); Berner, Richter & Ullrich 2022 (source 004: "initialize the
network as linear interpolation between (scaled) initial and terminal scores").

Notation
--------
=============  ==================================================================================
``s``          generative time in [0, T] (X_0 ~ prior, X_T ~ target)
``v(x, s)``    the field the network outputs; each sampler maps it to its drift (see dis.py, pis.py, dds.py)
``score``      clipped target score clip(grad log rho(x), -c, c) (a network input, "Langevin term")
``a0, b0``     fixed initial schedules supplied by the sampler: v_init = a0(s) score + b0(s) x
=============  ==================================================================================

The network is

    v(x, s) = NN([x, emb(s)]) + (a0(s) + A(emb(s))) * score + (b0(s) + B(emb(s))) * x,

with the last layers of NN, A and B zero-initialized, so training starts at the interpolation v_init.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

Schedule = Callable[[torch.Tensor], torch.Tensor]


class FourierTime(nn.Module):
    """emb(s) = [sin(2 pi k s / T), cos(2 pi k s / T)]_{k=1..n_freq} -> ``[B, 2 n_freq]``."""

    def __init__(self, n_freq: int = 16, t_max: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.linspace(0.1, float(n_freq) / 2, n_freq) / t_max)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Fourier features of the generative time s. Shapes: s [B] -> [B, 2 n_freq]."""
        arg = s[:, None] * self.freqs.to(s)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def mlp(n_in: int, hidden: int, n_out: int, layers: int, zero_last: bool = True) -> nn.Sequential:
    """GELU MLP n_in -> hidden (x layers) -> n_out as ``nn.Sequential``; ``zero_last`` zero-initialises the
    output layer (so the network starts at 0). Maps [B, n_in] -> [B, n_out]."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.GELU()]
    mods.append(nn.Linear(hidden if layers else n_in, n_out))
    if zero_last:
        nn.init.zeros_(mods[-1].weight)
        nn.init.zeros_(mods[-1].bias)
    return nn.Sequential(*mods)


class ControlNet(nn.Module):
    """PIS-Grad control network v(x, s, score) -> ``[B, d]``.

    Args:
        dim: d.  hidden, layers: MLP width/depth.  t_max: T.  a0, b0: initial schedules (functions of s ``[B]``).
        use_score: include the target-score ("Langevin") term.
    """

    def __init__(self, dim: int, hidden: int = 64, layers: int = 2, t_max: float = 1.0, n_freq: int = 16,
                 a0: Schedule | None = None, b0: Schedule | None = None, use_score: bool = True):
        super().__init__()
        self.dim, self.t_max, self.use_score = dim, float(t_max), use_score
        self.emb = FourierTime(n_freq, t_max)
        self.time_mlp = nn.Sequential(nn.Linear(2 * n_freq, hidden), nn.GELU())
        self.in_x = nn.Linear(dim, hidden)  # first layer split: W [x, h] = W_x x + W_h h (h per time only)
        self.in_h = nn.Linear(hidden, hidden, bias=False)
        self.nn = mlp(hidden, hidden, dim, layers - 1)
        self.A = mlp(hidden, hidden, dim, 1)
        self.B = mlp(hidden, hidden, dim, 1)
        self.a0 = a0 or (lambda s: s / self.t_max)
        self.b0 = b0 or (lambda s: torch.zeros_like(s))

    def forward(self, x: torch.Tensor, s: torch.Tensor | float, score: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[..., d]``; s a scalar or broadcastable to ``x.shape[:-1]`` (e.g. ``[K, 1]`` for x ``[K, B, d]``:
        time features are computed once per distinct entry of s); score like x (clipped target score) -> v like x."""
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        s = s.reshape(*s.shape, 1) if s.ndim else s.reshape(1)
        h = self.time_mlp(self.emb(s.reshape(-1))).reshape(*s.shape[:-1], -1)  # [..., hidden]
        z = torch.nn.functional.gelu(self.in_x(x) + self.in_h(h))
        out = self.nn(z) + (self.b0(s) + self.B(h)) * x
        if self.use_score and score is not None:
            out = out + (self.a0(s) + self.A(h)) * score
        return out

    def time_features(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything that depends on time only, for a grid s ``[K]``, computed once per rollout (one batched call
        instead of K): (zb ``[K, hidden]`` first-layer bias, cx ``[K, d]`` coefficient of x, cs ``[K, d]``
        coefficient of the score).  ``step(x, (zb[k], cx[k], cs[k]), score)`` equals ``forward(x, s[k], score)``."""
        s = s.reshape(-1, 1)
        h = self.time_mlp(self.emb(s.reshape(-1)))
        zb = self.in_h(h) + self.in_x.bias
        return zb, self.b0(s) + self.B(h), self.a0(s) + self.A(h)

    def step(self, x: torch.Tensor, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             score: torch.Tensor | None = None) -> torch.Tensor:
        """v(x, s_k) from precomputed ``time_features`` rows (zb ``[hidden]``, cx ``[d]``, cs ``[d]``); x ``[B, d]``."""
        zb, cx, cs = feats
        z = torch.nn.functional.gelu(torch.nn.functional.linear(x, self.in_x.weight, zb))
        out = torch.addcmul(self.nn(z), cx, x)
        if self.use_score and score is not None:
            out = torch.addcmul(out, cs, score)
        return out


class ZeroControl(nn.Module):
    """v = 0: the uncontrolled reference dynamics (for tests and baselines)."""

    def forward(self, x, s, score=None):
        """The zero control. Shapes: x [B, d], s scalar or [B], score ignored -> [B, d]."""
        return torch.zeros_like(x)


class FunctionControl(nn.Module):
    """Wrap a closed-form field ``fn(x, s) -> [B, d]`` (e.g. the exact optimal control of a Gaussian target)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x, s, score=None):
        """fn(x, s) with s broadcast to the batch. Shapes: x [B, d], s scalar or [B], score ignored -> [B, d]."""
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
        return self.fn(x, s)
