"""scorelab: score-based diffusion models in PyTorch.

The map is ``DESIGN.md``; the folders name the workflow from the bottom up: ``core`` (forward processes, the model
currency, exact Gaussian-mixture oracles, time grids), ``nets``, ``data``, ``samplers`` (every sampler, one loop, one
NFE-budget entry point ``sample``), ``densities`` (samplers for unnormalized densities), ``evaluation``, ``io``
(checkpoints, model loading), ``training``, ``guidance``, ``finetune``, ``cli``.
"""
from ._version import __version__
from .core.analytic import GaussianMixture, MixtureModel
from .core.denoisers import ClippedModel, CountingModel, DiffusionModel, FunctionModel, NetworkModel
from .core.processes import EDM, VE, VP, Discrete, ForwardProcess, SubVP, VPCosine, process_from_config
from .samplers import SAMPLERS
from .samplers.budget import sample

__all__ = [
    "__version__", "EDM", "VE", "VP", "Discrete", "ForwardProcess", "SubVP", "VPCosine", "process_from_config",
    "ClippedModel", "CountingModel", "DiffusionModel", "FunctionModel", "NetworkModel", "GaussianMixture",
    "MixtureModel", "SAMPLERS", "sample",
]
