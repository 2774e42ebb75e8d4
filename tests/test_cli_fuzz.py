"""Table-driven fuzz of the ``scorelab`` command (issue #21): every bad input exits with status 2 and exactly one
line on stderr naming what was wrong, never a traceback, and leaves no output folder (or a half-written one) behind.

Cases run in-process through ``scorelab.cli.main(argv)`` (a subprocess costs 2-5 s); a few run as real processes.
The tiny checkpoints, corrupt copies and data files are made once per module.  Each row of ``CASES`` is
``(id, argv template, expected substring of the error, output path that must not appear)``; templates name files of
the module fixture as ``{key}``.  The hypothesis properties drive numeric flags with values outside their range.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _cli import run_cli  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PY = [sys.executable, "-m", "scorelab.cli"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


# -- fixtures: one tiny trained run, its corrupt copies, data files and configs -------------------------------------
def _yaml(path: Path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return str(path)


def _copy_ckpt(src_json: Path, folder: Path) -> Path:
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(src_json.with_suffix(suffix), folder / ("c" + suffix))
    return folder / "c"


def _edit_json(stem: Path, fn) -> str:
    p = stem.with_suffix(".json")
    meta = json.loads(p.read_text())
    fn(meta)
    p.write_text(json.dumps(meta))
    return str(stem)


def _corrupt_checkpoints(ckpt: Path, root: Path) -> dict[str, str]:
    out = {}
    s = _copy_ckpt(ckpt, root / "trunc_st")
    blob = s.with_suffix(".safetensors").read_bytes()
    s.with_suffix(".safetensors").write_bytes(blob[: len(blob) // 2])
    out["trunc_st"] = str(s)
    s = _copy_ckpt(ckpt, root / "trunc_json")
    s.with_suffix(".json").write_text(s.with_suffix(".json").read_text()[:40])
    out["trunc_json"] = str(s)
    out["edited_width"] = _edit_json(_copy_ckpt(ckpt, root / "edited_width"),
                                     lambda m: m["net_config"].update(width=m["net_config"]["width"] * 2))
    out["bad_format"] = _edit_json(_copy_ckpt(ckpt, root / "bad_format"), lambda m: m.update(format="other"))
    out["bad_net"] = _edit_json(_copy_ckpt(ckpt, root / "bad_net"), lambda m: m["net_config"].update(name="nonet"))
    out["no_net"] = _edit_json(_copy_ckpt(ckpt, root / "no_net"), lambda m: m.pop("net_config"))
    s = _copy_ckpt(ckpt, root / "garbage_st")  # garbage whose sha256 is recorded: the parser must refuse it
    s.with_suffix(".safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    out["garbage_st"] = _edit_json(s, lambda m: m.update(
        sha256=hashlib.sha256(s.with_suffix(".safetensors").read_bytes()).hexdigest()))
    return out


def _nan_checkpoint(ckpt: Path, root: Path) -> str:
    """The run's model with NaN weights (what a diverged run's checkpoint samples like)."""
    from scorelab.io.checkpoints import load_model, save_checkpoint

    model = load_model(ckpt)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return str(save_checkpoint(root / "nan_ckpt" / "ckpt_00000001", model, ema_model=model, step=1))


def _image_checkpoint(root: Path) -> str:
    """An untrained 1x8x8 UNet checkpoint (sampling it only has to run)."""
    from scorelab.core.denoisers import NetworkModel
    from scorelab.core.processes import VP
    from scorelab.io.checkpoints import save_checkpoint
    from scorelab.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(base_channels=8, channel_mults=(1,), attn_resolutions=(), mid_attention=False, groups=4)
    model = NetworkModel(net, VP())
    return str(save_checkpoint(root / "img" / "ckpt_00000000", model, ema_model=model, step=0, event_shape=(1, 8, 8)))


def _data_files(root: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    arrays = {"good2": rng.normal(size=(64, 2)), "x3": rng.normal(size=(10, 3)), "x4d": rng.normal(size=(100, 3, 2, 2)),
              "x1d": rng.normal(size=100), "empty": np.zeros((0, 2)), "img": rng.uniform(-1, 1, size=(40, 1, 8, 8))}
    arrays["nan"] = arrays["good2"].copy()
    arrays["nan"][3, 1] = np.nan
    arrays["inf"] = arrays["good2"].copy()
    arrays["inf"][5, 0] = np.inf
    out = {}
    for k, a in arrays.items():
        np.save(root / f"{k}.npy", a.astype(np.float32))
        out[k] = str(root / f"{k}.npy")
    (root / "text.npy").write_text("not an array")
    np.save(root / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out["text"], out["obj"] = str(root / "text.npy"), str(root / "obj.npy")
    return out


BASE_CFG = {"data": {"name": "moons", "n": 256}, "model": {"net": {"name": "mlp", "width": 8, "depth": 1}},
            "train": {"steps": 3, "batch_size": 32, "log_every": 1}}


def _configs(root: Path, files: dict[str, str]) -> dict[str, str]:
    def cfg(**sections):
        return {**BASE_CFG, **sections}

    bad = {"cfg_steps_str": cfg(train={"steps": "ten"}), "cfg_lr_str": cfg(train={"lr": "fast"}),
           "cfg_batch_neg": cfg(train={"batch_size": -1}), "cfg_data_list": cfg(data=[1, 2]),
           "cfg_top_list": [1, 2], "cfg_syntax": "train: {steps: [1, 2\n", "cfg_section": {**BASE_CFG, "trian": {}},
           "cfg_process": cfg(process={"name": "nope"}), "cfg_data_name": cfg(data={"name": "no_such_set"}),
           "cfg_optimizer": cfg(train={"optimizer": "sgd2"}), "cfg_order": cfg(objective={"name": "hodsm", "order": 5}),
           "cfg_nan_data": cfg(data={"name": files["nan"]}), "cfg_empty_data": cfg(data={"name": files["empty"]}),
           "cfg_img_mlp": cfg(data={"name": files["img"]}),
           "cfg_n_big": cfg(data={"name": files["good2"], "n": 10**5}), "cfg_diverge": cfg(train={"steps": 3, "lr": 1e9,
                                                                                        "grad_clip": None}),
           "cfg_ok": cfg()}
    return {k: _yaml(root / f"{k}.yaml", v) for k, v in bad.items()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from scorelab.training.experiment import experiment_from_dict, run_training

    root = tmp_path_factory.mktemp("fuzz")
    res = run_training(experiment_from_dict(BASE_CFG), root / "run", progress=False)
    ckpt = Path(res["checkpoint"])
    files = {"root": str(root), "run": str(root / "run"), "ckpt": str(ckpt.with_suffix("")),
             "nan_ckpt": _nan_checkpoint(ckpt, root), "img_ckpt": _image_checkpoint(root)}
    files.update(_corrupt_checkpoints(ckpt, root))
    files.update(_data_files(root))
    files.update(_configs(root, files))
    (root / "empty_dir").mkdir()
    (root / "full_dir").mkdir()
    (root / "full_dir" / "keep.txt").write_text("earlier results")
    (root / "a_file").write_text("x")
    files.update(empty_dir=str(root / "empty_dir"), full_dir=str(root / "full_dir"), a_file=str(root / "a_file"),
                 new=str(root / "new_out"))
    return files


def assert_one_line_error(code: int, err: str, expect: str) -> None:
    """Exit status 2, exactly one line on stderr, no traceback, the line names ``expect``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error" in lines[0]
    assert expect.lower() in lines[0].lower(), lines[0]


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


