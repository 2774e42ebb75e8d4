r"""Provenance: where an output folder came from, as one ``provenance.json`` written next to every command's output.

Notation
--------
=================  ===============================================================================================
``command``        the command line as run (``argv`` list and its shell-quoted string)
``scorelab``       package version; ``git_commit`` of the source checkout (None when not run from git)
``checkpoint``     ``{path, sha256, step}`` of the checkpoint used (sha256 of its tensor file, as its sidecar
                   records it and loading verified), or None
``sampler``        sampler name, ``grid``, ``nfe_measured`` (counted by ``CountingModel``), ``seed``, ``device``
``wall_s``         wall-clock seconds of the command
=================  ===============================================================================================

One helper for every verb: ``write_provenance(folder, argv=..., checkpoint=..., ...)``.  Writes are atomic.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

PROVENANCE_FILE = "provenance.json"


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: scorelab's own source), None outside git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=where)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def checkpoint_identity(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """``{path, sha256, step}`` of a checkpoint (stem, ``.json`` or ``.safetensors``; the sha256 its sidecar records
    for the tensor file); None for None or a path that is no scorelab checkpoint (an oracle spec)."""
    from .checkpoints import checkpoint_paths, read_meta

    if path is None:
        return None
    try:
        meta = read_meta(path)
    except (ValueError, OSError):
        return None
    return {"path": str(checkpoint_paths(path)[0].with_suffix("").resolve()), "sha256": meta.get("sha256"),
            "step": meta.get("step")}


def provenance(*, argv: Sequence[str] | None = None, checkpoint: str | os.PathLike | None = None,
               sampler: str | None = None, grid: Any = None, nfe_measured: Any = None, seed: int | None = None,
               device: str | None = None, wall_s: float | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record (module docstring); ``extra`` keys are added as given (JSON types)."""
    import torch

    from .._version import __version__

    argv = list(sys.argv if argv is None else argv)
    return {"command": shlex.join(str(a) for a in argv), "argv": [str(a) for a in argv], "scorelab": __version__,
            "git_commit": git_commit(), "python": sys.version.split()[0], "torch": torch.__version__,
            "cwd": os.getcwd(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint": checkpoint_identity(checkpoint), "sampler": sampler, "grid": grid,
            "nfe_measured": nfe_measured, "seed": seed, "device": None if device is None else str(device),
            "wall_s": wall_s, **extra}


def write_provenance(folder: str | os.PathLike, **fields: Any) -> Path:
    """Write ``provenance(**fields)`` to ``folder/provenance.json`` atomically; returns the path."""
    from .checkpoints import atomic_write_bytes

    text = json.dumps(provenance(**fields), indent=2, default=str)
    return atomic_write_bytes(Path(folder) / PROVENANCE_FILE, text.encode())


__all__ = ["PROVENANCE_FILE", "git_commit", "checkpoint_identity", "provenance", "write_provenance"]
