r"""Load a model to sample from: a scorelab checkpoint or an exact Gaussian-mixture oracle, as one explicit value.

Notation
--------
================  ================================================================================================
``LoadedModel``   (model, event_shape, oracle, source): the model (``DiffusionModel`` currency), the shape of one
                  sample ``(d,)`` or ``(C, H, W)``, the exact data law when the model is an oracle (else ``None``),
                  and where it came from (checkpoint path or ``gmm:...`` spec + process)
``DIR``           a scorelab run folder / checkpoint, or a diffusers folder (``interop.diffusers``)
``gmm:NAME``      ``ring8`` | ``grid9`` | ``grid25`` | ``random-K-D-SEED``: ``core.analytic`` mixtures
``--process``     ``vp`` | ``subvp`` | ``vp_cosine`` | ``ve`` | ``edm`` | ``discrete:SCHEDULE:N``
================  ================================================================================================

Nothing is attached to models: the sample shape and the oracle travel in the ``LoadedModel``.  Bad input raises
``ValueError``; only ``cli`` knows about exit codes.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.analytic import GaussianMixture
from ..core.denoisers import DiffusionModel


@dataclass(frozen=True)
class LoadedModel:
    """A model to sample from with what the caller needs to know about it (module docstring)."""

    model: DiffusionModel
    event_shape: tuple[int, ...]
    oracle: GaussianMixture | None
    source: str

    @property
    def dtype(self) -> torch.dtype:
        """Sampling dtype: exact oracles sample in float64 (their densities are exact), networks in float32."""
        return torch.float64 if self.oracle is not None else torch.float32


def oracle_mixture(spec: str) -> GaussianMixture:
    """``gmm:ring8`` | ``gmm:grid9`` | ``gmm:grid25`` | ``gmm:random-K-D-SEED`` -> GaussianMixture."""
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
    """A forward process from its name: ``processes.process_from_config`` or ``discrete:SCHEDULE:N``."""
    from ..core.processes import Discrete, process_from_config

    if name.startswith("discrete"):
        # discrete:linear:1000
        parts = name.split(":")
        sched = parts[1] if len(parts) > 1 else "linear"
        n = int(parts[2]) if len(parts) > 2 else 1000
        return Discrete.from_schedule(sched, n, **params)
    return process_from_config({"name": name, **params})


def event_shape_from_meta(meta: dict[str, Any]) -> tuple[int, ...]:
    """Shape of one sample of a checkpoint's model from its JSON sidecar: ``event_shape`` when stored, else from the
    net config (``dim`` -> ``(dim,)``; ``in_channels`` + ``image_size`` -> ``(C, S, S)``)."""
    if meta.get("event_shape") is not None:
        return tuple(int(s) for s in meta["event_shape"])
    net = meta.get("net_config") or {}
    if "dim" in net:
        return (int(net["dim"]),)
    if "in_channels" in net and "image_size" in net:
        return (int(net["in_channels"]), int(net["image_size"]), int(net["image_size"]))
    raise ValueError("cannot tell the sample shape of this checkpoint: its JSON stores no event_shape and its net "
                     f"config {sorted(net)} has neither dim nor in_channels + image_size")


def load_checkpoint_model(path: str | os.PathLike, *, weights: str = "ema",
                          device: str | torch.device = "cpu") -> LoadedModel:
    """A checkpoint (stem, ``.json``, ``.safetensors`` or run folder: its latest one) as a ``LoadedModel``; a
    diffusers folder (``interop.diffusers.is_diffusers_folder``: told apart by its files) is imported with
    ``interop.from_diffusers`` (its one set of weights: ``weights`` does not apply)."""
    from .checkpoints import latest_checkpoint, load_model, read_meta

    if not os.path.exists(path) and not os.path.exists(f"{path}.json"):
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if Path(path).is_dir():
        from ..interop.diffusers import event_shape_of, from_diffusers, is_diffusers_folder

        if is_diffusers_folder(path):
            model = from_diffusers(path, device=device)
            return LoadedModel(model, event_shape_of(model), None, f"diffusers:{path}")
    stem = latest_checkpoint(path) if Path(path).is_dir() else path
    if stem is None:
        raise ValueError(f"no checkpoint in folder {path}")
    model = load_model(stem, weights=weights, device=device)
    shape = event_shape_from_meta(read_meta(stem))
    return LoadedModel(model, shape, None, str(stem))


def load_oracle(spec: str, process: str = "vp") -> LoadedModel:
    """The exact model of the ``gmm:...`` mixture ``spec`` under ``process`` (``make_process`` names)."""
    mixture = oracle_mixture(spec)
    return LoadedModel(mixture.as_model(make_process(process)), tuple(mixture.event_shape), mixture,
                       f"{spec} ({process})")


def with_clipped_x0(loaded: LoadedModel, low: float, high: float) -> LoadedModel:
    """``loaded`` with its denoiser projected into [low, high] (``ClippedModel``); shape, oracle, source kept."""
    from ..core.denoisers import ClippedModel

    return dataclasses.replace(loaded, model=ClippedModel(loaded.model, (low, high)),
                               source=f"{loaded.source} clip-x0 [{low:g}, {high:g}]")


def load_any_model(*, checkpoint: str | os.PathLike | None = None, oracle: str | None = None, process: str = "vp",
                   weights: str = "ema", clip_x0: tuple[float, float] | None = None) -> LoadedModel:
    """The one loader: a ``checkpoint`` or an exact ``oracle`` spec (``gmm:...``, with ``process``), optionally with
    its denoiser clipped to ``clip_x0 = (low, high)``."""
    if checkpoint:
        loaded = load_checkpoint_model(checkpoint, weights=weights)
    elif oracle:
        loaded = load_oracle(oracle, process)
    else:
        raise ValueError("give a checkpoint (--checkpoint DIR) or an exact oracle (--model gmm:NAME)")
    return with_clipped_x0(loaded, *clip_x0) if clip_x0 else loaded


def load_samples(path: str, event_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Samples ``[N, ...]`` float32 from a ``.npy`` file, a data file/folder, or a registered data set name (its
    default size, seed 12345).  With ``event_shape`` the trailing shape must equal it (never reshaped); empty files
    and NaN/inf entries are errors too (``ValueError`` naming the file)."""
    import numpy as np

    from ..data import load_dataset

    if os.path.exists(path) and path.endswith(".npy"):
        try:
            x = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except (ValueError, OSError, EOFError, TypeError) as e:
            raise ValueError(f"cannot read samples {path!r} as a numeric .npy array: {e}") from None
    else:
        x, _ = load_dataset(path) if os.path.exists(path) else load_dataset(path, seed=12345)
        x = x.float()
    return check_samples(x, path, event_shape)


