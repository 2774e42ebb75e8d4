r"""Two-dimensional toy data sets: swiss roll, two moons, Gaussian grids/rings, checkerboard, rings, pinwheel.

Every set is a function ``fn(n, seed=0, **params) -> float32 tensor [n, 2]``; ``seed`` is an ``int`` or a
``torch.Generator`` and the same seed gives the same points.

===============  ==========================================================================================
``n``            number of points
``seed``         int seed or ``torch.Generator`` (ints seed scikit-learn / a fresh torch generator)
``noise``        standard deviation of the additive Gaussian noise (sklearn sets, rings)
``radius, std``  ring radius and per-component standard deviation of the 8-Gaussians mixture
===============  ==========================================================================================

The swiss roll follows the SFT-PG protocol (Fan & Lee, ICML 2023, Table 1; sources/000):
``sklearn.datasets.make_swiss_roll(n, noise=0.05)``, keep columns 0 and 2, divide by 20.  Two moons:
``make_moons(n, noise=0.05) / 2``.  Checkerboard, rings and pinwheel follow the FFJORD toy sets (Grathwohl et al.,
2019).  The Gaussian sets are ``scorelab.core.analytic.GaussianMixture`` objects (``*_mixture`` builders), so their
exact diffused scores and ``metrics.mode_stats`` apply to them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.datasets import make_moons, make_swiss_roll

from ..core.analytic import GaussianMixture, grid_mixture, ring_mixture


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer number of points, got {n!r}")
    return int(n)


def as_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A ``torch.Generator`` from an int seed (or the generator itself; ``None`` means seed 0)."""
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(int(seed))


def as_int_seed(seed: int | torch.Generator | None) -> int:
    """An int seed (for scikit-learn / numpy): the int itself, or one draw from the generator."""
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**31 - 1, (1,), generator=seed).item())
    as_generator(seed)  # validates the type
    return 0 if seed is None else int(seed)


def swiss_roll(n: int, seed: int | torch.Generator = 0, noise: float = 0.05, scale: float = 20.0) -> torch.Tensor:
    """Swiss roll, SFT-PG protocol: ``make_swiss_roll(n, noise)[0][:, [0, 2]] / scale`` -> ``[n, 2]`` (|x| <~ 0.7)."""
    x, _ = make_swiss_roll(_check_n(n), noise=noise, random_state=as_int_seed(seed))
    return torch.from_numpy(x[:, [0, 2]] / scale).float()


def two_moons(n: int, seed: int | torch.Generator = 0, noise: float = 0.05, scale: float = 2.0) -> torch.Tensor:
    """Two interleaving half circles: ``make_moons(n, noise=noise)[0] / scale`` -> ``[n, 2]`` in about
    [-0.5, 1] x [-0.25, 0.5]."""
    x, _ = make_moons(_check_n(n), noise=noise, random_state=as_int_seed(seed))
    return torch.from_numpy(x / scale).float()


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """8 equal-weight isotropic Gaussians (std ``std``) at angles 2 pi k / 8 on a circle of radius ``radius``."""
    return ring_mixture(8, radius=radius, std=std)


