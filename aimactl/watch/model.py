"""The dashboard's view model: observation + plan + events -> rows. Pure: no terminal, clock or client.

Sync comes from the same Plan object `aimactl plan` prints (only no-ops: Synced; anything else: OutOfSync with
the plan's reason; Stalled when the reconcile loop gave up on a resource). Health comes from the observation
(running, degraded, exited, missing, and the image's HEALTHCHECK when it has one). Sync and health are separate:
a resource can be Synced and unhealthy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aimactl.converge.status import ResourceStatus, statuses
from aimactl.core.observed import Observed, ObservedHost
from aimactl.core.plan import NOOP, Change, Plan

SYNCED, OUT_OF_SYNC, STALLED, UNKNOWN = "Synced", "OutOfSync", "Stalled", "Unknown"


@dataclass(frozen=True)
class HostRow:
    """One host: reachable or why not, CPUs and memory when the host facts have them (the facts carry no CPU
    utilisation)."""

    name: str
    reachable: bool
    status: str
    """reachable | unreachable | no docker"""
    detail: str = ""
    cpu_count: int | None = None
    load: float | None = None
    """1-minute load average (busy CPUs)."""
    mem_used: int | None = None
    mem_total: int | None = None


@dataclass(frozen=True)
class GpuRow:
    """One GPU: utilisation, memory, temperature and power (None where the driver does not say)."""

    host: str
    index: int
    name: str
    util_percent: float | None = None
    mem_used: int | None = None
    mem_total: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None


@dataclass(frozen=True)
class WorkloadRow:
    """One Service or App on one host."""

    kind: str
    name: str
    host: str
    sync: str
    reason: str
    health: str
    restarts: int
    ready: int
    desired: int
    endpoint: str


@dataclass(frozen=True)
class ModelRow:
    """One Model in one host's cache."""

    name: str
    host: str
    cached: bool
    size: int | None
    sync: str
    reason: str


@dataclass(frozen=True)
class EventRow:
    """One event from the state store."""

    time: str
    resource: str
    kind: str
    message: str


@dataclass(frozen=True)
class Problem:
    """A plan check (error or warning) worth showing beside the rows."""

    severity: str
    message: str


@dataclass
class Dashboard:
    """One frame of `aimactl watch`."""

    stack: str
    taken_at: str
    manifests: bool
    """Whether manifests were given (without them sync is Unknown)."""
    hosts: list[HostRow] = field(default_factory=list)
    gpus: list[GpuRow] = field(default_factory=list)
    workloads: list[WorkloadRow] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (`watch --once -o json`)."""
        return asdict(self)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def host_row(host: ObservedHost) -> HostRow:
    """Reachability from the observation; CPUs and memory in use from the host facts when they were gathered."""
    if not host.reachable:
        return HostRow(host.name, False, "unreachable", host.error or "")
    status, detail = ("no docker", host.docker_error) if host.docker_error else ("reachable", "")
    facts = host.facts
    if facts is None:
        return HostRow(host.name, True, status, detail or "")
    total, available = facts.mem_total, facts.mem_available
    used = total - available if total is not None and available is not None else None
    return HostRow(host.name, True, status, detail or "", facts.cpu_count, facts.load_1m, used, total)


def gpu_rows(host: ObservedHost) -> list[GpuRow]:
    """The host's GPUs from its facts (none when it has no GPU or no facts were gathered). Memory is the
    facts' usable and used memory, so a unified-memory GPU (GB10) shows its share of system RAM."""
    facts = host.facts
    if facts is None:
        return []
    return [GpuRow(host.name, gpu.index, gpu.name, _num(gpu.utilization), facts.used_memory(gpu),
                   facts.usable_memory(gpu), _num(gpu.temperature), _num(gpu.power_draw), _num(gpu.power_limit))
            for gpu in facts.gpus]


def _health(status: ResourceStatus) -> str:
    """One word a user reads as health: running, degraded, exited, missing; unhealthy/starting from Docker."""
    health = {c.health for c in status.containers if c.health}
    if status.state == "running" and health & {"unhealthy", "starting"}:
        return "unhealthy" if "unhealthy" in health else "starting"
    return status.state


def _sync(changes: Sequence[Change], reachable: bool, held: str | None = None) -> tuple[str, str]:
    """Synced when the plan only keeps the resource as it is; else OutOfSync with the plan's first reason, or the
    reason the planner held its changes back (a dependency on an unreachable host)."""
    if not reachable:
        return UNKNOWN, "host unreachable"
    if held:
        return OUT_OF_SYNC, f"held back: {held}"
    if not changes:
        return UNKNOWN, "not planned"
    pending = [c for c in changes if c.action != NOOP]
    if not pending:
        return SYNCED, ""
    reasons = list(dict.fromkeys(f"{c.action}: {c.reason}" for c in pending))
    return OUT_OF_SYNC, "; ".join(reasons)


def _stalled_reason(stalled: Mapping[str, str], key: str, changes: Iterable[Change]) -> str | None:
    """The reconcile loop's reason when it stalled the resource (by key such as `service/chat`, or address)."""
    for name in (key, *(c.address for c in changes)):
        if name in stalled:
            return stalled[name]
    return None


