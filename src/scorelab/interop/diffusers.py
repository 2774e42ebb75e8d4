r"""Import a diffusers ``UNet2DModel`` + scheduler (a pipeline folder, two ``save_pretrained`` folders, or live
objects) as a scorelab model: a ``NetworkModel`` on a ``Discrete`` process, so every sampler, grid, likelihood,
guidance wrapper and fine-tuning method runs on it unchanged.

Notation (diffusers <-> scorelab; Ho et al. 2020, eqs. 2-4; Salimans & Ho 2022 for v)
--------------------------------------------------------------------------------------
=========================  ======================================================================================
``N``                      ``num_train_timesteps``; betas beta_1..beta_N from the scheduler's ``beta_schedule``
                           (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``) or its ``trained_betas``
``k``                      a diffusers timestep 0..N-1: noise level alpha_bar_k = prod_{j<=k} (1 - beta_j)
                           (``scheduler.alphas_cumprod[k]``)
``t``                      scorelab time of that level: t = (k + 1) / N (``Discrete``: alpha_bar(i/N) =
                           prod_{j<=i}(1 - beta_j), i = 1..N), so k = t N - 1; t = 0 is clean data (diffusers'
                           "final alpha_cumprod = 1")
``prediction_type``        ``epsilon`` -> eps, ``v_prediction`` -> v = alpha eps - sigma x0, ``sample`` -> x0
``y``                      class labels (``class_labels`` of a UNet with ``num_class_embeds``); -1 (scorelab's
                           null label, ``ClassifierFreeGuidance``) maps to the UNet's ``null_class``
=========================  ======================================================================================

Times on a float32 grid that lie within ``SNAP`` steps of a training timestep are fed as that integer timestep
(t N - 1 is not exact in float32); other times are fed as fractional timesteps (the UNet's sinusoidal embedding is
defined for any real timestep).  Loading never unpickles: weights are read with ``use_safetensors=True`` and a folder
holding only ``.bin`` weights is refused.  Every failure is one ``ValueError`` line naming the folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.denoisers import NetworkModel
from ..core.processes import Discrete

#: prediction types and the scorelab parameterization each one is
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: beta schedules read from a scheduler config (or ``trained_betas``)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: UNet classes that can be imported
UNET_CLASSES = ("UNet2DModel",)
#: distance (in training steps) under which a time is fed as the integer timestep it rounds to
SNAP = 1e-3
_WEIGHTS = "diffusion_pytorch_model"


# -- folders --------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
            from None


def diffusers_folders(path: str | os.PathLike) -> tuple[Path, Path] | None:
    """(UNet folder, scheduler folder) of a diffusers layout, or None when ``path`` is not one: a pipeline folder
    (``model_index.json`` with ``unet/`` and ``scheduler/``), a folder with ``unet/`` and ``scheduler/`` subfolders,
    or one folder holding both the UNet (``config.json`` + weights) and ``scheduler_config.json``.  Reads file names
    only (no diffusers import): ``io.loading`` calls it to tell a diffusers folder from a scorelab run."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "model_index.json").is_file() or ((p / "unet").is_dir() and (p / "scheduler").is_dir()):
        return p / "unet", p / "scheduler"
    if (p / "config.json").is_file() and (p / "scheduler_config.json").is_file():
        return p, p
    return None


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a diffusers folder ``from_diffusers`` reads (``diffusers_folders``)."""
    return diffusers_folders(path) is not None


def _check_unet_folder(folder: Path) -> dict:
    """The UNet's config, after checking its class and that its weights are safetensors (never ``.bin``)."""
    if not (folder / "config.json").is_file():
        raise ValueError(f"diffusers folder {folder} has no config.json (expected a UNet saved with save_pretrained)")
    cfg = _read_json(folder / "config.json")
    cls = cfg.get("_class_name")
    if cls not in UNET_CLASSES:
        raise ValueError(f"{folder} holds a {cls!r}; supported: {', '.join(UNET_CLASSES)} (unconditional or "
                         "class-conditional pixel-space UNets)")
    if not (folder / f"{_WEIGHTS}.safetensors").is_file():
        found = sorted(f.name for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise ValueError(f"{folder} has no {_WEIGHTS}.safetensors" + (f" (found {', '.join(found)}: pickled weights "
                         "are never loaded; convert them to safetensors)" if found else ""))
    return cfg


def _scheduler_config(folder: Path) -> dict:
    f = folder / "scheduler_config.json"
    if not f.is_file():
        raise ValueError(f"diffusers folder {folder} has no scheduler_config.json")
    return _read_json(f)


# -- the process --------------------------------------------------------------------------------------------------
def betas_from_config(cfg: dict[str, Any]) -> torch.Tensor:
    """beta_1..beta_N (float64) of a diffusers scheduler config, computed by diffusers' own scheduler class from the
    config (``trained_betas`` win over ``beta_schedule``); ValueError for an unsupported schedule."""
    import diffusers

    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True gives beta_N = 1 (zero terminal SNR), which a Discrete process "
                         "cannot represent; supported: finite-SNR schedules")
    if cfg.get("trained_betas") is None and cfg.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        raise ValueError(f"unsupported beta_schedule {cfg.get('beta_schedule')!r}; supported: "
                         f"{', '.join(BETA_SCHEDULES)} or trained_betas")
    cls = getattr(diffusers, str(cfg.get("_class_name")), None)
    if cls is None or not hasattr(cls, "from_config"):
        cls = diffusers.DDPMScheduler
    try:
        sched = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        betas = sched.betas
    except Exception as e:  # noqa: BLE001 - any failure of the peer library is one line for the user
        raise ValueError(f"cannot build the scheduler {cfg.get('_class_name')!r}: {type(e).__name__}: {e}") from None
    return torch.as_tensor(betas).to(torch.float64)


