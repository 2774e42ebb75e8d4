"""Load a model to sample from: a scorelab checkpoint or an exact Gaussian-mixture oracle.

Bad input raises ``ValueError``; only ``cli`` knows about exit codes.
"""
from __future__ import annotations

import os
from typing import Any


def oracle_mixture(spec: str):
    """``gmm:ring8`` | ``gmm:grid9`` | ``gmm:grid25`` | ``gmm:random-K-D-SEED`` -> GaussianMixture."""
    import torch

    from ..core import analytic

    name = spec.split(":", 1)[1] if spec.startswith("gmm:") else spec
    if name == "ring8":
        return analytic.ring_mixture(8, 2.0, 0.1)
    if name == "grid9":
        return analytic.grid_mixture(3, 5.0, 0.3)
    if name == "grid25":
        return analytic.grid_mixture(5, 1.0, 0.05**2)
    if name.startswith("random-"):
        try:
            k, d, seed = (int(v) for v in name.split("-")[1:])
        except ValueError:
            raise ValueError(f"bad oracle {spec!r}: expected gmm:random-K-D-SEED, e.g. gmm:random-5-8-0") from None
        return analytic.random_mixture(k, d, generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"unknown oracle {spec!r}; expected gmm:ring8, gmm:grid9, gmm:grid25 or gmm:random-K-D-SEED")


def make_process(name: str, **params):
    from ..core.processes import Discrete, process_from_config

    if name.startswith("discrete"):
        # discrete:linear:1000
        parts = name.split(":")
        sched = parts[1] if len(parts) > 1 else "linear"
        n = int(parts[2]) if len(parts) > 2 else 1000
        return Discrete.from_schedule(sched, n, **params)
    return process_from_config({"name": name, **params})


def load_any_model(args) -> Any:
    """A model from ``--checkpoint`` or an exact oracle from ``--model gmm:...`` (+ ``--process``); with
    ``--clip-x0 LO HI`` its denoiser is projected into [LO, HI] (``ClippedModel``)."""
    if getattr(args, "checkpoint", None):
        from .checkpoints import load_model

        if not os.path.exists(args.checkpoint):
            raise ValueError(f"checkpoint {args.checkpoint!r} does not exist")
        model = load_model(args.checkpoint, ema=not getattr(args, "no_ema", False))
    elif getattr(args, "model", None):
        model = oracle_mixture(args.model).as_model(make_process(args.process))
    else:
        raise ValueError("give --checkpoint DIR or --model gmm:NAME")
    if getattr(args, "clip_x0", None):
        from ..core.denoisers import ClippedModel

        clipped = ClippedModel(model, tuple(args.clip_x0))
        for attr in ("event_shape", "mixture"):  # the sample shape and an oracle's data law stay the same
            if hasattr(model, attr):
                setattr(clipped, attr, getattr(model, attr))
        model = clipped
    return model


def model_event_shape(model, args) -> tuple[int, ...]:
    if hasattr(model, "mixture"):
        return tuple(model.mixture.event_shape)
    shape = getattr(model, "event_shape", None)
    if shape is None:
        raise ValueError("cannot tell the sample shape of this model; the checkpoint JSON must store event_shape")
    return tuple(shape)
