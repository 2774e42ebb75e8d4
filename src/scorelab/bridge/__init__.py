r"""Schrödinger bridges between two distributions: DSB (iterative proportional fitting by mean matching) and DSBM
(iterative Markovian fitting by bridge matching), on linear Gaussian references (Brownian, VP/OU), with closed forms
for Gaussians and entropic OT on samples as checks.

==================  =============================================================================================
``reference``       ``LinearReference`` chains: ``brownian(sigma2, N)``, ``ou(sigma2, N)``, their bridges
``closed_form``     static + dynamic SB between Gaussians, POT Sinkhorn coupling, exact moments of affine chains
``nets``            step-conditioned residual nets F(k, x), B(k, x): ``StepAffine``, ``StepMLP``
``chains``          forward/backward Gaussian chains, the regression fit (cache, EMA), ``BridgeResult``
``ipf``             ``dsb``: De Bortoli et al. (2021), Alg. 1
``dsbm``            ``dsbm``: Shi et al. (2023), Alg. 1
``runner``          ``BridgeConfig`` + ``run``: the ``scorelab bridge`` command's one call
==================  =============================================================================================
"""
from __future__ import annotations

from .chains import BridgeProblem, BridgeResult, FitConfig, simulate_backward, simulate_forward
from .closed_form import GaussianBridge, affine_chain_moments, gaussian_bridge, sb_cross_covariance, sinkhorn_coupling
from .dsbm import dsbm
from .ipf import dsb
from .nets import StepAffine, StepMLP, make_net
from .reference import LinearReference, brownian, make_reference, ou

__all__ = [
    "BridgeProblem", "BridgeResult", "FitConfig", "simulate_backward", "simulate_forward", "GaussianBridge",
    "affine_chain_moments", "gaussian_bridge", "sb_cross_covariance", "sinkhorn_coupling", "dsbm", "dsb",
    "StepAffine", "StepMLP", "make_net", "LinearReference", "brownian", "make_reference", "ou",
]
