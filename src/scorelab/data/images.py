r"""Image and tabular data: scikit-learn's digits, a user's image folder, ``.npy``/``.npz`` arrays, ``.csv`` tables.

All loaders return ``(x, labels)`` with ``x`` a float32 tensor and ``labels`` an int64 ``[N]`` tensor or ``None``.

==============  =================================================================================================
``x`` images    ``[N, C, H, W]`` in [-1, 1]  (pixel p in {0..255} -> p / 127.5 - 1; digits value v in {0..16}
                -> v / 8 - 1)
``x`` vectors   ``[N, d]`` as stored (``.csv`` numeric columns, ``.npy``/``.npz`` float arrays)
``labels``      class index per row: digit 0-9, sub-folder index (sorted names), a CSV/npz label column
==============  =================================================================================================

The digits set is ``sklearn.datasets.load_digits`` (1797 8x8 grey images, shipped with scikit-learn, no download).
Bad input raises ``ValueError`` naming the file and the problem (unreadable image, wrong dtype, ragged sizes, empty
folder, non-numeric CSV cell with its row and column, ...).
"""
from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.model_selection import train_test_split

from .toy2d import as_generator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def subsample(x: torch.Tensor, labels: torch.Tensor | None, n: int | None,
              seed: int | torch.Generator = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` rows drawn without replacement (same rows of ``labels``); ``n=None`` keeps everything."""
    if n is None:
        return x, labels
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= x.shape[0]:
        raise ValueError(f"n must be an integer in [1, {x.shape[0]}] (the data set size), got {n!r}")
    idx = torch.randperm(x.shape[0], generator=as_generator(seed))[: int(n)]
    return x[idx], (None if labels is None else labels[idx])


# -- scikit-learn digits ----------------------------------------------------------------------------------------
def load_digits(n: int | None = None, seed: int | torch.Generator = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits as ``x [N, 1, 8, 8]`` float32 in [-1, 1] and ``labels [N]`` (N = 1797, or ``n``
    random rows)."""
    d = _sk_load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    return subsample(x, torch.from_numpy(d.target.astype(np.int64)), n, seed)


def digits_split(test_fraction: float = 0.2, seed: int = 0):
    """Stratified train/held-out split of the digits: ``(x_train, y_train, x_test, y_test)`` (shapes as above)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = load_digits()
    tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y.numpy())
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    return x[tr], y[tr], x[te], y[te]


# -- image folders ----------------------------------------------------------------------------------------------
def _size_hw(size) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    return int(hw[0]), int(hw[1])


def read_image(path: str | Path, size: int | tuple[int, int] | None = None, mode: str = "L") -> torch.Tensor:
    """One PNG/JPEG/BMP image -> float32 ``[C, H, W]`` in [-1, 1] (``mode`` "L": C = 1, "RGB": C = 3), resized
    (bicubic) to ``size`` = H or (H, W) when given."""
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' (grayscale) or 'RGB', got {mode!r}")
    hw = _size_hw(size)
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if hw is not None and img.size != (hw[1], hw[0]):
                img = img.resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
            a = np.asarray(img, dtype=np.float32)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a / 127.5 - 1.0)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(path: str | Path, size: int | tuple[int, int] | None = None, mode: str = "L",
                      n: int | None = None, seed: int | torch.Generator = 0):
    """Images of a folder -> ``(x [N, C, H, W] in [-1, 1], labels)``.

    Images directly in ``path`` give ``labels=None``; a folder of sub-folders (one per class, ImageFolder style)
    gives ``labels`` = index of the sub-folder in sorted order.  Without ``size`` all images must share one size.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files, labels = _image_files(folder), None
    if not files:
        classes = sorted(p for p in folder.iterdir() if p.is_dir() and _image_files(p))
        per_class = [_image_files(c) for c in classes]
        files = [f for fs in per_class for f in fs]
        labels = torch.cat([torch.full((len(fs),), k, dtype=torch.int64) for k, fs in enumerate(per_class)]) \
            if files else None
    if not files:
        raise ValueError(f"{folder}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images in it or its sub-folders)")
    images = [read_image(f, size, mode) for f in files]
    for f, im in zip(files, images, strict=True):
        if im.shape != images[0].shape:
            raise ValueError(f"{f}: ragged sizes, image is {tuple(im.shape[1:])} (H, W) but {files[0].name} is "
                             f"{tuple(images[0].shape[1:])}; pass size=... to resize all images")
    return subsample(torch.stack(images), labels, n, seed)


# -- arrays -----------------------------------------------------------------------------------------------------
def _check_array(a: np.ndarray, path: Path, what: str) -> np.ndarray:
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{path}: wrong dtype {a.dtype} for {what}; expected a real numeric (int or float) array")
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"{path}: {what} must have at least one row, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: {what} contains NaN or inf")
    return a


def _npz_pick(z, path: Path, key: str | None, candidates: tuple[str, ...], what: str, required: bool):
    if key is not None:
        if key not in z.files:
            raise ValueError(f"{path}: no array named {key!r} for {what}; the file holds {z.files}")
        return z[key]
    for k in candidates:
        if k in z.files:
            return z[k]
    if required and len(z.files) == 1:
        return z[z.files[0]]
    if required:
        raise ValueError(f"{path}: cannot tell which array holds the data among {z.files}; pass key=...")
    return None


def load_array(path: str | Path, key: str | None = None, label_key: str | None = None, scale_uint8: bool = True):
    """A ``.npy`` / ``.npz`` file -> ``(x, labels)``; ``x`` float32 with the stored shape.

    ``.npz``: data from ``key`` (default "x", "arr_0", or the only array), labels from ``label_key`` (default "y"
    or "labels" when present).  uint8 data are taken as 8-bit images and mapped to [-1, 1] when ``scale_uint8``.
    Pickled (object) arrays are refused, never loaded.
    """
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable array file ({type(e).__name__}: {e})") from e
    if isinstance(z, np.lib.npyio.NpzFile):
        with z:
            try:
                x = _npz_pick(z, path, key, ("x", "arr_0"), "the data", True)
                y = _npz_pick(z, path, label_key, ("y", "labels"), "the labels", False)
            except ValueError as e:
                raise ValueError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from e
    else:
        x, y = z, None
    x = _check_array(np.asarray(x), path, "the data")
    xt = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0 if (scale_uint8 and x.dtype == np.uint8)
                          else x.astype(np.float32))
    return xt, (None if y is None else _labels_from_array(np.asarray(y), path, x.shape[0]))


def _labels_from_array(y: np.ndarray, path: Path, n: int) -> torch.Tensor:
    if y.ndim != 1 or y.shape[0] != n or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: labels must be a 1-D integer array of length {n}, got {y.dtype} {y.shape}")
    return torch.from_numpy(y.astype(np.int64))


# -- CSV tables -------------------------------------------------------------------------------------------------
def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def _read_rows(path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    try:
        with open(path, newline="") as fh:
            rows = [(i + 1, [c.strip() for c in r]) for i, r in enumerate(csv.reader(fh, delimiter=delimiter))]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: unreadable CSV file ({type(e).__name__}: {e})") from e
    return [(i, r) for i, r in rows if any(r)]  # skip blank lines, keep file line numbers


def load_csv(path: str | Path, delimiter: str = ",", header: bool | None = None,
             label_column: str | int | None = None):
    """A ``.csv`` table of numbers -> ``(x [N, d] float32, labels)``.

    ``header=None`` detects a header row (a first row with no numeric cell).  ``label_column`` (name or 0-based
    index) is taken out of ``x`` as labels (integers as they are; other values -> index in their sorted order).
    Every other cell must be a finite number; otherwise the error names the row (file line) and column.
    """
    path = Path(path)
    rows = _read_rows(path, delimiter)
    if not rows:
        raise ValueError(f"{path}: empty CSV file")
    if header is None:
        header = not any(_is_number(c) for c in rows[0][1])
    names = rows[0][1] if header else [str(j) for j in range(len(rows[0][1]))]
    body = rows[1:] if header else rows
    if not body:
        raise ValueError(f"{path}: CSV file has a header but no data rows")
    for line, r in body:
        if len(r) != len(names):
            raise ValueError(f"{path}: row {line} has {len(r)} columns, expected {len(names)} (ragged table)")
    lab = _label_index(label_column, names, path)
    cols = [j for j in range(len(names)) if j != lab]
    if not cols:
        raise ValueError(f"{path}: no data columns left besides the label column")
    x = np.empty((len(body), len(cols)), dtype=np.float64)
    for i, (line, r) in enumerate(body):
        for jj, j in enumerate(cols):
            if not _is_number(r[j]):
                raise ValueError(f"{path}: non-numeric cell {r[j]!r} at row {line}, column {j + 1} ({names[j]!r}); "
                                 "every data cell must be a finite number")
            x[i, jj] = float(r[j])
    labels = None if lab is None else _labels_from_strings([r[lab] for _, r in body])
    return torch.from_numpy(x).float(), labels


def _label_index(label_column, names: list[str], path: Path) -> int | None:
    if label_column is None:
        return None
    if isinstance(label_column, int) and not isinstance(label_column, bool):
        if not 0 <= label_column < len(names):
            raise ValueError(f"{path}: label_column {label_column} out of range for {len(names)} columns")
        return label_column
    if label_column not in names:
        raise ValueError(f"{path}: no column named {label_column!r}; columns are {names}")
    return names.index(label_column)


def _labels_from_strings(values: list[str]) -> torch.Tensor:
    try:
        ints = [int(v) for v in values]
    except ValueError:
        _, ints = np.unique(np.asarray(values), return_inverse=True)
    return torch.as_tensor(np.asarray(ints), dtype=torch.int64)


def load_path(path: str | Path, n: int | None = None, seed: int | torch.Generator = 0, **params):
    """Load a folder of images, an image file, ``.npy``/``.npz`` or ``.csv`` by its kind -> ``(x, labels)``;
    ``params`` go to the specific loader; ``n`` random rows (without replacement) when given."""
    p = Path(path)
    if p.is_dir():
        return load_image_folder(p, n=n, seed=seed, **params)
    if not p.is_file():
        raise ValueError(f"{p}: no such file or folder")
    suffix = p.suffix.lower()
    if suffix in (".npy", ".npz"):
        x, y = load_array(p, **params)
    elif suffix in (".csv", ".tsv"):
        x, y = load_csv(p, **({"delimiter": "\t"} if suffix == ".tsv" else {}) | params)
    elif suffix in IMAGE_SUFFIXES:
        x, y = read_image(p, **params).unsqueeze(0), None
    else:
        raise ValueError(f"{p}: unsupported file type {suffix!r}; expected a folder of images, "
                         f"{'/'.join(IMAGE_SUFFIXES)}, .npy, .npz or .csv")
    return subsample(x, y, n, seed)


__all__ = ["load_digits", "digits_split", "read_image", "load_image_folder", "load_array", "load_csv", "load_path",
           "subsample", "IMAGE_SUFFIXES"]
