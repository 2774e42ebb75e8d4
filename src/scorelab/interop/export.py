r"""Hand scorelab's grids and samplers back to diffusers: grids as ``timesteps`` / ``sigmas`` lists, and
``ScorelabScheduler``, a diffusers-compatible scheduler (``set_timesteps`` / ``step``) that runs scorelab's
deterministic multistep samplers on a scorelab grid inside an unchanged ``DDPMPipeline`` / ``DDIMPipeline``.

Notation (``interop.diffusers`` for the time map)
------------------------------------------------
=====================  ==============================================================================================
``ts``                 a scorelab grid t_0 > ... > t_n on a ``Discrete`` process (the last time may be 0)
``k_i``                diffusers timestep of t_i: k = t N - 1 (``timesteps_from_times``); the model is evaluated at
                       t_0..t_{n-1} (one evaluation per step for the samplers in ``ADAPTER_SAMPLERS``)
``sigma_i``            diffusers' (Karras) sigma of t_i: sigma / alpha = sqrt((1 - alpha_bar) / alpha_bar); 0 at t = 0
``o_j``                the network output (eps, v or x0) the pipeline passes to ``step`` at evaluation j
=====================  ==============================================================================================

How ``step`` stays equal to scorelab's own sampler: at evaluation j the adapter has recorded x_T and o_0..o_j; it
reruns the scorelab sampler over the whole grid from x_T with a model that replays o_0..o_j, and stops when the
sampler asks for evaluation j + 1, returning the state it asks at.  The sampler code is scorelab's own (no second
implementation; multistep history, ``lower_order_final`` and the final step into t = 0 included), and the replays
cost no network evaluation (O(n^2) cheap update steps for n steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.denoisers import NetworkModel
from ..core.processes import Discrete
from ..samplers.base import check_grid
from ..samplers.budget import grid_for_nfe, planned_nfe_for_grid, sampler_info
from .diffusers import PREDICTION_TYPES, parameterization_of, process_from_scheduler, timesteps_from_times

#: deterministic multistep samplers (one evaluation per step) the adapter runs
ADAPTER_SAMPLERS = ("ddim", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc", "unipc_bh2")


def _discrete(process) -> Discrete:
    if not isinstance(process, Discrete):
        raise ValueError(f"diffusers timesteps need a Discrete process, got {type(process).__name__}")
    return process


def grid_to_timesteps(process: Discrete, ts, *, integer: bool = True) -> list:
    """The diffusers ``timesteps`` of a scorelab grid: k_i = t_i N - 1 at the evaluation times (a final t = 0 is
    dropped: diffusers steps into "alpha_cumprod = 1" after the last timestep).  ``integer``: rounded ints, what
    ``DPMSolverMultistepScheduler.set_timesteps(timesteps=...)`` and ``EulerDiscreteScheduler`` accept (exact for grids
    on training steps; a fitted grid's fractional times move by < 0.5 step: use ``grid_to_sigmas`` or the adapter for
    those).  ValueError when rounding would merge two times."""
    p = _discrete(process)
    ts = check_grid(torch.as_tensor(ts, dtype=torch.float64), p)
    ts = ts[:-1] if float(ts[-1]) == 0.0 else ts
    k = timesteps_from_times(ts, p.N)
    if not integer:
        return k.tolist()
    r = torch.round(k).long()
    if r.unique().numel() != r.numel():
        raise ValueError(f"rounding the grid to integer timesteps merges times ({r.tolist()}); use "
                         "grid_to_sigmas or ScorelabScheduler for this grid")
    return r.tolist()


def grid_to_sigmas(process: Discrete, ts) -> list[float]:
    """The diffusers ``sigmas`` of a scorelab grid, all n + 1 of them: sigma/alpha at every time (0 at a final t =
    0), what ``EulerDiscreteScheduler.set_timesteps(sigmas=...)`` accepts.  Exact for any grid (fitted ones too)."""
    ts = check_grid(torch.as_tensor(ts, dtype=torch.float64), process)
    lam = process.log_snr(ts.clamp(min=process.t_min))
    return torch.where(ts == 0, torch.zeros_like(ts), torch.exp(-0.5 * lam)).tolist()


def timesteps_to_grid(process: Discrete, timesteps, final: str = "zero") -> torch.Tensor:
    """The scorelab grid (float64) of a diffusers timestep list: t = (k + 1)/N, followed by 0 (``final="zero"``,
    diffusers' ``set_alpha_to_one`` / ``final_sigmas_type="zero"``) or nothing (``final="none"``)."""
    p = _discrete(process)
    if final not in ("zero", "none"):
        raise ValueError(f"final must be 'zero' or 'none', got {final!r}")
    t = (torch.as_tensor(timesteps, dtype=torch.float64).flatten() + 1) / p.N
    return check_grid(torch.cat([t, t.new_zeros(1)]) if final == "zero" else t, p)


# -- the adapter ------------------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the replay network when the sampler asks for the evaluation not yet made (carries its state)."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x = x


class _ReplayNet(nn.Module):
    """A 'network' that returns recorded outputs o_0, o_1, ... in order and stops at evaluation ``stop``."""

    def __init__(self, outputs: list[torch.Tensor], stop: int | None):
        super().__init__()
        self.outputs, self.stop, self.calls = outputs, stop, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        """o_j for the j-th call; raises ``_Stop(x)`` at call ``stop``."""
        j, self.calls = self.calls, self.calls + 1
        if j == self.stop:
            raise _Stop(x)
        return self.outputs[j].to(x.dtype)


@dataclass
class AdapterOutput:
    """What ``ScorelabScheduler.step`` returns: ``prev_sample`` (the state at the next grid time) and
    ``pred_original_sample`` (None: the sampler's x0 estimate is not replayed)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class ScorelabScheduler:
    """A diffusers-compatible scheduler running scorelab's ``sampler`` (``ADAPTER_SAMPLERS``) on a scorelab grid.

    Args: ``process`` (a ``Discrete`` chain, e.g. ``from_diffusers(...).process`` or ``process_from_scheduler``),
    ``sampler``, ``grid`` (None / a ``make_grid`` name, spent on the pipeline's ``num_inference_steps`` by
    ``grid_for_nfe``; or an explicit grid, e.g. a fitted one, whose evaluation count must equal
    ``num_inference_steps``), ``prediction_type`` (of the UNet), ``options`` (sampler options), ``final_zero``
    (named grids: end with a step into t = 0, as diffusers does).  Use: ``pipe = DDPMPipeline(unet, scheduler=sched)``,
    or ``use_scheduler(pipe, sched)`` for a ``DDIMPipeline`` (its constructor replaces any scheduler by a DDIM one)."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, process: Discrete, sampler: str = "dpm_solver_pp_2m", grid=None,
                 prediction_type: str = "epsilon", options: dict | None = None, final_zero: bool = True):
        from diffusers.configuration_utils import FrozenDict

        if sampler not in ADAPTER_SAMPLERS:
            raise ValueError(f"ScorelabScheduler runs {', '.join(ADAPTER_SAMPLERS)}; got sampler {sampler!r}")
        self.process, self.sampler, self.final_zero = _discrete(process), sampler, bool(final_zero)
        self.info = sampler_info(sampler)
        self.options = self.info.check_options(dict(options or {}))
        self.parameterization = PREDICTION_TYPES.get(prediction_type)
        if self.parameterization is None:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; supported: {list(PREDICTION_TYPES)}")
        self.grid = grid if grid is None or isinstance(grid, str) else check_grid(
            torch.as_tensor(grid, dtype=torch.float64), self.process)
        self.config = FrozenDict(num_train_timesteps=self.process.N, prediction_type=prediction_type,
                                 trained_betas=self.process.betas.tolist())
        self.ts, self.timesteps, self.num_inference_steps = None, None, None
        self._outputs: list[torch.Tensor] = []
        self._x_T: torch.Tensor | None = None

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any], sampler: str = "dpm_solver_pp_2m", grid=None,
                              **kw) -> "ScorelabScheduler":
        """The adapter for the process and ``prediction_type`` of a diffusers scheduler config."""
        parameterization_of(config)
        return cls(process_from_scheduler(dict(config)), sampler, grid,
                   prediction_type=config.get("prediction_type", "epsilon"), **kw)

    def __len__(self) -> int:
        """N, the number of training timesteps (as diffusers schedulers)."""
        return self.process.N

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      **kw) -> None:
        """Fix the grid for ``num_inference_steps`` network evaluations; ``self.timesteps`` are the diffusers
        timesteps of the evaluation times (int64 when all lie on training steps, else float32)."""
        if kw.get("timesteps") is not None or kw.get("sigmas") is not None:
            raise ValueError("ScorelabScheduler takes its grid at construction (grid=...), not timesteps=/sigmas=")
        if self.grid is None or isinstance(self.grid, str):
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps for a named grid")
            ts, _, opts = grid_for_nfe(self.sampler, self.process, int(num_inference_steps), self.grid,
                                       return_opts=True, options=self.options, final_zero=self.final_zero)
            self.options = {**self.options, **opts}
        else:
            ts = self.grid
            planned = planned_nfe_for_grid(self.info, ts, self.options)
            if num_inference_steps is not None and int(num_inference_steps) != planned:
                raise ValueError(f"this grid needs num_inference_steps={planned} (its network evaluations), got "
                                 f"{num_inference_steps}")
        self.ts = ts.to(torch.float32)  # the grid as scorelab's sample() runs it (in the model's dtype)
        k = timesteps_from_times(self.ts[:-1], self.process.N).to(torch.float32)
        self.timesteps = k.long() if torch.equal(k, torch.round(k)) else k
        if device is not None:
            self.timesteps = self.timesteps.to(device)
        self.num_inference_steps, self._outputs, self._x_T = len(k), [], None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The UNet's input is the state itself (variance-preserving chain): returns ``sample``."""
        return sample

    def _replay(self, stop: int | None) -> torch.Tensor:
        """x at evaluation ``stop`` of the scorelab sampler from x_T with the recorded outputs (module docstring);
        ``stop`` None: the sampler's final output (every evaluation recorded)."""
        net = _ReplayNet(self._outputs, stop)
        model = NetworkModel(net, self.process, self.parameterization, time_input="t")
        try:
            with torch.no_grad():
                x = self.info.fn(model, self._x_T, self.ts.to(self._x_T.device), **self.options)
        except _Stop as s:
            return s.x
        if net.calls != len(self._outputs):
            raise ValueError(f"{self.sampler} made {net.calls} evaluations on this grid, the pipeline "
                             f"{len(self._outputs)}")
        return x

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, eta: float = 0.0, **kw):
        """One pipeline step: record the network output at ``timestep`` (which must be the next of ``timesteps``)
        and return the sampler's state at the next grid time (``AdapterOutput`` or a 1-tuple)."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps before step")
        if eta:
            raise ValueError(f"ScorelabScheduler runs deterministic samplers: eta must be 0, got {eta}")
        j = len(self._outputs)
        if j >= len(self.timesteps) or float(torch.as_tensor(timestep)) != float(self.timesteps[j]):
            raise ValueError(f"step {j} got timestep {timestep}, expected the next of {self.timesteps.tolist()}")
        if j == 0:
            self._x_T = sample.detach().clone()
        self._outputs.append(model_output.detach())
        x = self._replay(j + 1 if j + 1 < len(self.timesteps) else None)
        return AdapterOutput(x) if return_dict else (x,)


def use_scheduler(pipeline, scheduler: ScorelabScheduler):
    """Put ``scheduler`` into a diffusers pipeline (``DDIMPipeline``'s constructor converts any scheduler to DDIM, so
    the adapter is assigned after construction); returns the pipeline."""
    pipeline.scheduler = scheduler
    return pipeline


__all__ = ["ADAPTER_SAMPLERS", "grid_to_timesteps", "grid_to_sigmas", "timesteps_to_grid", "AdapterOutput",
           "ScorelabScheduler", "use_scheduler"]
