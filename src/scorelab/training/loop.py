r"""Training loop: optimizer, warmup + cosine learning rate, gradient clipping, EMA, mixed precision (bf16 autocast,
or fp16 autocast with a dynamic ``GradScaler``), optional ``torch.compile``, gradient accumulation, streamed data
(``torch.utils.data.DataLoader`` with workers and pinned memory), logging, checkpoints with exact resume, and
data-parallel training with ``torch.nn.parallel.DistributedDataParallel`` (DDP).

Randomness is a pure function of (seed, step): the global batch of step s is a slice of per-epoch permutations
(``randperm`` seeded from (seed, epoch)), and shard k of that batch draws its loss noise from a generator seeded from
(seed, s, k).  Hence resuming from a checkpoint reproduces the uninterrupted run, and a run does not depend on how
many processes share it: the global batch is cut into ``data_shards`` equal shards (default: the world size),
rank r of W processes handles shards r S/W .. (r+1) S/W - 1 (a DistributedSampler over the global batch: a batch
sampler, ``ShardBatchSampler``, hands each rank's ``DataLoader`` exactly its shards), each rank backpropagates
W x (shard mean / S) for its S/W micro-batches (gradient accumulation; DDP's ``no_sync`` on all but the last), DDP's
bucketed all-reduce averages over the W ranks (overlapping communication with backward), so every rank holds the
gradient of sum_k (shard mean_k / S), the same sum that one process with the same ``data_shards`` accumulates.
``grad_accum`` = micro-batches per rank when ``data_shards`` is not set (S = W x grad_accum).  Random horizontal
flips (``hflip``) draw their bits from a generator seeded from (seed, step, shard) too.  Only rank 0 writes files.

Notation
--------
===============  ===================================================================================================
``lr(s)``        lr (s+1)/warmup for s < warmup, then lr [m + (1-m) (1 + cos(pi p))/2], p = (s-warmup)/(steps-warmup),
                 m = ``min_lr_ratio`` (``lr_schedule="cosine"``; "constant" keeps lr after warmup)
``ema``          theta_ema <- d theta_ema + (1-d) theta with d = min(decay, (1+n)/(10+n)) after n updates when
                 ``ema_warmup`` (as in the DDPM/score_sde code), else d = decay
``grad_norm``    global 2-norm of the (all-reduced) gradient before clipping to ``grad_clip``
===============  ===================================================================================================

The loss is any per-example callable ``loss_fn(model, x0, *, generator, **cond) -> [B]`` (``losses.DSMLoss`` by
default; the ``discrete`` proposal for ``Discrete`` processes).  Launch data-parallel runs with
``torchrun --nproc_per_node=K script.py``, call ``init_distributed()`` before ``train`` (gloo on CPU, NCCL on GPU) and
``shutdown_distributed()`` at the end; every rank returns from ``train`` only after rank 0 wrote the final checkpoint.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from .._utils import check_device
from .._utils import progress as tqdm
from ..core.denoisers import DiffusionModel
from ..core.processes import Discrete
from ..data.streaming import ArrayDataset, decode, make_loader, random_hflip
from ..io import checkpoints as ckpts
from .losses import DSMLoss, LossConfig

OPTIMIZERS = ("adamw", "adam", "rmsprop")
LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "time")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or gradient norm becomes NaN/inf; the model is left at the previous step."""


