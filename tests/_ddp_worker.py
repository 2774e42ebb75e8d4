"""Helper launched by tests/test_training.py under torchrun: data-parallel training on CPU with gloo.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_ddp_worker.py RUN_DIR [UNET_RUN_DIR]

The first run trains an MLP on vectors (one micro-batch per rank); the second (when a folder is given) a small UNet
on streamed uint8 RGB patches (``photos32``) with random flips, a DataLoader worker and gradient accumulation
(2 micro-batches per rank).
"""
import sys

import torch

from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import VP
from scorelab.data.streaming import open_dataset
from scorelab.nets import MLP, UNet
from scorelab.training.loop import TrainConfig, init_distributed, shutdown_distributed, train

CONFIG = TrainConfig(steps=12, batch_size=32, lr=3e-3, warmup_steps=3, grad_clip=1.0, ema_decay=0.9, seed=7,
                     log_every=4, data_shards=2)
UNET_CONFIG = dict(steps=3, batch_size=8, lr=2e-3, ema_decay=0.9, seed=3, log_every=1, hflip=True, num_workers=1)


def setup():
    """The model, data and config shared by the 2-process run and the 1-process reference."""
    torch.manual_seed(0)
    model = NetworkModel(MLP(2, width=32, depth=2), VP())
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 0.3]) + 0.5
    return model, data, CONFIG


def setup_unet(world: int):
    """Small RGB UNet, 64 streamed uint8 patches, and a config with 2 micro-batches per rank (4 in all)."""
    torch.manual_seed(0)
    net = UNet(in_channels=3, base_channels=8, channel_mults=(1, 2), attn_resolutions=(16,), image_size=32)
    data = open_dataset("photos32", n=64, seed=0, labels=False)
    cfg = TrainConfig(**UNET_CONFIG, grad_accum=4 // world) if world == 2 else TrainConfig(**UNET_CONFIG,
                                                                                           data_shards=4)
    return NetworkModel(net, VP()), data, cfg


def main(run_dir: str, unet_dir: str | None = None) -> None:
    torch.set_num_threads(1)
    rank, world = init_distributed()
    assert world == 2, world
    model, data, config = setup()
    train(model, data, config, run_dir=run_dir, progress=False)
    if unet_dir:
        model, data, config = setup_unet(world)
        train(model, data, config, run_dir=unet_dir, progress=False)
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
