r"""Time-reversed Diffusion Sampler (DIS; Berner, Richter & Ullrich 2022, source 004, "DIS" objective).

Reference: the VP noising SDE dY = -1/2 beta(t) Y dt + sqrt(beta(t)) dB started at the target (t = 0: data,
t = T: noise), beta linear from 0.1 to 10.  The sampler runs in generative time s = T - t from the prior
N(0, nu^2 I) ~ p_{Y_T}:

    dX = (sigma_bar u - f_bar)(X, s) ds + sigma_bar dB,   u = sigma_bar v,  so drift = beta(T - s) (v + x / 2),

and v -> grad log p_{Y_{T-s}} at the optimum (the score of the noised target, source 004 "u* = sigma^T grad log
p_Y").  Euler-Maruyama both ways (Richter & Berner 2024, App. A) in the time variable B(t) = int_0^t beta, i.e. with
the step's exact increment dB_k = B(T - s_k) - B(T - s_{k+1}) in place of h beta(.) in *both* kernels (with
h beta(t_k) forward and h beta(t_{k+1}) backward the variances differ by a factor up to 5 near the data end, where
beta is small, and even the exact optimal control gives Var(log w) ~ 18 at K = 25 on a 2-D Gaussian):

=================  ====================================================================================
forward F_k        N(x_{k+1}; (1 + dB_k / 2) x_k + dB_k v(x_k, s_k), dB_k)
reference B_k      N(x_k; (1 - dB_k / 2) x_{k+1}, dB_k)  (Euler noising step)
log w              log rho(x_K) + sum_k log B_k - log N(x_0; 0, nu^2 I) - sum_k log F_k
init (source 004)  v_init = (s/T) grad log rho(x) - (1 - s/T) x / nu^2  (prior -> target score interpolation)
=================  ====================================================================================

In continuous time -E[log w] is the DIS objective E[int (1/2 |u|^2 + div f_bar) ds + log N(X_0)/rho(X_T)].
"""
from __future__ import annotations

import torch

from ..core.processes import VP
from .controlled import DiffusionSampler, normal_log_prob


class DIS(DiffusionSampler):
    """DIS with a VP reference (``beta_min``, ``beta_max``, T = ``t_max``) and prior N(0, ``prior_std``^2 I)."""

    name = "dis"

    def __init__(self, dim: int, steps: int = 100, beta_min: float = 0.1, beta_max: float = 10.0,
                 t_max: float = 1.0, prior_std: float = 1.0, **kwargs):
        if not prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {prior_std}")
        self.vp, self.prior_std = VP(beta_min, beta_max, t_max=t_max), float(prior_std)
        super().__init__(dim, steps, t_max, **kwargs)
        B = self.vp.int_beta(self.t_max - self.s).to(torch.float64)  # int_0^{T - s_k} beta, k = 0..K
        dB = B[:-1] - B[1:]  # int of beta over step k (both kernels use the same increment)
        self.register_buffer("c1", 1 + 0.5 * dB)
        self.register_buffer("c2", dB)
        self.register_buffer("std", dB.sqrt())
        self.register_buffer("r1", 1 - 0.5 * dB)
        self.register_buffer("rstd", dB.sqrt())

    def init_schedules(self):
        """(a0, b0) = (s/T, -(1 - s/T)/nu^2): v_init interpolates the prior's score -x/nu^2 (s = 0) and grad
        log rho (s = T)."""
        T, nu2 = self.t_max, self.prior_std**2
        return (lambda s: s / T), (lambda s: -(1 - s / T) / nu2)

    def prior_sample(self, n, generator, dtype):
        """X_0 ~ N(0, prior_std^2 I). Shapes: -> [n, d]."""
        return self.prior_std * torch.randn(n, self.dim, generator=generator, dtype=dtype)

    def log_prior(self, x0):
        """log N(x0; 0, prior_std^2 I). Shapes: x0 [B, d] -> [B]."""
        return normal_log_prob(x0, 0.0, self.prior_std)

    def mc_optimal_control(self, target, x: torch.Tensor, k: int, n_mc: int,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """Monte-Carlo estimate of the optimal control v*(x, s_k) = grad log p_t(x), t = T - s_k, from rho alone:
        Tweedie, (alpha_t E[Y | x] - x) / sigma_t^2, with E[Y | x] by self-normalized importance sampling from the
        proposal y ~ N(x / alpha_t, sigma_t^2 / alpha_t^2 I) (the likelihood in y), weights rho(y) (the MC score
        estimator of iDEM, Akhound-Sadegh et al. 2024).  x ``[B, d]`` -> ``[B, d]``; ``n_mc`` draws per point."""
        t = torch.as_tensor(self.t_max - float(self.s[k]), dtype=torch.float64)
        a, sig = float(self.vp.log_alpha(t).exp()), float(self.vp.log_sigma(t).exp())
        y = x[:, None, :] / a + (sig / a) * torch.randn(x.shape[0], n_mc, x.shape[1], generator=generator,
                                                        dtype=x.dtype, device=x.device)
        log_rho = target.log_prob_unnorm(y.reshape(-1, x.shape[1])).reshape(x.shape[0], n_mc).to(x.dtype)
        w = torch.softmax(torch.nan_to_num(log_rho, nan=-torch.inf), dim=1)[..., None]
        return (a * (w * y).sum(1) - x) / sig**2

    def log_ref(self, xs):
        """log R(X): the reference's backward VP kernels N(x_k; (1 - dB_k/2) x_{k+1}, dB_k) summed over
        steps. Shapes: xs [K+1, B, d] -> [B]."""
        r1, rstd = self._coef("r1", xs)[:, None, None], self._coef("rstd", xs)[:, None, None]
        return normal_log_prob(xs[:-1], r1 * xs[1:], rstd).sum(0)