@dataclass(frozen=True)
class TrainConfig:
    """Training options (the CLI maps YAML onto this).  ``grad_clip`` None or 0 disables clipping;
    ``ckpt_every`` 0 saves only at the end (and at ``until_step``); ``cond_drop_prob`` replaces labels by the null
    label -1 with that probability (classifier-free guidance training); ``data_shards`` None = world size x
    ``grad_accum``.  ``amp``: "none", "bf16" (autocast) or "fp16" (autocast + dynamic GradScaler; a step whose
    scaled gradient overflows is skipped, as in torch.amp); ``bf16=True`` is the older spelling of ``amp="bf16"``.
    ``compile``: run the loss through ``torch.compile``.  ``num_workers``: DataLoader worker processes.
    ``hflip``: random horizontal flips of image batches."""

    steps: int = 1000
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    bf16: bool = False
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 0
    keep_checkpoints: int = 2
    data_shards: int | None = None
    cond_drop_prob: float = 0.0
    device: str = "cpu"
    amp: str = "none"
    compile: bool = False
    grad_accum: int = 1
    num_workers: int = 0
    hflip: bool = False

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {OPTIMIZERS}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        for name in ("steps", "batch_size", "log_every", "keep_checkpoints"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "ckpt_every"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a nonnegative integer, got {getattr(self, name)!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        if not 0 <= self.ema_decay < 1 or not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.cond_drop_prob <= 1:
            raise ValueError("need 0 <= ema_decay < 1, 0 <= min_lr_ratio <= 1 and 0 <= cond_drop_prob <= 1")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"grad_clip must be None or >= 0, got {self.grad_clip}")
        if self.data_shards is not None and (self.data_shards < 1 or self.batch_size % self.data_shards):
            raise ValueError(f"data_shards ({self.data_shards}) must divide batch_size ({self.batch_size})")
        self._check_scale_options()

    def _check_scale_options(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {self.amp!r}")
        if self.bf16 and self.amp == "fp16":
            raise ValueError("bf16=True contradicts amp='fp16'; set only amp")
        for name in ("grad_accum", "num_workers"):
            v, low = getattr(self, name), 1 if name == "grad_accum" else 0
            if isinstance(v, bool) or int(v) != v or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.grad_accum > 1 and self.data_shards is not None:
            raise ValueError(f"set either data_shards ({self.data_shards}, global micro-batches) or grad_accum "
                             f"({self.grad_accum}, micro-batches per rank), not both")

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype (``torch.bfloat16`` / ``torch.float16``) or None for full precision."""
        return torch.bfloat16 if self.bf16 else AMP_DTYPES[self.amp]

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-compatible dict (written next to every checkpoint)."""
        return ckpts.jsonable(asdict(self))


@dataclass
class TrainResult:
    """What ``train`` returns: the trained model, its EMA copy, per-step losses of this call, the final step,
    the run folder and the last checkpoint written (JSON path)."""

    model: nn.Module
    ema_model: nn.Module
    history: list[float] = field(default_factory=list)
    step: int = 0
    run_dir: Path | None = None
    checkpoint: Path | None = None
    n_params: int = 0


# -- schedules and EMA ---------------------------------------------------------------------------
def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup, then cosine decay or constant."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    p = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def ema_decay_at(n_updates: int, config: TrainConfig) -> float:
    """EMA decay after ``n_updates`` optimizer updates (>= 1)."""
    if config.ema_warmup:
        return min(config.ema_decay, (1 + n_updates) / (10 + n_updates))
    return config.ema_decay


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay theta_ema + (1 - decay) theta for parameters; buffers are copied."""
    for e, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` (``adamw``, ``adam`` or ``rmsprop``) over ``params`` with the
    configured lr, betas and weight decay."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return torch.optim.RMSprop(params, lr=config.lr, weight_decay=config.weight_decay)


# -- deterministic randomness ------------------------------------------------------------------
def derived_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (numpy ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def make_generator(device: torch.device, *keys: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derived_seed(*keys)`` (so every (seed, step, rank)
    stream is reproducible)."""
    return torch.Generator(device=device).manual_seed(derived_seed(*keys))


class BatchIndexer:
    """Global batch indices of each step: consecutive slices of per-epoch permutations seeded from (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self._cache = n, batch_size, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {e: p for e, p in self._cache.items() if e >= epoch - 1}
            self._cache[epoch] = torch.randperm(self.n, generator=make_generator(torch.device("cpu"),
                                                                                 self.seed, 0, epoch))
        return self._cache[epoch]

    def __call__(self, step: int) -> torch.Tensor:
        start, stop = step * self.batch_size, (step + 1) * self.batch_size
        parts = [self._perm(e)[max(start - e * self.n, 0): stop - e * self.n]
                 for e in range(start // self.n, (stop - 1) // self.n + 1)]
        return torch.cat(parts)


class ShardBatchSampler:
    """Batch sampler of one rank: for steps ``start .. end - 1`` it yields, in order, the index lists of the shards
    ``shards`` (a range of 0..n_shards-1) of the global batch ``indexer(step)``; a DataLoader over it streams this
    rank's micro-batches."""

    def __init__(self, indexer: BatchIndexer, shards: range, n_shards: int, start: int, end: int):
        self.indexer, self.shards, self.n_shards, self.start, self.end = indexer, shards, n_shards, start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start) * len(self.shards)

    def __iter__(self):
        ps = self.indexer.batch_size // self.n_shards
        for step in range(self.start, self.end):
            idx = self.indexer(step)
            for k in self.shards:
                yield idx[k * ps:(k + 1) * ps].tolist()


# -- distributed helpers -----------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(backend: str | None = None, init_method: str | None = None) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT):
    NCCL when CUDA is available, else gloo; sets the CUDA device to LOCAL_RANK.  Returns (rank, world size)."""
    if not dist.is_available():
        raise ValueError("torch.distributed is not available in this build of torch")
    if not dist.is_initialized():
        if "RANK" not in os.environ and init_method is None:
            raise ValueError("init_distributed needs torchrun's environment (RANK, WORLD_SIZE, ...) or an init_method")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, init_method=init_method)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist_info()


def shutdown_distributed() -> None:
    """End a torchrun job cleanly: wait for every rank (barrier), then destroy the default process group.

    Call it once per process after the last collective.  A rank that tears down gloo while its peer is still busy
    (rank 0 writing a checkpoint) can abort at exit ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """``"cuda"`` becomes ``cuda:LOCAL_RANK`` under torchrun; other names are used as given."""
    if name == "cuda" and dist_info()[1] > 1:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device(name)


class LossModule(nn.Module):
    """``forward(x0, generator, cond) = loss_fn(model, x0, generator=generator, **cond)`` (per-example ``[B]``): the
    module that DDP and ``torch.compile`` wrap, so gradient hooks and graphs cover the whole loss."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, x0: torch.Tensor, generator: torch.Generator, cond: dict) -> torch.Tensor:
        """Per-example losses ``[B]`` of ``x0 [B, ...]``."""
        return self.loss_fn(self.model, x0, generator=generator, **cond)


def _wrap(model: nn.Module, loss_fn: Callable, device: torch.device, compile_: bool):
    """(module to call, DDP module or None): DDP over the loss when world > 1 (it broadcasts rank 0's weights)."""
    module, ddp = LossModule(model, loss_fn), None
    if dist_info()[1] > 1:
        ddp = module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    return (torch.compile(module) if compile_ else module), ddp


# -- logging -----------------------------------------------------------------------------------
class RunLogger:
    """CSV log ``run_dir/log.csv`` (step, loss, lr, grad_norm, time) and TensorBoard when installed (rank 0 only).
    On resume, rows after the resumed step (written by a run that died later) are dropped."""

    def __init__(self, run_dir: Path | None, start_step: int, enabled: bool = True):
        self.enabled, self.writer, self._file = enabled and run_dir is not None, None, None
        if not self.enabled:
            return
        path = Path(run_dir) / "log.csv"
        rows = []
        if path.is_file() and start_step > 0:
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        lines = [",".join(LOG_FIELDS)] + [",".join(r[k] for k in LOG_FIELDS) for r in rows]
        ckpts.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
        self._file = path.open("a", newline="")
        self._csv = csv.writer(self._file)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(run_dir))
        except ImportError:  # tensorboard not installed: CSV only
            self.writer = None

    def log(self, step: int, loss: float, lr: float, grad_norm: float, elapsed: float) -> None:
        """Append one row (step, loss, lr, gradient norm, elapsed seconds) to ``log.csv`` (and TensorBoard
        when installed); no-op on ranks other than 0."""
        if not self.enabled:
            return
        self._csv.writerow([step, f"{loss:.8g}", f"{lr:.8g}", f"{grad_norm:.8g}", f"{elapsed:.3f}"])
        self._file.flush()
        if self.writer is not None:
            for name, v in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm)):
                self.writer.add_scalar(f"train/{name}", v, step)

    def close(self) -> None:
        """Close the CSV file and the TensorBoard writer."""
        if self._file is not None:
            self._file.close()
        if self.writer is not None:
            self.writer.close()


