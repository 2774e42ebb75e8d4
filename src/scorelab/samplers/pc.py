r"""Predictor-corrector sampling and annealed Langevin dynamics.

* ``pc``: Song et al. 2021, Alg. 1 (VE) / Alg. 2 (VP): at each grid step a predictor (reverse-SDE Euler-Maruyama,
  DDPM ancestral, or none) moves t -> s, then ``n_corrector`` Langevin steps at time s with the signal-to-noise step
  rule of App. G, Alg. 4/5: eps = 2 a (snr ||z|| / ||score||)^2 per sample.
* ``annealed_langevin``: Song & Ermon 2019, Alg. 1: at each noise level sigma_i, T steps
  x <- x + (step_i/2) score + sqrt(step_i) z with step_i = eps sigma_i^2 / sigma_L^2.

Notation
=============  ===================================================================================================
``z``          standard normal noise of one Langevin step, ``[B, ...]``; ||.|| is the per-sample l2 norm
``a``          Alg. 5's alpha_i = 1 - beta_i on VP; here in general a = alpha_{t|s}^2 = (alpha_t/alpha_s)^2 for the
               predictor step t -> s (= 1 - beta_i on a DDPM-like chain, = 1 on VE/EDM as in Alg. 4)
``snr``        the corrector's signal-to-noise ratio r (Song et al. use 0.16 for VE, 0.01 for VP)
``sigma_i``    noise level of grid time t_i: sigma(t_i)/alpha(t_i) (the noise std of the scaled variable x/alpha;
               = sigma(t_i) on VE/EDM, exactly Song & Ermon's sigma_i)
``step_i``     annealed Langevin step size eps sigma_i^2/sigma_L^2, sigma_L = noise level of the last level used
=============  ===================================================================================================

Annealed Langevin on a non-VE process runs Song & Ermon's rule verbatim in the scaled variable x/alpha(t) (a VE
process with noise level sigma_i = sigma/alpha); in x this is the step alpha(t_i)^2 step_i = eps sigma(t_i)^2/sigma_L^2.
(Using step_i directly in x would be unstable on VP: the x-space curvature of log p_t is up to 1/sigma(t)^2.)
The step is stable for eps < 4 sigma_L^2 (the score's Lipschitz constant at level i is at most 1/sigma(t_i)^2 in x),
which is checked.

A Langevin step x' = x + eps score(x, t) + sqrt(2 eps) z is the Gaussian N(x + eps score, 2 eps I) when eps does not
depend on z; ``langevin_transition`` exposes it.  Corrector step rules (``step_norm``):
``"sample"``: Alg. 4/5 per sample, eps depends on the sample's own ||z|| and ||score||, so samples stay
independent but a step is a Gaussian only given ||z||; ``"batch"`` (default): batch means of ||z|| and ||score||
(Song et al.'s released code: one eps for the batch; stable in any dimension); ``"expected"``: per sample with
||z||^2 replaced by E||z||^2 = d, which makes
every corrector step an exact Gaussian transition.  In low dimension the per-sample rules are heavy-tailed (eps ~
1/||score||^2 blows up for samples near a mode centre): with snr = 0.16 on 2-D data the sample variance grows with the
number of steps, while ``"batch"`` (or snr ~ 0.01) is stable; snr = 0.16 was tuned for images (d ~ 3000), where the
norms concentrate.  Trajectories hold one state per grid time; a grid step that composes several
Gaussian steps (corrector on, or T > 1 Langevin steps per level) is not a Gaussian, so its log-prob is NaN.
Correctors and Langevin levels are skipped at a time where sigma = 0 (e.g. a final grid time 0; the score is not
defined there).  When the last grid time has sigma = 0, ``annealed_langevin`` ends with a Tweedie denoising step
x <- x0_hat(x, t_{n-1}) (one evaluation).
"""
from __future__ import annotations

import torch

from .._utils import bcast
from ..core.denoisers import DiffusionModel
from .base import Callback, GridCoefs, gaussian_sample, is_pos, register
from .loop import prepare, run_loop
from .sde import _noisy, ddpm_grid_step, em_grid_step

PREDICTORS = ("auto", "euler_maruyama", "ddpm", "none")
STEP_NORMS = ("sample", "batch", "expected")


def _norm(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)


