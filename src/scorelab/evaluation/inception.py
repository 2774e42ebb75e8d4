r"""Inception FID / KID / precision-recall with the FID variant of InceptionV3 (the network the field reports with),
from a weights file the user supplies.  Nothing is downloaded.

=====================  ==========================================================================================
``x``                  images ``[N, 3, H, W]`` in [-1, 1] (scorelab's image range; uint8 arrays are mapped first)
``resize``             (x + 1) / 2 in [0, 1] -> bilinear to 299 x 299 (``align_corners=False``) -> 2 u - 1, as
                       pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``
``f``                  2048-d pool3 features (global average of Mixed_7c), float64 for the statistics
``mu, Sigma``          feature mean and covariance (``np.cov(rowvar=False)``, divisor N - 1)
``FID``                ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) (Heusel et al. 2017, Eq. 6)
``KID``                unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / d + 1)^3, averaged over ``subsets``
                       random subsets of ``subset_size`` (Binkowski et al. 2018, Sec. 3; as in torch-fidelity)
``P, R``               improved precision / recall on the features (Kynkaanniemi et al. 2019), ``metrics``
=====================  ==========================================================================================

The network is InceptionV3 (Szegedy et al. 2016) with the three changes of TensorFlow's FID graph that pytorch-fid
reproduces (``FIDInceptionA``/``C``/``E_1``: average pools that ignore zero padding; ``E_2``: a max pool in the pool
branch), 1008 logits, no auxiliary head; module names follow torchvision's ``Inception3`` so the state dict of
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the TF FID weights ported to torch) loads key for key.
Weights come only from a ``.safetensors`` file (never unpickled); ``FID_WEIGHTS_HELP`` says how to make one.

Which numbers are comparable with papers: FID from this network with these weights on 50 000 samples against the
training set's statistics follows the pytorch-fid protocol (within ~1% of TF FID, pytorch-fid's own caveat about
resize); FID-digits and ``photos32`` features (``metrics``) are scorelab-only scales.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._utils import progress as tqdm
from .metrics import _np2d, feature_stats, precision_recall

FEATURE_DIM = 2048
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_HELP = (
    f"get pytorch-fid's FID Inception weights (TensorFlow's FID graph ported to torch) from {FID_WEIGHTS_URL} and "
    "convert them once to safetensors: python -c \"import torch, safetensors.torch as st; "
    "st.save_file(torch.load('pt_inception-2015-12-05-6726825d.pth', weights_only=True), "
    "'fid_inception.safetensors')\" (see the guide page 'Train on your images')")


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU, as torchvision's Inception ``BasicConv2d``."""

    def __init__(self, c_in: int, c_out: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kw)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, c_in, H, W] -> [B, c_out, H', W']``."""
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    """TF's 3x3 average pool (stride 1, SAME): zero padding is not counted (the FID blocks' patch)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-pool(no pad count)-1x1; out 224 + pool_features."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, c_in, 35, 35] -> [B, 224 + pool_features, 35, 35]``."""
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | max-pool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 288, 35, 35] -> [B, 768, 17, 17]``."""
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..6e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg-pool(no pad count)-1x1; out 768."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 768, 17, 17] -> [B, 768, 17, 17]``."""
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max-pool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 768, 17, 17] -> [B, 1280, 8, 8]``."""
        b7 = x
        for k in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{k}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (``pool="avg"``, no pad count: FIDInceptionE_1) and Mixed_7c (``pool="max"``: FIDInceptionE_2):
    1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1; out 2048."""

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, c_in, 8, 8] -> [B, 2048, 8, 8]``."""
        a = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID InceptionV3: ``forward(x [B, 3, H, W] in [-1, 1]) -> pool3 features [B, 2048]`` (resizing to 299 as
    in the module docstring); ``logits(features)`` gives the 1008 class logits (the fc layer of the weights)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (FIDInceptionA(192, 32), FIDInceptionA(256, 64),
                                                       FIDInceptionA(288, 64))
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = FIDInceptionC(768, 128), FIDInceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = FIDInceptionC(768, 160), FIDInceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = FIDInceptionE(1280, "avg"), FIDInceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)

    @staticmethod
    def resize(x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images ``[B, 3, H, W]`` -> the network input ``[B, 3, 299, 299]`` in [-1, 1] (pytorch-fid's
        bilinear resize of (x + 1) / 2, then 2 u - 1)."""
        u = F.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * u - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool3 features ``[B, 2048]`` of images ``x [B, 3, H, W]`` in [-1, 1]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Inception features need RGB images [B, 3, H, W], got shape {tuple(x.shape)}")
        h = self.resize(x)
        h = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(h)))
        h = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(h, kernel_size=3, stride=2)))
        h = F.max_pool2d(h, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            h = getattr(self, f"Mixed_{name}")(h)
        return h.mean(dim=(2, 3))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The 1008 class logits of pool3 ``features [B, 2048]``."""
        return self.fc(features)


def load_inception(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception network with weights from the ``.safetensors`` file ``path`` (eval mode, no grad).

    Raises ValueError with the way to obtain and convert the file (``FID_WEIGHTS_HELP``) when the path is missing,
    not a safetensors file, or holds other tensors (missing/unexpected keys or shapes are listed)."""
    if path is None or not Path(path).is_file():
        raise ValueError(f"--inception-weights: no such file {str(path)!r}; {FID_WEIGHTS_HELP}")
    if Path(path).suffix != ".safetensors":
        raise ValueError(f"--inception-weights: {path} is not a .safetensors file (scorelab never unpickles .pth); "
                         f"{FID_WEIGHTS_HELP}")
    import safetensors.torch

    try:
        state = safetensors.torch.load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on a corrupt header
        raise ValueError(f"--inception-weights: {path} is not a readable safetensors file ({e}); "
                         f"{FID_WEIGHTS_HELP}") from e
    net = FIDInceptionV3()
    _load_state(net, state, path)
    return net.to(device).eval().requires_grad_(False)


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """Strict load, except BatchNorm's ``num_batches_tracked`` counters (absent from the 2015 weights)."""
    own = net.state_dict()
    need = {k for k in own if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(need - given), sorted(given - need)
    bad = sorted(k for k in need & given if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or bad:
        raise ValueError(f"--inception-weights: {path} is not the FID InceptionV3 state dict (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {bad[:5]}); {FID_WEIGHTS_HELP}")
    net.load_state_dict({k: state[k] for k in need} | {k: own[k] for k in own if k not in need})


def as_images(x) -> torch.Tensor:
    """Samples as float32 images ``[N, 3, H, W]`` in [-1, 1]: uint8 arrays (NCHW or NHWC) are mapped p / 127.5 - 1,
    float arrays are taken as [-1, 1]; other shapes raise ValueError."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim == 4 and t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"Inception metrics need RGB images [N, 3, H, W] (or [N, H, W, 3] uint8), got shape "
                         f"{tuple(t.shape)}")
    return t.float() / 127.5 - 1.0 if t.dtype == torch.uint8 else t.float()


@torch.no_grad()
def inception_features(x, net: FIDInceptionV3, batch_size: int = 200, progress: bool = False) -> torch.Tensor:
    """Pool3 features ``[N, 2048]`` (float64, CPU) of images ``x`` (see ``as_images``), ``batch_size`` at a time on
    the network's device."""
    imgs = as_images(x)
    device = next(net.parameters()).device
    out = [net(imgs[i:i + batch_size].to(device)).double().cpu()
           for i in tqdm(range(0, imgs.shape[0], batch_size), disable=not progress, desc="inception", leave=False)]
    return torch.cat(out)


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FID of two feature Gaussians: ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2.

    The same number as pytorch-fid's tr sqrtm(S1 S2) (S1 S2 is similar to the symmetric PSD S1^1/2 S2 S1^1/2, so
    their square roots have equal traces), computed with two symmetric eigen-decompositions: seconds instead of a
    minute for 2048-d features, and no complex round-off for rank-deficient covariances (negative round-off
    eigenvalues are clipped to 0)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"need means [d] and covariances [d, d] of one d; got {mu1.shape}, {s1.shape}, "
                         f"{mu2.shape}, {s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(r1 @ ((s2 + s2.T) / 2) @ r1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def fid_inception_features(f1, f2) -> float:
    """FID of two Inception feature sets ``[N, 2048]``, ``[M, 2048]`` (``fid_from_stats`` of their mean and
    unbiased covariance)."""
    return fid_from_stats(*feature_stats(f1), *feature_stats(f2))


def kid(f1, f2, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance of features ``f1 [N, d]``, ``f2 [M, d]`` -> (mean, std) over ``subsets`` subsets
    of ``min(subset_size, N, M)`` rows each; each term is the unbiased MMD^2 U-statistic with the cubic polynomial
    kernel (Binkowski et al. 2018), so its expectation is the population MMD^2 (0 for equal laws)."""
    a, b = _np2d(f1, "f1"), _np2d(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs features of one dimension, got {a.shape[1]} and {b.shape[1]}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 examples per side, got {a.shape[0]} and {b.shape[0]}")
    rng = np.random.default_rng(seed)
    vals = [mmd2_poly_unbiased(a[rng.choice(a.shape[0], m, replace=False)],
                               b[rng.choice(b.shape[0], m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def mmd2_poly_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) with k(a, b) = (a.b / d + 1)^3 of ``x [m, d]``, ``y [n, d]``:
    off-diagonal means of K_xx and K_yy minus twice the mean of K_xy."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m, n = x.shape[0], y.shape[0]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def inception_report(samples, reference, net: FIDInceptionV3, batch_size: int = 200, kid_subset_size: int = 1000,
                     pr_k: int = 3, progress: bool = False) -> dict:
    """Inception FID, KID (mean, std) and precision/recall (``pr_k`` nearest neighbours, as Kynkaanniemi et al.)
    of ``samples`` against ``reference`` (images, see ``as_images``) -> a JSON-able dict (``n_samples`` and
    ``n_reference`` included: FID is biased in N)."""
    f1, f2 = (inception_features(v, net, batch_size, progress) for v in (samples, reference))
    return report_from_features(f1, f2, kid_subset_size, pr_k)


def report_from_features(f1, f2, kid_subset_size: int = 1000, pr_k: int = 3) -> dict:
    """``inception_report`` on precomputed features ``f1 [N, 2048]`` (samples) and ``f2 [M, 2048]`` (reference)."""
    kid_mean, kid_std = kid(f1, f2, subset_size=min(kid_subset_size, len(f1), len(f2)))
    pr = precision_recall(torch.as_tensor(f2).float(), torch.as_tensor(f1).float(), k=pr_k)
    return {"fid_inception": fid_inception_features(f1, f2), "kid_inception": kid_mean, "kid_inception_std": kid_std,
            "precision_inception": pr["precision"], "recall_inception": pr["recall"],
            "n_samples": int(len(f1)), "n_reference": int(len(f2))}


def load_images(name_or_path: str | os.PathLike) -> torch.Tensor:
    """All images of a ``.npy``/``.npz`` file (uint8 or [-1, 1] floats), an image folder (read as RGB) or a
    registered image data set (e.g. ``photos32``) -> float32 ``[N, 3, H, W]`` in [-1, 1]."""
    from ..data.streaming import decode, open_dataset

    p = Path(name_or_path)
    if p.suffix.lower() == ".npy" and p.is_file():
        return as_images(np.load(p, allow_pickle=False))
    ds = open_dataset(str(name_or_path), labels=False)
    x, _ = ds.__getitems__(list(range(len(ds))))
    return as_images(decode(x) if x.dtype == torch.uint8 else x)


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mu, sigma)`` from a pytorch-fid statistics file (``.npz`` holding ``mu`` and ``sigma``), or None when
    ``path`` is not such a file."""
    p = Path(path)
    if p.suffix.lower() != ".npz" or not p.is_file():
        return None
    with np.load(p, allow_pickle=False) as z:
        if {"mu", "sigma"} <= set(z.files):
            return np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    return None


def save_stats(path: str | os.PathLike, features) -> Path:
    """Write ``mu``, ``sigma`` of ``features [N, 2048]`` as a pytorch-fid statistics ``.npz`` (a temporary file,
    then an atomic rename)."""
    mu, sigma = feature_stats(features)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma)
    os.replace(tmp, path)
    return path


def evaluate_inception(samples: str, reference: str, weights: str, device: str = "cpu", batch_size: int = 200,
                       save_reference_stats: str | None = None, progress: bool = False) -> dict:
    """``scorelab evaluate --inception-weights``: Inception FID, KID and precision/recall of the images in
    ``samples`` against ``reference`` (images as in ``load_images``, or a pytorch-fid ``mu``/``sigma`` ``.npz``:
    FID only).  ``save_reference_stats`` writes the reference's statistics for later runs."""
    net = load_inception(weights, device)
    x = load_images(samples)
    stats = load_stats(reference)
    if stats is not None:
        f1 = inception_features(x, net, batch_size, progress)
        return {"fid_inception": fid_from_stats(*feature_stats(f1), *stats), "n_samples": int(f1.shape[0]),
                "reference": "statistics file (FID only)"}
    f1, f2 = (inception_features(v, net, batch_size, progress) for v in (x, load_images(reference)))
    if save_reference_stats:
        save_stats(save_reference_stats, f2)
    return report_from_features(f1, f2)


__all__ = ["FIDInceptionV3", "load_inception", "inception_features", "inception_report", "report_from_features",
           "kid", "mmd2_poly_unbiased", "fid_from_stats", "fid_inception_features", "as_images", "load_images",
           "load_stats", "save_stats", "evaluate_inception", "FID_WEIGHTS_HELP", "FID_WEIGHTS_URL", "FEATURE_DIM"]
