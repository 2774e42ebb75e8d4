r"""Trained members of the sampler panels: a small network trained by scorelab's own trainer on draws of a panel
oracle's Gaussian mixture, so that defaults are chosen (and checked) on a *learned* score too, not only on exact ones.

Why: an exact mixture score is smooth in t and exact at every noise level; a trained eps-network is not.  Its x0
prediction at high noise, (x - sigma eps)/alpha, carries the network's eps error times sigma/alpha (~150 at t = 1 on
VP), and higher-order solvers amplify the error of a network that is rough in t.  Grids and solvers that win on exact
oracles alone diverged on trained models (issue 24: UniPC 1.64 and Heun 1.13 sliced W2 at NFE 5 on the demo's swiss
roll, DDIM 0.26).  The quality of a trained member is still measured against the *exact* mixture law (unbiased MMD^2),
so the network's own error is a floor shared by every sampler; what differs between samplers is their solver error
on a learned score.

Protocol: a residual MLP (width 64, 3 blocks; ``nets.MLP``), the process's default parameterization (eps; EDM's
preconditioned F on EDM), DSM with uniform times, 1500 steps of batch 256, AdamW 3e-3 with 150 warm-up steps, EMA
0.995, on 50,000 draws of the mixture (seed 0): the demo's recipe.  Weights are cached in
``benchmarks/.cache/panel_nets/<name>.safetensors`` (safetensors + JSON sidecar; retrained when missing).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

CACHE = Path(__file__).resolve().parent / ".cache" / "panel_nets"
RECIPE = dict(width=64, depth=3, steps=1500, batch_size=256, lr=3e-3, warmup_steps=150, ema_decay=0.995, n=50_000)


def _network_model(process, d: int):
    from scorelab.core.denoisers import NetworkModel
    from scorelab.core.processes import EDM
    from scorelab.nets import build_net

    torch.manual_seed(0)
    net = build_net({"name": "mlp", "dim": d, "width": RECIPE["width"], "depth": RECIPE["depth"]})
    return NetworkModel(net, process, "edm" if isinstance(process, EDM) else "eps")


def trained_model(name: str, gm, process):
    """The EMA model of ``name``'s network trained on 50,000 draws of ``gm`` under ``process`` (cached)."""
    from scorelab.io.checkpoints import load_checkpoint, save_checkpoint
    from scorelab.training.loop import TrainConfig, train

    model = _network_model(process, gm.d)
    path = CACHE / name
    if path.with_name(name + ".json").exists():
        model.load_state_dict(load_checkpoint(path).model)
        return model.eval()
    x = gm.sample(RECIPE["n"], generator=torch.Generator().manual_seed(0)).to(torch.float32)
    cfg = TrainConfig(steps=RECIPE["steps"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
                      warmup_steps=RECIPE["warmup_steps"], ema_decay=RECIPE["ema_decay"], seed=0,
                      log_every=RECIPE["steps"])
    c0 = time.process_time()
    res = train(model, x, cfg, progress=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, res.ema_model, extra={"panel_member": name, "recipe": RECIPE,
                                                "train_cpu_s": time.process_time() - c0})
    print(f"{name}: trained in {time.process_time() - c0:.0f} CPU s (final loss {res.history[-1]:.4f})", flush=True)
    return res.ema_model.eval()
