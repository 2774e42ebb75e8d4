"""Training loop: schedules, EMA, exact resume, checkpoints, NaN handling, learning the exact denoiser, DDP."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scorelab.core.analytic import GaussianMixture
from scorelab.core.denoisers import NetworkModel
from scorelab.core.processes import VP, Discrete
from scorelab.io.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint, load_model
from scorelab.nets import MLP, StepEmbedMLP, UNet
from scorelab.training.loop import (
    BatchIndexer,
    NonFiniteLossError,
    TrainConfig,
    ema_decay_at,
    lr_at,
    read_log,
    train,
    update_ema,
)
from scorelab.training.losses import DSMLoss, LossConfig

HERE = Path(__file__).parent


def _small_model(seed=0, **kw):
    torch.manual_seed(seed)
    return NetworkModel(MLP(2, **{"width": 32, "depth": 2, **kw}), VP())


def _data(n=256, seed=1):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * torch.tensor([1.0, 0.3]) + 0.5


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way: cos(pi/2) = 0
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(50, TrainConfig(lr=2e-3, lr_schedule="constant")) == 2e-3


def test_ema_update_is_the_exponential_average():
    cfg = TrainConfig(ema_decay=0.9, ema_warmup=True)
    assert ema_decay_at(1, cfg) == pytest.approx(2 / 11) and ema_decay_at(1000, cfg) == 0.9
    ema, net = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(0.0)
    values, d = [1.0, 2.0, -1.0, 4.0], 0.8
    for v in values:
        with torch.no_grad():
            net.weight.fill_(v)
        update_ema(ema, net, d)
    expected = sum((1 - d) * d ** (len(values) - 1 - k) * v for k, v in enumerate(values))
    assert ema.weight.item() == pytest.approx(expected)


def test_batches_are_epoch_permutations_and_depend_only_on_seed_and_step():
    idx = BatchIndexer(10, 4, seed=3)
    first_two_epochs = torch.cat([idx(s) for s in range(5)])  # 20 indices = epochs 0 and 1, crossing boundaries
    assert sorted(first_two_epochs[:10].tolist()) == list(range(10))
    assert sorted(first_two_epochs[10:].tolist()) == list(range(10))
    assert torch.equal(BatchIndexer(10, 4, seed=3)(3), idx(3))
    assert not torch.equal(BatchIndexer(10, 4, seed=4)(0), idx(0))


def test_training_learns_the_exact_gaussian_denoiser():
    """DSM minimiser = exact eps: on Gaussian data the trained EMA net's eps matches the closed form."""
    mix = GaussianMixture([1.0], [[0.5, -0.3]], [[[0.6, 0.2], [0.2, 0.3]]])
    data = mix.sample(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    model = _small_model(width=64)
    cfg = TrainConfig(steps=300, batch_size=256, lr=3e-3, warmup_steps=20, ema_decay=0.99, seed=1)
    g = torch.Generator().manual_seed(5)
    t = 0.05 + 0.95 * torch.rand(2000, generator=g)
    x_t, _ = VP().marginal_sample(mix.sample(2000, generator=g, dtype=torch.float32), t, g)
    exact = mix.eps_t(x_t, t, VP())

    def rel_err(m):
        with torch.no_grad():
            return float((m.eps(x_t, t) - exact).norm() / exact.norm())

    before = rel_err(model)
    result = train(model, data, cfg, progress=False)
    assert before > 0.5 and rel_err(result.ema_model) < 0.06  # measured: 1.05 -> 0.027
    assert sum(result.history[-50:]) < sum(result.history[:50])


def test_resume_is_exact(tmp_path):
    cfg = TrainConfig(steps=16, batch_size=32, lr=5e-3, warmup_steps=4, grad_clip=0.5, ema_decay=0.9, log_every=2,
                      optimizer="adamw", weight_decay=0.01, seed=3)
    straight = train(_small_model(), _data(), cfg, run_dir=tmp_path / "a", progress=False)
    part = train(_small_model(), _data(), cfg, run_dir=tmp_path / "b", progress=False, until_step=8)
    assert part.step == 8 and load_checkpoint(part.checkpoint).step == 8
    resumed = train(_small_model(seed=99), _data(), cfg, run_dir=tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 16 and len(resumed.history) == 8
    for a, b in ((straight.model, resumed.model), (straight.ema_model, resumed.ema_model)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k  # bitwise
    assert straight.history[8:] == resumed.history
    assert read_log(tmp_path / "a") == [
        {**r, "time": read_log(tmp_path / "a")[i]["time"]} for i, r in enumerate(read_log(tmp_path / "b"))]


def test_resume_with_rmsprop_and_discrete_step_net(tmp_path):
    proc = Discrete.from_schedule("sigmoid", 10)
    torch.manual_seed(0)
    make = lambda: NetworkModel(StepEmbedMLP(10), proc)  # noqa: E731
    cfg = TrainConfig(steps=10, batch_size=16, optimizer="rmsprop", lr=1e-3, ema_decay=0.9, seed=0)
    torch.manual_seed(0)
    straight = train(make(), _data(), cfg, run_dir=tmp_path / "a", progress=False)
    torch.manual_seed(0)
    train(make(), _data(), cfg, run_dir=tmp_path / "b", progress=False, until_step=4)
    resumed = train(make(), _data(), cfg, run_dir=tmp_path / "b", resume=True, progress=False)
    for va, vb in zip(_state(straight.model).values(), _state(resumed.model).values(), strict=True):
        assert torch.equal(va, vb)
    loaded = load_model(tmp_path / "b")  # rebuilt from JSON: StepEmbedMLP + Discrete(sigmoid, 10)
    x, t = torch.randn(4, 2), torch.tensor([0.1, 0.5, 0.7, 1.0])
    torch.testing.assert_close(loaded.eps(x, t), resumed.ema_model.eps(x, t))


def test_checkpoints_are_json_plus_safetensors_atomic_and_pruned(tmp_path):
    cfg = TrainConfig(steps=20, batch_size=32, ckpt_every=5, keep_checkpoints=2, log_every=5)
    res = train(_small_model(num_classes=2), _data(), cfg, run_dir=tmp_path, progress=False,
                labels=torch.arange(256) % 2)
    names = sorted(os.listdir(tmp_path))
    assert names == ["ckpt_00000015.json", "ckpt_00000015.safetensors", "ckpt_00000020.json",
                     "ckpt_00000020.safetensors", "log.csv"]  # pruned to 2, no temporary files left
    meta = json.loads((tmp_path / "ckpt_00000020.json").read_text())
    assert meta["net_config"]["name"] == "mlp" and meta["process_config"]["name"] == "vp"
    assert meta["step"] == 20 and meta["parameterization"] == "eps" and isinstance(meta["rng"]["torch"], list)
    assert meta["extra"]["loss_config"]["proposal"] == "uniform"
    assert [r["step"] for r in read_log(tmp_path)] == [5, 10, 15, 20]
    x, t, y = torch.randn(3, 2), torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0, 1, -1])
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path).eps(x, t, y=y), res.ema_model.eps(x, t, y=y))
        torch.testing.assert_close(load_model(tmp_path, weights="model").eps(x, t, y=y), res.model.eps(x, t, y=y))
        torch.testing.assert_close(load_model(tmp_path, ema=False).eps(x, t, y=y), res.model.eps(x, t, y=y))
    st = tmp_path / "ckpt_00000020.safetensors"
    blob = bytearray(st.read_bytes())
    blob[-1] ^= 0xFF
    st.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(st)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    inner, calls = DSMLoss(LossConfig()), {"n": 0}

    def flaky(model, x0, *, generator=None, **cond):
        calls["n"] += 1
        out = inner(model, x0, generator=generator, **cond)
        return out * float("nan") if calls["n"] > 12 else out

    model = _small_model()
    cfg = TrainConfig(steps=30, batch_size=16, ckpt_every=5)
    with pytest.raises(NonFiniteLossError, match="ckpt_00000010"):
        train(model, _data(), cfg, run_dir=tmp_path, loss_fn=flaky, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad update was not applied
    last = latest_checkpoint(tmp_path)
    assert load_checkpoint(last).step == 10 and len(list_checkpoints(tmp_path)) == 2
    assert all(torch.isfinite(v).all() for v in load_checkpoint(last).model.values())


def test_label_dropout_trains_the_null_label():
    model = _small_model(num_classes=3)
    null_before = model.net.embed.label.weight[0].clone()
    cfg = TrainConfig(steps=5, batch_size=32, cond_drop_prob=0.5, lr=1e-2)
    train(model, _data(), cfg, labels=torch.arange(256) % 3, progress=False)
    assert not torch.equal(model.net.embed.label.weight[0], null_before)
    no_drop = _small_model(num_classes=3)
    train(no_drop, _data(), TrainConfig(steps=5, batch_size=32, lr=1e-2), labels=torch.arange(256) % 3,
          progress=False)
    assert torch.equal(no_drop.net.embed.label.weight[0], null_before)  # same init (seed 0), never used


def test_bf16_autocast_trains_with_finite_losses():
    fp32 = train(_small_model(), _data(), TrainConfig(steps=3, batch_size=32), progress=False)
    bf16 = train(_small_model(), _data(), TrainConfig(steps=3, batch_size=32, bf16=True), progress=False)
    assert all(math.isfinite(v) for v in bf16.history)
    assert bf16.history[0] == pytest.approx(fp32.history[0], rel=0.05)


def test_unet_trains_on_8x8_digits():
    from sklearn.datasets import load_digits

    data = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # [1797, 1, 8, 8] in [-1, 1]
    torch.manual_seed(0)
    model = NetworkModel(UNet(), VP())
    res = train(model, data, TrainConfig(steps=60, batch_size=32, lr=2e-3, warmup_steps=5), progress=False)
    first, last = sum(res.history[:10]) / 10, sum(res.history[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_bad_training_input_raises(tmp_path):
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd2")
    with pytest.raises(ValueError, match="data_shards"):
        TrainConfig(batch_size=10, data_shards=3)
    with pytest.raises(ValueError, match="run_dir"):
        train(_small_model(), _data(), TrainConfig(steps=1), resume=True)
    with pytest.raises(ValueError, match="per-example"):
        train(_small_model(), _data(), TrainConfig(steps=1, batch_size=8),
              loss_fn=lambda m, x, generator=None: m.eps(x, 0.5).sum(), progress=False)


def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun, 2 CPU processes with gloo under DDP, each on half of every global batch == 1 process, same global
    batch; also for a UNet on streamed uint8 images with flips, a loader worker and 2 micro-batches per rank."""
    sys.path.insert(0, str(HERE))
    from _ddp_worker import setup

    import scorelab

    src = str(Path(scorelab.__file__).resolve().parents[1])  # the workers import this very copy of scorelab
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), src])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_ddp_worker.py"), str(tmp_path / "ddp"), str(tmp_path / "ddp_unet")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from _ddp_worker import setup_unet

    # UNet: Adam divides gradients that are ~0 (behind zero-initialised output convs) by their own RMS, which turns
    # float round-off of DDP's average into up to ~0.1 lr per step; a wrong shard, flip or noise moves the losses.
    for (model, data, cfg), name, atol in ((setup(), "ddp", 1e-5), (setup_unet(1), "ddp_unet", 0.25 * 2e-3)):
        single = train(model, data, cfg, run_dir=tmp_path / f"one_{name}", progress=False)
        ddp = load_checkpoint(latest_checkpoint(tmp_path / name))
        assert ddp.step == cfg.steps and ddp.meta["extra"]["world_size"] == 2
        for k, v in single.model.state_dict().items():
            torch.testing.assert_close(ddp.model[k], v, rtol=0, atol=atol)
        for k, v in single.ema_model.state_dict().items():
            torch.testing.assert_close(ddp.ema[k], v, rtol=0, atol=atol)
        assert [r["loss"] for r in read_log(tmp_path / name)] == pytest.approx(
            [r["loss"] for r in read_log(tmp_path / f"one_{name}")], rel=1e-5)


def test_cli_train_under_torchrun_matches_one_process(tmp_path):
    """`torchrun -m scorelab.cli train`: 2 gloo ranks, rank 0 writes and reports; == 1 process with 2 data shards."""
    import yaml

    cfg = {"data": {"name": "moons", "n": 500}, "model": {"net": {"name": "mlp", "width": 16, "depth": 1}},
           "train": {"steps": 6, "batch_size": 32, "log_every": 3, "data_shards": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["-m", "scorelab.cli.main", "train", "--config", str(tmp_path / "c.yaml"), "--quiet", "--out"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *base,
                          str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count('"step": 6') == 1  # one report, from rank 0
    one = subprocess.run([sys.executable, *base, str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=180)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / d)) for d in ("ddp", "one"))
    assert a.meta["extra"]["world_size"] == 2 and b.meta["extra"]["world_size"] == 1
    for k, v in b.model.items():
        torch.testing.assert_close(a.model[k], v, rtol=0, atol=1e-5)
    assert (tmp_path / "ddp" / "config.yaml").exists() and (tmp_path / "ddp" / "loss.png").exists()


def test_fp16_grad_scaler_trains_and_resumes_bit_exactly(tmp_path):
    """fp16 autocast + dynamic GradScaler (its scale is checkpointed): finite losses close to fp32, exact resume."""
    cfg = TrainConfig(steps=6, batch_size=32, lr=5e-3, amp="fp16", ema_decay=0.9, seed=2)
    fp32 = train(_small_model(), _data(), TrainConfig(steps=6, batch_size=32, lr=5e-3, seed=2), progress=False)
    straight = train(_small_model(), _data(), cfg, run_dir=tmp_path / "a", progress=False)
    assert all(math.isfinite(v) for v in straight.history)
    assert straight.history[0] == pytest.approx(fp32.history[0], rel=0.02)
    train(_small_model(), _data(), cfg, run_dir=tmp_path / "b", progress=False, until_step=3)
    assert "grad_scaler" in load_checkpoint(latest_checkpoint(tmp_path / "b")).meta["extra"]
    resumed = train(_small_model(seed=5), _data(), cfg, run_dir=tmp_path / "b", resume=True, progress=False)
    assert straight.history[3:] == resumed.history
    for (k, va), vb in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_grad_accum_equals_data_shards_and_streamed_uint8_equals_in_memory(tmp_path):
    """grad_accum=2 in one process == data_shards=2; a streamed uint8 dataset (2 loader workers) == the same images
    decoded in memory; resume of a streamed run with flips is bitwise exact."""
    from scorelab.data.streaming import ArrayDataset, decode, photo_patches

    x8 = torch.from_numpy(photo_patches(size=8, stride=16)[0][:48])
    net = lambda: UNet(in_channels=3, base_channels=8, channel_mults=(1,), attn_resolutions=(), image_size=8)  # noqa
    make = lambda: (torch.manual_seed(0), NetworkModel(net(), VP()))[1]  # noqa: E731
    base = dict(steps=4, batch_size=8, lr=2e-3, seed=1, hflip=True)
    a = train(make(), decode(x8), TrainConfig(**base, grad_accum=2), progress=False)
    b = train(make(), ArrayDataset(x8), TrainConfig(**base, data_shards=2, num_workers=2), progress=False)
    assert a.history == b.history
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    c = train(make(), decode(x8), TrainConfig(**base), progress=False)
    assert c.history[0] == pytest.approx(a.history[0], rel=0.5) and c.history != a.history  # other noise
    train(make(), ArrayDataset(x8), TrainConfig(**base), run_dir=tmp_path / "r", progress=False, until_step=2)
    r = train(make(), ArrayDataset(x8), TrainConfig(**base), run_dir=tmp_path / "r", resume=True, progress=False)
    assert r.history == c.history[2:]


def test_scale_options_are_checked():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=2, data_shards=2)
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(bf16=True, amp="fp16")
    with pytest.raises(ValueError, match="num_workers"):
        TrainConfig(num_workers=-1)


@pytest.mark.slow
def test_torch_compile_matches_eager_losses():
    """compile=True (inductor on the CPU) trains the same model: losses equal eager ones to float tolerance."""
    cfg = dict(steps=4, batch_size=32, lr=5e-3, seed=2)
    eager = train(_small_model(), _data(), TrainConfig(**cfg), progress=False)
    compiled = train(_small_model(), _data(), TrainConfig(**cfg, compile=True), progress=False)
    assert compiled.history == pytest.approx(eager.history, rel=1e-4)
