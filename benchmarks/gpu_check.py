"""GPU check: train the 32x32 UNet a few hundred steps with AMP on photos32, sample 1k images with three samplers;
report training img/s, sampling img/s, peak memory and the loss curve.

    bash benchmarks/gpu_check.sh                 # on a GPU machine (<= 8 minutes), also runs image_train.py there
    bash benchmarks/gpu_check.sh --quick         # tiny sizes on a CPU: checks the script works

Figures are machine figures (anchor: none; the diffusers comparison is ``image_train.py``); the device name is
recorded.  Nothing here is a test: the test suite never depends on a GPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_results  # noqa: E402

from scorelab.core.denoisers import NetworkModel  # noqa: E402
from scorelab.core.processes import Discrete  # noqa: E402
from scorelab.data.streaming import open_dataset  # noqa: E402
from scorelab.nets import build_net, count_parameters  # noqa: E402
from scorelab.plotting import image_grid, line_plot  # noqa: E402
from scorelab.samplers.budget import sample  # noqa: E402
from scorelab.training.loop import TrainConfig, train  # noqa: E402
from scorelab.training.losses import DSMLoss, LossConfig  # noqa: E402


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_part(args, device: torch.device, out: Path) -> tuple[NetworkModel, dict]:
    """Train the preset UNet with AMP; img/s after the first (warm-up) ``log_every`` steps."""
    torch.manual_seed(0)
    net = build_net({"name": "unet", "preset": args.preset, "in_channels": 3, "time_scale": 1.0,
                     **({"base_channels": args.width} if args.width else {})})
    model = NetworkModel(net, Discrete.from_schedule("linear", 1000))
    data = open_dataset("photos32", labels=False)
    log_every = max(1, args.steps // 20)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=2e-4, warmup_steps=min(100, args.steps // 4),
                      ema_decay=0.999, grad_clip=1.0, hflip=True, num_workers=args.workers, device=str(device),
                      amp=args.amp, log_every=log_every, seed=0, compile=args.compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    res = train(model, data, cfg, run_dir=out / "run", loss_fn=DSMLoss(LossConfig(proposal="discrete",
                                                                                  reduction="mean")), progress=False)
    _sync(device)
    wall = time.perf_counter() - t0
    from scorelab.training.loop import read_log

    rows = read_log(out / "run")
    timed = [r for r in rows if r["step"] > log_every]
    img_s = ((timed[-1]["step"] - log_every) * args.batch / (timed[-1]["time"] - rows[0]["time"])
             if timed else args.steps * args.batch / wall)
    line_plot([r["step"] for r in rows], {"DSM loss (window mean)": [r["loss"] for r in rows]},
              str(out / "gpu_check_loss.png"), xlabel="step", ylabel="loss", logy=True)
    return res.ema_model.eval(), {"params": count_parameters(net), "train_img_s": img_s, "train_wall_s": wall,
                                  "train_peak_mb": _peak_mb(device), "loss_curve": [(r["step"], r["loss"])
                                                                                    for r in rows]}


def sample_part(model, args, device: torch.device, out: Path) -> dict:
    """``args.n`` images with each sampler at ``args.nfe`` NFE; img/s and peak memory per sampler."""
    res = {}
    for name in args.samplers:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            x, _ = sample(model, name, args.nfe, args.n, shape=(3, 32, 32), batch_size=args.sample_batch, seed=0,
                          device=device)
        _sync(device)
        dt = time.perf_counter() - t0
        x = x.float().clamp(-1, 1).cpu()
        res[name] = {"img_s": args.n / dt, "wall_s": dt, "peak_mb": _peak_mb(device),
                     "finite": bool(torch.isfinite(x).all()), "pixel_std": float(x.std())}
        image_grid(x[:64], str(out / f"gpu_check_{name}.png"), nrow=8, title=f"{name}, NFE {args.nfe}")
    return res


def markdown(args, device_name: str, tr: dict, sp: dict, wall: float, cpu: float) -> str:
    mem = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [f"# GPU check on {device_name}", "",
             f"UNet preset {args.preset} ({tr['params']:,} parameters), batch {args.batch}, {args.steps} steps, amp "
             f"{args.amp}, compile {args.compile}: **{tr['train_img_s']:.0f} img/s** training, peak memory "
             f"{mem(tr['train_peak_mb'])} MiB, wall {tr['train_wall_s']:.0f} s.", "",
             f"| sampler (NFE {args.nfe}, {args.n} images, batch {args.sample_batch}) | img/s | peak MiB | finite |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {v['img_s']:.0f} | {mem(v['peak_mb'])} | {v['finite']} |" for k, v in sp.items()]
    lines += ["", "Loss curve (step: window mean): " + ", ".join(f"{s}: {v:.4f}" for s, v in tr["loss_curve"]), "",
              f"Wall {wall:.0f} s, CPU {cpu:.0f} s."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="small32")
    ap.add_argument("--width", type=int, default=None, help="override the preset's base_channels")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--amp", default="bf16", choices=("none", "bf16", "fp16"))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--sample-batch", type=int, default=500)
    ap.add_argument("--samplers", nargs="+", default=["ddim", "dpm_solver_pp_2m", "unipc"])
    ap.add_argument("--out", default=None, help="folder for plots and the run (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke run")
    args = ap.parse_args()
    if args.quick:
        args.width, args.steps, args.batch, args.n, args.nfe, args.sample_batch, args.workers = 8, 4, 4, 8, 4, 8, 1
        args.preset = "small32"
    t_wall, t_cpu = time.time(), time.process_time()
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = Path(args.out or tempfile.mkdtemp(prefix="scorelab_gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    model, tr = train_part(args, device, out)
    sp = sample_part(model, args, device, out)
    wall, cpu = time.time() - t_wall, time.process_time() - t_cpu
    md = markdown(args, device_name, tr, sp, wall, cpu)
    write_results("gpu_check" if not args.quick else "gpu_check_quick",
                  {"config": vars(args), "device_name": device_name, "train": tr, "sample": sp, "wall_s": wall,
                   "cpu_s": cpu}, md, out=out if args.quick else Path(__file__).resolve().parent / "results")
    print(f"plots in {out}")


if __name__ == "__main__":
    main()
