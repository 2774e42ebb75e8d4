"""Rejection with the exact density ratio of two Gaussian mixtures: exact rejection recovers the target's mode
weights at rate 1/M, Azadi's gamma-shifted acceptance, Verine's budgeted rule hits rate 1/K."""
import json
import math

import numpy as np
import pytest
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import VP
from scorelab.evaluation.metrics import mode_stats
from scorelab.guidance.discriminator import make_discriminator, save_discriminator
from scorelab.guidance.rejection import (
    RejectConfig,
    budget_log_c,
    calibrate,
    drs_gamma_for_quantile,
    drs_log_acceptance,
    reject_to_folder,
    rejection_sample,
    sample_with_rejection,
)
from scorelab.io import checkpoints as ckpts
from scorelab.nets import MLP

F64 = torch.float64
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=F64)
W_TARGET, W_MODEL = torch.tensor([1 / 3] * 3, dtype=F64), torch.tensor([0.6, 0.35, 0.05], dtype=F64)
P, PT = GaussianMixture(W_TARGET, MEANS, 0.15), GaussianMixture(W_MODEL, MEANS, 0.15)
LOG_M = math.log(float((W_TARGET / W_MODEL).max()))  # sup p/p~ = max_k w_k / w~_k (same components)


def log_ratio(x):
    return P.log_prob(x) - PT.log_prob(x)


def proposals(n, seed):
    return PT.sample(n, torch.Generator().manual_seed(seed))


def test_exact_rejection_recovers_target_weights():
    x = proposals(60000, 0)
    log_r = log_ratio(x)
    assert float(log_r.max()) <= LOG_M + 1e-9
    res = rejection_sample(log_r, "exact", log_M=LOG_M, generator=torch.Generator().manual_seed(1))
    rate = 1 / math.exp(LOG_M)  # E_P~[r / M] = 1 / M
    se = math.sqrt(rate * (1 - rate) / len(x))
    assert abs(res.acceptance_rate - rate) < 4 * se and abs(res.expected_rate - rate) < 4 * se
    stats = mode_stats(x[res.accepted], P)
    assert stats["tv"] < 0.02, stats["tv"]
    assert mode_stats(x, P)["tv"] > 0.25  # the proposals are far from P


def test_drs_gamma_shift():
    log_r = log_ratio(proposals(5000, 2))
    r, M = log_r.exp(), math.exp(LOG_M)
    for gamma in (-3.0, -0.5, 0.0, 1.0):  # eq. 2.28 written directly
        want = r / (r * (1 - math.exp(gamma)) + math.exp(gamma) * M)
        torch.testing.assert_close(drs_log_acceptance(log_r, LOG_M, gamma).exp(), want, rtol=1e-10, atol=1e-12)
    # Azadi et al.: a = sigmoid(F), F = log(r/M) - log(1 - r/M) - gamma
    l = log_r - LOG_M
    azadi = torch.sigmoid(l - torch.log1p(-l.exp()) - 0.7)
    torch.testing.assert_close(drs_log_acceptance(log_r, LOG_M, 0.7).exp(), azadi)
    torch.testing.assert_close(drs_log_acceptance(log_r, LOG_M, 0.0).exp(), r / M)  # gamma = 0: exact rejection
    assert torch.allclose(drs_log_acceptance(log_r, LOG_M, -60.0).exp(), torch.ones_like(r))  # accepts everything
    rates = [float(drs_log_acceptance(log_r, LOG_M, gm).exp().mean()) for gm in (-4.0, -2.0, 0.0, 2.0)]
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))  # lower gamma, higher acceptance
    smooth = torch.randn(4000, generator=torch.Generator().manual_seed(9), dtype=F64)  # a continuous log-ratio
    gamma_q = drs_gamma_for_quantile(smooth, float(smooth.max()) + 0.1, 0.9)  # 10% of the proposals get a > 1/2
    frac = float((drs_log_acceptance(smooth, float(smooth.max()) + 0.1, gamma_q).exp() > 0.5).double().mean())
    assert abs(frac - 0.1) < 2e-3
    res = rejection_sample(log_r, "drs", gamma=-1.0, generator=torch.Generator().manual_seed(0))
    assert res.log_M == float(log_r.max()) and res.gamma == -1.0  # M estimated from the batch by default


