"""The Docker runtime: observe one engine through the stdlib reader, change it through the Docker SDK.

Observation (plans, no-op applies) never imports the `docker` package; the SDK is imported on the first
mutation and one client is kept per runtime.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from aimactl.core import labels as L
from aimactl.core.containers import ContainerSpec, GpuRequest, Mount
from aimactl.core.observed import ObservedContainer, PublishedPort
from aimactl.runtimes import (
    ContainerNotFound,
    EngineError,
    EngineUnavailable,
    ImageNotFound,
    RuntimeFailure,
)
from aimactl.runtimes.engine_api import EngineReader, parse_container, parse_container_summary

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
INSPECT_WORKERS = 8
"""Parallel `inspect` requests while observing (the engine answers each in about a millisecond)."""
CLIENT_TIMEOUT_S = 60
T = TypeVar("T")


class DockerRuntime:
    """One Docker engine, e.g. `DockerRuntime("unix:///var/run/docker.sock")`. Safe to share between threads."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.reader = EngineReader(base_url)
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()

    # --- observation (stdlib only) ------------------------------------------------------------------------

    def observe(self, stack: str, host: str | None = None) -> tuple[list[ObservedContainer], list[ObservedContainer]]:
        """Return (this stack's managed containers, fully inspected; every other container, from the list).

        Both lists are sorted by name. A container removed between the list and its inspection is left out. With
        `host`, a container labelled for another Host is another's (a container without the label, made before
        aimactl wrote it, counts as this host's).
        """
        mine: list[str] = []
        others: list[ObservedContainer] = []
        for item in self.reader.containers(all=True):
            labels = item.get("Labels") or {}
            if (labels.get(L.MANAGED) == "true" and labels.get(L.STACK) == stack
                    and (host is None or labels.get(L.HOST, host) == host)):
                mine.append(str(item["Id"]))
            else:
                others.append(parse_container_summary(item))
        inspected = _in_parallel(self._inspect_or_none, mine)
        containers = [parse_container(found) for found in inspected if found is not None]
        return sorted(containers, key=_by_name), sorted(others, key=_by_name)

    def image_ids(self, refs: Iterable[str]) -> dict[str, str]:
        """Map each reference present on the engine to its image id (`sha256:...`); absent ones are left out."""
        unique = sorted(set(refs))
        found = _in_parallel(self.reader.inspect_image, unique)
        return {ref: str(image["Id"]) for ref, image in zip(unique, found, strict=True) if image is not None}

    def inspect(self, container_id: str) -> ObservedContainer:
        """One container, fully inspected; raises ContainerNotFound."""
        return parse_container(self.reader.inspect_container(container_id))

    def _inspect_or_none(self, container_id: str) -> dict[str, Any] | None:
        """The raw inspection of a container, or None when it is gone."""
        try:
            return self.reader.inspect_container(container_id)
        except ContainerNotFound:
            return None

    # --- mutations (Docker SDK) ---------------------------------------------------------------------------

    def create(self, spec: ContainerSpec, env: Mapping[str, str]) -> str:
        """Create (not start) the container of `spec` with the fully resolved `env`; return its id.

        `env` holds plaintext secrets: it is never logged, and its values are scrubbed from error messages.
        Raises ImageNotFound when the image is not on the engine (nothing is ever pulled).
        """
        client = self._sdk()
        log.debug("creating container %s from %s on %s", spec.name, spec.image, self.base_url)
        with self._errors(spec.name, image=spec.image, secrets=env.values()):
            host_config = client.api.create_host_config(**_host_config_args(spec))
            created = client.api.create_container(
                spec.image,
                command=list(spec.command) if spec.command is not None else None,
                name=spec.name,
                environment=dict(env),
                labels=dict(spec.labels),
                ports=[(p.container_port, p.protocol) for p in spec.ports],
                host_config=host_config,
            )
        return str(created["Id"])

    def start(self, container_id: str) -> None:
        """Start a created or stopped container (starting a running one does nothing)."""
        with self._errors(container_id):
            self._sdk().api.start(container_id)

    def stop(self, container_id: str, timeout: int = 10) -> None:
        """Stop a container: SIGTERM, then SIGKILL after `timeout` seconds."""
        with self._errors(container_id):
            self._sdk().api.stop(container_id, timeout=timeout)

    def remove(self, container_id: str) -> None:
        """Force-remove a container and its anonymous volumes; a missing container is fine."""
        try:
            with self._errors(container_id):
                self._sdk().api.remove_container(container_id, force=True, v=True)
        except ContainerNotFound:
            return
        except EngineError as exc:
            if exc.status == 409 and "already in progress" in str(exc):
                return
            raise

    def update_in_place(self, container_id: str, restart: str, memory: int | None, nano_cpus: int | None) -> None:
        """`docker update`: set the restart policy, the memory limit (bytes) and the CPU limit (nano CPUs).

        Docker cannot lift a limit in place: asking for None where a limit is set raises RuntimeFailure,
        and the caller must replace the container instead. The swap limit follows Docker's default
        (twice the memory).
        """
        body: dict[str, Any] = {"RestartPolicy": _restart_policy(restart)}
        current = self.reader.inspect_container(container_id).get("HostConfig") or {}
        for field, value, name in (("Memory", memory, "memory"), ("NanoCpus", nano_cpus, "CPU")):
            if value is None and current.get(field):
                what = self._describe(container_id)
                raise RuntimeFailure(f"{what}: Docker cannot remove a {name} limit in place; replace the container")
        if memory is not None:
            body.update(Memory=memory, MemorySwap=2 * memory)
        if nano_cpus is not None:
            body["NanoCpus"] = nano_cpus
        api = self._sdk().api
        with self._errors(container_id):
            response = api._post_json(api._url("/containers/{0}/update", container_id), data=body)
            api._raise_for_status(response)

    def logs(self, container_id: str, tail: int | None = 100, follow: bool = False) -> Iterator[str]:
        """The container's stdout and stderr lines, decoded (UTF-8, bad bytes replaced), without line ends.

        `tail=None` gives every line; `follow=True` keeps yielding until the container stops. Read through
        the stdlib reader (no SDK import); lines of stdout and stderr are reassembled separately.
        """
        return _lines(self.reader.logs(container_id, tail=tail, follow=follow))

    def rename(self, container_id: str, new_name: str) -> None:
        """Rename a container."""
        with self._errors(container_id):
            self._sdk().api.rename(container_id, new_name)

    def close(self) -> None:
        """Close the connections to the engine (the runtime reconnects if used again)."""
        self.reader.close()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- helpers ------------------------------------------------------------------------------------------

    def _sdk(self) -> docker.DockerClient:
        """The Docker SDK client of this engine, created (and `docker` imported) on first use."""
        with self._client_lock:
            if self._client is None:
                from aimactl.imports import without

                with without("paramiko"):  # the SDK's ssh:// transport: aimactl forwards SSH hosts' sockets itself
                    import docker
                    import docker.errors

                try:
                    self._client = docker.DockerClient(base_url=self.base_url, timeout=CLIENT_TIMEOUT_S)
                except docker.errors.DockerException as exc:
                    raise EngineUnavailable(f"Docker engine at {self.base_url} is unavailable: {exc}") from exc
            return self._client

    def _describe(self, container: str) -> str:
        """`container NAME` for messages, given an id or a name (the short id when the name cannot be read)."""
        try:
            name = str(self.reader.inspect_container(container).get("Name", "")).lstrip("/")
        except RuntimeFailure:
            name = ""
        if not name:
            is_id = len(container) == 64 and all(c in "0123456789abcdef" for c in container)
            name = container[:12] if is_id else container
        return f"container {name}"

    @contextlib.contextmanager
    def _errors(self, container: str, image: str | None = None, secrets: Iterable[str] = ()) -> Iterator[None]:
        """Turn Docker SDK and connection errors into one-line RuntimeFailure subclasses naming `container`."""
        import docker.errors
        import requests.exceptions

        try:
            yield
        except docker.errors.DockerException as exc:
            raise self._failure(container, exc, image, list(secrets)) from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            reason = _scrub(str(exc), secrets)
            raise EngineUnavailable(f"Docker engine at {self.base_url} is unavailable: {reason}") from exc

    def _failure(self, container: str, exc: Exception, image: str | None, secrets: list[str]) -> RuntimeFailure:
        """The RuntimeFailure for an SDK error about `container` (an id or a name)."""
        import docker.errors

        what = self._describe(container)
        if isinstance(exc, docker.errors.ImageNotFound) and image is not None:
            return ImageNotFound(_missing_image(what, image, self.base_url), 404)
        if isinstance(exc, docker.errors.NotFound):
            return ContainerNotFound(f"{what}: {_explanation(exc, secrets)}", 404)
        if isinstance(exc, docker.errors.APIError):
            return EngineError(f"{what}: {_explanation(exc, secrets)}", exc.status_code or 0)
        return EngineError(f"{what}: {_scrub(str(exc), secrets)}")


