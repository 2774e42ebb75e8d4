"""The mathematics everything rests on: forward processes, the model currency, exact Gaussian-mixture oracles and
inference time grids.  Imports nothing above it."""
from .analytic import GaussianMixture, MixtureModel
from .denoisers import ClippedModel, CountingModel, DiffusionModel, FunctionModel, NetworkModel
from .processes import EDM, VE, VP, Discrete, ForwardProcess, SubVP, VPCosine, process_from_config
from .schedules import make_grid

__all__ = [
    "EDM", "VE", "VP", "Discrete", "ForwardProcess", "SubVP", "VPCosine", "process_from_config",
    "ClippedModel", "CountingModel", "DiffusionModel", "FunctionModel", "NetworkModel", "GaussianMixture",
    "MixtureModel", "make_grid",
]
