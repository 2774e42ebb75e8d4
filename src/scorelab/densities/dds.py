r"""Denoising Diffusion Sampler (DDS; Vargas, Grathwohl & Doucet 2023, Sec. 3 and eq. 19, exponential integrator).

Reference: the stationary Ornstein-Uhlenbeck process dY = -1/2 beta(t) Y dt + sigma sqrt(beta(t)) dB with
Y ~ N(0, sigma^2 I) at all times (beta linear 0.1 -> 10 in noise time t = T - s, as for DIS).  The sampler runs in
generative time s from N(0, sigma^2 I) with the h-transformed drift: reference drift + sigma^2 beta v, and
v -> grad log phi_s = grad log Q_s(x) + x / sigma^2 at the optimum (Q_s: target noised by the OU process).
The linear part is integrated exactly (exponential integrator), the control frozen over a step:

=================  ====================================================================================
a_k                exp(-1/2 int_{T - s_{k+1}}^{T - s_k} beta(t) dt)
forward F_k        N(x_{k+1}; a_k x_k + 2 sigma^2 (1 - a_k) v(x_k, s_k), sigma^2 (1 - a_k^2))
reference          N(x_{k+1}; a_k x_k, sigma^2 (1 - a_k^2)) (exact OU transitions), terminal N(0, sigma^2 I)
log w              log rho(x_K) - log N(x_K; 0, sigma^2) + sum_k [log N(x_{k+1}; a_k x_k, .) - log F_k]
init               v_init = (s/T) (grad log rho(x) + x / sigma^2)
=================  ====================================================================================
"""
from __future__ import annotations

import torch

from ..core.processes import VP
from .controlled import DiffusionSampler, normal_log_prob


class DDS(DiffusionSampler):
    """DDS with stationary std ``sigma`` and the VP beta schedule (``beta_min``, ``beta_max``) over T = ``t_max``."""

    name = "dds"

    def __init__(self, dim: int, steps: int = 100, sigma: float = 1.0, beta_min: float = 0.1,
                 beta_max: float = 10.0, t_max: float = 1.0, **kwargs):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma, self.vp = float(sigma), VP(beta_min, beta_max, t_max=t_max)
        super().__init__(dim, steps, t_max, **kwargs)
        B = self.vp.int_beta(self.t_max - self.s).to(torch.float64)  # int_0^{T - s_k} beta
        a = torch.exp(-0.5 * (B[:-1] - B[1:]))
        self.register_buffer("c1", a)
        self.register_buffer("c2", 2 * self.sigma**2 * (1 - a))
        self.register_buffer("std", self.sigma * torch.sqrt(-torch.expm1(-(B[:-1] - B[1:]))))

    def init_schedules(self):
        """(a0, b0) = (s/T, s/(T sigma^2)): v_init = (s/T)(grad log rho(x) + x/sigma^2)."""
        T, v = self.t_max, self.sigma**2
        return (lambda s: s / T), (lambda s: s / T / v)

    def prior_sample(self, n, generator, dtype):
        """X_0 ~ N(0, sigma^2 I) (the OU process' stationary law). Shapes: -> [n, d]."""
        return self.sigma * torch.randn(n, self.dim, generator=generator, dtype=dtype)

    def log_prior(self, x0):
        """log N(x0; 0, sigma^2 I). Shapes: x0 [B, d] -> [B]."""
        return normal_log_prob(x0, 0.0, self.sigma)

    def log_ref(self, xs):
        """log R(X): exact OU transitions N(x_{k+1}; a_k x_k, sigma^2 (1 - a_k^2)) and start N(0, sigma^2),
        minus the terminal log N(x_K; 0, sigma^2). Shapes: xs [K+1, B, d] -> [B]."""
        c1, std = self._coef("c1", xs)[:, None, None], self._coef("std", xs)[:, None, None]
        steps = normal_log_prob(xs[1:], c1 * xs[:-1], std).sum(0)
        return normal_log_prob(xs[0], 0.0, self.sigma) + steps - normal_log_prob(xs[-1], 0.0, self.sigma)
