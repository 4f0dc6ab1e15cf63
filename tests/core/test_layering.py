"""The layering rules of DESIGN.md are import-linter contracts (pyproject.toml); CI runs ``lint-imports``.

These tests run the real contracts: on the repository as it is (all kept), and on a copy with one deliberately
broken import in each of two layers (caught, naming the contract and the offending line).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
PACKAGES = ("lightning_modules", "datamodules", "callbacks", "benchmarks", "tests")

pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_repository_keeps_every_contract():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("victim", "line", "contract"),
    [
        ("lightning_modules/nets/vdsr.py", "import lightning", "Nets, metrics, losses and the degradation engine"),
        ("lightning_modules/moesr/__init__.py", "import lightning_modules.mixture.joint", "Method packages"),
        ("datamodules/images.py", "import lightning_modules.core.base", "The data side never imports"),
    ],
)
def test_a_broken_import_is_caught(tmp_path, victim, line, contract):
    root = _copy(tmp_path)
    path = root / victim
    path.write_text(path.read_text() + f"\n{line}  # deliberately broken\n")
    result = _lint(root)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
    assert victim.replace("/", ".").removesuffix(".py").removesuffix(".__init__") in broken
