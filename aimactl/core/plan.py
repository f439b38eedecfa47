"""The planner: `plan(desired, observed) -> Plan`. Pure; every change carries a reason in words.

Convergence follows Compose: a missing replica is created, a replica whose spec hash differs is updated in
place when only fields Docker can change differ, else replaced; containers of this stack absent from the
manifests are deleted. The field-level diff is read from the spec label, never from raw inspect output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aimactl.core import fleet
from aimactl.core import labels as L
from aimactl.core.checks import Check, error, warning
from aimactl.core.desired import Desired, DesiredContainer, HostInfo, address
from aimactl.core.feasibility import gpu_fingerprints, hardware_checks
from aimactl.core.models import DesiredModel, model_reason, pull_reason
from aimactl.core.observed import Observed, ObservedContainer, ObservedHost
from aimactl.core.spec import IN_PLACE_FIELDS, diff_fields, forces_replacement

CREATE, UPDATE, REPLACE, DELETE, NOOP = "create", "update", "replace", "delete", "no-op"


@dataclass(frozen=True)
class FieldDiff:
    """One field that changes: dotted path, old and new value, and whether it forces a new container."""

    path: str
    before: Any
    after: Any
    forces_replacement: bool


@dataclass
class Change:
    """What happens to one replica, and why."""

    address: str
    key: str
    kind: str
    name: str
    replica: int
    host: str
    action: str
    reason: str
    diff: list[FieldDiff] = field(default_factory=list)
    container_id: str | None = None
    observed_hash: str | None = None
    desired: DesiredContainer | None = None
    runtime: str = "docker"
    model: DesiredModel | None = None

    @property
    def fingerprint(self) -> str:
        """What the target looked like when planned: container id and spec hash, or `absent`."""
        return f"{self.container_id}:{self.observed_hash}" if self.container_id else "absent"


@dataclass(frozen=True)
class PlanOptions:
    """Operator choices that shape a plan."""

    stack: str = "default"
    replace: frozenset[str] = frozenset()
    targets: frozenset[str] = frozenset()
    excludes: frozenset[str] = frozenset()
    allow_empty: bool = False
    destroy: bool = False
    verify: bool = False
    """Rehash cached model files on their hosts instead of trusting the cache index (observation does it)."""


@dataclass
class Plan:
    """The one Plan object `plan` prints, `plan -o json` serialises and `apply` executes."""

    stack: str
    changes: list[Change] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    edges: dict[str, set[str]] = field(default_factory=dict)
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    placements: dict[str, Any] = field(default_factory=dict)
    """Workload key -> core.placement.Placement (host, GPUs, GPU memory estimate and why)."""
    gpu_fingerprints: list[dict[str, Any]] = field(default_factory=list)
    """The GPUs the plan starts replicas on as planned (UUID, free memory, room left): re-checked by `apply FILE`."""

    @property
    def errors(self) -> list[Check]:
        """Checks that make the plan infeasible (an unreachable host only takes itself out: see core/fleet)."""
        return fleet.blocking(self.checks)

    @property
    def unreachable(self) -> dict[str, str]:
        """Hosts left out of this plan because they could not be reached, with why."""
        return fleet.unreachable_hosts(self.checks)

    @property
    def actionable(self) -> list[Change]:
        """Changes other than no-op."""
        return [c for c in self.changes if c.action != NOOP]

    def summary(self) -> dict[str, int]:
        """Terraform's counts: a replace is one to add and one to destroy."""
        count = {a: sum(1 for c in self.changes if c.action == a) for a in (CREATE, UPDATE, REPLACE, DELETE)}
        return {"add": count[CREATE] + count[REPLACE], "change": count[UPDATE],
                "destroy": count[DELETE] + count[REPLACE]}