S = ["sample", "--checkpoint", "{ckpt}", "--sampler", "ddim", "--n", "8", "--out", "{new}"]
O = ["sample", "--model", "gmm:ring8", "--sampler", "heun", "--nfe", "9", "--n", "8", "--out", "{new}"]
LK = ["likelihood", "--checkpoint", "{ckpt}", "--n", "4"]
LO = ["likelihood", "--model", "gmm:ring8", "--n", "4"]
EV = ["evaluate", "--reference", "moons", "--samples"]
T = ["train", "--quiet", "--out", "{new}", "--config"]
D = ["density", "--target", "gmm9", "--iterations", "1", "--out", "{new}"]
FT = ["finetune", "sft-pg", "--checkpoint", "{ckpt}", "--out", "{new}", "--quiet"]
RJ = ["reject", "--checkpoint", "{ckpt}", "--discriminator", "{ckpt}", "--out", "{new}"]

#: (id, argv template, expected substring of the one-line error)
CASES = [
    # -- names ---------------------------------------------------------------------------------------------------
    ("name/sampler", O[:4] + ["nope"] + O[5:], "unknown sampler"),
    ("name/sampler-typo", O[:4] + ["hune"] + O[5:], "did you mean 'heun'"),
    ("name/oracle", ["sample", "--model", "gmm:nope"] + O[3:], "unknown oracle"),
    ("name/oracle-random", ["sample", "--model", "gmm:random-x"] + O[3:], "random-K-D-SEED"),
    ("name/process", O + ["--process", "foo"], "unknown process"),
    ("name/grid", O + ["--grid", "nonsense"], "unknown grid"),
    ("name/opt-unknown", S + ["--nfe", "5", "--opt", "nosuchopt=1"], "no option"),
    ("name/opt-typo", S + ["--nfe", "5", "--opt", "etta=1"], "did you mean 'eta'"),
    ("name/opt-type", S + ["--nfe", "5", "--opt", "eta=abc"], "eta='abc'"),
    ("name/opt-no-equals", S + ["--nfe", "5", "--opt", "eta"], "key=value"),
    ("name/dtype", S + ["--nfe", "5", "--dtype", "float16"], "--dtype"),
    ("name/device", S + ["--nfe", "5", "--device", "bogus"], "--device"),
    ("name/device-cuda", S + ["--nfe", "5", "--device", "cuda"], "cuda"),
    ("name/guidance", S + ["--nfe", "5", "--guidance", "nope:1"], "guidance spec"),
    ("name/verb", ["smaple", "--n", "3"], "invalid choice"),
    ("name/no-model", ["sample", "--sampler", "heun", "--nfe", "9", "--out", "{new}"], "give a checkpoint"),
    ("name/reference-set", EV + ["{good2}", "--reference", "no_such_set"], "unknown data set"),
    ("name/divergence", LO + ["--divergence", "foo"], "--divergence"),
    ("name/finetune-set", FT + ["--set", "nope=1"], "unknown --set key"),
    ("name/reject-set", RJ + ["--set", "samplr=ddim"], "did you mean 'sampler'"),
    ("name/density-method", D + ["--method", "xyz"], "--method"),
    # -- numbers out of range ------------------------------------------------------------------------------------
    ("num/nfe-0", S + ["--nfe", "0"], "--nfe"),
    ("num/nfe-neg", S + ["--nfe", "-1"], "--nfe"),
    ("num/nfe-text", S + ["--nfe", "abc"], "--nfe"),
    ("num/nfe-frac", S + ["--nfe", "1.5"], "--nfe"),
    ("num/nfe-too-small", O[:4] + ["pc", "--nfe", "1"] + O[7:], "too small"),  # PC: predictor + corrector = 2
    ("num/n-0", S + ["--nfe", "5", "--n", "0"], "--n"),
    ("num/n-neg", S + ["--nfe", "5", "--n", "-5"], "--n"),
    ("num/seed-neg", S + ["--nfe", "5", "--seed", "-1"], "--seed"),
    ("num/seed-huge", S + ["--nfe", "5", "--seed", str(2**70)], "--seed"),
    ("num/batch-0", S + ["--nfe", "5", "--batch-size", "0"], "--batch-size"),
    ("num/rtol-neg", LO + ["--rtol", "-1"], "--rtol"),
    ("num/rtol-0", LO + ["--rtol", "0"], "--rtol"),
    ("num/atol-nan", LO + ["--atol", "nan"], "--atol"),
    ("num/pixel-scale-inf", LO + ["--pixel-scale", "inf"], "--pixel-scale"),
    ("num/elbo-samples-0", LO + ["--elbo-samples", "0"], "--elbo-samples"),
    ("num/scale-nan", S + ["--nfe", "5", "--scale", "nan"], "--scale"),
    ("num/clip-nan", S + ["--nfe", "5", "--clip-x0", "nan", "1"], "--clip-x0"),
    ("num/density-lr-0", D + ["--lr", "0"], "--lr"),
    ("num/density-time-neg", D + ["--time-limit", "-1"], "--time-limit"),
    ("num/reject-K-neg", RJ + ["--K", "-1"], "--K"),
    # -- huge sizes: refused before allocating -------------------------------------------------------------------
    ("huge/nfe", O[:6] + ["99999999999"] + O[7:], "GiB"),
    ("huge/n-oracle", O[:8] + ["100000000000"] + O[9:], "GiB"),
    ("huge/n-checkpoint", S[:6] + ["4000000000", "--nfe", "5"] + S[7:], "GiB"),
    ("huge/n-images", ["sample", "--checkpoint", "{img_ckpt}", "--sampler", "ddim", "--nfe", "2", "--n", "100000000",
                       "--out", "{new}"], "GiB"),
    # -- wrong shapes (never reshaped) ---------------------------------------------------------------------------
    ("shape/4d-on-2d-model", LK + ["--samples", "{x4d}"], "shape"),
    ("shape/1d-array", LK + ["--samples", "{x1d}"], "shape"),
    ("shape/3-columns", LK + ["--samples", "{x3}"], "shape"),
    ("shape/reference-width", ["evaluate", "--samples", "{good2}", "--reference", "{x3}"], "shape"),
    ("shape/reference-for-scatter", O + ["--reference", "{x3}"], "shape"),
    ("shape/oracle-width", ["evaluate", "--samples", "{x3}", "--reference", "gmm:ring8"], "d=2"),
    ("shape/images-to-mlp", T + ["{cfg_img_mlp}"], "vector data"),
    # -- NaN / inf / empty / unreadable data ---------------------------------------------------------------------
    ("data/nan", EV + ["{nan}"], "nan"),
    ("data/inf", EV + ["{inf}"], "nan/inf"),
    ("data/empty", EV + ["{empty}"], "n >= 1"),
    ("data/not-npy", EV + ["{text}"], "cannot read"),
    ("data/pickled-npy", EV + ["{obj}"], "cannot read"),
    ("data/likelihood-nan", LK + ["--samples", "{nan}"], "nan"),
    ("data/train-nan", T + ["{cfg_nan_data}"], "nan"),
    ("data/train-empty", T + ["{cfg_empty_data}"], "data.name"),
    ("data/train-n-too-large", T + ["{cfg_n_big}"], "data.n=null uses all of it"),
    ("data/nan-model-samples", ["sample", "--checkpoint", "{nan_ckpt}", "--sampler", "ddim", "--nfe", "3", "--n", "8",
                                "--out", "{new}"], "--allow-nonfinite"),
    # -- corrupt, truncated, edited checkpoints ------------------------------------------------------------------
    ("ckpt/truncated-tensors", S[:2] + ["{trunc_st}"] + S[3:] + ["--nfe", "5"], "sha256"),
    ("ckpt/truncated-json", S[:2] + ["{trunc_json}"] + S[3:] + ["--nfe", "5"], "not valid json"),
    ("ckpt/edited-width", S[:2] + ["{edited_width}"] + S[3:] + ["--nfe", "5"], "do not fit"),
    ("ckpt/edited-format", S[:2] + ["{bad_format}"] + S[3:] + ["--nfe", "5"], "not a scorelab checkpoint"),
    ("ckpt/edited-net-name", S[:2] + ["{bad_net}"] + S[3:] + ["--nfe", "5"], "net"),
    ("ckpt/no-net-config", S[:2] + ["{no_net}"] + S[3:] + ["--nfe", "5"], "net_config"),
    ("ckpt/garbage-tensors", S[:2] + ["{garbage_st}"] + S[3:] + ["--nfe", "5"], "safetensors"),
    ("ckpt/empty-folder", S[:2] + ["{empty_dir}"] + S[3:] + ["--nfe", "5"], "no checkpoint"),
    ("ckpt/data-file", S[:2] + ["{good2}"] + S[3:] + ["--nfe", "5"], "checkpoint"),
    ("ckpt/missing", S[:2] + ["{root}/nope"] + S[3:] + ["--nfe", "5"], "does not exist"),
    # -- YAML: wrong types and keys ------------------------------------------------------------------------------
    ("yaml/steps-str", T + ["{cfg_steps_str}"], "train.steps must be int"),
    ("yaml/lr-str", T + ["{cfg_lr_str}"], "train.lr"),
    ("yaml/batch-neg", T + ["{cfg_batch_neg}"], "batch_size"),
    ("yaml/section-list", T + ["{cfg_data_list}"], "must be a mapping"),
    ("yaml/top-list", T + ["{cfg_top_list}"], "mapping at top level"),
    ("yaml/syntax", T + ["{cfg_syntax}"], "not valid yaml"),
    ("yaml/section-typo", T + ["{cfg_section}"], "did you mean 'train'"),
    ("yaml/set-key-typo", T + ["{cfg_ok}", "--set", "train.stesp=3"], "did you mean 'steps'"),
    ("yaml/set-no-equals", T + ["{cfg_ok}", "--set", "train.steps"], "key=value"),
    ("yaml/set-type", T + ["{cfg_ok}", "--set", "train.steps=ten"], "train.steps"),
    ("yaml/process", T + ["{cfg_process}"], "process"),
    ("yaml/data-name", T + ["{cfg_data_name}"], "unknown data set"),
    ("yaml/optimizer", T + ["{cfg_optimizer}"], "unknown optimizer"),
    ("yaml/objective-order", T + ["{cfg_order}"], "order"),
    ("yaml/device-cuda", T + ["{cfg_ok}", "--set", "train.device=cuda"], "train.device"),
    ("yaml/config-is-folder", T + ["{empty_dir}"], "does not exist"),
    # -- paths ---------------------------------------------------------------------------------------------------
    ("path/out-is-file", S[:-1] + ["{a_file}", "--nfe", "5"], "existing file"),
    ("path/out-has-files", S[:-1] + ["{full_dir}", "--nfe", "5"], "already holds files"),
    ("path/out-under-file", S[:-1] + ["{a_file}/sub", "--nfe", "5"], "a_file"),
    ("path/train-out-existing-run", ["train", "--quiet", "--out", "{run}", "--config", "{cfg_ok}"], "--resume"),
    ("path/train-out-is-file", ["train", "--quiet", "--out", "{a_file}", "--config", "{cfg_ok}"], "existing file"),
    ("path/resume-missing", T + ["{cfg_ok}", "--resume"], "does not exist"),
    ("path/resume-and-overwrite", ["train", "--quiet", "--out", "{run}", "--config", "{cfg_ok}", "--resume",
                                   "--overwrite"], "one of them"),
    ("path/config-odd-name", T + ["{root}/n\u00f6 such dir/c f.yaml"], "does not exist"),
    ("path/evaluate-out-folder", EV + ["{good2}", "--out", "{empty_dir}"], "is a folder"),
    ("path/finetune-out-has-files", FT[:5] + ["{full_dir}", "--quiet"], "already holds"),
    ("path/density-out-has-files", D[:-1] + ["{full_dir}"], "already holds files"),
    ("path/reject-out-is-file", RJ[:-1] + ["{a_file}"], "existing file"),
    ("name/oracle-on-cuda", O + ["--device", "cuda"], "cuda"),
]


