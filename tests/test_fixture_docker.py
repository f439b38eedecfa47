"""Prove the private Docker engine fixture: containers run, and published ports reach the host."""

from __future__ import annotations

import contextlib

import pytest

from tests.fixtures import free_port, http_get, wait_until
from tests.fixtures.dockerd import DockerEngine

pytestmark = pytest.mark.docker


def test_busybox_container_echoes_into_its_logs(docker_engine: DockerEngine) -> None:
    with contextlib.closing(docker_engine.client()) as client:
        container = client.containers.run(docker_engine.busybox_image, ["echo", "aima-fixture-ok"], detach=True)
        try:
            assert container.wait(timeout=30)["StatusCode"] == 0
            assert container.logs() == b"aima-fixture-ok\n"
        finally:
            container.remove(force=True)


def test_published_port_serves_http_to_the_host(docker_engine: DockerEngine) -> None:
    host_port = free_port("127.0.0.1")
    script = "mkdir -p /www && echo served-by-busybox > /www/probe.txt && exec httpd -f -p 8080 -h /www"
    with contextlib.closing(docker_engine.client()) as client:
        container = client.containers.run(
            docker_engine.busybox_image,
            ["sh", "-c", script],
            ports={"8080/tcp": ("127.0.0.1", host_port)},
            detach=True,
        )
        try:
            url = f"http://127.0.0.1:{host_port}/probe.txt"
            assert wait_until(lambda: http_get(url) is not None, timeout_s=15), container.logs().decode()
            assert http_get(url) == b"served-by-busybox\n"
        finally:
            container.remove(force=True)
