"""Code health checks that guard the architecture: lint, types, import direction and lazy heavy imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PURE = ["aimactl/core", "aimactl/manifest"]
EFFECTFUL = {"docker", "paramiko", "pynvml", "sqlite3", "sqlite_utils", "subprocess", "typer", "rich", "httpx",
             "socket", "requests", "os"}
HEAVY = ["docker", "paramiko", "pynvml", "httpx", "sqlite_utils"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_import_no_effects(package: str) -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & EFFECTFUL) for p in (ROOT / package).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_heavy_modules_stay_off_the_validate_path() -> None:
    code = (
        "import sys\n"
        "from aimactl.manifest import load_manifests\n"
        "from aimactl.cli import app\n"
        "r = load_manifests(['examples/quickstart'])\n"
        "assert r.valid, r.errors\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "aimactl", "tests", "bench", "scripts"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_on_the_pure_core() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
