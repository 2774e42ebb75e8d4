"""Plots people would rather look at than numbers: 2-D scatter panels, image grids, quality-vs-NFE curves.

All functions write a PNG (Agg backend, no display needed) and return the path.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def scatter_panels(panels: Mapping[str, torch.Tensor], path: str, *, reference: torch.Tensor | None = None,
                   lim: float | None = None, max_points: int = 5000, ncols: int = 4, title: str | None = None,
                   axes_labels: bool = False, reference_label: str = "reference") -> str:
    """One scatter panel per entry (first two coordinates), optional grey reference cloud behind each;
    ``axes_labels`` keeps the ticks, names the axes x1, x2 and adds a legend (samples vs ``reference_label``).
    Rows with a NaN/inf entry are left out of the picture."""
    n = len(panels)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False,
                             layout="constrained")
    ref = _np(reference)[:max_points] if reference is not None else None
    if lim is None:  # frame the reference when there is one, so a diverged panel cannot shrink the others
        clouds = [ref[:, :2]] if ref is not None else [_np(v)[:max_points, :2] for v in panels.values()]
        finite = np.concatenate(clouds)
        finite = finite[np.isfinite(finite).all(axis=1)]
        lim = float(np.quantile(np.abs(finite), 0.995)) * 1.3 if finite.size else 1.0
    for ax, (name, x) in zip(axes.flat, panels.items(), strict=False):
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.8", rasterized=True, label=reference_label)
        xs = _np(x)[:max_points]
        xs = xs[np.isfinite(xs[:, :2]).all(axis=1)]
        ax.scatter(xs[:, 0], xs[:, 1], s=1, c="tab:blue", rasterized=True, label="samples")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        if axes_labels:
            ax.set_xlabel("x1")
            ax.set_ylabel("x2")
            ax.legend(loc="upper right", fontsize=7, markerscale=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def grid_shape(b: int, nrow: int | None = None) -> tuple[int, int]:
    """(rows, columns) of a grid of ``b`` images: ``nrow`` rows when given, else the most nearly square layout
    (ceil(sqrt(b)) columns), so 16 images make 4 x 4 and 10 make 3 x 4."""
    if nrow is None:
        ncol = max(1, math.ceil(math.sqrt(b)))
        return max(1, math.ceil(b / ncol)), ncol
    return nrow, max(1, math.ceil(b / nrow))


def image_grid(x: torch.Tensor, path: str, nrow: int | None = None, title: str | None = None) -> str:
    """Grid of images ``[B, C, H, W]`` in [-1, 1], filled row by row (``grid_shape``: nearly square unless ``nrow``
    is given); the figure has the canvas' aspect ratio."""
    x = _np(x)
    b, c, h, w = x.shape
    nrow, ncol = grid_shape(b, nrow)
    canvas = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c))
    for k in range(b):
        i, j = k // ncol, k % ncol
        canvas[1 + i * (h + 1): 1 + i * (h + 1) + h, 1 + j * (w + 1): 1 + j * (w + 1) + w] = x[k].transpose(1, 2, 0)
    canvas = np.clip(np.nan_to_num((canvas + 1) / 2), 0, 1)
    scale = 6.0 / max(canvas.shape[:2])
    fig, ax = plt.subplots(figsize=(canvas.shape[1] * scale + 0.2, canvas.shape[0] * scale + (0.5 if title else 0.2)))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def quality_vs_nfe(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, *,
                   ylabel: str = "sliced W2", floor: float | None = None, logy: bool = True,
                   title: str | None = None) -> str:
    """One line per method: ``curves[name] = (nfes, values)``; an optional horizontal noise floor."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (nfe, val) in curves.items():
        ax.plot(list(nfe), list(val), marker="o", ms=3, label=name)
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label="two-sample floor")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def line_plot(xs: Sequence[float], ys: Mapping[str, Sequence[float]], path: str, *, xlabel: str = "",
              ylabel: str = "", logy: bool = False, title: str | None = None) -> str:
    """Generic curves sharing an x axis (training losses, errors across t, ...)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, y in ys.items():
        ax.plot(list(xs), list(y), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def coupling_plot(x0: torch.Tensor, x1: torch.Tensor, path: str, *, n_lines: int = 300, max_points: int = 3000,
                  title: str | None = None) -> str:
    """A 2-D coupling: source points ``x0 [n, 2]`` (blue), their partners ``x1 [n, 2]`` (orange) and grey segments
    joining the first ``n_lines`` pairs."""
    a, b = _np(x0)[:max_points], _np(x1)[:max_points]
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"coupling_plot needs pairs of equal shape [n, >=2], got {a.shape} and {b.shape}")
    fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    k = min(n_lines, len(a))
    ax.plot(np.stack([a[:k, 0], b[:k, 0]]), np.stack([a[:k, 1], b[:k, 1]]), c="0.6", lw=0.4, alpha=0.6)
    ax.scatter(a[:, 0], a[:, 1], s=1, c="tab:blue", label="x_0", rasterized=True)
    ax.scatter(b[:, 0], b[:, 1], s=1, c="tab:orange", label="x_N", rasterized=True)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=6, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
