r"""f-Restart: a learned restart policy (Noise vs. ODE step) trained with the f-policy gradient and PPO clipping
(thesis "Boosting methods for refining diffusion models", 2024, ch. 4, secs. 4.2-4.3, eqs. 4.3-4.8, Algs. 6 and 7;
Agarwal et al. 2023, f-Policy Gradients; Xu et al. 2023, Restart sampling; Schulman et al. 2017, PPO).

The sampler is an MDP on a time grid t_0 = t_max > t_1 > ... > t_T = 0 (grid level k, time t_k).  A state is
(x, k) (plus, with ``markov=True``, the step index l and the remaining budget); the actions are

* **ODE step** k -> k+1: one step of a registered deterministic sampler over the two-point grid (t_k, t_{k+1})
  (``SamplerInfo.fn``; its network evaluations are counted with ``CountingModel``);
* **Noise** k -> k-1: the exact forward transition q(x_{t_{k-1}} | x_{t_k}) (``samplers.restart.restart_transition``,
  the re-noising step of restart sampling); it costs no evaluation.

Notation
--------
=====================  ==============================================================================================
``T``, ``L``           grid steps; episode length (RL steps l = 0..L-1; L >= T)
``pi_psi(a | s)``      the policy; ``a = 1`` Noise, ``a = 0`` ODE step; ``psi'`` the rollout (old) policy
``d_phi(x, t)``        time-conditioned discriminator (``guidance.discriminator``), logit l_phi = log p*_t / p_psi'
``u(s)``               density ratio p_psi'(s) / p*(s) = exp(-l_phi(x, t)) (p*: data diffused to t)
``f'(u)``              derivative of the f-divergence generator, D_f(p_psi || p*) = E_{p*} f(p_psi / p*):
                       ``kl`` f = u log u (KL(p_psi||p*)), f' = 1 + log u; ``rkl`` f = -log u, f' = -1/u;
                       ``chi2`` f = (u - 1)^2, f' = 2 (u - 1); ``js`` f = u log u - (1 + u) log((1 + u)/2),
                       f' = log(2u / (1 + u))
``c(s)``               per-state cost f'(u(s)) - beta w(t)
``F_l``                sum_{i >= l} gamma^i (c(s_i) - b) (eq. 4.8; b: visitation mean of c, see ``returns_to_go``),
                       plus lambda sum_{i >= l} gamma^i NFE_i with ``nfe_target`` (uncentred: a per-episode term)
``r_psi``              pi_psi(a_l | s_l) / pi_psi'(a_l | s_l);  ``eps``: PPO clip
``w(t)``               time weighting (sec. 4.3.3): ``linear`` w = 1 - t / t_max (more weight on small t); the
                       thesis adds it "to the density ratio" without a formula: our reading is the term -beta w(t)
=====================  ==============================================================================================

Gradient (eq. 4.7 with the state-visitation density of eq. 4.4 normalised by Z = E|tau|): for states s visited by
tau, grad D_f(p_psi || p*) = (1/Z) E_tau[(sum_l grad log pi(a_l | s_l)) sum_{s in tau} (f'(u(s)) - E_{p_psi} f')].
The centring term E_{p_psi} f' comes from grad Z and vanishes when every episode has the same length (the thesis'
fixed L); with termination at t = 0 episodes differ in length and it is needed (``center="visitation"``).  Causality
gives the reward-to-go form F_l; PPO (eq. 4.8) maximises min(r A, clip(r, 1 - eps, 1 + eps) A) with A = -F (eq. 4.8
is written for a return to maximise; F is a cost).

Episodes (``episode``): ``"finish"`` ends at t = 0, and the Noise action is masked whenever taking it would leave too
few steps (L) or evaluations (``nfe_budget``) to finish with ODE steps, so every episode returns a sample within its
budget; ``"fixed"`` is the thesis' Alg. 7: exactly L steps, Noise is the only action at t = 0, the sample is the
last state.  Ablations from the thesis' future work: ``noise_t_max`` (Noise only into times <= noise_t_max),
``markov`` (the policy also sees l / L and the remaining budget), ``nfe_target`` (a Lagrange multiplier lambda on the
episode's NFE, lambda <- lambda + nfe_lr (E[NFE] - target) / base NFE after each iteration, keeps the expected NFE at
the target; its term is added to F without centring, since E[NFE] is a per-episode quantity, not a visitation one).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import progress as tqdm
from ..core.denoisers import CountingModel, DiffusionModel
from ..core.schedules import make_grid
from ..guidance.discriminator import ce_terms, make_discriminator
from ..io import checkpoints as ckpts
from ..nets.heads import VectorHead
from ..samplers.base import SAMPLERS, gaussian_sample
from ..samplers.restart import restart_transition

F_DIVERGENCES = ("kl", "rkl", "chi2", "js")
TIME_WEIGHTS = ("none", "linear")
EPISODES = ("finish", "fixed")
CENTERS = ("visitation", "none")
KIND = "f_restart"


# -- f-divergences and weights -------------------------------------------------------------------------------------
def f_prime(name: str, log_u: torch.Tensor) -> torch.Tensor:
    """f'(u) at u = exp(log_u) for the generator ``name`` (module table); computed from log u for stability."""
    if name == "kl":
        return 1.0 + log_u
    if name == "rkl":
        return -torch.exp(-log_u)
    if name == "chi2":
        return 2.0 * torch.expm1(log_u)
    if name == "js":
        return math.log(2.0) + log_u - F.softplus(log_u)
    raise ValueError(f"unknown f-divergence {name!r}; expected one of {F_DIVERGENCES}")


