"""The layer contract (pyproject's [tool.importlinter]) holds, and it can fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports")
    assert lint is not None, "import-linter is a test dependency"
    return subprocess.run(
        [lint, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_layer_contract_holds() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_a_change_that_breaks_a_layer_fails(tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    for part in ("holdsvc", "persistence", "bench", "pyproject.toml"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, copy / part)
    # persistence reaching up into the domain: the one-way rule must catch it.
    target = copy / "persistence" / "coalesce.py"
    target.write_text(target.read_text() + "\nimport holdsvc.domain.states  # noqa\n")
    result = _lint(copy)
    assert result.returncode != 0, result.stdout
    assert "persistence.coalesce -> holdsvc.domain.states" in result.stdout, result.stdout
