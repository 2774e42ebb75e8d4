r"""The KL loss of PIS and DIS through ``torchsde``: backpropagation through its solve, or the stochastic adjoint
(``torchsde.sdeint_adjoint``; Li, Wong, Chen & Duvenaud 2020), whose memory does not grow with the number of steps K
(the backward pass re-solves an adjoint SDE on the same Brownian path instead of storing the path).

Both use the reversible Heun scheme (Kidger, Foster, Li & Lyons 2021; one drift evaluation per step, like Euler):
it is algebraically reversible, so with ``adjoint_reversible_heun`` the adjoint gradient equals the backpropagated
gradient of the same discretization up to floating-point error.  (With Euler-Maruyama forward, torchsde's Ito
adjoint is only O(h)-close: on a 2-D Gaussian at K = 200 its DIS gradient was 180 % off, at K = 800 13 %.)

**Limitation (DIS).**  Reversible Heun has a parasitic mode that the stiff linear VP drift of DIS (beta up to 10)
excites: the states stay right but the running cost, evaluated at the scheme's auxiliary states, does not.  On a 2-D
Gaussian with the initial control the DIS objective came out 40.4 at K = 100, 1.6 at K = 400 and -0.84 at K = 1600
against -0.97 from the Euler chain (``controlled.kl_loss``); PIS agrees at K = 100.  ``DensityConfig`` therefore
offers ``loss="kl_adjoint"`` for PIS only; ``adjoint_kl_loss`` accepts DIS (gradients still equal backpropagation
through the same scheme) for such measurements.

The controlled SDE is augmented with its running cost c, so one solve gives the per-path KL objective
(source 004, "PIS" / "DIS" objectives; in generative time s in [0, T], X_T ~ target):

=================  ====================================================================================
PIS                dX = sigma^2 v ds + sigma dB,  X_0 = 0,       dc = 1/2 sigma^2 |v|^2 ds
                   loss = c_T + log N(X_T; 0, sigma^2 T I) - log rho(X_T)
DIS                dX = beta(T - s) (v + X / 2) ds + sqrt(beta(T - s)) dB,  X_0 ~ N(0, nu^2 I),
                   dc = (1/2 beta |v|^2 - 1/2 beta d) ds   (the -beta d / 2 is div of the reference drift)
                   loss = c_T + log N(X_0; 0, nu^2 I) - log rho(X_T)
v                  the sampler's network v(x, s, clip(grad log rho(x))) (control.py), u = sigma v
=================  ====================================================================================

E[loss] = KL(P^u | Q / Z) - log Z, the same objective as ``controlled.kl_loss`` (which differentiates through the
sampler's own discretization with the exact path log-weight, including the zero-mean martingale term that this
loss leaves out).  The scheme evaluates beta(T - s) at the step's times where dis.py uses the exact increment
of int beta.
The diffusion does not depend on the state (additive noise), so Ito and Stratonovich calculus coincide and the
Stratonovich reversible Heun scheme solves the same SDE.
"""
from __future__ import annotations

import math

import torch
import torchsde
from torch import nn

from .controlled import DiffusionSampler, PathSample, normal_log_prob
from .dis import DIS
from .pis import PIS


class ControlledSDE(nn.Module):
    """torchsde form (``f``, ``g``) of a PIS or DIS sampler's controlled SDE on the state [X ``[B, d]``, c ``[B, 1]``].
    """

    noise_type = "diagonal"
    sde_type = "stratonovich"  # = Ito here: additive noise

    def __init__(self, sampler: DiffusionSampler, target):
        super().__init__()
        if not isinstance(sampler, (PIS, DIS)):
            raise ValueError(f"the adjoint KL loss supports PIS and DIS samplers, got {sampler.name!r}")
        self.sampler, self.target, self.d = sampler, target, sampler.dim

    def _beta(self, s: torch.Tensor) -> torch.Tensor:
        sp = self.sampler
        return sp.vp.beta(torch.as_tensor(sp.t_max - s, dtype=torch.float64)).to(s.dtype)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Drift of [X, c] at generative time s. Shapes: y [B, d + 1] -> [B, d + 1]."""
        sp, x = self.sampler, y[:, : self.d]
        v = sp.net(x, s, sp.target_score(self.target, x))
        if isinstance(sp, PIS):
            s2 = sp.sigma**2
            return torch.cat([s2 * v, 0.5 * s2 * v.pow(2).sum(1, keepdim=True)], dim=1)
        b = self._beta(s)
        cost = 0.5 * b * (v.pow(2).sum(1, keepdim=True) - self.d)
        return torch.cat([b * (v + 0.5 * x), cost], dim=1)

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Diagonal diffusion: sigma (PIS) or sqrt(beta(T - s)) (DIS) on X, 0 on c. Shapes: y [B, d+1] -> [B, d+1]."""
        sp = self.sampler
        scale = sp.sigma if isinstance(sp, PIS) else self._beta(s).sqrt()
        out = torch.zeros_like(y)
        out[:, : self.d] = scale
        return out


