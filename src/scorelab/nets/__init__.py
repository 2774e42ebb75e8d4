"""Networks: ``MLP`` / ``StepEmbedMLP`` (vectors), ``UNet`` (images), heads (classifier, discriminator, critic).

Every net follows ``net(x, t_in, **cond) -> tensor shaped like x`` (heads return logits ``[B]`` or ``[B, C]``), has
``config()`` returning JSON-serialisable constructor arguments plus ``name``, and is rebuilt by
``build_net(config)``; checkpoints store that config (``scorelab.io.checkpoints``).  ``register_net`` adds a class.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .heads import CriticMLP, ImageHead, VectorHead
from .mlp import MLP, ConfigMixin, SinusoidalEmbedding, StepEmbedMLP
from .unet import UNET_PRESETS, UNet, count_parameters, unet_preset

NETS: dict[str, type[nn.Module]] = {}


def register_net(cls: type[nn.Module]) -> type[nn.Module]:
    """Register a net class under ``cls.net_name`` (usable as a decorator); its ``config()`` must include ``name``."""
    name = getattr(cls, "net_name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a string class attribute net_name to be registered")
    if name in NETS and NETS[name] is not cls:
        raise ValueError(f"a different net is already registered as {name!r}")
    NETS[name] = cls
    return cls


for _cls in (MLP, StepEmbedMLP, UNet, VectorHead, ImageHead, CriticMLP):
    register_net(_cls)


def build_net(config: dict[str, Any]) -> nn.Module:
    """Build a net from ``net.config()`` (or a YAML/JSON mapping with ``name`` and constructor arguments; for the
    UNet ``preset: <name>`` starts from ``UNET_PRESETS[name]``, other keys override it)."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}; expected one of {sorted(NETS)}")
    if "preset" in cfg:
        if name != "unet":
            raise ValueError(f"preset is a UNet option, not one of net {name!r}")
        cfg = unet_preset(cfg.pop("preset"), **cfg)
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}
    try:
        return NETS[name](**cfg)
    except TypeError as e:
        raise ValueError(f"bad parameters for net {name!r}: {e}") from None


__all__ = ["MLP", "StepEmbedMLP", "UNet", "VectorHead", "ImageHead", "CriticMLP", "SinusoidalEmbedding",
           "ConfigMixin", "NETS", "register_net", "build_net", "UNET_PRESETS", "unet_preset", "count_parameters"]
