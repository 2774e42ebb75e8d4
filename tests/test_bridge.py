"""Schrödinger bridges (scorelab.bridge) against closed forms: the Gaussian static/dynamic SB (Janati et al. 2020),
entropic OT on samples (POT Sinkhorn), exact Gaussian moments of affine chains, and the exact minimizers of the
mean-matching regression."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli import run_cli  # noqa: E402

from scorelab.bridge import (
    BridgeProblem,
    FitConfig,
    StepAffine,
    affine_chain_moments,
    brownian,
    dsb,
    dsbm,
    gaussian_bridge,
    ou,
    sb_cross_covariance,
    sinkhorn_coupling,
)
from scorelab.bridge.chains import simulate_backward, simulate_forward
from scorelab.bridge.closed_form import relative_error
from scorelab.bridge.dsbm import bridge_samples
from scorelab.bridge.ipf import backward_mean_matching, forward_mean_matching
from scorelab.evaluation.metrics import frechet_distance


def _spd(d: int, seed: int, scale: float = 1.0, floor: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) * scale / d**0.5
    return A @ A.T + floor * torch.eye(d, dtype=torch.float64)


def _gauss(mu: torch.Tensor, S: torch.Tensor):
    L = torch.linalg.cholesky(S).float()
    m = mu.float()
    return lambda n, g: torch.randn(n, S.shape[0], generator=g) @ L.T + m


def _w2(m1, S1, m2, S2) -> float:
    return max(frechet_distance(m1.numpy(), S1.numpy(), m2.numpy(), S2.numpy()), 0.0) ** 0.5


# -- closed forms ------------------------------------------------------------------------------------------------
def test_cross_covariance_1d_formula():
    a, b, s2 = 0.7, 2.3, 0.4
    S0, S1 = torch.tensor([[a]], dtype=torch.float64), torch.tensor([[b]], dtype=torch.float64)
    C = sb_cross_covariance(S0, S1, s2)
    assert C.item() == pytest.approx(0.5 * (np.sqrt(4 * a * b + s2**2) - s2), rel=1e-12)
    assert sb_cross_covariance(S0, S1, 1e-8).item() == pytest.approx(
        np.sqrt(a * b), rel=1e-6)  # sigma -> 0: the OT (monotone) coupling


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_closed_form_is_a_schrodinger_system(d):
    """pi* = f(x0) g(xN) exp(-|xN - A x0|^2 / (2 sigma^2)) iff the joint precision's off-diagonal block is
    -(A / sigma^2) I: a sampling-free check of C = 1/2 (S0^1/2 D S0^-1/2 - sigma^2 I), also for the VP reference."""
    S0, S1 = _spd(d, 1), _spd(d, 2, 2.0)
    for ref in (brownian(0.3, 10), ou(0.8, 10)):
        gb = gaussian_bridge(torch.zeros(d), S0, torch.ones(d), S1, ref)
        P = torch.linalg.inv(gb.joint_covariance())
        A = ref.A(0, ref.n_steps)
        torch.testing.assert_close(P[:d, d:], -A / ref.sigma2 * torch.eye(d, dtype=torch.float64), atol=1e-9,
                                   rtol=1e-9)
        assert torch.linalg.eigvalsh(gb.joint_covariance()).min() > 0


def test_dynamic_marginals_match_the_mixed_reference_bridge():
    d, ref = 2, brownian(0.5, 8)
    gb = gaussian_bridge(torch.zeros(d), _spd(d, 3), torch.ones(d), _spd(d, 4), ref)
    torch.testing.assert_close(gb.marginal(0)[1], gb.S0)
    torch.testing.assert_close(gb.marginal(8)[1], gb.S1)
    g = torch.Generator().manual_seed(0)
    L = torch.linalg.cholesky(gb.joint_covariance())
    n = 200_000
    joint = (torch.randn(n, 2 * d, generator=g, dtype=torch.float64) @ L.T).reshape(n, 2, d)
    joint += torch.stack([gb.mu0, gb.mu1])
    states = bridge_samples(joint, ref, g)
    for k in (2, 4, 6):
        mean, cov = gb.marginal(k)
        assert torch.allclose(states[:, k].mean(0), mean, atol=0.01)
        assert torch.allclose(torch.cov(states[:, k].T), cov, atol=0.015)


def test_sinkhorn_agrees_with_closed_form_within_sampling_error():
    """POT log-domain Sinkhorn at reg = 2 sigma^2 on samples vs the closed form at the samples' covariances; the
    closed form at another sigma^2 is clearly rejected (the test can fail)."""
    d, s2, n = 2, 0.5, 600
    S0, S1 = _spd(d, 5), _spd(d, 6, 2.0)
    errs, errs_wrong = [], []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x0, x1 = _gauss(torch.zeros(d), S0)(n, g).double(), _gauss(torch.ones(d), S1)(n, g).double()
        sk = sinkhorn_coupling(x0, x1, s2)
        S0_hat, S1_hat = torch.cov(x0.T), torch.cov(x1.T)
        errs.append(relative_error(sk.cross_cov, sb_cross_covariance(S0_hat, S1_hat, s2)))
        errs_wrong.append(relative_error(sk.cross_cov, sb_cross_covariance(S0_hat, S1_hat, 2 * s2)))
        assert sk.cost > 0 and abs(sk.plan.sum() - 1) < 1e-6
    assert np.mean(errs) < 0.02, errs  # measured ~0.007 at n = 600
    assert np.mean(errs_wrong) > 3 * np.mean(errs), (errs, errs_wrong)


# -- mean matching -----------------------------------------------------------------------------------------------
def _exact_chain(F: StepAffine, mu: torch.Tensor, S: torch.Tensor, ref):
    """Per-step means and covariances of X_{k+1} = M_k X_k + b_k + sqrt(v_k) Z."""
    means, covs = [mu], [S]
    eye = torch.eye(S.shape[0], dtype=torch.float64)
    for k in range(ref.n_steps):
        M, b = eye + F.W[k].double(), F.b[k].double()
        means.append(M @ means[-1] + b)
        covs.append(M @ covs[-1] @ M.T + float(ref.v[k]) * eye)
    return means, covs


def _random_affine(d: int, N: int, seed: int, scale: float = 0.1) -> StepAffine:
    g = torch.Generator().manual_seed(seed)
    net = StepAffine(d, N)
    with torch.no_grad():
        net.W.copy_(scale * torch.randn(N, d, d, generator=g))
        net.b.copy_(scale * torch.randn(N, d, generator=g))
    return net


def test_mean_matching_recovers_exact_B_and_F():
    """On an exact Gaussian forward chain with affine F, the B-regression minimizer is
    x + M E[X_k | X_{k+1} = x] + b - (M x + b) (DSB eq. 12); the fitted affine B matches it; same for F on a
    backward chain with affine B (eq. 13)."""
    d, N, M = 2, 5, 40_000
    ref = brownian(0.5, N, "uniform")
    mu, S = torch.tensor([0.5, -1.0], dtype=torch.float64), _spd(d, 7)
    eye = torch.eye(d, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for direction in ("backward", "forward"):
        known = _random_affine(d, N, 1)
        if direction == "backward":  # fit B on forward trajectories of `known`
            rows = backward_mean_matching(known, simulate_forward(known, _gauss(mu, S)(M, g), ref, g))
            means, covs = _exact_chain(known, mu, S, ref)
            prev, nxt = range(N), range(1, N + 1)
        else:  # fit F on backward trajectories of `known`, run from X_N
            rows = forward_mean_matching(known, simulate_backward(known, _gauss(mu, S)(M, g), ref, g))
            means, covs = _exact_chain_backward(known, mu, S, ref)
            prev, nxt = range(1, N + 1), range(N)
        fitted = StepAffine(d, N)
        fitted.fit_lstsq(*rows)
        for k, (i, j) in enumerate(zip(prev, nxt, strict=True)):
            Mk = eye + known.W[k].double()
            # the regression target's conditional mean: E[X_i | X_j = x] = G x + h, Cov(X_i, X_j) = S_i M_k^T
            G = covs[i] @ Mk.T @ torch.linalg.inv(covs[j])
            h = means[i] - G @ means[j]
            W_star, b_star = Mk @ G - Mk, Mk @ h  # net(x) - x = M (G x + h) + b - (M x + b)
            torch.testing.assert_close(fitted.W[k].double(), W_star, atol=0.03, rtol=0)
            torch.testing.assert_close(fitted.b[k].double(), b_star, atol=0.03, rtol=0)


def _exact_chain_backward(B: StepAffine, mu, S, ref):
    """Moments of X_N ~ N(mu, S), X_k = M_k X_{k+1} + b_k + noise, indexed by state k (0..N)."""
    means, covs = [None] * (ref.n_steps + 1), [None] * (ref.n_steps + 1)
    means[-1], covs[-1] = mu, S
    eye = torch.eye(S.shape[0], dtype=torch.float64)
    for k in reversed(range(ref.n_steps)):
        M, b = eye + B.W[k].double(), B.b[k].double()
        means[k] = M @ means[k + 1] + b
        covs[k] = M @ covs[k + 1] @ M.T + float(ref.v[k]) * eye
    return means, covs


# -- IPF iteration 1 = the reference's time reversal -------------------------------------------------------------
@pytest.mark.parametrize("solver", ["lstsq", "adam"])
def test_ipf_iteration_1_is_the_reference_time_reversal(solver):
    """For the Brownian reference F^0 = identity, so B^1's regression target is X_k itself: B^1(k, x) must be the
    exact reversal E_p[X_k | X_{k+1} = x] = mu + S_k S_{k+1}^{-1} (x - mu), S_k = S0 + V(0, k) I; run backward from
    the reference's own p_N it reproduces N(mu0, S0) (up to the O(v_k) of Gaussian transitions)."""
    d, N = 2, 10
    ref = brownian(0.5, N)
    mu0, S0 = torch.tensor([0.3, -0.2], dtype=torch.float64), _spd(d, 8)
    eye = torch.eye(d, dtype=torch.float64)
    S_N = S0 + ref.sigma2 * eye
    prob = BridgeProblem(_gauss(mu0, S0), _gauss(mu0, S_N), ref)
    fit = FitConfig(solver=solver, iterations=600, lr=1e-2, batch=1024, cache_size=8192, cache_refresh=100, ema=0.98)
    B = dsb(prob, StepAffine(d, N), StepAffine(d, N), 1, fit, seed=0, progress=False).backward
    tol = 0.02 if solver == "lstsq" else 0.06
    for k in range(N):
        Sk, Sk1 = S0 + ref.V(0, k) * eye, S0 + ref.V(0, k + 1) * eye
        G = Sk @ torch.linalg.inv(Sk1)
        torch.testing.assert_close(B.W[k].double(), G - eye, atol=tol, rtol=0)
        torch.testing.assert_close(B.b[k].double(), mu0 - G @ mu0, atol=tol, rtol=0)
    m, S, _ = affine_chain_moments(B, mu0, S_N, ref, "backward")
    assert _w2(m, S, mu0, S0) < 0.08
    wrong = affine_chain_moments(StepAffine(d, N), mu0, S_N, ref, "backward")  # identity means: no reversal
    assert _w2(wrong[0], wrong[1], mu0, S0) > 0.3