def _by_name(container: ObservedContainer) -> str:
    return container.name


def _in_parallel(function: Callable[[str], T], items: list[str]) -> list[T]:
    """`[function(item) for item in items]`, on a few threads when there are several items."""
    if len(items) <= 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(INSPECT_WORKERS, len(items))) as pool:
        return list(pool.map(function, items))


def _restart_policy(restart: str) -> dict[str, Any]:
    """Docker's RestartPolicy object for `no | on-failure | always | unless-stopped`."""
    if restart not in RESTART_POLICIES:
        raise ValueError(f"restart policy {restart!r} is not one of {', '.join(RESTART_POLICIES)}")
    return {"Name": restart, "MaximumRetryCount": 0}


def _port_bindings(ports: Iterable[PublishedPort]) -> dict[str, list[tuple[str, int]]]:
    """`{"8080/tcp": [(host_ip, host_port), ...]}`; host_ip '' binds every address."""
    bindings: dict[str, list[tuple[str, int]]] = {}
    for port in ports:
        bindings.setdefault(f"{port.container_port}/{port.protocol}", []).append((port.host_ip, port.host_port))
    return bindings


def _mounts(mounts: Iterable[Mount]) -> list[Any]:
    """Docker SDK mounts: a bind for an absolute source (it must exist), else a named volume."""
    import docker.types

    return [
        docker.types.Mount(m.target, m.source, type="bind" if m.is_bind else "volume", read_only=m.read_only)
        for m in mounts
    ]


