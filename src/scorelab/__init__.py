"""scorelab: score-based diffusion models in PyTorch.

See ``DESIGN.md`` at the project root of the development tree for the map: forward processes (``processes``), one
model currency (``denoisers``), exact Gaussian-mixture oracles (``analytic``), samplers over explicit time grids
(``samplers``), training (``losses``, ``training``), metrics, refinement and density samplers.
"""
from .analytic import GaussianMixture, MixtureModel
from .denoisers import ClippedModel, CountingModel, DiffusionModel, FunctionModel, NetworkModel
from .processes import EDM, VE, VP, Discrete, ForwardProcess, SubVP, VPCosine, process_from_config

__version__ = "0.1.0"

__all__ = [
    "EDM", "VE", "VP", "Discrete", "ForwardProcess", "SubVP", "VPCosine", "process_from_config",
    "ClippedModel", "CountingModel", "DiffusionModel", "FunctionModel", "NetworkModel", "GaussianMixture",
    "MixtureModel",
]
