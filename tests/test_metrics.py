"""Metrics against closed forms: W2 / sliced W2 of shifts, 1-D quantile matching, unbiased MMD^2 vs. its Gaussian
closed form, Frechet distance of Gaussians, precision/recall and mode statistics on known mixtures, FID-digits."""
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.data import toy2d
from scorelab.data.images import digits_split, load_digits
from scorelab.evaluation import metrics as M

# -- exact W2 ----------------------------------------------------------------------------------------------------


def test_w2_of_translation_is_shift_norm(gen):
    x = torch.randn(300, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
    v = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    assert M.w2_exact(x, x + v) == pytest.approx(v.norm().item(), rel=1e-9)
    assert M.w2_exact(x.numpy(), x.numpy()) == pytest.approx(0.0, abs=1e-6)  # sqrt of a round-off-sized cost


def test_w2_1d_equals_sorted_matching(gen):
    x = torch.randn(200, generator=gen, dtype=torch.float64)
    y = torch.rand(200, generator=gen, dtype=torch.float64) * 3
    expected = math.sqrt(((torch.sort(x).values - torch.sort(y).values) ** 2).mean().item())
    assert M.w2_exact(x[:, None], y[:, None]) == pytest.approx(expected, rel=1e-9)


def _w2_1d_quantile(x: np.ndarray, y: np.ndarray) -> float:
    """W2 in 1-D from the quantile functions: int_0^1 (F^-1(u) - G^-1(u))^2 du, piecewise constant."""
    xs, ys = np.sort(x), np.sort(y)
    cuts = np.union1d(np.arange(len(xs) + 1) / len(xs), np.arange(len(ys) + 1) / len(ys))
    mid = 0.5 * (cuts[1:] + cuts[:-1])
    qx, qy = xs[np.floor(mid * len(xs)).astype(int)], ys[np.floor(mid * len(ys)).astype(int)]
    return math.sqrt(np.sum(np.diff(cuts) * (qx - qy) ** 2))


def test_w2_unequal_sizes_matches_quantile_formula(gen):
    x = torch.randn(7, generator=gen, dtype=torch.float64)
    y = torch.randn(11, generator=gen, dtype=torch.float64) + 1.0
    assert M.w2_exact(x[:, None], y[:, None]) == pytest.approx(_w2_1d_quantile(x.numpy(), y.numpy()), rel=1e-9)


def test_w2_guards_size_and_dims(gen):
    x = torch.randn(30, 2, generator=gen)
    with pytest.raises(ValueError, match="max_size=20.*subsample"):
        M.w2_exact(x, x, max_size=20)
    with pytest.raises(ValueError, match="same dimension"):
        M.w2_exact(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        M.w2_exact(x, torch.full((3, 2), float("nan")))
    assert M.subsample(x, 10, seed=1).shape == (10, 2) and torch.equal(M.subsample(x, 10, 1), M.subsample(x, 10, 1))


# -- sliced W2 ---------------------------------------------------------------------------------------------------


def test_sliced_w2_of_shift_is_norm_over_sqrt_d(gen):
    # per direction theta the projected clouds differ by the shift theta.v, so SW2^2 = mean (theta.v)^2 -> |v|^2 / d.
    # Monte Carlo: (theta.v)^2 / (|v|^2/d) has std sqrt(d^2 E theta_1^4 - 1) = sqrt(3d/(d+2) - 1) (d=4: 1.0)
    d, P = 4, 4000
    x = torch.randn(200, d, generator=gen, dtype=torch.float64)
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    sw = M.sliced_w2(x, x + v, n_projections=P, seed=0)
    rel_sd_sq = math.sqrt(3 * d / (d + 2) - 1) / math.sqrt(P)
    assert sw**2 == pytest.approx(v.norm().item() ** 2 / d, rel=4 * rel_sd_sq)
    assert sw == M.sliced_w2(x, x + v, n_projections=P, seed=0)  # fixed projection seed
    assert M.sliced_w2(x, x, n_projections=50) == pytest.approx(0.0, abs=1e-12)


def test_sliced_w2_in_one_dimension_is_exact_w2(gen):
    x, y = torch.randn(100, 1, generator=gen, dtype=torch.float64), torch.rand(100, 1, generator=gen)
    assert M.sliced_w2(x, y, n_projections=3) == pytest.approx(M.w2_exact(x, y), rel=1e-9)


def test_sliced_w2_noise_floor_shrinks_with_n():
    def swiss(n, g):
        return toy2d.swiss_roll(n, g)

    small = M.sliced_w2_noise_floor(swiss, 100, n_repeats=4, n_projections=200)
    large = M.sliced_w2_noise_floor(swiss, 1600, n_repeats=4, n_projections=200)
    assert set(small) == {"mean", "std", "values"} and len(small["values"]) == 4
    assert 0 < large["mean"] < small["mean"] / 2  # ~ n^{-1/2}: ratio ~ 4 expected
    mix = toy2d.eight_gaussians_mixture()
    assert M.sliced_w2_noise_floor(mix, 200, n_repeats=2)["mean"] > 0


# -- MMD ---------------------------------------------------------------------------------------------------------


def test_mmd2_unbiased_hand_computed():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    e = math.exp
    expected = e(-0.5) + e(-2) - (1 + e(-2) + 2 * e(-0.5)) / 2
    assert M.mmd2_unbiased(x, y, bandwidth=1.0) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.6])