def _device_requests(gpus: GpuRequest | None) -> list[Any] | None:
    """GPU device requests: explicit device ids when given, else a count (-1 means all GPUs)."""
    import docker.types

    if gpus is None:
        return None
    if gpus.device_ids:
        return [docker.types.DeviceRequest(device_ids=list(gpus.device_ids), capabilities=[["gpu"]])]
    if gpus.count:
        return [docker.types.DeviceRequest(count=gpus.count, capabilities=[["gpu"]])]
    return None


def _host_config_args(spec: ContainerSpec) -> dict[str, Any]:
    """Keyword arguments of `APIClient.create_host_config` for `spec`."""
    args: dict[str, Any] = {
        "port_bindings": _port_bindings(spec.ports),
        "mounts": _mounts(spec.mounts),
        "restart_policy": _restart_policy(spec.restart),
    }
    if spec.memory is not None:
        args["mem_limit"] = spec.memory
    if spec.nano_cpus is not None:
        args["nano_cpus"] = spec.nano_cpus
    if spec.shm_size is not None:
        args["shm_size"] = spec.shm_size
    requests = _device_requests(spec.gpus)
    if requests:
        args["device_requests"] = requests
    return args


def _lines(frames: Iterable[tuple[int, bytes]]) -> Iterator[str]:
    """Split (stream, data) frames into decoded lines, keeping one partial line per stream."""
    pending: dict[int, bytes] = {}
    for stream, data in frames:
        *complete, pending[stream] = (pending.get(stream, b"") + data).split(b"\n")
        for line in complete:
            yield line.decode("utf-8", "replace").rstrip("\r")
    for rest in pending.values():
        if rest:
            yield rest.decode("utf-8", "replace").rstrip("\r")


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` on one line with every secret value of 4+ characters replaced by ***."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return " ".join(text.split())


def _explanation(exc: Any, secrets: Iterable[str]) -> str:
    """The engine's own explanation of an API error, on one line."""
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return _scrub(str(explanation or exc), secrets)


def _missing_image(what: str, image: str, base_url: str) -> str:
    """The message of ImageNotFound: what is missing, where, and how to get it there."""
    return (
        f"{what}: image {image!r} is not on the Docker engine at {base_url}; aimactl does not pull images, "
        f"so run `docker pull {image}` (or `docker load` / `docker import`) on that host, then apply again"
    )
