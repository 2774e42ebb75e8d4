"""Streamed image data (folders, uint8 .npz/.npy, photos32), flips, and the 32x32 UNet presets."""
import numpy as np
import pytest
import torch
from PIL import Image

from scorelab.data import DATASETS, load_dataset
from scorelab.data.streaming import (
    ArrayDataset,
    ImageFolderDataset,
    decode,
    make_loader,
    open_dataset,
    photo_patches,
    random_hflip,
)
from scorelab.nets import UNET_PRESETS, UNet, build_net, count_parameters


def test_photos32_is_deterministic_rgb_patches_of_the_sklearn_photos():
    from sklearn.datasets import load_sample_images

    x, y = photo_patches()
    assert x.shape == (6716, 3, 32, 32) and x.dtype == np.uint8 and np.bincount(y).tolist() == [3358, 3358]
    x2, _ = photo_patches()
    assert np.array_equal(x, x2)
    full, _ = photo_patches(size=8, stride=8, scale=1.0)  # no resize: patches are exact crops of the photo
    china = load_sample_images().images[0]
    assert np.array_equal(full[1], china[0:8, 8:16].transpose(2, 0, 1))
    xf, yf = load_dataset("photos32", n=10, seed=3)
    assert xf.shape == (10, 3, 32, 32) and xf.min() >= -1 and xf.max() <= 1 and "photos32" in DATASETS


def test_folder_and_npz_stream_uint8_batches_through_a_loader(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    for c in range(2):
        (tmp_path / "f" / f"class{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(imgs[3 * c + i]).save(tmp_path / "f" / f"class{c}" / f"{i}.png")
    ds = open_dataset(tmp_path / "f")
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 6 and ds.example_shape == (3, 8, 8)
    x, y = ds.__getitems__([4, 0])
    assert x.dtype == torch.uint8 and torch.equal(x[0], torch.from_numpy(imgs[4].transpose(2, 0, 1)))
    assert y.tolist() == [1, 0]
    np.savez(tmp_path / "a.npz", x=imgs.transpose(0, 3, 1, 2), y=np.arange(6))
    nz = open_dataset(tmp_path / "a.npz", labels=False)
    batches = list(make_loader(nz, [[0, 1, 2], [5, 4, 3]], num_workers=1))
    assert batches[1][0].dtype == torch.uint8 and batches[1][1] is None
    assert torch.equal(batches[1][0][0], x[0].new_tensor(imgs[5].transpose(2, 0, 1)))
    torch.testing.assert_close(decode(batches[0][0]), load_dataset(tmp_path / "a.npz")[0][:3])
    assert len(open_dataset(tmp_path / "f", n=4, seed=1)) == 4
    with pytest.raises(ValueError, match="empty folder"):
        (tmp_path / "e").mkdir()
        ImageFolderDataset(tmp_path / "e")
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(np.zeros((3, 2)), labels=np.zeros(2))


def test_random_hflip_flips_about_half_and_exactly_mirrors():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4).repeat(500, 1, 1, 1)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = (out != x).flatten(1).any(1)
    assert 0.45 < flipped.float().mean() < 0.55
    assert torch.equal(out[flipped], x[flipped].flip(-1)) and torch.equal(out[~flipped], x[~flipped])
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(0)))


def test_unet_presets_match_the_papers_sizes():
    """DDPM CIFAR-10 (Ho et al. 2020) has 35.7M parameters; ours differs by the time MLP's input width (512 vs
    128: +0.2M).  skip_rescale and additive conditioning change outputs, not shapes."""
    net = build_net({"name": "unet", "preset": "ddpm_cifar10", "in_channels": 3})
    assert abs(count_parameters(net) - 35.7e6) < 0.3e6
    assert set(UNET_PRESETS) >= {"ddpm_cifar10", "ddpmpp_cifar10", "small32"}
    small = build_net({"name": "unet", "preset": "small32", "in_channels": 3, "base_channels": 16})
    assert small.config()["base_channels"] == 16 and small.config()["num_res_blocks"] == 2
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10.0, 500.0])
    assert small(x, t).shape == x.shape
    with pytest.raises(ValueError, match="preset"):
        build_net({"name": "unet", "preset": "cifar100"})
    a = UNet(in_channels=3, base_channels=8, image_size=8, skip_rescale=True, scale_shift=False)
    assert a.config()["skip_rescale"] is True and a(torch.randn(1, 3, 8, 8), torch.tensor([3.0])).shape == (1, 3, 8, 8)


def test_experiment_streams_photos32_and_reports_the_parameter_count(tmp_path, capsys):
    from scorelab.training.experiment import experiment_from_dict, run_training

    exp = experiment_from_dict({
        "data": {"name": "photos32", "n": 16, "stream": True},
        "process": {"name": "discrete", "schedule": "linear", "n": 1000},
        "model": {"net": {"name": "unet", "preset": "small32", "base_channels": 8, "num_res_blocks": 1,
                          "time_scale": 1.0}},
        "loss": {"proposal": "discrete", "reduction": "mean"},
        "train": {"steps": 2, "batch_size": 4, "hflip": True, "log_every": 1}})
    res = run_training(exp, tmp_path / "run", progress=True)
    assert res["step"] == 2 and res["params"] == sum(p.numel() for p in res["model"].parameters())
    assert f"{res['params']:,} trainable parameters" in capsys.readouterr().err