@pytest.mark.parametrize("K", [1.5, 3.0, 6.0])
def test_budgeted_rejection_hits_rate(K):
    x = proposals(40000, 3)
    log_r = log_ratio(x)
    res = rejection_sample(log_r, "budget", K=K, log_M=LOG_M, generator=torch.Generator().manual_seed(4))
    assert abs(res.expected_rate - 1 / K) < 1e-9  # c_K found by bisection
    assert abs(res.acceptance_rate - 1 / K) < 4 * math.sqrt((1 / K) * (1 - 1 / K) / len(x))
    a = torch.minimum(log_r.exp() * math.exp(res.log_c) / math.exp(LOG_M), torch.ones(()))  # eq. 2.29
    torch.testing.assert_close(res.acceptance_prob, a)


def test_budget_interpolates_between_model_and_target():
    x = proposals(40000, 5)
    log_r = log_ratio(x)
    M = math.exp(LOG_M)
    tvs = []
    for K in (1.0, 1.5, 3.0, M):
        res = rejection_sample(log_r, "budget", K=K, log_M=LOG_M, generator=torch.Generator().manual_seed(6))
        tvs.append(mode_stats(x[res.accepted], P)["tv"])
        if K == M:  # budget = M: no acceptance saturates, c_K = 1 up to Monte-Carlo error, exact rejection
            assert abs(math.exp(res.log_c) - 1) < 0.03
    assert all(a > b for a, b in zip(tvs, tvs[1:], strict=False)), tvs  # more budget, closer to P
    assert tvs[0] > 0.25 and tvs[-1] < 0.02
    assert budget_log_c(log_r, 1.0) == math.inf


def test_sequential_rejection_and_bad_input():
    g = torch.Generator().manual_seed(7)
    x, info = sample_with_rejection(lambda m: PT.sample(m, g), log_ratio, 3000, "budget", K=4.0, batch_size=2000,
                                    generator=g)
    assert x.shape == (3000, 2) and info["complete"]
    assert abs(info["acceptance_rate"] - 0.25) < 0.03 and info["n_proposals"] >= 3000 * 3
    x, info = sample_with_rejection(lambda m: PT.sample(m, g), log_ratio, 3000, "exact", batch_size=500,
                                    max_proposals=1000, generator=g)
    assert not info["complete"] and info["n_proposals"] == 1000 and x.shape[0] < 3000
    with pytest.raises(ValueError, match="K must be >= 1"):
        calibrate(log_ratio(proposals(10, 8)), "budget", K=0.5)
    with pytest.raises(ValueError, match="needs the budget K"):
        calibrate(log_ratio(proposals(10, 8)), "budget")
    with pytest.raises(ValueError, match="unknown rejection method"):
        calibrate(log_ratio(proposals(10, 8)), "metropolis")
    with pytest.raises(ValueError, match="NaN"):
        rejection_sample(torch.tensor([0.0, float("nan")]), "exact")
    with pytest.raises(ValueError, match="cannot be reached"):  # half the proposals have r = 0: rate 0.9 impossible
        budget_log_c(torch.tensor([0.0, -math.inf]), K=1 / 0.9)


def test_reject_cli(tmp_path):
    torch.manual_seed(0)
    process = VP()
    ckpts.save_checkpoint(tmp_path / "ckpt", NetworkModel(MLP(2, width=16, depth=1), process), step=1)
    save_discriminator(tmp_path / "disc", make_discriminator((2,), process, width=16, depth=1))
    cfg = RejectConfig(n=100, method="budget", K=2.0, sampler="euler", nfe=8, batch_size=200)
    with pytest.warns(UserWarning, match="no EMA"):
        report = reject_to_folder(cfg, tmp_path / "ckpt", tmp_path / "disc", tmp_path / "out")
    samples = np.load(tmp_path / "out" / "samples.npy")
    assert samples.shape == (100, 2) and report["complete"]
    saved = json.loads((tmp_path / "out" / "reject.json").read_text())
    assert saved["method"] == "budget" and saved["K"] == 2.0 and 0 < saved["acceptance_rate"] <= 1
    with pytest.raises(ValueError, match="K >= 1"):
        RejectConfig(method="budget", K=None)
