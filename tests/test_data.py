"""Data sets: documented shapes/scales, SFT-PG swiss-roll protocol, reproducibility, file loaders and their errors."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sk_digits
from sklearn.datasets import make_moons, make_swiss_roll

from scorelab.core.analytic import GaussianMixture
from scorelab.data import DATASETS, describe_datasets, load_dataset, toy2d
from scorelab.data.images import digits_split, load_array, load_csv, load_digits, load_image_folder, read_image

# -- 2-D toy sets ------------------------------------------------------------------------------------------------


def test_swiss_roll_matches_sft_pg_protocol():
    x = toy2d.swiss_roll(700, seed=3)
    ref, _ = make_swiss_roll(700, noise=0.05, random_state=3)
    assert x.shape == (700, 2) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), ref[:, [0, 2]] / 20, rtol=1e-6, atol=1e-7)
    # t ~ U(1.5 pi, 4.5 pi): |coords| <= 4.5 pi / 20 + noise
    assert x.abs().max() < 4.5 * math.pi / 20 + 0.3 / 20


def test_two_moons_matches_sklearn_over_two():
    x = toy2d.two_moons(501, seed=7)
    ref, _ = make_moons(501, noise=0.05, random_state=7)
    assert x.shape == (501, 2) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), ref / 2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["swiss_roll", "two_moons", "eight_gaussians", "twenty_five_gaussians",
                                  "checkerboard", "rings", "pinwheel"])
def test_toy_sets_shape_dtype_and_seeds(name):
    fn = getattr(toy2d, name)
    a, b, c = fn(300, seed=1), fn(300, seed=1), fn(300, seed=2)
    assert a.shape == (300, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(fn(50, g1), fn(50, g2))


def test_toy_sets_reject_bad_n():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            toy2d.checkerboard(bad)
    with pytest.raises(ValueError, match="seed"):
        toy2d.rings(10, seed="a")


def test_eight_gaussians_modes_on_circle():
    mix = toy2d.eight_gaussians_mixture(radius=2.0, std=0.1)
    ang = torch.atan2(mix.means[:, 1], mix.means[:, 0])
    np.testing.assert_allclose(mix.means.norm(dim=1).numpy(), 2.0, rtol=1e-12)
    np.testing.assert_allclose(torch.sort(torch.remainder(ang, 2 * math.pi)).values.numpy(),
                               np.arange(8) * math.pi / 4, atol=1e-12)
    x, k = load_dataset("8gaussians", n=4000, seed=0)
    d = (x.double() - mix.means[k]).norm(dim=1)  # distance to own mean ~ Rayleigh(0.1): mean 0.1 sqrt(pi / 2)
    assert abs(d.mean().item() - 0.1 * math.sqrt(math.pi / 2)) < 0.005
    assert torch.bincount(k, minlength=8).min() > 4000 / 8 * 0.8


def test_twenty_five_gaussians_grid():
    mix = toy2d.twenty_five_gaussians_mixture()
    assert mix.K == 25
    assert set(mix.means.flatten().tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    x = toy2d.twenty_five_gaussians(5000, seed=0).double()
    assert abs(x.mean(0)).max() < 0.1
    # variance of a coordinate: between-mode var 2 (uniform on {-2..2}) + 0.05^2
    np.testing.assert_allclose(x.var(0).numpy(), 2.0025, rtol=0.06)


def test_gaussian_mixture_loader_moments():
    mix = GaussianMixture([1.0, 3.0], [[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]], [0.2, 0.5])
    x = toy2d.gaussian_mixture(20000, seed=0, mixture=mix).double()
    assert x.shape == (20000, 3) and toy2d.gaussian_mixture(3, 0, mix).dtype == torch.float32
    se = (mix.covariance().diagonal() / 20000).sqrt()
    assert ((x.mean(0) - mix.mean()).abs() < 4 * se).all()
    np.testing.assert_allclose(torch.cov(x.T).numpy(), mix.covariance().numpy(), atol=0.05)
    with pytest.raises(ValueError, match="GaussianMixture"):
        toy2d.gaussian_mixture(10, 0, mixture=None)


def test_checkerboard_only_black_cells_uniformly():
    x = toy2d.checkerboard(8000, seed=0)
    assert x.min() >= -4 and x.max() <= 4
    cells = torch.floor((x + 4) / 2).long()  # side 2, 4 x 4 board
    assert ((cells.sum(1) % 2) == 0).all()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)
    black = counts[counts > 0]
    assert black.numel() == 8 and (black - 1000).abs().max() < 4 * math.sqrt(1000)


def test_rings_radii():
    x = toy2d.rings(8000, seed=0, noise=0.02).double()
    r = x.norm(dim=1)
    ring = torch.round(r / 0.75)
    assert ((r - 0.75 * ring).abs() < 5 * 0.02 * 1.5).all()  # noise 0.02 per coordinate
    assert set(ring.long().tolist()) == {1, 2, 3, 4}
    assert (torch.bincount(ring.long())[1:] - 2000).abs().max() < 4 * math.sqrt(2000)


def test_pinwheel_noise_free_arms():
    # with no noise, every point sits at radius scale and angle 2 pi a / n_arms + rate * e
    x = toy2d.pinwheel(500, seed=0, radial_std=0.0, tangential_std=0.0, rate=0.25, scale=2.0).double()
    np.testing.assert_allclose(x.norm(dim=1).numpy(), 2.0, rtol=1e-6)
    phase = torch.remainder(torch.atan2(x[:, 1], x[:, 0]) - 0.25 * math.e, 2 * math.pi / 5)
    phase = torch.minimum(phase, 2 * math.pi / 5 - phase)
    assert phase.max() < 1e-5
    arms = torch.round(torch.remainder(torch.atan2(x[:, 1], x[:, 0]) - 0.25 * math.e, 2 * math.pi) / (0.4 * math.pi))
    assert set(torch.remainder(arms, 5).long().tolist()) == set(range(5))


# -- registry --------------------------------------------------------------------------------------------------


def test_registry_loads_every_set_and_lists_names():
    listing = describe_datasets()
    for name, info in DATASETS.items():
        assert name in listing
        if name == "mixture":
            continue
        x, y = load_dataset(name, n=64, seed=1)
        assert x.shape == (64, *info.example_shape) and x.dtype == torch.float32
        assert y is None or (y.shape == (64,) and y.dtype == torch.int64)
    x, y = load_dataset("mixture", n=10, mixture=toy2d.eight_gaussians_mixture())
    assert x.shape == (10, 2) and y.shape == (10,)
    assert load_dataset("moons")[0].shape[0] == 10_000
    x, _ = load_dataset("swiss_roll", n=100, seed=4, noise=0.0)
    np.testing.assert_allclose(x.numpy(), make_swiss_roll(100, noise=0.0, random_state=4)[0][:, [0, 2]] / 20,
                               rtol=1e-6, atol=1e-7)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown data set 'nope'.*swiss_roll.*digits"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="mixture=<"):
        load_dataset("mixture", n=5)
    with pytest.raises(ValueError, match="'swiss_roll' does not take the parameters \\['radius'\\]"):
        load_dataset("swiss_roll", n=5, radius=1.0)


# -- digits ----------------------------------------------------------------------------------------------------


def test_digits_scaled_to_unit_range():
    x, y = load_digits()
    ref = sk_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (1797,)
    assert x.min() == -1 and x.max() == 1
    np.testing.assert_allclose(x[:, 0].numpy(), ref.images / 8 - 1, atol=1e-6)
    assert torch.equal(y, torch.from_numpy(ref.target).long())
    xs, ys = load_digits(n=100, seed=3)
    assert xs.shape == (100, 1, 8, 8) and torch.equal(xs, load_digits(n=100, seed=3)[0])
    with pytest.raises(ValueError, match="n must be"):
        load_digits(n=5000)


def test_digits_split_stratified():
    xtr, ytr, xte, yte = digits_split(0.2, seed=0)
    assert xtr.shape[0] + xte.shape[0] == 1797 and abs(xte.shape[0] - 360) <= 1
    frac = torch.bincount(yte, minlength=10).double() / torch.bincount(torch.cat([ytr, yte])).double()
    assert (frac - 0.2).abs().max() < 0.02


# -- image folders ---------------------------------------------------------------------------------------------


def _png(path, arr, mode=None):
    Image.fromarray(np.asarray(arr, dtype=np.uint8), mode=mode).save(path)


def test_image_folder_values_modes_and_resize(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    _png(tmp_path / "a.png", a)
    _png(tmp_path / "b.png", 255 - a)
    x, y = load_image_folder(tmp_path)
    assert x.shape == (2, 1, 3, 4) and y is None and x.dtype == torch.float32
    np.testing.assert_allclose(x[0, 0].numpy(), a / 127.5 - 1, atol=1e-6)
    xr, _ = load_image_folder(tmp_path, mode="RGB", size=(6, 5))
    assert xr.shape == (2, 3, 6, 5) and xr.min() >= -1 and xr.max() <= 1
    assert torch.allclose(xr[:, 0], xr[:, 1])  # grey image converted to RGB: equal channels
    assert load_dataset(str(tmp_path), size=2)[0].shape == (2, 1, 2, 2)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    _png(tmp_path / "c.png", rgb)
    assert np.allclose(read_image(tmp_path / "c.png", mode="RGB")[:, 0, 0].numpy(), [1, -1, -1])
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(tmp_path / "d.JPG", quality=95)
    assert np.allclose(read_image(tmp_path / "d.JPG", mode="L").numpy(), 200 / 127.5 - 1, atol=0.03)


def test_image_folder_class_subfolders(tmp_path):
    for cls, k in (("cat", 2), ("dog", 3)):
        (tmp_path / cls).mkdir()
        for i in range(k):
            _png(tmp_path / cls / f"{i}.png", np.full((4, 4), 10 * i))
    x, y = load_image_folder(tmp_path)
    assert x.shape == (5, 1, 4, 4) and y.tolist() == [0, 0, 1, 1, 1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="empty folder"):
        load_image_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="empty folder"):
        load_image_folder(tmp_path)
    _png(tmp_path / "a.png", np.zeros((4, 4)))
    _png(tmp_path / "b.png", np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"b\.png: ragged sizes"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=4)[0].shape == (2, 1, 4, 4)
    (tmp_path / "c.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"c\.png: unreadable image"):
        load_image_folder(tmp_path, size=4)
    with pytest.raises(ValueError, match="mode"):
        read_image(tmp_path / "a.png", mode="CMYK")
    with pytest.raises(ValueError, match="not a folder"):
        load_image_folder(tmp_path / "a.png")


# -- arrays ----------------------------------------------------------------------------------------------------


def test_npy_npz_roundtrip_and_labels(tmp_path):
    a = np.random.default_rng(0).normal(size=(10, 3))
    np.save(tmp_path / "a.npy", a)
    x, y = load_dataset(str(tmp_path / "a.npy"))
    assert y is None and x.dtype == torch.float32 and np.allclose(x.numpy(), a, atol=1e-6)
    np.savez(tmp_path / "b.npz", x=a, y=np.arange(10))
    x, y = load_dataset(str(tmp_path / "b.npz"), n=4, seed=0)
    assert x.shape == (4, 3) and np.allclose(x.numpy(), a[y.numpy()], atol=1e-6)
    img = np.full((2, 1, 2, 2), 255, dtype=np.uint8)
    np.save(tmp_path / "u8.npy", img)
    assert torch.equal(load_array(tmp_path / "u8.npy")[0], torch.ones(2, 1, 2, 2))
    np.savez(tmp_path / "two.npz", data=a, other=a)
    assert torch.equal(load_array(tmp_path / "two.npz", key="data")[0], torch.from_numpy(a).float())


def test_array_errors(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy: unreadable array file"):
        load_array(tmp_path / "obj.npy")
    np.save(tmp_path / "str.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"str\.npy: wrong dtype <U1"):
        load_array(tmp_path / "str.npy")
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN"):
        load_array(tmp_path / "nan.npy")
    np.savez(tmp_path / "two.npz", p=np.zeros(3), q=np.zeros(3))
    with pytest.raises(ValueError, match=r"two\.npz: cannot tell which array.*key="):
        load_array(tmp_path / "two.npz")
    with pytest.raises(ValueError, match=r"two\.npz: no array named 'z'"):
        load_array(tmp_path / "two.npz", key="z")
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 2)), y=np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"lab\.npz: labels must be a 1-D integer array of length 3"):
        load_array(tmp_path / "lab.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.npz: unreadable"):
        load_array(tmp_path / "bad.npz")
    (tmp_path / "x.xyz").write_text("1")
    with pytest.raises(ValueError, match="unsupported file type '.xyz'"):
        load_dataset(str(tmp_path / "x.xyz"))


# -- CSV -------------------------------------------------------------------------------------------------------


def test_csv_header_labels_and_values(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b,kind\n1.5,2,cat\n-3,4e1,dog\n\n0,0,cat\n")
    x, y = load_csv(p, label_column="kind")
    assert torch.equal(x, torch.tensor([[1.5, 2.0], [-3.0, 40.0], [0.0, 0.0]]))
    assert y.tolist() == [0, 1, 0]
    q = tmp_path / "n.csv"
    q.write_text("1,2,3\n4,5,6\n")
    x, y = load_dataset(str(q))
    assert y is None and torch.equal(x, torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    assert load_csv(q, label_column=2)[1].tolist() == [3, 6]


def test_csv_errors_name_row_and_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match=r"bad\.csv: non-numeric cell 'oops' at row 3, column 2 \('b'\)"):
        load_csv(p)
    p.write_text("1,2\n3\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 2 has 1 columns, expected 2"):
        load_csv(p)
    p.write_text("")
    with pytest.raises(ValueError, match=r"bad\.csv: empty CSV"):
        load_csv(p)
    p.write_text("1,inf\n")
    with pytest.raises(ValueError, match="row 1, column 2"):
        load_csv(p)
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column named 'c'"):
        load_csv(p, label_column="c")