def _reason_for_diff(diffs: list[FieldDiff]) -> str:
    """`image changed`, `env changed (API_KEY, MODE)`, `ports and volumes changed`."""
    groups: dict[str, list[str]] = {}
    for d in diffs:
        head, _, rest = d.path.partition(".")
        label = "image" if head == "imageId" else head
        groups.setdefault(label, [])
        if rest and head in ("env", "labels"):
            groups[label].append(rest)
    parts = [f"{g} ({', '.join(v)})" if v else g for g, v in groups.items()]
    if "image" in groups and not any(d.path == "image" for d in diffs):
        parts[list(groups).index("image")] = "image id (the tag now points at another image)"
    return (" and ".join(parts) if len(parts) <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]) + " changed"


def _state_reason(seen: ObservedContainer) -> str | None:
    """Why a container (or process) with the right spec still needs work, or None when it is fine."""
    what = "process" if seen.labels.get(L.RUNTIME) == "process" else "container"
    if seen.state == "created":
        return "container was created but never started (an apply was interrupted)"
    if seen.state in ("exited", "dead"):
        return f"{what} {seen.state} ({seen.exit_code})" if seen.exit_code is not None else f"{what} {seen.state}"
    if seen.state == "paused":
        return "container is paused"
    return None


def decide(want: DesiredContainer, seen: ObservedContainer | None, forced: bool) -> Change:
    """The action for one desired replica given what runs now."""
    change = Change(want.address, want.key, want.kind, want.name, want.replica, want.host, NOOP, "up to date",
                    desired=want, runtime=want.runtime)
    if seen is None:
        change.action, change.reason = CREATE, f"not running on {want.host}"
        return change
    change.container_id, change.observed_hash = seen.id, seen.spec_hash
    stored = seen.spec
    # Removing a limit is not something `docker update` can do: it forces a new container too.
    diffs = [FieldDiff(p, b, a, forces_replacement(p) or (a is None and p != "restart"))
             for p, b, a in diff_fields(stored, want.spec)]
    state = _state_reason(seen)
    if forced:
        change.action, change.reason = REPLACE, "as requested (--replace)"
    elif stored is None:
        change.action, change.reason = REPLACE, "the spec label is missing or unreadable"
    elif diffs:
        # Docker can change a limit in place but cannot remove one: that needs a new container.
        in_place = state is None and all(d.path in IN_PLACE_FIELDS and (d.after is not None or d.path == "restart")
                                         for d in diffs)
        change.action = UPDATE if in_place else REPLACE
        change.reason = _reason_for_diff(diffs)
    elif state:
        change.action, change.reason = REPLACE, state
    change.diff = diffs if change.action in (UPDATE, REPLACE) else []
    return change


def _take_back_name(change: Change, host: ObservedHost) -> Change:
    """A missing replica whose container name is held by a container without any aimactl label was recreated by
    hand (`docker run --name aima-...`): replace that container, as a drifted one. Names are aimactl's
    (`aima-<stack>-<name>-<replica>`); a container of another stack, which carries labels, is never taken."""
    want = change.desired
    if want is None or change.runtime != "docker":
        return change
    holder = next((c for c in host.others if c.name == want.container.name and L.MANAGED not in c.labels), None)
    if holder is None:
        return change
    change.action, change.container_id = REPLACE, holder.id
    change.reason = (f"container {holder.name} on {change.host} was recreated without aimactl's labels "
                     "(by hand?): replaced with the manifest's")
    return change


def _delete(host: str, seen: ObservedContainer, reason: str) -> Change:
    kind, name = seen.resource_kind or "container", seen.resource_name or seen.name
    return Change(address(kind, name, seen.replica, host), f"{kind}/{name}", kind, name, seen.replica, host, DELETE,
                  reason, container_id=seen.id, observed_hash=seen.spec_hash,
                  runtime=seen.labels.get(L.RUNTIME, "docker"))


def _delete_reason(key: str, replica: int, host: str, declared: dict[str, str],
                   replicas: dict[tuple[str, str], int], destroy: bool) -> str:
    """Why a container of this stack goes: destroy, scaled down, moved away, or gone from the manifests."""
    if destroy:
        return "destroy requested"
    if key not in declared:
        return "not in manifests"
    if declared[key] != host:
        return f"moved to host {declared[key]}"
    count = replicas.get((host, key), 0)
    return f"replica {replica} is beyond replicas: {count}" if count else "scaled to replicas: 0"


