r"""High-order denoising score matching (Lu, Zheng, Bao, Chen, Li & Zhu 2022, "Maximum likelihood training for
score-based diffusion ODEs by high-order denoising score matching", ICML; source 002, slides "[LZB+22a]").

Matching the first three orders of the score makes the probability-flow ODE likelihood close to the SDE one.
x_t = alpha_t x_0 + sigma_t eps; all orders come from one score model s_theta(x, t) = ``model.score``.

Notation
--------
==================  ==========================================================================================
``s1``              s_theta(x_t, t)                                      (first order)
``s2``              grad_x s_theta (the Jacobian, [d, d])                 (second order; its trace is div s_theta)
``s3``              grad_x tr(grad_x s_theta)                             (third order)
``l1``              sigma s1_hat + eps                    (s1_hat = stop-gradient of s1, or a reference model)
``l2``              sigma^2 s2_hat + I
``l3``              (||l1||^2 I - tr(l2) I - 2 l2) l1
==================  ==========================================================================================

Per-example losses (the sigma^-2, sigma^-4, sigma^-6 weights of the exact objectives are dropped, as Lu et al. do in
practice "to reduce variance"; ``weighted=True`` keeps them):

* first order   ||sigma s1 + eps||^2                               minimised by s1 = grad log q_t
* second order  ||sigma^2 s2 + I - l1 l1^T||_F^2                   minimised by s2 = grad^2 log q_t
* trace         |sigma^2 tr(s2) + d - ||l1||^2|^2                  minimised by tr(s2) = Laplacian of log q_t
* third order   ||sigma^3 s3 + l3||^2                              minimised by s3 = grad tr(grad^2 log q_t)

The minimisers hold when the targets use the exact lower-order scores: E[l1 l1^T | x_t] = I + sigma^2 grad^2 log q_t
(Tweedie's second-order formula).  ``reference`` supplies s1_hat, s2_hat from another (e.g. frozen, first-order
trained) model; by default they are the model's own, detached.  Every loss has the training-loop signature
``loss(model, x0, *, generator=None) -> [B]``; extra keywords have defaults (``t``, ``eps``: a fixed draw).
Jacobians and divergences use autograd (d backward passes for ``exact``, one per probe for ``hutchinson``), so the
full second-order loss is for small d.  With ``divergence="hutchinson"`` the divergence inside a squared residual
makes the loss (and its gradient) biased upwards by sigma^4 Var(probe estimate); use several probes or ``exact``.
"""
from __future__ import annotations

import torch

from .._utils import bcast
from ..core.denoisers import DiffusionModel
from ..evaluation.likelihood import make_probes

DIVERGENCES = ("exact", "hutchinson")


def _draw(model: DiffusionModel, x0: torch.Tensor, t, generator, eps=None):
    """t ~ U(t_min, t_max) per example and eps ~ N(0, I) unless given; x_t = alpha x0 + sigma eps.
    Returns (x_t (requires grad), t [B], eps, sigma broadcastable to x)."""
    p = model.process
    if t is None:
        u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
        t = p.t_min + u * (p.t_max - p.t_min)
    t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device).expand(x0.shape[0])
    if eps is None:
        xt, eps = p.marginal_sample(x0, t, generator)
    else:
        if eps.shape != x0.shape:
            raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
        xt = bcast(p.alpha(t), x0) * x0 + bcast(p.sigma(t), x0) * eps
    return xt.detach().requires_grad_(True), t, eps, bcast(p.sigma(t), x0)


def _flat(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1)


