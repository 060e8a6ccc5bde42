"""The package's import structure: layers point one way, hub never reaches the registry or the builder, no cycles,
and every deliberate error derives from Rep3DError. The contracts live in pyproject.toml ([tool.importlinter]); the
reasons are in docs/design.md ("Layers")."""

from __future__ import annotations

import ast
import builtins
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install "
                                "-e '.[test]')")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` with the contracts of ``root``/pyproject.toml on the ``rep3d`` package found in ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


def _copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "rep3d", tmp_path / "rep3d", ignore=shutil.ignore_patterns("__pycache__", "weights"))
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append_import(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}  # noqa\n")


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "3 kept" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    # the import the registry used to hand out and hub used to take back (the hub <-> registry cycle)
    ("hub/download.py", "from rep3d.models.registry import list_models", "never imports the registry"),
    ("hub/weights.py", "from rep3d.builder import create_model", "never imports the registry"),
    # a lower layer reaching up
    ("layers/conv.py", "import rep3d.models.deploy", "layers point one way"),
    ("models/deploy.py", "from rep3d import builder", "layers point one way"),
    # hub.weights <-> hub.publish, the other cycle that imports inside functions used to hide
    ("hub/weights.py", "from rep3d.hub.publish import save_pretrained", "no import cycle"),
])
def test_reintroducing_an_upward_or_cyclic_import_breaks_a_contract(tmp_path, module, line, contract):
    root = _copy_package(tmp_path)
    _append_import(root / "rep3d" / module, line)
    result = _lint_imports(root)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken) or contract in result.stdout.split("Broken contracts")[-1], \
        result.stdout


def test_an_import_inside_a_function_counts_too(tmp_path):
    # no hiding a cycle in a function body: grimp reads every import statement
    root = _copy_package(tmp_path)
    _append_import(root / "rep3d" / "hub" / "download.py",
                   "def _tags():\n    from rep3d.models.registry import list_models\n    return list_models()")
    assert _lint_imports(root).returncode != 0


# ----------------------------------------------------------------------------------------------------------- errors

# Files whose deliberate errors must derive from rep3d.errors.Rep3DError (the CLI's handler prints them as one line).
ERROR_CHECKED = [p for p in sorted((ROOT / "rep3d").glob("**/*.py")) if p.parts[-2] in ("layers", "models", "hub")
                 and p.name != "zoo.py"]
ERROR_CHECKED += [ROOT / "rep3d" / name for name in ("builder.py", "official.py", "bundle.py", "errors.py",
                                                     "outputs.py")]
BUILTIN_ERRORS = {name for name, obj in vars(builtins).items()
                  if isinstance(obj, type) and issubclass(obj, BaseException)}


def _builtin_raises(path: Path) -> list[str]:
    """``"FILE:LINE raises NAME"`` for every ``raise NAME(...)`` / ``raise NAME`` of a built-in exception."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in BUILTIN_ERRORS:
                found.append(f"{path.name}:{node.lineno} raises {exc.id}")
    return found


def test_deliberate_errors_derive_from_rep3d_error():
    offenders = [hit for path in ERROR_CHECKED for hit in _builtin_raises(path)]
    assert not offenders, "raise a rep3d.errors class instead:\n" + "\n".join(offenders)


def test_the_error_check_sees_a_builtin_raise(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(x):\n    if x:\n        raise ValueError('bad')\n    raise SystemExit(1)\n"
                      "def g():\n    raise Rep3DValueError('fine')\n")
    assert sorted(hit.split(" raises ")[1] for hit in _builtin_raises(module)) == ["SystemExit", "ValueError"]
