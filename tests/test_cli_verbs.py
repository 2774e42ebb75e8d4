"""The cli/ package: every verb's --help works and lists its --set keys with the dataclass defaults; models travel
as explicit ``LoadedModel`` values (no attributes attached to models, no ``hasattr(model, ...)`` checks in src/)."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scorelab.bridge.runner import BridgeConfig
from scorelab.cli.common import parse_value
from scorelab.cli.guidance import TrainDiscriminatorOptions
from scorelab.cli.main import build_parser, main
from scorelab.core.analytic import GaussianMixture
from scorelab.core.denoisers import ClippedModel, NetworkModel
from scorelab.core.processes import VP
from scorelab.finetune.f_restart import FRestartConfig
from scorelab.finetune.sft_pg import SFTPGConfig
from scorelab.guidance.rejection import RejectConfig
from scorelab.io.checkpoints import save_checkpoint
from scorelab.io.loading import LoadedModel, load_any_model, load_checkpoint_model, load_oracle, with_clipped_x0
from scorelab.nets import MLP, UNet
from scorelab.training.experiment import ExperimentConfig

SRC = Path(__file__).resolve().parents[1] / "src"

#: verbs that take --set, and the dataclass whose fields are their keys
SET_CONFIGS = {("train",): ExperimentConfig, ("finetune", "sft-pg"): SFTPGConfig,
               ("finetune", "f-restart"): FRestartConfig,
               ("guidance", "train-discriminator"): TrainDiscriminatorOptions, ("reject",): RejectConfig,
               ("bridge",): BridgeConfig}


def verb_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path of sub-command names, parser) for every sub-command, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield path + (name,), sp
                yield from verb_parsers(sp, path + (name,))


def expected_keys(cls, prefix: str = "") -> dict[str, object]:
    """``{key: default}`` of a config dataclass, nested dataclass fields as ``field.key`` (tuples as lists)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            out.update(expected_keys(type(default), f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = list(default) if isinstance(default, tuple) else default
    return out


def missing_or_wrong(help_text: str, cls) -> list[str]:
    """Keys of ``cls`` that the help text does not list as ``key=default`` (read back as ``--set`` would)."""
    listed = dict(re.findall(r"^\s+([\w.]+)=(.*)$", help_text, flags=re.M))
    return [f"{k} (want {v!r}, listed {listed.get(k)!r})" for k, v in expected_keys(cls).items()
            if k not in listed or parse_value(listed[k]) != v]


def help_of(capsys, path: tuple[str, ...]) -> str:
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_every_verb_has_help(capsys):
    paths = [p for p, _ in verb_parsers(build_parser())]
    assert {("sample",), ("evaluate",), ("likelihood",), ("density",), ("demo",), ("datasets",), ("samplers",),
            ("train",), ("reject",), ("finetune", "sft-pg"), ("guidance", "train-discriminator")} <= set(paths)
    assert "usage: scorelab" in help_of(capsys, ())
    for path in paths:
        assert "usage: scorelab " + " ".join(path) in help_of(capsys, path)
    assert "--full" in help_of(capsys, ("demo",))


def test_set_keys_and_defaults_are_listed_in_help(capsys):
    with_set = {p for p, sp in verb_parsers(build_parser()) if any(a.dest == "set" for a in sp._actions)}
    assert with_set == set(SET_CONFIGS), "a verb with --set needs its dataclass in SET_CONFIGS"
    for path, cls in SET_CONFIGS.items():
        bad = missing_or_wrong(help_of(capsys, path), cls)
        assert not bad, f"scorelab {' '.join(path)} --help lacks: {bad}"


def test_set_keys_check_can_fail(capsys):
    text = help_of(capsys, ("reject",))
    assert not missing_or_wrong(text, RejectConfig)
    assert missing_or_wrong(text.replace("\n  nfe=50\n", "\n"), RejectConfig) == ["nfe (want 50, listed None)"]
    assert missing_or_wrong(text.replace("  nfe=50", "  nfe=60"), RejectConfig)


def test_module_entry_points():
    for module in ("scorelab.cli", "scorelab.cli.main"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                           env={"PYTHONPATH": str(SRC), "PATH": ""})
        assert r.returncode == 0 and "usage: scorelab" in r.stdout, r.stderr


# -- no state attached to models -------------------------------------------------------------------------------
def attribute_state(source: str, filename: str = "<src>") -> list[str]:
    """``hasattr(model, ...)`` calls and ``X.event_shape = ...`` / ``setattr(X, "event_shape", ...)`` on anything
    but ``self`` in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            first = node.args[0]
            if node.func.id in ("hasattr", "getattr") and isinstance(first, ast.Name) and first.id == "model":
                found.append(f"{filename}:{node.lineno}: {node.func.id}(model, ...)")
            if (node.func.id == "setattr" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value == "event_shape"):
                found.append(f"{filename}:{node.lineno}: setattr(..., 'event_shape', ...)")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:
            for sub in ast.walk(t):
                if (isinstance(sub, ast.Attribute) and sub.attr == "event_shape"
                        and not (isinstance(sub.value, ast.Name) and sub.value.id == "self")):
                    found.append(f"{filename}:{node.lineno}: {ast.unparse(sub)} = ...")
    return found


def test_no_model_attribute_state_in_src():
    found = [f for p in sorted((SRC / "scorelab").rglob("*.py")) for f in attribute_state(p.read_text(), str(p))]
    assert not found, "state attached to models or hasattr type checks:\n" + "\n".join(found)


def test_attribute_state_check_can_fail():
    src = ("def f(model, guided):\n    if hasattr(model, 'mixture'):\n        guided.event_shape = (2,)\n"
           "    model.event_shape, y = (2,), 1\n    setattr(guided, 'event_shape', (2,))\n"
           "    return getattr(model, 'process', None)\n")
    assert len(attribute_state(src)) == 5
    assert attribute_state("class A:\n    def __init__(self):\n        self.event_shape = (2,)\n") == []


# -- LoadedModel -------------------------------------------------------------------------------------------------
def test_loaded_model_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = NetworkModel(MLP(2, width=8, depth=1), VP())
    save_checkpoint(tmp_path / "run" / "ckpt_00000001", model, ema_model=model, step=1)  # no event_shape stored
    loaded = load_checkpoint_model(tmp_path / "run")  # a run folder: its latest checkpoint
    assert isinstance(loaded, LoadedModel) and loaded.event_shape == (2,) and loaded.oracle is None
    assert loaded.dtype == torch.float32 and loaded.source.endswith("ckpt_00000001.json")
    assert "event_shape" not in vars(loaded.model)
    x, t = torch.randn(5, 2), torch.rand(5)
    torch.testing.assert_close(loaded.model.eps(x, t), model.eps(x, t))
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.event_shape = (3,)
    unet = NetworkModel(UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                             attn_resolutions=(), image_size=8, mid_attention=False), VP())
    save_checkpoint(tmp_path / "img", unet)
    assert load_checkpoint_model(tmp_path / "img", weights="model").event_shape == (1, 8, 8)  # from the net config
    save_checkpoint(tmp_path / "stored", model, event_shape=(2,))
    assert load_checkpoint_model(f"{tmp_path / 'stored'}.json", weights="model").event_shape == (2,)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint_model(tmp_path / "nope")


def test_loaded_model_from_an_oracle():
    loaded = load_oracle("gmm:ring8", "vp")
    assert loaded.event_shape == (2,) and isinstance(loaded.oracle, GaussianMixture) and loaded.oracle.d == 2
    assert loaded.dtype == torch.float64 and "gmm:ring8" in loaded.source
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(loaded.model.x0(x, 0.5), loaded.oracle.as_model(VP()).x0(x, 0.5))
    clipped = with_clipped_x0(loaded, -0.5, 0.5)
    assert isinstance(clipped.model, ClippedModel) and clipped.oracle is loaded.oracle
    assert clipped.event_shape == (2,) and float(clipped.model.x0(3 * x, 0.5).abs().max()) <= 0.5
    same = load_any_model(oracle="gmm:ring8", process="vp", clip_x0=(-0.5, 0.5))
    torch.testing.assert_close(same.model.x0(x, 0.5), clipped.model.x0(x, 0.5))
    with pytest.raises(ValueError, match="checkpoint"):
        load_any_model()