def read_log(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of ``run_dir/log.csv`` as dicts of floats (``step`` as int)."""
    with (Path(run_dir) / "log.csv").open() as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class _Run:
    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    loss_fn: Callable
    data: Dataset
    config: TrainConfig
    device: torch.device
    shards: int
    my_shards: range
    indexer: BatchIndexer
    step_module: nn.Module
    ddp: nn.Module | None
    scaler: torch.amp.GradScaler
    batches: Any = None


def _micro_batch(run: _Run, batch, step: int, k: int) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """(x0 on the device in [-1, 1] (flipped when ``hflip``), cond, labels) of shard k of step ``step``."""
    x, y = batch
    x0 = decode(x.to(run.device, non_blocking=True), run.params[0].dtype)
    if run.config.hflip:
        x0 = random_hflip(x0, make_generator(run.device, run.config.seed, 3, step, k))
    return x0, {}, (None if y is None else y.to(run.device, non_blocking=True))


def _shard_backward(run: _Run, batch, step: int, k: int) -> torch.Tensor:
    """Loss of shard k of the global batch (mean over its examples / number of shards); backpropagates it (times
    the world size, which DDP's average divides out)."""
    cfg = run.config
    x0, cond, y = _micro_batch(run, batch, step, k)
    ps = x0.shape[0]
    gen = make_generator(run.device, cfg.seed, 1, step, k)
    if y is not None:
        if cfg.cond_drop_prob > 0:
            drop = torch.rand(ps, generator=gen, device=run.device) < cfg.cond_drop_prob
            y = torch.where(drop, torch.full_like(y, -1), y)
        cond["y"] = y
    amp = cfg.amp_dtype
    with torch.autocast(run.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        values = run.step_module(x0, gen, cond)
    if values.shape != (ps,):
        raise ValueError(f"loss_fn must return per-example values of shape [{ps}], got {tuple(values.shape)}")
    loss = values.float().mean() / run.shards
    world = dist_info()[1]
    run.scaler.scale(loss * world if world > 1 else loss).backward()
    return loss.detach()


def _accumulate(run: _Run, step: int) -> torch.Tensor:
    """Backpropagate this rank's micro-batches of step ``step`` (DDP all-reduces after the last one)."""
    loss = torch.zeros((), device=run.device)
    last = len(run.my_shards) - 1
    for j, k in enumerate(run.my_shards):
        batch = next(run.batches)
        with run.ddp.no_sync() if (run.ddp is not None and j < last) else nullcontext():
            loss = loss + _shard_backward(run, batch, step, k)
    return loss


def _train_step(run: _Run, step: int) -> tuple[float, float]:
    """One optimizer update (0-based ``step``); returns (global batch loss, gradient norm before clipping).
    Under fp16 a step with an overflowing gradient (norm inf/NaN) is skipped by the GradScaler (no EMA update)."""
    run.optimizer.zero_grad(set_to_none=True)
    loss = _accumulate(run, step)
    for p in run.params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if dist_info()[1] > 1:
        dist.all_reduce(loss)  # the loss for the log; gradients were averaged by DDP
    run.scaler.unscale_(run.optimizer)
    clip = run.config.grad_clip or math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, clip))
    loss_v = float(loss)
    if not (math.isfinite(loss_v) and (math.isfinite(grad_norm) or run.scaler.is_enabled())):
        return loss_v, grad_norm  # the caller stops before the update
    for g in run.optimizer.param_groups:
        g["lr"] = lr_at(step, run.config)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if math.isfinite(grad_norm):
        update_ema(run.ema, run.model, ema_decay_at(step + 1, run.config))
    return loss_v, grad_norm


def _as_dataset(data, labels) -> Dataset:
    if isinstance(data, Dataset):
        if labels is not None:
            raise ValueError("labels= is for tensor data; a Dataset yields its own labels (open it with labels)")
        return data
    if not isinstance(data, torch.Tensor) or data.ndim < 1 or data.shape[0] < 1:
        raise ValueError("data must be a tensor of examples [N, ...] with N >= 1 or a torch Dataset")
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.is_floating_point()):
        raise ValueError(f"labels must be an integer tensor [N] with N={data.shape[0]}")
    return ArrayDataset(data, labels)


