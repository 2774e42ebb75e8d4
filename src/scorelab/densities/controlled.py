r"""Controlled SDEs in discrete time: simulation returns samples *and* path log-weights (DESIGN.md, idea 4).

A sampler is a Gaussian Markov chain X_0 -> X_1 -> ... -> X_K on the grid s_k = k T / K (generative time,
X_0 ~ prior, X_K ~ target, as in source 004 "DIS vs. PIS").  Every method discretizes its controlled SDE
dX = (sigma_bar u - f_bar) ds + sigma_bar dB with a kernel of the form

    F_k(x_{k+1} | x_k) = N(x_{k+1}; c1_k x_k + c2_k v(x_k, s_k), std_k^2 I),

and a *reference* path density R (the target-free part of the path measure it is compared with).  With
Q~(X) = rho(X_K) R(X) and P^u(X) = pi(X_0) prod_k F_k, the path log-weight (log Radon-Nikodym derivative)

    log w(X) = log rho(X_K) + log R(X) - log pi(X_0) - sum_k log F_k(X_{k+1} | X_k)

satisfies E_{P^u}[w] = Z *exactly* for every K, because Q~ / Z is a normalized path density (discrete-time
importance sampling on path space; Richter & Berner 2024, Sec. 2; Vargas et al. 2023, eq. 19).  Hence
log Z-hat = logsumexp(log w) - log n is consistent and E[log w] <= log Z is the ELBO; the KL loss is
E[-log w] = KL(P^u | Q~/Z) - log Z (source 004, "reverse KL objective").

Notation
--------
=============  ==================================================================================
``K``          number of steps (``steps``);  h = T / K
``xs``         path ``[K+1, B, d]``
``v``          network field (control.py); u = sigma_bar v up to the method's scaling
``log_q``      log rho(X_K) + log R(X)        (target path measure, unnormalized)
``log_p``      log pi(X_0) + sum_k log F_k    (sampler path measure)
``log_w``      log_q - log_p
=============  ==================================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .control import ControlNet


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor | float, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, std^2 I) summed over the last dim; std broadcastable to x[..., :1]."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    z = (x - mean) / std
    d = x.shape[-1]
    return -0.5 * z.pow(2).sum(-1) - d * torch.log(std).squeeze(-1) - 0.5 * d * math.log(2 * math.pi)


@dataclass
class PathSample:
    """A batch of simulated paths.  xs ``[K+1, B, d]``; log_q, log_p, log_w ``[B]``; scores ``[K, B, d]``
    (clipped target scores at xs[:-1], the network's inputs, kept for the log-variance loss)."""

    xs: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    scores: torch.Tensor | None = None

    @property
    def x(self) -> torch.Tensor:
        """Samples X_K ``[B, d]``."""
        return self.xs[-1]

    @property
    def log_w(self) -> torch.Tensor:
        """Path log-weights log w = log q - log p (target and reference over the forward path) ``[B]``;
        logsumexp of them estimates log Z."""
        return self.log_q - self.log_p


class DiffusionSampler(nn.Module):
    """Base class of DIS, PIS, DDS.  Subclasses fill the buffers ``c1, c2, std`` ``[K]`` (forward kernel) and
    implement ``prior_sample``, ``log_prior``, ``log_ref`` and ``init_schedules``.

    Args:
        dim: d.  steps: K.  t_max: T.  net: control network v(x, s, score) (default: ``ControlNet`` with the
        method's initialization).  score_clip: clip of the target score fed to the network (PIS uses 1e2).
        hidden, layers, n_freq: width, depth and number of Fourier time features of the default ``ControlNet``.
    """

    name = "sampler"

    def __init__(self, dim: int, steps: int, t_max: float = 1.0, net: nn.Module | None = None,
                 score_clip: float = 100.0, hidden: int = 64, layers: int = 2, n_freq: int = 16):
        super().__init__()
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        if not t_max > 0:
            raise ValueError(f"t_max must be > 0, got {t_max}")
        self.dim, self.K, self.t_max, self.score_clip = int(dim), int(steps), float(t_max), float(score_clip)
        self.register_buffer("s", torch.linspace(0, self.t_max, self.K + 1, dtype=torch.float64))
        if net is None:
            a0, b0 = self.init_schedules()
            net = ControlNet(self.dim, hidden=hidden, layers=layers, t_max=self.t_max, n_freq=n_freq, a0=a0, b0=b0)
        self.net = net

    # -- method hooks ---------------------------------------------------------------------------
    def init_schedules(self):
        """(a0, b0): the initial field v_init(x, s) = a0(s) grad log rho(x) + b0(s) x."""
        return None, None

    def prior_sample(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
        """n draws of the start X_0 of the generative process. Shapes: -> [n, d] of ``dtype``."""
        raise NotImplementedError

    def log_prior(self, x0: torch.Tensor) -> torch.Tensor:
        """log density of the start distribution at x0. Shapes: x0 [B, d] -> [B]."""
        raise NotImplementedError

    def log_ref(self, xs: torch.Tensor) -> torch.Tensor:
        """log R(X) ``[B]`` for a path ``[K+1, B, d]``."""
        raise NotImplementedError

    # -- generic machinery ----------------------------------------------------------------------
    def _coef(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return getattr(self, name).to(dtype=like.dtype, device=like.device)

    def target_score(self, target, x: torch.Tensor) -> torch.Tensor:
        """clip(grad log rho(x)) ``[B, d]``; non-finite entries are zeroed."""
        g = target.score(x)
        return torch.nan_to_num(g, nan=0.0, posinf=self.score_clip, neginf=-self.score_clip).clamp(
            -self.score_clip, self.score_clip)

    def _control(self, s: torch.Tensor):
        """v(x, s_k) as a function of (x, k, score); time features computed once for the grid s ``[K]`` when the
        network offers ``time_features`` (ControlNet), else a plain call per step."""
        net = self.net
        if hasattr(net, "time_features"):
            feats = list(zip(*(f.unbind(0) for f in net.time_features(s)), strict=True))
            return lambda x, k, sc: net.step(x, feats[k], sc)
        return lambda x, k, sc: net(x, s[k], sc)

    def simulate(self, target, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 keep_scores: bool = False, noise_scale: float = 1.0) -> PathSample:
        """Euler / exponential-integrator rollout of n paths; differentiable if grad mode is on (KL loss).

        All increments xi ``[K, n, d]`` are drawn in one call; log F_k(X_{k+1} | X_k) = -|xi_k|^2 / 2 - d log std_k
        - d/2 log 2 pi does not involve the network, so log p is summed once after the loop.  ``noise_scale`` != 1
        simulates the *behaviour* process with kernel std ``noise_scale * std_k`` (exploration for the off-policy
        log-variance loss); log_p is then the behaviour's path density."""
        if target.dim != self.dim:
            raise ValueError(f"target has dimension {target.dim}, sampler was built for {self.dim}")
        if not noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {noise_scale}")
        x = self.prior_sample(n, generator, dtype)
        xi = torch.randn((self.K, n, self.dim), generator=generator, dtype=dtype, device=x.device)
        std = self._coef("std", x) * noise_scale
        noise = xi * std[:, None, None]
        c1, c2 = self.c1.tolist(), self.c2.tolist()  # Python floats: cheapest scalar products
        v_at = self._control(self._coef("s", x)[:-1])
        xs, scores = [x], []
        for k in range(self.K):
            sc = self.target_score(target, x)
            x = torch.add(x if c1[k] == 1.0 else c1[k] * x, v_at(x, k, sc), alpha=c2[k]).add_(noise[k])  # F_k
            xs.append(x)
            if keep_scores:
                scores.append(sc.detach())
        xs_t = torch.stack(xs)
        log_f = -0.5 * xi.pow(2).sum((0, 2)) - self.dim * (torch.log(std).sum() + 0.5 * self.K * math.log(2 * math.pi))
        log_q = target.log_prob_unnorm(x).to(dtype) + self.log_ref(xs_t)
        log_p = self.log_prior(xs_t[0]) + log_f
        return PathSample(xs_t, log_q, log_p, torch.stack(scores) if keep_scores else None)

    def log_weight(self, target, path: PathSample) -> tuple[torch.Tensor, torch.Tensor]:
        """Recompute log p(X) (and log w) on a *fixed* (detached) path with the current network: one batched
        network call over all K B points, gradients only through v (log-variance loss, no backprop through time).
        Returns (log_w ``[B]``, log_p ``[B]``)."""
        xs = path.xs.detach()
        s = self._coef("s", xs)[:-1, None]  # [K, 1]: time features once per step
        sc = path.scores if path.scores is not None else torch.stack([self.target_score(target, x) for x in xs[:-1]])
        v = self.net(xs[:-1], s, sc)  # [K, B, d]
        c1, c2, std = (self._coef(k, xs)[:, None, None] for k in ("c1", "c2", "std"))
        log_f = normal_log_prob(xs[1:], c1 * xs[:-1] + c2 * v, std).sum(0)
        log_p = self.log_prior(xs[0]) + log_f
        return path.log_q.detach() - log_p, log_p

    @torch.no_grad()
    def sample(self, target, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               batch: int = 4096) -> PathSample:
        """n paths without gradients, in chunks of ``batch`` (xs keeps only [X_0, X_K] to save memory)."""
        parts = []
        for i in range(0, n, batch):
            p = self.simulate(target, min(batch, n - i), generator, dtype)
            parts.append(PathSample(p.xs[[0, -1]], p.log_q, p.log_p))
        return PathSample(torch.cat([p.xs for p in parts], 1), torch.cat([p.log_q for p in parts]),
                          torch.cat([p.log_p for p in parts]))


# ----------------------------------------------------------------------------------------------
# Losses (per-example values; the caller reduces with .mean())
# ----------------------------------------------------------------------------------------------
def kl_loss(sampler: DiffusionSampler, target, n: int, generator: torch.Generator | None = None,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, PathSample]:
    """Reverse KL on path space by differentiating through the rollout: per-example -log w ``[B]``
    (mean = KL(P^u | Q) - log Z; source 004, DIS / PIS objectives)."""
    path = sampler.simulate(target, n, generator, dtype)
    return -path.log_w, path


def log_variance_loss(sampler: DiffusionSampler, target, n: int, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32, explore: float = 1.0) -> tuple[torch.Tensor, PathSample]:
    """Log-variance loss (Richter & Berner 2024, eq. 8): per-example (log w - mean log w)^2 ``[B]`` on detached
    trajectories; mean = Var(log w).  Its gradient equals that of the variance since the centred residuals sum to
    zero.  The paths come from the detached sampler itself (``explore`` = 1, on-policy) or from a behaviour process
    with ``explore`` times its noise (off-policy exploration: the loss vanishes only at the optimal control for any
    reference path measure, Richter & Berner 2024, Sec. 3); log w is always that of the current sampler."""
    with torch.no_grad():
        path = sampler.simulate(target, n, generator, dtype, keep_scores=True, noise_scale=explore)
    log_w, log_p = sampler.log_weight(target, path)
    path = PathSample(path.xs, path.log_q, log_p.detach(), None)
    return (log_w - log_w.mean().detach()).pow(2), path


LOSSES = {"kl": kl_loss, "lv": log_variance_loss}
