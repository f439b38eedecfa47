"""A fleet of two real SSH hosts where one goes away in the middle of an apply (issue 6, item 7): the other host
converges, the run exits 1 naming the failed host in its per-host summary, and once the host is back the next
run converges both. (The two-host apply, host keys and locks themselves are in test_ssh_fleet.py / _lock.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures import free_port, http_get, wait_until
from tests.fixtures.sshd import SshHosts

pytestmark = [pytest.mark.ssh, pytest.mark.docker]
BUSY = "aima-test/busybox:latest"
HTTPD = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 8080 -h /etc & wait"]'


def two_host_stack(fleet: SshHosts, docker_socket: str, tmp: Path, web_port: int, api_port: int,
                   api: list[str]) -> str:
    """edge-1 runs a busybox httpd Service on Docker (the private engine); edge-2 has no engine and runs `api` as a
    process Service answering /hostname on `api_port`."""
    edge1, edge2 = fleet.by_name("edge-1"), fleet.by_name("edge-2")
    return "---\n".join([
        fleet.host_manifest(edge1, tmp / "edge-1", docker_socket),
        fleet.host_manifest(edge2, tmp / "edge-2", str(tmp / "no-docker.sock")),
        f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  host: edge-1\n"
        f"  engine: custom\n  image: {BUSY}\n  command: {HTTPD}\n  containerPort: 8080\n  port: {web_port}\n"
        "  health: {path: /passwd, startupTimeout: 30s}\n",
        f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  host: edge-2\n"
        f"  engine: custom\n  runtime: process\n  port: {api_port}\n  command: {json.dumps(api)}\n"
        "  health: {path: /hostname, startupTimeout: 30s, interval: 1s}\n",
    ])


def aimactl(tmp: Path, stack: str) -> dict[str, str]:
    """The environment of one isolated controller (its own state dir, no local Docker)."""
    return {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "AIMACTL_STACK": stack, "NO_COLOR": "1",
            "DOCKER_HOST": f"unix://{tmp}/controller-has-no-docker.sock", "COLUMNS": "200"}


def host_row(output: str, host: str) -> list[str]:
    """The cells of one row of the `Hosts` table."""
    table = output[output.rindex("Hosts"):]
    [line] = [ln for ln in table.splitlines() if f" {host} " in ln]
    return [cell.strip() for cell in line.strip("│┃ ").split("│")]


def test_one_sshd_stopped_mid_run_leaves_the_other_converged_and_the_next_run_converges_both(
        ssh_hosts: SshHosts, docker_engine: object, tmp_path: Path) -> None:
    edge2 = ssh_hosts.by_name("edge-2")
    stack = "f" + uuid.uuid4().hex[:8]
    env = aimactl(tmp_path, stack)
    web_port, api_port = free_port(), free_port()
    # edge-2 has no Docker engine (one engine for two hosts would show each the other's containers): its
    # Service is a process that takes a few seconds to answer, the window in which its sshd goes away.
    api = ["sh", "-c", f"sleep 4; exec python3 -m http.server {api_port} --bind 0.0.0.0 --directory /etc"]
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(two_host_stack(ssh_hosts, docker_engine.socket_path, tmp_path,  # type: ignore[attr-defined]
                                       web_port, api_port, api))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=env,
                              timeout=180)

    try:
        apply = subprocess.Popen([sys.executable, "-m", "aimactl", "apply", "-f", str(manifest), "--auto-approve"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines: list[str] = []

        def read() -> None:
            assert apply.stdout is not None
            lines.extend(apply.stdout)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # Both hosts were observed and planned; edge-2 goes away once its Service is being created.
        assert wait_until(lambda: any("service.api[0]@edge-2: Creating" in ln for ln in lines), 60), "".join(lines)
        time.sleep(0.5)
        edge2.stop()
        apply.wait(timeout=120)
        reader.join(timeout=10)
        # The host is down, its processes with it: the helper detaches them from the SSH session, so a process
        # whose start completed before the stop would otherwise run on, and the next run would rightly find
        # nothing to do on edge-2 (how far the start got depends on timing).
        for pid_file in (tmp_path / "edge-2" / "proc").glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
                os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
        out = "".join(lines)
        assert apply.returncode == 1, out
        assert "service.web[0]@edge-1: done" in out
        assert "service.api[0]@edge-2: failed" in out
        assert host_row(out, "edge-1")[:5] == ["edge-1", "yes", "1", "0", "0"]
        assert host_row(out, "edge-2")[:4] == ["edge-2", "yes", "0", "1"]
        assert b"root:x:0:0" in (http_get(f"http://127.0.0.2:{web_port}/passwd") or b"")

        # While edge-2 stays down: its check names it, edge-1 has nothing left to do, the run still exits 1.
        down = run("plan", "-f", str(manifest), "-o", "json")
        assert down.returncode == 1, down.stdout + down.stderr
        plan = json.loads(down.stdout)
        assert [(c["code"], c["host"]) for c in plan["checks"]] == [("host-unreachable", "edge-2")]
        assert [(c["address"], c["actions"]) for c in plan["changes"]] == [("service.web[0]@edge-1", ["no-op"])]

        edge2.start()
        again = run("apply", "-f", str(manifest), "--auto-approve")
        assert again.returncode == 0, again.stdout + again.stderr
        assert host_row(again.stdout, "edge-2")[:5] == ["edge-2", "yes", "1", "0", "0"]
        assert http_get(f"http://127.0.0.3:{api_port}/hostname") == Path("/etc/hostname").read_bytes()
        empty = run("plan", "-f", str(manifest), "--detailed-exitcode")
        assert empty.returncode == 0, empty.stdout + empty.stderr
    finally:
        edge2.start()
        destroyed = run("destroy", "-f", str(manifest), "--auto-approve")
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