def _setup(model: nn.Module, data, labels, config: TrainConfig, loss_fn) -> _Run:
    rank, world = dist_info()
    dataset = _as_dataset(data, labels)
    shards = config.data_shards or world * config.grad_accum
    if shards % world or config.batch_size % shards:
        raise ValueError(f"data_shards ({shards}) must be a multiple of the world size ({world}) and divide "
                         f"batch_size ({config.batch_size})")
    check_device(config.device, "train.device")
    device = resolve_device(config.device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if loss_fn is None:
        discrete = isinstance(model, DiffusionModel) and isinstance(model.process, Discrete)
        proposal = "discrete" if discrete else "uniform"
        loss_fn = DSMLoss(LossConfig(proposal=proposal))
    step_module, ddp = _wrap(model, loss_fn, device, config.compile)  # DDP broadcasts rank 0's weights
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    per_rank = shards // world
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp_dtype == torch.float16)
    return _Run(model, ema, make_optimizer(params, config), params, loss_fn, dataset, config, device, shards,
                range(rank * per_rank, (rank + 1) * per_rank), BatchIndexer(len(dataset), config.batch_size,
                                                                          config.seed), step_module, ddp, scaler)


def newest_verified_checkpoint(run_dir: Path, device: str | torch.device = "cpu"):
    """``(Checkpoint, json path)`` of the newest checkpoint in ``run_dir`` whose tensors match their sha256 (a
    truncated or replaced newer one is skipped with a warning naming it), ``(None, None)`` when there is none;
    ``ValueError`` when checkpoints exist but none verifies."""
    found = ckpts.list_checkpoints(run_dir)
    skipped = []
    for path in reversed(found):
        try:
            ckpt = ckpts.load_checkpoint(path, device=device)
        except (ValueError, OSError):  # sha256 mismatch, truncated safetensors, unreadable file
            skipped.append(path.stem)
            continue
        if skipped:
            warnings.warn(f"resume: skipped {', '.join(skipped)} (sha256 mismatch or unreadable: truncated or "
                          f"replaced); resuming from {path.stem} (step {ckpt.step})", stacklevel=3)
        return ckpt, path
    if found:
        raise ValueError(f"resume: none of the {len(found)} checkpoint(s) in {run_dir} verifies against its sha256 "
                         f"({', '.join(skipped)}); start a new run with --overwrite")
    return None, None


