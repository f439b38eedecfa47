"""Desired state: every Service and App replica as a concrete, hashed container spec on a host.

Pure: the inputs are the validated manifests, the observed hosts (for stable port allocation and image ids)
and the digests of secrets (never their values). Engines other than `custom` plug in through
`render_workload`, the seam the engine catalog fills.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aimactl.core import labels as L
from aimactl.core.checks import Check, error
from aimactl.core.containers import ContainerSpec, GpuRequest, Mount, SecretEnv
from aimactl.core.feasibility import placements as place_workloads
from aimactl.core.models import DesiredModel, desired_model, model_infos
from aimactl.core.observed import Observed, PublishedPort
from aimactl.core.spec import normalise, normalise_image, spec_hash
from aimactl.core.workloads import Unsupported, Warmup, Workload, render_workload
from aimactl.manifest import units
from aimactl.manifest.kinds import SecretValue
from aimactl.manifest.load import Resource
from aimactl.manifest.render import TemplateProblem, is_template, render_deferred
from aimactl.manifest.validate import IMPLICIT_HOST, default_host, dependency_edges

SETTLE_SECONDS = 0.5
"""Without a health path a replica is ready once it keeps running this long: long enough to catch a command that
fails at once (a bad flag, a missing file), as short as possible because the last replica's settle is on every
cold apply's critical path (Compose and Kubernetes wait for nothing after start)."""


@dataclass(frozen=True)
class HostInfo:
    """What the planner knows about a Host from its manifest."""

    name: str
    address: str = "local"
    url_host: str = "127.0.0.1"
    data_dir: str = "~/.local/share/aimactl"
    port_range: tuple[int, int] = (9000, 9100)
    labels: Mapping[str, str] = field(default_factory=dict)
    python: str = "python3"
    executables: frozenset[str] | None = None
    """Engine programs found on the host (llama-server ...); None when not probed."""
    python_modules: frozenset[str] | None = None
    """Engine Python modules importable by the host's python (llama_cpp ...); None when not probed."""
    identity_file: str | None = None
    """SSH private key (None: ssh-agent and default keys)."""
    known_hosts: str | None = None
    """known_hosts file for strict host key checking (None: ~/.ssh/known_hosts)."""
    docker: str | None = None
    """The Docker endpoint on the host (None: its default socket, or DOCKER_HOST for the local host)."""


@dataclass(frozen=True)
class Readiness:
    """How apply decides a replica is ready: an HTTP path on a host port, else running for `settle` seconds."""

    path: str | None = None
    port: int | None = None
    startup_timeout: float = 1200.0
    interval: float = 5.0
    settle: float = SETTLE_SECONDS
    warmup: Warmup | None = None
    pull: Warmup | None = None
    """Sent once healthy, before the warmup, when the engine pulls its own model (Ollama)."""


@dataclass(frozen=True)
class DesiredContainer:
    """One replica of a Service or App, ready to create."""

    address: str
    key: str
    kind: str
    name: str
    replica: int
    host: str
    container: ContainerSpec
    spec: dict[str, Any]
    spec_hash: str
    depends_on: tuple[str, ...] = ()
    readiness: Readiness = Readiness()
    runtime: str = "docker"


