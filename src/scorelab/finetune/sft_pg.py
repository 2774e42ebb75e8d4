r"""Shortcut fine-tuning (SFT) and SFT with policy gradient (SFT-PG, SFT-PG (B)) of a few-step Gaussian sampler.

Fan & Lee, "Optimizing DDPM Sampling with Shortcut Fine-Tuning", ICML 2023 (sources/000).  A T-step sampler p_theta
need not follow the backward process: fine-tune theta to minimise the IPM Phi(p_theta, q) = sup_a E_p f_a - E_q f_a
(eq. 2).  With the optimal critic f*, grad Phi = E[f*(x_0) sum_t grad log p_theta(x_t | x_{t+1})] (Thm. 1, eq. 11);
a baseline V_omega(x_{t+1}, t) keeps it unbiased and lowers its variance (Thm. 3, eq. 20); V_omega is fitted with
R_B (eq. 27), which is reused as a critic regulariser: the critic maximises g - lambda R_B (eq. 30).  Alg. 1,
"SFT-PG (B)": per outer step, n_critic critic + baseline updates on fresh rollouts stored in a buffer B of
(x_{t+1}, x_t, x_0, t), then n_generator policy updates on m transitions drawn from B.

Notation
--------
===================  ===============================================================================================
``ts``               the sampler's grid t_0 > ... > t_T (scorelab time; paper step t+1 -> t is grid step k -> k+1)
``k``                grid step index 0..T-1 (k = 0 is the step leaving x_T); the baseline is conditioned on k
``x_in``             what the policy's Gaussian is conditioned on: x for DDPM/DDIM, x^+ for accel_stoch (its model-
                     free first stage is part of the environment, so it carries no policy gradient)
``mean, std``        p_theta(x_next | x_in) = N(mean, std^2 I) from the sampler's transition function
``f``                critic f_alpha(x_0) -> [B];  ``g`` = E_p f - E_q f (the "critic gap", eq. 2)
``V``                baseline V_omega(x_{t+1}, k) -> [B];  R_B = E sum_k (V - f(x_0))^2 / T (eq. 27, the official
                     code's mean over steps)
``R_GP``             E (||grad f(x_hat)|| - 1)^2 on interpolates of fake and real x_0 (eq. 29, Gulrajani et al.)
``adv``              f(x_0) - V(x_{t+1}, k): the advantage multiplying grad log p (eq. 20)
``m``                transitions per generator step (``generator_batch``; the paper: m = batch size = 128 of the
                     n_critic T B transitions in the buffer)
===================  ===============================================================================================

Methods (``SFTPGConfig.method``): ``"sft_pg_b"`` (Alg. 1), ``"sft_pg"`` (policy gradient without baseline nor
R_B), ``"sft"`` (reparameterised gradient through the sampler, eq. 10).  A deterministic step (std = 0, e.g. DDIM's
step into t = 0) contributes its pathwise gradient f(mean_theta(x_in)) instead of a log-probability term, so the
estimator stays unbiased on any mix of Gaussian and deterministic steps.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch
from torch import nn

from .._utils import progress as tqdm
from ..core.denoisers import DiffusionModel
from ..core.processes import Discrete, ForwardProcess
from ..evaluation.metrics import sliced_w2
from ..io import checkpoints as ckpts
from ..samplers.base import SAMPLERS, SamplerInfo, transition_log_prob
from ..samplers.budget import planned_nfe_for_grid, sample
from ..samplers.loop import prepare, run_loop
from ..samplers.sde import VARIANCES


def pg_samplers() -> tuple[str, ...]:
    """Registered samplers with a Gaussian policy: those whose ``SamplerInfo.transition`` is set."""
    return tuple(name for name, info in SAMPLERS.items() if info.transition is not None)


#: the policy samplers registered when this module was imported (``pg_samplers()`` is the live list)
PG_SAMPLERS = pg_samplers()
METHODS = ("sft_pg_b", "sft_pg", "sft")
CriticFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SFTPGConfig:
    """SFT-PG options (the CLI maps YAML onto this).  Defaults are the paper's toy protocol (Fan & Lee 2023,
    official ``toy_exp``): Adam lr 5e-5 (generator) and 1e-3 (critic, baseline), n_critic 5, one generator step of
    ``batch_size`` transitions per outer step, lambda 1, 300 epochs of batch 128, no clipping, no EMA.

    Sampler: any registered sampler with a Gaussian ``transition`` (``pg_samplers()``); ``n_steps`` and ``grid``
    choose the grid (``make_policy_grid``); ``eta`` (DDIM), ``variance`` (DDPM), ``noise_last`` (noise on the last
    step too, as the SFT-PG toy sampler) go to the sampler when it has these options, ``sampler_options`` (a dict)
    carries any other option of a sampler (they override the named fields).
    ``buffer_size``: keep at most this many most recent transitions (None: all since the last generator phase).
    ``generator_batch``: transitions drawn from the buffer per generator step, all of them if the buffer holds fewer
    (``sft``: chains rolled out per step); None: ``batch_size``, the paper's choice, which uses 1/(n_critic T) of the
    buffer's transitions (2% at T = 10).
    ``ema_decay`` 0 disables EMA (the EMA copy then equals the model).  ``lr_generator_final``: if set, the generator
    learning rate follows a cosine from ``lr_generator`` (epoch 0) to this value (last epoch), set once per epoch
    (None: constant, the paper's protocol).  ``epoch_size``: critic steps per epoch
    (None: ceil(N_data / batch_size), the official loop).  ``eval_every``: epochs between sliced-W2 evaluations
    (100 projections, ``eval_samples`` samples against the training data, the paper's metric); 0 disables.
    ``dataset``, ``data_n`` (None: all of a file's data, a toy set's default size), ``data_seed``, ``weights`` are
    used by ``finetune_sft_pg`` only."""

    method: str = "sft_pg_b"
    sampler: str = "ddpm"
    n_steps: int | None = None
    grid: str = "native"
    eta: float = 1.0
    variance: str = "large"
    noise_last: bool = True
    lam: float = 1.0
    gp_weight: float = 0.0
    n_critic: int = 5
    n_generator: int = 1
    batch_size: int = 128
    generator_batch: int | None = None
    epochs: int = 300
    epoch_size: int | None = None
    lr_generator: float = 5e-5
    lr_generator_final: float | None = None
    lr_critic: float = 1e-3
    lr_baseline: float = 1e-3
    grad_clip: float | None = None
    buffer_size: int | None = None
    ema_decay: float = 0.0
    critic_net: dict | None = None
    baseline_net: dict | None = None
    seed: int = 0
    eval_every: int = 10
    eval_samples: int = 10_000
    ckpt_every: int = 10
    keep_checkpoints: int = 2
    device: str = "cpu"
    dataset: str = "swiss_roll"
    data_n: int | None = None
    data_seed: int = 0
    weights: str = "model"
    sampler_options: dict | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.sampler not in SAMPLERS or SAMPLERS[self.sampler].transition is None:
            raise ValueError(f"sampler {self.sampler!r} has no Gaussian policy here (no SamplerInfo.transition); "
                             f"expected one of {pg_samplers()}")
        unknown = set(self.sampler_options or {}) - set(SAMPLERS[self.sampler].options)
        if unknown:
            raise ValueError(f"sampler_options {sorted(unknown)} are not options of {self.sampler!r}; expected some "
                             f"of {list(SAMPLERS[self.sampler].options)}")
        if self.variance not in VARIANCES or not 0 < self.eta <= 1:
            raise ValueError(f"need variance in {VARIANCES} and 0 < eta <= 1, got {self.variance!r}, {self.eta}")
        for name in ("n_critic", "n_generator", "batch_size", "epochs", "eval_samples", "keep_checkpoints"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("n_steps", "epoch_size", "buffer_size", "generator_batch"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v < 1):
                raise ValueError(f"{name} must be None or a positive integer, got {v!r}")
        if min(self.lr_generator, self.lr_critic, self.lr_baseline) <= 0:
            raise ValueError("learning rates must be > 0")
        if self.lr_generator_final is not None and not 0 <= self.lr_generator_final <= self.lr_generator:
            raise ValueError(f"lr_generator_final must be in [0, lr_generator], got {self.lr_generator_final}")
        if self.lam < 0 or self.gp_weight < 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("need lam >= 0, gp_weight >= 0 and 0 <= ema_decay < 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be None or > 0, got {self.grad_clip}")
        if self.eval_every < 0 or self.ckpt_every < 0:
            raise ValueError("eval_every and ckpt_every must be >= 0")
        if self.weights not in ("ema", "model"):
            raise ValueError(f"weights must be 'ema' or 'model', got {self.weights!r}")

    @property
    def uses_baseline(self) -> bool:
        """True for SFT-PG with the value-function baseline (method ``sft_pg_b``, Fan & Lee 2023, Alg. 1)."""
        return self.method == "sft_pg_b"

    @property
    def info(self) -> SamplerInfo:
        """The policy sampler's registry entry."""
        return SAMPLERS[self.sampler]

    def options_for(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The sampler options among ``names`` that this config sets: the fields of the same name (``eta``,
        ``variance``, ``noise_last``), then ``sampler_options``."""
        mine = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: mine[k] for k in names if k in mine}
        out.update({k: v for k, v in (self.sampler_options or {}).items() if k in names})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (checkpoint sidecars, run reports)."""
        return ckpts.jsonable(asdict(self))


# -- grids and the Gaussian policy ---------------------------------------------------------------------------------
def make_policy_grid(process: ForwardProcess, n_steps: int | None = None, grid: str = "native") -> torch.Tensor:
    """Grid t_0 > ... > t_T = 0 of the policy (float64 ``[T+1]``).

    ``"native"``: a ``Discrete`` chain's own steps N/N, ..., 1/N, 0 (n_steps must be None or N); on a continuous
    process, ``n_steps`` uniform times (so the default is valid for every process).  Any other name is a
    ``schedules`` grid with ``final_zero``; on a ``Discrete`` chain its times are rounded to whole steps i/N
    (FastDPM-style subsequences, so step-embedded nets see trained indices)."""
    from ..core.schedules import make_grid

    if grid == "native" and not isinstance(process, Discrete):  # a continuous process has no chain of its own
        if n_steps is None:
            raise ValueError(f"a continuous process ({type(process).__name__}) has no native steps: give n_steps "
                             "(e.g. --set n_steps=10)")
        grid = "uniform_t"
    if grid == "native":
        if n_steps not in (None, process.N):
            raise ValueError(f"grid='native' has N={process.N} steps, got n_steps={n_steps}")
        return torch.arange(process.N, -1, -1, dtype=torch.float64) / process.N
    if n_steps is None:
        raise ValueError(f"grid {grid!r} needs n_steps")
    ts = make_grid(grid, process, n_steps, final_zero=True)
    if isinstance(process, Discrete):
        ts = torch.round(ts * process.N) / process.N
        if not torch.all(ts[1:] < ts[:-1]):
            raise ValueError(f"{n_steps} steps of grid {grid!r} collide after rounding to the {process.N} chain steps")
    return ts


def policy_transition(model: DiffusionModel, x_in: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                      config: SFTPGConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean ``[B, ...]``, std scalar or ``[B]``) of p_theta(x_s | x_in): the configured sampler's own Gaussian step
    (``SamplerInfo.transition`` with its ``transition_options`` from the config); differentiable in the model.
    t, s: scalars or ``[B]`` (per-transition times from the buffer)."""
    info = config.info
    return info.transition(model, x_in, t, s, **config.options_for(info.transition_options))


def _std_vector(std, x: torch.Tensor) -> torch.Tensor:
    """std as a ``[B]`` tensor (scalar, ``[B]`` or broadcastable to x with one value per example)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if std.ndim == 0:
        return std.expand(x.shape[0])
    return std.reshape(std.shape[0], -1)[:, 0].expand(x.shape[0]) if std.ndim > 1 else std.expand(x.shape[0])


def _draw(mean: torch.Tensor, std, generator: torch.Generator | None) -> torch.Tensor:
    """mean + std z, z ~ N(0, I) ``[B, ...]`` from ``generator``; std a scalar or ``[B]``."""
    z = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + _std_vector(std, mean).reshape(-1, *([1] * (mean.ndim - 1))) * z


@dataclass
class Rollout:
    """States of T sampler steps: ``xs`` [x_{t_0}, ..., x_{t_T}] (each ``[B, ...]``), ``inputs`` the policy's
    conditioning x_in per step (x, or x^+ for accel_stoch), ``stds`` ``[T, B]`` (0 for deterministic steps)."""

    xs: list[torch.Tensor]
    inputs: list[torch.Tensor]
    stds: torch.Tensor
    ts: torch.Tensor

    @property
    def x0(self) -> torch.Tensor:
        """The rollout's final state x_0, ``[B, ...]``."""
        return self.xs[-1]


def rollout(model: DiffusionModel, x_T: torch.Tensor, ts: torch.Tensor, config: SFTPGConfig,
            generator: torch.Generator | None = None) -> Rollout:
    """Run the policy over ``ts`` from x_T ``[B, ...]`` with the sampler's own transitions: x^+ ~ its model-free
    ``pre_transition`` (if any; the environment), then x_{k+1} = mean + std z, z ~ N(0, I) from ``generator``, with
    (mean, std) = ``policy_transition`` (draws in the order of the sampler's ``sample_<name>``).  Differentiable when
    called under grad (the reparameterised SFT gradient); wrap in ``torch.no_grad()`` for SFT-PG rollouts."""
    model, ts = prepare(model, x_T, ts)  # counted model, checked grid: the samplers' own loop runs the policy
    pre, T, times = config.info.pre_transition, ts.shape[0] - 1, ts.to(x_T)

    def step(k: int, x: torch.Tensor, state):
        t, s = times[k], times[k + 1]
        x_in = x if pre is None else _draw(*pre(model.process, x, t, s), generator)
        mean, std = policy_transition(model, x_in, t, s, config)
        std_v = _std_vector(std, x)
        if (k < T - 1 or config.noise_last) and bool(torch.all(std_v > 0)):
            return _draw(mean, std_v, generator), None, None, None, state, {"x_in": x_in, "std": std_v}
        return mean, None, None, None, state, {"x_in": x_in, "std": torch.zeros_like(std_v)}

    traj = run_loop(model, x_T, ts, step, return_trajectory=True, keep=("x_in", "std"))
    return Rollout(traj.xs, traj.extras["x_in"], torch.stack(traj.extras["std"]), ts)


# -- networks: critic f_alpha and baseline V_omega -------------------------------------------------------------------
def default_critic(example_shape: tuple[int, ...]) -> nn.Module:
    """SFT-PG toy critic 2 -> 256 -> 256 -> 1 (ReLU) for vectors; a small conv head (``ImageHead``) for images."""
    from ..nets import CriticMLP, ImageHead

    if len(example_shape) == 1:
        return CriticMLP(example_shape[0], 256, 2, "relu")
    if len(example_shape) == 3:
        return ImageHead(in_channels=example_shape[0], base_channels=32)
    raise ValueError(f"no default critic for examples of shape {example_shape}; pass critic_net")


def default_baseline(example_shape: tuple[int, ...], n_steps: int) -> nn.Module:
    """Baseline V(x_{t+1}, k): a step-embedded MLP D -> 256 -> 256 -> 1 (ReLU) on the flattened state (official
    ``value`` net; its last layer is a plain linear here)."""
    from ..nets import VectorHead

    return VectorHead(math.prod(example_shape), 1, 256, 2, "relu", n_steps=n_steps)


def critic_values(critic: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f(x) -> ``[B]`` (time-conditioned heads get t_in = 0)."""
    out = critic(x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    return out.reshape(x.shape[0])


def baseline_values(baseline: nn.Module, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """V(x, k) -> ``[B]`` for states x ``[B, ...]`` (flattened) and grid step indices k ``[B]`` (0..T-1)."""
    k = torch.as_tensor(k, device=x.device).expand(x.shape[0])
    return baseline(x.reshape(x.shape[0], -1), (k + 1).to(x.dtype)).reshape(x.shape[0])


# -- estimators ------------------------------------------------------------------------------------------------------
def step_surrogate(model: DiffusionModel, x_in: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                   adv: torch.Tensor, config: SFTPGConfig, critic_fn: CriticFn | None = None) -> torch.Tensor:
    """Per-transition surrogate ``[B]`` whose theta-gradient is one term of eq. 20: adv * log p_theta(x_next|x_in)
    (adv detached), or, for deterministic steps (std = 0), the pathwise f(mean_theta(x_in)) (needs ``critic_fn``)."""
    mean, std = policy_transition(model, x_in, t, s, config)
    std_v = _std_vector(std, x_in)
    sto = std_v > 0
    if bool(sto.all()):
        return adv.detach() * transition_log_prob(x_next, mean, std_v)
    if critic_fn is None:
        raise ValueError("a deterministic step (std = 0) needs critic_fn for its pathwise gradient")
    out = mean.new_zeros(x_in.shape[0])
    if bool(sto.any()):
        out[sto] = adv.detach()[sto] * transition_log_prob(x_next[sto], mean[sto], std_v[sto])
    out[~sto] = critic_fn(mean[~sto])
    return out


def pg_surrogate(model: DiffusionModel, ro: Rollout, critic_fn: CriticFn, config: SFTPGConfig,
                 baseline: torch.Tensor | None = None) -> torch.Tensor:
    """Per-trajectory policy-gradient surrogate ``[B]`` (Thm. 1 / Thm. 3): sum_k (f(x_0) - b_k) log p_theta(x_{k+1} |
    x_in_k), with deterministic steps pathwise.  ``baseline``: ``[T, B]`` values b_k (None = 0).  The gradient of
    its batch mean is an unbiased estimate of grad_theta E f(x_0); ``ro`` must come from a no-grad ``rollout``."""
    reward = critic_fn(ro.x0).detach()
    total = torch.zeros_like(reward)
    for k in range(ro.ts.shape[0] - 1):
        t, s = ro.ts[k].to(reward), ro.ts[k + 1].to(reward)
        adv = reward if baseline is None else reward - baseline[k].detach()
        total = total + step_surrogate(model, ro.inputs[k].detach(), ro.xs[k + 1].detach(), t, s, adv, config,
                                       critic_fn)
    return total


def baseline_regression(baseline: nn.Module, ro: Rollout, f_x0: torch.Tensor) -> torch.Tensor:
    """R_B (eq. 27) per trajectory ``[B]``: mean over steps k of (V(x_{t_k}, k) - f(x_0))^2 (gradients flow into
    both V and f, as in the official code: R_B regularises the critic too)."""
    T = len(ro.inputs)
    terms = [(baseline_values(baseline, ro.xs[k], torch.full((f_x0.shape[0],), k, device=f_x0.device)) - f_x0) ** 2
             for k in range(T)]
    return torch.stack(terms).mean(0)


def gradient_penalty(critic: nn.Module, fake: torch.Tensor, real: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """R_GP (eq. 29): mean over interpolates x_hat = u fake + (1-u) real of (||grad f(x_hat)|| - 1)^2 -> scalar.
    Pairs the first min(len(fake), len(real)) rows (an epoch's last data batch can be shorter than the rollout)."""
    n = min(fake.shape[0], real.shape[0])
    fake, real = fake[:n], real[:n]
    u = torch.rand(n, *([1] * (fake.ndim - 1)), generator=generator, dtype=fake.dtype, device=fake.device)
    x_hat = (u * fake.detach() + (1 - u) * real.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(critic_values(critic, x_hat).sum(), x_hat, create_graph=True)
    return ((grad.reshape(grad.shape[0], -1).norm(dim=1) - 1) ** 2).mean()


def pg_variance(model: DiffusionModel, critic: nn.Module, baseline: nn.Module | None,
                x_T_fn: Callable[[int, torch.Generator], torch.Tensor], config: SFTPGConfig, n_batches: int = 16,
                generator: torch.Generator | None = None) -> dict:
    """Variance of the policy-gradient estimate over ``n_batches`` independent rollouts of ``config.batch_size``,
    without and with the baseline (same rollouts): E||g - mean g||^2 summed over parameters, and their ratio.
    ``x_T_fn(B, generator)`` draws starting points.  Returns dict(var_no_baseline, var_baseline, ratio, grad_norm)."""
    params = [p for p in model.parameters() if p.requires_grad]
    f = lambda x: critic_values(critic, x)  # noqa: E731
    grads: dict[str, list[torch.Tensor]] = {"none": [], "baseline": []}
    for _ in range(n_batches):
        with torch.no_grad():
            ro = rollout(model, x_T_fn(config.batch_size, generator), policy_ts(model, config), config, generator)
            b = None if baseline is None else torch.stack([
                baseline_values(baseline, ro.xs[k], torch.full((ro.x0.shape[0],), k, device=ro.x0.device))
                for k in range(len(ro.inputs))])
        for key, base in (("none", None), ("baseline", b)):
            if key == "baseline" and base is None:
                continue
            g = torch.autograd.grad(pg_surrogate(model, ro, f, config, base).mean(), params, allow_unused=True)
            grads[key].append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                                         for gi, p in zip(g, params, strict=True)]))
    out = {}
    for key, gs in grads.items():
        if gs:
            G = torch.stack(gs)
            out[key] = float(((G - G.mean(0)) ** 2).sum(1).mean() * n_batches / max(n_batches - 1, 1))
            out[key + "_mean_norm"] = float(G.mean(0).norm())
    res = {"var_no_baseline": out["none"], "grad_norm": out["none_mean_norm"]}
    if "baseline" in out:
        res.update(var_baseline=out["baseline"], ratio=out["baseline"] / out["none"])
    return res


def policy_ts(model: DiffusionModel, config: SFTPGConfig) -> torch.Tensor:
    """The policy grid of ``config`` on ``model.process``."""
    return make_policy_grid(model.process, config.n_steps, config.grid)


# -- Alg. 1 ------------------------------------------------------------------------------------------------------------
@dataclass
class SFTPGState:
    """Everything a run updates: generator (``model``), its EMA, critic, baseline, their optimizers, the rollout
    generator, counters and the buffer of transitions (tensors ``inp``, ``prev``, ``next``, ``x0``, ``k``)."""

    model: DiffusionModel
    ema: DiffusionModel
    critic: nn.Module
    baseline: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_c: torch.optim.Optimizer
    opt_b: torch.optim.Optimizer | None
    rng: torch.Generator
    ts: torch.Tensor
    example_shape: tuple[int, ...]
    epoch: int = 0
    critic_steps: int = 0
    gen_steps: int = 0
    buffer: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def build_state(model: DiffusionModel, example_shape: tuple[int, ...], config: SFTPGConfig) -> SFTPGState:
    """Critic, baseline (for ``sft_pg_b``), Adam optimizers (Alg. 1 inputs) and the seeded rollout generator."""
    from ..nets import build_net

    device = torch.device(config.device)
    ts = policy_ts(model, config)
    with torch.random.fork_rng(devices=[]):  # seeded network initialisation; the caller's global RNG is untouched
        torch.manual_seed(config.seed)
        critic = (build_net(config.critic_net) if config.critic_net else default_critic(example_shape)).to(device)
        baseline = None
        if config.uses_baseline:
            baseline = (build_net(config.baseline_net) if config.baseline_net
                        else default_baseline(example_shape, ts.shape[0] - 1)).to(device)
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    return SFTPGState(model, ema, critic, baseline, torch.optim.Adam(params, lr=config.lr_generator),
                      torch.optim.Adam(critic.parameters(), lr=config.lr_critic),
                      None if baseline is None else torch.optim.Adam(baseline.parameters(), lr=config.lr_baseline),
                      torch.Generator(device=device).manual_seed(config.seed), ts, tuple(example_shape))


def _prior(state: SFTPGState, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    device = next(state.model.parameters()).device
    return state.model.process.prior_sample((n, *state.example_shape), state.rng, device, dtype)


def critic_step(state: SFTPGState, ro: Rollout, x_real: torch.Tensor, config: SFTPGConfig) -> dict[str, float]:
    """One critic + baseline update (Alg. 1, inner loop): the critic maximises g - lambda R_B - gp R_GP (eq. 30), the
    baseline minimises R_B.  Returns dict(gap, rb, gp)."""
    fake = ro.x0.detach()
    f_all = critic_values(state.critic, torch.cat([fake, x_real]))
    f_fake, gap = f_all[: fake.shape[0]], f_all[: fake.shape[0]].mean() - f_all[fake.shape[0]:].mean()
    loss, rb, gp = -gap, torch.zeros(()), torch.zeros(())
    if state.baseline is not None:
        states = [x.detach() for x in ro.xs[:-1]]
        B, T = fake.shape[0], len(states)
        V = baseline_values(state.baseline, torch.cat(states), torch.arange(T).repeat_interleave(B))
        F = f_fake.repeat(T)
        rb = ((V - F.detach()) ** 2).mean()  # trains V_omega
        loss = loss + rb + config.lam * ((V.detach() - F) ** 2).mean()  # R_B reused as critic regulariser
    if config.gp_weight > 0:
        gp = gradient_penalty(state.critic, fake, x_real, state.rng)
        loss = loss + config.gp_weight * gp
    state.opt_c.zero_grad(set_to_none=True)
    if state.opt_b is not None:
        state.opt_b.zero_grad(set_to_none=True)
    loss.backward()
    state.opt_c.step()
    if state.opt_b is not None:
        state.opt_b.step()
    state.critic_steps += 1
    return {"gap": float(gap.detach()), "rb": float(rb.detach()), "gp": float(gp.detach())}


def add_to_buffer(state: SFTPGState, ro: Rollout, config: SFTPGConfig) -> None:
    """Alg. 1: add all (x_{t+1}, x_t, x_0, t) of a rollout (plus x_in) to the buffer, keeping the newest
    ``buffer_size``."""
    T, B = len(ro.inputs), ro.x0.shape[0]
    new = {"inp": torch.cat(ro.inputs), "prev": torch.cat(ro.xs[:-1]), "next": torch.cat(ro.xs[1:]),
           "x0": ro.x0.repeat(T, *([1] * (ro.x0.ndim - 1))), "k": torch.arange(T).repeat_interleave(B)}
    for key, v in new.items():
        v = v.detach()
        state.buffer[key] = torch.cat([state.buffer[key], v]) if key in state.buffer else v
        if config.buffer_size is not None:
            state.buffer[key] = state.buffer[key][-config.buffer_size:]


def generator_step(state: SFTPGState, config: SFTPGConfig) -> float:
    """One generator update: policy gradient (eq. 20) on ``generator_batch`` (default ``batch_size``) transitions
    drawn from the buffer without replacement, or the reparameterised SFT gradient (eq. 10) on a fresh rollout of that
    many chains; then clip, Adam, EMA.  Returns the surrogate loss."""
    f = lambda x: critic_values(state.critic, x)  # noqa: E731
    state.model.train()
    n_gen = config.generator_batch or config.batch_size
    if config.method == "sft":
        x_T = _prior(state, n_gen)
        loss = f(rollout(state.model, x_T, state.ts, config, state.rng).x0).mean()
    else:
        buf = state.buffer
        idx = torch.randperm(buf["k"].shape[0], generator=state.rng, device=buf["k"].device)[:n_gen]
        k, x0 = buf["k"][idx], buf["x0"][idx]
        with torch.no_grad():
            adv = f(x0)
            if state.baseline is not None:
                adv = adv - baseline_values(state.baseline, buf["prev"][idx], k)
        t, s = state.ts.to(x0)[k], state.ts.to(x0)[k + 1]
        loss = step_surrogate(state.model, buf["inp"][idx], buf["next"][idx], t, s, adv, config, f).mean()
    state.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in state.model.parameters() if p.requires_grad]
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    state.opt_g.step()
    state.critic.zero_grad(set_to_none=True)
    from ..training.loop import update_ema
    update_ema(state.ema, state.model, config.ema_decay)
    state.gen_steps += 1
    return float(loss.detach())


# -- evaluation, checkpoints, the loop ------------------------------------------------------------------------------
@torch.no_grad()
def sample_policy(model: DiffusionModel, n: int, config: SFTPGConfig, generator: torch.Generator,
                  example_shape: tuple[int, ...], batch: int = 10_000) -> torch.Tensor:
    """``n`` samples x_0 of the policy -> ``[n, ...]``: ``budget.sample`` with ``config``'s sampler, its options
    (``config.options_for``) and the policy grid (whose NFE is the budget), in batches of ``batch`` from
    ``generator`` (x_T of all n first, then each batch's noise)."""
    device = next(model.parameters()).device
    ts, opts = policy_ts(model, config), config.options_for(config.info.options)
    nfe = planned_nfe_for_grid(config.info, ts, opts)
    return sample(model, config.sampler, nfe, n, shape=tuple(example_shape), batch_size=batch, grid=ts,
                  options=opts, generator=generator, device=device)[0]


def paper_metric(model: DiffusionModel, data: torch.Tensor, config: SFTPGConfig, seed: int = 0) -> float:
    """The SFT-PG toy metric: POT sliced W2 (100 projections) between ``eval_samples`` policy samples and ``data``."""
    g = torch.Generator(device=data.device).manual_seed(seed)
    x = sample_policy(model, config.eval_samples, config, g, tuple(data.shape[1:]))
    return sliced_w2(x, data, n_projections=100, seed=seed)


def _save(state: SFTPGState, run_dir: Path, config: SFTPGConfig) -> Path:
    """Critic, baseline and buffer first, the generator checkpoint (found by ``latest_checkpoint``) last."""
    step = state.critic_steps
    ckpts.save_checkpoint(run_dir / f"critic_{step:08d}", state.critic, optimizer=state.opt_c, step=step)
    if state.baseline is not None:
        ckpts.save_checkpoint(run_dir / f"baseline_{step:08d}", state.baseline, optimizer=state.opt_b, step=step)
    blob = safetensors.torch.save({k: v.contiguous() for k, v in state.buffer.items()}) if state.buffer else b""
    ckpts.atomic_write_bytes(run_dir / f"buffer_{step:08d}.safetensors", blob)
    extra = {"epoch": state.epoch, "critic_steps": step, "gen_steps": state.gen_steps, "history": state.history,
             "rng": state.rng.get_state().tolist(), "kind": "sft_pg"}
    path = ckpts.save_checkpoint(run_dir / f"ckpt_{step:08d}", state.model, ema_model=state.ema, optimizer=state.opt_g,
                                 step=step, train_config=config.to_dict(), extra=extra, save_rng=False)
    for old in ckpts.list_checkpoints(run_dir)[:-config.keep_checkpoints]:
        old_step = int(json.loads(old.read_text())["step"])
        ckpts.delete_checkpoint(old)
        for prefix in ("critic_", "baseline_"):
            ckpts.delete_checkpoint(run_dir / f"{prefix}{old_step:08d}")
        (run_dir / f"buffer_{old_step:08d}.safetensors").unlink(missing_ok=True)
    return path


# Settings that may differ between a run and its resumption: bookkeeping, and ``epochs`` (extends or shortens the run;
# not with a cosine generator lr, whose schedule depends on it).
RESUME_MAY_CHANGE = ("epochs", "eval_every", "eval_samples", "ckpt_every", "keep_checkpoints", "device")


def check_resume_config(saved: dict, config: SFTPGConfig) -> None:
    """Refuse to resume a run under different training settings (the result would match neither config)."""
    now = config.to_dict()
    may_change = set(RESUME_MAY_CHANGE) - ({"epochs"} if config.lr_generator_final is not None else set())
    diff = {k: (saved.get(k), now[k]) for k in now if k not in may_change and saved.get(k) != now[k]}
    if diff:
        raise ValueError("cannot resume: the run folder was trained with different settings (saved vs now): "
                         + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
                         + f"; only {sorted(may_change)} may change on resume; use a new run folder")


def _resume(state: SFTPGState, run_dir: Path, config: SFTPGConfig) -> Path | None:
    latest = ckpts.latest_checkpoint(run_dir)
    if latest is None:
        return None
    device = torch.device(state.rng.device)
    ckpt = ckpts.load_checkpoint(latest, device=device)
    if ckpt.meta.get("train_config"):
        check_resume_config(ckpt.meta["train_config"], config)
    ckpts.restore(ckpt, state.model, state.ema, state.opt_g, restore_rng=False)
    step, extra = ckpt.step, ckpt.meta["extra"]
    ckpts.restore(ckpts.load_checkpoint(run_dir / f"critic_{step:08d}", device), state.critic, None, state.opt_c)
    if state.baseline is not None:
        ckpts.restore(ckpts.load_checkpoint(run_dir / f"baseline_{step:08d}", device), state.baseline, None,
                      state.opt_b)
    blob = (run_dir / f"buffer_{step:08d}.safetensors").read_bytes()
    state.buffer = {k: v.to(device) for k, v in safetensors.torch.load(blob).items()} if blob else {}
    state.rng.set_state(torch.tensor(extra["rng"], dtype=torch.uint8))
    state.epoch, state.critic_steps, state.gen_steps = extra["epoch"], extra["critic_steps"], extra["gen_steps"]
    state.history = list(extra["history"])
    return latest


@dataclass
class SFTPGResult:
    """What ``sft_pg`` returns: the fine-tuned model and its EMA, critic, baseline, per-epoch history (gap, rb,
    metric), the run folder and last checkpoint, wall time of this call."""

    model: DiffusionModel
    ema_model: DiffusionModel
    critic: nn.Module
    baseline: nn.Module | None
    history: list[dict]
    run_dir: Path | None = None
    checkpoint: Path | None = None
    wall_time: float = 0.0


def generator_lr(config: SFTPGConfig, epoch: int) -> float:
    """Generator learning rate in epoch ``epoch`` (0-based): constant, or a cosine to ``lr_generator_final``."""
    if config.lr_generator_final is None or config.epochs == 1:
        return config.lr_generator
    c = 0.5 * (1 + math.cos(math.pi * epoch / (config.epochs - 1)))
    return config.lr_generator_final + (config.lr_generator - config.lr_generator_final) * c


def _epoch(state: SFTPGState, data: torch.Tensor, config: SFTPGConfig, bar) -> dict[str, float]:
    """One epoch of Alg. 1: ``epoch_size`` critic steps on fresh rollouts (filling the buffer); after every
    ``n_critic`` of them, ``n_generator`` generator steps, then the buffer is emptied."""
    for group in state.opt_g.param_groups:
        group["lr"] = generator_lr(config, state.epoch)
    n = data.shape[0]
    steps = config.epoch_size or math.ceil(n / config.batch_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100_003 + state.epoch))
    gaps, rbs = [], []
    for i in range(steps):
        idx = perm[(i * config.batch_size) % n:][: config.batch_size].to(data.device)
        state.model.eval()
        with torch.no_grad():
            ro = rollout(state.model, _prior(state, config.batch_size, data.dtype), state.ts, config, state.rng)
        if config.method != "sft":
            add_to_buffer(state, ro, config)
        out = critic_step(state, ro, data[idx], config)
        gaps.append(out["gap"])
        rbs.append(out["rb"])
        if state.critic_steps % config.n_critic == 0:
            for _ in range(config.n_generator):
                generator_step(state, config)
            state.buffer = {}
        bar.update(1)
        bar.set_postfix(gap=f"{sum(gaps[-20:]) / len(gaps[-20:]):.4g}", refresh=False)
    return {"gap": sum(gaps) / len(gaps), "rb": sum(rbs) / len(rbs)}


def sft_pg(model: DiffusionModel, data: torch.Tensor, config: SFTPGConfig | None = None,
           run_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
           eval_fn: Callable[[DiffusionModel], float] | None = None) -> SFTPGResult:
    """Fine-tune ``model`` (a ``DiffusionModel``, updated in place) towards ``data`` ``[N, ...]`` with SFT-PG (B)
    (Alg. 1) or an ablation (``config.method``).

    ``run_dir``: checkpoints every ``ckpt_every`` epochs and at the end (generator + EMA + Adam in ``ckpt_*``, critic,
    baseline and buffer beside it); ``resume`` continues from its latest checkpoint (bit-exact; the settings must
    match the saved ones except ``RESUME_MAY_CHANGE``).  ``eval_fn(model)``
    replaces the default metric (``paper_metric`` on the EMA model for vector data), computed every ``eval_every``
    epochs and shown in the progress bar with the critic gap."""
    config = config or SFTPGConfig()
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 2:
        raise ValueError("data must be a tensor of examples [N, ...] with N >= 2")
    data = data.to(config.device)
    state = build_state(model, tuple(data.shape[1:]), config)
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir")
    last = _resume(state, run_dir, config) if resume else None
    if eval_fn is None and data.ndim == 2:
        eval_fn = lambda m: paper_metric(m, data, config, seed=config.seed)  # noqa: E731
    steps = config.epoch_size or math.ceil(data.shape[0] / config.batch_size)
    t0 = time.perf_counter()
    bar = tqdm(total=config.epochs * steps, initial=state.epoch * steps, disable=not progress, desc="sft-pg",
               leave=False)
    try:
        while state.epoch < config.epochs:
            row = {"epoch": state.epoch + 1, **_epoch(state, data, config, bar)}
            state.epoch += 1
            if eval_fn is not None and config.eval_every and (state.epoch % config.eval_every == 0
                                                              or state.epoch == config.epochs):
                row["metric"] = float(eval_fn(state.ema))
                bar.set_postfix(gap=f"{row['gap']:.4g}", metric=f"{row['metric']:.4g}", refresh=False)
            state.history.append(row)
            if run_dir is not None and ((config.ckpt_every and state.epoch % config.ckpt_every == 0)
                                        or state.epoch == config.epochs):
                last = _save(state, run_dir, config)
    finally:
        bar.close()
    return SFTPGResult(state.model, state.ema, state.critic, state.baseline, state.history, run_dir, last,
                       time.perf_counter() - t0)


def _export_diffusers(model: DiffusionModel, out_dir: Path, checkpoint: Path | None) -> Path:
    """``interop.to_diffusers`` of a fine-tuned imported diffusers model into ``out_dir/diffusers_<checkpoint>``
    (kept when a resumed run that trained no further finds it already written)."""
    from ..interop.diffusers import to_diffusers

    folder = out_dir / f"diffusers_{Path(checkpoint).stem if checkpoint else 'final'}"
    return folder if folder.exists() else to_diffusers(model, folder)


def finetune_sft_pg(config: SFTPGConfig, checkpoint_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
                    progress: bool = True) -> dict:
    """CLI entry (``scorelab finetune sft-pg``): load the pretrained model of ``checkpoint_dir`` (a checkpoint, a
    run folder (``config.weights``) or a diffusers folder), load ``config.dataset`` (``data_n`` points,
    ``data_seed``), fine-tune into ``out_dir`` and return a JSON-able dict (config, metric before/after for vector
    data, history, wall time, checkpoint path; ``diffusers_folder``: the fine-tuned UNet saved back as a diffusers
    folder when the model came from one)."""
    from ..data import load_dataset
    from ..io.loading import load_checkpoint_model

    loaded = load_checkpoint_model(checkpoint_dir, weights=config.weights, device=config.device)
    model = loaded.model
    model.requires_grad_(True)
    data, _ = load_dataset(config.dataset, n=config.data_n, seed=config.data_seed)
    before = paper_metric(model, data, config, config.seed) if data.ndim == 2 else None
    res = sft_pg(model, data, config, run_dir=out_dir, resume=resume, progress=progress)
    after = paper_metric(res.ema_model, data, config, config.seed) if data.ndim == 2 else None
    name = "sliced W2 (POT, 100 projections) vs the training data" if before is not None else None
    out = {"config": config.to_dict(), "checkpoint_dir": str(checkpoint_dir), "metric_before": before,
           "metric_after": after, "metric": name, "history": res.history, "wall_time_s": res.wall_time,
           "checkpoint": str(res.checkpoint)}
    if loaded.source.startswith("diffusers:"):  # hand the fine-tuned UNet back as a diffusers folder too
        out["diffusers_folder"] = str(_export_diffusers(res.ema_model, Path(out_dir), res.checkpoint))
    ckpts.atomic_write_bytes(Path(out_dir) / "sft_pg_result.json", json.dumps(ckpts.jsonable(out), indent=1).encode())
    return out


__all__ = ["SFTPGConfig", "SFTPGState", "SFTPGResult", "PG_SAMPLERS", "pg_samplers", "METHODS", "make_policy_grid",
           "policy_ts",
           "policy_transition", "Rollout", "rollout", "step_surrogate", "pg_surrogate", "baseline_regression",
           "gradient_penalty", "critic_values", "baseline_values", "default_critic", "default_baseline",
           "pg_variance", "build_state", "critic_step", "generator_step", "add_to_buffer", "sample_policy",
           "paper_metric", "sft_pg", "finetune_sft_pg"]
