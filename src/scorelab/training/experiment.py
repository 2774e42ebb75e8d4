"""Experiment configuration for the CLI: YAML -> frozen dataclasses -> a training run directory.

A config has five sections (every key optional except where noted)::

    run_dir: runs/swissroll_vp
    data:    {name: swiss_roll, n: null, seed: 0, params: {}}       # a data-set name or a file/folder path; n: null =
                                                                     # all of a file's data (a toy set's default size)
                                                 # stream: true -> read through a DataLoader (data.streaming)
    process: {name: vp}                                              # processes.process_from_config, or
                                                                     # {name: discrete, schedule: linear, n: 1000}
    model:   {net: {name: mlp, width: 256, depth: 3}, parameterization: eps}   # net dims are filled from the data
    loss:    {proposal: uniform, weighting: eps}                     # losses.LossConfig
    objective: {name: dsm}       # or {name: hodsm, order: 2|3, trace: true, lambda2: 1, lambda3: 1} (Lu et al. 2022a)
    train:   {steps: 5000, batch_size: 512, lr: 1e-3}                # training.TrainConfig

Unknown sections or keys are errors (``ValueError`` naming the key, the nearest allowed ones and all allowed ones);
values are checked against the dataclass annotations (``_utils.check_field_types``: the error names ``section.key``);
YAML is read with ``_utils.load_yaml`` (``1e-4`` is a float).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .._utils import check_device, check_field_types, load_yaml, suggest
from ..io.loading import check_samples
from .loop import TrainConfig
from .losses import LossConfig

SECTIONS = ("run_dir", "data", "process", "model", "loss", "objective", "train")


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section: a built-in data set name or a path (image folder, .npy, .npz, .csv), ``n`` points
    (None: all of a file's data, a built-in set's default size), the sampling ``seed`` and extra ``params`` for
    the loader.  ``stream``: open it with ``data.streaming.open_dataset`` (image folders read lazily as RGB unless
    ``params: {mode: L}``, ``.npy`` memory-mapped, uint8 kept as uint8) and feed training through a DataLoader
    (``train.num_workers``)."""
    name: str = "swiss_roll"
    n: int | None = None
    seed: int = 0
    params: dict = field(default_factory=dict)
    stream: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """The ``model`` section: ``net`` (a mapping with the network ``name`` and its arguments), the
    ``parameterization`` the net predicts (eps, x0, v, score, edm), its ``time_input`` (None: the process'
    default) and EDM's ``sigma_data``."""
    net: dict = field(default_factory=lambda: {"name": "mlp", "width": 256, "depth": 3})
    parameterization: str = "eps"
    time_input: str | None = None
    sigma_data: float = 0.5


@dataclass(frozen=True)
class ObjectiveConfig:
    """``dsm`` (the ``loss`` section's proposal x weighting) or ``hodsm``: high-order DSM of Lu et al. 2022a
    (``hodsm.hodsm_loss``; first-order term plus lambda2 x second-order (+ lambda3 x third-order))."""

    name: str = "dsm"
    order: int = 2
    trace: bool = True
    lambda2: float = 1.0
    lambda3: float = 1.0
    divergence: str = "exact"

    def __post_init__(self):
        if self.name not in ("dsm", "hodsm"):
            raise ValueError(f"objective name must be 'dsm' or 'hodsm', got {self.name!r}")
        if self.order not in (1, 2, 3):
            raise ValueError(f"objective order must be 1, 2 or 3, got {self.order!r}")

    def loss_fn(self, loss: LossConfig):
        """The training loss: ``DSMLoss(loss)`` for ``dsm``, else ``hodsm_loss`` with this section's order,
        trace and weights. Returns a callable loss(model, x0 [B, ...], generator=g) -> per-example losses [B]."""
        from functools import partial

        from .hodsm import hodsm_loss
        from .losses import DSMLoss

        if self.name == "dsm":
            return DSMLoss(loss)
        return partial(hodsm_loss, order=self.order, trace=self.trace, lambda2=self.lambda2, lambda3=self.lambda3,
                       divergence=self.divergence)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole training run read from YAML: run folder and the sections data, process (a
    ``ForwardProcess.config()`` mapping), model, loss, objective, train."""
    run_dir: str = "runs/experiment"
    data: DataConfig = field(default_factory=DataConfig)
    process: dict = field(default_factory=lambda: {"name": "vp"})
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-compatible nested dicts (tuples become lists); ``experiment_from_dict``
        inverts it."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


def _build(cls, values: Any, section: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"unknown key {section}.{unknown[0]}{suggest(unknown[0], allowed)} (allowed in section "
                         f"{section!r}: {sorted(allowed)})")
    vals = {k: (tuple(v) if isinstance(v, list) and k == "betas" else v) for k, v in values.items()}
    vals = check_field_types(cls, vals, f"{section}.")
    try:
        return cls(**vals)
    except TypeError as e:
        raise ValueError(f"bad value in section {section!r}: {e}") from None
    except ValueError as e:
        raise ValueError(f"config section {section!r}: {e}") from None


def _apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] not in SECTIONS:
            raise ValueError(f"override {key!r}: unknown section {parts[0]!r}{suggest(parts[0], SECTIONS)} "
                             f"(expected one of {SECTIONS})")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: {p!r} is not a mapping")
        node[parts[-1]] = value
    return raw


def experiment_from_dict(raw: dict, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Build an ``ExperimentConfig`` from a mapping (a parsed YAML file), after applying ``overrides`` such as
    ``{"train.steps": 2000}``. Raises ValueError naming an unknown section or key or a bad value."""
    raw = _apply_overrides(json.loads(json.dumps(raw or {})), overrides or {})
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section {unknown[0]!r}{suggest(unknown[0], SECTIONS)} (expected one of "
                         f"{list(SECTIONS)})")
    process = raw.get("process") or {"name": "vp"}
    if not isinstance(process, dict) or "name" not in process:
        raise ValueError("config section 'process' must be a mapping with a 'name'")
    return ExperimentConfig(
        run_dir=str(raw.get("run_dir", "runs/experiment")), data=_build(DataConfig, raw.get("data"), "data"),
        process=process, model=_build(ModelConfig, raw.get("model"), "model"),
        loss=_build(LossConfig, raw.get("loss"), "loss"),
        objective=_build(ObjectiveConfig, raw.get("objective"), "objective"),
        train=_build(TrainConfig, raw.get("train"), "train"))


