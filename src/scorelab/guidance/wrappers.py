r"""Guidance as model-currency wrappers: discriminator, classifier, classifier-free and energy guidance.

Every wrapper is a ``DiffusionModel`` whose score is the base score plus a scaled correction c(x, t), switched on
only for t in a time window [t_lo, t_hi]; ``eps`` and ``x0`` follow from the same corrected score, so every sampler
uses a guided model unchanged (DESIGN.md, idea 2).

Notation
--------
==================  ===============================================================================================
``s(x, t)``         base score grad log p~_t(x);  guided score s + w m(t) c(x, t), m(t) = 1[t_lo <= t <= t_hi]
``eps``, ``x0``     eps = -sigma s_guided,  x0 = (x + sigma^2 s_guided) / alpha  (Tweedie; ``denoisers``)
``w``               guidance scale ``scale``
``l(x, t)``         discriminator logit; d = sigmoid(l), r = d / (1 - d) = e^l, c = grad_x l = grad log r
                    (discriminator guidance, Kim et al. 2023, eq. 8; thesis "Boosting methods ...", ch. 3, eq. 3.2)
``c_y``             classifier guidance: grad_x log p_phi(y | x_t, t) (Dhariwal & Nichol 2021, sec. 4.1)
``CFG``             eps_w = (1 + w) eps(x, t, y) - w eps(x, t, null) (Ho & Salimans 2022, eq. 6); w = 0 is the
                    conditional model, and with an exact classifier CFG(w) = classifier guidance with scale 1 + w
``E(x, t)``         energy guidance: c = -grad_x E (s - w grad E; e.g. Lu et al. 2023 "contrastive energy prediction")
==================  ===============================================================================================

Gradients of discriminators, classifiers and energies are taken with ``torch.enable_grad`` so guided sampling works
inside ``torch.no_grad`` (as the samplers and the CLI run).
"""
from __future__ import annotations

from typing import Callable

import torch

from .._utils import TimeLike, as_tensor, bcast
from ..core.denoisers import DiffusionModel
from ..nets.heads import ScalarField, scalar_field_grad


def check_window(window: tuple[float, float] | None) -> tuple[float, float] | None:
    """Validate a time window ``(t_lo, t_hi)`` with t_lo <= t_hi (None = always on)."""
    if window is None:
        return None
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (t_lo, t_hi) of numbers, got {window!r}") from None
    if not lo <= hi:
        raise ValueError(f"window needs t_lo <= t_hi, got ({lo}, {hi})")
    return lo, hi


def parse_window(text: str | None) -> tuple[float, float] | None:
    """Parse the CLI form ``"t_lo,t_hi"`` (empty or None = no window)."""
    if text is None or not str(text).strip():
        return None
    parts = str(text).split(",")
    if len(parts) != 2:
        raise ValueError(f"window must be written 't_lo,t_hi' (two numbers), got {text!r}")
    try:
        return check_window((float(parts[0]), float(parts[1])))
    except ValueError:
        raise ValueError(f"window must be written 't_lo,t_hi' (two numbers), got {text!r}") from None


