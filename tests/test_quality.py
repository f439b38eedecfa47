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


def test_docker_and_the_state_db_load_without_their_unused_heavy_extras(tmp_path: Path) -> None:
    # `import docker` pulls paramiko and invoke (~0.2 s) for an ssh:// transport aimactl never uses, and
    # sqlite-utils pulls numpy (~0.1 s): both are on every apply's path. Afterwards both still import.
    code = (
        "import sys\n"
        "from aimactl.runtimes.docker import DockerRuntime\n"
        "from aimactl.runtimes import RuntimeFailure\n"
        "from aimactl.store import open_store\n"
        "try:\n"
        f"    DockerRuntime('unix://{tmp_path}/no-engine.sock')._sdk()\n"
        "except RuntimeFailure:\n"
        "    pass\n"
        f"open_store({str(tmp_path)!r}).close()\n"
        "import docker, sqlite_utils\n"
        "print(sorted(m for m in ('paramiko', 'invoke', 'numpy') if m in sys.modules))\n"
        "import paramiko, numpy\n"
        "print('later imports work')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "later imports work"]


def test_paramiko_imports_while_another_thread_loads_docker_without_it() -> None:
    # An apply may import the Docker SDK (paramiko hidden) on one thread while another first reaches an SSH host.
    code = (
        "import threading, time\n"
        "from aimactl.imports import without\n"
        "from aimactl.hosts.ssh import import_paramiko\n"
        "inside = threading.Event()\n"
        "def docker_import():\n"
        "    with without('paramiko'):\n"
        "        inside.set()\n"
        "        time.sleep(0.3)\n"
        "t = threading.Thread(target=docker_import)\n"
        "t.start(); inside.wait()\n"
        "print(import_paramiko().__name__)\n"
        "t.join()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "paramiko", out.stderr


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "aimactl", "tests", "bench", "scripts"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_on_the_pure_core() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
