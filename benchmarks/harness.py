"""The benchmarks' shared harness: seeds, paired statistics, provenance, markdown tables and atomic result files.

Every script in ``benchmarks/`` keeps only what is its own (its protocol, its metrics, its tables) and takes the rest
from here, so that all results files carry the same provenance and all paired comparisons use one test.

Notation
--------
=========  ==========================================================================================
d_s        paired difference at seed s (e.g. metric(anchor) - metric(scorelab), same x_T within s)
k          number of paired seeds
mean, sd   sample mean and standard deviation (ddof = 1) of d_1..d_k
se         sd / sqrt(k), the standard error of the mean
p          one-sided p-value of Student's one-sample t-test, H0: E d = 0, H1: E d > 0
lower95    one-sided 95% lower confidence bound mean - t_{0.95, k-1} se (the claim "d > 0" holds when > 0)
dev seed   the seed on which configurations are selected (0); held-out seeds first..first + S - 1 judge
=========  ==========================================================================================

Files: ``write_results(name, payload, markdown)`` writes ``results/<name>.json`` (payload plus ``provenance``) and
``results/<name>.md`` (``results/`` is ``$SCORELAB_BENCH_RESULTS`` when set: smoke runs write elsewhere) whose
first line is ``Command: `python benchmarks/<script> <args>```, the command that
regenerates it; both writes are atomic (temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

RESULTS = Path(os.environ.get("SCORELAB_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
DEV_SEED = 0
_WALL0, _CPU0 = time.time(), time.process_time()


# -- seeds ----------------------------------------------------------------------------------------------------------
def heldout_seeds(first: int, count: int) -> list[int]:
    """Held-out seeds ``first .. first + count - 1``; ValueError if one of them is the dev seed (0) or count < 1."""
    if first <= DEV_SEED:
        raise ValueError(f"held-out seeds must start after the dev seed {DEV_SEED}, got first seed {first}")
    if count < 1:
        raise ValueError(f"the number of held-out seeds must be >= 1, got {count}")
    return list(range(first, first + count))


# -- statistics -----------------------------------------------------------------------------------------------------
def mean_std(values: Iterable[float], ddof: int = 1) -> dict:
    """``{"mean", "std"}`` of ``values`` (std with ``ddof``; 0.0 for a single value when ddof = 1)."""
    v = np.asarray(list(values), dtype=float)
    std = float(v.std(ddof=ddof)) if v.size > ddof else 0.0
    return {"mean": float(v.mean()), "std": std}


def fmt_mean_std(values: Iterable[float], spec: str = ".3f", sep: str = " ± ", always_std: bool = False) -> str:
    """``"mean ± std"`` (ddof = 1) in the format ``spec``; only the mean for a single value unless ``always_std``."""
    v = np.asarray(list(values), dtype=float)
    if v.size > 1 or always_std:
        return f"{v.mean():{spec}}{sep}{v.std(ddof=1) if v.size > 1 else 0.0:{spec}}"
    return f"{v.mean():{spec}}"


def paired(diffs: Sequence[float]) -> dict:
    """Paired differences d_1..d_k (see the notation table) -> mean, std, n_seeds, one-sided p (H1: E d > 0,
    ``scipy.stats.ttest_1samp``), lower95 (one-sided 95% lower confidence bound) and wins (#{d_s > 0}).
    With zero spread the test is degenerate: p is 0 when mean > 0, else 1 (also for a single difference, whose
    std and lower95 are NaN)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or d.size < 1:
        raise ValueError(f"paired needs a non-empty 1-D sequence of differences, got shape {d.shape}")
    mean, sd, k = float(d.mean()), float(d.std(ddof=1)), len(d)
    se = sd / math.sqrt(k)
    p = float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue) if sd > 0 else float(mean <= 0)
    return {"mean": mean, "std": sd, "n_seeds": k, "p_one_sided": p,
            "lower95": mean - float(stats.t.ppf(0.95, k - 1)) * se, "wins": int((d > 0).sum())}


def seed_differences(a: dict, b: dict, key: str) -> list[float]:
    """``a[s][key] - b[s][key]`` over the seeds s present in both (rows keyed by seed), in ascending seed order."""
    return [a[s][key] - b[s][key] for s in sorted(set(a) & set(b))]


def paired_cells(pd: dict, spec: str = ".5f") -> str:
    """The table cells of a ``paired`` result: diff +- std | one-sided p | 95% lower bound | seeds won (numbers in
    the format ``spec``)."""
    return (f"{pd['mean']:+{spec}} +- {pd['std']:{spec}} | {pd['p_one_sided']:.3g} | {pd['lower95']:+{spec}} | "
            f"{pd['wins']}/{pd['n_seeds']}")


# -- markdown -------------------------------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table as lines: ``| h1 | h2 |``, ``|---|---|``, then one line per row (cells via ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, the header {len(header)}: {row!r}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return lines


# -- provenance -----------------------------------------------------------------------------------------------------
def git_commit() -> str | None:
    """The commit of the checkout the benchmarks run from (None outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def command() -> str:
    """The command line of this process, as ``<script> <args>`` (the script relative to benchmarks/)."""
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:])


def provenance() -> dict:
    """Versions, machine, git commit, date, command line and argv, and the wall / CPU seconds of this process so
    far (counted from the harness' import)."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command(), "argv": list(sys.argv),
            "wall_time_s": time.time() - _WALL0, "cpu_time_s": time.process_time() - _CPU0, "load_avg_1min": load}


# -- files ----------------------------------------------------------------------------------------------------------
def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, payload: object, indent: int | None = 2) -> Path:
    """Atomic JSON write (non-JSON numbers such as numpy floats go through ``float``)."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, default=float))


def command_line(cmd: str | None = None) -> str:
    """The first line of every results markdown: ``Command: `python benchmarks/<cmd>```."""
    return f"Command: `python benchmarks/{cmd or command()}`"


def write_results(name: str, payload: dict, markdown: str, out: Path | str = RESULTS,
                  echo: bool = True) -> tuple[Path, Path]:
    """``<out>/<name>.json`` = {"provenance": ..., **payload} and ``<out>/<name>.md`` = the command line, then
    ``markdown``; both atomic.  Prints the markdown and the paths unless ``echo`` is False."""
    out = Path(out)
    payload = {"provenance": provenance(), **payload}
    jpath = write_json(out / f"{name}.json", payload)
    mpath = write_text_atomic(out / f"{name}.md", command_line(payload["provenance"]["command"]) + "\n\n"
                              + markdown.rstrip() + "\n")
    if echo:
        print(markdown)
        print(f"wrote {jpath} and {mpath}")
    return jpath, mpath
