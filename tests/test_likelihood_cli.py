"""`scorelab likelihood`: the ODE log-likelihood of an exact Gaussian-mixture model matches the closed form, Hutchinson
is unbiased within its error bar, and a checkpoint + sample file gives what the library gives."""
import json

import numpy as np
import pytest
import torch

from scorelab.cli import main
from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import VP
from scorelab.evaluation.likelihood import ode_log_likelihood
from scorelab.io.checkpoints import load_model, save_checkpoint
from scorelab.io.loading import oracle_mixture
from scorelab.nets import MLP


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_oracle_exact_divergence_matches_closed_form(capsys):
    code, out, _ = run(capsys, "likelihood", "--model", "gmm:ring8", "--process", "vp", "--n", "64",
                       "--seed", "3")
    assert code == 0
    r = json.loads(out)
    assert r["n"] == 64
    # log p_{t_min} vs the exact log p_0: the t_min = 1e-3 smoothing changes log p by << 1e-2 nats here
    assert abs(r["mean_log_likelihood"] - r["exact_mean_log_likelihood"]) < 5e-3
    assert r["nll_nats_per_dim"] == pytest.approx(-r["mean_log_likelihood"] / 2, rel=1e-12)
    assert "bits_per_dim" not in r  # bits/dim of 8-bit data only makes sense for images
    # the evaluated points are the oracle's own draws with the given seed
    x = oracle_mixture("gmm:ring8").sample(64, torch.Generator().manual_seed(3)).double()
    exact = oracle_mixture("gmm:ring8").log_prob(x)
    assert r["exact_mean_log_likelihood"] == pytest.approx(float(exact.mean()), rel=1e-10)


def test_oracle_hutchinson_is_unbiased_within_its_error_bar(capsys):
    code, out, _ = run(capsys, "likelihood", "--model", "gmm:ring8", "--process", "vp", "--n", "200",
                       "--divergence", "hutchinson", "--rtol", "1e-4", "--atol", "1e-4")
    assert code == 0
    r = json.loads(out)
    assert abs(r["mean_log_likelihood"] - r["exact_mean_log_likelihood"]) < 4 * r["std_error"]


def test_checkpoint_and_sample_file_agree_with_the_library(capsys, tmp_path):
    torch.manual_seed(0)
    model = NetworkModel(MLP(2, width=32, depth=2), VP(), "eps")
    save_checkpoint(tmp_path / "ckpt", model, ema_model=model, event_shape=(2,))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", x.numpy())
    code, out, _ = run(capsys, "likelihood", "--checkpoint", str(tmp_path / "ckpt.json"), "--samples",
                       str(tmp_path / "x.npy"), "--n", "16", "--rtol", "1e-4", "--atol", "1e-4")
    assert code == 0
    r = json.loads(out)
    ref = ode_log_likelihood(load_model(tmp_path / "ckpt.json"), x, rtol=1e-4, atol=1e-4).log_likelihood
    assert r["n"] == 16 and "exact_mean_log_likelihood" not in r
    assert r["mean_log_likelihood"] == pytest.approx(float(ref.mean()), rel=1e-5, abs=1e-5)


def test_checkpoint_without_samples_is_a_clear_error(capsys, tmp_path):
    model = NetworkModel(MLP(2, width=8, depth=1), VP(), "eps")
    save_checkpoint(tmp_path / "ckpt", model, ema_model=model, event_shape=(2,))
    code, _, err = run(capsys, "likelihood", "--checkpoint", str(tmp_path / "ckpt.json"))
    assert code == 2 and "--samples" in err


def test_elbo_flag_gives_bounds_below_the_exact_log_likelihood(capsys):
    code, out, _ = run(capsys, "likelihood", "--model", "gmm:ring8", "--process", "discrete:linear:1000", "--n", "64",
                       "--elbo", "--elbo-samples", "32")
    assert code == 0
    r = json.loads(out)
    exact = r["exact_mean_log_likelihood"]
    assert r["continuous_elbo"] < exact + 3 * r["continuous_elbo_mc_std_error"]
    assert 0 < r["continuous_elbo_mc_std_error"] < 0.5
    # beta_tilde: ~1 nat below log p for this mixture (2000 points: -0.96 +- 0.05); with beta the bound is within
    # its Monte-Carlo noise of log p, so only the key is checked there
    assert r["discrete_elbo"] < exact - 0.3 and r["discrete_elbo_variances"] == "beta_tilde"
    assert abs(r["mean_log_likelihood"] - exact) < 1e-2  # the ODE value is unchanged by --elbo
    code, out, _ = run(capsys, "likelihood", "--model", "gmm:ring8", "--process", "discrete:linear:1000", "--n", "16",
                       "--elbo", "--variances", "beta")
    assert code == 0 and json.loads(out)["discrete_elbo_variances"] == "beta"
    code, out, _ = run(capsys, "likelihood", "--model", "gmm:ring8", "--process", "vp", "--n", "16", "--elbo")
    r = json.loads(out)
    assert code == 0 and "continuous_elbo" in r and "discrete_elbo" not in r  # the DDPM bound needs discrete steps


def test_clip_x0_evaluates_the_clipped_model(capsys, tmp_path):
    """`--clip-x0 LO HI` = the library's ClippedModel; an oracle inside the box is unchanged; bad ranges exit 2."""
    from scorelab.core.denoisers import ClippedModel

    torch.manual_seed(0)
    model = NetworkModel(MLP(2, width=32, depth=2), VP(), "eps")
    save_checkpoint(tmp_path / "ckpt", model, ema_model=model, event_shape=(2,))
    x = torch.rand(16, 2, generator=torch.Generator().manual_seed(1)) - 0.5
    np.save(tmp_path / "x.npy", x.numpy())
    common = ["likelihood", "--checkpoint", str(tmp_path / "ckpt.json"), "--samples", str(tmp_path / "x.npy"),
              "--n", "16", "--rtol", "1e-4", "--atol", "1e-4"]
    code, out, _ = run(capsys, *common, "--clip-x0", "-0.5", "0.5")
    assert code == 0
    ref = ode_log_likelihood(ClippedModel(load_model(tmp_path / "ckpt.json"), (-0.5, 0.5)), x, rtol=1e-4, atol=1e-4)
    raw = ode_log_likelihood(load_model(tmp_path / "ckpt.json"), x, rtol=1e-4, atol=1e-4)
    r = json.loads(out)
    assert r["mean_log_likelihood"] == pytest.approx(float(ref.log_likelihood.mean()), rel=1e-5, abs=1e-5)
    assert abs(r["mean_log_likelihood"] - float(raw.log_likelihood.mean())) > 1e-3  # the clip changed the model
    code, out, _ = run(capsys, "likelihood", "--model", "gmm:ring8", "--process", "vp", "--n", "32",
                       "--clip-x0", "-50", "50")
    r = json.loads(out)
    assert code == 0 and abs(r["mean_log_likelihood"] - r["exact_mean_log_likelihood"]) < 5e-3
    code, _, err = run(capsys, *common, "--clip-x0", "1", "-1")
    assert code == 2 and "data_range" in err
    code, _, err = run(capsys, "sample", "--model", "gmm:ring8", "--sampler", "ddim", "--nfe", "5", "--n", "50",
                       "--clip-x0", "-0.5", "0.5", "--out", str(tmp_path / "s"))
    assert code == 0, err
    # the ring has radius 2; the clipped denoiser keeps DDIM inside the box up to the noise left at t_min
    assert np.abs(np.load(tmp_path / "s" / "samples.npy")).max() < 0.6