def _jacobian(s: torch.Tensor, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """J[b, i, j] = d s_i / d x_j -> ``[B, d, d]`` (one backward pass per row)."""
    sf = _flat(s)
    rows = [_flat(torch.autograd.grad(sf[:, i].sum(), x, retain_graph=True, create_graph=create_graph)[0])
            for i in range(sf.shape[1])]
    return torch.stack(rows, 1)


def _divergence(s: torch.Tensor, x: torch.Tensor, create_graph: bool, divergence: str, n_probes: int,
                generator) -> torch.Tensor:
    """tr(d s/dx) per example -> ``[B]``: exact, or Hutchinson's mean over ``n_probes`` Rademacher probes."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "exact":
        return torch.diagonal(_jacobian(s, x, create_graph), dim1=1, dim2=2).sum(1)
    probes = make_probes(tuple(x.shape), n_probes, "rademacher", generator, x.dtype, x.device)
    est = [_flat(torch.autograd.grad((s * v).sum(), x, retain_graph=True, create_graph=create_graph)[0] * v).sum(1)
           for v in probes]
    return torch.stack(est, 0).mean(0)


def _reduce(v: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    return v.mean(1) if reduce_mean else v.sum(1)


def _l1(model, reference, xt, t, eps, sigma):
    """l1 = sigma s1_hat + eps with s1_hat detached (own model) or from ``reference``; returns (l1, s1_hat graph)."""
    ref = model if reference is None else reference
    s1_hat = ref.score(xt, t)
    return (sigma * s1_hat + eps).detach(), s1_hat


def dsm1_loss(model: DiffusionModel, x0: torch.Tensor, *, generator: torch.Generator | None = None, t=None, eps=None,
              weighted: bool = False, reduce_mean: bool = False) -> torch.Tensor:
    """First-order DSM ||sigma s_theta(x_t, t) + eps||^2 (/ sigma^2 if ``weighted``) per example -> ``[B]``."""
    xt, t, eps, sigma = _draw(model, x0, t, generator, eps)
    r = _flat(sigma * model.score(xt, t) + eps).pow(2)
    r = r / _flat(sigma.expand_as(xt)) ** 2 if weighted else r
    return _reduce(r, reduce_mean)


def dsm2_loss(model: DiffusionModel, x0: torch.Tensor, *, generator: torch.Generator | None = None, t=None, eps=None,
              reference: DiffusionModel | None = None, weighted: bool = False,
              reduce_mean: bool = False) -> torch.Tensor:
    """Second-order DSM ||sigma^2 grad s_theta + I - l1 l1^T||_F^2 per example -> ``[B]`` (full Jacobian)."""
    xt, t, eps, sigma = _draw(model, x0, t, generator, eps)
    s = model.score(xt, t)
    l1, _ = _l1(model, reference, xt, t, eps, sigma)
    J = _jacobian(s, xt, create_graph=True)
    sg2 = _flat(sigma.expand_as(xt))[:, :1, None] ** 2  # [B, 1, 1]
    eye = torch.eye(J.shape[1], dtype=J.dtype, device=J.device)
    l1f = _flat(l1)
    r = (sg2 * J + eye - l1f[:, :, None] * l1f[:, None, :]).pow(2).flatten(1)
    r = r / sg2.flatten(1) ** 2 if weighted else r
    return _reduce(r, reduce_mean)


def dsm2_trace_loss(model: DiffusionModel, x0: torch.Tensor, *, generator: torch.Generator | None = None, t=None,
                    eps=None, reference: DiffusionModel | None = None, divergence: str = "exact", n_probes: int = 1,
                    weighted: bool = False) -> torch.Tensor:
    """Trace (Laplacian) second-order DSM |sigma^2 div s_theta + d - ||l1||^2|^2 per example -> ``[B]``."""
    xt, t, eps, sigma = _draw(model, x0, t, generator, eps)
    s = model.score(xt, t)
    l1, _ = _l1(model, reference, xt, t, eps, sigma)
    sg2 = _flat(sigma.expand_as(xt))[:, 0] ** 2
    div = _divergence(s, xt, True, divergence, n_probes, generator)
    r = (sg2 * div + xt[0].numel() - _flat(l1).pow(2).sum(1)).pow(2)
    return r / sg2**2 if weighted else r


def dsm3_loss(model: DiffusionModel, x0: torch.Tensor, *, generator: torch.Generator | None = None, t=None, eps=None,
              reference: DiffusionModel | None = None, divergence: str = "exact", n_probes: int = 1,
              weighted: bool = False, reduce_mean: bool = False) -> torch.Tensor:
    """Third-order DSM ||sigma^3 grad tr(grad s_theta) + l3||^2 per example -> ``[B]``.

    l2 l1 = sigma^2 s2_hat l1 + l1 is a vector-Jacobian product and tr(l2) = sigma^2 div s1_hat + d, so the cost is
    that of a divergence (exact or Hutchinson) plus two backward passes."""
    xt, t, eps, sigma = _draw(model, x0, t, generator, eps)
    s = model.score(xt, t)
    l1, s1_hat = _l1(model, reference, xt, t, eps, sigma)
    sg = _flat(sigma.expand_as(xt))[:, :1]  # [B, 1]
    d = xt[0].numel()
    div = _divergence(s, xt, True, divergence, n_probes, generator)
    s3 = _flat(torch.autograd.grad(div.sum(), xt, create_graph=True)[0])
    div_hat = div.detach() if reference is None else _divergence(s1_hat, xt, False, divergence, n_probes, generator)
    s2l1 = _flat(torch.autograd.grad(s1_hat, xt, l1, retain_graph=True)[0])  # s2_hat^T l1 (s2_hat symmetric)
    l1f = _flat(l1)
    tr_l2 = (sg[:, 0] ** 2 * div_hat.detach() + d)[:, None]
    l3 = (l1f.pow(2).sum(1, keepdim=True) - tr_l2) * l1f - 2 * (sg**2 * s2l1 + l1f)
    r = (sg**3 * s3 + l3.detach()).pow(2)
    r = r / sg**6 if weighted else r
    return _reduce(r, reduce_mean)


def hodsm_loss(model: DiffusionModel, x0: torch.Tensor, *, generator: torch.Generator | None = None,
               order: int = 3, trace: bool = True, lambda2: float = 1.0, lambda3: float = 1.0,
               divergence: str = "exact", n_probes: int = 1) -> torch.Tensor:
    """Lu et al.'s combined objective  L1 + lambda2 L2 (+ lambda3 L3 when ``order == 3``) per example -> ``[B]``,
    all terms at the same (t, eps) draw.  ``trace`` picks the trace form of L2 (scales to images).  The lambda
    defaults are ours, not the paper's tuned values."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    state = generator.get_state() if generator is not None else None

    def again():  # replay the same (t, eps) draw for each term
        if generator is not None:
            generator.set_state(state)
        return generator

    loss = dsm1_loss(model, x0, generator=again())
    if order >= 2:
        l2 = dsm2_trace_loss(model, x0, generator=again(), divergence=divergence, n_probes=n_probes) if trace \
            else dsm2_loss(model, x0, generator=again())
        loss = loss + lambda2 * l2
    if order == 3:
        loss = loss + lambda3 * dsm3_loss(model, x0, generator=again(), divergence=divergence, n_probes=n_probes)
    return loss
