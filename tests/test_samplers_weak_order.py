"""Weak order of the stochastic samplers (DESIGN.md: "SDE solvers their weak order"), read from the registry
(``SamplerInfo.weak_order``) and measured on an exact Gaussian target.

Target: x_0 ~ N(mu 1, s^2 I) in d = 16 dimensions, a one-component ``GaussianMixture`` whose diffused scores are
exact, on VP from t_max to t_end = 0.1 (the marginal there is N(alpha mu, alpha^2 s^2 + sigma^2) per coordinate).
x_T is drawn from the exact marginal at t_max (moment-matched: sample mean and variance exact), so the only errors
are the discretisation's and the Monte-Carlo noise of the injected noise.  Weak error e(n) = |mean error| +
|variance error| (first and second moments, pooled over the 16 independent coordinates: N d = 200 000 values).
Steps n0, 2 n0, 4 n0 with n0 = 16 / 2^weak_order (higher orders leave the Monte-Carlo floor sooner); the measured
order is log2 e(2 n0) / e(4 n0), and e(4 n0) must be at least 8 Monte-Carlo standard errors (the slope is bias,
not noise).  Measured (seeds 0-2): ddpm 1.14, euler_maruyama 1.14, ddim (eta = 1) 0.88, accel_stoch 2.1-2.3.
Options: noise on every step (``noise_last=True``; dropping the last noise changes the variance by O(h) at
t_end > 0) and ``eta = 1`` for DDIM.
"""
from __future__ import annotations

import math

import pytest
import torch

from scorelab import VP, GaussianMixture
from scorelab.core.schedules import make_grid
from scorelab.samplers import SAMPLERS

F64 = torch.float64
D, N, MU, S2, T_END = 16, 12_500, 0.8, 0.25, 0.1
TOL = 0.3  # the tolerance of the ODE order tests
OPTIONS = {"noise_last": True, "eta": 1.0}
WEAK = [name for name, info in SAMPLERS.items() if info.weak_order is not None]
_CACHE: dict = {}


def _marginal(p, t: float) -> tuple[float, float]:
    """(mean, variance) per coordinate of x_t: alpha mu and alpha^2 s^2 + sigma^2."""
    t = torch.tensor(t, dtype=F64)
    a, sg = float(p.alpha(t)), float(p.sigma(t))
    return a * MU, a * a * S2 + sg * sg


def weak_errors(name: str) -> tuple[tuple[int, ...], list[float], float]:
    """(steps, weak errors e(n), Monte-Carlo standard error of e at the last n) for sampler ``name``."""
    if name not in _CACHE:
        p = VP()
        model = GaussianMixture([1.0], [[MU] * D], S2).as_model(p)
        (m, v), (m_T, v_T) = _marginal(p, T_END), _marginal(p, p.t_max)
        z = torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=F64)
        x_T = m_T + math.sqrt(v_T) * (z - z.mean()) / z.std()
        n0 = int(16 // 2 ** SAMPLERS[name].weak_order)
        ns, errs = (n0, 2 * n0, 4 * n0), []
        opts = {k: val for k, val in OPTIONS.items() if k in SAMPLERS[name].options}
        for n in ns:
            x = SAMPLERS[name].fn(model, x_T, make_grid("uniform_t", p, n, t_min=T_END),
                                  generator=torch.Generator().manual_seed(1), **opts)
            errs.append(abs(float(x.mean()) - m) + abs(float(x.var()) - v))
        se = math.sqrt(float(x.var()) / x.numel()) + float(x.var()) * math.sqrt(2 / x.numel())
        _CACHE[name] = ns, errs, se
    return _CACHE[name]


def measured_order(name: str) -> float:
    ns, errs, se = weak_errors(name)
    assert errs[0] > errs[1] > errs[2] > 8 * se, (name, errs, se)  # the error is the bias, not Monte-Carlo noise
    return math.log2(errs[1] / errs[2])


def test_stochastic_samplers_declare_a_weak_order():
    assert {"ddpm", "euler_maruyama", "ddim", "accel_stoch"} <= set(WEAK)


@pytest.mark.parametrize("name", WEAK)
def test_weak_order_matches_the_registry(name):
    order = measured_order(name)
    assert abs(order - SAMPLERS[name].weak_order) < TOL, (name, order, weak_errors(name))


@pytest.mark.parametrize("name", WEAK)
def test_a_wrong_weak_order_would_be_rejected(name):
    """The measurement has power: the declared order +-1 lies outside the tolerance."""
    order, declared = measured_order(name), SAMPLERS[name].weak_order
    for wrong in (declared - 1, declared + 1):
        assert abs(order - wrong) >= TOL, (name, order, wrong)
