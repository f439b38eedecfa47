"""Docker on an SSH host through the forwarded socket: the same DockerRuntime as locally, a private socket, and
clear errors when the host's engine socket is missing."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from aimactl.converge.connections import Connections
from aimactl.core.containers import ContainerSpec
from aimactl.core.desired import HostInfo
from aimactl.runtimes import RuntimeFailure
from aimactl.runtimes.docker import DockerRuntime
from tests.fixtures.sshd import SshHost, SshHosts

pytestmark = [pytest.mark.ssh, pytest.mark.docker]


def _connections(fleet: SshHosts, host: SshHost, tmp: Path, docker: str) -> Connections:
    info = HostInfo(host.name, f"ssh://{host.user}@{host.address}:{host.port}", host.address, str(tmp / "data"),
                    identity_file=str(fleet.client_key_path), known_hosts=str(fleet.known_hosts_path),
                    docker=docker)
    return Connections({host.name: info}, {"DOCKER_HOST": "unix:///nowhere/docker.sock"})


def test_the_remote_engine_is_reached_through_a_private_forwarded_socket(ssh_hosts: SshHosts, docker_engine: object,
                                                                          tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-1")
    connections = _connections(ssh_hosts, host, tmp_path, f"unix://{docker_engine.socket_path}")  # type: ignore[attr-defined]
    try:
        url = connections.docker_url(host.name)
        path = url.removeprefix("unix://")
        assert path != docker_engine.socket_path  # type: ignore[attr-defined]
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        runtime = connections.runtime(host.name, "docker")
        assert isinstance(runtime, DockerRuntime) and runtime.base_url == url
        ids = runtime.image_ids(["aima-test/busybox:latest"])  # the stdlib reader through the forwarder
        assert ids["aima-test/busybox:latest"].startswith("sha256:")
        client = docker_engine.client()  # type: ignore[attr-defined]
        try:
            expected = {c.name for c in client.containers.list(all=True)}
        finally:
            client.close()
        managed, others = runtime.observe("no-such-stack")
        assert managed == [] and {c.name for c in others} == expected
        name = f"aima-ssh-{uuid.uuid4().hex[:8]}"  # writes go through the Docker SDK over the same socket
        cid = runtime.create(ContainerSpec(name, "aima-test/busybox:latest", ("sleep", "30"), restart="no"), {})
        try:
            runtime.start(cid)
            assert runtime.inspect(name).state == "running"
        finally:
            runtime.remove(cid)
        with pytest.raises(RuntimeFailure, match="not on the Docker engine"):
            runtime.create(ContainerSpec(name, "aima-test/absent:1", ("true",)), {})
    finally:
        connections.close()
    assert not os.path.exists(os.path.dirname(path))  # the private socket is gone with the command


def test_a_missing_engine_socket_on_the_host_is_named(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-2")
    connections = _connections(ssh_hosts, host, tmp_path, str(tmp_path / "no-engine.sock"))
    try:
        runtime = connections.runtime(host.name, "docker")
        with pytest.raises(RuntimeFailure) as failed:
            runtime.observe("s")
        message = connections.docker_problem(host.name, failed.value)
        assert message.startswith(f"Docker engine at {tmp_path / 'no-engine.sock'} on host edge-2 is unavailable")
        assert "No such file or directory" in message
    finally:
        connections.close()


def test_the_local_host_takes_its_docker_socket_from_the_manifest(docker_engine: object) -> None:
    info = HostInfo("local", docker=docker_engine.socket_path)  # type: ignore[attr-defined]  # a bare path
    connections = Connections({"local": info}, {"DOCKER_HOST": "unix:///nowhere/docker.sock"})
    try:
        runtime = connections.runtime("local", "docker")
        assert runtime.image_ids(["aima-test/busybox:latest"])["aima-test/busybox:latest"].startswith("sha256:")
        created = runtime.create(ContainerSpec(f"aima-local-{uuid.uuid4().hex[:8]}", "aima-test/busybox:latest",
                                               ("true",), restart="no"), {})  # the SDK takes the same endpoint
        runtime.remove(created)
    finally:
        connections.close()