def _resume(run: _Run, run_dir: Path) -> tuple[int, Path | None]:
    ckpt, latest = newest_verified_checkpoint(run_dir, run.device)
    if ckpt is None:
        return 0, None
    saved = ckpt.meta.get("train_config") or {}
    for key in ("seed", "batch_size", "optimizer"):
        if key in saved and saved[key] != getattr(run.config, key):
            warnings.warn(f"resuming with {key}={getattr(run.config, key)!r} but the checkpoint used {saved[key]!r}; "
                          "the run will not match an uninterrupted one", stacklevel=3)
    if ckpt.meta.get("extra", {}).get("data_shards", run.shards) != run.shards:
        warnings.warn("resuming with a different number of data shards: loss noise will differ", stacklevel=3)
    if run.scaler.is_enabled() and "grad_scaler" in ckpt.meta.get("extra", {}):
        run.scaler.load_state_dict(ckpt.meta["extra"]["grad_scaler"])
    try:
        return ckpts.restore(ckpt, run.model, run.ema, run.optimizer), latest
    except RuntimeError as e:  # load_state_dict: the run's model differs from the checkpoint's
        raise ValueError(f"resume: checkpoint {latest} does not fit this config's model "
                         f"({str(e).splitlines()[0]}); resume with the run's own config") from None


def _save(run: _Run, run_dir: Path, step: int) -> Path:
    loss_cfg = getattr(run.loss_fn, "config", None)
    extra = {"data_shards": run.shards, "world_size": dist_info()[1],
             "loss_config": loss_cfg.to_dict() if hasattr(loss_cfg, "to_dict") else None}
    if run.scaler.is_enabled():
        extra["grad_scaler"] = run.scaler.state_dict()
    path = ckpts.save_checkpoint(run_dir / f"ckpt_{step:08d}", run.model, ema_model=run.ema, optimizer=run.optimizer,
                                 step=step, train_config=run.config.to_dict(), extra=extra)
    rotate_checkpoints(run_dir, run.config.keep_checkpoints, keep=path)
    return path


