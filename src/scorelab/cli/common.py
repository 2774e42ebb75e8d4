"""What every verb shares: the user-error type, ``key=value`` parsing, ``--set`` keys generated from the config
dataclasses (with their defaults, for ``--help``), the model arguments and JSON output.

A verb module has ``add_parser(sub)`` (its argparse sub-command, ``fn`` set to its ``run``) and ``run(args) -> int``;
it maps arguments onto library calls and nothing else.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import textwrap
from typing import Any, Callable, Sequence

import torch

from .._utils import check_field_types, load_yaml, suggest
from ..io.loading import LoadedModel, load_any_model


class CLIError(ValueError):
    """A user error: printed as one line, exit status 2."""


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, '1e-4' -> 0.0001, 'true' -> True, 'a,b' stays a string; YAML scalars read by
    ``_utils.load_yaml`` (the configs' reader)."""
    import yaml

    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: parse_value(v)}``."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p or not p.split("=", 1)[0].strip():
            raise CLIError(f"option {p!r} must look like key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def number_type(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)`` (int or float) that must satisfy ``ok``; otherwise one line
    "expected WHAT, got TEXT" (argparse prefixes the flag)."""

    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v

    parse.__doc__ = f"argparse type: {what}."
    return parse


#: argparse types of the numeric flags
positive_int = number_type(int, lambda v: v >= 1, "a positive integer")
positive_float = number_type(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
seed_int = number_type(int, lambda v: 0 <= v < 2**63, "a seed in [0, 2^63)")
finite_float = number_type(float, math.isfinite, "a finite number")


def config_from_options(cls, options: dict[str, Any], **fixed: Any):
    """Build the frozen dataclass ``cls`` from ``--set key=value`` options (unknown keys are errors)."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CLIError(f"unknown --set key {unknown[0]!r}{suggest(unknown[0], allowed)} ({cls.__name__} keys: "
                       f"{sorted(allowed)})")
    vals = {k: (tuple(v) if isinstance(v, list) else v) for k, v in {**options, **fixed}.items()}
    vals = check_field_types(cls, vals, "--set ")
    try:
        return cls(**vals)
    except TypeError as e:
        raise CLIError(f"bad option for {cls.__name__}: {e}") from None


#: ``--dtype`` names
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_device(name: str, what: str = "--device"):
    """``torch.device(name)`` if this torch can use it, else ``CLIError`` naming ``what`` (``_utils.check_device``)."""
    from .._utils import check_device as _check

    return _check(name, what)


def check_out(out: str, flag: str = "--out") -> str:
    """``out`` if it is a new or empty folder, else ``CLIError``: an existing file, or a folder holding files
    (earlier runs are never overwritten)."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise CLIError(f"{flag} {out!r} is an existing file; expected a new or empty folder")
        if os.listdir(out):
            raise CLIError(f"{flag} {out!r} already holds files (earlier runs are never overwritten); choose a new "
                           "or empty folder")
    return out


def write_run_provenance(args: argparse.Namespace, folder, t0: float, loaded: LoadedModel | None = None,
                         **fields: Any) -> None:
    """``io.provenance.write_provenance`` into ``folder`` with the command line of ``args`` (set by ``main``), the
    checkpoint of ``loaded`` (path + sha256; None for oracles), the seed and the wall time since ``t0``."""
    import time

    from ..io.provenance import write_provenance

    if loaded is not None:
        fields.setdefault("checkpoint", loaded.source if loaded.oracle is None else None)
        fields.setdefault("model", loaded.source)
    fields.setdefault("seed", getattr(args, "seed", None))
    write_provenance(folder, argv=getattr(args, "argv", None), wall_s=time.perf_counter() - t0, **fields)


def write_json(path: str, obj: dict) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file, ``os.replace``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)


def print_json(obj: dict, drop: Sequence[str] = ()) -> None:
    """Print ``obj`` (without the keys ``drop``) as indented JSON."""
    print(json.dumps({k: v for k, v in obj.items() if k not in drop}, indent=2, default=float))


# -- --set keys with their defaults, generated from the config dataclasses ---------------------------------------
def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default (calling its ``default_factory``); ``dataclasses.MISSING`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def format_default(value: Any) -> str:
    """A default written as ``--set key=VALUE`` takes it: ``parse_value(format_default(v))`` gives ``v`` back
    (tuples as lists); JSON where the plain text would read back differently."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    plain = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, float) and "e" in plain and "." not in plain:  # YAML 1.1 reads 1e-05 as a string
        mantissa, exponent = plain.split("e")
        plain = f"{float(mantissa)!r}e{exponent}"
    want = list(value) if isinstance(value, tuple) else value
    if isinstance(value, (dict, list, tuple)) or parse_value(plain) != want:
        return json.dumps(value, default=str)
    return plain


def set_keys(cls, prefix: str = "", nested: bool = True) -> list[tuple[str, Any]]:
    """``[(key, default), ...]`` for the fields of the dataclass ``cls``; fields that are dataclasses themselves are
    listed key by key as ``field.key`` when ``nested``."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        default = field_default(f)
        if nested and dataclasses.is_dataclass(default):
            out += set_keys(type(default), f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, default))
    return out


def set_keys_help(cls, title: str, prefix: str = "", nested: bool = True) -> str:
    """The ``--help`` block listing every ``--set`` key of ``cls`` with its default, one ``key=default`` a line."""
    rows = [f"  {k}={'(required)' if v is dataclasses.MISSING else format_default(v)}"
            for k, v in set_keys(cls, prefix, nested)]
    return f"{title}\n" + "\n".join(rows) + "\n"


def add_verb(sub, name: str, fn, help_: str, epilog: str = "") -> argparse.ArgumentParser:
    """A sub-command whose epilog (examples, ``--set`` keys) is printed as written."""
    sp = sub.add_parser(name, help=help_, description=help_, epilog=textwrap.dedent(epilog) or None,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.set_defaults(fn=fn)
    return sp


# -- the model a verb works on ------------------------------------------------------------------------------------
def add_model_args(sp: argparse.ArgumentParser) -> None:
    """``--checkpoint`` or ``--model gmm:...`` (+ ``--process``), ``--no-ema``, ``--seed``, ``--clip-x0 LO HI``."""
    sp.add_argument("--checkpoint", help="run directory or checkpoint of a trained model")
    sp.add_argument("--no-ema", action="store_true", help="use raw weights instead of the EMA")
    sp.add_argument("--model", help="exact oracle instead of a checkpoint: gmm:ring8|grid9|grid25|random-K-D-SEED")
    sp.add_argument("--process", default="vp", help="process for --model: vp|subvp|vp_cosine|ve|edm|"
                    "discrete:SCHEDULE:N")
    sp.add_argument("--seed", type=seed_int, default=0)
    sp.add_argument("--clip-x0", nargs=2, type=finite_float, metavar=("LO", "HI"),
                    help="project the model's x0 into [LO, HI] (data range, e.g. -1 1 for images)")


def loaded_model(args: argparse.Namespace) -> LoadedModel:
    """The ``LoadedModel`` the model arguments name (``io.loading.load_any_model``)."""
    return load_any_model(checkpoint=args.checkpoint, oracle=args.model, process=args.process,
                          weights="model" if args.no_ema else "ema",
                          clip_x0=tuple(args.clip_x0) if args.clip_x0 else None)