def _orphans(hosts: dict[str, ObservedHost], wanted: set[tuple[str, str, int]], declared: dict[str, str],
             replicas: dict[tuple[str, str], int], destroy: bool) -> list[Change]:
    """This stack's containers that no manifest wants any more."""
    changes = []
    for host_name, host in sorted(hosts.items()):
        if not host.reachable:
            continue
        for seen in sorted(host.containers, key=lambda c: (c.name, c.replica)):
            key = f"{seen.resource_kind}/{seen.resource_name}"
            if (host_name, key, seen.replica) in wanted:
                continue
            reason = _delete_reason(key, seen.replica, host_name, declared, replicas, destroy)
            changes.append(_delete(host_name, seen, reason))
    return changes


def _holders(host: ObservedHost, taken_back: set[str]) -> dict[tuple[int, str], str]:
    """Who holds each host port besides this stack: other containers by name, then bare listeners. Containers
    the plan takes back (`taken_back` ids) free their ports, as this stack's own do."""
    held: dict[tuple[int, str], str] = {}
    own = {(p.host_port, p.protocol) for c in host.containers for p in c.ports}
    own |= {(p.host_port, p.protocol) for c in host.others if c.id in taken_back for p in c.ports}
    for other in host.others:
        if other.id in taken_back:
            continue
        for p in other.ports:
            held[(p.host_port, p.protocol)] = f"container {other.name!r}, which this stack does not manage"
    for listener in host.listeners:
        key = (listener.port, listener.protocol)
        if key not in own and key not in held:
            held[key] = "a process that aimactl does not manage"
    return held


def feasibility(changes: Iterable[Change], observed: Observed) -> list[Check]:
    """Errors found before anything changes: ports held by others, images missing on the host."""
    checks = []
    changes = list(changes)
    taken_back = {c.container_id for c in changes if c.action == REPLACE and c.container_id}
    holders = {name: _holders(host, taken_back) for name, host in observed.hosts.items()}
    for change in changes:
        want = change.desired
        if change.action not in (CREATE, REPLACE) or want is None:
            continue
        for port in want.container.ports:
            holder = holders.get(change.host, {}).get((port.host_port, port.protocol))
            if holder:
                checks.append(error("port-taken", f"host port {port.host_port}/{port.protocol} on {change.host} is "
                                    f"held by {holder}", change.address, change.host))
        if change.runtime == "docker" and observed.hosts.get(change.host, ObservedHost(change.host)).docker_error:
            checks.append(error("docker-unavailable", f"the Docker engine on {change.host} cannot be reached: "
                                f"{observed.hosts[change.host].docker_error}", change.address, change.host))
        elif change.runtime == "docker" and want.spec.get("imageId") is None:
            checks.append(error("image-missing", f"image {want.spec['image']!r} is not on host {change.host}; "
                                "nothing is pulled automatically: `docker pull`, `docker load` or `docker import` it "
                                "there first", change.address, change.host))
    return checks


def _matches(item: Change | DesiredContainer, selectors: frozenset[str]) -> bool:
    """`service/chat`, `service.chat`, `chat` or a full address select a change or a replica."""
    names = {item.key, item.key.replace("/", "."), item.name, item.address}
    return bool(names & selectors)


def _select(changes: list[Change], options: PlanOptions, edges: dict[str, set[str]]) -> list[Change]:
    """Apply --target (with what targets depend on) and --exclude (with what depends on excluded)."""
    if options.targets:
        keys = {c.key for c in changes if _matches(c, options.targets)}
        stack = list(keys)
        while stack:
            for dep in edges.get(stack.pop(), ()):
                if dep not in keys:
                    keys.add(dep)
                    stack.append(dep)
        changes = [c for c in changes if c.key in keys]
    if options.excludes:
        dropped = {c.key for c in changes if _matches(c, options.excludes)}
        grew = True
        while grew:
            more = {k for k, deps in edges.items() if deps & dropped} - dropped
            grew = bool(more)
            dropped |= more
        changes = [c for c in changes if c.key not in dropped]
    return changes