def rotate_checkpoints(run_dir: Path, n_keep: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the ``n_keep`` checkpoints with the largest step numbers, never the newest one nor ``keep``
    (the one just written); returns the deleted JSON paths."""
    found = ckpts.list_checkpoints(run_dir)  # ordered by the step stored in each sidecar
    keep_json = ckpts.checkpoint_paths(keep)[1] if keep is not None else None
    doomed = [p for p in found[:-max(1, n_keep)] if p != keep_json]
    for old in doomed:
        ckpts.delete_checkpoint(old)
    return doomed


def train(model: nn.Module, data: torch.Tensor | Dataset, config: TrainConfig | None = None,
          run_dir: str | os.PathLike | None = None, resume: bool = False, loss_fn: Callable | None = None,
          progress: bool = True, labels: torch.Tensor | None = None, until_step: int | None = None) -> TrainResult:
    """Train ``model`` (a ``NetworkModel`` or any module the loss accepts) on ``data``: a tensor ``[N, ...]`` or a
    streamed ``torch.utils.data.Dataset`` answering ``__getitems__(indices) -> (x, y or None)``
    (``scorelab.data.streaming``; uint8 images are decoded to [-1, 1] on the device).

    Args:
        config: ``TrainConfig``.  run_dir: folder for ``log.csv`` and checkpoints (rank 0 writes).
        resume: continue from the newest checkpoint in ``run_dir`` that verifies (``newest_verified_checkpoint``;
            starts fresh when there is none); this also
            restores torch's global RNG state saved with it (only dropout layers draw from it).
        loss_fn: per-example loss ``loss_fn(model, x0, *, generator, **cond) -> [B]`` (default DSM).
        labels: integer class labels ``[N]`` passed as ``y`` (with ``cond_drop_prob`` null-label dropout).
        until_step: stop (and checkpoint) after this many total updates, keeping the schedule of ``config.steps``.
    Raises ``NonFiniteLossError`` on a NaN/inf loss or gradient; the last good checkpoint stays in ``run_dir``.
    """
    config = config or TrainConfig()
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir")
    run = _setup(model, data, labels, config, loss_fn)
    start, last_ckpt = _resume(run, run_dir) if resume else (0, None)
    end = config.steps if until_step is None else min(int(until_step), config.steps)
    on_gpu = isinstance(run.data, ArrayDataset) and isinstance(run.data.x, torch.Tensor) and run.data.x.is_cuda
    run.batches = iter(make_loader(run.data, ShardBatchSampler(run.indexer, run.my_shards, run.shards, start, end),
                                   config.num_workers, pin_memory=run.device.type == "cuda" and not on_gpu))
    rank = dist_info()[0]
    logger = RunLogger(run_dir, start, enabled=rank == 0)
    history, window, t0 = [], [], time.perf_counter()
    bar = tqdm(total=end, initial=min(start, end), disable=not progress or rank != 0, desc="train", leave=False)
    try:
        for step in range(start, end):
            loss, grad_norm = _train_step(run, step)
            if not (math.isfinite(loss) and (math.isfinite(grad_norm) or run.scaler.is_enabled())):
                raise NonFiniteLossError(
                    f"training diverged: non-finite loss ({loss}) or gradient norm ({grad_norm}) at update {step + 1}"
                    f", stopped before applying it; last good checkpoint: {last_ckpt or 'none'}; try a smaller "
                    "train.lr, train.grad_clip=1.0 or more train.warmup_steps")
            history.append(loss)
            window.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            done = step + 1
            if done % config.log_every == 0 or done == end:
                logger.log(done, sum(window) / len(window), lr_at(step, config), grad_norm, time.perf_counter() - t0)
                window = []
            if rank == 0 and run_dir is not None and (
                    (config.ckpt_every and done % config.ckpt_every == 0) or done == end):
                last_ckpt = _save(run, run_dir, done)
    finally:
        bar.close()
        logger.close()
    if dist_info()[1] > 1:
        dist.barrier()  # every rank returns after rank 0 has written the final checkpoint
    return TrainResult(run.model, run.ema, history, max(start, end), run_dir, last_ckpt,
                       sum(p.numel() for p in run.params))


__all__ = ["TrainConfig", "TrainResult", "train", "NonFiniteLossError", "lr_at", "ema_decay_at", "update_ema",
           "make_optimizer", "init_distributed", "shutdown_distributed", "dist_info", "BatchIndexer", "derived_seed",
           "read_log", "RunLogger", "newest_verified_checkpoint", "rotate_checkpoints", "ShardBatchSampler",
           "LossModule", "AMP_DTYPES"]