@pytest.mark.parametrize("case_id, template, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(env, capsys, case_id, template, expect):
    root = Path(env["root"])
    before = _snapshot(root)
    code, _, err = run_cli(capsys, [a.format(**env) for a in template])
    assert_one_line_error(code, err, expect)
    assert _snapshot(root) == before, f"{case_id} changed the files: {sorted(_snapshot(root) ^ before)}"


def test_the_table_has_at_least_60_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_divergence_exits_2_naming_the_step_and_the_last_good_checkpoint(env, capsys, tmp_path):
    code, _, err = run_cli(capsys, ["train", "--quiet", "--out", str(tmp_path / "r"), "--config", env["cfg_diverge"]])
    assert_one_line_error(code, err, "diverged")
    assert "at update" in err and "last good checkpoint" in err and "train.lr" in err


def test_debug_shows_the_traceback(env, capsys):
    code, _, err = run_cli(capsys, ["sample", "--debug", "--checkpoint", env["edited_width"], "--sampler", "ddim",
                                    "--nfe", "3", "--out", env["new"]])
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("scorelab: error:")


# -- a few real processes: the entry point, the exit status and stderr as a shell sees them ------------------------
@pytest.mark.parametrize("argv, expect", [
    (["sample", "--model", "gmm:ring8", "--sampler", "heun", "--nfe", "99999999999"], "GiB"),
    pytest.param(["train", "--config", "/no/such.yaml", "--set", "train.steps=1"], "does not exist",
                 marks=pytest.mark.slow),
    pytest.param(["sample", "--model", "gmm:ring8", "--sampler", "heun", "--nfe", "-3"], "--nfe",
                 marks=pytest.mark.slow),
])
def test_subprocess_exit_status_and_stderr(argv, expect, tmp_path):
    proc = subprocess.run(PY + argv, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    assert_one_line_error(proc.returncode, proc.stderr, expect)
    assert list(tmp_path.iterdir()) == []


# -- properties: numeric flags outside their range -----------------------------------------------------------------
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(flag=st.sampled_from(["--nfe", "--n", "--batch-size"]), value=st.integers(max_value=0))
def test_property_nonpositive_integers_are_refused(capsys, flag, value):
    argv = ["sample", "--model", "gmm:ring8", "--sampler", "heun", "--nfe", "9", "--n", "8", flag, str(value)]
    code, _, err = run_cli(capsys, argv)
    assert_one_line_error(code, err, flag)


@FAST
@given(flag=st.sampled_from(["--rtol", "--atol", "--pixel-scale"]),
       value=st.one_of(st.floats(max_value=0.0), st.sampled_from([float("nan"), float("inf")])))
def test_property_nonpositive_or_nonfinite_tolerances_are_refused(capsys, flag, value):
    code, _, err = run_cli(capsys, ["likelihood", "--model", "gmm:ring8", "--n", "4", flag, repr(value)])
    assert_one_line_error(code, err, flag)


@FAST
@given(text=st.text(alphabet="abcxyz-_.,;: ", min_size=1, max_size=8).filter(lambda s: s.strip() not in ("", "-")))
def test_property_non_numbers_are_refused(capsys, text):
    code, _, err = run_cli(capsys, ["sample", "--model", "gmm:ring8", "--sampler", "heun", "--nfe", text])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