class GuidedModel(DiffusionModel):
    """Base of score-correction guidance: score = base.score + w m(t) c(x, t); subclasses define ``correction``.

    Args:
        base: the model being guided.  scale: w (0 = the base model).  window: (t_lo, t_hi) where the correction is
        on (None = everywhere); per-example times ``[B]`` are masked per example, and the correction is not
        evaluated at all when no example lies in the window.
    """

    def __init__(self, base: DiffusionModel, scale: float = 1.0, window: tuple[float, float] | None = None):
        super().__init__()
        if not isinstance(base, DiffusionModel):
            raise ValueError(f"base must be a DiffusionModel, got {type(base).__name__}")
        self.base, self.process = base, base.process
        self.scale, self.window = float(scale), check_window(window)

    def correction(self, x: torch.Tensor, t: TimeLike, **cond) -> torch.Tensor:
        """Unscaled score correction c(x, t), shape of ``x``."""
        raise NotImplementedError

    def weight(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor | None:
        """w m(t) broadcast against ``x``, or None when it is zero for every example (correction skipped)."""
        if self.scale == 0.0:
            return None
        t = as_tensor(t, x)
        on = torch.ones_like(t, dtype=torch.bool) if self.window is None else (
            (t >= self.window[0]) & (t <= self.window[1]))
        if not bool(on.any()):
            return None
        return bcast(self.scale * on.to(x.dtype), x)

    def score(self, x, t, **cond):
        """Guided score s + w m(t) c(x, t); x ``[B, ...]``, t scalar or ``[B]`` -> shape of x."""
        s, w = self.base.score(x, t, **self.base_cond(cond)), self.weight(x, t)
        return s if w is None else s + w * self.correction(x, t, **cond)

    def eps(self, x, t, **cond):
        """Guided eps = base eps - sigma w m(t) c(x, t); x ``[B, ...]``, t scalar or ``[B]`` -> shape of x."""
        e, w = self.base.eps(x, t, **self.base_cond(cond)), self.weight(x, t)
        if w is None:
            return e
        _, sigma = self._coefs(x, t)
        return e - sigma * w * self.correction(x, t, **cond)

    def x0(self, x, t, **cond):
        """Guided x0 = base x0 + sigma^2 / alpha w m(t) c(x, t) (Tweedie); x ``[B, ...]``, t scalar or ``[B]`` -> shape
        of x."""
        x0, w = self.base.x0(x, t, **self.base_cond(cond)), self.weight(x, t)
        if w is None:
            return x0
        alpha, sigma = self._coefs(x, t)
        return x0 + sigma**2 / alpha * w * self.correction(x, t, **cond)

    def base_cond(self, cond: dict) -> dict:
        """Conditioning passed on to the base model (all of it by default)."""
        return cond


class DiscriminatorGuidance(GuidedModel):
    """Discriminator guidance (Kim et al. 2023; thesis ch. 3): c = grad_x log(d/(1-d)) = grad_x l(x, t).

    ``discriminator(x, t) -> [B]`` returns the logit l = log r (a ``TimeConditionedHead`` with one output, the
    exact ``guidance.discriminator.MixtureLogRatio`` or any function of the same form)."""

    def __init__(self, base: DiffusionModel, discriminator: ScalarField, scale: float = 1.0,
                 window: tuple[float, float] | None = None):
        super().__init__(base, scale, window)
        if not callable(discriminator):
            raise ValueError("discriminator must be callable as discriminator(x, t) -> logits [B]")
        self.discriminator = discriminator

    def correction(self, x, t, **cond):
        """c = grad_x l(x, t), the gradient of the discriminator's logit (= grad log of its density-ratio
        estimate); shape of x."""
        return scalar_field_grad(self.discriminator, x, t)


class EnergyGuidance(GuidedModel):
    """Energy guidance: score = s - w grad_x E(x, t) for ``energy(x, t) -> [B]`` (time-dependent or not)."""

    def __init__(self, base: DiffusionModel, energy: ScalarField, scale: float = 1.0,
                 window: tuple[float, float] | None = None):
        super().__init__(base, scale, window)
        if not callable(energy):
            raise ValueError("energy must be callable as energy(x, t) -> [B]")
        self.energy = energy

    def correction(self, x, t, **cond):
        """c = -grad_x E(x, t); shape of x."""
        return -scalar_field_grad(self.energy, x, t)


def _labels(y, x: torch.Tensor, what: str) -> torch.Tensor:
    if y is None:
        raise ValueError(f"{what} needs class labels: pass y=... to the constructor or as a keyword at call time")
    y = torch.as_tensor(y, device=x.device)
    if y.is_floating_point() or y.ndim > 1:
        raise ValueError(f"labels y must be an integer scalar or [B] tensor, got {y.dtype} {tuple(y.shape)}")
    y = y.long().expand(x.shape[0]) if y.ndim == 0 else y.long()
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels y must have B={x.shape[0]} entries, got {y.shape[0]}")
    return y


class ClassifierGuidance(GuidedModel):
    """Classifier guidance (Dhariwal & Nichol 2021): c = grad_x log softmax(classifier(x, t))_y.

    ``classifier(x, t) -> [B, C]`` logits of a noise-conditional classifier.  ``y`` (int or ``[B]``) is given here or
    as ``y=...`` at call time; it is not passed on to the (unconditional) base model."""

    def __init__(self, base: DiffusionModel, classifier: Callable[..., torch.Tensor], y=None, scale: float = 1.0,
                 window: tuple[float, float] | None = None):
        super().__init__(base, scale, window)
        if not callable(classifier):
            raise ValueError("classifier must be callable as classifier(x, t) -> logits [B, C]")
        self.classifier, self.y = classifier, y

    def base_cond(self, cond):
        """The conditioning without the class label ``y`` (the base model is unconditional)."""
        return {k: v for k, v in cond.items() if k != "y"}

    def correction(self, x, t, **cond):
        """c = grad_x log p_phi(y | x_t, t) for the labels ``y`` (scalar or ``[B]``); shape of x."""
        y = _labels(cond.get("y", self.y), x, "classifier guidance")

        def log_p_y(x_, t_):
            logits = self.classifier(x_, t_)
            if logits.ndim != 2 or logits.shape[0] != x_.shape[0]:
                raise ValueError(f"classifier must return logits [B, C], got shape {tuple(logits.shape)}")
            if torch.any(y >= logits.shape[1]) or torch.any(y < 0):
                raise ValueError(f"labels must be in 0..{logits.shape[1] - 1} for classifier guidance")
            return torch.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)

        return scalar_field_grad(log_p_y, x, t)


class ClassifierFreeGuidance(DiffusionModel):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): eps_w = (1 + w) eps(x, t, y) - w eps(x, t, null).

    ``model`` is a conditional model trained with label dropout (``TrainConfig.cond_drop_prob``) that takes
    ``y=labels``; ``null_label`` (default -1, ``nets.mlp`` convention) is the unconditional label.  Outside
    ``window`` the conditional model is used alone.  ``x0`` and ``score`` follow from ``eps``."""

    def __init__(self, model: DiffusionModel, y=None, scale: float = 1.0, window: tuple[float, float] | None = None,
                 null_label: int = -1):
        super().__init__()
        if not isinstance(model, DiffusionModel):
            raise ValueError(f"model must be a DiffusionModel, got {type(model).__name__}")
        self.model, self.process, self.y, self.null_label = model, model.process, y, int(null_label)
        self.scale, self.window = float(scale), check_window(window)

    weight = GuidedModel.weight

    def eps(self, x, t, **cond):
        """eps_w = (1 + w) eps(x, t, y) - w eps(x, t, null) inside the window, eps(x, t, y) outside; shape of x."""
        y = _labels(cond.pop("y", self.y), x, "classifier-free guidance")
        e_c, w = self.model.eps(x, t, y=y, **cond), self.weight(x, t)
        if w is None:
            return e_c
        e_u = self.model.eps(x, t, y=torch.full_like(y, self.null_label), **cond)
        return e_c + w * (e_c - e_u)


__all__ = ["GuidedModel", "DiscriminatorGuidance", "ClassifierGuidance", "ClassifierFreeGuidance", "EnergyGuidance",
           "check_window", "parse_window"]
