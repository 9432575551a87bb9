"""The package's layering (issue 17), as import-linter contracts in pyproject.toml ``[tool.importlinter]``:
nothing outside ``mpcore.cli`` imports it, no import cycle between mpcore's modules and packages, mpcore imports
no plugin, the kernels import nothing of mpcore. Each contract is also shown to break on a planted import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

REPO = Path(__file__).resolve().parent.parent
CONTRACTS = {
    "cli": "nothing outside mpcore.cli imports it",
    "cycle": "no import cycle between the modules and packages of mpcore",
    "plugin": "mpcore imports no plugin",
    "kernels": "the kernels import nothing of mpcore",
}


def lint(root: Path) -> dict[str, str]:
    """Contract name prefix -> KEPT/BROKEN, for the mpcore package found first on the path from ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run([sys.executable, "-c", code, "--config", str(root / "pyproject.toml"), "--no-cache"],
                            cwd=root, env=env, capture_output=True, text=True)
    verdicts = {}
    for key, name in CONTRACTS.items():
        line = next(line for line in result.stdout.splitlines() if line.startswith(name))
        verdicts[key] = "KEPT" if " KEPT" in line else "BROKEN"
    assert (result.returncode == 0) == all(v == "KEPT" for v in verdicts.values()), result.stdout
    return verdicts


def test_the_package_keeps_its_contracts():
    assert lint(REPO) == {key: "KEPT" for key in CONTRACTS}


@pytest.mark.parametrize("module,planted,broken", [
    ("mpcore/io/files.py", "from mpcore.cli import common", "cli"),  # a tool importing the command line
    ("mpcore/io/video.py", "import mpcore.jobs.run", "cycle"),  # jobs import io: io importing jobs is a circle
    ("mpcore/sampling.py", "import mp_plugin_tvl1", "plugin"),
    ("mpcore_kernels/flow_tv.py", "import mpcore.config", "kernels"),
])
def test_a_planted_import_breaks_its_contract(tmp_path, module, planted, broken):
    """A copy of both packages (found first on the path) with one import added: that contract, and only that one
    among those it cannot touch, breaks."""
    for package in (REPO / "mpcore", REPO / "kernels" / "mpcore_kernels"):
        shutil.copytree(package, tmp_path / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as handle:
        handle.write(f"\n{planted}  # planted by the test\n")
    verdicts = lint(tmp_path)
    assert verdicts[broken] == "BROKEN", verdicts
    assert verdicts["plugin"] == "KEPT" or broken == "plugin"


def _functions(path: Path):
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_over_80_lines_and_no_jobs_module_over_300():
    """Issue 28's size limits: a function fits on a screen; ``mpcore/jobs`` stays split by concern."""
    sources = [p for p in (REPO / "mpcore").rglob("*.py")] + \
              [p for p in (REPO / "plugins").rglob("*.py") if "tests" not in p.parts]
    long = [f"{path.relative_to(REPO)}:{name} ({n} lines)" for path in sources for name, n in _functions(path) if n > 80]
    assert not long, long
    big = [f"{p.relative_to(REPO)} ({n})" for p in (REPO / "mpcore" / "jobs").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 300]
    assert not big, big
