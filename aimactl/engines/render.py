"""The renderer: turns a Service, its Model and host facts into a concrete container or process launch with the
engine's catalog entry: image, argument list, port, health and metrics paths, warmup request, mounts, GPU passing
and environment.

Pure: no network, subprocess or environment. Argument templates are filled one argument at a time, never through
a shell (placeholders: aimactl/engines/catalog.py and `specs/engines.md`).
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from aimactl.engines.catalog import (
    PLACEHOLDER,
    Engine,
    HostFacts,
    Launch,
    ModelInfo,
    RenderedEngine,
    Request,
    walk_strings,
)
from aimactl.models.sources import ModelSource, cache_path, source_format

if TYPE_CHECKING:
    from aimactl.manifest.kinds import ServiceSpec

DOCKER_BIND = "0.0.0.0"
"""Engines in containers listen on every address: Docker publishes the port."""

def model_info(name: str, source: ModelSource, data_dir: str, served_name: str | None = None) -> ModelInfo:
    """The ModelInfo of a Model on a host: its cache path, format and the name clients use.

    Ollama models are pulled by Ollama: no path, and the served name is `name:tag`.
    """
    if source.scheme == "ollama":
        return ModelInfo(name, None, source.reference, "ollama")
    return ModelInfo(name, cache_path(data_dir, name, source), served_name or name, source_format(source),
                     is_dir=not source.single_file)


def render(engine: Engine, service_spec: ServiceSpec, model: ModelInfo | None, host: HostFacts, runtime: str,
           *, port: int | None = None, bind: str = "127.0.0.1") -> RenderedEngine:
    """Turn a Service on a host into a concrete engine launch.

    docker: the model's directory is mounted read-only at the engine's mount path, the engine listens on its
    own port (or the Service's `containerPort`) on all addresses. process: the model is the host path, the
    engine listens on `port` (the host port) at `bind`. The Service's `image` replaces the image, its `command`
    replaces the engine's command, and its `args` are appended after the engine's arguments.
    """
    if service_spec.engine != engine.name:
        raise ValueError(f"the Service uses engine {service_spec.engine!r}, not {engine.name!r}")
    if runtime not in ("docker", "process"):
        raise ValueError(f"runtime {runtime!r}: use docker or process")
    if host.gpu_ids and not host.has_gpu:
        raise ValueError("GPUs are assigned on a host without GPUs")
    _check_format(engine, model)
    if runtime == "docker":
        return _render_docker(engine, service_spec, model, host)
    return _render_process(engine, service_spec, model, host, port, bind)


def _check_format(engine: Engine, model: ModelInfo | None) -> None:
    """An engine only serves the formats it declares (unknown `other` files are let through)."""
    if model is None or not engine.formats or model.format in (None, "other"):
        return
    if model.format not in engine.formats:
        raise ValueError(f"engine {engine.name!r} serves {', '.join(engine.formats)} models; model {model.name!r} "
                         f"is {model.format}")


def _render_docker(engine: Engine, spec: ServiceSpec, model: ModelInfo | None, host: HostFacts) -> RenderedEngine:
    """The container form: image, container command, mounts, GPU device requests."""
    gpus = bool(host.gpu_ids) and engine.gpu == "docker-gpus"
    image = spec.image or (engine.image_cpu if engine.image_cpu and not gpus else engine.image)
    if not image:
        raise ValueError(f"engine {engine.name!r} on the docker runtime needs 'image'")
    listen = spec.container_port or engine.port or (spec.port if engine.name == "custom" else None)
    mounts: list[tuple[str, str, bool]] = []
    model_path = model_dir = None
    if engine.model_mount and model is not None and model.host_path:
        source = model.host_path if model.is_dir else posixpath.dirname(model.host_path)
        mounts.append((source, engine.model_mount, True))
        model_dir = engine.model_mount
        model_path = model_dir if model.is_dir else posixpath.join(model_dir, posixpath.basename(model.host_path))
    state_dir = _state_dir(engine, model, host)
    if engine.state_mount and state_dir:
        mounts.append((state_dir, engine.state_mount, False))
    values = _values(engine, model, host, listen, DOCKER_BIND, model_path, model_dir, state_dir)
    launch = engine.docker or Launch(())
    argv = _argv(engine, launch, spec, values, host.gpu_ids)
    return RenderedEngine(
        engine=engine.name, runtime="docker", image=image, argv=argv, port=listen,
        health_path=spec.health.path or engine.health, metrics_path=engine.metrics,
        warmup=_warmup(engine, spec, values), pull=_fill_request(engine.pull, values, engine.name),
        mounts=mounts, gpu=gpus, gpu_ids=host.gpu_ids if gpus else (),
        env=_fill_env(launch.env, values, engine.name), shm_size=engine.shm_size, footprint=engine.footprint,
    )


def _render_process(engine: Engine, spec: ServiceSpec, model: ModelInfo | None, host: HostFacts,
                    port: int | None, bind: str) -> RenderedEngine:
    """The native form: the first native command available on the host, the model at its host path."""
    listen = port or spec.port
    if listen is None:
        raise ValueError("the process runtime needs the host port: render(..., port=N)")
    if spec.command is None and not engine.native and engine.name != "custom":
        raise ValueError(f"engine {engine.name!r} has no native command; use runtime: docker or set 'command'")
    if not engine.native:
        launch = Launch(())
    else:  # with the Service's own command, the preferred launch still gives env, health and metrics
        launch = _choose_native(engine, host) if spec.command is None else engine.native[0]
    model_path = model.host_path if model is not None else None
    model_dir = None
    if model is not None and model.host_path:
        model_dir = model.host_path if model.is_dir else posixpath.dirname(model.host_path)
    values = _values(engine, model, host, listen, bind, model_path, model_dir, _state_dir(engine, model, host))
    env = _fill_env(launch.env, values, engine.name)
    if host.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(host.gpu_ids)
    return RenderedEngine(
        engine=engine.name, runtime="process", image=None, argv=_argv(engine, launch, spec, values, host.gpu_ids),
        port=listen, health_path=spec.health.path or launch.health or engine.health,
        metrics_path=launch.metrics if engine.native else engine.metrics,
        warmup=_warmup(engine, spec, values), pull=_fill_request(engine.pull, values, engine.name),
        mounts=[], gpu=bool(host.gpu_ids), gpu_ids=host.gpu_ids, env=env, footprint=engine.footprint,
    )


def _choose_native(engine: Engine, host: HostFacts) -> Launch:
    """The first native command whose program (or `{python} -m module`) the host has; unknown facts count as yes."""
    needs = []
    for launch in engine.native:
        program = launch.command[0]
        if program == "{python}" and launch.command[1:2] == ("-m",) and len(launch.command) > 2:
            module = launch.command[2]
            needs.append(f"the Python module {module}")
            known = host.python_modules
            if known is None or module in known or module.split(".")[0] in known:
                return launch
        else:
            needs.append(program)
            if host.executables is None or program in host.executables:
                return launch
    raise ValueError(f"engine {engine.name!r} cannot run natively on this host: it needs " + " or ".join(needs))


def _state_dir(engine: Engine, model: ModelInfo | None, host: HostFacts) -> str | None:
    """Host directory for engine state: `{data_dir}/models/<model>/<engine>` (kept and collected with the model)."""
    if model is None or not host.data_dir:
        return None
    return posixpath.join(host.data_dir.rstrip("/") or "/", "models", model.name, engine.name)


def _values(engine: Engine, model: ModelInfo | None, host: HostFacts, port: int | None, bind: str,
            model_path: str | None, model_dir: str | None, state_dir: str | None) -> dict[str, str]:
    """Placeholder values; a placeholder without a value is an error only when a template uses it."""
    values = {"host": bind, "python": host.python, "gpu_count": str(len(host.gpu_ids))}
    optional = {"port": str(port) if port else None, "model_path": model_path, "model_dir": model_dir,
                "served_name": (model.served_name or model.name) if model is not None else None,
                "state_dir": state_dir}
    values.update({k: v for k, v in optional.items() if v is not None})
    return values


_MISSING = {
    "model_path": "a model with a file on this host",
    "model_dir": "a model with a file on this host",
    "served_name": "a model",
    "port": "a port",
    "state_dir": "the host's data directory",
}


def _fill(template: str, values: Mapping[str, str], engine: str) -> str:
    """Substitute placeholders inside one argument; a placeholder without a value names what is missing."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"engine {engine!r} needs {_MISSING.get(name, name)} ({{{name}}})")
        return values[name]

    return PLACEHOLDER.sub(one, template)


def _fill_env(env: Mapping[str, str], values: Mapping[str, str], engine: str) -> dict[str, str]:
    return {k: _fill(v, values, engine) for k, v in env.items()}


def _fill_request(request: Request | None, values: Mapping[str, str], engine: str) -> Request | None:
    if request is None:
        return None
    body = walk_strings(dict(request.body), lambda s: _fill(s, values, engine))
    return Request(request.method, request.path, body)


def _warmup(engine: Engine, spec: ServiceSpec, values: Mapping[str, str]) -> Request | None:
    """The engine's warmup request, unless the Service turned warmup off."""
    return _fill_request(engine.warmup, values, engine.name) if spec.health.warmup else None


def _argv(engine: Engine, launch: Launch, spec: ServiceSpec, values: Mapping[str, str],
          gpu_ids: Sequence[str]) -> list[str]:
    """The engine's arguments (plus GPU arguments when GPUs are assigned), or the Service's command; then the
    Service's args. The Service's own words are taken verbatim."""
    if spec.command is not None:
        base = shlex.split(spec.command) if isinstance(spec.command, str) else list(spec.command)
    else:
        templates = list(launch.command)
        if gpu_ids:
            templates += launch.gpu_args
        if len(gpu_ids) > 1:
            templates += launch.multi_gpu_args
        base = [_fill(t, values, engine.name) for t in templates]
    return base + list(spec.args)
