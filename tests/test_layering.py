"""The package's import contracts (pyproject.toml ``[tool.importlinter]``), checked by import-linter.

One test per contract, each a separate ``lint-imports --contract ID`` run, so a broken contract names
itself and its offending import chains without hiding the others:

- ``layers``: cli > closed_loop > lm_selfmodeling > forward | selfmodeling > complexity > subjects > nets > data > report > stages | workers >
  training > checkpoint > distributed > curves > artifacts | configs | optim | registries | runtime | stats > errors; a module
  imports only from layers below its own.
- ``areas-independent``: forward and selfmodeling do not import each other.
- ``forward-concrete-subjects``: forward reaches models only through the subject interface.
- ``acyclic``: no import cycle among the siblings at any level of the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CONTRACTS = ["layers", "areas-independent", "forward-concrete-subjects", "acyclic"]


def _lint_imports() -> str:
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("import-linter is not installed: install the dev extra (pip install -e '.[dev]', which pins "
                    "import-linter==2.17)")
    return found


@pytest.mark.parametrize("contract", CONTRACTS)
def test_import_contract_is_kept(contract):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([_lint_imports(), str(ROOT / "pyproject.toml"), "--contract", contract, "--no-cache", "--no-logo"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"contract {contract!r} is broken:\n{done.stdout}\n{done.stderr}"
