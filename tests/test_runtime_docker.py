"""The Docker runtime against the suite's real private engine: create, observe, kill, update, logs, remove."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from aimactl.core.containers import ContainerSpec, GpuRequest, Mount
from aimactl.core.labels import container_name, identity_labels
from aimactl.core.observed import PublishedPort
from aimactl.runtimes import ContainerNotFound, EngineError, EngineUnavailable, ImageNotFound, Runtime, RuntimeFailure
from aimactl.runtimes.docker import DockerRuntime
from tests.fixtures import free_port, http_get, wait_until
from tests.fixtures.dockerd import DockerEngine

MIB = 2**20
SPEC_HASH = "sha256:" + "0f" * 32


@pytest.fixture()
def stack() -> str:
    """A stack name no other test uses."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture()
def client(docker_engine: DockerEngine, stack: str) -> Iterator[docker.DockerClient]:
    """An SDK client for checks; removes every container and volume whose name mentions `stack` afterwards."""
    with contextlib.closing(docker_engine.client()) as sdk:
        yield sdk
        for container in sdk.containers.list(all=True):
            if stack in container.name or container.labels.get("dev.aima.stack") == stack:
                container.remove(force=True, v=True)
        for volume in sdk.volumes.list():
            if stack in volume.name:
                volume.remove(force=True)


@pytest.fixture()
def runtime(docker_engine: DockerEngine) -> Iterator[DockerRuntime]:
    docker_runtime = DockerRuntime(docker_engine.host)
    yield docker_runtime
    docker_runtime.close()


def _spec(stack: str, image: str, name: str = "web", **fields: Any) -> ContainerSpec:
    """A ContainerSpec carrying aimactl's identity labels."""
    stored = {"image": image, "name": name, "env": {"GREETING": "sha256:abc"}}
    labels = identity_labels(stack, "App", name, 0, SPEC_HASH, stored)
    return ContainerSpec(name=container_name(stack, name, 0), image=image, labels=labels, **fields)


pytestmark = pytest.mark.docker


def test_docker_runtime_satisfies_the_protocol(runtime: DockerRuntime) -> None:
    checked: Runtime = runtime
    assert checked is runtime


def test_create_start_observe_kill_and_remove(
    docker_engine: DockerEngine, runtime: DockerRuntime, client: docker.DockerClient, stack: str, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text("served-from-bind-mount\n")
    port = free_port("127.0.0.1")
    script = "echo started-$GREETING; mkdir -p /www && cp /conf/index.html /www/ && exec httpd -f -p 8080 -h /www"
    spec = _spec(
        stack, docker_engine.busybox_image, command=("sh", "-c", script),
        ports=(PublishedPort("127.0.0.1", port, 8080),),
        mounts=(Mount(str(tmp_path), "/conf", read_only=True), Mount(f"{stack}-data", "/data")),
        restart="no", memory=64 * MIB, nano_cpus=500_000_000,
    )  # fmt: skip
    container_id = runtime.create(spec, {"GREETING": "hello"})
    mine, _ = runtime.observe(stack)
    assert [(c.id, c.state, c.exit_code) for c in mine] == [(container_id, "created", None)]

    runtime.start(container_id)
    url = f"http://127.0.0.1:{port}/index.html"
    assert wait_until(lambda: http_get(url) is not None, timeout_s=15), list(runtime.logs(container_id))
    assert http_get(url) == b"served-from-bind-mount\n"
    [observed], others = runtime.observe(stack)
    assert (observed.name, observed.state, observed.running) == (spec.name, "running", True)
    assert observed.managed and observed.stack == stack and observed.resource_name == "web"
    assert observed.spec_hash == SPEC_HASH and observed.spec == {
        "image": spec.image,
        "name": "web",
        "env": {"GREETING": "sha256:abc"},
    }
    assert observed.ports == (PublishedPort("127.0.0.1", port, 8080),)
    assert observed.image == docker_engine.busybox_image and observed.started_at is not None
    assert container_id not in {c.id for c in others}

    raw = client.api.inspect_container(container_id)
    assert "GREETING=hello" in raw["Config"]["Env"]
    mounts = {m["Destination"]: m for m in raw["Mounts"]}
    assert mounts["/conf"]["Type"] == "bind" and mounts["/conf"]["RW"] is False
    assert mounts["/data"]["Type"] == "volume" and mounts["/data"]["Name"] == f"{stack}-data"
    host_config = raw["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"], host_config["RestartPolicy"]["Name"]) == (
        64 * MIB, 500_000_000, "no")  # fmt: skip

    client.api.kill(container_id)
    client.api.wait(container_id, timeout=10)
    [killed], _ = runtime.observe(stack)
    assert (killed.state, killed.exit_code, killed.running) == ("exited", 137, False)
    assert killed.ports == (PublishedPort("127.0.0.1", port, 8080),)  # still requested, so still "ours"

    runtime.remove(container_id)
    runtime.remove(container_id)
    assert runtime.observe(stack)[0] == []


