"""Networks: shapes, JSON config round trips, time embeddings, class conditioning, the SFT-PG toy architecture."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import Discrete
from scorelab.nets import (
    MLP,
    NETS,
    CriticMLP,
    ImageHead,
    SinusoidalEmbedding,
    StepEmbedMLP,
    UNet,
    VectorHead,
    build_net,
    register_net,
)
from scorelab.nets.unet import SelfAttention


def _randomize(net, seed=0, scale=0.2):
    """Random weights everywhere (zero-initialised output layers would make every output 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


NET_CASES = [
    (lambda: MLP(3, width=16, depth=2), (5, 3), {}),
    (lambda: MLP(2, width=16, depth=1, num_classes=4, activation="gelu"), (5, 2),
     {"y": torch.tensor([0, 1, 2, 3, -1])}),
    (lambda: StepEmbedMLP(10), (5, 2), {}),
    (lambda: UNet(base_channels=8), (2, 1, 8, 8), {}),
    (lambda: UNet(in_channels=3, base_channels=8, channel_mults=(1, 2, 2), attn_resolutions=(8,), image_size=16,
                  num_classes=3, heads=2), (2, 3, 16, 16), {"y": torch.tensor([2, -1])}),
    (lambda: VectorHead(2, num_outputs=1, width=16), (5, 2), {}),
    (lambda: VectorHead(2, num_outputs=3, width=16, n_steps=10), (5, 2), {}),
    (lambda: ImageHead(1, num_outputs=10, base_channels=8), (2, 1, 8, 8), {}),
    (lambda: CriticMLP(spectral_norm=True), (5, 2), {}),
]


def _t_in(net, b):
    return torch.arange(1, b + 1, dtype=torch.float32) if isinstance(getattr(net, "trunk", net), StepEmbedMLP) \
        else torch.rand(b, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("make,shape,cond", NET_CASES, ids=lambda v: type(v()).__name__ if callable(v) else None)
def test_config_round_trip_rebuilds_the_same_function(make, shape, cond):
    net = make()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    t_in = _t_in(net, shape[0])
    cfg = json.loads(json.dumps(net.config()))  # must survive JSON
    clone = build_net(cfg)
    assert type(clone) is type(net) and clone.config() == net.config()
    _randomize(net)
    clone.load_state_dict(net.state_dict())
    net.eval()
    clone.eval()
    out = net(x, t_in, **cond)
    torch.testing.assert_close(clone(x, t_in, **cond), out)
    heads = (VectorHead, ImageHead, CriticMLP)
    if isinstance(net, heads):
        n_out = cfg["num_outputs"]
        assert out.shape == ((shape[0],) if n_out == 1 else (shape[0], n_out))
    else:
        assert out.shape == x.shape


def test_sinusoidal_embedding_time_scale_and_separation():
    t = torch.linspace(0, 1, 1001)
    e_t = SinusoidalEmbedding(64, time_scale=1000.0)(t)
    e_i = SinusoidalEmbedding(64, time_scale=1.0)(1000 * t)
    torch.testing.assert_close(e_t, e_i, atol=2e-4, rtol=0)  # t in [0,1] x 1000 == indices in [0, 1000]
    assert torch.allclose(e_t.norm(dim=1), torch.full((1001,), math.sqrt(32)), atol=1e-4)  # cos^2 + sin^2 = 1
    torch.testing.assert_close(e_t[0], torch.cat([torch.ones(32), torch.zeros(32)]))
    d = torch.cdist(e_t, e_t) + 10 * torch.eye(1001)
    assert d.min() > 0.9  # adjacent steps are well separated: the fastest frequency moves by 1 radian per step


def test_time_and_labels_change_the_output_and_null_label_is_unconditional():
    net = _randomize(MLP(2, width=16, depth=2, num_classes=3)).eval()
    x, t = torch.randn(4, 2), torch.full((4,), 0.3)
    base = net(x, t)
    torch.testing.assert_close(net(x, t, y=torch.full((4,), -1)), base)
    torch.testing.assert_close(net(x, t, y=None), base)
    assert not torch.allclose(net(x, t, y=torch.zeros(4, dtype=torch.long)), base)
    assert not torch.allclose(net(x, t + 0.1), base)
    with pytest.raises(ValueError, match="labels"):
        net(x, t, y=torch.full((4,), 3))
    with pytest.raises(ValueError, match="num_classes=0"):
        MLP(2)(x, t, y=torch.zeros(4, dtype=torch.long))


def test_step_embed_mlp_is_the_sft_pg_toy_network():
    n = 10
    net = StepEmbedMLP(n)
    n_params = sum(p.numel() for p in net.parameters())
    expected = (2 * 128 + 128 + n * 128) + 2 * (128 * 128 + 128 + n * 128) + (128 * 2 + 2)
    assert n_params == expected
    _randomize(net)
    x = torch.randn(6, 2)
    steps = torch.tensor([1, 2, 5, 10, 10, 3], dtype=torch.float32)
    h = x
    for layer in net.layers:  # official ConditionalLinear: gamma[k] * (W h + b), then softplus
        h = F.softplus(layer.embed.weight[steps.long() - 1] * (h @ layer.lin.weight.T + layer.lin.bias))
    torch.testing.assert_close(net(x, steps), net.out(h))
    # through the model currency: a Discrete process hands the net its step index i = tN at the chain's times
    proc = Discrete.from_schedule("sigmoid", n)
    model = NetworkModel(net, proc, "eps")
    t = steps.double() / n
    torch.testing.assert_close(model.eps(x, t.float()), net(x, steps))
    with pytest.raises(ValueError, match="integer"):
        net(x, steps + 0.5)
    with pytest.raises(ValueError, match="out of range"):
        net(x, torch.zeros(6))


def test_critic_default_matches_sft_pg_fstar_tanh():
    net = CriticMLP()
    assert sum(p.numel() for p in net.parameters()) == (2 * 256 + 256) + (256 * 256 + 256) + (256 + 1)
    assert net(torch.randn(7, 2)).shape == (7,)


def test_unet_sizes_attention_and_input_checks():
    net = UNet(base_channels=8, channel_mults=(1, 2, 2), attn_resolutions=(4,), image_size=16)
    n_attn = sum(isinstance(m, SelfAttention) for m in net.modules())
    assert n_attn == 1 + 2 + 1  # encoder level at 4x4 (1 block), decoder level at 4x4 (2 blocks), middle
    _randomize(net, scale=0.05)
    for size in (16, 32, 64):
        x = torch.randn(1, 1, size, size)
        assert net(x, torch.rand(1)).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 10, 10), torch.rand(1))
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(1, 3, 16, 16), torch.rand(1))
    with pytest.raises(ValueError, match="time input"):
        net(torch.randn(2, 1, 16, 16), torch.rand(3))


def test_unet_is_differentiable_in_float64_and_sees_time():
    net = _randomize(UNet(base_channels=8), scale=0.1).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    out = net(x, torch.tensor([0.1, 0.9], dtype=torch.float64))
    assert out.dtype == torch.float64
    assert not torch.allclose(out[0], net(x, torch.tensor([0.9, 0.9], dtype=torch.float64))[0])
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_build_net_registry_and_errors():
    assert {"mlp", "step_embed_mlp", "unet", "vector_head", "image_head", "critic_mlp"} <= set(NETS)
    with pytest.raises(ValueError, match="unknown net"):
        build_net({"name": "transformer"})
    with pytest.raises(ValueError, match="bad parameters"):
        build_net({"name": "mlp", "dim": 2, "widht": 3})
    with pytest.raises(ValueError, match="activation"):
        MLP(2, activation="swish2")

    class Tiny(nn.Module):
        net_name = "tiny_test_net"

        def __init__(self, dim=2):
            super().__init__()
            self.dim = dim

        def config(self):
            return {"name": self.net_name, "dim": self.dim}

    register_net(Tiny)
    assert isinstance(build_net({"name": "tiny_test_net", "dim": 3}), Tiny)
    NETS.pop("tiny_test_net")