def _order(changes: list[Change]) -> list[Change]:
    """Deletes and replaces first (as Terraform lists them), then by address."""
    rank = {DELETE: 0, REPLACE: 1, UPDATE: 2, CREATE: 3, NOOP: 4}
    return sorted(changes, key=lambda c: (rank[c.action], c.kind, c.name, c.host, c.replica))


def plan(desired: Desired, observed: Observed, options: PlanOptions = PlanOptions()) -> Plan:
    """Compare what the manifests want with what the hosts run; return every change with its reason."""
    result = Plan(options.stack, checks=list(desired.checks), edges=desired.edges, hosts=desired.hosts)
    result.checks.extend(fleet.unreachable_checks(observed))
    result.checks.extend(warnings_for(observed))
    wanted = [] if options.destroy else desired.containers
    changes = []
    for want in wanted:
        host = observed.hosts.get(want.host)
        if host is not None and not host.reachable:
            continue
        seen = next((c for c in (host.containers if host else []) if c.resource_kind == want.kind
                     and c.resource_name == want.name and c.replica == want.replica), None)
        change = decide(want, seen, _matches(want, options.replace))
        changes.append(_take_back_name(change, host) if seen is None and host is not None else change)
    idents = {(w.host, w.key, w.replica) for w in wanted}
    replicas: dict[tuple[str, str], int] = {}
    for w in wanted:
        replicas[(w.host, w.key)] = replicas.get((w.host, w.key), 0) + 1
    if not options.destroy:
        changes += model_changes(desired.models, observed)
    changes = _hold_back(changes, desired, result)
    deletes = _orphans(observed.hosts, idents, desired.declared, replicas, options.destroy)
    if deletes and not desired.declared and not (options.allow_empty or options.destroy):
        count = f"all {len(deletes)} containers" if len(deletes) > 1 else "the only container"
        result.checks.append(error("empty-manifests", f"the manifests declare no Services or Apps: refusing to delete "
                                   f"{count} of stack {options.stack!r}; pass --allow-empty or use `aimactl destroy`"))
        deletes = []
    result.changes = _order(_select(changes + deletes, options, desired.edges))
    result.checks.extend(feasibility(result.changes, observed))
    result.placements = dict(desired.placements)
    result.gpu_fingerprints = gpu_fingerprints(desired.placements, result.changes, observed)
    result.checks.extend(hardware_checks(desired.placements, desired.surge, desired.hosts, result.changes, observed))
    return result


def _hold_back(changes: list[Change], desired: Desired, result: Plan) -> list[Change]:
    """Leave alone the changes that depend on a resource on an unreachable host (see fleet.held_back)."""
    down = result.unreachable
    if not down:
        return changes
    placements: dict[str, set[str]] = {}
    for want in desired.containers:
        placements.setdefault(want.key, set()).add(want.host)
    held, checks = fleet.held_back([(c.address, c.key, c.host) for c in changes if c.action != NOOP],
                                   desired.edges, placements, down)
    result.checks.extend(checks)
    return [c for c in changes if c.address not in held]


def model_changes(models: list[DesiredModel], observed: Observed) -> list[Change]:
    """Fetch (create), re-fetch (replace) or keep (no-op) each Model in each host's cache."""
    changes = []
    for want in models:
        host = observed.hosts.get(want.host)
        if (want.url is None and want.service is None) or (host is not None and not host.reachable):
            continue
        entry = host.models.get(want.name) if host else None
        action, reason = model_reason(want, entry) if want.url is not None else pull_reason(want, entry)
        changes.append(Change(want.address, want.key, "model", want.name, 0, want.host, action, reason,
                              runtime="helper" if want.url is not None else "ollama", model=want))
    return changes


def warnings_for(observed: Observed) -> list[Check]:
    """Warnings about what runs now: replicas stuck restarting."""
    out = []
    for name, host in observed.hosts.items():
        for c in host.containers:
            if c.state == "restarting":
                out.append(warning("restarting", f"{c.name} keeps restarting ({c.restart_count} restarts)", host=name))
    return out
