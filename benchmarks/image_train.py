"""32x32 RGB training: throughput of scorelab's training loop vs the diffusers training loop at an equal network, and
a short quality run on the built-in photos32 set.

    python benchmarks/image_train.py [--width 32] [--batch 32] [--steps 8] [--repeats 3] [--quality-steps 500]
                                     [--device cpu|cuda] [--amp none|bf16|fp16] [--quick]

Throughput (anchor: diffusers 0.42.1, side by side): the same network twice, scorelab ``UNet(base_channels=w,
channel_mults=(1, 2, 2), num_res_blocks=2, attention at 16x16 and in the middle, scale-shift time conditioning,
GroupNorm(8))`` and diffusers ``UNet2DModel(block_out_channels=(w, 2w, 2w), layers_per_block=2, AttnDownBlock2D /
AttnUpBlock2D at 16x16, resnet_time_scale_shift="scale_shift", norm_num_groups=8)``; the same batch of uint8
photos32 patches (decoded to [-1, 1] and randomly flipped on the device), AdamW (lr 2e-4), gradient clipping at 1, EMA
(0.999).  scorelab runs ``training.train`` (DSM, discrete DDPM-linear proposal, eps-prediction, mean over pixels);
diffusers runs the loop of its ``train_unconditional`` example: ``DDPMScheduler.add_noise``, MSE to the noise,
``clip_grad_norm_``, ``EMAModel.step``.  Peak memory is measured in a fresh subprocess per library (peak RSS
on CPU, ``torch.cuda.max_memory_allocated`` on GPU).  Throughput: both loops live in one process and alternate
chunks of ``steps`` steps over ``repeats`` rounds after a warm-up (machine load hits both alike); the headline is
the median of the paired per-round img/s ratios, with a one-sided t-test on their logs.

Quality: scorelab's UNet trained ``quality_steps`` on photos32 (streamed, flips), sampled with DPM-Solver++(2M) at
NFE 10/20/50; FID-photos32 = Frechet distance on the 64-d penultimate features of a small CNN trained here to tell
the 32 regions (2 photos x 4 x 4 grid) apart.  It is a scorelab-only scale, NOT comparable with published FIDs; the
real-vs-real value of two disjoint halves of the data is its floor.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import paired, write_results  # noqa: E402

from scorelab.core.denoisers import NetworkModel  # noqa: E402
from scorelab.core.processes import Discrete  # noqa: E402
from scorelab.data.streaming import ArrayDataset, decode, photo_patches, random_hflip  # noqa: E402
from scorelab.nets import UNet, count_parameters  # noqa: E402
from scorelab.training.loop import TrainConfig, train  # noqa: E402
from scorelab.training.losses import DSMLoss, LossConfig  # noqa: E402

LR, EMA, CLIP = 2e-4, 0.999, 1.0


def scorelab_net(w: int) -> UNet:
    """scorelab's UNet at width ``w`` (the architecture of the module docstring)."""
    return UNet(in_channels=3, base_channels=w, channel_mults=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                heads=1, groups=8, image_size=32, time_scale=1.0, dropout=0.0)


def diffusers_net(w: int):
    """diffusers' UNet2DModel with the same layout as ``scorelab_net(w)``."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(w, 2 * w, 2 * w), norm_num_groups=8, attention_head_dim=2 * w,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                       resnet_time_scale_shift="scale_shift", dropout=0.0)


def _peak_mb(device: torch.device) -> float:
    """Peak memory: ``max_memory_allocated`` on a GPU; on a CPU the process' RSS high-water mark ``VmHWM`` (Linux;
    not ``ru_maxrss``, which a child inherits from its parent across fork + exec)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ScorelabLoop:
    """``training.train`` on the network of ``scorelab_net``; ``run(k)`` = one call of ``train`` for k steps (its
    setup, an EMA copy and a fresh AdamW, is inside the timed region)."""

    def __init__(self, args, x8: torch.Tensor, device: torch.device):
        torch.manual_seed(0)
        self.model = NetworkModel(scorelab_net(args.width), Discrete.from_schedule("linear", 1000))
        self.loss = DSMLoss(LossConfig(proposal="discrete", reduction="mean"))
        self.data, self.args, self.device, self.calls = ArrayDataset(x8), args, device, 0
        self.params = count_parameters(self.model)

    def run(self, steps: int) -> None:
        """``steps`` optimizer steps."""
        a = self.args
        self.calls += 1
        cfg = TrainConfig(steps=steps, batch_size=a.batch, lr=LR, ema_decay=EMA, ema_warmup=False, grad_clip=CLIP,
                          lr_schedule="constant", seed=self.calls, log_every=10**6, device=str(self.device),
                          amp=a.amp, hflip=True)
        train(self.model, self.data, cfg, loss_fn=self.loss, progress=False)


