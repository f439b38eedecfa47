"""Re-capture the Docker Engine API answers in this folder from a private engine (run as root).

    .venv/bin/python -m tests.data.docker.capture

Starts the suite's private dockerd, creates one container per case, and writes the raw JSON of
`GET /containers/{id}/json` (and `GET /containers/json?all=1`) that `aimactl.runtimes.engine_api` parses.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from aimactl.core.labels import container_name, identity_labels
from aimactl.runtimes.engine_api import EngineReader
from tests.fixtures import free_port, wait_until
from tests.fixtures.dockerd import private_docker_engine

HERE = Path(__file__).parent
STACK = "capture"


def _labels(name: str) -> dict[str, str]:
    spec = {"image": "aima-test/busybox:latest", "ports": ["8080/tcp"], "env": {"API_KEY": "sha256:0123abcd"}}
    return identity_labels(STACK, "App", name, 0, "sha256:" + "ab" * 32, spec)


def _write(name: str, data: Any) -> None:
    (HERE / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _create_cases(client: Any, image: str, bind_dir: str) -> dict[str, str]:
    """Create the containers of every case; return file name -> container id."""
    web_port, all_port = free_port("127.0.0.1"), free_port("0.0.0.0")
    running = client.containers.run(
        image, ["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"], name=container_name(STACK, "web", 0),
        labels=_labels("web"), ports={"8080/tcp": ("127.0.0.1", web_port), "8081/tcp": all_port, "9999/udp": None},
        healthcheck={"test": ["CMD", "true"], "interval": 200_000_000, "start_period": 0}, detach=True,
    )  # fmt: skip
    killed = client.containers.run(image, ["sleep", "1000"], name="capture-killed", detach=True)
    killed.kill()
    created = client.containers.create(
        image, ["sleep", "1000"], name=container_name(STACK, "idle", 0), labels=_labels("idle"),
        ports={"8080/tcp": ("127.0.0.1", free_port("127.0.0.1"))},
    )  # fmt: skip
    mounted = client.containers.run(
        image, ["sleep", "1000"], name="capture-mounts", detach=True, environment={"GREETING": "hello"},
        volumes={bind_dir: {"bind": "/data", "mode": "ro"}, "capture-models": {"bind": "/models", "mode": "rw"}},
        restart_policy={"Name": "unless-stopped"}, mem_limit=64 * 2**20, nano_cpus=500_000_000,
    )  # fmt: skip
    ready = wait_until(lambda: client.api.inspect_container(running.id)["State"]["Health"]["Status"] == "healthy", 15)
    assert ready, "the healthcheck did not pass"
    killed.wait(timeout=10)
    return {"running.json": running.id, "exited-137.json": killed.id, "created.json": created.id,
            "mounts.json": mounted.id}  # fmt: skip


def main() -> None:
    """Capture every case into this folder."""
    with private_docker_engine() as engine, contextlib.closing(engine.client()) as client:
        reader = EngineReader(engine.host)
        with tempfile.TemporaryDirectory(prefix="aima-bind-") as bind_dir:
            cases = _create_cases(client, engine.busybox_image, bind_dir)
            time.sleep(0.5)
            for file_name, container_id in cases.items():
                _write(file_name, reader.inspect_container(container_id))
            _write("list.json", reader.containers(all=True))
            version = reader.version()
            print(f"captured with Docker Engine {version['Version']} (API {version['ApiVersion']})")
        reader.close()


if __name__ == "__main__":
    main()