def test_mmd2_unbiased_mean_matches_gaussian_closed_form(gen, shift):
    # N(0, I_d) vs N(m, I_d), kernel bandwidth h: MMD^2 = 2 (h^2/(h^2+2))^{d/2} (1 - exp(-|m|^2 / (2 (h^2+2))))
    d, h, n, reps = 2, 1.5, 60, 300
    m = torch.tensor([shift, 0.0], dtype=torch.float64)
    c = (h**2 / (h**2 + 2)) ** (d / 2)
    truth = 2 * c * (1 - math.exp(-shift**2 / (2 * (h**2 + 2))))
    vals = np.array([M.mmd2_unbiased(torch.randn(n, d, generator=gen, dtype=torch.float64),
                                     torch.randn(n, d, generator=gen, dtype=torch.float64) + m, bandwidth=h)
                     for _ in range(reps)])
    se = vals.std(ddof=1) / math.sqrt(reps)
    assert abs(vals.mean() - truth) < 4 * se
    if shift > 0:
        assert vals.mean() > 10 * se  # clearly positive for different distributions


def test_mmd2_median_heuristic_separates(gen):
    x = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    # pairwise differences ~ N(0, 2 I_2): |Z|^2 / 2 ~ chi^2_2 with median 2 ln 2, so the median |Z| = sqrt(4 ln 2)
    assert M.median_bandwidth(x, y) == pytest.approx(math.sqrt(4 * math.log(2)), rel=0.05)
    assert abs(M.mmd2_unbiased(x, y)) < 0.01 < M.mmd2_unbiased(x, y + 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        M.mmd2_unbiased(x[:1], y)
    with pytest.raises(ValueError, match="bandwidth"):
        M.mmd2_unbiased(x, y, bandwidth=0.0)


# -- MMD to an exact mixture --------------------------------------------------------------------------------------
def _mix3(gen) -> GaussianMixture:
    A = 0.4 * torch.randn(3, 3, 3, generator=gen, dtype=torch.float64)
    return GaussianMixture([0.2, 0.5, 0.3], torch.randn(3, 3, generator=gen, dtype=torch.float64),
                           A @ A.mT + 0.1 * torch.eye(3, dtype=torch.float64))


def test_characteristic_function_matches_monte_carlo(gen):
    gm, n = _mix3(gen), 200_000
    omega = 0.7 * torch.randn(50, 3, generator=gen, dtype=torch.float64)
    x = gm.sample(n, gen)
    ecf = torch.exp(1j * (x @ omega.T)).mean(0)
    assert gm.characteristic_function(torch.zeros(1, 3)).item() == pytest.approx(1.0, abs=1e-15)
    assert (ecf - gm.characteristic_function(omega)).abs().max() < 5 / math.sqrt(n)  # each part has se <= 1/sqrt(2n)
    with pytest.raises(ValueError, match=r"\[M, d\] with d=3"):
        gm.characteristic_function(torch.zeros(4, 2))


def test_mmd2_to_mixture_is_the_u_statistic_and_exact_for_a_point_mass(gen):
    gm = _mix3(gen)
    omega, hs = M.mixture_frequencies(gm, n_per_bandwidth=64)
    q = gm.characteristic_function(omega)
    x = gm.sample(7, gen)
    diff = (x[:, None, :] - x[None, :, :]) @ omega.T  # [7, 7, M]
    off = ~torch.eye(7, dtype=torch.bool)
    u = torch.cos(diff)[off].mean(0)  # mean_{i != j} cos(omega^T (x_i - x_j))
    cross = torch.exp(1j * (x @ omega.T)).mean(0)
    explicit = (u - 2 * (cross * q.conj()).real + q.abs() ** 2).mean()
    assert M.mmd2_to_mixture(x, gm, omega) == pytest.approx(float(explicit), rel=1e-10)
    a = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)  # all samples at a: |phi_P|^2 = 1 exactly
    truth = (torch.exp(1j * (omega @ a)) - q).abs().pow(2).mean()
    assert M.mmd2_to_mixture(a.expand(5, 3), gm, omega, chunk=2) == pytest.approx(float(truth), rel=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_mmd2_to_mixture_is_unbiased(gen, shift):
    # samples of Q' = Q shifted by `shift`: E estimate = mean_m |phi_Q' - phi_Q|^2 (closed form) at n = 20, 0 for Q
    gm = _mix3(gen)
    moved = GaussianMixture(gm.weights, gm.means + shift, gm.covs)
    omega, _ = M.mixture_frequencies(gm, n_per_bandwidth=32)
    truth = float((moved.characteristic_function(omega) - gm.characteristic_function(omega)).abs().pow(2).mean())
    vals = np.array([M.mmd2_to_mixture(moved.sample(20, gen), gm, omega) for _ in range(400)])
    se = vals.std(ddof=1) / math.sqrt(len(vals))
    assert abs(vals.mean() - truth) < 4 * se
    if shift > 0:
        assert truth > 10 * se
    else:  # the plug-in |phi_hat - phi_Q|^2 would be biased up by (1 - |phi_Q|^2) / n
        bias = float((1 - gm.characteristic_function(omega).abs() ** 2).mean() / 20)
        assert bias > 10 * se


def test_mixture_frequencies_bandwidths_and_guards(gen):
    gm = GaussianMixture([1.0], torch.zeros(1, 4), 1.0)  # N(0, I_4): sqrt(tr Cov) = 2
    omega, hs = M.mixture_frequencies(gm, n_per_bandwidth=20_000, seed=3)
    assert hs == pytest.approx([2 / 16, 2 / 8, 2 / 4, 2 / 2])
    assert omega.shape == (80_000, 4)
    for k, h in enumerate(hs):  # omega ~ N(0, I / h^2) in block k
        assert float(omega[k * 20_000:(k + 1) * 20_000].std()) * h == pytest.approx(1.0, abs=0.01)
    x = gm.sample(300, torch.Generator().manual_seed(1))
    rep = M.mmd2_to_mixture_by_bandwidth(x, gm, n_per_bandwidth=16, seed=3)
    small, hs2 = M.mixture_frequencies(gm, n_per_bandwidth=16, seed=3)
    assert rep["bandwidths"] == hs2 == hs and list(rep["per_bandwidth"]) == hs
    assert rep["mmd2"] == pytest.approx(M.mmd2_to_mixture(x, gm, small), rel=1e-12)  # equal blocks: mean = whole
    with pytest.raises(ValueError, match="positive scales"):
        M.mixture_frequencies(gm, scales=(0.5, -1.0))
    with pytest.raises(ValueError, match="at least 2"):
        M.mmd2_to_mixture(torch.zeros(1, 4), gm, omega)
    with pytest.raises(ValueError, match="d=4 columns"):
        M.mmd2_to_mixture(torch.zeros(5, 3), gm, omega)


# -- mode statistics ---------------------------------------------------------------------------------------------


def test_mode_stats_on_exact_samples(gen):
    mix = toy2d.eight_gaussians_mixture()
    x = mix.sample(4000, generator=gen)
    st = M.mode_stats(x, mix)
    assert st["coverage"] == 1.0 and st["n_covered"] == 8
    assert st["tv"] < 0.04  # multinomial fluctuation: E tv ~ 0.017 at n=4000
    assert st["outlier_fraction"] < 0.005  # expected 1 - 0.999
    assert st["weights"].sum() == pytest.approx(1.0)
    same = M.mode_stats(x, mix.means, std=0.1)  # equal weights, isotropic: same assignment
    assert np.array_equal(same["assignment"], st["assignment"])


def test_mode_stats_reports_missing_mode_and_outliers(gen):
    full = toy2d.twenty_five_gaussians_mixture()
    w = torch.ones(25, dtype=torch.float64)
    w[7] = 0.0
    missing = GaussianMixture(w, full.means, 0.05**2)
    x = missing.sample(5000, generator=gen)
    st = M.mode_stats(x, full)
    assert not st["covered"][7] and st["covered"].sum() == 24 and st["coverage"] == pytest.approx(24 / 25)
    assert st["tv"] == pytest.approx(1 / 25, abs=0.03)
    far = torch.full((500, 2), 10.0, dtype=torch.float64)
    st = M.mode_stats(torch.cat([x, far]), full)
    assert st["outlier_fraction"] == pytest.approx(500 / 5500, abs=0.005)
    assert (st["assignment"][-500:] == -1).all()
    with pytest.raises(ValueError, match="std"):
        M.mode_stats(x, full.means)


# -- precision / recall ------------------------------------------------------------------------------------------


def test_precision_recall_same_shifted_and_dropped_modes(gen):
    r = torch.randn(800, 4, generator=gen, dtype=torch.float64)
    f = torch.randn(800, 4, generator=gen, dtype=torch.float64)
    same = M.precision_recall(r, f)
    assert same["precision"] > 0.9 and same["recall"] > 0.9
    far = M.precision_recall(r, f + 6.0)
    assert far["precision"] < 0.02 and far["recall"] < 0.02
    mix = toy2d.eight_gaussians_mixture()
    real = mix.sample(1600, generator=gen)
    fake, k = mix.sample(3200, generator=gen, return_labels=True)
    # fake covers 4 of 8 modes: precision ~1, recall ~1/2
    half = M.precision_recall(real, fake[k < 4], per_example=True)
    assert half["precision"] > 0.95 and half["recall"] == pytest.approx(0.5, abs=0.06)
    assert half["fake_in_real"].shape == ((k < 4).sum().item(),) and half["real_in_fake"].shape == (1600,)
    assert half["precision"] == pytest.approx(half["fake_in_real"].mean()) and set(same) == {"precision", "recall"}


# -- Frechet distance --------------------------------------------------------------------------------------------


def test_frechet_distance_commuting_covariances():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = Q @ np.diag(a) @ Q.T, Q @ np.diag(b) @ Q.T  # same eigenvectors: commute
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert M.frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(4.0 + 1.0)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_general_covariances():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = A @ A.T + 0.1 * np.eye(4), B @ B.T + 0.1 * np.eye(4)
    r1 = scipy.linalg.sqrtm(s1).real
    expected = np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1).real)  # symmetric form of the W2 formula
    assert M.frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="means"):
        M.frechet_distance(np.zeros(3), s1, np.zeros(4), s2)


