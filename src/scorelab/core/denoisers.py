r"""One model currency: whatever a network predicts, samplers see ``.x0``, ``.eps``, ``.score`` (and ``.v``).

For x_t = alpha x_0 + sigma eps (Kingma et al. 2021; Salimans & Ho 2022; Karras et al. 2022):

==============  =====================================================================
eps from x0     eps = (x - alpha x0) / sigma
x0 from eps     x0 = (x - sigma eps) / alpha
score           score = grad log p_t(x) = -eps / sigma
v               v = alpha eps - sigma x0;  x0 = (alpha x - sigma v)/(alpha^2 + sigma^2),
                eps = (sigma x + alpha v)/(alpha^2 + sigma^2)
EDM (F)         with x^ = x/alpha, s = sigma/alpha (Karras et al. 2022, Table 1, eq. 7):
                D = c_skip x^ + c_out F(c_in x^; c_noise), c_skip = sd^2/(s^2+sd^2),
                c_out = s sd / sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = log(s)/4
==============  =====================================================================

All conversion formulas live in this module.  ``CountingModel`` counts network evaluations (NFE): one per call of
``x0``/``eps``/``score``/``v``, whatever the batch size.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .._utils import TimeLike, as_tensor, batch_time, bcast
from .processes import Discrete, ForwardProcess

PARAMETERIZATIONS = ("eps", "x0", "v", "score", "edm")
TIME_INPUTS = ("t", "index", "c_noise", "log_snr")


# -- conversions -------------------------------------------------------------------------------
def eps_from_x0(x, x0, alpha, sigma):
    """eps = (x - alpha x0) / sigma. Shapes: x, x0 [B, ...], alpha, sigma broadcastable to x -> [B, ...]."""
    return (x - alpha * x0) / sigma


def x0_from_eps(x, eps, alpha, sigma):
    """x0 = (x - sigma eps) / alpha. Shapes: x, eps [B, ...], alpha, sigma broadcastable to x -> [B, ...]."""
    return (x - sigma * eps) / alpha


def x0_from_v(x, v, alpha, sigma):
    """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2) (Salimans & Ho 2022). Shapes: x, v [B, ...], alpha, sigma
    broadcastable to x -> [B, ...]."""
    return (alpha * x - sigma * v) / (alpha**2 + sigma**2)


def eps_from_v(x, v, alpha, sigma):
    """eps = (sigma x + alpha v) / (alpha^2 + sigma^2) (Salimans & Ho 2022). Shapes: x, v [B, ...], alpha, sigma
    broadcastable to x -> [B, ...]."""
    return (sigma * x + alpha * v) / (alpha**2 + sigma**2)


def v_from_eps_x0(eps, x0, alpha, sigma):
    """v = alpha eps - sigma x0 (Salimans & Ho 2022). Shapes: eps, x0 [B, ...], alpha, sigma broadcastable -> [B,
    ...]."""
    return alpha * eps - sigma * x0


def edm_coefs(s: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM preconditioning (Karras et al. 2022, Table 1) for noise level s (of the scaled variable x/alpha)."""
    r = s**2 + sigma_data**2
    return sigma_data**2 / r, s * sigma_data / r.sqrt(), 1 / r.sqrt(), 0.25 * torch.log(s)


class DiffusionModel(nn.Module):
    """Base of the model currency. Subclasses override ``x0`` or ``eps`` (at least one); ``process`` is the
    forward process the model denoises.  Extra keyword arguments (``**cond``, e.g. ``y=labels``) are passed on."""

    process: ForwardProcess

    def _coefs(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)) in x's dtype and device, broadcast against x.  The hot path (a 0-d time already in
        x's dtype and device, as samplers pass it) skips the conversions that would return their input."""
        if not (isinstance(t, torch.Tensor) and t.dtype is x.dtype and t.device == x.device):
            t = as_tensor(t, x)
        a, s, _ = self.process.coefs(t)
        if a.ndim == 0 and a.dtype is x.dtype and s.dtype is x.dtype and a.device == x.device:
            return a, s  # what bcast returns for 0-d coefficients already in x's dtype and device
        return bcast(a, x), bcast(s, x)

    def x0(self, x: torch.Tensor, t: TimeLike, **cond) -> torch.Tensor:
        """Denoiser D(x, t) = E[x_0 | x_t = x] estimate, shape of ``x``."""
        if type(self).eps is DiffusionModel.eps:
            raise NotImplementedError(f"{type(self).__name__} must override x0 or eps")
        a, s = self._coefs(x, t)
        return x0_from_eps(x, self.eps(x, t, **cond), a, s)

    def eps(self, x: torch.Tensor, t: TimeLike, **cond) -> torch.Tensor:
        """Noise prediction eps(x, t), shape of ``x``."""
        if type(self).x0 is DiffusionModel.x0:
            raise NotImplementedError(f"{type(self).__name__} must override x0 or eps")
        a, s = self._coefs(x, t)
        return eps_from_x0(x, self.x0(x, t, **cond), a, s)

    def score(self, x: torch.Tensor, t: TimeLike, **cond) -> torch.Tensor:
        """Score grad_x log p_t(x) = -eps / sigma."""
        _, s = self._coefs(x, t)
        return -self.eps(x, t, **cond) / s

    def v(self, x: torch.Tensor, t: TimeLike, **cond) -> torch.Tensor:
        """Velocity v = alpha eps - sigma x0, from ``eps`` (one evaluation). Shapes: x [B, ...], t scalar or
        [B] -> [B, ...]."""
        a, s = self._coefs(x, t)
        eps = self.eps(x, t, **cond)
        return v_from_eps_x0(eps, x0_from_eps(x, eps, a, s), a, s)


