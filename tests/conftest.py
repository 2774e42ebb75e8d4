import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(max(1, int(os.environ.get("SCORELAB_TEST_THREADS", "1"))))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
