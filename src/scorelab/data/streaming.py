r"""Streamed image data for training at scale: ``torch.utils.data`` datasets that hand out uint8 images, decoded
to [-1, 1] (and randomly flipped) on the training device, plus the built-in RGB set ``photos32``.

==================  ===========================================================================================
``x`` (stored)      uint8 ``[C, H, W]`` per image (folders, uint8 ``.npz``/``.npy``, ``photos32``) or float32
                    ``[...]`` as given (in-memory tensors: toy sets, digits)
``decode(x)``       uint8 p -> p / 127.5 - 1 in [-1, 1] (float tensors pass through unchanged)
``hflip``           x[..., ::-1] for each example whose flip bit b_i ~ Bernoulli(1/2) (drawn from a generator)
``y``               int64 class labels ``[B]`` or ``None``
==================  ===========================================================================================

Datasets answer ``__getitems__(indices) -> (x [B, ...], y [B] or None)`` (a whole batch at once; the loader's
``collate_fn`` is ``batch_as_is``), so a ``DataLoader`` with a batch sampler streams whole micro-batches through
worker processes and pinned memory.  Images are read lazily from a folder (one file per ``__getitems__`` entry);
``.npy`` files are memory-mapped; ``.npz`` arrays are held as uint8 (4x smaller than float32).

``photos32``: deterministic 32x32 RGB patches cut from the two colour photographs shipped with scikit-learn
(``sklearn.datasets.load_sample_images``: china.jpg and flower.jpg, 427x640): each photo is downscaled by
``scale`` (bicubic, PIL) and cut into patches on a regular grid with ``stride`` (default 0.5 and 4: 3358 patches
per photo, 6716 in all); labels = photo index (0 china, 1 flower).  No download.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .images import IMAGE_SUFFIXES, _image_files, _size_hw

PHOTOS = ("china.jpg", "flower.jpg")


def batch_as_is(batch: Any) -> Any:
    """Collate function for datasets whose ``__getitems__`` already returns a batch (returns it unchanged)."""
    return batch


def decode(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> ``dtype`` in [-1, 1] (p / 127.5 - 1); floating tensors are only cast. Shapes kept."""
    if x.dtype == torch.uint8:
        return x.to(dtype) / 127.5 - 1.0
    return x.to(dtype)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``x [B, C, H, W]`` left-right with probability 1/2 (bits drawn from ``generator``,
    on ``x.device``)."""
    if x.ndim != 4:
        raise ValueError(f"random_hflip needs images [B, C, H, W], got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _labels_or_none(labels, n: int) -> torch.Tensor | None:
    if labels is None:
        return None
    y = torch.as_tensor(np.asarray(labels))
    if y.ndim != 1 or y.shape[0] != n or y.is_floating_point():
        raise ValueError(f"labels must be an integer array [N] with N={n}, got {y.dtype} {tuple(y.shape)}")
    return y.long()


class ArrayDataset(Dataset):
    """Images or vectors held in memory (a torch tensor, a numpy array or a memory-mapped ``.npy``), any dtype;
    ``__getitems__`` gathers a batch with one fancy-indexing read."""

    def __init__(self, x, labels=None):
        self.x = x if isinstance(x, (torch.Tensor, np.memmap)) else np.asarray(x)
        if self.x.ndim < 1 or self.x.shape[0] < 1:
            raise ValueError(f"data must be examples [N, ...] with N >= 1, got shape {tuple(self.x.shape)}")
        self.labels = _labels_or_none(labels, self.x.shape[0])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example (``[C, H, W]`` for images)."""
        return tuple(int(s) for s in self.x.shape[1:])

    def __getitem__(self, i: int):
        """One example and its label (``-1`` when there are no labels)."""
        x, y = self.__getitems__([i])
        return x[0], (-1 if y is None else int(y[0]))

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch ``(x [B, ...], y [B] or None)`` for a list of indices."""
        idx = np.asarray(indices, dtype=np.int64)
        x = self.x[torch.from_numpy(idx)] if isinstance(self.x, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(self.x[idx]))
        return x, (None if self.labels is None else self.labels[torch.from_numpy(idx)])


class ImageFolderDataset(Dataset):
    """A folder of images read lazily, one file per example, as uint8 ``[C, H, W]`` (``mode`` "RGB" or "L"),
    resized (bicubic) to ``size`` when given.  Sub-folders = classes (ImageFolder style) when the folder holds no
    image files itself."""

    def __init__(self, path: str | Path, size: int | tuple[int, int] | None = None, mode: str = "RGB"):
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' (grayscale) or 'RGB', got {mode!r}")
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"{folder}: not a folder")
        self.files, self.labels = _image_files(folder), None
        if not self.files:
            per_class = [_image_files(c) for c in sorted(p for p in folder.iterdir() if p.is_dir())]
            per_class = [fs for fs in per_class if fs]
            self.files = [f for fs in per_class for f in fs]
            if self.files:
                self.labels = torch.cat([torch.full((len(fs),), k, dtype=torch.int64)
                                         for k, fs in enumerate(per_class)])
        if not self.files:
            raise ValueError(f"{folder}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images in it or its "
                             "sub-folders)")
        self.mode, self.hw = mode, _size_hw(size)
        first = self._read(0)
        self.hw = self.hw or (int(first.shape[1]), int(first.shape[2]))
        self._shape = tuple(int(s) for s in first.shape)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example ``[C, H, W]``."""
        return self._shape

    def _read(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)
                if self.hw is not None and img.size != (self.hw[1], self.hw[0]):
                    img = img.resize((self.hw[1], self.hw[0]), Image.Resampling.BICUBIC)
                a = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(a))

    def __getitem__(self, i: int):
        """One uint8 image ``[C, H, W]`` and its label (``-1`` when unlabelled)."""
        return self._read(i), (-1 if self.labels is None else int(self.labels[i]))

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch ``(x uint8 [B, C, H, W], y [B] or None)``; raises ValueError naming a file of another size."""
        images = [self._read(int(i)) for i in indices]
        for i, im in zip(indices, images, strict=True):
            if tuple(im.shape) != self._shape:
                raise ValueError(f"{self.files[int(i)]}: ragged sizes, image is {tuple(im.shape)} but "
                                 f"{self.files[0].name} is {self._shape}; pass size=... to resize all images")
        y = None if self.labels is None else self.labels[torch.as_tensor(list(indices), dtype=torch.long)]
        return torch.stack(images), y


def photo_patches(size: int = 32, stride: int = 4, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic ``size`` x ``size`` RGB patches of scikit-learn's two sample photographs -> (uint8
    ``[N, 3, size, size]``, int64 labels ``[N]`` = photo index).  See the module docstring."""
    from sklearn.datasets import load_sample_images

    if not (isinstance(size, int) and isinstance(stride, int) and size >= 1 and stride >= 1 and 0 < scale <= 1):
        raise ValueError(f"need integers size >= 1, stride >= 1 and 0 < scale <= 1, got {size}, {stride}, {scale}")
    photos, xs, ys = load_sample_images(), [], []
    for k, name in enumerate(PHOTOS):
        img = Image.fromarray(photos.images[photos.filenames.index(
            next(f for f in photos.filenames if f.endswith(name)))])
        w, h = round(img.width * scale), round(img.height * scale)
        a = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
        p = np.lib.stride_tricks.sliding_window_view(a, (size, size, 3))[::stride, ::stride, 0]  # [I, J, s, s, 3]
        p = p.reshape(-1, size, size, 3).transpose(0, 3, 1, 2)
        xs.append(p)
        ys.append(np.full(p.shape[0], k, dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def load_photos32(n: int | None = None, seed: int | torch.Generator = 0, **params):
    """The ``photos32`` data set as floats in [-1, 1]: ``(x [N, 3, 32, 32], labels [N])`` (``n`` random rows)."""
    from .images import subsample

    x, y = photo_patches(**params)
    return subsample(decode(torch.from_numpy(x)), torch.from_numpy(y), n, seed)


def _array_file(path: Path, key: str | None = None, label_key: str | None = None) -> ArrayDataset:
    from .images import _labels_from_array, _npz_pick

    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable array file ({type(e).__name__}: {e})") from e
        return ArrayDataset(x)
    try:
        with np.load(path, allow_pickle=False) as z:
            x = np.asarray(_npz_pick(z, path, key, ("x", "arr_0"), "the data", True))
            y = _npz_pick(z, path, label_key, ("y", "labels"), "the labels", False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from e
    return ArrayDataset(x, None if y is None else _labels_from_array(np.asarray(y), path, x.shape[0]))


def open_dataset(name_or_path: str | Path, n: int | None = None, seed: int = 0, labels: bool = True,
                 **params) -> Dataset:
    """A streamable dataset: an image folder (``size``, ``mode`` params), a ``.npy`` (memory-mapped) or ``.npz``
    (``key``, ``label_key``) file, ``photos32`` (uint8), or any registered data set (held in memory).

    ``n`` keeps a random subset of that many examples (seeded); ``labels=False`` drops the labels."""
    from . import load_dataset

    p = Path(name_or_path)
    if name_or_path == "photos32":
        x, y = photo_patches(**params)
        ds = ArrayDataset(x, y)
    elif p.is_dir():
        ds = ImageFolderDataset(p, **params)
    elif p.is_file() and p.suffix.lower() in (".npy", ".npz"):
        ds = _array_file(p, **params)
    else:
        x, y = load_dataset(name_or_path, seed=seed, **params)
        ds = ArrayDataset(x, y)
    if not labels:
        ds.labels = None
    return ds if n is None else subset(ds, n, seed)


def subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` examples of ``ds`` drawn without replacement (seeded), as a dataset of the same kind."""
    N = len(ds)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= N:
        raise ValueError(f"n must be an integer in [1, {N}] (the data set size), got {n!r}")
    keep = np.sort(torch.randperm(N, generator=torch.Generator().manual_seed(int(seed)))[: int(n)].numpy())
    if isinstance(ds, ImageFolderDataset):
        ds.files = [ds.files[i] for i in keep]
        ds.labels = None if ds.labels is None else ds.labels[torch.from_numpy(keep)]
        return ds
    x, y = ds.__getitems__(keep.tolist())
    return ArrayDataset(x, y)


def make_loader(dataset: Dataset, batch_sampler, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` that streams the micro-batches of ``batch_sampler`` (lists of indices) through
    ``num_workers`` worker processes (prefetching) into pinned memory when ``pin_memory``."""
    if int(num_workers) != num_workers or num_workers < 0:
        raise ValueError(f"num_workers must be a nonnegative integer, got {num_workers!r}")
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=batch_as_is, num_workers=int(num_workers),
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if num_workers > 0 else None)


__all__ = ["ArrayDataset", "ImageFolderDataset", "open_dataset", "subset", "make_loader", "decode", "random_hflip",
           "photo_patches", "load_photos32", "batch_as_is", "PHOTOS"]
