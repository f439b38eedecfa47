"""`aimactl reconcile` over a fleet of two real SSH hosts where one goes down and comes back: the loop keeps
healing the other, reports the lost host as "retrying", and restores what died on it once it is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures import free_port, http_get, wait_until
from tests.fixtures.sshd import SshHosts
from tests.reconcile_harness import Loop
from tests.test_fleet_ssh import aimactl, two_host_stack

pytestmark = [pytest.mark.ssh, pytest.mark.docker]
WEB, API = "service.web[0]@edge-1", "service.api[0]@edge-2"


def test_ssh_host_down_and_back(ssh_hosts: SshHosts, docker_engine: object, tmp_path: Path) -> None:
    edge2 = ssh_hosts.by_name("edge-2")
    env = aimactl(tmp_path, "s" + uuid.uuid4().hex[:8])
    web_port, api_port = free_port(), free_port()
    api = ["python3", "-m", "http.server", str(api_port), "--bind", "0.0.0.0", "--directory", "/etc"]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "stack.yaml").write_text(two_host_stack(
        ssh_hosts, docker_engine.socket_path, tmp_path, web_port, api_port, api))  # type: ignore[attr-defined]
    loop = Loop(env, "-f", str(manifests), "--interval", "1s")
    try:
        loop.wait_for(lambda r: r["result"] == "ok" and API in r["applied"] and WEB in r["applied"], 120)
        edge2.stop()
        down = loop.wait_for(lambda r: "host edge-2" in r["waiting"], 30)
        assert "retrying next pass" in down["waiting"]["host edge-2"] and down["result"] == "waiting"

        # While edge-2 is down, what dies on edge-1 is still healed.
        docker = docker_engine.client()  # type: ignore[attr-defined]
        try:
            [web] = docker.containers.list(filters={"label": "dev.aima.name=web"})
            web.kill()
        finally:
            docker.close()
        loop.wait_for(lambda r: WEB in r["applied"], 30, down["number"])
        assert wait_until(lambda: http_get(f"http://127.0.0.2:{web_port}/passwd") is not None, 10)

        # The process on edge-2 dies while its host is unreachable; once sshd is back it is restored.
        [pid_file] = (tmp_path / "edge-2" / "proc").glob("*.pid")
        os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
        before = loop.last()
        edge2.start()
        healed = loop.wait_for(lambda r: API in r["applied"], 60, before)
        assert "process exited" in healed["drift"][API], healed
        assert wait_until(lambda: http_get(f"http://127.0.0.3:{api_port}/hostname") is not None, 10)
        assert loop.process.poll() is None
    finally:
        edge2.start()
        assert loop.stop() == 0, loop.log()
        subprocess.run([sys.executable, "-m", "aimactl", "destroy", "-f", str(manifests), "--auto-approve"], env=env,
                       capture_output=True, timeout=120)
