"""The concrete container a Service or App replica becomes: the contract between the planner and runtimes."""

from __future__ import annotations

from dataclasses import dataclass, field

from aimactl.core.observed import PublishedPort


@dataclass(frozen=True)
class Mount:
    """A volume: `source` is an absolute host path or a named volume; `target` the path inside."""

    source: str
    target: str
    read_only: bool = False

    @property
    def is_bind(self) -> bool:
        """Host path (bind mount) rather than a named volume."""
        return self.source.startswith("/")


@dataclass(frozen=True)
class GpuRequest:
    """GPUs for a container: a count, or explicit device ids (indexes or UUIDs)."""

    count: int = 0
    device_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable whose value is a secret, resolved only when the container is created."""

    source: str
    """`env:NAME` or `file:/abs/path`."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one container. Plain data; secrets appear only as references."""

    name: str
    image: str
    command: tuple[str, ...] | None = None
    env: dict[str, str | SecretEnv] = field(default_factory=dict)
    ports: tuple[PublishedPort, ...] = ()
    mounts: tuple[Mount, ...] = ()
    restart: str = "unless-stopped"
    memory: int | None = None
    """Bytes."""
    nano_cpus: int | None = None
    gpus: GpuRequest | None = None
    labels: dict[str, str] = field(default_factory=dict)
    shm_size: int | None = None
    """Bytes of /dev/shm (vLLM and SGLang share tensors through it; Docker's default is 64 MiB)."""
