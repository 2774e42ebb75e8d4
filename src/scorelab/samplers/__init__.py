"""Samplers: plain functions over explicit time grids (DESIGN.md, idea 3). ``SAMPLERS`` lists every one."""
from . import base  # noqa: F401  (first: the registry)
from . import accelerated, multistep, ode, pc, restart, sde  # noqa: F401  (modules register their samplers)
from .. import analytic_dpm  # noqa: F401,E402  (registers "analytic_dpm")
from .base import SAMPLERS, SamplerInfo, Trajectory, check_grid, transition_log_prob

__all__ = ["SAMPLERS", "SamplerInfo", "Trajectory", "check_grid", "transition_log_prob"]
