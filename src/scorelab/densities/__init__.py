"""Diffusion samplers for unnormalized densities: DIS, PIS, DDS with KL and log-variance losses, and log Z.

Berner, Richter & Ullrich 2022 (source 004); Zhang & Chen 2022 (PIS); Vargas, Grathwohl & Doucet 2023 (DDS);
Richter & Berner 2024 (log-variance loss).  Targets at the benchmarks' scale: ManyWell-32, Funnel-10 (targets.py),
LGCP and Bayesian logistic regression (posteriors.py, reference log Z by SMC in smc.py); the stochastic adjoint
(adjoint.py, torchsde; imported on first use).  Entry point for the CLI: ``run(DensityConfig(...), out_dir)``.
"""
from .control import ControlNet, FunctionControl, ZeroControl
from .controlled import DiffusionSampler, PathSample, kl_loss, log_variance_loss
from .dds import DDS
from .dis import DIS
from .estimators import elbo, ess, evaluate, log_Z_is, moment_errors, w2_exact, w2_sliced
from .pis import PIS
from .posteriors import LGCP, LogisticRegression
from .runner import METHODS, DensityConfig, build, run
from .smc import ais_log_Z, bdmc_log_Z, laplace_is_log_Z, reference_log_Z, refine_ladder, smc_log_Z
from .targets import (
    TARGETS,
    DoubleWell,
    FunctionTarget,
    Funnel,
    ManyWell,
    MixtureTarget,
    SeparableTarget,
    Target,
    gaussian,
    get_target,
    gmm9,
    gmm40,
    load_target,
)
from .train import TrainHistory, pretrain_mc_score, train

__all__ = [
    "ControlNet", "FunctionControl", "ZeroControl", "DiffusionSampler", "PathSample", "kl_loss", "log_variance_loss",
    "DDS", "DIS", "PIS", "elbo", "ess", "evaluate", "log_Z_is", "moment_errors", "w2_exact", "w2_sliced",
    "METHODS", "DensityConfig", "build", "run", "TARGETS", "DoubleWell", "FunctionTarget", "Funnel", "ManyWell",
    "MixtureTarget", "SeparableTarget", "Target", "gaussian", "get_target", "gmm9", "gmm40", "load_target",
    "TrainHistory", "pretrain_mc_score", "train", "LGCP", "LogisticRegression",
    "laplace_is_log_Z", "reference_log_Z", "smc_log_Z", "ais_log_Z", "bdmc_log_Z", "refine_ladder",
]
