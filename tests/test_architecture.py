"""The import layers hold (import-linter), and the contract catches a cycle when one appears."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT = [str(Path(sys.executable).parent / "lint-imports")]  # import-linter's command


def lint(tree: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the ``src/prunelab`` of ``tree`` with ``tree``'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run([*LINT, "--no-cache", str(tree / "pyproject.toml")], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def test_contracts_are_kept():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info",
                                                                           "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def lint_with_late_import(tmp_path: Path, module: str, statement: str
                          ) -> subprocess.CompletedProcess:
    """Lint a copy of the tree whose ``module`` gained a function that runs ``statement``."""
    tree = copy_tree(tmp_path)
    path = tree / "src" / f"{module.replace('.', '/')}.py"
    path.write_text(path.read_text() + f"\n\ndef _late():\n    {statement}\n")
    return lint(tree)


def test_a_function_level_import_that_closes_a_cycle_breaks_the_layers(tmp_path):
    proc = lint_with_late_import(tmp_path, "prunelab.config.schema",
                                 "from prunelab.methods import PruningMethod  # noqa")
    assert proc.returncode != 0
    assert "prunelab.config.schema -> prunelab.methods" in proc.stdout


def test_a_method_importing_the_data_layer_breaks_the_scorer_contract(tmp_path):
    proc = lint_with_late_import(tmp_path, "prunelab.methods.flap",
                                 "from prunelab.data.corpora import load_corpus  # noqa")
    assert proc.returncode != 0
    assert "Methods only score" in proc.stdout and "BROKEN" in proc.stdout
