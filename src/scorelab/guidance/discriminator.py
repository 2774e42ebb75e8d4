r"""Discriminator training for discriminator guidance: J_CE (Kim et al. 2023), J_MSE and J_MSE + gamma J_CE
(thesis "Boosting methods for refining diffusion models", 2024, ch. 3, eqs. 3.4, 3.8, 3.10, Prop. 1).

Notation
--------
=================  ==============================================================================================
``P_t, p_t``       diffused data (target) distribution;  ``P~_t, p~_t``: diffused model samples, s_theta = grad log p~_t
``l_phi(x, t)``    discriminator logit; d_phi = sigmoid(l_phi), r_phi = d_phi / (1 - d_phi) = e^{l_phi}
``r*``, ``d*``     r* = p_t / p~_t, d* = p_t / (p_t + p~_t) = sigmoid(log r*): the minimizer of J_CE
``c_phi``          grad_x l_phi = grad log r_phi, the score correction (c* = grad log r* = grad log p_t - s_theta)
``J_CE``           int lambda_CE(t) { E_{P_t}[-log d_phi] + E_{P~_t}[-log(1 - d_phi)] } dt            (eq. 3.4)
                   = E_t lambda_CE [softplus(-l_phi(x_t)) + softplus(l_phi(x~_t))],  t ~ U[t_lo, t_hi]
``J_MSE``          E_t lambda(t) E_{x0 ~ P, eps} || grad log p(x_t | x0) - s_theta(x_t, t) - c_phi(x_t, t) ||^2
                   with grad log p(x_t | x0) = -eps / sigma                                                   (eq. 3.8)
                   = E_t (lambda / sigma^2) || eps_theta(x_t, t) - sigma c_phi(x_t, t) - eps ||^2
                   (Prop. 1: J_MSE = J_SM + const, J_SM = E lambda ||grad log p_t - s_theta - c_phi||^2, eq. 3.7)
``J_train``        J_MSE + gamma J_CE                                                                        (eq. 3.10)
``lambda(t)``      ``"sigma2"``: sigma^2 (Song et al. 2021; eps-space error), ``"one"``: 1, ``"g2"``: g^2(t)
=================  ==============================================================================================

Squared norms are summed over the non-batch dimensions.  Generated samples of the pretrained model are drawn with any
registered sampler (``generate_samples``) and cached on disk as safetensors with a JSON sidecar.  Discriminators are
saved with ``checkpoints.save_checkpoint`` (safetensors + JSON, never unpickled).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch

from .._utils import TimeLike, as_tensor, bcast
from .._utils import progress as tqdm
from ..core.analytic import GaussianMixture, MixtureModel
from ..core.denoisers import DiffusionModel
from ..core.processes import ForwardProcess
from ..io import checkpoints as ckpts
from ..nets.heads import TimeConditionedHead, scalar_field_grad
from .wrappers import DiscriminatorGuidance, parse_window

OBJECTIVES = ("ce", "mse", "mse+ce")
LAMBDAS = ("sigma2", "one", "g2")
KIND = "discriminator"


# -- the exact oracle ----------------------------------------------------------------------------------------------
class MixtureLogRatio(torch.nn.Module):
    """Exact log density ratio log r*(x, t) = log p_t(x) - log p~_t(x) of two diffused Gaussian mixtures.

    Used as an oracle "discriminator": ``forward(x, t) -> [B]`` is the logit of d* = p_t / (p_t + p~_t)."""

    def __init__(self, target: GaussianMixture, model: GaussianMixture, process: ForwardProcess):
        super().__init__()
        if target.d != model.d:
            raise ValueError(f"target and model mixtures must have the same dimension, got {target.d} and {model.d}")
        self.target, self.model, self.process = target, model, process

    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """Exact log density ratio log p_t(x) / q_t(x) of the target and the model mixtures at (x ``[B, ...]``, t
        scalar or ``[B]``) -> ``[B]`` in x's dtype."""
        t64 = as_tensor(t, x.to(torch.float64))
        lr = self.target.log_prob_t(x, t64, self.process) - self.model.log_prob_t(x, t64, self.process)
        return lr.to(x.dtype)

    def d_star(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """The optimal discriminator d*(x, t) = sigmoid(log r*) -> ``[B]``."""
        return torch.sigmoid(self(x, t))


# -- discriminator networks ----------------------------------------------------------------------------------------
def make_discriminator(event_shape: tuple[int, ...], process: ForwardProcess, time_input: str | None = None,
                       **head_kwargs: Any) -> TimeConditionedHead:
    """A fresh time-conditioned discriminator: ``nets.VectorHead`` for vectors ``(d,)``, ``nets.ImageHead`` for
    images ``(C, H, W)``; ``head_kwargs`` go to the head (width/depth, base_channels/channel_mults, ...)."""
    from ..nets import ImageHead, VectorHead

    shape = tuple(int(s) for s in event_shape)
    if len(shape) == 1:
        net = VectorHead(shape[0], num_outputs=1, **head_kwargs)
    elif len(shape) == 3:
        net = ImageHead(in_channels=shape[0], num_outputs=1, **head_kwargs)
    else:
        raise ValueError(f"event_shape must be (d,) for vectors or (C, H, W) for images, got {event_shape}")
    return TimeConditionedHead(net, process, time_input)


def save_discriminator(path: str | Path, disc: TimeConditionedHead, config: DiscriminatorConfig | None = None,
                       extra: dict | None = None) -> Path:
    """Save ``disc`` as ``<path>.safetensors`` + ``<path>.json`` (atomic); returns the JSON path."""
    if not isinstance(disc, TimeConditionedHead) or not hasattr(disc.net, "config"):
        raise ValueError("save_discriminator needs a TimeConditionedHead whose net has config() (nets.* heads)")
    return ckpts.save_checkpoint(path, disc, train_config=None if config is None else asdict(config),
                                 extra={"kind": KIND, **(extra or {})}, save_rng=False)


def load_discriminator(path: str | Path, device: str | torch.device = "cpu") -> TimeConditionedHead:
    """Rebuild a discriminator saved by ``save_discriminator`` (stem, .json or .safetensors path), in eval mode."""
    from ..core.processes import process_from_config
    from ..nets import build_net

    ckpt = ckpts.load_checkpoint(path)
    if ckpt.meta.get("extra", {}).get("kind") != KIND:
        raise ValueError(f"{path} is not a discriminator checkpoint (extra.kind != {KIND!r})")
    disc = TimeConditionedHead(build_net(ckpt.meta["net_config"]), process_from_config(ckpt.meta["process_config"]),
                               ckpt.meta.get("time_input"))
    disc.load_state_dict(ckpt.model)
    return disc.to(device).eval()


# -- objectives ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiscriminatorConfig:
    """Discriminator training options.

    objective: ``"ce"`` (Kim et al.), ``"mse"`` or ``"mse+ce"`` (J_MSE + gamma J_CE).  lam / ce_lam: lambda(t) of J_MSE
    and of J_CE (``LAMBDAS``).  t_min / t_max: the uniform time proposal (default: the process interval).
    batch_size: examples per side (data / generated) per step.  grad_clip: None or 0 disables clipping."""

    objective: str = "mse+ce"
    gamma: float = 1.0
    lam: str = "sigma2"
    ce_lam: str = "one"
    t_min: float | None = None
    t_max: float | None = None
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    log_every: int = 50

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {OBJECTIVES}")
        if self.lam not in LAMBDAS or self.ce_lam not in LAMBDAS:
            raise ValueError(f"lam and ce_lam must be in {LAMBDAS}, got {self.lam!r}, {self.ce_lam!r}")
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        for name in ("steps", "batch_size", "log_every"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        if self.t_min is not None and self.t_max is not None and not self.t_min < self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be < t_max ({self.t_max})")


def lambda_t(process: ForwardProcess, t: torch.Tensor, name: str) -> torch.Tensor:
    """lambda(t) ``[B]``: ``"sigma2"`` sigma^2, ``"one"`` 1, ``"g2"`` g^2(t)."""
    if name == "sigma2":
        return process.sigma(t) ** 2
    if name == "one":
        return torch.ones_like(t)
    if name == "g2":
        return process.diffusion_sq(t)
    raise ValueError(f"unknown lambda {name!r}; expected one of {LAMBDAS}")


def ce_terms(disc: Callable, x_real_t: torch.Tensor, t_real: torch.Tensor, x_fake_t: torch.Tensor,
             t_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy terms on diffused points: (-log d(x_t) = softplus(-l) ``[B_r]``,
    -log(1 - d(x~_t)) = softplus(l) ``[B_f]``)."""
    return torch.nn.functional.softplus(-disc(x_real_t, t_real)), torch.nn.functional.softplus(disc(x_fake_t, t_fake))


def mse_terms(disc: Callable, model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
              create_graph: bool = True, eps_theta: torch.Tensor | None = None) -> torch.Tensor:
    """|| eps_theta(x_t) - sigma grad_x l(x_t, t) - eps ||^2 ``[B]`` for x_t = alpha x0 + sigma eps; times
    lambda / sigma^2 this is the J_MSE integrand (eq. 3.8).  ``eps_theta`` may be passed precomputed (the
    pretrained model is frozen; it is evaluated without gradients otherwise)."""
    if eps_theta is None:
        with torch.no_grad():
            eps_theta = model.eps(x_t, t)
    sigma = bcast(model.process.sigma(t), x_t)
    c = scalar_field_grad(disc, x_t, t, create_graph=create_graph)
    return (eps_theta - sigma * c - eps).reshape(x_t.shape[0], -1).pow(2).sum(1)


def sample_t(process: ForwardProcess, n: int, config: DiscriminatorConfig, generator: torch.Generator | None,
             like: torch.Tensor) -> torch.Tensor:
    """t ~ U[t_lo, t_hi] ``[n]`` (dtype/device of ``like``)."""
    lo = process.t_min if config.t_min is None else float(config.t_min)
    hi = process.t_max if config.t_max is None else float(config.t_max)
    if not 0 <= lo < hi <= process.t_max * (1 + 1e-12):
        raise ValueError(f"time interval [{lo}, {hi}] must satisfy 0 <= t_min < t_max <= {process.t_max}")
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=like.device)
    return (lo + (hi - lo) * u).to(like.dtype)


def discriminator_loss(disc: Callable, model: DiffusionModel, x0_real: torch.Tensor, x0_fake: torch.Tensor | None,
                       config: DiscriminatorConfig,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One Monte-Carlo estimate of the objective: dict(total, ce, mse) scalars (ce / mse are NaN when unused).

    J_CE uses diffused data ``x0_real`` and diffused generated samples ``x0_fake`` at independent uniform times;
    J_MSE uses diffused data only (eq. 3.8)."""
    process, nan = model.process, x0_real.new_tensor(float("nan"))
    out = {"ce": nan, "mse": nan}
    if config.objective in ("ce", "mse+ce"):
        if x0_fake is None:
            raise ValueError(f"objective {config.objective!r} needs generated samples x0_fake")
        t_r, t_f = (sample_t(process, x.shape[0], config, generator, x) for x in (x0_real, x0_fake))
        (x_r, _), (x_f, _) = process.marginal_sample(x0_real, t_r, generator), process.marginal_sample(
            x0_fake, t_f, generator)
        a, b = ce_terms(disc, x_r, t_r, x_f, t_f)
        out["ce"] = (lambda_t(process, t_r, config.ce_lam) * a).mean() + (lambda_t(process, t_f, config.ce_lam)
                                                                          * b).mean()
    if config.objective in ("mse", "mse+ce"):
        t = sample_t(process, x0_real.shape[0], config, generator, x0_real)
        x_t, eps = process.marginal_sample(x0_real, t, generator)
        w = lambda_t(process, t, config.lam) / process.sigma(t) ** 2
        out["mse"] = (w * mse_terms(disc, model, x_t, t, eps)).mean()
    if config.objective == "mse+ce":
        out["total"] = out["mse"] + config.gamma * out["ce"]
    else:
        out["total"] = out[config.objective]
    return out


# -- training ------------------------------------------------------------------------------------------------------
@dataclass
class DiscriminatorTrainResult:
    """The trained discriminator, logged history (dicts of step, total, ce, mse: means over ``log_every`` steps),
    callback results and wall time."""

    discriminator: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[Any] = field(default_factory=list)
    wall_s: float = 0.0


def _batch(x: torch.Tensor | None, n: int, g: torch.Generator) -> torch.Tensor | None:
    if x is None:
        return None
    return x[torch.randint(0, x.shape[0], (min(n, x.shape[0]),), generator=g, device=x.device)]


def train_discriminator(disc: torch.nn.Module, model: DiffusionModel, x_real: torch.Tensor,
                        x_fake: torch.Tensor | None, config: DiscriminatorConfig | None = None, *,
                        progress: bool = True, callback: Callable[[int, torch.nn.Module], Any] | None = None,
                        eval_every: int = 0) -> DiscriminatorTrainResult:
    """Train ``disc`` (``disc(x, t) -> logits [B]``) against the frozen ``model`` with Adam.

    x_real: data ``[N, ...]``; x_fake: samples of the pretrained model ``[M, ...]`` (needed by J_CE).  Minibatches
    are drawn with replacement from both sets.  ``callback(step, disc)`` runs every ``eval_every`` steps (and at
    the end) in eval mode; its results are collected in ``evaluations``."""
    config = config or DiscriminatorConfig()
    g = torch.Generator(device=x_real.device).manual_seed(config.seed)
    opt = torch.optim.AdamW(disc.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    res, window, t0 = DiscriminatorTrainResult(disc), [], time.perf_counter()
    model.requires_grad_(False)  # the pretrained model is frozen (a DiffusionModel is an nn.Module)
    for step in tqdm(range(1, config.steps + 1), disable=not progress, desc=f"disc[{config.objective}]",
                     leave=False):
        disc.train()
        loss = discriminator_loss(disc, model, _batch(x_real, config.batch_size, g),
                                  _batch(x_fake, config.batch_size, g), config, g)
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(disc.parameters(), config.grad_clip)
        opt.step()
        window.append({k: float(v.detach()) for k, v in loss.items() if not torch.isnan(v)})
        if step % config.log_every == 0 or step == config.steps:
            res.history.append({"step": step, **{k: sum(w[k] for w in window) / len(window) for k in window[0]}})
            window = []
        if callback is not None and ((eval_every and step % eval_every == 0) or step == config.steps):
            disc.eval()
            res.evaluations.append(callback(step, disc))
    disc.eval()
    res.wall_s = time.perf_counter() - t0
    return res


# -- evaluation ----------------------------------------------------------------------------------------------------
def gradient_error(disc: Callable, oracle: Callable, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """|| grad log r_opt - grad log r_phi || per example ``[B]`` (the quantity of the thesis' Fig. 3.1)."""
    return (scalar_field_grad(oracle, x, t) - scalar_field_grad(disc, x, t)).reshape(x.shape[0], -1).norm(dim=1)


# -- generated samples, cached -------------------------------------------------------------------------------------
def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's type, process, parameters and buffers (and of a mixture's tensors for exact models)."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(json.dumps(ckpts.jsonable(model.process.config()), sort_keys=True).encode())
    tensors = dict(model.state_dict())
    if isinstance(model, MixtureModel):
        mix = model.mixture
        tensors.update(weights=mix.weights, means=mix.means, covs=mix.covs)
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def generate_samples(model: DiffusionModel, n: int, shape: tuple[int, ...], *, sampler: str = "heun", nfe: int = 50,
                     grid: str | None = None, seed: int = 0, batch_size: int = 1000, options: dict | None = None,
                     dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None,
                     progress: bool = True) -> torch.Tensor:
    """Draw ``n`` samples ``[n, *shape]`` of ``model`` with a registered sampler under an NFE budget
    (``samplers.budget.sample``: x_T of all n from ``seed`` first, then batches of ``batch_size``).

    With ``cache_dir`` the samples are stored as ``samples_<key>.safetensors`` (+ ``.json`` with the settings), key =
    hash of (model fingerprint, settings); a later call with the same key loads them instead of sampling."""
    from ..samplers.budget import plan, sample

    if int(n) != n or n < 1 or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive integers, got {n}, {batch_size}")
    plan(model, sampler, nfe, grid=grid, options=options)  # bad sampler, options or budget: ValueError before caching
    settings = {"n": int(n), "shape": list(shape), "sampler": sampler, "nfe": int(nfe), "grid": grid, "seed": seed,
                "batch_size": int(batch_size), "options": options or {}, "dtype": str(dtype), "x_T": "all first"}
    key = hashlib.sha256((model_fingerprint(model) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:20]
    path = None if cache_dir is None else Path(cache_dir) / f"samples_{key}.safetensors"
    if path is not None and path.is_file():
        return safetensors.torch.load(path.read_bytes())["samples"]
    x, info = sample(model, sampler, nfe, int(n), shape=tuple(shape), batch_size=int(batch_size), grid=grid,
                     options=options, seed=seed, dtype=dtype, progress=progress)
    x = x.detach()
    if path is not None:
        ckpts.atomic_write_bytes(path, safetensors.torch.save({"samples": x.contiguous()}))
        ckpts.atomic_write_bytes(path.with_suffix(".json"), json.dumps(
            {**settings, "nfe_used": info["nfe_planned"], "model_fingerprint": model_fingerprint(model)},
            indent=1).encode())
    return x


# -- a discriminator for a pretrained model, written to a folder -------------------------------------------------
def train_discriminator_for_model(model: DiffusionModel, x_real: torch.Tensor, out_dir: str | Path,
                                  config: DiscriminatorConfig | None = None, *, n_generated: int = 2000,
                                  sampler: str = "heun", nfe: int = 50, grid: str | None = None, sample_seed: int = 0,
                                  sample_batch: int = 1000, head: dict | None = None, time_input: str | None = None,
                                  progress: bool = True, provenance: dict | None = None) -> dict[str, Any]:
    """Train a discriminator between data ``x_real [N, ...]`` and the pretrained ``model``'s samples and write it.

    Draws (or reuses, cached in ``out_dir/cache``) ``n_generated`` samples with ``sampler`` under the ``nfe`` budget
    (``generate_samples``; J_MSE alone needs none), builds the head for the data's event shape (``make_discriminator``
    with ``head`` kwargs and ``time_input``), trains it with ``config`` (``train_discriminator``) and saves
    ``out_dir/discriminator.{safetensors,json}`` and ``out_dir/train_discriminator.json`` (settings under
    ``config``, with ``provenance`` such as the checkpoint and data names; loss history; wall time).
    Returns that summary."""
    config, head = config or DiscriminatorConfig(), dict(head or {})
    x_real, shape, out = x_real.float(), tuple(x_real.shape[1:]), Path(out_dir)
    x_fake = None
    if config.objective != "mse":
        x_fake = generate_samples(model, n_generated, shape, sampler=sampler, nfe=nfe, grid=grid, seed=sample_seed,
                                  batch_size=sample_batch, cache_dir=out / "cache", progress=progress)
    disc = make_discriminator(shape, model.process, time_input, **head)
    res = train_discriminator(disc, model, x_real, x_fake, config, progress=progress)
    provenance = dict(provenance or {})
    path = save_discriminator(out / "discriminator", disc, config, extra=provenance)
    settings = {**provenance, "n_generated": n_generated, "sampler": sampler, "nfe": nfe, "grid": grid,
                "sample_seed": sample_seed, "sample_batch": sample_batch, "head": head, "time_input": time_input,
                "train": asdict(config)}
    summary = {"discriminator": str(path), "config": ckpts.jsonable(settings), "history": res.history,
               "wall_s": res.wall_s, "final": res.history[-1] if res.history else None}
    ckpts.atomic_write_bytes(out / "train_discriminator.json",
                             json.dumps(summary, indent=1, default=str).encode())
    return summary


def guidance_from_spec(model: DiffusionModel, spec: str, scale: float = 1.0,
                       window: tuple[float, float] | str | None = None, device: str | torch.device = "cpu"):
    """A guided model from its written form: ``"discriminator:PATH"`` (a discriminator saved by
    ``save_discriminator``: ``DiscriminatorGuidance``) or ``"cfg:LABEL"`` (classifier-free guidance of a
    class-conditional model towards the integer class LABEL); ``window`` may be ``(t_lo, t_hi)`` or
    ``"t_lo,t_hi"``.  Guidance keeps the model currency, so any sampler runs the result."""
    from .wrappers import ClassifierFreeGuidance

    kind, sep, value = str(spec).partition(":")
    if kind not in ("discriminator", "cfg") or not sep or not value:
        raise ValueError(f"guidance spec must be 'discriminator:PATH' or 'cfg:LABEL', got {spec!r}")
    if isinstance(window, str):
        window = parse_window(window)
    if kind == "cfg":
        try:
            label = int(value)
        except ValueError:
            raise ValueError(f"guidance cfg:LABEL needs an integer class label, got {value!r}") from None
        return ClassifierFreeGuidance(model, y=label, scale=scale, window=window)
    disc = load_discriminator(value, device=device)
    if disc.process.config() != model.process.config():
        raise ValueError(f"the discriminator was trained on process {disc.process.config()}, the model uses "
                         f"{model.process.config()}")
    return DiscriminatorGuidance(model, disc, scale, window)


__all__ = ["OBJECTIVES", "LAMBDAS", "MixtureLogRatio", "make_discriminator", "save_discriminator",
           "load_discriminator", "DiscriminatorConfig", "lambda_t", "ce_terms", "mse_terms", "sample_t",
           "discriminator_loss", "DiscriminatorTrainResult", "train_discriminator", "gradient_error",
           "model_fingerprint", "generate_samples", "train_discriminator_for_model", "guidance_from_spec"]
