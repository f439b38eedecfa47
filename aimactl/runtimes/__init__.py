"""Runtimes: the small protocol every container effect sits behind, and the errors they raise.

`docker` drives one Docker engine (reads through the stdlib Engine API reader, writes through the Docker SDK).
Importing this package is cheap: it imports neither the Docker SDK nor any HTTP library.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from aimactl.core.containers import ContainerSpec
from aimactl.core.observed import ObservedContainer


class RuntimeFailure(RuntimeError):
    """An effect on a host failed; the message is one line naming the target and the engine's explanation."""


class EngineUnavailable(RuntimeFailure):
    """The engine cannot be reached (socket missing, connection refused, timeout); the message names it."""


class EngineError(RuntimeFailure):
    """The engine answered with an error status; `status` is the HTTP status code (0 when unknown)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ImageNotFound(EngineError):
    """The image is not present on the host; aimactl never pulls implicitly."""


class ContainerNotFound(EngineError):
    """The container does not exist (any more)."""


class Runtime(Protocol):
    """One container engine on one host: observe what runs there and change it, one container at a time."""

    def observe(self, stack: str, host: str | None = None) -> tuple[list[ObservedContainer], list[ObservedContainer]]:
        """Return (this stack's managed containers, fully inspected; every other container, summarised). With
        `host`, a container labelled for another Host (one engine reached as two Hosts) counts as another's."""
        ...

    def image_ids(self, refs: Iterable[str]) -> dict[str, str]:
        """Map each image reference present on the host to its image id; absent references are left out."""
        ...

    def inspect(self, container_id: str) -> ObservedContainer:
        """One container (by id or name), fully inspected; raises ContainerNotFound."""
        ...

    def create(self, spec: ContainerSpec, env: Mapping[str, str]) -> str:
        """Create (do not start) the container of `spec` with the fully resolved `env`; return its id.

        `env` holds plaintext secrets: implementations never log it nor put it in error messages.
        Raises ImageNotFound when the image is not on the host.
        """
        ...

    def start(self, container_id: str) -> None:
        """Start a created or stopped container."""
        ...

    def stop(self, container_id: str, timeout: int = 10) -> None:
        """Stop a container (SIGTERM, then SIGKILL after `timeout` seconds)."""
        ...

    def remove(self, container_id: str) -> None:
        """Force-remove a container and its anonymous volumes; a missing container is not an error."""
        ...

    def update_in_place(self, container_id: str, restart: str, memory: int | None, nano_cpus: int | None) -> None:
        """Change the restart policy and resource limits of a container without recreating it."""
        ...

    def logs(self, container_id: str, tail: int | None = 100, follow: bool = False) -> Iterator[str]:
        """Yield the container's stdout and stderr lines (decoded, without line ends)."""
        ...

    def rename(self, container_id: str, new_name: str) -> None:
        """Rename a container."""
        ...


__all__ = [
    "ContainerNotFound",
    "EngineError",
    "EngineUnavailable",
    "ImageNotFound",
    "Runtime",
    "RuntimeFailure",
]