class DiffusersLoop:
    """The diffusers training-example loop on ``diffusers_net``: same batch, AdamW, clipping, EMA, flips."""

    def __init__(self, args, x8: torch.Tensor, device: torch.device):
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(0)
        self.net = diffusers_net(args.width).to(device).train()
        self.sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=LR)
        self.ema = EMAModel(self.net.parameters(), decay=EMA, use_ema_warmup=False)
        self.ema.to(device)
        self.g = torch.Generator(device=device).manual_seed(0)
        self.amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.x8, self.args, self.device = x8, args, device
        self.params = sum(p.numel() for p in self.net.parameters())

    def step(self) -> float:
        """One step of the loop; returns the loss."""
        b, dev = self.args.batch, self.device
        idx = torch.randint(0, self.x8.shape[0], (b,))
        x = random_hflip(decode(self.x8[idx].to(dev, non_blocking=True)), self.g)
        noise = torch.randn(x.shape, generator=self.g, device=dev)
        t = torch.randint(0, 1000, (b,), generator=self.g, device=dev)
        with torch.autocast(dev.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            pred = self.net(self.sched.add_noise(x, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), CLIP)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.net.parameters())
        return float(loss.detach())

    def run(self, steps: int) -> None:
        """``steps`` optimizer steps."""
        for _ in range(steps):
            self.step()


