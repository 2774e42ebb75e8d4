r"""Import a k-diffusion / EDM denoiser D(x, sigma) as a scorelab model on the ``EDM`` process.

Notation (Karras et al. 2022, Table 1 and eq. 7; k-diffusion's ``Denoiser`` / ``VDenoiser`` wrappers)
---------------------------------------------------------------------------------------------------
==================  ================================================================================================
``D(x, sigma)``     the denoiser: E[x_0 | x_sigma = x], x_sigma = x_0 + sigma eps (alpha = 1, sigma(t) = t)
``sigma_data``      data standard deviation of the preconditioning (stored on the ``EDM`` process)
``sigmas``          the noise levels the model was trained on: (sigma_min, sigma_max), or a tensor of levels
                    (k-diffusion's discrete ``model.sigmas``) whose min and max are taken
``y``               scorelab's class-label keyword, passed to D as ``label_key`` (``class_labels`` for EDM nets)
==================  ================================================================================================

The imported model is an x0 model (``.x0`` = D); eps and score follow from the model currency.  Samplers, likelihoods
and guidance run on it unchanged (DESIGN.md, idea 2).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .._utils import TimeLike, batch_time
from ..core.denoisers import DiffusionModel
from ..core.processes import EDM


class KDiffusionModel(DiffusionModel):
    """``denoiser(x, sigma [B], **cond) -> x0`` (k-diffusion / EDM convention) on an ``EDM`` process."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], process: EDM, label_key: str | None = None):
        super().__init__()
        if not callable(denoiser):
            raise ValueError(f"denoiser must be callable as D(x, sigma), got {type(denoiser).__name__}")
        self.process, self.label_key = process, label_key
        if isinstance(denoiser, nn.Module):
            self.denoiser = denoiser
        else:
            self.__dict__["denoiser"] = denoiser

    def x0(self, x: torch.Tensor, t: TimeLike, **cond) -> torch.Tensor:
        """D(x, sigma = t) (EDM: sigma(t) = t). Shapes: x [B, ...], t scalar or [B] -> [B, ...]."""
        if self.label_key is not None and "y" in cond:
            cond[self.label_key] = cond.pop("y")
        return self.denoiser(x, batch_time(t, x), **cond)


def _sigma_range(sigmas) -> tuple[float, float]:
    if isinstance(sigmas, torch.Tensor) and sigmas.numel() > 2:
        sigmas = (float(sigmas.min()), float(sigmas.max()))
    try:
        lo, hi = (float(v) for v in sigmas)
    except (TypeError, ValueError):
        raise ValueError(f"sigmas must be (sigma_min, sigma_max) or a tensor of noise levels, got {sigmas!r}") \
            from None
    if not 0 < lo < hi < math.inf:
        raise ValueError(f"sigmas must satisfy 0 < sigma_min < sigma_max < inf, got ({lo}, {hi})")
    return lo, hi


def from_k_diffusion(denoiser: Callable[..., torch.Tensor], sigma_data: float = 0.5, sigmas=(0.002, 80.0), *,
                     label_key: str | None = None) -> KDiffusionModel:
    """A k-diffusion denoiser (any callable D(x, sigma) -> x0, e.g. ``k_diffusion.layers.Denoiser``) as a scorelab
    model on ``EDM(sigma_min, sigma_max, sigma_data)``; ``sigmas`` as in the module notation; ``label_key``: the
    keyword D takes class labels under (scorelab passes ``y``)."""
    lo, hi = _sigma_range(sigmas)
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
    return KDiffusionModel(denoiser, EDM(lo, hi, float(sigma_data)), label_key)


def from_edm(net: nn.Module, sigma_min: float | None = None, sigma_max: float | None = None) -> KDiffusionModel:
    """An EDM-preconditioned network (NVlabs ``EDMPrecond``: ``net(x, sigma, class_labels=None) -> D``, attributes
    ``sigma_data``, ``sigma_min``, ``sigma_max``) as a scorelab model.  EDMPrecond's defaults (0, inf) are not a
    sampling range: they are replaced by EDM's 0.002 and 80 unless ``sigma_min`` / ``sigma_max`` are given."""
    if not isinstance(net, nn.Module):
        raise ValueError(f"from_edm needs a torch module, got {type(net).__name__}")
    lo = sigma_min if sigma_min is not None else float(getattr(net, "sigma_min", 0.0) or 0.0)
    hi = sigma_max if sigma_max is not None else float(getattr(net, "sigma_max", math.inf))
    lo = lo if lo > 0 else 0.002
    hi = hi if math.isfinite(hi) else 80.0
    return from_k_diffusion(net, float(getattr(net, "sigma_data", 0.5)), (lo, hi), label_key="class_labels")


__all__ = ["KDiffusionModel", "from_k_diffusion", "from_edm"]
