"""Semantic validation across documents: names, references, cycles, pipeline DAGs and host ports.

Runs after every document validated on its own, and reports every problem with the position of the field
that causes it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from aimactl.core.graph import find_cycle
from aimactl.manifest import units
from aimactl.manifest.errors import ManifestError
from aimactl.manifest.load import Resource

WORKLOADS = ("Service", "App")
IMPLICIT_HOST = "local"


def _error(res: Resource, code: str, message: str, path: Iterable[str | int]) -> ManifestError:
    path = list(path)
    line, col = res.locate(path, key=False)
    return ManifestError(code, message, res.file, line, col, ".".join(str(p) for p in path))


def node_id(res: Resource) -> str:
    """Graph node of a resource: `service/chat`."""
    return res.key


class Index:
    """Resources by kind and name, with Services and Apps sharing one namespace."""

    def __init__(self, resources: list[Resource]):
        self.by_kind: dict[str, dict[str, Resource]] = defaultdict(dict)
        for res in resources:
            self.by_kind[res.kind].setdefault(res.name, res)
        self.hosts = self.by_kind["Host"]

    def workload(self, name: str) -> Resource | None:
        """The Service or App with this name."""
        return self.by_kind["Service"].get(name) or self.by_kind["App"].get(name)

    def host_names(self) -> set[str]:
        """Declared hosts, or the implicit `local` host when none is declared."""
        return set(self.hosts) or {IMPLICIT_HOST}


def check_unique(resources: list[Resource]) -> list[ManifestError]:
    """Names are unique per kind, and Services and Apps share one namespace (both become containers)."""
    seen: dict[tuple[str, str], Resource] = {}
    errors = []
    for res in resources:
        space = "workload" if res.kind in WORKLOADS else res.kind
        first = seen.setdefault((space, res.name), res)
        if first is not res:
            what = f"{first.kind} {res.name!r}"
            errors.append(_error(res, "duplicate-name", f"{what} is already defined at {first.file}:{first.line}",
                                 ["metadata", "name"]))
    return errors


def _ref_errors(res: Resource, index: Index) -> Iterable[ManifestError]:
    """Every name a resource mentions must exist."""
    spec = res.spec
    hosts = index.host_names()
    if res.kind in WORKLOADS and spec.host and spec.host not in hosts:
        yield _error(res, "dangling-reference", f"host {spec.host!r} is not defined; hosts: {', '.join(sorted(hosts))}",
                     ["spec", "host"])
    if res.kind in WORKLOADS and spec.host_selector and not index.hosts:
        yield _error(res, "no-matching-host", "hostSelector needs Host documents with matching labels; none are "
                     "declared", ["spec", "hostSelector"])
    if res.kind in WORKLOADS and spec.host_selector and index.hosts:
        if not any(_matches(h, spec.host_selector) for h in index.hosts.values()):
            yield _error(res, "no-matching-host", f"no Host has the labels {spec.host_selector}",
                         ["spec", "hostSelector"])
    if res.kind == "Service" and spec.model and spec.model not in index.by_kind["Model"]:
        yield _error(res, "dangling-reference", f"Model {spec.model!r} is not defined", ["spec", "model"])
    if res.kind == "App":
        for i, dep in enumerate(spec.depends_on):
            if not index.workload(dep):
                yield _error(res, "dangling-reference", f"dependsOn {dep!r}: no Service or App has that name",
                             ["spec", "dependsOn", i])
    for ref, path in res.refs:
        if ref.root in ("inputs", "steps") and res.kind != "Pipeline":
            yield _error(res, "misplaced-reference", f"{ref} can only be used in Pipelines", path)
            continue
        if res.kind in ("Host", "Model"):
            yield _error(res, "misplaced-reference", f"{res.kind} documents cannot refer to {ref.root}", path)
            continue
        if ref.root == "services":
            exists = index.workload(ref.name) is not None
        elif ref.root == "models":
            exists = ref.name in index.by_kind["Model"]
        else:
            continue
        if not exists:
            what = "Service or App" if ref.root == "services" else "Model"
            yield _error(res, "dangling-reference", f"template refers to {ref}, but no {what} is named {ref.name!r}",
                         path)


def default_host(hosts: Iterable[str]) -> str:
    """Where a workload without `host` or `hostSelector` runs: `local` when it exists, else the first host."""
    names = sorted(hosts)
    return IMPLICIT_HOST if not names or IMPLICIT_HOST in names else names[0]


def _matches(host: Resource, selector: dict[str, str]) -> bool:
    labels = {**host.doc.metadata.labels, **host.spec.labels}
    return all(labels.get(k) == v for k, v in selector.items())


def dependency_edges(resources: list[Resource]) -> dict[str, set[str]]:
    """Edges between Models, Services and Apps: `edges[x]` are what x needs ready first."""
    index = Index(resources)
    edges: dict[str, set[str]] = {node_id(r): set() for r in resources if r.kind in ("Model", *WORKLOADS)}
    for res in resources:
        if res.kind not in WORKLOADS:
            continue
        deps = edges[node_id(res)]
        if res.kind == "Service" and res.spec.model in index.by_kind["Model"]:
            deps.add(f"model/{res.spec.model}")
        for dep in getattr(res.spec, "depends_on", []):
            target = index.workload(dep)
            if target:
                deps.add(node_id(target))
        for ref, _ in res.refs:
            target = index.workload(ref.name) if ref.root == "services" else index.by_kind["Model"].get(ref.name)
            if target and ref.root in ("services", "models"):
                deps.add(node_id(target))
    return edges


def check_cycles(resources: list[Resource]) -> list[ManifestError]:
    """No dependency cycles between Services, Apps and Models; the error names the whole cycle."""
    cycle = find_cycle(dependency_edges(resources))
    if not cycle:
        return []
    first = next(r for r in resources if node_id(r) == cycle[0])
    return [_error(first, "cycle", "dependency cycle: " + " -> ".join(cycle), ["metadata", "name"])]


def check_pipeline(res: Resource, index: Index) -> list[ManifestError]:
    """Pipeline steps: unique ids, services that exist, needs that exist, and no cycle."""
    errors: list[ManifestError] = []
    ids: dict[str, int] = {}
    for i, step in enumerate(res.spec.steps):
        if step.id in ids:
            errors.append(_error(res, "duplicate-name", f"step id {step.id!r} is used twice",
                                 ["spec", "steps", i, "id"]))
        ids.setdefault(step.id, i)
        if not index.workload(step.service):
            errors.append(_error(res, "dangling-reference", f"step {step.id!r} calls {step.service!r}, which is not "
                                 "a Service or App", ["spec", "steps", i, "service"]))
    edges: dict[str, set[str]] = {s.id: set() for s in res.spec.steps}
    for i, step in enumerate(res.spec.steps):
        for j, need in enumerate(step.needs):
            if need not in ids:
                errors.append(_error(res, "dangling-reference", f"step {step.id!r} needs {need!r}, which is not a "
                                     "step of this Pipeline", ["spec", "steps", i, "needs", j]))
            edges[step.id].add(need)
    for ref, path in res.refs:
        if ref.root == "steps" and ref.name not in ids:
            errors.append(_error(res, "dangling-reference", f"template refers to {ref}, but there is no step "
                                 f"{ref.name!r}", path))
        elif ref.root == "inputs" and ref.name not in res.spec.inputs:
            errors.append(_error(res, "dangling-reference", f"template refers to {ref}, but the Pipeline has no "
                                 f"input {ref.name!r}", path))
        elif ref.root == "steps" and path[:2] == ("spec", "steps") and len(path) > 2:
            edges[res.spec.steps[int(path[2])].id].add(ref.name)
    cycle = find_cycle({k: v & set(ids) for k, v in edges.items()})
    if cycle:
        errors.append(_error(res, "cycle", "pipeline steps form a cycle: " + " -> ".join(cycle), ["spec", "steps"]))
    return errors


def _declared_ports(res: Resource) -> Iterable[tuple[units.PortMapping, list[str | int]]]:
    if res.kind == "Service" and res.spec.port:
        yield units.PortMapping(res.spec.port, res.spec.port), ["spec", "port"]
    if res.kind == "App":
        for i, port in enumerate(res.spec.ports):
            yield units.parse_port(port), ["spec", "ports", i]


def check_ports(resources: list[Resource]) -> list[ManifestError]:
    """A host port is declared once per host (hostSelector placements are checked at plan time)."""
    taken: dict[tuple[str, int, str], tuple[Resource, str]] = {}
    errors = []
    fallback = default_host(Index(resources).hosts)
    for res in resources:
        if res.kind not in WORKLOADS or res.spec.host_selector:
            continue
        host = res.spec.host or fallback
        for port, path in _declared_ports(res):
            if res.spec.replicas > 1:
                errors.append(_error(res, "duplicate-port", f"host port {port.host_port} cannot serve "
                                     f"{res.spec.replicas} replicas on one host; drop 'port' to allocate ports", path))
            first = taken.setdefault((host, port.host_port, port.protocol), (res, ".".join(map(str, path))))
            if first[0] is not res:
                errors.append(_error(res, "duplicate-port", f"host port {port.host_port} on host {host!r} is already "
                                     f"declared by {first[0].key} ({first[0].file}:{first[0].line})", path))
    return errors


def validate(resources: list[Resource]) -> list[ManifestError]:
    """Every cross-document check, in a stable order."""
    index = Index(resources)
    errors = check_unique(resources)
    for res in resources:
        errors.extend(_ref_errors(res, index))
        if res.kind == "Pipeline":
            errors.extend(check_pipeline(res, index))
    errors.extend(check_cycles(resources))
    errors.extend(check_ports(resources))
    return errors