def net_time_input(process: ForwardProcess, time_input: str, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """What a network (or a time-conditioned head) sees as time: ``[B]`` process time ``"t"``, DDPM step index
    ``"index"`` (t N), ``"log_snr"``, or EDM's ``"c_noise"`` = log(sigma/alpha)/4."""
    t = batch_time(t, x)
    if time_input == "t":
        return t
    if time_input == "index":
        return process.index(t)
    if time_input == "log_snr":
        return process.log_snr(t)
    return 0.25 * torch.log(process.sigma(t) / process.alpha(t))


def default_time_input(process: ForwardProcess, parameterization: str) -> str:
    """The time input a network gets by default: ``"c_noise"`` for EDM's F, ``"index"`` on a ``Discrete``
    process, else ``"t"``."""
    if parameterization == "edm":
        return "c_noise"
    return "index" if isinstance(process, Discrete) else "t"


class NetworkModel(DiffusionModel):
    """Wrap ``net(x, t_in, **cond) -> tensor shaped like x`` that predicts ``parameterization``.

    ``time_input`` chooses what the network sees as time: ``"t"`` (process time), ``"index"`` (t*N for a
    ``Discrete`` process, as in DDPM code), ``"c_noise"`` (EDM's log(sigma/alpha)/4), ``"log_snr"``.
    """

    def __init__(
        self,
        net: nn.Module,
        process: ForwardProcess,
        parameterization: str = "eps",
        time_input: str | None = None,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
        time_input = time_input or default_time_input(process, parameterization)
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; expected one of {TIME_INPUTS}")
        if time_input == "index" and not isinstance(process, Discrete):
            raise ValueError("time_input='index' needs a Discrete process")
        self.net, self.process, self.parameterization = net, process, parameterization
        self.time_input, self.sigma_data = time_input, float(sigma_data)

    def net_time(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """The ``[B]`` time input of the network for process time t."""
        return net_time_input(self.process, self.time_input, x, t)

    def forward(self, x: torch.Tensor, t: TimeLike, **cond) -> torch.Tensor:
        """Raw network output in its own parameterization (what the training loss compares)."""
        if self.parameterization == "edm":
            a, s = self._coefs(x, t)
            c_skip, c_out, c_in, _ = edm_coefs(s / a, self.sigma_data)
            return self.net(c_in * x / a, self.net_time(x, t), **cond)
        return self.net(x, self.net_time(x, t), **cond)

    def x0(self, x, t, **cond):
        """Denoiser x0_hat(x, t), converted from the network's parameterization (EDM: c_skip x/alpha + c_out
        F). Shapes: x [B, ...], t scalar or [B] -> [B, ...]."""
        a, s = self._coefs(x, t)
        out = self(x, t, **cond)
        p = self.parameterization
        if p == "x0":
            return out
        if p == "eps":
            return x0_from_eps(x, out, a, s)
        if p == "v":
            return x0_from_v(x, out, a, s)
        if p == "score":
            return x0_from_eps(x, -s * out, a, s)
        c_skip, c_out, _, _ = edm_coefs(s / a, self.sigma_data)
        return c_skip * x / a + c_out * out

    def eps(self, x, t, **cond):
        """Noise prediction eps_hat(x, t), converted from the network's parameterization. Shapes: x [B, ...],
        t scalar or [B] -> [B, ...]."""
        p = self.parameterization
        if p in ("x0", "edm"):
            return super().eps(x, t, **cond)
        a, s = self._coefs(x, t)
        out = self(x, t, **cond)
        if p == "eps":
            return out
        if p == "v":
            return eps_from_v(x, out, a, s)
        return -s * out  # score


class FunctionModel(DiffusionModel):
    """A model from a plain function ``fn(x, t) -> prediction`` (handy for tests and user code)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], process: ForwardProcess,
                 parameterization: str = "eps"):
        super().__init__()
        if parameterization not in ("eps", "x0", "score"):
            raise ValueError("FunctionModel parameterization must be 'eps', 'x0' or 'score'")
        self.fn, self.process, self.parameterization = fn, process, parameterization

    def x0(self, x, t, **cond):
        """x0_hat(x, t): ``fn`` itself for an x0 function, else converted from eps. Shapes: x [B, ...], t
        scalar or [B] -> [B, ...]."""
        if self.parameterization == "x0":
            return self.fn(x, as_tensor(t, x))
        return super().x0(x, t)

    def eps(self, x, t, **cond):
        """eps_hat(x, t): ``fn`` for an eps function, -sigma fn for a score function, else converted from x0.
        Shapes: x [B, ...], t scalar or [B] -> [B, ...]."""
        if self.parameterization == "eps":
            return self.fn(x, as_tensor(t, x))
        if self.parameterization == "score":
            _, s = self._coefs(x, t)
            return -s * self.fn(x, as_tensor(t, x))
        return super().eps(x, t)


class ClippedModel(DiffusionModel):
    """``model`` with its denoiser projected into the data's box: x0 = clamp(model.x0(x, t), low, high).

    For data supported in [low, high]^D the exact denoiser E[x_0 | x_t] lies in that box (a mean of points in a
    convex set), so the projection can only move an estimate towards it, coordinate by coordinate.  This is Ho et al.'s
    ``clip_denoised`` as a model: samplers, the probability-flow ODE and its likelihood all see the clipped x0 (and the
    eps, score, v derived from it), so it is a different model than the raw network.  It keeps a network that
    extrapolates badly off the data (huge eps at large |x|) from driving the flow to infinity."""

    def __init__(self, model: DiffusionModel, data_range: tuple[float, float] = (-1.0, 1.0)):
        super().__init__()
        low, high = (float(v) for v in data_range)
        if not high > low:
            raise ValueError(f"data_range must be (low, high) with high > low, got {data_range}")
        self.model, self.process, self.data_range = model, model.process, (low, high)

    def x0(self, x, t, **cond):
        """clamp(model.x0(x, t), low, high); eps, score and v follow from it. Shapes: x [B, ...], t scalar or
        [B] -> [B, ...]."""
        return self.model.x0(x, t, **cond).clamp(*self.data_range)


class CountingModel(DiffusionModel):
    """Counts network function evaluations (NFE): each call of x0/eps/score/v is one evaluation.

    The counter lives outside ``nn.Module.__setattr__`` (which costs tens of microseconds per call), so counting adds
    no measurable per-step overhead."""

    def __init__(self, model: DiffusionModel):
        super().__init__()
        self.model, self.process = model, model.process
        self.__dict__["_nfe"] = 0
        self.__dict__["_inner"] = model  # plain-attribute alias of the submodule: no nn.Module.__getattr__ per call

    @property
    def nfe(self) -> int:
        """Network evaluations counted since construction or the last ``reset()``."""
        return self.__dict__["_nfe"]

    def reset(self) -> None:
        """Set the evaluation counter back to 0."""
        self.__dict__["_nfe"] = 0

    def x0(self, x, t, **cond):
        """The wrapped model's x0, counted as one evaluation. Shapes: x [B, ...], t scalar or [B] -> [B, ...]."""
        self.__dict__["_nfe"] += 1
        return self._inner.x0(x, t, **cond)

    def eps(self, x, t, **cond):
        """The wrapped model's eps, counted as one evaluation. Shapes: x [B, ...], t scalar or [B] -> [B, ...]."""
        self.__dict__["_nfe"] += 1
        return self._inner.eps(x, t, **cond)

    def score(self, x, t, **cond):
        """The wrapped model's score, counted as one evaluation. Shapes: x [B, ...], t scalar or [B] -> [B, ...]."""
        self.__dict__["_nfe"] += 1
        return self._inner.score(x, t, **cond)

    def v(self, x, t, **cond):
        """The wrapped model's v, counted as one evaluation. Shapes: x [B, ...], t scalar or [B] -> [B, ...]."""
        self.__dict__["_nfe"] += 1
        return self._inner.v(x, t, **cond)