def _timed(loop, steps: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    loop.run(steps)
    _sync(device)
    return steps * loop.args.batch / (time.perf_counter() - t0)


def worker(args) -> None:
    """Peak memory of one library's loop in a fresh process (warm-up + ``args.steps`` steps)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loop = (ScorelabLoop if args.worker == "scorelab" else DiffusersLoop)(args, torch.from_numpy(photo_patches()[0]),
                                                                          device)
    loop.run(args.warmup + args.steps)
    print("RESULT " + json.dumps({"peak_mb": _peak_mb(device), "params": loop.params}))


def peak_memory(args, lib: str) -> dict:
    """``worker`` in a subprocess: its own peak memory (peak RSS on CPU, max_memory_allocated on GPU)."""
    cmd = [sys.executable, __file__, "--worker", lib, "--width", str(args.width), "--batch", str(args.batch),
           "--steps", "2", "--warmup", "1", "--device", args.device, "--amp", args.amp, "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ})
    if out.returncode != 0:
        raise RuntimeError(f"{lib} worker failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def throughput(args) -> dict:
    """Both loops in one process, alternating chunks of ``args.steps`` steps for ``args.repeats`` rounds (order
    swapped every round), so machine load hits both alike; the per-round ratios are paired."""
    torch.set_num_threads(args.threads)
    device, x8 = torch.device(args.device), torch.from_numpy(photo_patches()[0])
    loops = {"scorelab": ScorelabLoop(args, x8, device), "diffusers": DiffusersLoop(args, x8, device)}
    for loop in loops.values():
        loop.run(args.warmup)
    rounds = []
    for r in range(args.repeats):
        order = ("scorelab", "diffusers") if r % 2 == 0 else ("diffusers", "scorelab")
        rounds.append({lib: _timed(loops[lib], args.steps, device) for lib in order})
        print(f"round {r}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in rounds[-1].items()), flush=True)
    ratios = [rd["scorelab"] / rd["diffusers"] for rd in rounds]
    mem = {lib: peak_memory(args, lib) for lib in loops}
    med = {lib: {"img_s": statistics.median(rd[lib] for rd in rounds), "peak_mb": mem[lib]["peak_mb"]}
           for lib in loops}
    return {"rounds": rounds, "ratios": ratios, "ratio_median": statistics.median(ratios),
            "log_ratio": paired([math.log(v) for v in ratios]), "median": med,
            "params": {lib: loops[lib].params for lib in loops}}


# -- quality: FID on dataset-specific features ------------------------------------------------------------------
def region_labels(size=32, stride=4, scale=0.5, grid=4) -> np.ndarray:
    """Label of each photos32 patch: photo k and the grid x grid cell of its top-left corner -> k grid^2 + cell."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    labels = []
    for k, img in enumerate(load_sample_images().images):
        h, w = (round(s * scale) for s in Image.fromarray(img).size[::-1])
        rows, cols = (h - size) // stride + 1, (w - size) // stride + 1
        i, j = np.divmod(np.arange(rows * cols), cols)
        labels.append(k * grid * grid + (i * grid // rows) * grid + j * grid // cols)
    return np.concatenate(labels)


class PatchCNN(torch.nn.Module):
    """Small CNN: 3 conv stages (32, 64, 128 channels) -> 64-d features -> region logits."""

    def __init__(self, n_classes: int):
        super().__init__()
        c = torch.nn.Conv2d
        self.body = torch.nn.Sequential(c(3, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.AvgPool2d(2),
                                        c(32, 64, 3, padding=1), torch.nn.SiLU(), torch.nn.AvgPool2d(2),
                                        c(64, 128, 3, padding=1), torch.nn.SiLU(), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten(), torch.nn.Linear(128, 64))
        self.head = torch.nn.Linear(64, n_classes)

    def forward(self, x):
        return self.head(torch.nn.functional.silu(self.body(x)))


def feature_net(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0) -> tuple[PatchCNN, float]:
    """Train the region classifier (with flips); returns it and its accuracy on the data."""
    torch.manual_seed(seed)
    net = PatchCNN(int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(random_hflip(x[idx], g)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]) == y).float().mean())
    return net, acc


def quality(args) -> dict:
    from scorelab.evaluation.metrics import batched_features, fid_from_features
    from scorelab.plotting import image_grid
    from scorelab.samplers.budget import sample

    torch.set_num_threads(args.threads)
    x8, _ = photo_patches()
    x, y = decode(torch.from_numpy(x8)), torch.from_numpy(region_labels())
    fnet, acc = feature_net(x, y, args.feature_steps)
    feats = lambda v: batched_features(v, fnet.body)  # noqa: E731
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    ref = x[perm[: args.n_samples]]
    floor = fid_from_features(feats(ref), feats(x[perm[args.n_samples: 2 * args.n_samples]]))
    torch.manual_seed(0)
    model = NetworkModel(scorelab_net(args.quality_width), Discrete.from_schedule("linear", 1000))
    cfg = TrainConfig(steps=args.quality_steps, batch_size=args.quality_batch, lr=1e-3, warmup_steps=50,
                      ema_decay=0.995, grad_clip=CLIP, seed=0, log_every=max(1, args.quality_steps // 20), hflip=True,
                      device=args.device, amp=args.amp)
    t0 = time.perf_counter()
    res = train(model, ArrayDataset(torch.from_numpy(x8)), cfg, progress=False,
                loss_fn=DSMLoss(LossConfig(proposal="discrete", reduction="mean")))
    train_s = time.perf_counter() - t0
    out, ema = {}, res.ema_model.eval()
    for nfe in (10, 20, 50):
        s, _ = sample(ema, "dpm_solver_pp_2m", nfe, args.n_samples, shape=(3, 32, 32), batch_size=250, seed=0,
                      device=args.device)
        s = s.clamp(-1, 1).cpu()
        out[nfe] = fid_from_features(feats(s), feats(ref))
        if nfe == 50 and args.grid:
            image_grid(s[:64], args.grid, nrow=8, title="scorelab UNet on photos32, DPM-Solver++(2M), NFE 50")
    w = max(1, len(res.history) // 10)
    curve = [float(np.mean(res.history[i:i + w])) for i in range(0, len(res.history), w)]
    return {"fid_photos32": out, "floor_real_vs_real": floor, "feature_net_accuracy": acc, "loss_curve": curve,
            "train_s": train_s, "steps": args.quality_steps}


def markdown(args, tp: dict | None, q: dict | None, wall: float, cpu: float) -> str:
    lines = [f"# 32x32 RGB training: scorelab vs diffusers ({args.device}, amp {args.amp})", ""]
    if tp:
        s, d = tp["median"]["scorelab"], tp["median"]["diffusers"]
        mem = "peak RSS (VmHWM) of a process running only that loop" if args.device == "cpu" else \
            "max_memory_allocated"
        lines += [f"Equal network: width {args.width}, batch {args.batch}; both loops in one process, "
                  f"{args.repeats} rounds of {args.steps} steps each (order alternating) after {args.warmup} warm-up "
                  f"steps, {args.threads} thread(s).", "",
                  "| loop | parameters | img/s (median) | peak memory MiB (" + mem + ") |", "|---|---|---|---|",
                  f"| scorelab `training.train` | {tp['params']['scorelab']:,} | {s['img_s']:.1f} | "
                  f"{s['peak_mb']:.0f} |",
                  f"| diffusers UNet2DModel + DDPMScheduler.add_noise | {tp['params']['diffusers']:,} | "
                  f"{d['img_s']:.1f} | {d['peak_mb']:.0f} |", "",
                  f"**Throughput ratio scorelab / diffusers: {tp['ratio_median']:.2f}x** (median of paired rounds: "
                  + ", ".join(f"{r:.2f}" for r in tp["ratios"]) + f"; mean log-ratio {tp['log_ratio']['mean']:+.3f}, "
                  f"one-sided 95% lower bound {tp['log_ratio']['lower95']:+.3f}, one-sided p for ratio > 1: "
                  f"{tp['log_ratio']['p_one_sided']:.3f}).", "",
                  "Parameter counts differ only by the time MLP's input width (scorelab feeds 4w sinusoidal features, "
                  "diffusers w).", ""]
    if q:
        lines += [f"Quality run on photos32 (width {args.quality_width}, {q['steps']} steps, batch "
                  f"{args.quality_batch}, {q['train_s']:.0f} s): "
                  "FID-photos32 (scorelab-only feature scale, not comparable with published FIDs; region-classifier "
                  f"accuracy {q['feature_net_accuracy']:.2f}) with DPM-Solver++(2M), {args.n_samples} samples:", "",
                  "| NFE | FID-photos32 |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in q["fid_photos32"].items()]
        lines += [f"| real vs real (floor) | {q['floor_real_vs_real']:.3f} |", "",
                  "Loss (window means over training): " + ", ".join(f"{v:.4f}" for v in q["loss_curve"]), ""]
    lines.append(f"Wall {wall:.0f} s, CPU {cpu:.0f} s (this process and its children).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    ap.add_argument("--quality-steps", type=int, default=500)
    ap.add_argument("--quality-width", type=int, default=16)
    ap.add_argument("--quality-batch", type=int, default=16)
    ap.add_argument("--feature-steps", type=int, default=400)
    ap.add_argument("--n-samples", type=int, default=300)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--grid", default=None, help="write a PNG grid of 64 NFE-50 samples here")
    ap.add_argument("--name", default="image_train")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.width, args.batch, args.steps, args.warmup, args.repeats = 8, 4, 2, 1, 1
        args.quality_steps, args.feature_steps, args.n_samples, args.quality_width = 4, 4, 8, 8
    if args.worker:
        return worker(args)
    t_wall, t_cpu = time.time(), time.process_time()
    tp = None if args.skip_throughput else throughput(args)
    q = None if args.skip_quality else quality(args)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, cpu = time.time() - t_wall, time.process_time() - t_cpu + ch.ru_utime + ch.ru_stime
    md = markdown(args, tp, q, wall, cpu)
    write_results(args.name, {"config": vars(args), "throughput": tp, "quality": q, "wall_s": wall, "cpu_s": cpu,
                              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda")
                              else "cpu"}, md)
    if not math.isfinite(wall):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