def twenty_five_gaussians_mixture(spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """5 x 5 grid of equal-weight Gaussians (std ``std``) at spacing ``spacing``, centred at 0 (means in [-2, 2]^2)."""
    return grid_mixture(5, spacing=spacing, var=std**2)


def gaussian_mixture(n: int, seed: int | torch.Generator = 0, mixture: GaussianMixture | None = None) -> torch.Tensor:
    """``n`` samples of any ``GaussianMixture`` (``mixture.sample``) as float32 ``[n, *event_shape]``."""
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a scorelab.core.analytic.GaussianMixture, got {type(mixture).__name__}")
    return mixture.sample(_check_n(n), generator=as_generator(seed), dtype=torch.float32)


def eight_gaussians(n: int, seed: int | torch.Generator = 0, radius: float = 2.0, std: float = 0.1) -> torch.Tensor:
    """8 Gaussians on a circle (see ``eight_gaussians_mixture``) -> ``[n, 2]``."""
    return gaussian_mixture(n, seed, eight_gaussians_mixture(radius, std))


def twenty_five_gaussians(n: int, seed: int | torch.Generator = 0, spacing: float = 1.0,
                          std: float = 0.05) -> torch.Tensor:
    """25 Gaussians on a 5 x 5 grid (see ``twenty_five_gaussians_mixture``) -> ``[n, 2]``."""
    return gaussian_mixture(n, seed, twenty_five_gaussians_mixture(spacing, std))


def checkerboard(n: int, seed: int | torch.Generator = 0, squares: int = 4, half_width: float = 4.0) -> torch.Tensor:
    """Uniform on the "black" cells (i + j even) of a ``squares`` x ``squares`` board covering
    [-half_width, half_width]^2 -> ``[n, 2]``.  Defaults give FFJORD's 8 cells of side 2 in [-4, 4]^2."""
    if squares < 2:
        raise ValueError(f"squares must be >= 2, got {squares}")
    g = as_generator(seed)
    ij = torch.cartesian_prod(torch.arange(squares), torch.arange(squares))
    black = ij[(ij.sum(1) % 2) == 0].to(torch.float64)  # [M, 2] cell indices
    cell = black[torch.randint(0, black.shape[0], (_check_n(n),), generator=g)]
    side = 2 * half_width / squares
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return ((cell + u) * side - half_width).float()


def rings(n: int, seed: int | torch.Generator = 0, n_rings: int = 4, max_radius: float = 3.0,
          noise: float = 0.08) -> torch.Tensor:
    """Concentric circles of radii ``max_radius * k / n_rings`` (k = 1..n_rings), each point on a uniformly chosen
    ring at a uniform angle, plus N(0, noise^2) noise -> ``[n, 2]`` (FFJORD's "rings" with the defaults)."""
    if n_rings < 1:
        raise ValueError(f"n_rings must be >= 1, got {n_rings}")
    g = as_generator(seed)
    k = torch.randint(1, n_rings + 1, (_check_n(n),), generator=g, dtype=torch.int64).to(torch.float64)
    theta = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    r = max_radius * k / n_rings
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return (x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def pinwheel(n: int, seed: int | torch.Generator = 0, n_arms: int = 5, radial_std: float = 0.3,
             tangential_std: float = 0.1, rate: float = 0.25, scale: float = 2.0) -> torch.Tensor:
    """FFJORD pinwheel: ``n_arms`` spiral arms.  A point f = (1 + radial_std z1, tangential_std z2) of a uniformly
    chosen arm a is rotated by angle 2 pi a / n_arms + rate exp(f_1) and multiplied by ``scale`` -> ``[n, 2]``."""
    if n_arms < 1:
        raise ValueError(f"n_arms must be >= 1, got {n_arms}")
    g = as_generator(seed)
    arm = torch.randint(0, n_arms, (_check_n(n),), generator=g)
    f = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([radial_std, tangential_std],
                                                                            dtype=torch.float64)
    f[:, 0] += 1.0
    ang = 2 * math.pi * arm.to(torch.float64) / n_arms + rate * torch.exp(f[:, 0])
    c, s = torch.cos(ang), torch.sin(ang)
    x = torch.stack([f[:, 0] * c - f[:, 1] * s, f[:, 0] * s + f[:, 1] * c], dim=1)  # f @ R(ang)^T
    return (scale * x).float()


__all__ = [
    "as_generator", "as_int_seed", "swiss_roll", "two_moons", "eight_gaussians", "twenty_five_gaussians",
    "eight_gaussians_mixture", "twenty_five_gaussians_mixture", "gaussian_mixture", "checkerboard", "rings",
    "pinwheel",
]
