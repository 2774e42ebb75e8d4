r"""Checkpoints: tensors in ``safetensors`` plus a JSON sidecar; atomic writes; loading never unpickles.

A checkpoint ``<stem>`` is two files written in this order, each atomically (temporary file in the same folder,
fsync, ``os.replace``, fsync of the folder), so a JSON sidecar exists only next to complete tensors:

==========================  =======================================================================================
``<stem>.safetensors``      ``model.<key>`` (model state dict), ``ema.<key>`` (EMA model), ``optim.<i>.<name>``
                            (tensor entries of the optimizer state of parameter i: Adam moments, step, ...)
``<stem>.json``             format/version, step, sha256 of the tensor file, ``net_config`` (``net.config()``),
                            ``process_config`` (``process.config()``), parameterization, time_input, sigma_data,
                            ``train_config``, optimizer class, param groups and non-tensor state, RNG states (lists
                            of ints), free-form ``extra``
==========================  =======================================================================================

``load_model(path)`` rebuilds a ``denoisers.NetworkModel`` from the sidecar alone (``nets.build_net`` and
``processes.process_from_config``).  ``torch.load`` is never used.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

FORMAT, VERSION = "scorelab-checkpoint", 1


def jsonable(obj: Any) -> Any:
    """Convert tuples, paths, dtypes and 0-d tensors to JSON types (recursively); raise ValueError on anything else."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    raise ValueError(f"cannot store a {type(obj).__name__} in a checkpoint's JSON sidecar")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(tensor file, JSON sidecar)`` for a stem, a ``.safetensors`` path or a ``.json`` path."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


