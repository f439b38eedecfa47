"""Per-resource status for `get` and `describe`: replicas, health and sync, from observation and the plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aimactl.core.observed import Observed, ObservedContainer
from aimactl.core.plan import NOOP, Plan


@dataclass
class ResourceStatus:
    """What `aimactl get` shows for one Service or App."""

    kind: str
    name: str
    host: str
    desired: int | None
    containers: list[ObservedContainer] = field(default_factory=list)
    sync: str = "unknown"
    """in-sync | drifted | missing | orphaned | unknown (no manifests given)."""
    endpoint: str = ""

    @property
    def ready(self) -> int:
        """Replicas running."""
        return sum(c.running for c in self.containers)

    @property
    def restarts(self) -> int:
        """Restarts across replicas."""
        return sum(c.restart_count for c in self.containers)

    @property
    def state(self) -> str:
        """One word: running, degraded, exited, missing."""
        if not self.containers:
            return "missing"
        if self.ready == len(self.containers) and (self.desired is None or self.ready >= self.desired):
            return "running"
        return "degraded" if self.ready else self.containers[0].state

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML form."""
        return {
            "kind": self.kind, "name": self.name, "host": self.host, "desired": self.desired, "ready": self.ready,
            "state": self.state, "sync": self.sync, "restarts": self.restarts, "endpoint": self.endpoint,
            "containers": [{"id": c.id[:12], "name": c.name, "state": c.state, "exit_code": c.exit_code,
                            "image": c.image, "started_at": c.started_at, "health": c.health,
                            "ports": [f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.protocol}"
                                      for p in c.ports]} for c in self.containers],
        }


def _sync(changes: list[Any]) -> str:
    actions = {c.action for c in changes}
    if not changes:
        return "orphaned"
    if actions == {NOOP}:
        return "in-sync"
    return "missing" if actions == {"create"} else "drifted"


def statuses(observed: Observed, plan: Plan | None, kind: str | None = None) -> list[ResourceStatus]:
    """One status per resource seen on the hosts or wanted by the plan, sorted by kind and name."""
    table: dict[tuple[str, str, str], ResourceStatus] = {}
    for host_name, host in observed.hosts.items():
        for c in host.containers:
            key = (c.resource_kind or "container", c.resource_name or c.name, host_name)
            entry = table.setdefault(key, ResourceStatus(key[0], key[1], host_name, None))
            entry.containers.append(c)
            if c.ports and not entry.endpoint:
                entry.endpoint = f"http://{host.address}:{c.ports[0].host_port}"
    if plan is not None:
        wanted: dict[tuple[str, str, str], list[Any]] = {}
        for change in plan.changes:
            wanted.setdefault((change.kind, change.name, change.host), []).append(change)
        for key, changes in wanted.items():
            entry = table.setdefault(key, ResourceStatus(key[0], key[1], key[2], None))
            entry.desired = sum(c.desired is not None for c in changes)
            entry.sync = _sync([c for c in changes if c.desired is not None])
        for key, entry in table.items():
            if key not in wanted:
                entry.sync = "orphaned"
    rows = [s for s in table.values() if kind is None or s.kind == kind]
    for row in rows:
        row.containers.sort(key=lambda c: c.replica)
    return sorted(rows, key=lambda s: (s.kind, s.name, s.host))