def process_from_scheduler(cfg: dict[str, Any]) -> Discrete:
    """The ``Discrete`` process of a diffusers scheduler config (its betas and ``num_train_timesteps``)."""
    betas = betas_from_config(cfg)
    n = int(cfg.get("num_train_timesteps", betas.numel()))
    if betas.numel() != n:
        raise ValueError(f"the scheduler lists {betas.numel()} betas for num_train_timesteps={n}")
    return Discrete(betas)


def parameterization_of(cfg: dict[str, Any]) -> str:
    """scorelab parameterization of a scheduler's ``prediction_type`` (``PREDICTION_TYPES``)."""
    pt = cfg.get("prediction_type", "epsilon")
    if pt not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {pt!r}; supported: {', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[pt]


def timesteps_from_times(t: torch.Tensor, n_train: int) -> torch.Tensor:
    """diffusers timesteps k = t N - 1 (float64; those within ``SNAP`` of an integer snapped to it). Shapes: t
    [...] -> [...]."""
    k = t.to(torch.float64) * n_train - 1
    r = torch.round(k)
    return torch.where((k - r).abs() < SNAP, r, k)


# -- the network ----------------------------------------------------------------------------------------------------
class DiffusersUNet(nn.Module):
    """``unet(x, timestep, class_labels=y).sample`` as a scorelab network ``net(x, t, y=None)`` with process time t
    ``[B]`` (``time_input="t"``): timestep k = t N - 1 (``timesteps_from_times``).

    ``class_label``: the label used when a class-conditional UNet is called without ``y``; ``null_class``: the index
    of the UNet's null class, which scorelab's null label -1 maps to (classifier-free guidance)."""

    def __init__(self, unet: nn.Module, n_train: int, class_label: int | None = None, null_class: int | None = None):
        super().__init__()
        self.unet, self.n_train = unet, int(n_train)
        self.num_classes = getattr(unet.config, "num_class_embeds", None)
        if getattr(unet.config, "class_embed_type", None) is not None:
            raise ValueError(f"class_embed_type={unet.config.class_embed_type!r} is not supported; supported: "
                             "num_class_embeds with the default embedding table")
        for name, v in (("class_label", class_label), ("null_class", null_class)):
            if v is not None and (self.num_classes is None or not 0 <= int(v) < self.num_classes):
                raise ValueError(f"{name}={v} needs a class-conditional UNet with labels 0..num_class_embeds-1 "
                                 f"(num_class_embeds={self.num_classes})")
        self.class_label, self.null_class = class_label, null_class

    def labels(self, y, x: torch.Tensor) -> torch.Tensor | None:
        """``class_labels`` for the UNet: ``y`` (or the default ``class_label``) as ``[B]`` long, -1 -> null_class."""
        if self.num_classes is None:
            if y is not None:
                raise ValueError("this diffusers UNet is unconditional (no num_class_embeds): drop y")
            return None
        y = self.class_label if y is None else y
        if y is None:
            raise ValueError(f"this diffusers UNet is class-conditional (num_class_embeds={self.num_classes}): pass "
                             "class_label= to from_diffusers, y= at call time, or wrap it in ClassifierFreeGuidance")
        y = torch.as_tensor(y, device=x.device).long().expand(x.shape[0]).clone()
        if torch.any(y == -1):
            if self.null_class is None:
                raise ValueError("label -1 (the unconditional label of classifier-free guidance) needs null_class= "
                                 "in from_diffusers: the index of the class the UNet was trained with as null")
            y[y == -1] = self.null_class
        return y

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        """Network output (eps, v or x0, the scheduler's ``prediction_type``) at process times t ``[B]``. Shapes:
        x [B, C, H, W] -> [B, C, H, W]."""
        k = timesteps_from_times(t, self.n_train).to(x.dtype)
        return self.unet(x, k, class_labels=self.labels(y, x)).sample


# -- import ----------------------------------------------------------------------------------------------------------
def _load_unet(folder: Path, device) -> nn.Module:
    import diffusers

    _check_unet_folder(folder)
    try:
        unet = diffusers.UNet2DModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt weights / configs surface as one line
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"cannot load the diffusers UNet in {folder}: {type(e).__name__}: {msg}") from None
    return unet.to(device).eval()


