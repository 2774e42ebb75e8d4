r"""Data sets by name or path: the registry ``DATASETS`` and ``load_dataset``.

==================  ===========================================================================================
``name_or_path``    a registry name (``describe_datasets()`` lists them) or a path (image folder, image file,
                    ``.npy``, ``.npz``, ``.csv``)
``n``               number of rows (toy sets: points to draw, default ``DEFAULT_TOY_N``; files: random subset)
``seed``            int or ``torch.Generator``; the same seed gives the same data
returns             ``(x, labels)``: float32 ``[N, ...]`` and int64 ``[N]`` labels or ``None``
==================  ===========================================================================================

Toy sets are in ``toy2d`` (swiss roll follows the SFT-PG protocol of Fan & Lee, 2023); image and tabular loaders
in ``images``.  Mixture toy sets return their component index as labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core.analytic import GaussianMixture
from . import images, streaming, toy2d
from .images import load_array, load_csv, load_digits, load_image_folder, load_path
from .toy2d import checkerboard, eight_gaussians, pinwheel, rings, swiss_roll, twenty_five_gaussians, two_moons

DEFAULT_TOY_N = 10_000

Loader = Callable[..., "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: ``loader(n, seed, **params) -> (x, labels)``, a one-line description and the shape of one
    example."""

    loader: Loader
    description: str
    example_shape: tuple[int, ...]


def _toy(fn: Callable[..., torch.Tensor]) -> Loader:
    def loader(n=None, seed=0, **params):
        return fn(DEFAULT_TOY_N if n is None else n, seed, **params), None
    loader.__doc__ = fn.__doc__
    return loader


def _mixture_loader(build: Callable[..., GaussianMixture] | None) -> Loader:
    def loader(n=None, seed=0, mixture: GaussianMixture | None = None, **params):
        mix = build(**params) if build is not None else mixture
        if not isinstance(mix, GaussianMixture):
            raise ValueError("the 'mixture' data set needs mixture=<scorelab.core.analytic.GaussianMixture>")
        x, k = mix.sample(DEFAULT_TOY_N if n is None else n, generator=toy2d.as_generator(seed), dtype=torch.float32,
                          return_labels=True)
        return x, k
    return loader


DATASETS: dict[str, DatasetInfo] = {
    "swiss_roll": DatasetInfo(_toy(swiss_roll), "2-D swiss roll, SFT-PG protocol: make_swiss_roll(noise=0.05)"
                              "[:, [0, 2]] / 20", (2,)),
    "moons": DatasetInfo(_toy(two_moons), "2-D two moons: make_moons(noise=0.05) / 2", (2,)),
    "8gaussians": DatasetInfo(_mixture_loader(toy2d.eight_gaussians_mixture),
                              "2-D mixture of 8 Gaussians on a circle (radius 2, std 0.1); labels = component", (2,)),
    "25gaussians": DatasetInfo(_mixture_loader(toy2d.twenty_five_gaussians_mixture),
                               "2-D mixture of 25 Gaussians on a 5x5 grid (spacing 1, std 0.05); labels = component",
                               (2,)),
    "checkerboard": DatasetInfo(_toy(checkerboard), "2-D uniform on 8 black cells of a 4x4 board in [-4, 4]^2", (2,)),
    "rings": DatasetInfo(_toy(rings), "2-D four concentric noisy circles, radii 0.75..3", (2,)),
    "pinwheel": DatasetInfo(_toy(pinwheel), "2-D pinwheel with 5 spiral arms", (2,)),
    "mixture": DatasetInfo(_mixture_loader(None), "any scorelab.core.analytic.GaussianMixture (pass mixture=...); "
                           "labels = component", ()),
    "digits": DatasetInfo(lambda n=None, seed=0: load_digits(n, seed),
                          "scikit-learn digits: 1797 grey 8x8 images in [-1, 1] with labels 0-9", (1, 8, 8)),
    "photos32": DatasetInfo(streaming.load_photos32, "6716 RGB 32x32 patches of scikit-learn's two sample photos "
                            "(no download) in [-1, 1]; labels = photo (0 china, 1 flower)", (3, 32, 32)),
}


def describe_datasets() -> str:
    """One line per registered data set (for the CLI), plus the accepted file kinds."""
    width = max(len(k) for k in DATASETS)
    lines = [f"{name:<{width}}  {info.description}" for name, info in DATASETS.items()]
    lines.append(f"{'<path>':<{width}}  image folder (sub-folders = classes), image file, .npy, .npz or .csv")
    return "\n".join(lines)


def load_dataset(name_or_path: str | Path, n: int | None = None, seed: int | torch.Generator = 0,
                 **params) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load a registered data set or a file/folder -> ``(x [N, ...] float32, labels [N] int64 or None)``.

    ``params`` go to the loader (e.g. ``noise=0.1`` for ``swiss_roll``, ``size=32, mode="RGB"`` for a folder).
    """
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        try:
            return DATASETS[name_or_path].loader(n=n, seed=seed, **params)
        except TypeError as e:
            if "unexpected keyword" not in str(e):
                raise
            raise ValueError(f"data set {name_or_path!r} does not take the parameters {sorted(params)} ({e})") from e
    p = Path(name_or_path)
    if p.exists():
        return load_path(p, n=n, seed=seed, **params)
    raise ValueError(f"unknown data set {str(name_or_path)!r} (and no such file or folder); known names: "
                     f"{', '.join(DATASETS)}; or pass a path to an image folder, .npy, .npz or .csv file")


__all__ = [
    "DATASETS", "DEFAULT_TOY_N", "DatasetInfo", "describe_datasets", "load_dataset", "images", "toy2d", "streaming",
    "load_digits", "load_image_folder", "load_array", "load_csv", "load_path", "swiss_roll", "two_moons",
    "eight_gaussians", "twenty_five_gaussians", "checkerboard", "rings", "pinwheel",
]
