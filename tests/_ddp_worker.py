"""Helper launched by tests/test_training.py under torchrun: data-parallel training on CPU with gloo.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_ddp_worker.py RUN_DIR
"""
import sys

import torch

from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import VP
from scorelab.nets import MLP
from scorelab.training.loop import TrainConfig, init_distributed, shutdown_distributed, train

CONFIG = TrainConfig(steps=12, batch_size=32, lr=3e-3, warmup_steps=3, grad_clip=1.0, ema_decay=0.9, seed=7,
                     log_every=4, data_shards=2)


def setup():
    """The model, data and config shared by the 2-process run and the 1-process reference."""
    torch.manual_seed(0)
    model = NetworkModel(MLP(2, width=32, depth=2), VP())
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 0.3]) + 0.5
    return model, data, CONFIG


def main(run_dir: str) -> None:
    torch.set_num_threads(1)
    rank, world = init_distributed()
    assert world == 2, world
    model, data, config = setup()
    train(model, data, config, run_dir=run_dir, progress=False)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