def load_experiment(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML config (see the module docstring); ``overrides`` maps ``section.key`` to values."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path) as f:
        try:
            raw = load_yaml(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level")
    return experiment_from_dict(raw, overrides)


def build_model(exp: ExperimentConfig, event_shape: tuple[int, ...]):
    """The ``NetworkModel`` of an experiment; net dimensions not given are filled from the data shape
    ``event_shape`` (the checkpoints' net config then tells it back: ``io.loading.event_shape_from_meta``)."""
    from ..core.denoisers import NetworkModel
    from ..core.processes import process_from_config
    from ..nets import build_net

    process = process_from_config(exp.process)
    net_cfg = dict(exp.model.net)
    name = net_cfg.get("name")
    if name in ("mlp", "step_embed_mlp"):
        if len(event_shape) != 1:
            raise ValueError(f"net {name!r} needs vector data [N, d]; the data has examples of shape {event_shape}")
        net_cfg.setdefault("dim", event_shape[0])
        if name == "step_embed_mlp":
            net_cfg.setdefault("n_steps", getattr(process, "N", 1000))
    elif name == "unet":
        if len(event_shape) != 3:
            raise ValueError(f"net 'unet' needs images [N, C, H, W]; the data has examples of shape {event_shape}")
        net_cfg.setdefault("in_channels", event_shape[0])
        net_cfg.setdefault("image_size", event_shape[1])
    return NetworkModel(build_net(net_cfg), process, exp.model.parameterization, exp.model.time_input,
                        exp.model.sigma_data)


def load_data(data: DataConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``data`` section's examples ``[N, ...]`` (and labels), checked finite and non-empty; a loader's error is
    re-raised naming ``data.name`` and ``data.n`` (with the hint ``data.n=null`` = all of the data)."""
    from ..data import load_dataset

    try:
        x, labels = load_dataset(data.name, n=data.n, seed=data.seed, **data.params)
    except ValueError as e:
        hint = "; data.n=null uses all of it" if data.n is not None else ""
        raise ValueError(f"data.name={data.name!r}, data.n={data.n}: {e}{hint}") from None
    return check_samples(x.float(), f"data.name={data.name}"), labels


def prepare_run_dir(run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Make ``run_dir`` ready for a run without losing an earlier one.  New or empty: created.  Holding files:
    ``resume`` continues it, ``overwrite`` moves it aside to ``<run_dir>.old`` (``-2``, ``-3``, ... if taken; never
    deleted), otherwise ``ValueError``.  ``resume`` on a folder that does not exist is a ``ValueError`` too (a typo
    would silently start from scratch).  Returns the folder."""
    from ..io.checkpoints import unused_dir

    run_dir = check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if run_dir.is_dir() and any(run_dir.iterdir()) and not resume:  # overwrite (check_run_dir refused otherwise)
        aside = unused_dir(run_dir.with_name(run_dir.name + ".old"))
        run_dir.rename(aside)
        warnings.warn(f"moved the earlier run {run_dir} aside to {aside}", stacklevel=2)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def check_run_dir(run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> Path:
    """The checks of ``prepare_run_dir`` without touching the disk: ``ValueError`` for a file, ``resume`` of a
    missing folder, or a folder holding files without ``resume`` / ``overwrite``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} is an existing file; expected a folder")
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite moves it aside: give one of them")
    if resume and not run_dir.is_dir():
        raise ValueError(f"--resume: run folder {str(run_dir)!r} does not exist (nothing to resume; drop --resume to "
                         "start a new run)")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not resume and not overwrite:
        raise ValueError(f"run folder {str(run_dir)!r} already holds a run; pass --resume to continue it or "
                         "--overwrite to move it aside (nothing is deleted), or choose another --out")
    return run_dir


def run_training(exp: ExperimentConfig, run_dir: str | os.PathLike | None = None, resume: bool = False,
                 progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Load data, build the model, train; the run folder gets config.yaml, log.csv and checkpoints (under
    ``torch.distributed`` every rank trains on its shards of each global batch and rank 0 writes).  The folder is
    prepared by ``prepare_run_dir`` (``resume`` / ``overwrite``; an earlier run is never overwritten) after the data
    and model are checked, so bad input leaves no folder behind."""
    from .loop import dist_info, train

    run_dir = Path(run_dir or exp.run_dir)
    check_device(exp.train.device, "train.device")
    use_labels = bool(exp.model.net.get("num_classes", 0))
    if exp.data.stream:
        from ..data.streaming import open_dataset

        try:
            data = open_dataset(exp.data.name, n=exp.data.n, seed=exp.data.seed, labels=use_labels, **exp.data.params)
        except ValueError as e:
            raise ValueError(f"data.name={exp.data.name!r} (data.stream=true): {e}") from None
        x, labels, shape = data, None, data.example_shape
    else:
        x, labels = load_data(exp.data)
        shape = tuple(x.shape[1:])
    with torch.random.fork_rng(devices=[]):  # weight init from train.seed: runs repeat, ranks start equal
        torch.manual_seed(exp.train.seed)
        model = build_model(exp, shape)
    rank = dist_info()[0]
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if rank == 0 and progress:
        print(f"scorelab train: {n_params:,} trainable parameters", file=sys.stderr)
    if rank == 0:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        with open(run_dir / "config.yaml", "w") as f:
            yaml.safe_dump(exp.to_dict(), f, sort_keys=False)
    t0 = time.perf_counter()
    res = train(model, x, exp.train, run_dir=run_dir, resume=resume, loss_fn=exp.objective.loss_fn(exp.loss),
                progress=progress, labels=labels if use_labels else None)
    if rank == 0:
        _plot_log(run_dir)
    tail = res.history[-min(len(res.history), 100):] if res.history else []
    return {"model": res.ema_model, "run_dir": str(run_dir), "step": res.step, "wall_s": time.perf_counter() - t0,
            "final_loss": sum(tail) / len(tail) if tail else None, "checkpoint": str(res.checkpoint),
            "params": n_params}


def launch_training(exp: ExperimentConfig, run_dir: str | os.PathLike | None = None, resume: bool = False,
                    progress: bool = True, overwrite: bool = False) -> dict[str, Any] | None:
    """``run_training`` as launched: under ``torchrun`` (``WORLD_SIZE`` > 1) every rank joins the process group,
    trains data-parallel and leaves it; the result is returned on rank 0 and ``None`` on the other ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run_training(exp, run_dir, resume=resume, progress=progress, overwrite=overwrite)
    from .loop import init_distributed, shutdown_distributed

    rank, _ = init_distributed()
    result = run_training(exp, run_dir, resume=resume, progress=progress, overwrite=overwrite)
    shutdown_distributed()  # on an error torchrun stops the other ranks
    return result if rank == 0 else None


def _plot_log(run_dir: Path) -> None:
    """``loss.png`` from the run's CSV log (rank 0 wrote it)."""
    from ..plotting import line_plot
    from .loop import read_log

    rows = read_log(run_dir) if (run_dir / "log.csv").exists() else []
    if rows:
        line_plot([r["step"] for r in rows], {"training loss (window mean)": [r["loss"] for r in rows]},
                  str(run_dir / "loss.png"), xlabel="step", ylabel="loss", logy=True)
