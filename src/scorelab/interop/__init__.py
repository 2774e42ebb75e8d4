"""Bring your own model: import diffusers (``from_diffusers``), k-diffusion (``from_k_diffusion``) and EDM
(``from_edm``) models into the model currency, and hand scorelab's grids and samplers back to diffusers
(``grid_to_timesteps``, ``grid_to_sigmas``, ``ScorelabScheduler``).  diffusers is the optional extra
``scorelab[diffusers]``; it is imported only when a diffusers function runs."""
from .diffusers import from_diffusers, is_diffusers_folder, to_diffusers
from .export import ScorelabScheduler, grid_to_sigmas, grid_to_timesteps, timesteps_to_grid, use_scheduler
from .kdiffusion import from_edm, from_k_diffusion

__all__ = ["from_diffusers", "is_diffusers_folder", "to_diffusers", "from_k_diffusion", "from_edm",
           "ScorelabScheduler", "grid_to_timesteps", "grid_to_sigmas", "timesteps_to_grid", "use_scheduler"]