def from_diffusers(source, scheduler=None, *, class_label: int | None = None, null_class: int | None = None,
                   device: str | torch.device = "cpu") -> NetworkModel:
    """A diffusers model as a scorelab ``NetworkModel`` (``.process`` a ``Discrete`` chain; ``.x0/.eps/.score``).

    ``source``: a folder (``diffusers_folders``), a pipeline object with ``.unet`` and ``.scheduler``, or a
    ``UNet2DModel`` with ``scheduler`` (a scheduler object, its config dict, or a folder).  ``class_label`` /
    ``null_class``: see ``DiffusersUNet``.  Raises ValueError (one line) for an unsupported or corrupt folder."""
    if isinstance(source, (str, os.PathLike)):
        folders = diffusers_folders(source)
        if folders is None:
            found = sorted(f.name for f in Path(source).iterdir())[:8] if Path(source).is_dir() else "nothing"
            raise ValueError(f"{source} is not a diffusers folder (found {found}); supported: a pipeline folder "
                             "(model_index.json, unet/, scheduler/), unet/ + scheduler/, or one folder with "
                             "config.json, diffusion_pytorch_model.safetensors and scheduler_config.json")
        unet, sched_cfg = _load_unet(folders[0], device), _scheduler_config(folders[1])
    elif hasattr(source, "unet") and hasattr(source, "scheduler"):
        unet, sched_cfg = source.unet, dict(source.scheduler.config)
    elif isinstance(source, nn.Module) and scheduler is not None:
        unet = source
        sched_cfg = (_scheduler_config(Path(scheduler)) if isinstance(scheduler, (str, os.PathLike))
                     else dict(scheduler) if isinstance(scheduler, dict) else dict(scheduler.config))
    else:
        raise ValueError(f"from_diffusers needs a folder, a pipeline, or a UNet2DModel with scheduler=..., got "
                         f"{type(source).__name__}")
    if type(unet).__name__ not in UNET_CLASSES:
        raise ValueError(f"got a {type(unet).__name__}; supported: {', '.join(UNET_CLASSES)}")
    process = process_from_scheduler(sched_cfg)
    net = DiffusersUNet(unet, process.N, class_label, null_class)
    return NetworkModel(net, process, parameterization_of(sched_cfg), time_input="t").to(device).eval()


def event_shape_of(model: NetworkModel) -> tuple[int, int, int]:
    """(C, H, W) of one sample of an imported diffusers model (the UNet's ``in_channels`` and ``sample_size``)."""
    if not (isinstance(model, NetworkModel) and isinstance(model.net, DiffusersUNet)):
        raise ValueError("event_shape_of needs a model imported with from_diffusers (a DiffusersUNet network)")
    cfg = model.net.unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(cfg.in_channels), int(h), int(w)


def scheduler_config_of(model: NetworkModel, prediction_type: str | None = None) -> dict[str, Any]:
    """A diffusers scheduler config (``trained_betas``, ``num_train_timesteps``, ``prediction_type``) describing an
    imported model's process and parameterization: what ``to_diffusers`` saves and what the export adapter uses."""
    if not isinstance(model.process, Discrete):
        raise ValueError(f"only Discrete processes map to a diffusers scheduler, got {type(model.process).__name__}")
    inverse = {v: k for k, v in PREDICTION_TYPES.items()}
    return {"num_train_timesteps": model.process.N, "trained_betas": model.process.betas.tolist(),
            "prediction_type": prediction_type or inverse[model.parameterization], "clip_sample": False}


def to_diffusers(model: NetworkModel, folder: str | os.PathLike, scheduler_class: str = "DDPMScheduler") -> Path:
    """Save an imported (or fine-tuned) diffusers model back as a diffusers folder: ``unet/`` (safetensors) and
    ``scheduler/`` with ``scheduler_config_of(model)``, plus ``model_index.json`` of a ``DDPMPipeline``.  Refuses an
    existing non-empty folder (runs are never overwritten)."""
    import diffusers

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and is not empty; choose a new folder")
    if not (isinstance(model, NetworkModel) and isinstance(model.net, DiffusersUNet)):
        raise ValueError("to_diffusers saves models imported with from_diffusers (a DiffusersUNet network)")
    sched = getattr(diffusers, scheduler_class).from_config(scheduler_config_of(model))
    diffusers.DDPMPipeline(unet=model.net.unet, scheduler=sched).save_pretrained(folder, safe_serialization=True)
    return folder


__all__ = ["PREDICTION_TYPES", "BETA_SCHEDULES", "UNET_CLASSES", "SNAP", "diffusers_folders", "is_diffusers_folder",
           "betas_from_config", "process_from_scheduler", "parameterization_of", "timesteps_from_times",
           "DiffusersUNet", "from_diffusers", "event_shape_of", "scheduler_config_of", "to_diffusers"]