def training_data_name(source: str | os.PathLike) -> str | None:
    """``data.name`` of the run a checkpoint belongs to (the ``config.yaml`` next to it, as ``scorelab train`` writes
    it), or None when there is none."""
    from .._utils import load_yaml

    p = Path(source)
    cfg = (p if p.is_dir() else p.parent) / "config.yaml"
    if not cfg.is_file():
        return None
    try:
        raw = load_yaml(cfg.read_text())
    except Exception:  # an unreadable config is not this function's business: no reference
        return None
    data = raw.get("data") if isinstance(raw, dict) else None
    return str(data["name"]) if isinstance(data, dict) and data.get("name") else None


def check_samples(x: torch.Tensor, name: str, event_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``x`` ``[N, *event_shape]`` if it has N >= 1 finite examples of that shape, else ``ValueError`` naming
    ``name``, the shape found and the shape expected."""
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"samples {name!r} have shape {tuple(x.shape)}; expected [N, ...] with N >= 1 examples")
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"samples {name!r} have examples of shape {tuple(x.shape[1:])} (array {tuple(x.shape)}); "
                         f"the model's examples have shape {tuple(event_shape)}")
    bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).sum())
    if bad:
        raise ValueError(f"samples {name!r}: {bad} of {x.shape[0]} examples have NaN/inf entries")
    return x


__all__ = ["LoadedModel", "oracle_mixture", "make_process", "event_shape_from_meta", "load_checkpoint_model",
           "load_oracle", "with_clipped_x0", "load_any_model", "load_samples", "check_samples",
           "training_data_name"]