def brownian(sampler: DiffusionSampler, n: int, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> torchsde.BrownianInterval:
    """A Brownian motion on [0, T] of size ``[n, d + 1]`` for ``adjoint_kl_loss``, seeded from ``generator``."""
    entropy = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return torchsde.BrownianInterval(t0=0.0, t1=sampler.t_max, size=(n, sampler.dim + 1), dtype=dtype,
                                     entropy=entropy, levy_area_approximation="none")


def adjoint_kl_loss(sampler: DiffusionSampler, target, n: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32, adjoint: bool = True,
                    bm: torchsde.BrownianInterval | None = None) -> tuple[torch.Tensor, PathSample]:
    """Per-path KL objective ``[n]`` (module docstring) by a torchsde reversible-Heun solve, K = ``sampler.K`` steps;
    gradients by the stochastic adjoint (``adjoint=True``) or by backpropagation through the solve.  ``bm`` fixes
    the Brownian path (``brownian``); else one is drawn from ``generator``.  The returned PathSample holds
    [X_0, X_T] and log_w = -loss (no martingale term: its logsumexp is not the unbiased path IS estimate)."""
    if target.dim != sampler.dim:
        raise ValueError(f"target has dimension {target.dim}, sampler was built for {sampler.dim}")
    sde = ControlledSDE(sampler, target)
    if isinstance(sampler, PIS):
        x0 = torch.zeros(n, sampler.dim, dtype=dtype)
        log_p0 = torch.zeros(n, dtype=dtype)
    else:
        x0 = sampler.prior_sample(n, generator, dtype)
        log_p0 = sampler.log_prior(x0)
    bm = bm if bm is not None else brownian(sampler, n, generator, dtype)
    y0 = torch.cat([x0, torch.zeros(n, 1, dtype=dtype)], dim=1)
    ts = torch.tensor([0.0, sampler.t_max], dtype=dtype)
    dt = sampler.t_max / sampler.K
    if adjoint:
        params = tuple(p for p in sampler.net.parameters() if p.requires_grad)
        ys = torchsde.sdeint_adjoint(sde, y0, ts, bm=bm, method="reversible_heun", dt=dt, adjoint_params=params,
                                     adjoint_method="adjoint_reversible_heun")
    else:
        ys = torchsde.sdeint(sde, y0, ts, bm=bm, method="reversible_heun", dt=dt)
    xT, cost = ys[-1, :, : sampler.dim], ys[-1, :, -1]
    if isinstance(sampler, PIS):
        terminal = normal_log_prob(xT, 0.0, sampler.sigma * math.sqrt(sampler.t_max))
    else:
        terminal = log_p0
    loss = cost + terminal - target.log_prob_unnorm(xT).to(dtype)
    path = PathSample(torch.stack([x0, xT.detach()]), -loss.detach(), torch.zeros_like(loss).detach())
    return loss, path


def kl_adjoint_loss(sampler: DiffusionSampler, target, n: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, PathSample]:
    """The training loss ``"kl_adjoint"`` (train.py): ``adjoint_kl_loss`` with the stochastic adjoint, per-example
    ``[B]``; memory independent of the number of steps K."""
    return adjoint_kl_loss(sampler, target, n, generator, dtype, adjoint=True)
