r"""One call for the CLI: ``run(BridgeConfig(...), out_dir) -> dict`` fits a Schrödinger bridge between two data sets
(or a data set and N(0, I)) and writes the coupling, samples in both directions, a plot, a checkpoint and a report.

=======================  ===========================================================================================
``source, target``       a data-set name (``data.DATASETS``: moons, swiss_roll, 8gaussians, checkerboard, ...,
                         digits), a ``.npy`` / ``.csv`` / ``.npz`` path, or ``gauss`` for N(0, I)
``reference``            ``brownian`` (Var(X_N | X_0) = sigma^2, entropic OT with reg 2 sigma^2) or ``vp`` (OU)
``reference_variance``   sigma^2 = Var(X_N | X_0) per coordinate (> 0; < 1 for ``vp``)
``method``               ``dsb`` (IPF by mean matching) or ``dsbm`` (IMF by bridge matching)
``iterations, steps``    outer IPF/IMF iterations; N steps of the chains
``n``                    number of coupled pairs written (default: all source points)
=======================  ===========================================================================================

Written files: ``pairs.npy`` ``[n, 2, d]`` (x_0, forward end point from x_0), ``samples_forward.npy`` (= the
pushed source, ``[n, d]``), ``samples_backward.npy`` (the target pulled back, ``[n, d]``), ``coupling.png`` (2-D
only), ``bridge.safetensors`` + ``bridge.json`` (``io.checkpoints``), ``report.json``.
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import DATASETS, load_dataset
from ..evaluation import metrics
from ..io.checkpoints import atomic_write_bytes, jsonable, save_checkpoint, unused_dir
from ..plotting import coupling_plot
from .chains import BridgeProblem, BridgeResult, FitConfig
from .closed_form import sinkhorn_coupling
from .dsbm import dsbm
from .ipf import dsb
from .nets import make_net
from .reference import make_reference

GAUSS = "gauss"
METHODS = ("dsb", "dsbm")


@dataclass(frozen=True)
class BridgeConfig:
    """One bridge run (the CLI maps flags onto it; module table).  ``fit_*`` fields form the ``chains.FitConfig`` of
    every half-step; ``net`` is ``mlp`` or ``affine``; ``data_n`` points are drawn from built-in toy sets;
    ``eval_n`` points enter the W2 / Sinkhorn evaluation."""

    source: str = "moons"
    target: str = GAUSS
    reference_variance: float = 1.0
    reference: str = "brownian"
    method: str = "dsbm"
    iterations: int = 5
    steps: int = 20
    n: int | None = None
    schedule: str = "symmetric"
    init: str = "independent"
    net: str = "mlp"
    width: int = 128
    depth: int = 3
    fit_iterations: int = 2000
    fit_batch: int = 512
    fit_lr: float = 1e-3
    fit_ema: float = 0.99
    cache_size: int = 4096
    cache_refresh: int = 250
    data_n: int = 10_000
    eval_n: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        v = self.reference_variance
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"--reference-variance must be a finite number > 0, got {v!r}")
        for name in ("iterations", "steps", "data_n", "eval_n"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.n is not None and self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n!r}")

    def fit(self) -> FitConfig:
        """The per-half-step ``FitConfig``."""
        return FitConfig(iterations=self.fit_iterations, batch=self.fit_batch, lr=self.fit_lr, ema=self.fit_ema,
                         cache_size=self.cache_size, cache_refresh=self.cache_refresh,
                         solver="lstsq" if self.net == "affine" else "adam")


def _points(name: str, data_n: int, seed: int) -> torch.Tensor:
    """A data set as finite float32 points ``[N, d]`` (images are flattened)."""
    generated = name in DATASETS and len(DATASETS[name].example_shape) == 1  # toy sets are drawn; digits, files whole
    x, _ = load_dataset(name, n=data_n if generated else None, seed=seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name}: no data points (shape {tuple(x.shape)})")
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] == 0 or not torch.isfinite(x).all():
        raise ValueError(f"{name}: data must be finite with at least one coordinate (shape {tuple(x.shape)})")
    return x


def load_endpoints(source: str, target: str, data_n: int = 10_000, seed: int = 0
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """Source and target points ``[N, d]`` (``None`` for ``gauss``) and their common dimension d."""
    if source == GAUSS and target == GAUSS:
        raise ValueError("--source and --target are both 'gauss': at least one must be a data set or file")
    x0 = None if source == GAUSS else _points(source, data_n, seed)
    x1 = None if target == GAUSS else _points(target, data_n, seed + 1)
    dims = {x.shape[1] for x in (x0, x1) if x is not None}
    if len(dims) != 1:
        raise ValueError(f"dimension mismatch: --source {source} has d={x0.shape[1]}, --target {target} has "
                         f"d={x1.shape[1]}; both ends need the same dimension")
    return x0, x1, dims.pop()


def empirical_sampler(x: torch.Tensor | None, d: int):
    """``(n, generator) -> [n, d]``: rows of ``x`` drawn with replacement, or N(0, I) when ``x`` is None."""
    if x is None:
        return lambda n, g: torch.randn(n, d, generator=g)
    return lambda n, g: x[torch.randint(0, x.shape[0], (n,), generator=g)]


def fit_bridge(cfg: BridgeConfig, x0: torch.Tensor | None, x1: torch.Tensor | None, d: int,
               progress: bool = True, callback=None) -> tuple[BridgeResult, nn.Module, nn.Module]:
    """Build the reference and nets from ``cfg`` and run DSB or DSBM -> (result, raw F net, raw B net);
    ``callback(n, F, B) -> dict`` as in ``ipf.dsb``."""
    torch.manual_seed(cfg.seed)  # network initialization
    ref = make_reference(cfg.reference, float(cfg.reference_variance), cfg.steps, cfg.schedule)
    problem = BridgeProblem(empirical_sampler(x0, d), empirical_sampler(x1, d), ref)
    kw = {"width": cfg.width, "depth": cfg.depth}
    F, B = make_net(cfg.net, d, cfg.steps, **kw), make_net(cfg.net, d, cfg.steps, **kw)
    if cfg.method == "dsb":
        res = dsb(problem, F, B, cfg.iterations, cfg.fit(), cfg.seed, callback=callback, progress=progress)
    else:
        res = dsbm(problem, F, B, cfg.iterations, cfg.fit(), cfg.seed, init=cfg.init, callback=callback,
                   progress=progress)
    return res, F, B


def evaluate_coupling(pairs: torch.Tensor, target: torch.Tensor, sigma2: float, scale: float, n: int,
                      seed: int = 0) -> dict:
    """W2 of the pushed source to target points (exact LP on ``n`` points, with its two-sample floor when the target
    has 2n points), the transport cost E|X_0 - X_N|^2 and the Sinkhorn (entropic OT at reg 2 sigma^2) cost on the
    same points."""
    g = torch.Generator().manual_seed(seed)
    p = pairs[torch.randperm(pairs.shape[0], generator=g)[:n]]
    t = target[torch.randperm(target.shape[0], generator=g)]
    out = {"w2_pushed_to_target": metrics.w2_exact(p[:, 1], t[:n]),
           "transport_cost": float(((p[:, 0] - p[:, 1]) ** 2).sum(1).mean())}
    if t.shape[0] >= 2 * n:
        out["w2_floor"] = metrics.w2_exact(t[n:2 * n], t[:n])
    out["sinkhorn_cost"] = sinkhorn_coupling(p[:, 0], t[:n], sigma2, scale).cost
    return out


def _write_npy(path: Path, x: torch.Tensor) -> None:
    buf = io.BytesIO()
    np.save(buf, x.detach().cpu().numpy().astype(np.float32))
    atomic_write_bytes(path, buf.getvalue())


def run(cfg: BridgeConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Fit the bridge of ``cfg`` and write the files of the module docstring into a fresh ``out_dir`` (an existing
    non-empty folder gets a ``-2``, ``-3`` ... suffix); returns the report."""
    x0, x1, d = load_endpoints(cfg.source, cfg.target, cfg.data_n, cfg.seed)
    n = cfg.n or (x0.shape[0] if x0 is not None else x1.shape[0])
    if x0 is not None and n > x0.shape[0]:
        raise ValueError(f"--n {n} is more than the {x0.shape[0]} source points")
    t0, c0 = time.time(), time.process_time()
    res, F, B = fit_bridge(cfg, x0, x1, d, progress)
    wall, cpu = time.time() - t0, time.process_time() - c0
    out = unused_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    src = empirical_sampler(x0, d)(n, g) if x0 is None else x0[torch.randperm(x0.shape[0], generator=g)[:n]]
    tgt = empirical_sampler(x1, d)(n, g) if x1 is None else x1[torch.randperm(x1.shape[0], generator=g)[:n]]
    pairs = res.pairs(src, g)
    back = res.sample_backward(tgt, g)[:, 0]
    for name, arr in (("pairs", pairs), ("samples_forward", pairs[:, 1]), ("samples_backward", back)):
        _write_npy(out / f"{name}.npy", arr)
    ref = res.reference
    target_pts = x1 if x1 is not None else empirical_sampler(None, d)(4 * cfg.eval_n, g)
    report = {"config": asdict(cfg), "d": d, "n_pairs": n, "reference_sigma2": ref.sigma2,
              "train_wall_seconds": wall, "train_cpu_seconds": cpu, "history": res.history,
              **evaluate_coupling(pairs, target_pts, ref.sigma2, ref.A(0, ref.n_steps), min(cfg.eval_n, n))}
    if d == 2:
        coupling_plot(pairs[:, 0], pairs[:, 1], str(out / "coupling.png"),
                      title=f"{cfg.method}: {cfg.source} -> {cfg.target}, sigma^2 = {cfg.reference_variance:g}")
    save_checkpoint(out / "bridge", nn.ModuleDict({"F": F, "B": B}),
                    ema_model=nn.ModuleDict({"F": res.forward, "B": res.backward}),
                    train_config=asdict(cfg), extra={"reference": {"name": ref.name, "a": ref.a.tolist(),
                                                                   "v": ref.v.tolist()},
                                                     "net_config": F.config(), "d": d}, save_rng=False)
    atomic_write_bytes(out / "report.json", json.dumps(jsonable(report), indent=1).encode())
    report["out"] = str(out)
    return report