def test_others_hold_ports_and_other_stacks_are_not_ours(
    docker_engine: DockerEngine, runtime: DockerRuntime, client: docker.DockerClient, stack: str
) -> None:
    port = free_port("127.0.0.1")
    unmanaged = client.containers.run(
        docker_engine.busybox_image, ["sleep", "60"], name=f"unmanaged-{stack}", detach=True,
        ports={"9000/tcp": ("127.0.0.1", port)},
    )  # fmt: skip
    neighbour = runtime.create(_spec(f"{stack}x", docker_engine.busybox_image), {})
    mine, others = runtime.observe(stack)
    assert mine == []
    by_id = {c.id: c for c in others}
    assert by_id[unmanaged.id].ports == (PublishedPort("127.0.0.1", port, 9000),)
    assert by_id[unmanaged.id].name == f"unmanaged-{stack}" and not by_id[unmanaged.id].managed
    assert by_id[unmanaged.id].state == "running"
    assert by_id[neighbour].stack == f"{stack}x" and by_id[neighbour].state == "created"


def test_image_ids_for_present_and_absent_references(
    docker_engine: DockerEngine, runtime: DockerRuntime, client: docker.DockerClient
) -> None:
    present = docker_engine.busybox_image
    absent = "aima-test/absent:1.0"
    found = runtime.image_ids([present, absent, present])
    assert found == {present: client.images.get(present).id}
    assert found[present].startswith("sha256:")
    assert runtime.image_ids([]) == {}


def test_missing_image_raises_image_not_found_naming_it(runtime: DockerRuntime, stack: str) -> None:
    spec = _spec(stack, "aima-test/never-imported:3.1")
    with pytest.raises(ImageNotFound) as caught:
        runtime.create(spec, {"API_KEY": "secret-value-123"})
    message = str(caught.value)
    assert "aima-test/never-imported:3.1" in message and spec.name in message
    assert "docker pull" in message and "\n" not in message
    assert "secret-value-123" not in message
    assert isinstance(caught.value, RuntimeError)
    assert runtime.observe(stack)[0] == []


def test_update_in_place_changes_restart_policy_and_limits(
    docker_engine: DockerEngine, runtime: DockerRuntime, client: docker.DockerClient, stack: str
) -> None:
    spec = _spec(stack, docker_engine.busybox_image, command=("sleep", "60"), memory=64 * MIB, nano_cpus=500_000_000)
    container_id = runtime.create(spec, {})
    runtime.start(container_id)
    runtime.update_in_place(container_id, restart="always", memory=128 * MIB, nano_cpus=250_000_000)
    host_config = client.api.inspect_container(container_id)["HostConfig"]
    assert host_config["RestartPolicy"]["Name"] == "always"
    assert (host_config["Memory"], host_config["NanoCpus"]) == (128 * MIB, 250_000_000)
    runtime.update_in_place(container_id, restart="on-failure", memory=32 * MIB, nano_cpus=250_000_000)
    assert client.api.inspect_container(container_id)["HostConfig"]["Memory"] == 32 * MIB
    with pytest.raises(RuntimeFailure, match=f"{spec.name}: Docker cannot remove a memory limit"):
        runtime.update_in_place(container_id, restart="always", memory=None, nano_cpus=250_000_000)