def workload_rows(observed: Observed, plan: Plan | None, stalled: Mapping[str, str],
                  placed: Iterable[tuple[str, str, str, int]] = ()) -> list[WorkloadRow]:
    """Services and Apps: sync from the plan, health and endpoint from the observation; `placed` (kind, name,
    host, replicas) from the manifests lists those on unreachable hosts too."""
    by_resource: dict[tuple[str, str, str], list[Change]] = {}
    for change in plan.changes if plan else ():
        by_resource.setdefault((change.kind, change.name, change.host), []).append(change)
    held = {(c.address.split(".", 1)[0], c.address.split(".", 1)[-1].split("[", 1)[0], c.host): c.message
            for c in (plan.checks if plan else ()) if c.code == "held-back" and c.address}
    rows = []
    for status in statuses(observed, plan):
        if status.kind == "model":
            continue
        where = (status.kind, status.name, status.host)
        changes = by_resource.get(where, [])
        host = observed.hosts.get(status.host)
        if plan is None:
            sync, reason = UNKNOWN, "no manifests given (-f)"
        else:
            sync, reason = _sync(changes, host is None or host.reachable, held.get(where))
        why = _stalled_reason(stalled, f"{status.kind}/{status.name}", changes)
        if why is not None:
            sync, reason = STALLED, why
        desired = status.desired if status.desired is not None else len(status.containers)
        rows.append(WorkloadRow(status.kind, status.name, status.host, sync, reason, _health(status),
                                status.restarts, status.ready, desired, status.endpoint))
    # The planner's own placement (by GPU memory) wins over the manifests' first choice.
    chosen = plan.placements if plan else {}
    placed = [(kind, name, getattr(chosen.get(f"{kind}/{name}"), "host", None) or host, replicas)
              for kind, name, host, replicas in placed]
    return rows + _unobserved(observed, placed, {(r.kind, r.name, r.host) for r in rows})


def _unobserved(observed: Observed, placed: Iterable[tuple[str, str, str, int]],
                seen: set[tuple[str, str, str]]) -> list[WorkloadRow]:
    """Workloads the manifests place on a host that cannot be reached: still listed, with why nothing is known
    (the plan leaves such hosts out)."""
    rows = []
    for kind, name, host_name, replicas in placed:
        host = observed.hosts.get(host_name)
        if host is not None and not host.reachable and (kind, name, host_name) not in seen:
            rows.append(WorkloadRow(kind, name, host_name, UNKNOWN, f"host unreachable: {host.error or ''}".strip(),
                                    "unknown", 0, 0, replicas, ""))
    return rows


def model_rows(observed: Observed, plan: Plan | None, stalled: Mapping[str, str]) -> list[ModelRow]:
    """Models the plan wants (cached or not); without manifests, whatever each host's cache holds."""
    rows: dict[tuple[str, str], ModelRow] = {}
    for change in plan.changes if plan else ():
        if change.kind != "model":
            continue
        entry = observed.hosts[change.host].models.get(change.name) if change.host in observed.hosts else None
        size = entry.get("size") if entry else (change.model.size if change.model else None)
        sync, reason = (SYNCED, "") if change.action == NOOP else (OUT_OF_SYNC, f"{change.action}: {change.reason}")
        why = _stalled_reason(stalled, change.key, [change])
        if why is not None:
            sync, reason = STALLED, why
        # An Ollama model's entry says whether that Ollama has it (`present`), not that a file is cached.
        cached = entry is not None and entry.get("present", True) is not False
        rows[(change.name, change.host)] = ModelRow(change.name, change.host, cached,
                                                    size if isinstance(size, int) else None, sync, reason)
    # The cache is shared by every stack on a host: with manifests, only this stack's Models are its business.
    for host_name, host in observed.hosts.items() if plan is None else ():
        for name, entry in host.models.items():
            size = entry.get("size") if isinstance(entry, dict) else None
            rows[(name, host_name)] = ModelRow(name, host_name, True, size if isinstance(size, int) else None,
                                               UNKNOWN, "no manifests given (-f)")
    return [rows[k] for k in sorted(rows)]


def event_rows(events: Iterable[Mapping[str, Any]], limit: int) -> list[EventRow]:
    """The newest events first, as the store returns them; time shown as HH:MM:SS of its UTC timestamp."""
    rows = []
    for event in list(events)[:limit]:
        stamp = str(event.get("created_at") or "")
        clock = stamp.split("T", 1)[1][:8] if "T" in stamp else stamp
        rows.append(EventRow(clock, str(event.get("resource") or ""), str(event.get("kind") or ""),
                             " ".join(str(event.get("message") or "").split())))
    return rows


def dashboard(stack: str, taken_at: str, observed: Observed, plan: Plan | None,
              events: Iterable[Mapping[str, Any]] = (), stalled: Mapping[str, str] | None = None,
              event_limit: int = 8, placed: Iterable[tuple[str, str, str, int]] = ()) -> Dashboard:
    """One frame: every row the dashboard shows. `plan` is None when no manifests were given; `stalled` maps a
    resource key or address to the reason the reconcile loop stopped retrying it; `placed` lists the manifests'
    workloads as (kind, name, host, replicas)."""
    stalled = stalled or {}
    hosts = [observed.hosts[name] for name in sorted(observed.hosts)]
    problems = [Problem(c.severity, c.message) for c in plan.checks] if plan else []
    return Dashboard(stack, taken_at, plan is not None, [host_row(h) for h in hosts],
                     [g for h in hosts for g in gpu_rows(h)], workload_rows(observed, plan, stalled, placed),
                     model_rows(observed, plan, stalled), event_rows(events, event_limit), problems)
