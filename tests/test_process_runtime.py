"""Services on the process runtime, through the real helper: create, no-op, death seen by the plan, restore.

No Docker engine is needed (DOCKER_HOST points nowhere, which only matters to Docker workloads).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.fixtures import free_port, http_get


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "NO_COLOR": "1",
           "DOCKER_HOST": f"unix://{tmp}/no-docker.sock"}
    return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _stack(tmp: Path, port: int, marker: str) -> Path:
    web_root = tmp / "www"
    web_root.mkdir(exist_ok=True)
    (web_root / "index.html").write_text("served-by-a-process\n")
    manifest = tmp / "stack.yaml"
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(web_root)]
    manifest.write_text(
        "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\n"
        f"spec: {{address: local, dataDir: '{tmp}/data', python: '{sys.executable}'}}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: files}\nspec:\n  engine: custom\n"
        f"  runtime: process\n  port: {port}\n  health: {{path: /index.html, startupTimeout: 30s}}\n"
        f"  command: {json.dumps(argv)}\n  env: {{MARKER: {json.dumps(marker)}}}\n")
    return manifest


def test_process_service_lifecycle(tmp_path: Path) -> None:
    hostile = "$(touch /tmp/aimactl-pwned); rm -rf /"
    port = free_port()
    manifest = _stack(tmp_path, port, hostile)
    created = _run(tmp_path, "apply", "-f", str(manifest), "--auto-approve")
    assert created.returncode == 0, created.stdout + created.stderr
    assert http_get(f"http://127.0.0.1:{port}/index.html") == b"served-by-a-process\n"
    assert not Path("/tmp/aimactl-pwned").exists()
    assert _run(tmp_path, "plan", "-f", str(manifest), "--detailed-exitcode").returncode == 0
    logs = _run(tmp_path, "logs", "files", "--filename", str(manifest), "--tail", "20")
    assert logs.returncode == 0 and "GET /index.html" in logs.stdout, logs.stdout + logs.stderr

    [pid_file] = (tmp_path / "data" / "proc").glob("*.pid")
    pid = json.loads(pid_file.read_text())["pid"]
    assert f"MARKER={hostile}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    os.kill(pid, signal.SIGKILL)
    seen = _run(tmp_path, "plan", "-f", str(manifest), "-o", "json")
    [change] = json.loads(seen.stdout)["changes"]
    assert change["actions"] == ["replace"] and change["reason"] == "process exited (-9)"

    restored = _run(tmp_path, "apply", "-f", str(manifest), "--auto-approve")
    assert restored.returncode == 0, restored.stdout
    assert http_get(f"http://127.0.0.1:{port}/index.html") == b"served-by-a-process\n"
    assert _run(tmp_path, "destroy", "-f", str(manifest), "--auto-approve").returncode == 0
    assert http_get(f"http://127.0.0.1:{port}/index.html") is None
