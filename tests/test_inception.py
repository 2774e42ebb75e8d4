"""Inception FID/KID pipeline with randomly initialised weights saved locally: architecture (the FID InceptionV3 of
pytorch-fid, checked by parameter count and key names), weights loading and its errors, the resize, feature
statistics, the Frechet formula against closed forms for Gaussians, and KID's unbiasedness."""
import math

import numpy as np
import pytest
import safetensors.torch
import scipy.linalg
import torch

from scorelab.evaluation.inception import (
    FIDInceptionV3,
    _avg3,
    fid_from_stats,
    inception_features,
    kid,
    load_inception,
    mmd2_poly_unbiased,
)
from scorelab.evaluation.metrics import feature_stats, frechet_distance


def _random_weights(path, seed=0):
    """He-initialised FID Inception (so features are O(1)) with random BatchNorm statistics, saved as safetensors
    under torchvision's key names (as a converted pytorch-fid file would be), without num_batches_tracked."""
    g = torch.Generator().manual_seed(seed)
    net = FIDInceptionV3()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("conv.weight") or name == "fc.weight":
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel()))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("running_mean", "bn.bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    state = {k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    safetensors.torch.save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _random_weights(tmp_path_factory.mktemp("inc") / "fid_inception.safetensors")


def test_architecture_is_torchvision_inception3_without_aux_head():
    """torchvision's Inception3 has 27,161,264 parameters; minus its aux head (3,326,696) and its 1000-way fc
    (2,049,000) leaves 21,785,568 for the convolutional trunk, which the FID variant shares (only pooling differs)."""
    net = FIDInceptionV3()
    trunk = sum(p.numel() for k, p in net.named_parameters() if not k.startswith("fc."))
    assert trunk == 27_161_264 - 3_326_696 - 2_049_000
    sd = net.state_dict()
    assert tuple(sd["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    assert tuple(sd["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape) == (384,)
    assert tuple(sd["fc.weight"].shape) == (1008, 2048)


def test_weights_load_and_errors_say_where_to_get_them(weights, tmp_path):
    net = load_inception(weights)
    ref = safetensors.torch.load_file(str(weights))
    assert torch.equal(net.state_dict()["Mixed_5b.branch_pool.conv.weight"], ref["Mixed_5b.branch_pool.conv.weight"])
    with pytest.raises(ValueError, match="pt_inception-2015-12-05"):
        load_inception(tmp_path / "missing.safetensors")
    (tmp_path / "w.pth").write_bytes(b"not read")
    with pytest.raises(ValueError, match="never unpickles"):
        load_inception(tmp_path / "w.pth")
    bad = {k: v for k, v in ref.items() if not k.startswith("Mixed_7c")}
    safetensors.torch.save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        load_inception(tmp_path / "bad.safetensors")


def test_resize_is_pytorch_fids_bilinear_on_unit_range():
    """(x+1)/2 -> bilinear 299 (align_corners=False) -> 2u-1: corners are copied (the sample point clamps to the
    first pixel), constants stay constant, and the map commutes with the affine [0,1] <-> [-1,1] change."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = FIDInceptionV3.resize(x)
    assert r.shape == (2, 3, 299, 299)
    torch.testing.assert_close(r[..., 0, 0], x[..., 0, 0])
    torch.testing.assert_close(r[..., -1, -1], x[..., -1, -1])
    torch.testing.assert_close(FIDInceptionV3.resize(torch.full((1, 3, 32, 32), 0.3)), torch.full((1, 3, 299, 299),
                                                                                                   0.3))
    u = torch.nn.functional.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(r, 2 * u - 1)


def test_fid_pools_ignore_padding():
    """TF's SAME average pool (FIDInceptionA/C/E_1) averages only real pixels: a constant map stays constant at the
    border, where torch's default (count_include_pad=True) would give 4/9 of it in a corner."""
    c = torch.full((1, 2, 5, 5), 3.0)
    torch.testing.assert_close(_avg3(c), c)


def test_features_are_batch_invariant_and_stats_are_mean_and_unbiased_covariance(weights):
    net = load_inception(weights)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    f = inception_features(x, net, batch_size=3)
    assert f.shape == (4, 2048) and f.dtype == torch.float64 and bool((f >= 0).all())  # means of ReLU maps
    torch.testing.assert_close(f, inception_features(x, net, batch_size=4), rtol=1e-5, atol=1e-6)
    u8 = ((x[:1] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    torch.testing.assert_close(inception_features(u8.permute(0, 2, 3, 1).numpy(), net),
                               inception_features(u8.float() / 127.5 - 1, net))
    assert float(f.std(0).mean()) > 1e-3  # random He weights give informative features
    mu, sigma = feature_stats(f)
    a = f.numpy()
    np.testing.assert_allclose(mu, a.mean(0))
    np.testing.assert_allclose(sigma, (a - a.mean(0)).T @ (a - a.mean(0)) / 3, atol=1e-12)
    with pytest.raises(ValueError, match="RGB"):
        inception_features(torch.zeros(2, 1, 8, 8), net)


def test_frechet_distance_matches_gaussian_w2_closed_forms():
    """FD = W2^2 between Gaussians: 1-D (m1-m2)^2 + (s1-s2)^2; commuting covariances sum (sqrt a - sqrt b)^2; and
    general SPD matrices tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2) via symmetric eigen-square-roots."""
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)
    a, b = np.array([1.0, 2.0, 0.5]), np.array([4.0, 0.5, 0.5])
    assert frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(
        3 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2, mu = A @ A.T + 0.1 * np.eye(6), B @ B.T + 0.1 * np.eye(6), rng.normal(size=6)

    def sym_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r2 = sym_sqrt(s2)
    closed = mu @ mu + np.trace(s1 + s2 - 2 * sym_sqrt(r2 @ s1 @ r2))
    assert frechet_distance(mu, s1, np.zeros(6), s2) == pytest.approx(closed, rel=1e-9)
    assert fid_from_stats(mu, s1, np.zeros(6), s2) == pytest.approx(closed, rel=1e-9)
    assert fid_from_stats([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(10)
    low = A[:, :2] @ A[:, :2].T  # rank 2 (features from fewer samples than dimensions)
    assert fid_from_stats(mu, low, mu, s2) == pytest.approx(frechet_distance(mu, low, mu, s2), rel=1e-6)
    assert not np.allclose(s1 @ s2, s2 @ s1)  # the general (non-commuting) case
    # and from samples: the plug-in estimate converges to the closed form
    x = rng.multivariate_normal(mu, s1, size=200_000)
    y = rng.multivariate_normal(np.zeros(6), s2, size=200_000)
    assert frechet_distance(*feature_stats(x), *feature_stats(y)) == pytest.approx(closed, rel=0.02)
    assert scipy.linalg.norm(s1) > 0


def test_kid_is_unbiased_for_the_population_mmd():
    """Laws with finite support give the population MMD^2 exactly (all pairs, diagonal included); the mean of
    many KID U-statistics on 6 examples per side matches it within 4 standard errors, where the biased
    V-statistic (diagonal kept) is off by many standard errors; equal laws give mean ~0."""
    rng = np.random.default_rng(1)
    P, Q = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)) + 0.3

    def k(a, b):
        return (a @ b.T / 3 + 1) ** 3

    exact = k(P, P).mean() + k(Q, Q).mean() - 2 * k(P, Q).mean()
    m, reps = 6, 5_000
    xs, ys = P[rng.integers(0, 4, (reps, m))], Q[rng.integers(0, 5, (reps, m))]
    u = np.array([mmd2_poly_unbiased(x, y) for x, y in zip(xs, ys, strict=True)])
    v = np.array([k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean() for x, y in zip(xs, ys, strict=True)])
    se = u.std() / math.sqrt(reps)
    assert abs(u.mean() - exact) < 4 * se
    assert abs(v.mean() - exact) > 10 * se
    same = np.array([mmd2_poly_unbiased(P[rng.integers(0, 4, m)], P[rng.integers(0, 4, m)]) for _ in range(reps)])
    assert abs(same.mean()) < 4 * same.std() / math.sqrt(reps)
    mean, std = kid(rng.normal(size=(300, 8)), rng.normal(size=(300, 8)), subsets=20, subset_size=100)
    assert abs(mean) < 3 * std and std > 0


def test_cli_evaluate_with_inception_weights(weights, tmp_path, capsys):
    """`scorelab evaluate --inception-weights`: uint8 .npz samples against a folder of PNGs, saved reference
    statistics give the same FID, and a missing weights file is a one-line error (exit 2) naming the source."""
    import json

    from PIL import Image

    from scorelab.cli.main import main

    g = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", x=g.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8))
    (tmp_path / "ref").mkdir()
    for i in range(4):
        Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "ref" / f"{i}.png")
    base = ["evaluate", "--samples", str(tmp_path / "s.npz"), "--inception-weights", str(weights), "--batch-size",
            "4"]
    assert main([*base, "--reference", str(tmp_path / "ref"), "--save-reference-stats", str(tmp_path / "st.npz")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep) >= {"fid_inception", "kid_inception", "precision_inception", "recall_inception"}
    assert rep["fid_inception"] > 0 and rep["n_samples"] == 4 and rep["n_reference"] == 4
    assert main([*base, "--reference", str(tmp_path / "st.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["fid_inception"] == pytest.approx(rep["fid_inception"], rel=1e-6)
    assert main(["evaluate", "--samples", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "ref"),
                 "--inception-weights", str(tmp_path / "none.safetensors")]) == 2
    assert "pt_inception-2015-12-05" in capsys.readouterr().err
