r"""Path Integral Sampler (PIS; Zhang & Chen 2022; source 004, "PIS" objective).

Reference: scaled Brownian motion from the origin, dX = sigma dB, X_0 = 0, so X_T ~ N(0, sigma^2 T I).  Controlled:

    dX = sigma u ds + sigma dB,  u = sigma v,  i.e. drift sigma^2 v;   v -> grad log phi_s at the optimum,

phi_s(x) = E[rho(X_T) / N(X_T; 0, sigma^2 T) | X_s = x] (the Schroedinger half-bridge / Foellmer drift).

=================  ====================================================================================
forward F_k        N(x_{k+1}; x_k + h sigma^2 v(x_k, s_k), sigma^2 h)   (Euler-Maruyama)
reference          N(x_{k+1}; x_k, sigma^2 h) (exact Brownian increments), terminal N(0, sigma^2 T)
log w              log rho(x_K) - log N(x_K; 0, sigma^2 T) + sum_k [log N(x_{k+1}; x_k, sigma^2 h) - log F_k]
init               v_init = (s/T) (grad log rho(x) + x / (sigma^2 T))   (the optimum at s = T)
=================  ====================================================================================

-E[log w] is the PIS objective E[int 1/2 |u|^2 ds + log N(X_T; 0, sigma^2 T)/rho(X_T)] (the martingale term has
mean zero); with u = 0 the weight is exactly rho(X_K) / N(X_K; 0, sigma^2 T) for every K.
"""
from __future__ import annotations

import math

import torch

from .controlled import DiffusionSampler, normal_log_prob


class PIS(DiffusionSampler):
    """PIS with diffusion scale ``sigma`` and horizon T = ``t_max``."""

    name = "pis"

    def __init__(self, dim: int, steps: int = 100, sigma: float = 1.0, t_max: float = 1.0, **kwargs):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        super().__init__(dim, steps, t_max, **kwargs)
        h = self.t_max / self.K
        self.register_buffer("c1", torch.ones(self.K, dtype=torch.float64))
        self.register_buffer("c2", torch.full((self.K,), h * self.sigma**2, dtype=torch.float64))
        self.register_buffer("std", torch.full((self.K,), self.sigma * math.sqrt(h), dtype=torch.float64))

    def init_schedules(self):
        """(a0, b0) = (s/T, s/(T sigma^2 T)): v_init = (s/T)(grad log rho(x) + x/(sigma^2 T)), the optimum at s = T."""
        T, v = self.t_max, self.sigma**2 * self.t_max
        return (lambda s: s / T), (lambda s: s / T / v)

    def prior_sample(self, n, generator, dtype):
        """X_0 = 0 (Brownian motion from the origin). Shapes: -> [n, d]."""
        return torch.zeros(n, self.dim, dtype=dtype)

    def log_prior(self, x0):
        """0: the point mass at the origin cancels against the reference's. Shapes: x0 [B, d] -> [B]."""
        return torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)  # delta_0 cancels against R

    def log_ref(self, xs):
        """log R(X): Brownian increments N(x_{k+1}; x_k, sigma^2 h) summed, minus the terminal log N(x_K; 0,
        sigma^2 T). Shapes: xs [K+1, B, d] -> [B]."""
        std = self._coef("std", xs)[:, None, None]
        steps = normal_log_prob(xs[1:], xs[:-1], std).sum(0)
        return steps - normal_log_prob(xs[-1], 0.0, self.sigma * math.sqrt(self.t_max))
