"""What a Service or App asks the host to run, engine-independent: image or argv, ports, health, mounts.

`custom` Services and Apps say it all themselves; every other engine is rendered from the engine catalog
(aimactl/engines/*.yaml) with the Service's model and the host's facts.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aimactl.core.observed import PublishedPort
from aimactl.engines.catalog import Request
from aimactl.manifest import units
from aimactl.manifest.load import Resource

# One tiny real inference request that must succeed before an engine counts as ready: the catalog's request.
Warmup = Request


@dataclass(frozen=True)
class Workload:
    """What a Service or App asks for. Ports with host_port 0 are allocated from the host's port range."""

    image: str
    command: tuple[str, ...] | None
    container_ports: tuple[PublishedPort, ...]
    readiness_path: str | None
    readiness_container_port: int | None
    runtime: str = "docker"
    env: Mapping[str, str] = field(default_factory=dict)
    """Engine defaults; the Service's own env is merged over them."""
    mounts: tuple[tuple[str, str, bool], ...] = ()
    gpu_ids: tuple[str, ...] = ()
    warmup: Warmup | None = None
    argv_for_port: Callable[[int], tuple[str, ...]] | None = None
    """Native processes listen on their host port, known only once it is allocated."""
    shm_size: int | None = None
    """Bytes of /dev/shm the engine asks for in containers."""
    pull: Warmup | None = None
    """The request that makes the engine pull its model itself (Ollama), sent once it is healthy."""


class Unsupported(Exception):
    """A workload this version cannot run yet; becomes an error check naming the resource."""


def command_of(value: Any, args: Sequence[str]) -> tuple[str, ...] | None:
    """A list stays a list; a string is split like a shell would, without ever running a shell."""
    if value is None:
        return tuple(args) if args else None
    base = shlex.split(value) if isinstance(value, str) else list(value)
    return tuple(base) + tuple(args)


def _app(res: Resource) -> Workload:
    spec = res.spec
    if not spec.image:
        raise Unsupported(f"App template {spec.template!r} needs the template catalog; set 'image'")
    ports = tuple(PublishedPort(p.host_ip, p.host_port, p.container_port, p.protocol)
                  for p in (units.parse_port(x) for x in spec.ports))
    return Workload(spec.image, command_of(spec.command, []), ports, spec.health.path, spec.health.port)


def bind_address(host: Any) -> str:
    """Where a native Service listens: loopback on the local host; on an SSH host every interface, because the
    controller's readiness probe and the Services of other hosts reach it over the network (as they reach a
    Docker Service's published port there)."""
    return "127.0.0.1" if getattr(host, "address", "local") == "local" else "0.0.0.0"


def _custom(res: Resource, host: Any) -> Workload:
    spec = res.spec
    if spec.runtime == "process":
        argv = command_of(spec.command, spec.args) or ()
        inner = spec.port
        ports = (PublishedPort(bind_address(host), spec.port or 0, inner or 0),) if spec.port else ()
        return Workload(f"native:{argv[0] if argv else ''}", argv, ports, spec.health.path, None, runtime="process")
    inner = spec.container_port or spec.port
    ports = (PublishedPort("", spec.port or 0, inner),) if inner else ()
    return Workload(spec.image, command_of(spec.command, spec.args), ports, spec.health.path, spec.health.port)


def _engine(res: Resource, model: Any, host: Any, gpu_ids: tuple[str, ...] = ()) -> Workload:
    """A catalog engine (vllm, llamacpp, ollama, sglang, tgi) on docker or as a native process; `gpu_ids` are
    the GPUs placement assigned (they switch on the engine's GPU flags and, natively, CUDA_VISIBLE_DEVICES)."""
    from aimactl.engines.catalog import HostFacts, load_engine
    from aimactl.engines.render import render

    spec = res.spec
    engine = load_engine(spec.engine)
    facts = HostFacts(python=host.python, data_dir=host.data_dir, executables=host.executables,
                      python_modules=host.python_modules, has_gpu=bool(gpu_ids), gpu_ids=tuple(gpu_ids))

    def rendered(port: int | None) -> Any:
        try:
            return render(engine, spec, model, facts, spec.runtime, port=port, bind=bind_address(host))
        except ValueError as exc:
            raise Unsupported(str(exc)) from None

    first = rendered(spec.port or 1)
    warmup = first.warmup if spec.health.warmup else None
    health = spec.health.path or first.health_path
    if spec.runtime == "process":
        native: tuple[PublishedPort, ...] = (PublishedPort(bind_address(host), spec.port or 0, 0),)
        return Workload(f"native:{first.argv[0]}", tuple(first.argv), native, health, None, "process",
                        dict(first.env), (), (), warmup, lambda port: tuple(rendered(port).argv), pull=first.pull)
    inner = spec.container_port or first.container_port
    ports = (PublishedPort("", spec.port or 0, inner),) if inner else ()
    return Workload(first.image or "", tuple(first.argv) or None, ports, health, inner, "docker", dict(first.env),
                    tuple(first.mounts), (), warmup, shm_size=first.shm_size, pull=first.pull)


def render_workload(res: Resource, models: Mapping[str, Any], host: Any, gpu_ids: tuple[str, ...] = ()) -> Workload:
    """Turn a Service or App into a Workload on a host (a HostInfo). `models` maps Model names to catalog
    ModelInfo on that host; `gpu_ids` are the GPUs assigned to it (see aimactl/core/placement.py)."""
    if res.kind == "App":
        return _app(res)
    if res.spec.engine == "custom":
        return _custom(res, host)
    return _engine(res, models.get(res.spec.model), host, gpu_ids)