@dataclass
class Desired:
    """Every desired container, the dependency edges between resources, and problems found building them."""

    containers: list[DesiredContainer] = field(default_factory=list)
    models: list[DesiredModel] = field(default_factory=list)
    declared: dict[str, str] = field(default_factory=dict)
    """Every Service and App key the manifests declare (even with `replicas: 0`) -> the host it is placed on."""
    edges: dict[str, set[str]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    placements: dict[str, Any] = field(default_factory=dict)
    """Workload key -> core.placement.Placement: host, GPUs per replica, GPU memory estimate, and why."""
    surge: set[str] = field(default_factory=set)
    """Services with `update: surge`."""


def address(kind: str, name: str, replica: int, host: str) -> str:
    """`service.chat[0]@local`: how plans and events name a replica."""
    return f"{kind.lower()}.{name}[{replica}]@{host}"


def host_infos(resources: Sequence[Resource]) -> dict[str, HostInfo]:
    """Hosts from Host documents, or the one implicit `local` host."""
    hosts = {}
    for res in resources:
        if res.kind != "Host":
            continue
        spec = res.spec
        url_host = "127.0.0.1" if spec.address == "local" else spec.address.split("@")[-1].split("://")[-1]
        url_host = url_host.rsplit(":", 1)[0] if url_host.count(":") == 1 else url_host
        hosts[res.name] = HostInfo(res.name, spec.address, url_host, spec.data_dir,
                                   units.parse_port_range(spec.port_range),
                                   {**res.doc.metadata.labels, **spec.labels}, spec.python,
                                   identity_file=spec.identity_file, known_hosts=spec.known_hosts,
                                   docker=spec.docker)
    return hosts or {IMPLICIT_HOST: HostInfo(IMPLICIT_HOST)}


def place(res: Resource, hosts: Mapping[str, HostInfo]) -> str | None:
    """The host a workload runs on: `host`, else the first host (by name) matching `hostSelector`."""
    spec = res.spec
    if spec.host:
        return str(spec.host)
    if spec.host_selector:
        names = sorted(hosts)
        matching = [n for n in names if all(hosts[n].labels.get(k) == v for k, v in spec.host_selector.items())]
        return matching[0] if matching else None
    return default_host(hosts)


class PortBook:
    """Host ports per host: who holds them, to allocate free ones and keep allocations stable across plans.

    A replica keeps the port it had unless a manifest now declares that port or another replica of this plan
    already took it; otherwise it gets the lowest port of the range held by nobody: not by other containers,
    not by listeners, not by this stack's other replicas, not declared.
    """

    def __init__(self, observed: Observed, hosts: Mapping[str, HostInfo], stack: str):
        self.foreign: dict[str, set[int]] = {h: set() for h in hosts}
        self.owned: dict[str, dict[int, tuple[str, int]]] = {h: {} for h in hosts}
        self.declared: dict[str, set[int]] = {h: set() for h in hosts}
        self.taken: dict[str, set[int]] = {h: set() for h in hosts}
        for host in hosts:
            seen = observed.hosts.get(host)
            if not seen:
                continue
            self.foreign[host] |= {p.host_port for c in seen.others for p in c.ports}
            self.foreign[host] |= {lst.port for lst in seen.listeners}
            for c in seen.containers:
                for p in c.ports:
                    self.owned[host][p.host_port] = (c.resource_name or "", c.replica)

    def keep_only(self, wanted: set[tuple[str, str, int]]) -> None:
        """Forget ports of this stack's replicas that the plan deletes: deletes run first, so they are free."""
        for host, owned in self.owned.items():
            for port, (name, replica) in list(owned.items()):
                if (host, name, replica) not in wanted:
                    del owned[port]

    def reserve(self, host: str, port: int) -> None:
        """A port a manifest declares: nobody else may be allocated it."""
        self.declared.setdefault(host, set()).add(port)
        self.taken.setdefault(host, set()).add(port)

    def allocate(self, host: str, name: str, replica: int, port_range: tuple[int, int]) -> int | None:
        """The port this replica had before when still free for it, else the lowest free port of the range."""
        owned, taken = self.owned.setdefault(host, {}), self.taken.setdefault(host, set())
        mine = sorted(p for p, owner in owned.items() if owner == (name, replica))
        for port in mine:
            if port_range[0] <= port <= port_range[1] and port not in taken:
                taken.add(port)
                return port
        busy = self.foreign.get(host, set()) | set(owned) | taken
        for port in range(port_range[0], port_range[1] + 1):
            if port not in busy:
                taken.add(port)
                return port
        return None


def secret_source(value: SecretValue, base_dir: str) -> str:
    """`env:NAME` or `file:/abs/path` (relative files start at the manifest's directory)."""
    source = value.secret_from
    if source.env is not None:
        return f"env:{source.env}"
    path = source.file or ""
    return f"file:{path if path.startswith('/') else posixpath.normpath(posixpath.join(base_dir, path))}"


def _mounts(volumes: Sequence[str], base_dir: str) -> tuple[Mount, ...]:
    mounts = []
    for text in volumes:
        vol = units.parse_volume(text)
        source = vol.source
        if source.startswith((".", "/")) and not source.startswith("/"):
            source = posixpath.normpath(posixpath.join(base_dir, source))
        mounts.append(Mount(source, vol.target, vol.read_only))
    return tuple(mounts)


def _gpus(value: Any) -> GpuRequest | None:
    if value is None:
        return None
    if isinstance(value, int):
        return GpuRequest(count=value) if value else None
    return GpuRequest(device_ids=tuple(str(v) for v in value))


def _render_gpus(chosen: Any) -> tuple[str, ...]:
    """GPU ids to render an engine's command with: replica 0's, or `0..N-1` when only a count is known (the
    engine's GPU flags depend on how many, not which)."""
    if chosen is None:
        return ()
    return chosen.replica_gpus(0) or tuple(str(i) for i in range(chosen.gpu_count))


def _render(value: Any, context: Mapping[str, Any]) -> Any:
    """Render deferred templates (`services.x.url`, `models.x.path`) now that the plan knows them."""
    if isinstance(value, str) and is_template(value):
        return render_deferred(value, context)
    if isinstance(value, (list, tuple)):
        return type(value)(_render(v, context) for v in value)
    return value


def images_of(resources: Sequence[Resource]) -> set[str]:
    """Image references the manifests use (normalised), so the observer can resolve their ids."""
    images = set()
    for res in resources:
        image = getattr(res.spec, "image", None) if res.kind in ("Service", "App") else None
        if image and not is_template(image):
            images.add(normalise_image(image))
    return images


@dataclass
class _Planned:
    res: Resource
    host: str
    workload: Workload
    ports: list[tuple[PublishedPort, ...]] = field(default_factory=list)
    placement: Any = None


def _plan_workloads(resources: Sequence[Resource], hosts: Mapping[str, HostInfo], models: Mapping[str, Any],
                    book: PortBook, checks: list[Check], placed: Mapping[str, Any] | None = None) -> list[_Planned]:
    """Place each Service and App, render its workload and give every replica its host ports.

    `models[host]` are the catalog ModelInfo of every Model on that host.
    """
    planned = []
    for res in resources:
        if res.kind not in ("Service", "App"):
            continue
        chosen = (placed or {}).get(res.key)
        host = chosen.host if chosen is not None else place(res, hosts)
        where = f"{res.kind.lower()}.{res.name}"
        if host is None:
            checks.append(error("no-host", f"no Host matches hostSelector {res.spec.host_selector}", where))
            continue
        try:
            info = hosts[host]
            workload = render_workload(res, models[host], info, _render_gpus(chosen))
            planned.append(_Planned(res, host, workload, placement=chosen))
        except Unsupported as exc:
            checks.append(error("unsupported", str(exc), where, host))
    book.keep_only({(i.host, i.res.name, r) for i in planned for r in range(i.res.spec.replicas)})
    for item in planned:
        for port in item.workload.container_ports:
            if port.host_port:
                book.reserve(item.host, port.host_port)
    for item in planned:
        for replica in range(item.res.spec.replicas):
            ports = []
            for port in item.workload.container_ports:
                host_port = port.host_port or book.allocate(item.host, item.res.name, replica,
                                                            hosts[item.host].port_range)
                if host_port is None:
                    low, high = hosts[item.host].port_range
                    checks.append(error("no-free-port", f"no free port left in {low}-{high}",
                                        address(item.res.kind, item.res.name, replica, item.host), item.host))
                    host_port = 0
                inner = host_port if item.workload.runtime == "process" else port.container_port
                ports.append(PublishedPort(port.host_ip, host_port, inner, port.protocol))
            item.ports.append(tuple(ports))
    return planned


def _endpoints(planned: Sequence[_Planned], hosts: Mapping[str, HostInfo]) -> dict[str, Any]:
    """`services.<name>.url|host|port` for deferred templates: where each Service or App answers."""
    services = {}
    for item in planned:
        if item.ports and item.ports[0]:
            url_host, port = hosts[item.host].url_host, item.ports[0][0].host_port
            services[item.res.name] = {"url": f"http://{url_host}:{port}", "host": url_host, "port": port}
    return services


def _with_vars(context: Mapping[str, Any], res: Resource) -> dict[str, Any]:
    """The deferred context plus the resource's own `vars` / `env` from load time."""
    return {**res.template_context, **context}


def _container(stack: str, item: _Planned, replica: int, context: Mapping[str, Any]) -> ContainerSpec:
    """The ContainerSpec of one replica, with deferred templates rendered (identity labels come later)."""
    spec, res = item.res.spec, item.res
    base_dir = getattr(res, "base_dir", ".")
    env: dict[str, str | SecretEnv] = dict(item.workload.env)
    for key, value in spec.env.items():
        env[key] = SecretEnv(secret_source(value, base_dir)) if isinstance(value, SecretValue) \
            else _render(value, context)
    ids = item.placement.replica_gpus(replica) if item.placement is not None else ()
    if ids and item.workload.runtime == "process":  # a container sees only its device_requests; a process all
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    command = item.workload.command
    if item.workload.argv_for_port and item.ports[replica]:
        command = item.workload.argv_for_port(item.ports[replica][0].host_port)
    engine_mounts = tuple(Mount(src, dst, ro) for src, dst, ro in item.workload.mounts)
    return ContainerSpec(
        name=L.container_name(stack, res.name, replica),
        image=_render(item.workload.image, context),
        command=_render(command, context),
        env=env,
        ports=item.ports[replica],
        mounts=engine_mounts + _mounts(spec.volumes, base_dir),
        restart=spec.restart,
        memory=units.parse_bytes(spec.resources.memory) if spec.resources.memory is not None else None,
        nano_cpus=int(spec.resources.cpus * 1e9) if spec.resources.cpus else None,
        gpus=GpuRequest(device_ids=ids) if ids else _gpus(spec.resources.gpus),
        labels=dict(res.doc.metadata.labels),
        shm_size=item.workload.shm_size,
    )


def _readiness(item: _Planned, replica: int) -> Readiness:
    health, ports = item.res.spec.health, item.ports[replica]
    wanted = [p for p in ports if p.container_port == item.workload.readiness_container_port] or list(ports)
    return Readiness(item.workload.readiness_path, wanted[0].host_port if wanted else None,
                     units.parse_duration(health.startup_timeout), units.parse_duration(health.interval),
                     warmup=item.workload.warmup, pull=item.workload.pull)


def _models(planned: Sequence[_Planned], resources: Sequence[Resource], hosts: Mapping[str, HostInfo],
            hf_endpoint: str | None, checks: list[Check]) -> list[DesiredModel]:
    """Every Model a placed Service uses, once per host where it runs."""
    by_name = {r.name: r for r in resources if r.kind == "Model"}
    out: dict[tuple[str, str], DesiredModel] = {}
    for item in planned:
        name = getattr(item.res.spec, "model", None) if item.res.kind == "Service" else None
        if not name or name not in by_name or (name, item.host) in out or not item.res.spec.replicas:
            continue
        try:
            want = desired_model(by_name[name], item.host, hosts[item.host].data_dir, hf_endpoint)
            if want.url is None and item.workload.pull is not None:  # pulled by this Service's engine (Ollama)
                ready = _readiness(item, 0)
                want = dataclasses.replace(want, service=address(item.res.kind, item.res.name, 0, item.host),
                                           api_port=ready.port, pull=ready.pull)
            out[(name, item.host)] = want
        except ValueError as exc:
            checks.append(error("model-source", str(exc), f"model.{name}@{item.host}", item.host))
    return list(out.values())


def build_desired(stack: str, resources: Sequence[Resource], observed: Observed,
                  secret_digests: Mapping[str, str], image_ids: Mapping[str, Mapping[str, str]],
                  hosts: Mapping[str, HostInfo] | None = None, hf_endpoint: str | None = None) -> Desired:
    """Every replica of every Service and App as a DesiredContainer, every Model each host needs, and checks
    for what cannot be built.

    `image_ids[host][image]` are the images present on each host; `secret_digests[source]` the digests of the
    secrets the controller could read (a missing one is an error check). `hosts` (with data dirs resolved on
    each host) defaults to the Host manifests as written.
    """
    hosts = dict(hosts) if hosts is not None else host_infos(resources)
    desired = Desired(hosts=hosts, edges=dependency_edges(list(resources)))
    models = {name: model_infos(resources, info.data_dir) for name, info in hosts.items()}
    desired.placements = place_workloads(resources, {n: h.labels for n, h in hosts.items()}, observed,
                                         observed.model_weights, desired.checks)
    desired.surge = {r.key for r in resources if r.kind == "Service" and r.spec.update == "surge"}
    planned = _plan_workloads(resources, hosts, models, PortBook(observed, hosts, stack), desired.checks,
                              desired.placements)
    services = _endpoints(planned, hosts)
    desired.declared = {item.res.key: item.host for item in planned}
    desired.models = _models(planned, resources, hosts, hf_endpoint, desired.checks)
    for item in planned:
        paths = {name: {"path": info.host_path or ""} for name, info in models[item.host].items()}
        context = _with_vars({"services": services, "models": paths}, item.res)
        kind, name = item.res.kind.lower(), item.res.name
        for replica in range(item.res.spec.replicas):
            where = address(kind, name, replica, item.host)
            try:
                container = _container(stack, item, replica, context)
            except TemplateProblem as exc:
                desired.checks.append(error(exc.code, exc.message, where, item.host))
                continue
            for value in container.env.values():
                if isinstance(value, SecretEnv) and value.source not in secret_digests:
                    desired.checks.append(error("secret-unavailable", f"secret {value.source} cannot be read on "
                                                "the controller", where, item.host))
            runtime = item.workload.runtime
            image_id = "native" if runtime == "process" else \
                image_ids.get(item.host, {}).get(normalise_image(container.image))
            normalised = normalise(container, image_id, secret_digests)
            digest = spec_hash(normalised)
            identity = L.identity_labels(stack, kind, name, replica, digest, normalised, runtime, item.host)
            container = ContainerSpec(**{**container.__dict__, "labels": {**container.labels, **identity}})
            desired.containers.append(DesiredContainer(
                where, item.res.key, kind, name, replica, item.host, container, normalised, digest,
                tuple(sorted(desired.edges.get(item.res.key, ()))), _readiness(item, replica), runtime))
    return desired
