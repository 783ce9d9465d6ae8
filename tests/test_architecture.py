"""The architecture contracts CI enforces: imports point one way down the layers named in
pyproject.toml (import-linter), no import cycle among the package's modules (function-local
imports included), modules of a readable size, and engine names compared only in engines/."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "omni_place"
MAX_LINES = 600
LONG_ALLOWED = {"omni_place/llama/bindings.py"}  # one ctypes declaration per engine function
ENGINE_NAMES = {"llama.cpp", "ik_llama.cpp", "vllm"}


def lint_imports(root: Path, env_path: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``root``'s pyproject.toml, importing the package from ``env_path``."""
    env = {**os.environ, "PYTHONPATH": str(env_path)}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_layer_contracts_hold() -> None:
    res = lint_imports(ROOT, ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(("module", "upward"), [
    ("units.py", "from .plan import plan_split"),  # the bottom layer reaching the top of the planner
    ("cost.py", "from .bench import run"),  # the cost model reaching the harness that measures it
    ("bench/run.py", "from ..model import load_model"),  # the stdlib-only runner importing the core
])
def test_a_deliberate_upward_import_breaks_a_contract(tmp_path: Path, module: str, upward: str) -> None:
    """The same contracts on a copy of the package with one upward import added must fail."""
    shutil.copytree(PACKAGE, tmp_path / "omni_place", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "omni_place" / module
    target.write_text(target.read_text() + f"\n{upward}  # deliberate violation\n")
    res = lint_imports(tmp_path, tmp_path)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout[-3000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("omni_place", cache_dir=None)  # every import, function-local ones too
    # a package's __init__ re-exporting its submodules is not a cycle of the code's structure
    for m in list(graph.modules):
        for child in graph.find_children(m):
            if graph.direct_import_exists(importer=m, imported=child):
                graph.remove_import(importer=m, imported=child)
    assert _cycles(graph) == []


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_modules_stay_readable() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(ROOT)) not in LONG_ALLOWED}
    assert long == {}


def test_engine_names_are_compared_only_in_engines() -> None:
    """Engine behaviour lives in the dialects; elsewhere an engine is reached through
    ``omni_place.engines.dialect(name)``, never by comparing its name."""
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "engines":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                consts += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))
                           for e in c.elts if isinstance(e, ast.Constant)]
                if any(c.value in ENGINE_NAMES for c in consts):
                    found.append(f"{rel}:{node.lineno}")
    assert found == []


def test_a_missing_core_is_a_clear_error() -> None:
    """Without the compiled core, importing the planner says what to do, not a raw ImportError."""
    code = ("import sys; sys.modules['omni_place._core'] = None\n"
            "from omni_place.errors import NativeCoreError\n"
            "try:\n    import omni_place.plan\nexcept NativeCoreError as e:\n    print('ERR', e, '|', e.hint)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ERR omni_place's compiled core") and "pip install" in res.stdout
