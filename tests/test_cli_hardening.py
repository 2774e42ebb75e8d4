"""Issue #21, the behaviours behind the fuzz test: YAML floats, every --set applied, runs never overwritten, resume
from the newest verified checkpoint, rotation by step, sampling in batches with a memory check, non-finite samples,
image/scatter outputs and provenance."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scorelab._utils import check_field_types, load_yaml
from scorelab.cli import main
from scorelab.io.checkpoints import list_checkpoints, save_checkpoint
from scorelab.training.experiment import experiment_from_dict, load_experiment
from scorelab.training.loop import TrainConfig, rotate_checkpoints

TINY = {"data": {"name": "moons", "n": 128}, "model": {"net": {"name": "mlp", "width": 8, "depth": 1}},
        "train": {"steps": 2, "batch_size": 32, "log_every": 1}}


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- YAML numbers -------------------------------------------------------------------------------------------------
def test_yaml_reads_exponent_and_leading_dot_numbers_as_floats(tmp_path):
    assert load_yaml("a: 1e-4\nb: 1E4\nc: .5\nd: -2e3\ne: 3\nf: text\ng: 1.5") == {
        "a": 1e-4, "b": 1e4, "c": 0.5, "d": -2e3, "e": 3, "f": "text", "g": 1.5}
    assert yaml.safe_load("a: 1e-4")["a"] == "1e-4"  # what PyYAML alone does (the bug this loader fixes)
    p = tmp_path / "c.yaml"
    p.write_text("train: {lr: 1e-4, steps: 1e3}\nloss: {}\n")
    exp = load_experiment(p, overrides={"train.weight_decay": load_yaml("1E-2")})
    assert exp.train.lr == 1e-4 and exp.train.steps == 1000 and isinstance(exp.train.steps, int)
    assert exp.train.weight_decay == 0.01


@settings(max_examples=50, deadline=None)
@given(m=st.integers(-999, 999), e=st.integers(-30, 30), upper=st.booleans())
def test_property_yaml_exponent_floats_round_trip(m, e, upper):
    text = f"{m}{'E' if upper else 'e'}{e}"
    assert load_yaml(text) == float(text)


def test_field_types_name_the_key_and_convert_numbers():
    assert check_field_types(TrainConfig, {"lr": 1, "steps": 1e3}) == {"lr": 1.0, "steps": 1000}
    with pytest.raises(ValueError, match=r"train\.steps must be int, got 'ten'"):
        check_field_types(TrainConfig, {"steps": "ten"}, "train.")
    with pytest.raises(ValueError, match=r"grad_clip must be float or null"):
        check_field_types(TrainConfig, {"grad_clip": "x"})
    with pytest.raises(ValueError, match=r"did you mean 'steps'"):
        experiment_from_dict({"train": {"stesp": 3}})


def test_sampler_option_types_are_checked_and_converted():
    from scorelab.samplers import SAMPLERS

    assert SAMPLERS["ddim"].check_options({"eta": 1}) == {"eta": 1.0}
    with pytest.raises(ValueError, match=r"option eta='abc': expected float"):
        SAMPLERS["ddim"].check_options({"eta": "abc"})


# -- training runs ------------------------------------------------------------------------------------------------
def test_every_set_is_applied_and_own_data_is_all_used(capsys, tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    np.save(tmp_path / "mine.npy", x)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY | {"data": {"name": "moons"}}))  # data.n: default (None = all)
    code, out, err = cli(capsys, "train", "--quiet", "--config", cfg, "--out", tmp_path / "r",
                         "--set", f"data.name={tmp_path / 'mine.npy'}", "--set", "train.steps=3")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["data"]["name"] == str(tmp_path / "mine.npy") and saved["data"]["n"] is None
    assert json.loads(out)["step"] == 3
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert prov["argv"][:2] == ["scorelab", "train"] and prov["checkpoint"]["sha256"] and prov["steps"] == 3
    from scorelab.cli.sample import reference_points  # the scatter's reference: the run's own data
    from scorelab.io.loading import load_checkpoint_model

    ref, label = reference_points(load_checkpoint_model(tmp_path / "r"), None, 10)
    assert label.startswith("training data") and torch.equal(ref, torch.from_numpy(x))


def test_existing_run_is_refused_then_moved_aside_with_overwrite(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "r"
    assert cli(capsys, "train", "--quiet", "--config", cfg, "--out", run)[0] == 0
    before = sorted(p.name for p in run.iterdir())
    code, _, err = cli(capsys, "train", "--quiet", "--config", cfg, "--out", run)
    assert code == 2 and "--resume" in err and sorted(p.name for p in run.iterdir()) == before
    code, _, err = cli(capsys, "train", "--quiet", "--config", cfg, "--out", run, "--overwrite", "--set",
                       "train.steps=1")
    assert code == 0 and "moved the earlier run" in err
    assert sorted(p.name for p in (tmp_path / "r.old").iterdir()) == before  # kept, not deleted
    assert [p.name for p in list_checkpoints(run)] == ["ckpt_00000001.json"]


def test_resume_skips_a_truncated_latest_checkpoint(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY | {"train": {**TINY["train"], "steps": 4, "ckpt_every": 2}}))
    run = tmp_path / "r"
    assert cli(capsys, "train", "--quiet", "--config", cfg, "--out", run)[0] == 0
    latest = run / "ckpt_00000004.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    code, out, err = cli(capsys, "train", "--quiet", "--config", cfg, "--out", run, "--resume", "--set",
                         "train.steps=6")
    assert code == 0, err
    assert "skipped ckpt_00000004" in err and "resuming from ckpt_00000002 (step 2)" in err
    assert json.loads(out)["step"] == 6


def test_rotation_goes_by_step_and_never_deletes_the_checkpoint_just_written(tmp_path):
    net = torch.nn.Linear(2, 2)
    for step in (100, 200, 300, 5):  # an older run's higher steps, then the checkpoint just written
        save_checkpoint(tmp_path / f"ckpt_{step:08d}", net, step=step)
    deleted = rotate_checkpoints(tmp_path, 2, keep=tmp_path / "ckpt_00000005")
    assert [p.name for p in deleted] == ["ckpt_00000100.json"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000005.json", "ckpt_00000200.json",
                                                            "ckpt_00000300.json"]
    assert [p.name for p in rotate_checkpoints(tmp_path, 1)] == ["ckpt_00000005.json", "ckpt_00000200.json"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000300.json"]  # the newest step stays


def test_sft_pg_defaults_are_valid_on_every_process():
    from scorelab.core.processes import VP, Discrete
    from scorelab.finetune.sft_pg import SFTPGConfig, make_policy_grid

    assert SFTPGConfig().data_n is None
    ts = make_policy_grid(VP(), 4)  # grid default 'native' on a continuous process: uniform t, ending at 0
    assert torch.equal(ts, make_policy_grid(VP(), 4, "uniform_t")) and ts[-1] == 0
    assert make_policy_grid(Discrete.from_schedule("linear", 10)).shape == (11,)
    with pytest.raises(ValueError, match="n_steps"):
        make_policy_grid(VP())


# -- sampling -----------------------------------------------------------------------------------------------------
def test_memory_is_checked_before_allocating():
    from scorelab.samplers.budget import check_memory, sample_memory_bytes

    need = sample_memory_bytes(1000, (2,), 100, 10, torch.float32)
    assert need == (2 * 1000 + 8 * 100) * 2 * 4 + 11 * 256
    assert check_memory(1000, (2,), 100, 10, available=need) == need
    with pytest.raises(ValueError, match=r"n=1000 .* nfe=10 .* GiB"):
        check_memory(1000, (2,), 100, 10, available=need - 1)


def test_sample_in_batches_is_batch_invariant_and_records_provenance(capsys, tmp_path):
    args = ["sample", "--model", "gmm:ring8", "--sampler", "dpm_solver_pp_2m", "--nfe", "8", "--n", "50"]
    assert cli(capsys, *args, "--out", tmp_path / "a")[0] == 0
    assert cli(capsys, *args, "--out", tmp_path / "b", "--batch-size", "7", "--dtype", "float64")[0] == 0
    a, b = np.load(tmp_path / "a" / "samples.npy"), np.load(tmp_path / "b" / "samples.npy")
    np.testing.assert_allclose(a, b, atol=1e-6)  # deterministic sampler: batches change nothing
    info = json.loads((tmp_path / "b" / "sample.json").read_text())
    assert info["n_batches"] == 8 and info["batch_size"] == 7
    prov = json.loads((tmp_path / "b" / "provenance.json").read_text())
    for key in ("command", "scorelab", "git_commit", "checkpoint", "sampler", "grid", "nfe_measured", "seed",
                "device", "wall_s"):
        assert key in prov
    assert prov["sampler"] == "dpm_solver_pp_2m" and prov["nfe_measured"] == info["nfe_measured_per_batch"] == 8
    assert prov["device"] == "cpu" and prov["seed"] == 0 and "--batch-size 7" in prov["command"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["provenance.json", "sample.json", "samples.npy",
                                                                    "samples.png"]


def _mlp_checkpoint(folder: Path, fill: float | None = None) -> str:
    from scorelab.core.denoisers import NetworkModel
    from scorelab.core.processes import VP
    from scorelab.nets import build_net

    torch.manual_seed(0)
    model = NetworkModel(build_net({"name": "mlp", "dim": 2, "width": 8, "depth": 1}), VP())
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
    return str(save_checkpoint(folder / "ckpt_00000001", model, ema_model=model, step=1))


def test_nonfinite_samples_are_refused_unless_allowed(capsys, tmp_path):
    ckpt = _mlp_checkpoint(tmp_path / "nan", float("nan"))
    args = ["sample", "--checkpoint", ckpt, "--sampler", "ddim", "--nfe", "3", "--n", "10"]
    code, _, err = cli(capsys, *args, "--out", tmp_path / "s")
    assert code == 2 and "10 of 10 samples have NaN/inf" in err and not (tmp_path / "s").exists()
    code, _, err = cli(capsys, *args, "--out", tmp_path / "s", "--allow-nonfinite", "--reference", "moons")
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["nonfinite_rows"] == 10
    assert (tmp_path / "s" / "samples.png").exists()


def test_image_samples_make_uint8_npz_and_a_square_grid(capsys, tmp_path):
    from PIL import Image

    from scorelab.core.denoisers import NetworkModel
    from scorelab.core.processes import VP
    from scorelab.nets.unet import UNet
    from scorelab.plotting import grid_shape

    assert grid_shape(16) == (4, 4) and grid_shape(10) == (3, 4) and grid_shape(3, nrow=1) == (1, 3)
    torch.manual_seed(0)
    model = NetworkModel(UNet(base_channels=8, channel_mults=(1,), attn_resolutions=(), mid_attention=False,
                              groups=4), VP())
    ckpt = save_checkpoint(tmp_path / "img" / "ckpt_00000000", model, ema_model=model, event_shape=(1, 8, 8))
    code, _, err = cli(capsys, "sample", "--checkpoint", ckpt, "--sampler", "ddim", "--nfe", "2", "--n", "16",
                       "--out", tmp_path / "s", "--batch-size", "5")
    assert code == 0, err
    imgs = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    assert imgs.shape == (16, 8, 8, 1) and imgs.dtype == np.uint8
    x = np.load(tmp_path / "s" / "samples.npy")
    np.testing.assert_array_equal(imgs[..., 0], np.round((np.clip(x[:, 0], -1, 1) + 1) * 127.5).astype(np.uint8))
    w, h = Image.open(tmp_path / "s" / "samples.png").size
    assert 0.8 < w / h < 1.25, (w, h)  # 4 x 4, not 8 x 2


def test_debug_flag_and_one_line_warnings(capsys, tmp_path):
    code, _, err = cli(capsys, "--debug", "sample", "--model", "gmm:nope", "--sampler", "heun", "--nfe", "9")
    assert code == 2 and "Traceback" in err
    assert math.isfinite(float(load_yaml(".5")))