def test_ipf_iteration_1_reverses_the_vp_reference():
    """VP/OU reference: B^1 (mean matching on the reference's own trajectories, F^0_k(x) = a_k x) run backward from
    the reference's p_N = N(A mu0, A^2 S0 + sigma^2 I) returns to N(mu0, S0) up to the O(v_k) of mean matching."""
    d, N = 2, 20
    ref = ou(0.9, N)
    A = ref.A(0, N)
    mu0, S0 = torch.tensor([1.0, -0.5], dtype=torch.float64), _spd(d, 9)
    mu_N, S_N = A * mu0, A * A * S0 + ref.sigma2 * torch.eye(d, dtype=torch.float64)
    prob = BridgeProblem(_gauss(mu0, S0), _gauss(mu_N, S_N), ref)
    B = dsb(prob, StepAffine(d, N), StepAffine(d, N), 1, FitConfig(solver="lstsq", cache_size=8192),
            progress=False).backward
    m, S, _ = affine_chain_moments(B, mu_N, S_N, ref, "backward")
    assert _w2(m, S, mu0, S0) < 0.1
    wrong = affine_chain_moments(StepAffine(d, N), mu_N, S_N, ref, "backward")
    assert _w2(wrong[0], wrong[1], mu0, S0) > 0.5


# -- convergence to the closed-form bridge -----------------------------------------------------------------------
def _run_gaussian(method: str, d: int, iterations: int, s2: float = 1.0, N: int = 20, seed: int = 0):
    mu0, mu1 = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 1, d, dtype=torch.float64)
    S0, S1 = _spd(d, 10 + d), _spd(d, 20 + d, 2.0, 0.3)
    ref = brownian(s2, N)
    gb = gaussian_bridge(mu0, S0, mu1, S1, ref)
    prob = BridgeProblem(_gauss(mu0, S0), _gauss(mu1, S1), ref)

    def measure(n, F, B):
        mF, SF, CF = affine_chain_moments(F, mu0, S0, ref, "forward")
        mB, SB, CB = affine_chain_moments(B, mu1, S1, ref, "backward")
        return {"err_F": relative_error(CF, gb.C), "err_B": relative_error(CB, gb.C),
                "w2_target": _w2(mF, SF, mu1, S1), "w2_source": _w2(mB, SB, mu0, S0)}

    fit = FitConfig(solver="lstsq", cache_size=4096)
    run = dsb if method == "dsb" else dsbm
    hist = run(prob, StepAffine(d, N), StepAffine(d, N), iterations, fit, seed=seed, callback=measure,
               progress=False).history
    # iteration 0: the initial coupling (reference for DSB: Cov = S0; independent for DSBM: Cov = 0)
    err0 = relative_error(S0 if method == "dsb" else torch.zeros(d, d, dtype=torch.float64), gb.C)
    return err0, hist


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_dsb_converges_to_the_closed_form(d):
    """IPF: the forward coupling's cross-covariance approaches C and its time-N marginal the target, iteration by
    iteration (errors are exact moments of the affine chains, no sampling in the measurement)."""
    err0, hist = _run_gaussian("dsb", d, 8)
    errs = [err0] + [h["err_F"] for h in hist]
    w2 = [h["w2_target"] for h in hist]
    assert errs[-1] < 0.12 and errs[-1] < 0.3 * errs[0], errs
    assert w2[-1] < 0.5 * w2[0] and w2[4] < w2[1] < w2[0], w2  # the forward bridge pushes source to target
    assert hist[-1]["w2_source"] < 0.5 and hist[-1]["err_B"] < 0.12, hist[-1]  # the backward: target to source


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_dsbm_converges_to_the_closed_form(d):
    """IMF from the independent coupling (relative error 1): the cross-covariance error falls to the sampling floor,
    and both directions keep their marginals."""
    err0, hist = _run_gaussian("dsbm", d, 6)
    errs = [err0] + [h["err_F"] for h in hist]
    assert errs[-1] < 0.06 and max(errs[1:]) < errs[0], errs
    assert np.mean(errs[4:]) <= np.mean(errs[1:3]) + 0.01, errs
    assert max(h["w2_target"] for h in hist) < 0.3 and hist[-1]["w2_source"] < 0.3, hist
    assert hist[-1]["err_B"] < 0.06, hist[-1]