def langevin_transition(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, *,
                        step_size: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Langevin step at time t as a Gaussian: mean = x + eps score(x, t), std = sqrt(2 eps).

    x ``[B, ...]``; ``step_size`` eps: scalar or ``[B]``, > 0.  Returns (mean ``[B, ...]``, std scalar or ``[B]``)."""
    eps = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    if torch.any(eps <= 0):
        raise ValueError("Langevin step_size must be > 0")
    return x + bcast(eps, x) * model.score(x, t), torch.sqrt(2 * eps)


def snr_step_size(score_norm: torch.Tensor, z_norm: torch.Tensor, snr: float, a: torch.Tensor) -> torch.Tensor:
    """Song et al. 2021, App. G, Alg. 4/5, line 4: eps = 2 a (snr ||z|| / ||score||)^2 from ``[B]`` norms -> ``[B]``."""
    return 2 * a * (snr * z_norm / score_norm.clamp_min(torch.finfo(score_norm.dtype).tiny)) ** 2


def _corrector(model, x, s, a, snr, n_corrector, step_norm, generator, noise_final=True):
    """n_corrector Langevin steps at time s (Alg. 4/5). Returns (x, (mean, std) of the last step); the last step
    returns its mean when ``noise_final`` is False."""
    mean = std = None
    for j in range(n_corrector):
        score = model.score(x, s)  # Alg. 4/5, line 2
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)  # line 3
        g_norm, z_norm = _norm(score), _norm(z)
        if step_norm == "expected":
            z_norm = torch.full_like(z_norm, float(x[0].numel()) ** 0.5)
        elif step_norm == "batch":
            g_norm, z_norm = g_norm.mean().expand_as(g_norm), z_norm.mean().expand_as(z_norm)
        eps = snr_step_size(g_norm, z_norm, snr, a)  # line 4
        mean, std = x + bcast(eps, x) * score, torch.sqrt(2 * eps)
        x = mean + bcast(std, x) * z if (noise_final or j < n_corrector - 1) else mean  # line 5
    return x, (mean, std)


def _check_pc(predictor, snr, n_corrector, step_norm):
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; expected one of {PREDICTORS}")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if int(n_corrector) != n_corrector or n_corrector < 0:
        raise ValueError(f"n_corrector must be a nonnegative integer, got {n_corrector}")
    if step_norm not in STEP_NORMS:
        raise ValueError(f"unknown step_norm {step_norm!r}; expected one of {STEP_NORMS}")
    if predictor == "none" and n_corrector == 0:
        raise ValueError("predictor='none' with n_corrector=0 would not move the sample")


def resolve_predictor(predictor: str, process) -> str:
    """``"auto"``: the reverse-diffusion predictor (``"ddpm"``) on a variance-exploding process (alpha = 1: VE,
    EDM), Euler-Maruyama otherwise; any other name is returned as given.

    Why: on VE, Song et al.'s Alg. 1 predictor x + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z is
    exactly the DDPM posterior step with the "large" variance (their released code's default for VE models,
    ``ReverseDiffusionPredictor``), and it is stable at any step size: its mean is a convex combination of x and
    x0_hat.  Euler-Maruyama's mean on VE, x + 2 sigma_t (sigma_t - sigma_s) score, overshoots x0_hat once
    sigma_s < sigma_t / 2 (a reflection for sigma_s -> 0), so with the few, large steps of a small budget it diverges
    (EDM panel member, NFE 5: sliced W2 96).  On VP and DDPM chains Euler-Maruyama stays: it measured better there
    than the DDPM predictor at NFE 10-20 (``benchmarks/grid_panel.py``)."""
    if predictor != "auto":
        return predictor
    return "ddpm" if bool(torch.all(process.alpha(torch.tensor([process.t_min, process.t_max],
                                                                dtype=torch.float64)) == 1)) else "euler_maruyama"


@register("pc", order=1, evals_per_step=2, stochastic=True,
          options=("predictor", "snr", "n_corrector", "step_norm", "noise_last"),
          reference="Song et al. 2021, Alg. 1/2 and App. G Alg. 4/5",
          evals_of=lambda predictor="auto", n_corrector=1, **_: (predictor != "none") + int(n_corrector),
          evals_at_zero_of=lambda predictor="auto", **_: int(predictor != "none"))
def sample_pc(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
              callback: Callback | None = None, return_trajectory: bool = False, predictor: str = "auto",
              snr: float = 0.16, n_corrector: int = 1, step_norm: str = "batch", noise_last: bool = False,
              progress: bool = False):
    """Predictor-corrector sampling over ``ts``. x_T ``[B, ...]``.

    Each grid step t -> s: predictor (``"euler_maruyama"``, ``"ddpm"`` with variance sigma_{t|s}^2, ``"none"``, or
    ``"auto"``: ``"ddpm"`` on VE / EDM, ``"euler_maruyama"`` otherwise, see ``resolve_predictor``),
    then ``n_corrector`` Langevin steps at s with eps = 2 a (snr ||z||/||score||)^2, a = (alpha_t/alpha_s)^2.
    NFE = n (predictor, unless "none") + n_corrector per grid time with sigma(s) > 0.
    ``step_norm``: ``"sample"`` (per sample, Alg. 4/5), ``"batch"`` (Song et al.'s code), ``"expected"`` (Gaussian
    steps); see the module docstring for the low-dimension caveat.  ``noise_last=False`` drops the noise of the last
    step (predictor, or the last corrector step).  Returns x at ts[-1] ``[B, ...]`` or a Trajectory."""
    _check_pc(predictor, snr, n_corrector, step_norm)
    m, ts = prepare(model, x_T, ts)
    n, g = ts.shape[0] - 1, GridCoefs.of(m.process, ts, x_T)
    final, predictor = _noisy(n, noise_last), resolve_predictor(predictor, m.process)
    predict = em_grid_step(m, g, final, generator) if predictor == "euler_maruyama" else \
        ddpm_grid_step(m, g, "large", final, generator) if predictor == "ddpm" else None
    a = [(g.a[i] / g.a[i + 1]) ** 2 for i in range(n)]  # alpha_{t|s}^2
    gaussian_last = predictor == "none" and n_corrector == 1 and step_norm == "expected"

    def step(i, x, state):
        x, x0_hat, mean, std = (x, None, None, None) if predict is None else predict(i, x, state)[:4]
        if n_corrector > 0 and is_pos(g.sg[i + 1]):
            a_i = a[i] if isinstance(a[i], float) else a[i].to(x.dtype)
            x, (mean, std) = _corrector(m, x, g.t[i + 1], a_i, snr, n_corrector, step_norm, generator, final[i])
            if not (gaussian_last and final[i]):
                mean = std = None  # a composition of Gaussian steps (or a z-dependent step) is not a Gaussian
        return x, x0_hat, mean, std, state, None

    return run_loop(m, x_T, ts, step, times=g.t, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)


def noise_levels(process, ts: torch.Tensor) -> torch.Tensor:
    """Noise level sigma(t)/alpha(t) of each grid time (float64, shape of ``ts``)."""
    t = ts.to(torch.float64)
    return torch.exp(process.log_sigma(t) - process.log_alpha(t))


@register("annealed_langevin", order=0, evals_per_step=100, stochastic=True, options=("eps", "n_steps"),
          reference="Song & Ermon 2019, Alg. 1", evals_of=lambda n_steps=100, **_: int(n_steps),
          evals_at_zero_of=lambda **_: 1)
def sample_annealed_langevin(model: DiffusionModel, x_T: torch.Tensor, ts, *, generator: torch.Generator | None = None,
                             callback: Callback | None = None, return_trajectory: bool = False, eps: float = 2e-5,
                             n_steps: int = 100, progress: bool = False):
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) at the levels t_1 > ... > t_n of ``ts``.

    x_T ``[B, ...]`` is taken as a sample at t_0.  At level t_i (sigma_i = sigma/alpha there), ``n_steps`` steps
    x <- x + (step_i/2) score(x, t_i) + sqrt(step_i) z, step_i = eps sigma_i^2/sigma_L^2.  A final grid time with
    sigma = 0 is reached by one Tweedie step x0_hat(x, t_{n-1}).  NFE = n n_steps (or (n-1) n_steps + 1)."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
    m, ts = prepare(model, x_T, ts)
    lv = noise_levels(m.process, ts)
    last = lv[-1] if bool(torch.all(lv[-1] > 0)) else lv[-2]
    if not bool(torch.all(eps < 4 * last**2)):
        raise ValueError(f"eps={eps} must be < 4 sigma_L^2 = {float((4 * last**2).min()):.3g} for Langevin to be "
                         "stable (Song & Ermon use eps = 2e-5 with sigma_L = 0.01)")
    times = list(ts.to(x_T).unbind(0))
    # Alg. 1, line 3: alpha_i = eps sigma_i^2/sigma_L^2 for x/alpha, i.e. alpha(t)^2 alpha_i for x
    steps = [(eps * model.process.sigma(ts[i + 1].to(torch.float64)) ** 2 / last**2).to(x_T.dtype)
             for i in range(ts.shape[0] - 1)]

    def step(i, x, state):
        if not bool(torch.all(lv[i + 1] > 0)):  # final time with sigma = 0: Tweedie denoising
            x0_hat = m.x0(x, times[i])
            return x0_hat, x0_hat, None, None, state, None
        for _ in range(int(n_steps)):  # Alg. 1, lines 4-7
            mean, std = langevin_transition(m, x, times[i + 1], step_size=steps[i] / 2)
            x = gaussian_sample(mean, std, generator)
        return (x, None, mean, std, state, None) if n_steps == 1 else (x, None, None, None, state, None)

    return run_loop(m, x_T, ts, step, times=times, callback=callback, return_trajectory=return_trajectory,
                    progress=progress)
