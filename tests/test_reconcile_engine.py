"""`aimactl reconcile` surviving its surroundings: the Docker engine restarting under it, and native processes
(the process runtime) dying. Real dockerd, real helper-supervised processes, the loop as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import free_port, http_get, wait_until
from tests.reconcile_harness import Loop, Stack, service

ADDRESS = "service.web[0]@local"


@pytest.fixture
def stack(docker_engine: object, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(docker_engine, tmp_path)
    yield s
    s.cleanup()


@pytest.mark.docker
def test_docker_engine_restart_is_survived_and_what_it_stopped_is_restored(stack: Stack, docker_engine) -> None:  # noqa: ANN001
    port = free_port()
    # restart: "no": the engine does not bring the container back by itself after its restart; the loop must.
    stack.write(service("web", port, "  restart: 'no'\n"))
    loop = stack.loop("-f", str(stack.dir), "--interval", "5m")
    try:
        loop.wait_for(lambda r: r["result"] == "ok" and ADDRESS in r["applied"], 60)
        url = f"http://127.0.0.1:{port}/passwd"
        assert http_get(url) is not None
        before = loop.last()
        docker_engine.restart()
        back = loop.wait_for(lambda r: "docker: engine reachable again" in r["trigger"], 30, before)
        healed = loop.wait_for(lambda r: ADDRESS in r["applied"], 60, before)
        assert healed["number"] >= back["number"]
        assert "container exited (0)" in healed["drift"][ADDRESS] or "exited" in healed["drift"][ADDRESS], healed
        assert wait_until(lambda: http_get(url) is not None, 20)
        assert loop.process.poll() is None
        # Still following events on the new engine: a kill is healed at once again (after the pass that the
        # heal's own events trigger).
        loop.wait_for(lambda r: not r["applied"], 10, healed["number"])
        after = loop.last()
        assert stack.docker("kill", f"aima-{stack.name}-web-0").returncode == 0
        again = loop.wait_for(lambda r: ADDRESS in r["applied"], 30, after)
        assert any(t.startswith("docker: die") for t in again["trigger"]), again
    finally:
        assert loop.stop() == 0, loop.log()


def test_dead_native_process_is_restarted_within_the_bound(tmp_path: Path) -> None:
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("native\n")
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(www)]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "stack.yaml").write_text(
        "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\n"
        f"spec: {{address: local, dataDir: '{tmp_path}/data', python: '{sys.executable}'}}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: files}\nspec:\n  engine: custom\n"
        f"  runtime: process\n  port: {port}\n  health: {{path: /index.html, startupTimeout: 30s, interval: 1s}}\n"
        f"  command: {json.dumps(argv)}\n")
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1",
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "AIMACTL_STACK": "native"}
    loop = Loop(env, "-f", str(manifests), "--interval", "5m")
    address = "service.files[0]@local"
    try:
        loop.wait_for(lambda r: address in r["applied"], 60)
        url = f"http://127.0.0.1:{port}/index.html"
        assert http_get(url) == b"native\n"
        [pid_file] = (tmp_path / "data" / "proc").glob("*.pid")
        after = loop.last()
        started = time.monotonic()
        os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
        healed = loop.wait_for(lambda r: address in r["applied"], 30, after)
        assert wait_until(lambda: http_get(url) == b"native\n", 10)
        elapsed = time.monotonic() - started
        assert any(t.startswith("process:") for t in healed["trigger"]), healed
        assert "process exited (-9)" in healed["drift"][address], healed
        assert elapsed < 5.0 + 3.0, elapsed  # noticed within 5 s (polled every 2 s), plus the start
    finally:
        assert loop.stop() == 0, loop.log()
        destroy = subprocess.run([sys.executable, "-m", "aimactl", "destroy", "-f", str(manifests),
                                                "--auto-approve"], env=env, capture_output=True, timeout=60)
        assert destroy.returncode == 0