def test_fid_from_features_converges_to_closed_form(gen):
    n = 20000
    f1 = torch.randn(n, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    f2 = torch.randn(n, 3, generator=gen, dtype=torch.float64) + 1.0
    expected = 3.0 + (1 - 1) ** 2 + (2 - 1) ** 2 + (0.5 - 1) ** 2
    assert M.fid_from_features(f1, f2) == pytest.approx(expected, abs=0.1)
    assert M.fid(f1, f2, feature_fn=lambda z: z, batch_size=3000) == pytest.approx(M.fid_from_features(f1, f2))


# -- importance sampling -----------------------------------------------------------------------------------------


def test_ess_and_log_z():
    assert M.effective_sample_size(torch.zeros(50)) == pytest.approx(50.0)
    assert M.effective_sample_size(torch.tensor([0.0, -1e4, -1e4])) == pytest.approx(1.0)
    lw = torch.log(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert M.effective_sample_size(lw + 700.0) == pytest.approx(36 / 14)  # log-space: no overflow
    assert M.log_z_estimate(lw + 700.0) == pytest.approx(math.log(2.0) + 700.0)
    with pytest.raises(ValueError, match="log_w"):
        M.log_z_estimate(torch.tensor([]))


# -- FID-digits --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("scorelab_cache")
    M.digits_classifier(cache_dir=d)  # trains (a few seconds) and caches
    return d


def test_digits_classifier_accuracy_and_cache(digits_cache):
    net = M.digits_classifier(cache_dir=digits_cache)
    assert net.meta["heldout_accuracy"] >= 0.95
    _, _, xte, yte = digits_split(0.2, seed=0)
    assert M.digits_accuracy(xte, yte, cache_dir=digits_cache) == pytest.approx(net.meta["heldout_accuracy"])
    files = sorted(p.name for p in digits_cache.iterdir())
    v = M.DIGITS_CLASSIFIER_VERSION
    assert files == [f"digits_classifier_v{v}_seed0.json", f"digits_classifier_v{v}_seed0.safetensors"]
    meta = json.loads((digits_cache / files[0]).read_text())
    assert meta["heldout_accuracy"] == net.meta["heldout_accuracy"]
    M._CLASSIFIERS.clear()  # reload from disk (safetensors, no retraining): identical features
    again = M.digits_classifier(cache_dir=digits_cache)
    assert again is not net
    assert torch.equal(again.features(xte[:20]), net.features(xte[:20]))


def test_digits_classifier_is_deterministic(digits_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path))
    assert M._cache_dir(None) == tmp_path
    fresh = M.digits_classifier(retrain=True)  # trains again from seed 0 into $SCORELAB_CACHE
    cached = M.digits_classifier(cache_dir=digits_cache)
    for (k, a), (_, b) in zip(fresh.state_dict().items(), cached.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert (tmp_path / f"digits_classifier_v{M.DIGITS_CLASSIFIER_VERSION}_seed0.safetensors").exists()


def test_fid_digits_orders_real_and_noise(digits_cache):
    xtr, _, xte, _ = digits_split(0.2, seed=0)
    f = M.digits_features(xte, cache_dir=digits_cache)
    assert f.shape == (xte.shape[0], 64)
    real = M.fid_digits(xte, xtr, cache_dir=digits_cache)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(xte.shape, generator=g) * 2 - 1
    blurred = 0.5 * xte + 0.5 * xte.roll(1, dims=-1)
    assert M.fid_digits(xtr, xtr, cache_dir=digits_cache) == pytest.approx(0.0, abs=1e-6)
    assert real < M.fid_digits(blurred, xtr, cache_dir=digits_cache) < M.fid_digits(noise, xtr,
                                                                                      cache_dir=digits_cache)
    hist = M.digits_class_histogram(load_digits()[0], cache_dir=digits_cache)
    assert hist["tv_uniform"] < 0.05 and hist["histogram"].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        M.digits_features(torch.zeros(3, 1, 4, 4), cache_dir=digits_cache)
