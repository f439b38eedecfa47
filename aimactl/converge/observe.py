"""Observe hosts: this stack's containers, everything else holding ports, listeners and image ids.

Each host is observed through its runtime; a host that cannot be reached becomes an unreachable
observation (and a check in the plan), never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from aimactl.core.desired import HostInfo
from aimactl.core.observed import Observed, ObservedHost
from aimactl.runtimes import RuntimeFailure
from aimactl.runtimes.docker import DockerRuntime
from aimactl.runtimes.engine_api import docker_endpoint


class Connections:
    """One runtime per host for the length of a command (reused by plan, apply and re-checks)."""

    def __init__(self, hosts: Mapping[str, HostInfo], environ: Mapping[str, str]):
        self.hosts = dict(hosts)
        self.environ = environ
        self._runtimes: dict[str, DockerRuntime] = {}

    def runtime(self, host: str) -> DockerRuntime:
        """The Docker runtime of a host; SSH hosts arrive with the fleet work and are refused clearly."""
        if host not in self._runtimes:
            info = self.hosts[host]
            if info.address != "local":
                raise RuntimeFailure(f"host {host} ({info.address}): SSH hosts are not supported by this version yet")
            self._runtimes[host] = DockerRuntime(docker_endpoint(self.environ.get("DOCKER_HOST")))
        return self._runtimes[host]

    def close(self) -> None:
        """Close every connection."""
        for runtime in self._runtimes.values():
            runtime.close()
        self._runtimes.clear()


def observe_host(connections: Connections, stack: str, host: str, images: Iterable[str]) -> ObservedHost:
    """One host's observation; failures make it unreachable with the reason."""
    info = connections.hosts[host]
    seen = ObservedHost(host, address=info.url_host)
    try:
        runtime = connections.runtime(host)
        seen.containers, seen.others = runtime.observe(stack)
        seen.image_ids = runtime.image_ids(images)
    except RuntimeFailure as exc:
        seen.reachable, seen.error = False, str(exc)
        return seen
    if info.address == "local":
        from aimactl.hosts.procnet import local_listeners

        seen.listeners = local_listeners()
    return seen


def observe(connections: Connections, stack: str, images: Iterable[str], parallelism: int = 4) -> Observed:
    """Observe every host in parallel (bounded)."""
    images = sorted(set(images))
    hosts = sorted(connections.hosts)
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(hosts)))) as pool:
        results = list(pool.map(lambda h: observe_host(connections, stack, h, images), hosts))
    return Observed({h.name: h for h in results})
