"""Kept SSH connections (hosts/keeper.py, aimactl's ControlPersist), on a real sshd with the real CLI.

A second `plan` within AIMACTL_SSH_PERSIST seconds logs in nowhere: the keeper's connection and its serving
helper answer, and the answer is fresh (a process that died is seen dead). What a direct connection refuses, a
kept one refuses too: a host key gone from known_hosts, an sshd that stopped. The keeper leaves when idle.
Each test has its own keeper: a private XDG_RUNTIME_DIR.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aimactl.hosts.keeper import socket_path
from tests.fixtures import free_port, wait_until
from tests.fixtures.sshd import SshHost, SshHosts

pytestmark = pytest.mark.ssh
PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), sys.executable)
Cli = Callable[..., subprocess.CompletedProcess[str]]
BUSY = "aima-test/busybox:latest"
HTTPD = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 8080 -h /etc & wait"]'


def _logins(host: SshHost) -> int:
    """How many SSH logins this host's sshd accepted so far (from its log)."""
    return host.log_path.read_text(errors="replace").count("Accepted publickey")


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(path)
        except OSError:
            return False
        return True


@pytest.fixture
def kept(ssh_hosts: SshHosts, tmp_path: Path) -> Iterator[tuple[Cli, dict[str, str], Path]]:
    """A process Service (`sleep`) applied on edge-1, its own keeper directory and known_hosts copy:
    (cli, environment, data dir)."""
    host, data = ssh_hosts.by_name("edge-1"), tmp_path / "data"
    known = tmp_path / "known_hosts"
    shutil.copy(ssh_hosts.known_hosts_path, known)
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(ssh_hosts.host_manifest(host, data, f"{data}/no-docker.sock", known_hosts=known,
                                                extra=f"  python: {PYTHON}\n")
                        + "---\napiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: nap}\nspec:\n"
                        f"  host: {host.name}\n  engine: custom\n  runtime: process\n  command: [sleep, '3600']\n")
    (tmp_path / "run").mkdir(mode=0o700)
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "AIMACTL_STACK": "k" + uuid.uuid4().hex[:8],
           "NO_COLOR": "1", "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
           "XDG_RUNTIME_DIR": str(tmp_path / "run"),
           "AIMACTL_SSH_PERSIST": "60"}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aimactl", *args, "-f", str(manifest)], env={**env, **extra},
                              capture_output=True, text=True, timeout=180)

    applied = cli("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield cli, env, data
    cli("destroy", "--auto-approve", AIMACTL_SSH_PERSIST="0")
    path = socket_path(env)
    if path:
        Path(path).unlink(missing_ok=True)  # the keeper sees its socket gone and leaves within a second


def test_a_second_plan_logs_in_nowhere_and_still_sees_the_host_as_it_is(ssh_hosts: SshHosts, kept: tuple) -> None:
    cli, env, data = kept
    host = ssh_hosts.by_name("edge-1")
    first = cli("plan", "--detailed-exitcode")
    assert first.returncode == 0, first.stdout + first.stderr
    path = socket_path(env)
    assert path and _answers(path), "the first plan leaves a keeper listening"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"

    before = _logins(host)
    again = cli("plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _logins(host) == before, "the kept connection answered: no new login on the host"

    # Fresh answers, not a cached picture: the process dies, the next kept plan sees it.
    (pidfile,) = (data / "proc").glob("*.pid")
    pid = json.loads(pidfile.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    dead = cli("plan", "--detailed-exitcode")
    assert dead.returncode == 2, dead.stdout + dead.stderr
    assert "nap" in dead.stdout and _logins(host) == before

    off = cli("plan", AIMACTL_SSH_PERSIST="0")
    assert off.returncode == 0, off.stdout + off.stderr
    assert _logins(host) == before + 1, "with AIMACTL_SSH_PERSIST=0 the plan logs in itself"


def test_a_kept_connection_is_not_trusted_once_its_key_leaves_known_hosts(ssh_hosts: SshHosts, kept: tuple,
                                                                         tmp_path: Path) -> None:
    cli, _, _ = kept
    assert cli("plan").returncode == 0
    known = tmp_path / "known_hosts"
    trusted = known.read_text()
    known.write_text("")
    try:
        refused = cli("plan")
    finally:
        known.write_text(trusted)  # for the fixture's destroy
    assert refused.returncode == 1, refused.stdout + refused.stderr
    out = refused.stdout + refused.stderr
    assert "unknown host key" in out and "SHA256:" in out and "edge-1" in out, out
    assert "Traceback" not in out


def test_a_stopped_sshd_behind_a_kept_connection_is_unreachable_then_back(ssh_hosts: SshHosts, kept: tuple) -> None:
    cli, _, _ = kept
    host = ssh_hosts.by_name("edge-1")
    assert cli("plan").returncode == 0
    host.stop()
    try:
        down = cli("plan")
        out = down.stdout + down.stderr
        assert down.returncode == 1 and "edge-1" in out and "unreachable" in out, out
    finally:
        host.start()
    back = cli("plan", "--detailed-exitcode")
    assert back.returncode == 0, back.stdout + back.stderr


def test_the_keeper_leaves_after_its_persist_time(kept: tuple) -> None:
    cli, env, _ = kept
    assert cli("plan", AIMACTL_SSH_PERSIST="1").returncode == 0
    path = socket_path(env)
    assert path and wait_until(lambda: not os.path.exists(path), 15), "an idle keeper exits and removes its socket"


def test_a_malformed_persist_time_is_a_clear_error(kept: tuple) -> None:
    cli, _, _ = kept
    done = cli("plan", AIMACTL_SSH_PERSIST="soon")
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "AIMACTL_SSH_PERSIST='soon' is not a number of seconds" in out, out
    assert "Traceback" not in out


def test_no_keeper_socket_in_a_directory_others_can_enter(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / f"aimactl-{os.getuid()}").mkdir(parents=True)
    os.chmod(run / f"aimactl-{os.getuid()}", 0o777)
    assert socket_path({"XDG_RUNTIME_DIR": str(run)}) is None
    os.chmod(run / f"aimactl-{os.getuid()}", 0o700)
    assert str(socket_path({"XDG_RUNTIME_DIR": str(run)})).startswith(str(run / f"aimactl-{os.getuid()}" / "keeper-"))


def _docker_stack(ssh_hosts: SshHosts, engine: Any, tmp_path: Path, docker: str, port: int) -> Cli:
    """A Host whose Docker engine is `docker` and one busybox httpd App on it; returns the CLI for it."""
    host, data = ssh_hosts.by_name("edge-1"), tmp_path / "data"
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(ssh_hosts.host_manifest(host, data, docker, extra=f"  python: {PYTHON}\n")
                        + "---\napiVersion: aima.dev/v1\nkind: App\nmetadata: {name: web}\nspec:\n  host: edge-1\n"
                        f"  image: {BUSY}\n  command: {HTTPD}\n  ports: ['{port}:8080']\n")
    (tmp_path / "run").mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "AIMACTL_STACK": "k" + uuid.uuid4().hex[:8],
           "NO_COLOR": "1", "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
           "XDG_RUNTIME_DIR": str(tmp_path / "run"), "AIMACTL_SSH_PERSIST": "60"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aimactl", *args, "-f", str(manifest)], env=env,
                              capture_output=True, text=True, timeout=180)

    return cli


def test_docker_on_a_kept_host_is_read_through_the_keeper(ssh_hosts: SshHosts, docker_engine: Any,
                                                           tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-1")
    cli = _docker_stack(ssh_hosts, docker_engine, tmp_path, docker_engine.socket_path, free_port())
    try:
        applied = cli("apply", "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert cli("plan", "--detailed-exitcode").returncode == 0
        before = _logins(host)
        planned = cli("plan", "--detailed-exitcode")
        assert planned.returncode == 0, planned.stdout + planned.stderr
        assert _logins(host) == before, "the containers were read through the keeper: no login"

        client = docker_engine.client()
        try:
            (container,) = client.containers.list(filters={"name": "-web-0"})
            container.remove(force=True)  # behind aimactl's back
        finally:
            client.close()
        gone = cli("plan", "--detailed-exitcode")
        assert gone.returncode == 2 and "app.web" in gone.stdout, gone.stdout + gone.stderr
        assert _logins(host) == before
    finally:
        cli("destroy", "--auto-approve")


def test_an_engine_socket_the_host_cannot_reach_is_named_through_the_keeper(ssh_hosts: SshHosts,
                                                                           docker_engine: Any,
                                                                           tmp_path: Path) -> None:
    not_a_socket = tmp_path / "engine.sock"
    not_a_socket.write_text("a file, not a socket")
    cli = _docker_stack(ssh_hosts, docker_engine, tmp_path, str(not_a_socket), free_port())
    cli("plan")  # the first contact uploads the helper over the command's own connection
    before = _logins(ssh_hosts.by_name("edge-1"))
    planned = cli("plan")
    assert _logins(ssh_hosts.by_name("edge-1")) == before, "this plan went through the keeper"
    out = planned.stdout + planned.stderr
    assert planned.returncode == 1, out
    assert f"Docker engine at {not_a_socket} on host edge-1 is unavailable: cannot connect to {not_a_socket}" in out
    assert "Traceback" not in out