# -- optimizer state ---------------------------------------------------------------------------
def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors ``optim.<i>.<name>`` and a JSON part."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for i, state in sd["state"].items():
        for name, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{i}.{name}"] = v
            else:
                scalars.setdefault(str(i), {})[name] = jsonable(v)
    meta = {"class": type(optimizer).__name__, "param_groups": jsonable(sd["param_groups"]), "scalars": scalars}
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten_optimizer``: a state dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    for i, d in meta.get("scalars", {}).items():
        state.setdefault(int(i), {}).update(d)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- RNG state ---------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Global torch RNG states as lists of ints (CPU, and CUDA devices when initialised)."""
    out: dict[str, Any] = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the torch (and, where present, CUDA) random-number state saved by ``get_rng_state``."""
    if "torch" in state:
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# -- save / load -------------------------------------------------------------------------------
def _state_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def model_meta(model: nn.Module, event_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """What ``load_model`` needs to rebuild a ``NetworkModel`` (net config, process config, parameterization, time
    input, sigma_data) or ``load_discriminator`` a ``TimeConditionedHead``; plus ``event_shape`` when given."""
    from ..core.denoisers import NetworkModel
    from ..nets.heads import TimeConditionedHead

    meta: dict[str, Any] = {}
    if isinstance(model, (NetworkModel, TimeConditionedHead)):
        if callable(getattr(model.net, "config", None)):
            meta["net_config"] = jsonable(model.net.config())
        meta["process_config"] = jsonable(model.process.config())
        meta["time_input"] = model.time_input
    if isinstance(model, NetworkModel):
        meta.update(parameterization=model.parameterization, sigma_data=model.sigma_data)
    if event_shape is not None:
        meta["event_shape"] = [int(s) for s in event_shape]
    return meta


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, ema_model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                    train_config: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    save_rng: bool = True, event_shape: tuple[int, ...] | None = None) -> Path:
    """Save ``<stem>.safetensors`` then ``<stem>.json`` atomically; returns the JSON path.  ``event_shape`` (the
    shape of one sample) is stored in the sidecar when given; ``loading.event_shape_from_meta`` otherwise reads it
    from the net config."""
    st_path, json_path = checkpoint_paths(path)
    tensors = _state_tensors("model", model)
    if ema_model is not None:
        tensors.update(_state_tensors("ema", ema_model))
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "step": int(step), **model_meta(model, event_shape)}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    blob = safetensors.torch.save(tensors)
    meta.update(sha256=hashlib.sha256(blob).hexdigest(), tensor_file=st_path.name, has_ema=ema_model is not None,
                train_config=jsonable(train_config), extra=jsonable(extra or {}))
    if save_rng:
        meta["rng"] = rng_state()
    atomic_write_bytes(st_path, blob)
    atomic_write_bytes(json_path, json.dumps(meta, indent=1).encode())
    return json_path


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` (the JSON sidecar) and tensor groups ``model``, ``ema``, ``optim``."""

    meta: dict[str, Any]
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    optim: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """The training step this checkpoint was written at."""
        return int(self.meta["step"])


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint (stem, ``.json`` or ``.safetensors`` path) without reading its tensors."""
    json_path = checkpoint_paths(path)[1]
    if not json_path.is_file():
        raise ValueError(f"no checkpoint sidecar {json_path}")
    return _parse_meta(json_path)


def _parse_meta(json_path: Path) -> dict[str, Any]:
    """The checked sidecar of ``json_path``: ``ValueError`` naming the file when it is not JSON (truncated, edited)
    or not a scorelab checkpoint."""
    try:
        meta = json.loads(json_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint sidecar {json_path} is not valid JSON (truncated or edited?): {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{json_path} is not a scorelab checkpoint (format {fmt!r})")
    return meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", verify: bool = True) -> Checkpoint:
    """Read a checkpoint (stem, ``.json`` or ``.safetensors`` path) without unpickling; ``verify`` checks sha256."""
    st_path, json_path = checkpoint_paths(path)
    if not json_path.is_file() or not st_path.is_file():
        raise ValueError(f"no complete checkpoint at {json_path.with_suffix('')} (need {st_path.name} and "
                         f"{json_path.name})")
    meta = _parse_meta(json_path)
    blob = st_path.read_bytes()
    if verify and hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise ValueError(f"{st_path} does not match the sha256 recorded in {json_path.name} (corrupt or replaced)")
    ckpt = Checkpoint(meta)
    try:
        tensors = safetensors.torch.load(blob)
    except Exception as e:  # safetensors' own error type for a malformed file
        raise ValueError(f"{st_path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    for key, v in tensors.items():
        group, name = key.split(".", 1)
        getattr(ckpt, group)[name if group != "optim" else key] = v.to(device)
    return ckpt


def restore(ckpt: Checkpoint, model: nn.Module, ema_model: nn.Module | None = None,
            optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True) -> int:
    """Load weights, EMA, optimizer state and RNG states from ``ckpt`` into live objects; returns the step."""
    model.load_state_dict(ckpt.model)
    if ema_model is not None:
        if not ckpt.ema:
            raise ValueError("the checkpoint has no EMA weights")
        ema_model.load_state_dict(ckpt.ema)
    if optimizer is not None:
        if "optimizer" not in ckpt.meta:
            raise ValueError("the checkpoint has no optimizer state")
        if ckpt.meta["optimizer"]["class"] != type(optimizer).__name__:
            raise ValueError(f"checkpoint optimizer is {ckpt.meta['optimizer']['class']}, "
                             f"not {type(optimizer).__name__}")
        optimizer.load_state_dict(unflatten_optimizer(ckpt.optim, ckpt.meta["optimizer"]))
    if restore_rng and "rng" in ckpt.meta:
        set_rng_state(ckpt.meta["rng"])
    return ckpt.step


def unused_dir(base: str | os.PathLike) -> Path:
    """``base`` if it does not exist or is an empty folder, else the first free ``base-2``, ``base-3``, ... (so a
    default output folder never overwrites an earlier run)."""
    base = Path(base)
    for k in range(1, 10_000):
        cand = base if k == 1 else base.with_name(f"{base.name}-{k}")
        if not cand.exists() or (cand.is_dir() and not any(cand.iterdir())):
            return cand
    raise ValueError(f"no free folder name next to {base}: clean up old runs")


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike):
    """Write a command's output files into a hidden staging folder next to ``out`` and move them into ``out`` only
    when the block succeeds (``os.replace`` per file, ``out`` created then); on an error the staging folder is
    removed and ``out`` is left as it was, so no half-written output folder stays behind.  Yields the staging
    folder (a ``Path``)."""
    import shutil

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output folder {str(out)!r} exists and is a file; choose another --out")
    made = [p for p in reversed(out.absolute().parents) if not p.exists()]  # parents this call creates
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    ok = False
    try:
        yield stage
        out.mkdir(exist_ok=True)
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
        ok = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for p in [] if ok else reversed(made):  # leave no empty parent folders behind either
            with contextlib.suppress(OSError):
                p.rmdir()


def list_checkpoints(run_dir: str | os.PathLike, prefix: str = "ckpt_") -> list[Path]:
    """Complete checkpoints (JSON sidecars with their tensor file) in ``run_dir``, oldest step first."""
    found = []
    for p in Path(run_dir).glob(f"{prefix}*.json"):
        if checkpoint_paths(p)[0].is_file():
            try:
                found.append((int(json.loads(p.read_text())["step"]), p))
            except (ValueError, KeyError):
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The JSON path of the checkpoint with the largest step in ``run_dir`` (None if there is none)."""
    found = list_checkpoints(run_dir) if Path(run_dir).is_dir() else []
    return found[-1] if found else None


def delete_checkpoint(path: str | os.PathLike) -> None:
    """Remove a checkpoint's two files (sidecar first, so a half-deleted checkpoint is never listed)."""
    st_path, json_path = checkpoint_paths(path)
    json_path.unlink(missing_ok=True)
    st_path.unlink(missing_ok=True)


def load_model(path: str | os.PathLike, *, weights: str = "ema", device: str | torch.device = "cpu",
               ema: bool | None = None):
    """Rebuild the ``NetworkModel`` of a checkpoint (stem/.json/.safetensors, or a run folder: its latest one).

    ``weights="ema"`` loads the EMA weights (falling back, with a warning, to the raw ones when absent);
    ``"model"`` the raw weights; ``ema=True/False`` is a shorthand that overrides ``weights``.  The model is
    returned in eval mode on ``device``; the shape of one sample is ``loading.load_checkpoint_model(path).event_shape``
    (or ``loading.event_shape_from_meta(read_meta(path))``)."""
    if ema is not None:
        weights = "ema" if ema else "model"
    from ..core.denoisers import NetworkModel
    from ..core.processes import process_from_config
    from ..nets import build_net

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if Path(path).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise ValueError(f"no checkpoint in folder {path}")
        path = latest
    ckpt = load_checkpoint(path, device="cpu")
    for key in ("net_config", "process_config"):
        if key not in ckpt.meta:
            raise ValueError(f"checkpoint {path} has no {key}; it cannot be rebuilt without the original code")
    try:
        net = build_net(ckpt.meta["net_config"])
        model = NetworkModel(net, process_from_config(ckpt.meta["process_config"]),
                             ckpt.meta.get("parameterization", "eps"), ckpt.meta.get("time_input"),
                             ckpt.meta.get("sigma_data", 0.5))
    except (TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"checkpoint {path}: its JSON sidecar does not describe a model this scorelab builds "
                         f"({type(e).__name__}: {e})") from None
    state = ckpt.ema if weights == "ema" and ckpt.ema else ckpt.model
    if weights == "ema" and not ckpt.ema:
        warnings.warn(f"checkpoint {path} has no EMA weights; loading the raw model weights", stacklevel=2)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path}: the weights do not fit the model its JSON sidecar describes (edited "
                         f"net_config?): {str(e).splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()}"
                         ) from None
    return model.to(device).eval()


__all__ = ["save_checkpoint", "load_checkpoint", "read_meta", "restore", "load_model", "latest_checkpoint",
           "list_checkpoints", "delete_checkpoint", "checkpoint_paths", "atomic_write_bytes", "Checkpoint", "jsonable",
           "rng_state", "set_rng_state", "flatten_optimizer", "unflatten_optimizer", "model_meta", "staged_folder",
           "unused_dir"]
