"""Shared oracles for the sampler tests: a three-mode mixture, log-SNR grids, priors, sliced W2."""
import ot
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.core.denoisers import DiffusionModel

F64 = torch.float64


def mixture():
    """Three unequal, well separated modes (weights 0.5, 0.3, 0.2)."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=F64)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, torch.tensor([0.1, 0.05, 0.15]))


def lam_grid(p, n, t0=None, t1=None):
    """Grid uniform in log-SNR from t0 (default t_max) to t1 (default t_min)."""
    t0 = p.t_max if t0 is None else t0
    t1 = p.t_min if t1 is None else t1
    lam0, lam1 = (float(p.log_snr(torch.tensor(v, dtype=F64))) for v in (t0, t1))
    ts = p.t_from_log_snr(torch.linspace(lam0, lam1, n + 1, dtype=F64))
    ts[0], ts[-1] = t0, t1
    return ts


def prior(p, b, seed, d=2):
    return p.prior_sample((b, d), generator=torch.Generator().manual_seed(seed), dtype=F64)


def sliced_w2(x, y):
    return float(ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), n_projections=200, seed=0))


class EpsOnly(DiffusionModel):
    """An eps-model (x0, score from the model currency's conversions): the samplers' folded fast path."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.process = inner, inner.process

    def eps(self, x, t, **cond):
        return self.inner.eps(x, t)
