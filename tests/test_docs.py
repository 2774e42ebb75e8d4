"""The documentation: every public function, class and method of the documented packages has a docstring, every
module of the library (outside ``cli``) has its place in the API reference, and the docs site builds with
``mkdocs build --strict`` (a broken reference, a missing page or a bad directive fails it)."""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "scorelab"

#: packages whose every public function/class/method must carry a docstring (with shapes, by the house rules)
DOCUMENTED = ("core", "nets", "data", "samplers", "densities", "evaluation", "training", "io", "guidance", "finetune",
              "cli", ".")  # ".": the top-level modules (plotting, _utils, ...)

#: packages the API reference leaves out (the command line maps arguments onto the library; `scorelab --help`
#: documents it)
NOT_IN_API = ("cli",)


def public_defs_without_docstring(path: Path) -> list[str]:
    """``module:Qual.name`` of every public def/class (nested in public classes too) lacking a docstring.

    Public: the name does not start with ``_`` (dunder methods included in that), and every enclosing class is
    public; functions nested inside functions are implementation details and not checked."""
    missing: list[str] = []

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None:
                missing.append(f"{_shown(path)}:{node.lineno} {prefix}{node.name}")
            if isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")

    walk(ast.parse(path.read_text()).body, "")
    return missing


def _shown(path: Path) -> str:
    return str(path.relative_to(PKG.parent)) if path.is_relative_to(PKG.parent) else str(path)


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_definition_has_a_docstring(package: str) -> None:
    files = sorted(PKG.glob("*.py")) if package == "." else sorted((PKG / package).rglob("*.py"))
    assert files, f"no modules found in scorelab/{package}"
    missing = [m for f in files for m in public_defs_without_docstring(f)]
    assert not missing, "public definitions without a docstring:\n" + "\n".join(missing)


def test_docstring_checker_finds_a_missing_docstring(tmp_path: Path) -> None:
    """The checker itself: it must flag an undocumented public method and ignore private and nested helpers."""
    probe = tmp_path / "probe.py"
    probe.write_text('class A:\n    """doc"""\n    def f(self):\n        def inner():\n            pass\n'
                     '    def _g(self):\n        pass\n\ndef h():\n    """doc"""\n')
    assert [m.split(" ", 1)[1] for m in public_defs_without_docstring(probe)] == ["A.f"]


def api_references() -> set[str]:
    """Every ``::: dotted.name`` directive in docs/api/*.md."""
    found: set[str] = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        found |= set(re.findall(r"^:::\s*([\w.]+)", page.read_text(), flags=re.M))
    return found


def test_every_module_is_in_the_api_reference() -> None:
    """A module added to the library (outside cli) needs its ``::: scorelab.pkg.module`` line in docs/api/PKG.md;
    a directive naming a module that no longer exists fails the strict build (test below)."""
    refs = api_references()
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if any(p.startswith("_") for p in parts[1:]) and parts[-1] != "__init__":
            continue  # private modules (_utils, _version)
        if len(parts) > 1 and parts[1] in NOT_IN_API:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name not in refs:
            missing.append(name)
    assert not missing, "modules missing from docs/api/*.md (add a '::: NAME' line):\n" + "\n".join(missing)


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs / mkdocstrings not installed (pip install -e '.[docs]'); the strict docs build "
                           "is not checked")
def test_docs_build_strict(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert (tmp_path / "site" / "index.html").is_file()


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs / mkdocstrings not installed (pip install -e '.[docs]'); the strict docs build "
                           "is not checked")
def test_strict_build_fails_on_a_broken_reference(tmp_path: Path) -> None:
    """The mechanism CI relies on: a cross-reference to a name that does not exist fails ``--strict``.
    (``mkdocs build --strict --quiet`` would pass it: --quiet drops the warnings that --strict counts.)"""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# probe\n\nSee [VP][scorelab.core.processes.VP] and "
                                   "[gone][scorelab.no_such_name].\n\n::: scorelab.core.processes.VP\n")
    (tmp_path / "mkdocs.yml").write_text(
        f"site_name: probe\ndocs_dir: {docs}\nsite_dir: {tmp_path / 'site'}\nplugins:\n  - mkdocstrings:\n"
        f"      handlers:\n        python:\n          paths: [{ROOT / 'src'}]\n")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert proc.returncode != 0
    assert "scorelab.no_such_name" in proc.stdout + proc.stderr