def time_weight(name: str, frac: torch.Tensor) -> torch.Tensor:
    """w(t) at frac = t / t_max in [0, 1]: ``none`` 0 (no shaping), ``linear`` 1 - frac (thesis sec. 4.3.3)."""
    if name == "none":
        return torch.zeros_like(frac)
    if name == "linear":
        return 1.0 - frac
    raise ValueError(f"unknown time_weight {name!r}; expected one of {TIME_WEIGHTS}")


# -- configuration -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FRestartConfig:
    """f-Restart options (the CLI maps ``--set`` onto this; module docstring for the symbols).

    Environment: ``sampler`` (a deterministic registered sampler), ``steps`` T, ``grid`` (None: the sampler's),
    ``nfe_budget`` (per episode, ``"finish"`` episodes only; None: none), ``episode_length`` L (None: 3T),
    ``episode``, ``noise_t_max``.  Policy: ``markov``, ``policy_width``/``policy_depth``, ``greedy_rollouts``
    (Alg. 7, line 9: roll out with the most probable action; default: sample actions).  f-PG / PPO (Alg. 6):
    ``f``, ``gamma``, ``clip_eps``, ``lr``, ``iterations``, ``batch_size`` (trajectories per iteration),
    ``policy_updates``, ``center``, ``baseline`` (subtract the batch mean of F at each grid level: variance
    reduction), ``time_weight`` and ``time_weight_scale`` beta, ``nfe_target``/``nfe_lr``.  Discriminator:
    ``disc_steps`` Adam steps per iteration (warm-started), ``disc_lr``, ``disc_width`` (for images ``(C, H, W)``: the
    ``ImageHead``'s base channels), ``disc_depth`` (vectors only),
    ``disc_batch``.  ``dataset``, ``data_n``, ``data_seed``, ``weights``, ``eval_samples`` are used by
    ``finetune_f_restart`` only."""

    sampler: str = "heun"
    steps: int = 10
    grid: str | None = None
    nfe_budget: int | None = None
    episode_length: int | None = None
    episode: str = "finish"
    noise_t_max: float | None = None
    markov: bool = False
    greedy_rollouts: bool = False
    f: str = "kl"
    gamma: float = 1.0
    clip_eps: float = 0.2
    lr: float = 1e-3
    iterations: int = 50
    batch_size: int = 256
    policy_updates: int = 4
    center: str = "visitation"
    baseline: bool = True
    time_weight: str = "none"
    time_weight_scale: float = 1.0
    nfe_target: float | None = None
    nfe_lr: float = 0.05
    policy_width: int = 64
    policy_depth: int = 2
    disc_steps: int = 100
    disc_lr: float = 1e-3
    disc_width: int = 64
    disc_depth: int = 2
    disc_batch: int = 512
    seed: int = 0
    ckpt_every: int = 10
    keep_checkpoints: int = 2
    device: str = "cpu"
    dataset: str = "8gaussians"
    data_n: int = 10_000
    data_seed: int = 0
    weights: str = "ema"
    eval_samples: int = 2000

    def __post_init__(self):
        info = SAMPLERS.get(self.sampler)
        if info is None or info.stochastic or info.adaptive:
            ok = sorted(k for k, v in SAMPLERS.items() if not v.stochastic and not v.adaptive)
            raise ValueError(f"sampler must be a deterministic, fixed-cost sampler, one of {ok}; got {self.sampler!r}")
        for name in ("steps", "iterations", "batch_size", "policy_updates", "policy_width", "policy_depth",
                     "disc_steps", "disc_width", "disc_depth", "disc_batch", "keep_checkpoints", "eval_samples",
                     "data_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2 (a grid with a final step into t = 0), got {self.steps}")
        choices = (("f", F_DIVERGENCES), ("time_weight", TIME_WEIGHTS), ("episode", EPISODES), ("center", CENTERS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.episode_length is not None and (int(self.episode_length) != self.episode_length
                                                or self.episode_length < self.steps):
            raise ValueError(f"episode_length must be an integer >= steps={self.steps}, got {self.episode_length!r}")
        if self.nfe_budget is not None and self.episode == "fixed":
            raise ValueError("nfe_budget needs episode='finish' (fixed-length episodes do not end at t = 0)")
        if not 0 < self.gamma <= 1 or not 0 < self.clip_eps < 1:
            raise ValueError(f"need 0 < gamma <= 1 and 0 < clip_eps < 1, got {self.gamma}, {self.clip_eps}")
        if min(self.lr, self.disc_lr, self.nfe_lr) <= 0 or self.time_weight_scale < 0:
            raise ValueError("learning rates must be > 0 and time_weight_scale >= 0")
        if self.weights not in ("ema", "model") or self.ckpt_every < 0:
            raise ValueError(f"weights must be 'ema' or 'model' and ckpt_every >= 0, got {self.weights!r}, "
                             f"{self.ckpt_every}")

    @property
    def length(self) -> int:
        """The episode length L (``episode_length``, default 3T)."""
        return int(self.episode_length or 3 * self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return ckpts.jsonable(asdict(self))


# -- the environment -------------------------------------------------------------------------------------------
@dataclass
class EnvState:
    """Batch of MDP states: x ``[B, ...]``, grid level k ``[B]`` (long), RL step l (int), NFE spent ``[B]`` (long),
    done ``[B]`` (bool)."""

    x: torch.Tensor
    k: torch.Tensor
    l: int
    nfe: torch.Tensor
    done: torch.Tensor


class RestartEnv:
    """The restart MDP over ``model`` (module docstring).  ``ts`` float64 ``[T+1]`` (``make_grid(grid, process,
    T - 1, final_zero=True)``), ``cost[k]`` the planned evaluations of the ODE step k -> k+1
    (``SamplerInfo.planned_nfe``), ``to_go[k]`` = sum_{j >= k} cost[j], ``base_nfe`` = to_go[0]."""

    def __init__(self, model: DiffusionModel, config: FRestartConfig):
        self.config, self.info = config, SAMPLERS[config.sampler]
        self.model = model if isinstance(model, CountingModel) else CountingModel(model)
        self.process, self.T, self.L = model.process, config.steps, config.length
        self.ts = make_grid(config.grid or self.info.default_grid, self.process, self.T - 1, final_zero=True)
        #: an ODE action is one step of the sampler as in the middle of a run (Heun's Euler first / lower-order
        #: final step would turn every one-step action into an Euler step)
        self.step_opts = {k: False for k in ("euler_first", "lower_order_final") if k in self.info.options}
        self.cost = [self.info.planned_nfe(1, final_zero=bool(self.ts[k + 1] == 0), **self.step_opts)
                     for k in range(self.T)]
        self.to_go = [sum(self.cost[k:]) for k in range(self.T + 1)]
        self.base_nfe = self.to_go[0]
        if config.nfe_budget is not None and config.nfe_budget < self.base_nfe:
            raise ValueError(f"nfe_budget={config.nfe_budget} is below the {self.base_nfe} evaluations of the plain "
                             f"{config.sampler!r} run over {self.T} steps; raise it or lower steps")
        if config.noise_t_max is not None and not config.noise_t_max > float(self.ts[-2]):
            raise ValueError(f"noise_t_max={config.noise_t_max} allows no Noise action; it must exceed "
                             f"t_(T-1)={float(self.ts[-2]):.4g}")

    def reset(self, n: int, generator: torch.Generator | None, dtype: torch.dtype = torch.float32,
              shape: tuple[int, ...] = (2,)) -> EnvState:
        """n prior draws x_T ~ N(0, sigma(t_max)^2 I) at level 0 (Alg. 7, line 5)."""
        dev = torch.device(self.config.device)
        x = self.process.prior_sample((n, *shape), generator=generator, device=dev, dtype=dtype)
        zeros = torch.zeros(n, dtype=torch.long, device=dev)
        return EnvState(x, zeros, 0, zeros.clone(), torch.zeros(n, dtype=torch.bool, device=dev))

    def valid(self, s: EnvState) -> tuple[torch.Tensor, torch.Tensor]:
        """(ODE allowed, Noise allowed) ``[B]`` bool for live states (module docstring: the masks of each mode)."""
        alive, k = ~s.done, s.k
        can_ode, can_noise = alive & (k < self.T), alive & (k >= 1)
        up = self.ts.to(k.device)[(k - 1).clamp(min=0)]
        if self.config.noise_t_max is not None:
            can_noise &= up <= self.config.noise_t_max
        if self.config.episode == "finish":
            can_noise &= (self.L - s.l - 1) >= self.T - (k - 1)
            if self.config.nfe_budget is not None:
                to_go = torch.tensor(self.to_go, device=k.device)[(k - 1).clamp(min=0)]
                can_noise &= s.nfe + to_go <= self.config.nfe_budget
        return can_ode, can_noise

    def features(self, s: EnvState) -> torch.Tensor:
        """Markov features ``[B, 2]``: l / L and the slack (remaining budget, or remaining steps in ``fixed`` /
        budget-free episodes, beyond what finishing with ODE steps needs) as a fraction of the total slack."""
        to_go = torch.tensor(self.to_go, device=s.k.device, dtype=s.x.dtype)[s.k]
        if self.config.nfe_budget is not None:
            slack = (self.config.nfe_budget - s.nfe.to(s.x.dtype) - to_go) / max(self.config.nfe_budget
                                                                                  - self.base_nfe, 1)
        else:
            slack = (self.L - s.l - (self.T - s.k).to(s.x.dtype)) / max(self.L - self.T, 1)
        return torch.stack([torch.full_like(slack, s.l / self.L), slack], 1)

    def t_of(self, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Grid times t_k ``[B]`` in like's dtype/device."""
        return self.ts.to(like.device)[k].to(like.dtype)

    def step(self, s: EnvState, noise: torch.Tensor, generator: torch.Generator | None) -> EnvState:
        """Apply the actions (``noise`` ``[B]`` bool; ignored for done states): Noise draws the forward transition
        t_k -> t_{k-1} (Alg. 7, line 11), ODE runs the sampler over (t_k, t_{k+1}) per level (line 13)."""
        x, k, nfe, alive = s.x.clone(), s.k.clone(), s.nfe.clone(), ~s.done
        ni = alive & noise
        if bool(ni.any()):
            t64 = self.ts.to(x.device)
            mean, std = restart_transition(self.model, x[ni].to(torch.float64), t64[k[ni]], t64[k[ni] - 1])
            x[ni] = gaussian_sample(mean.to(x.dtype), std.to(x.dtype), generator)
            k[ni] -= 1
        oi = alive & ~noise
        for kk in sorted(set(k[oi].tolist())):
            idx = oi & (k == kk)
            n0 = self.model.nfe
            x[idx] = self.info.fn(self.model, x[idx], self.ts[kk:kk + 2].to(x.dtype), **self.step_opts)
            nfe[idx] += self.model.nfe - n0
            k[idx] += 1
        done = (k == self.T) if self.config.episode == "finish" else s.done.clone()
        if s.l + 1 >= self.L:
            done = torch.ones_like(done)
        return EnvState(x, k, s.l + 1, nfe, done | s.done)


# -- the policy ------------------------------------------------------------------------------------------------
class RestartPolicy(nn.Module):
    """pi_psi(Noise | x, t[, l / L, slack]) = sigmoid(logit): a ``nets.VectorHead`` on the flattened x (and the
    Markov features), time input t / t_max.  ``forward(x [B, ...], t_frac [B], feats [B, 2] or None) -> [B]``."""

    def __init__(self, dim: int, markov: bool = False, width: int = 64, depth: int = 2):
        super().__init__()
        self.dim, self.markov = int(dim), bool(markov)
        self.net = VectorHead(self.dim + 2 * self.markov, num_outputs=1, width=width, depth=depth)

    def forward(self, x: torch.Tensor, t_frac: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """The Noise logit ``[B]``."""
        h = x.reshape(x.shape[0], -1)
        if self.markov:
            h = torch.cat([h, feats.to(h.dtype)], 1)
        return self.net(h, t_frac.to(h.dtype))


def act(policy: RestartPolicy, env: RestartEnv, s: EnvState, greedy: bool,
        generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose actions (Alg. 7, line 9 when ``greedy``: the most probable one; else a draw from pi_psi).  Forced
    steps (one valid action) take it with log-prob 0.  Returns (noise, log pi(a | s), free, feats), each ``[B]``
    (feats ``[B, 2]``)."""
    can_ode, can_noise = env.valid(s)
    feats = env.features(s)
    logit = policy(s.x, env.t_of(s.k, s.x) / env.process.t_max, feats)
    free = can_ode & can_noise
    if greedy:
        a = logit > 0
    else:
        a = torch.rand(logit.shape, generator=generator, device=logit.device, dtype=logit.dtype) < torch.sigmoid(logit)
    noise = torch.where(free, a, can_noise & ~can_ode)
    logp = torch.where(free, F.logsigmoid(torch.where(noise, logit, -logit)), torch.zeros_like(logit))
    return noise, logp, free, feats


@dataclass
class Episode:
    """A batch of trajectories (Alg. 7, line 15), S = number of RL steps run + 1 states.

    xs ``[S, B, ...]``, ks ``[S, B]``, feats ``[S, B, 2]``, alive ``[S, B]`` (state s_l exists), noise / logp / free
    ``[S-1, B]`` (the action at s_l, its log-prob under the rollout policy, whether it was a choice), step_nfe
    ``[S-1, B]`` (evaluations of that step), x0 ``[B, ...]`` (the final states), nfe ``[B]``, k_final ``[B]``."""

    xs: torch.Tensor
    ks: torch.Tensor
    feats: torch.Tensor
    alive: torch.Tensor
    noise: torch.Tensor
    logp: torch.Tensor
    free: torch.Tensor
    step_nfe: torch.Tensor
    x0: torch.Tensor
    nfe: torch.Tensor
    k_final: torch.Tensor


@torch.no_grad()
def rollout(env: RestartEnv, policy: RestartPolicy, n: int, generator: torch.Generator | None, *,
            greedy: bool = False, shape: tuple[int, ...] = (2,), dtype: torch.dtype = torch.float32) -> Episode:
    """Run n episodes of the policy (Alg. 7, lines 5-16) from prior draws; returns the ``Episode``."""
    s = env.reset(n, generator, dtype, shape)
    rec: dict[str, list] = {k: [] for k in ("xs", "ks", "feats", "alive", "noise", "logp", "free", "nfe")}
    while True:
        rec["xs"].append(s.x)
        rec["ks"].append(s.k)
        rec["alive"].append(~s.done)
        if bool(s.done.all()):
            rec["feats"].append(env.features(s))
            break
        noise, logp, free, feats = act(policy, env, s, greedy, generator)
        rec["feats"].append(feats)
        s_next = env.step(s, noise, generator)
        for key, v in (("noise", noise & ~s.done), ("logp", logp), ("free", free), ("nfe", s_next.nfe - s.nfe)):
            rec[key].append(v)
        s = s_next
    st = {k: torch.stack(v) for k, v in rec.items()}
    return Episode(st["xs"], st["ks"], st["feats"], st["alive"], st["noise"], st["logp"], st["free"], st["nfe"],
                   s.x, s.nfe, s.k)


def action_mix(ep: Episode, T: int) -> list[float | None]:
    """P(Noise | a free decision at grid level k) for k = 0..T-1 (None where no free decision was made)."""
    k, free, noise = ep.ks[:-1], ep.free, ep.noise
    out = []
    for level in range(T):
        m = free & (k == level)
        cnt = int(m.sum())
        out.append(float((noise & m).sum()) / cnt if cnt else None)
    return out


def mix_string(mix: list[float | None]) -> str:
    """The action mix as a short progress-bar string (level 0 = t_max first; ``-``: no free decision)."""
    return "/".join("-" if p is None else f"{p:.2f}" for p in mix)


# -- the f-PG estimator ----------------------------------------------------------------------------------------
def returns_to_go(c: torch.Tensor, alive: torch.Tensor, gamma: float, center: str | float = "visitation"
                  ) -> torch.Tensor:
    """F_l = sum_{i >= l} gamma^i (c_i - b) over live states (eq. 4.8), ``[S-1, B]`` for costs c ``[S, B]``.

    b: ``"visitation"`` the mean of c over all visited states of the batch (the grad Z term of the module
    docstring), ``"none"`` 0 (eq. 4.7 as written), or a number (an exact E_{p_psi} c, for tests)."""
    if center == "visitation":
        b = (c * alive).sum() / alive.sum().clamp(min=1)
    elif center == "none":
        b = 0.0
    elif isinstance(center, (int, float)):
        b = float(center)
    else:
        raise ValueError(f"center must be one of {CENTERS} or a number, got {center!r}")
    disc = gamma ** torch.arange(c.shape[0], dtype=c.dtype, device=c.device)
    g = (c - b) * alive * disc[:, None]
    rtg = torch.flip(torch.cumsum(torch.flip(g, [0]), 0), [0])
    return rtg[:-1]


def fpg_surrogate(logp_new: torch.Tensor, logp_old: torch.Tensor, F_rtg: torch.Tensor, mask: torch.Tensor,
                  clip_eps: float | None) -> torch.Tensor:
    """The PPO-clipped f-PG loss to minimise (eq. 4.8 with A = -F): -(1/B) sum_{l, b} mask min(r A, clip(r) A),
    r = exp(logp_new - logp_old); all ``[S-1, B]``.  At psi = psi' its gradient is (1/B) sum mask F grad log pi,
    the estimator of eq. 4.7; ``clip_eps`` None: no clipping."""
    A = -F_rtg
    r = torch.exp(logp_new - logp_old)
    obj = r * A
    if clip_eps is not None:
        obj = torch.minimum(obj, r.clamp(1 - clip_eps, 1 + clip_eps) * A)
    return -(obj * mask).sum() / logp_new.shape[1]


def level_baseline(F_rtg: torch.Tensor, ks: torch.Tensor, mask: torch.Tensor, T: int) -> torch.Tensor:
    """F minus the batch mean of F over free decisions at the same grid level (a state-dependent baseline)."""
    out = F_rtg.clone()
    for level in range(T + 1):
        m = mask & (ks == level)
        if bool(m.any()):
            out[m] = F_rtg[m] - F_rtg[m].mean()
    return out


def policy_logp(policy: RestartPolicy, env: RestartEnv, ep: Episode) -> torch.Tensor:
    """log pi_psi(a_l | s_l) ``[S-1, B]`` of the recorded actions under the current policy (0 where not free)."""
    S1, B = ep.noise.shape
    x = ep.xs[:-1].reshape(S1 * B, *ep.xs.shape[2:])
    k = ep.ks[:-1].reshape(-1)
    logit = policy(x, env.t_of(k, x) / env.process.t_max, ep.feats[:-1].reshape(S1 * B, -1)).reshape(S1, B)
    lp = F.logsigmoid(torch.where(ep.noise, logit, -logit))
    return torch.where(ep.free, lp, torch.zeros_like(lp))


# -- discriminator and costs -----------------------------------------------------------------------------------
def visited(ep: Episode, env: RestartEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """All live states of the episode as (x ``[N, ...]``, t ``[N]``)."""
    x = ep.xs[ep.alive]
    return x, env.t_of(ep.ks[ep.alive], x)


def train_disc(disc: nn.Module, opt: torch.optim.Optimizer, ep: Episode, env: RestartEnv, data: torch.Tensor,
               config: FRestartConfig, generator: torch.Generator) -> float:
    """Alg. 7, line 17: ``disc_steps`` Adam steps of J_CE between visited states (x, t) and data diffused to the
    same times t (x* = alpha_t x0 + sigma_t eps); returns the mean loss of the last step."""
    xf, tf = visited(ep, env)
    loss = torch.tensor(float("nan"))
    disc.train()
    for _ in range(config.disc_steps):
        i = torch.randint(0, xf.shape[0], (config.disc_batch,), generator=generator, device=xf.device)
        j = torch.randint(0, data.shape[0], (config.disc_batch,), generator=generator, device=xf.device)
        x_real, _ = env.process.marginal_sample(data[j].to(xf.dtype), tf[i], generator)
        a, b = ce_terms(disc, x_real, tf[i], xf[i], tf[i])
        loss = a.mean() + b.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    disc.eval()
    return float(loss.detach())


@torch.no_grad()
def state_costs(disc: nn.Module, ep: Episode, env: RestartEnv, config: FRestartConfig) -> torch.Tensor:
    """c(s_l) ``[S, B]`` (0 where not alive): f'(u) with log u = -l_phi(x, t) (Alg. 7, line 18), minus beta w(t)."""
    x, t = visited(ep, env)
    c_live = f_prime(config.f, -disc(x, t)) - config.time_weight_scale * time_weight(config.time_weight,
                                                                                     t / env.process.t_max)
    c = torch.zeros(ep.alive.shape, dtype=c_live.dtype, device=c_live.device)
    c[ep.alive] = c_live
    return c


# -- training (Alg. 7) -----------------------------------------------------------------------------------------
@dataclass
class FRestartState:
    """Everything a run carries between iterations (and checkpoints)."""

    env: RestartEnv
    policy: RestartPolicy
    disc: nn.Module
    opt_p: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator
    iteration: int = 0
    lam: float = 0.0
    history: list[dict] = field(default_factory=list)


def build_state(model: DiffusionModel, shape: tuple[int, ...], config: FRestartConfig) -> FRestartState:
    """Environment, policy, discriminator (``make_discriminator``), their Adam optimisers and the run's generator,
    seeded with ``config.seed``."""
    torch.manual_seed(config.seed)
    env = RestartEnv(model, config)
    dim = math.prod(shape)
    policy = RestartPolicy(dim, config.markov, config.policy_width, config.policy_depth).to(config.device)
    head = ({"width": config.disc_width, "depth": config.disc_depth} if len(shape) == 1
            else {"base_channels": config.disc_width})  # images: an ImageHead with disc_width base channels
    disc = make_discriminator(shape, model.process, **head).to(config.device)
    return FRestartState(env, policy, disc, torch.optim.Adam(policy.parameters(), lr=config.lr),
                         torch.optim.Adam(disc.parameters(), lr=config.disc_lr),
                         torch.Generator(device=config.device).manual_seed(config.seed))


def policy_phase(st: FRestartState, ep: Episode, c: torch.Tensor, config: FRestartConfig) -> float:
    """Alg. 7, lines 21-23: ``policy_updates`` Adam steps on the clipped surrogate; returns the last loss."""
    F_rtg = returns_to_go(c, ep.alive, config.gamma, config.center)
    if st.lam:  # NFE shaping: lambda times the episode's remaining evaluations (uncentred)
        nfe = torch.cat([ep.step_nfe.to(c.dtype), torch.zeros_like(c[:1])])
        F_rtg = F_rtg + st.lam * returns_to_go(nfe, ep.alive, config.gamma, "none")
    mask = ep.free
    if config.baseline:
        F_rtg = level_baseline(F_rtg, ep.ks[:-1], mask, st.env.T)
    loss = torch.tensor(0.0)
    for _ in range(config.policy_updates):
        loss = fpg_surrogate(policy_logp(st.policy, st.env, ep), ep.logp, F_rtg, mask, config.clip_eps)
        st.opt_p.zero_grad(set_to_none=True)
        loss.backward()
        st.opt_p.step()
    return float(loss.detach())


def iteration(st: FRestartState, data: torch.Tensor, config: FRestartConfig) -> dict:
    """One iteration of Alg. 7: rollouts, discriminator, costs, PPO updates, NFE multiplier; the history row."""
    st.policy.eval()
    ep = rollout(st.env, st.policy, config.batch_size, st.rng, greedy=config.greedy_rollouts,
                 shape=tuple(data.shape[1:]), dtype=data.dtype)
    d_loss = train_disc(st.disc, st.opt_d, ep, st.env, data, config, st.rng)
    c = state_costs(st.disc, ep, st.env, config)
    st.policy.train()
    p_loss = policy_phase(st, ep, c, config)
    nfe = float(ep.nfe.to(torch.float64).mean())
    if config.nfe_target is not None:  # dual ascent on E[NFE] = target
        st.lam = st.lam + config.nfe_lr * (nfe - config.nfe_target) / st.env.base_nfe
    free = int(ep.free.sum())
    return {"iteration": st.iteration + 1, "disc_loss": d_loss, "policy_loss": p_loss, "nfe": nfe,
            "cost": float((c * ep.alive).sum() / ep.alive.sum()), "lam": st.lam,
            "p_noise": float((ep.noise & ep.free).sum()) / free if free else None,
            "mix": action_mix(ep, st.env.T), "length": float(ep.alive.sum(0).to(torch.float64).mean())}


RESUME_MAY_CHANGE = ("iterations", "ckpt_every", "keep_checkpoints", "device", "eval_samples")


def save_state(st: FRestartState, run_dir: Path, config: FRestartConfig) -> Path:
    """Discriminator first, then the policy checkpoint ``ckpt_<it>`` (found by ``latest_checkpoint``)."""
    it = st.iteration
    ckpts.save_checkpoint(run_dir / f"disc_{it:08d}", st.disc, optimizer=st.opt_d, step=it, save_rng=False)
    extra = {"kind": KIND, "iteration": it, "lam": st.lam, "history": st.history, "dim": st.policy.dim,
             "markov": st.policy.markov, "rng": st.rng.get_state().tolist()}
    path = ckpts.save_checkpoint(run_dir / f"ckpt_{it:08d}", st.policy.net, optimizer=st.opt_p, step=it,
                                 train_config=config.to_dict(), extra=extra, save_rng=False)
    for old in ckpts.list_checkpoints(run_dir)[:-config.keep_checkpoints]:
        step = int(json.loads(old.read_text())["step"])
        ckpts.delete_checkpoint(old)
        ckpts.delete_checkpoint(run_dir / f"disc_{step:08d}")
    return path


def resume_state(st: FRestartState, run_dir: Path, config: FRestartConfig) -> Path | None:
    """Restore the latest checkpoint of ``run_dir`` into ``st`` (settings must match but ``RESUME_MAY_CHANGE``)."""
    latest = ckpts.latest_checkpoint(run_dir)
    if latest is None:
        return None
    ckpt = ckpts.load_checkpoint(latest, device=config.device)
    saved, now = ckpt.meta.get("train_config") or {}, config.to_dict()
    diff = sorted(k for k in now if k not in RESUME_MAY_CHANGE and saved.get(k) != now[k])
    if diff or ckpt.meta.get("extra", {}).get("kind") != KIND:
        raise ValueError(f"cannot resume from {latest}: not an f-Restart run with these settings (differ: {diff}); "
                         "use a new run folder")
    ckpts.restore(ckpt, st.policy.net, None, st.opt_p, restore_rng=False)
    ckpts.restore(ckpts.load_checkpoint(run_dir / f"disc_{ckpt.step:08d}", config.device), st.disc, None, st.opt_d,
                  restore_rng=False)
    extra = ckpt.meta["extra"]
    st.iteration, st.lam, st.history = int(extra["iteration"]), float(extra["lam"]), list(extra["history"])
    st.rng.set_state(torch.tensor(extra["rng"], dtype=torch.uint8))
    return latest


@dataclass
class FRestartResult:
    """What ``train_f_restart`` returns: the environment, trained policy and discriminator, per-iteration history
    (losses, mean NFE and cost, P(Noise) and its mix per level), run folder, last checkpoint and wall time."""

    env: RestartEnv
    policy: RestartPolicy
    disc: nn.Module
    history: list[dict]
    run_dir: Path | None = None
    checkpoint: Path | None = None
    wall_s: float = 0.0


def train_f_restart(model: DiffusionModel, data: torch.Tensor, config: FRestartConfig | None = None, *,
                    run_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> FRestartResult:
    """Train an f-Restart policy for the frozen ``model`` against data ``[N, ...]`` (Alg. 7 with PPO, Alg. 6).

    ``run_dir``: checkpoints every ``ckpt_every`` iterations and at the end; ``resume`` continues from the latest
    (same settings).  The progress bar shows the mean NFE and P(Noise) per grid level (t_max first)."""
    config = config or FRestartConfig()
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 2:
        raise ValueError("data must be a tensor of examples [N, ...] with N >= 2")
    data = data.to(config.device, torch.float32)
    model.requires_grad_(False)
    st = build_state(model, tuple(data.shape[1:]), config)
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir")
    last = resume_state(st, run_dir, config) if resume else None
    t0 = time.perf_counter()
    bar = tqdm(total=config.iterations, initial=st.iteration, disable=not progress, desc="f-restart", leave=False)
    try:
        while st.iteration < config.iterations:
            row = iteration(st, data, config)
            st.iteration += 1
            st.history.append(row)
            bar.update(1)
            bar.set_postfix(nfe=f"{row['nfe']:.1f}", noise=mix_string(row["mix"]), refresh=False)
            if run_dir is not None and ((config.ckpt_every and st.iteration % config.ckpt_every == 0)
                                        or st.iteration == config.iterations):
                last = save_state(st, run_dir, config)
    finally:
        bar.close()
    st.policy.eval()
    return FRestartResult(st.env, st.policy, st.disc, st.history, run_dir, last, time.perf_counter() - t0)


def sample_f_restart(env: RestartEnv, policy: RestartPolicy, n: int, *, seed: int = 0, greedy: bool = True,
                     shape: tuple[int, ...] = (2,), dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    """n samples ``[n, *shape]`` of the learned sampler (greedy: Alg. 7 line 9) from ``seed``; info: measured NFE
    (mean, max), P(Noise) and its mix per level, and whether every episode reached t = 0."""
    ep = rollout(env, policy, n, torch.Generator(device=env.config.device).manual_seed(int(seed)), greedy=greedy,
                 shape=shape, dtype=dtype)
    free = int(ep.free.sum())
    return ep.x0, {"nfe_mean": float(ep.nfe.to(torch.float64).mean()), "nfe_max": int(ep.nfe.max()),
                   "p_noise": float((ep.noise & ep.free).sum()) / free if free else None,
                   "mix": action_mix(ep, env.T), "reached_zero": bool((ep.k_final == env.T).all())}


def finetune_f_restart(config: FRestartConfig, out_dir: str | Path, *, checkpoint: str | None = None,
                       oracle: str | None = None, process: str = "vp", resume: bool = False,
                       progress: bool = True) -> dict:
    """CLI entry (``scorelab finetune f-restart``): load the model (a ``checkpoint`` or an exact ``oracle`` spec,
    ``io.loading.load_any_model``) and ``config.dataset``, train into ``out_dir`` and return a JSON-able summary
    (sliced W2 to the data of the plain ODE run and of the greedy f-Restart sampler, its NFE and action mix)."""
    from ..data import load_dataset
    from ..evaluation.metrics import sliced_w2
    from ..io.loading import load_any_model

    if not resume and ckpts.latest_checkpoint(out_dir) is not None:
        raise ValueError(f"run folder {str(out_dir)!r} already holds an f-Restart run; pass --resume or a new --out")
    loaded = load_any_model(checkpoint=checkpoint, oracle=oracle, process=process, weights=config.weights)
    data, _ = load_dataset(config.dataset, n=config.data_n, seed=config.data_seed)
    if tuple(data.shape[1:]) != tuple(loaded.event_shape):
        raise ValueError(f"dataset {config.dataset!r} has examples of shape {tuple(data.shape[1:])}, the model "
                         f"{tuple(loaded.event_shape)}")
    res = train_f_restart(loaded.model, data, config, run_dir=out_dir, resume=resume, progress=progress)
    shape = tuple(loaded.event_shape)
    x, info = sample_f_restart(res.env, res.policy, config.eval_samples, seed=config.seed + 1, shape=shape)
    ode = res.env.info.fn(res.env.model, res.env.reset(config.eval_samples, torch.Generator().manual_seed(
        config.seed + 1), shape=shape).x, res.env.ts.to(torch.float32), **res.env.step_opts)
    flat = (lambda v: v.reshape(v.shape[0], -1))  # noqa: E731
    out = {"config": config.to_dict(), "model": loaded.source, "base_nfe": res.env.base_nfe,
           "sliced_w2_ode": sliced_w2(flat(ode), flat(data), seed=config.seed),
           "sliced_w2_f_restart": sliced_w2(flat(x), flat(data), seed=config.seed), **info,
           "history": res.history, "wall_s": res.wall_s, "checkpoint": str(res.checkpoint)}
    ckpts.atomic_write_bytes(Path(out_dir) / "f_restart_result.json", json.dumps(ckpts.jsonable(out),
                                                                                  indent=1).encode())
    return out


__all__ = ["F_DIVERGENCES", "TIME_WEIGHTS", "EPISODES", "CENTERS", "f_prime", "time_weight", "FRestartConfig",
           "EnvState", "RestartEnv", "RestartPolicy", "act", "Episode", "rollout", "action_mix", "mix_string",
           "returns_to_go", "fpg_surrogate", "level_baseline", "policy_logp", "visited", "train_disc", "state_costs",
           "FRestartState", "build_state", "policy_phase", "iteration", "save_state", "resume_state",
           "FRestartResult", "train_f_restart", "sample_f_restart", "finetune_f_restart"]