# -- CLI ---------------------------------------------------------------------------------------------------------
def _cli(capsys, *args):
    return run_cli(capsys, list(args))


def test_cli_bad_input_exits_2_with_one_line(capsys, tmp_path):
    np.save(tmp_path / "d3.npy", np.zeros((50, 3), np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 2), np.float32))
    bad = np.zeros((50, 2), np.float32)
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    base = ["bridge", "--out", str(tmp_path / "o")]
    cases = [(["--source", "moons", "--target", str(tmp_path / "d3.npy"), "--reference-variance", "1"], "dimension"),
             (["--source", str(tmp_path / "empty.npy"), "--target", "gauss", "--reference-variance", "1"], "row"),
             (["--source", str(tmp_path / "nan.npy"), "--target", "gauss", "--reference-variance", "1"], "NaN"),
             (["--source", "moons", "--target", "gauss", "--reference-variance", "0"], "reference-variance"),
             (["--source", "moons", "--target", "gauss", "--reference-variance", "-1"], "reference-variance"),
             (["--source", "moons", "--target", "gauss", "--reference-variance", "nan"], "reference-variance"),
             (["--source", "gauss", "--target", "gauss", "--reference-variance", "1"], "gauss"),
             (["--source", "moons", "--target", "gauss", "--reference-variance", "1.5", "--reference", "vp"], "(0, 1)")]
    for args, word in cases:
        code, out, err = _cli(capsys, *base, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and word in err, (args, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_writes_pairs_samples_checkpoint_report(capsys, tmp_path):
    """A tiny affine DSBM run N(0, I) -> a shifted, stretched 2-D Gaussian file: the files exist with the promised
    shapes, and the pushed marginal is the target's (means and variances)."""
    g = np.random.default_rng(0)
    tgt = (g.standard_normal((3000, 2)) * [0.5, 1.5] + [2.0, -1.0]).astype(np.float32)
    np.save(tmp_path / "tgt.npy", tgt)
    code, out, err = _cli(capsys, "bridge", "--source", "gauss", "--target", str(tmp_path / "tgt.npy"),
                          "--reference-variance", "0.5", "--method", "dsbm", "--iterations", "2", "--steps", "10",
                          "--n", "3000", "--set", "net=affine", "eval_n=300", "--out", str(tmp_path / "run"))
    assert code == 0, err
    run = tmp_path / "run"
    pairs = np.load(run / "pairs.npy")
    assert pairs.shape == (3000, 2, 2)
    assert np.load(run / "samples_backward.npy").shape == (3000, 2)
    np.testing.assert_allclose(pairs[:, 1].mean(0), [2.0, -1.0], atol=0.1)
    np.testing.assert_allclose(pairs[:, 1].std(0), [0.5, 1.5], rtol=0.1)
    report = json.loads((run / "report.json").read_text())
    assert report["w2_pushed_to_target"] < 3 * report["w2_floor"] + 0.05
    assert report["transport_cost"] == pytest.approx(report["sinkhorn_cost"], rel=0.15)
    assert (run / "coupling.png").exists() and (run / "bridge.safetensors").exists()
    assert len(report["history"]) == 2
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["method"] == "dsbm" and "bridge" in prov["argv"]
    code, _, err = _cli(capsys, "bridge", "--source", "gauss", "--target", str(tmp_path / "tgt.npy"),
                        "--reference-variance", "0.5", "--out", str(run))
    assert code == 2 and "already holds files" in err  # an earlier run is never overwritten
