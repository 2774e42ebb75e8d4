"""The house's shape: imports run one way (no circles between modules or between folders), every module imports in
a fresh interpreter, and the public API stays short."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "scorelab"

#: folders (and top-level modules) from the bottom up: a layer may import only layers listed before it
LAYERS = [
    {"_utils", "_version"},
    {"core"},
    {"nets", "data", "plotting"},
    {"samplers", "densities"},
    {"interop"},
    {"evaluation", "io"},
    {"training", "bridge"},
    {"guidance"},
    {"finetune"},
    {"cli"},
    {"__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every scorelab module ``name`` imports, at module level or inside functions (lazy imports count too)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.add(sub if sub in known else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def folder(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "scorelab"


def test_every_folder_is_in_a_layer():
    folders = {folder(m) for m in modules()} - {"scorelab"}
    placed = set().union(*LAYERS)
    assert folders == placed, f"unplaced {folders - placed}, stale {placed - folders}"


def test_imports_run_down_the_layers():
    rank = {f: i for i, layer in enumerate(LAYERS) for f in layer}
    bad = []
    for mod, deps in graph().items():
        if folder(mod) == "scorelab":
            continue  # scorelab/__init__.py: the public API, on top of everything
        for dep in deps:
            a, b = folder(mod), folder(dep)
            if b == "scorelab" or (a != b and rank[b] >= rank[a]):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(sorted(bad))


def test_no_import_circles_between_modules():
    """Depth-first search for a cycle; an edge from a module to its own package's __init__ is counted too."""
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1 and not (m.startswith(d + ".")):  # a package __init__ importing its own parts is fine
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            cyc = visit(m)
            assert cyc is None, "import circle: " + " -> ".join(cyc)


def test_the_layer_test_can_fail():
    """The checker sees a lazy upward import (the kind the renovation removed)."""
    src = "def f():\n    from ..samplers import SAMPLERS\n"
    tree_mod = "scorelab.core.schedules"
    path = Path(__file__).with_name("_tmp_arch_probe.py")
    path.write_text(src)
    try:
        deps = imports_of(tree_mod, path, {"scorelab.samplers", tree_mod})
    finally:
        path.unlink()
    assert deps == {"scorelab.samplers"}


@pytest.mark.parametrize("order", ["bottom_up", "top_down"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    """All modules imported one after another in a fresh interpreter, bottom layer first (then top first): an
    import that works only when something else was imported before it fails one of the two orders."""
    rank = {f: i for i, layer in enumerate(LAYERS) for f in layer}
    mods = sorted((m for m in modules() if not m.endswith("__main__")), key=lambda m: rank.get(folder(m), len(LAYERS)))
    if order == "top_down":
        mods = mods[::-1]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    r = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_public_api_is_short():
    import scorelab

    for name in ("VP", "GaussianMixture", "SAMPLERS", "sample", "__version__"):
        assert hasattr(scorelab, name), name
