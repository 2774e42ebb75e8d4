"""Samplers: plain functions over explicit time grids (DESIGN.md, idea 3). ``SAMPLERS`` lists every one."""
from . import accelerated, multistep, ode, pc, restart, sde  # noqa: F401  (modules register their samplers)
from .base import SAMPLERS, SamplerInfo, Trajectory, check_grid, transition_log_prob

__all__ = ["SAMPLERS", "SamplerInfo", "Trajectory", "check_grid", "transition_log_prob"]
