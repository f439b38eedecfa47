"""What the hosts really run, as plain data: the planner's only view of the world.

Runtimes fill these from queries (Docker Engine API, the host helper, /proc) through pure parsers; the
planner never talks to a host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aimactl.core import labels as L
from aimactl.core.estimate import ModelWeights
from aimactl.core.facts import HostFacts


@dataclass(frozen=True)
class PublishedPort:
    """A port a container publishes on its host."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class ObservedContainer:
    """One container as the engine reports it (`docker inspect`), with aimactl's labels decoded."""

    id: str
    name: str
    image: str
    image_id: str
    state: str
    """created | running | restarting | paused | exited | dead | removing"""
    exit_code: int | None = None
    restart_count: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[PublishedPort, ...] = ()
    health: str | None = None
    """Docker HEALTHCHECK status when the image has one: starting | healthy | unhealthy."""
    live: dict[str, Any] | None = None
    """Live values of the fields `docker update` changes (`restart`, `resources.memory`, `resources.cpus`).
    Docker cannot relabel a container, so after an in-place update these, not the label, are current."""

    @property
    def managed(self) -> bool:
        """Carries aimactl's identity labels."""
        return self.labels.get(L.MANAGED) == "true"

    @property
    def stack(self) -> str | None:
        """The stack that owns it, when managed."""
        return self.labels.get(L.STACK)

    @property
    def resource_kind(self) -> str | None:
        """`service` or `app`."""
        return self.labels.get(L.KIND)

    @property
    def resource_name(self) -> str | None:
        """The manifest name it was created for."""
        return self.labels.get(L.NAME)

    @property
    def replica(self) -> int:
        """Replica index (0 when the label is missing)."""
        try:
            return int(self.labels.get(L.REPLICA, "0"))
        except ValueError:
            return 0

    @property
    def spec_hash(self) -> str | None:
        """The spec hash written at creation."""
        return self.labels.get(L.SPEC_HASH)

    @property
    def spec(self) -> dict[str, Any] | None:
        """The applied spec: the label written at creation, with the live values of in-place fields."""
        stored = L.stored_spec(self.labels)
        if stored is None or not self.live:
            return stored
        current = dict(stored)
        if "restart" in stored and "restart" in self.live:
            current["restart"] = self.live["restart"]
        if isinstance(stored.get("resources"), dict):
            current["resources"] = {key: self.live.get(f"resources.{key}", value) if key in ("memory", "cpus")
                                    else value for key, value in stored["resources"].items()}
        return current

    @property
    def running(self) -> bool:
        """Running (or restarting under its restart policy)."""
        return self.state in ("running", "restarting")


@dataclass(frozen=True)
class Listener:
    """A TCP/UDP socket in LISTEN state on a host (from /proc/net/tcp*)."""

    ip: str
    port: int
    protocol: str = "tcp"


@dataclass
class ObservedHost:
    """Everything observed on one host for one stack."""

    name: str
    reachable: bool = True
    error: str | None = None
    containers: list[ObservedContainer] = field(default_factory=list)
    """This stack's managed containers."""
    others: list[ObservedContainer] = field(default_factory=list)
    """Every other container on the engine (unmanaged, or other stacks): they may hold ports we want."""
    listeners: list[Listener] = field(default_factory=list)
    """Listening sockets on the host, to find ports held by processes aimactl does not manage."""
    image_ids: dict[str, str] = field(default_factory=dict)
    """Image reference -> image id, for the images the manifests use that exist on the host."""
    address: str = "127.0.0.1"
    """Address other hosts and the controller use to reach published ports."""
    docker_error: str | None = None
    """Why the Docker engine could not be observed (processes and models may still be); None when it could."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The host's model cache index: Model name -> {source, sha256, size, path, fetched_at}."""
    facts: HostFacts | None = None
    """CPU, RAM, disk and GPU facts (aimactl/hosts/facts.py); None when not gathered."""
    facts_error: str | None = None
    """Why the facts could not be gathered (the host may still be reachable)."""


@dataclass
class Observed:
    """The observed state of every host."""

    hosts: dict[str, ObservedHost] = field(default_factory=dict)
    model_weights: dict[str, ModelWeights] = field(default_factory=dict)
    """Model name -> its weights as the controller could read them (GGUF header, local files), for estimates."""

    def host(self, name: str) -> ObservedHost:
        """The observation of one host (an empty, reachable one when never observed)."""
        return self.hosts.setdefault(name, ObservedHost(name))
