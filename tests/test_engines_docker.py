"""Every catalog engine rendered for the docker runtime, created (not started) on the private engine, and the
Docker API objects checked: command, model mount (read-only), published port, environment, labels.

The engines' images cannot be pulled here, so the busybox image is tagged under each engine's image name.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from aimactl.converge.connections import resolve_hosts
from aimactl.core.desired import build_desired, host_infos
from aimactl.core.observed import Observed
from aimactl.engines.catalog import load_engine
from aimactl.manifest import load_manifests
from aimactl.runtimes.docker import DockerRuntime

pytestmark = pytest.mark.docker
ENGINES = {"vllm": "safetensors", "llamacpp": "gguf", "sglang": "safetensors", "tgi": "safetensors"}


def _manifest(tmp: Path, engine: str, fmt: str, port: int) -> Path:
    model = tmp / f"model.{fmt}"
    model.write_bytes(b"weights")
    path = tmp / f"{engine}.yaml"
    path.write_text(
        "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\n"
        f"spec: {{address: local, dataDir: '{tmp}/data'}}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Model\nmetadata: {name: m}\n"
        f"spec: {{source: 'file://{model}', format: {fmt}}}\n---\n"
        f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: {engine}}}\nspec:\n  engine: {engine}\n"
        f"  model: m\n  port: {port}\n  env: {{EXTRA: '1'}}\n")
    return path


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_engine_container_objects(engine: str, docker_engine: object, tmp_path: Path) -> None:
    manifests = load_manifests([str(_manifest(tmp_path, engine, ENGINES[engine], 18800))])
    assert manifests.valid, manifests.errors
    hosts = resolve_hosts(host_infos(manifests.resources))
    (tmp_path / "data" / "models" / "m").mkdir(parents=True)  # where apply's fetch of the Model puts it
    client = docker_engine.client()  # type: ignore[attr-defined]
    runtime = DockerRuntime(docker_engine.host)  # type: ignore[attr-defined]
    with contextlib.closing(client):
        first = build_desired("eng", manifests.resources, Observed(), {}, {}, hosts)
        [want] = first.containers
        client.images.get(docker_engine.busybox_image).tag(want.container.image)  # type: ignore[attr-defined]
        image_ids = {"local": runtime.image_ids([want.spec["image"]])}
        [want] = build_desired("eng", manifests.resources, Observed(), {}, image_ids, hosts).containers
        container_id = runtime.create(want.container, {k: str(v) for k, v in want.container.env.items()})
        try:
            attrs = client.api.inspect_container(container_id)
        finally:
            runtime.remove(container_id)
    assert attrs["Config"]["Cmd"] == list(want.container.command or [])
    assert "EXTRA=1" in attrs["Config"]["Env"]
    [(inner, bindings)] = attrs["HostConfig"]["PortBindings"].items()
    assert bindings[0]["HostPort"] == "18800" and inner == f"{want.container.ports[0].container_port}/tcp"
    model_mounts = [m for m in attrs["HostConfig"]["Mounts"] if m["Source"].startswith(str(tmp_path / "data"))]
    assert model_mounts and all(m["ReadOnly"] for m in model_mounts)
    model_path = next(arg for arg in want.container.command or [] if arg.startswith(model_mounts[0]["Target"]))
    assert model_path, "the engine's command names the model at its mount path"
    assert attrs["Config"]["Labels"]["dev.aima.spec-hash"] == want.spec_hash
    shm = load_engine(engine).shm_size
    if shm:  # the /dev/shm the engine's docs ask for reaches the container, and is part of its identity
        assert attrs["HostConfig"]["ShmSize"] == shm
        assert want.spec["resources"]["shm"] == shm
    else:
        assert "shm" not in want.spec["resources"]


def test_ollama_container_objects(docker_engine: object, tmp_path: Path) -> None:
    path = tmp_path / "ollama.yaml"
    path.write_text(
        "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\n"
        f"spec: {{address: local, dataDir: '{tmp_path}/data'}}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Model\nmetadata: {name: qwen}\nspec: {source: 'ollama://qwen2.5:0.5b'}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: ol}\n"
        "spec: {engine: ollama, model: qwen, port: 18801}\n")
    manifests = load_manifests([str(path)])
    hosts = resolve_hosts(host_infos(manifests.resources))
    desired = build_desired("eng", manifests.resources, Observed(), {}, {}, hosts)
    assert desired.models[0].url is None, "Ollama pulls its own models: nothing for aimactl to fetch"
    [want] = desired.containers
    for mount in want.container.mounts:
        if mount.is_bind:
            Path(mount.source).mkdir(parents=True, exist_ok=True)
    client = docker_engine.client()  # type: ignore[attr-defined]
    runtime = DockerRuntime(docker_engine.host)  # type: ignore[attr-defined]
    with contextlib.closing(client):
        client.images.get(docker_engine.busybox_image).tag(want.container.image)  # type: ignore[attr-defined]
        container_id = runtime.create(want.container, {k: str(v) for k, v in want.container.env.items()})
        try:
            attrs = client.api.inspect_container(container_id)
        finally:
            runtime.remove(container_id)
    assert any(e.startswith("OLLAMA_HOST=") for e in attrs["Config"]["Env"])
    assert "11434/tcp" in attrs["HostConfig"]["PortBindings"]
    assert any(m["Target"] == "/root/.ollama" for m in attrs["HostConfig"]["Mounts"])