def test_logs_return_stdout_and_stderr_lines(
    docker_engine: DockerEngine, runtime: DockerRuntime, client: docker.DockerClient, stack: str
) -> None:
    script = "echo first line; echo to-stderr >&2; printf 'caf\\303\\251\\nno newline at end'"
    spec = _spec(stack, docker_engine.busybox_image, command=("sh", "-c", script), restart="no")
    container_id = runtime.create(spec, {})
    runtime.start(container_id)
    assert client.api.wait(container_id, timeout=10)["StatusCode"] == 0
    lines = list(runtime.logs(container_id, tail=None))
    # the engine copies stdout and stderr separately: their relative order is not kept
    assert [line for line in lines if line != "to-stderr"] == ["first line", "café", "no newline at end"]
    assert sorted(lines) == sorted(["first line", "to-stderr", "café", "no newline at end"])
    assert len(list(runtime.logs(container_id, tail=1))) == 1
    assert sorted(runtime.logs(container_id, follow=True)) == sorted(lines)


def test_logs_of_a_tty_container(
    docker_engine: DockerEngine, runtime: DockerRuntime, client: docker.DockerClient, stack: str
) -> None:
    container = client.containers.run(docker_engine.busybox_image, ["sh", "-c", "echo one; echo two >&2"], tty=True,
                                      name=f"tty-{stack}", detach=True)  # fmt: skip
    assert container.wait(timeout=10)["StatusCode"] == 0
    assert list(runtime.logs(container.id)) == ["one", "two"]
    with pytest.raises(ContainerNotFound):
        runtime.logs("no-such-container")


def test_start_on_a_taken_port_names_the_container_and_the_cause(
    docker_engine: DockerEngine, runtime: DockerRuntime, stack: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = _spec(stack, docker_engine.busybox_image, command=("sleep", "60"),
                     ports=(PublishedPort("127.0.0.1", port, 8080),))  # fmt: skip
        container_id = runtime.create(spec, {})
        with pytest.raises(EngineError) as caught:
            runtime.start(container_id)
    message = str(caught.value)
    assert message.startswith(f"container {spec.name}: ") and str(port) in message
    assert "address already in use" in message or "port is already allocated" in message
    assert "\n" not in message and caught.value.status == 500


def test_gpu_requests_rename_and_errors_on_missing_containers(
    docker_engine: DockerEngine, runtime: DockerRuntime, client: docker.DockerClient, stack: str
) -> None:
    by_ids = runtime.create(_spec(stack, docker_engine.busybox_image, "gpu-ids",
                                  gpus=GpuRequest(device_ids=("0", "GPU-1234"))), {})  # fmt: skip
    by_count = runtime.create(_spec(stack, docker_engine.busybox_image, "gpu-count", gpus=GpuRequest(count=2)), {})
    [request] = client.api.inspect_container(by_ids)["HostConfig"]["DeviceRequests"]
    assert (request["DeviceIDs"], request["Capabilities"], request["Count"]) == (["0", "GPU-1234"], [["gpu"]], 0)
    [request] = client.api.inspect_container(by_count)["HostConfig"]["DeviceRequests"]
    assert (request["DeviceIDs"] or None, request["Count"]) == (None, 2)

    runtime.rename(by_count, f"{stack}-renamed")
    assert client.api.inspect_container(by_count)["Name"] == f"/{stack}-renamed"
    with pytest.raises(ContainerNotFound, match="container no-such-container"):
        runtime.start("no-such-container")
    runtime.remove("no-such-container")
    with pytest.raises(EngineError, match="already in use"):
        runtime.create(_spec(stack, docker_engine.busybox_image, "gpu-ids"), {})


def test_observation_never_imports_the_docker_sdk(docker_engine: DockerEngine) -> None:
    code = (
        "import sys\n"
        "from aimactl.runtimes.docker import DockerRuntime\n"
        f"runtime = DockerRuntime({docker_engine.host!r})\n"
        "runtime.observe('x'); runtime.image_ids(['a:1'])\n"
        "print(sorted(m for m in ('docker', 'requests', 'paramiko', 'urllib3') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("url", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"])
def test_unreachable_engine_is_engine_unavailable(url: str) -> None:
    with pytest.raises(EngineUnavailable, match="is unavailable"):
        DockerRuntime(url).observe("x")
