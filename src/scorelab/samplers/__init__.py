"""Samplers: plain functions over explicit time grids (DESIGN.md, idea 3). ``SAMPLERS`` lists every one.

``sample`` (``budget.py``) is the one entry point that turns a model, a sampler name and an NFE budget into samples.
"""
# isort: skip_file
# Import order is the registry's listing order: base (the registry) first, then the modules that register samplers.
from . import base  # noqa: F401
from . import sde, accelerated, ode, multistep, pc, restart, unipc  # noqa: F401
from . import analytic_dpm  # noqa: F401,E402  (registers "analytic_dpm")
from .base import SAMPLERS, SamplerInfo, Trajectory, check_grid, transition_log_prob
from .budget import grid_for_nfe, run_sampler, sample

__all__ = ["SAMPLERS", "SamplerInfo", "Trajectory", "check_grid", "transition_log_prob", "grid_for_nfe",
           "run_sampler", "sample"]
