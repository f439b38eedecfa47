"""The engine catalog: one YAML file per inference engine, and the renderer that turns (Service, Model, host
facts) into a concrete container or process: image, argument list, port, health and metrics paths, warmup
request, mounts, GPU passing and environment.

Pure: reads only the catalog's own YAML files; no network, subprocess or environment. The catalog format is
specified in `specs/engines.md`.

Argument templates use a tiny placeholder syntax, `{name}`, substituted inside one argument at a time (never
through a shell). Placeholders: `{model_path}` (the model file, or directory for snapshots), `{model_dir}` (the
directory holding the model), `{served_name}`, `{port}`, `{host}` (bind address), `{python}`, `{gpu_count}`
and `{state_dir}` (host directory for engine state). A Service's own `command` and `args` are taken verbatim:
they may hold literal braces (JSON arguments).
"""

from __future__ import annotations

import difflib
import functools
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aimactl.manifest import units
from aimactl.models.sources import ModelSource, cache_path, source_format

if TYPE_CHECKING:
    from aimactl.manifest.kinds import ServiceSpec

PLACEHOLDERS = ("model_path", "model_dir", "served_name", "port", "host", "python", "gpu_count", "state_dir")
FORMATS = ("gguf", "safetensors", "pytorch", "onnx", "ollama", "other")
GPU_MODES = ("docker-gpus", "none")
DOCKER_BIND = "0.0.0.0"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ENGINE_KEYS = ("name", "image", "image_cpu", "port", "health", "metrics", "model_mount", "state_mount", "formats",
                "gpu", "footprint", "shm_size", "command", "gpu_args", "multi_gpu_args", "env", "native", "warmup",
                "pull", "docs")
_LAUNCH_KEYS = ("command", "gpu_args", "multi_gpu_args", "env", "health", "metrics")
_REQUEST_KEYS = ("method", "path", "body")


class EngineError(ValueError):
    """An engine catalog file that does not follow the catalog format."""


@dataclass(frozen=True)
class Request:
    """An HTTP request an engine needs (warmup, model pull); string values in `body` may hold placeholders."""

    method: str
    path: str
    body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    """One way to start an engine: its argument templates, what GPUs add, environment, health and metrics."""

    command: tuple[str, ...]
    gpu_args: tuple[str, ...] = ()
    """Appended when at least one GPU is assigned."""
    multi_gpu_args: tuple[str, ...] = ()
    """Appended when more than one GPU is assigned (tensor parallelism)."""
    env: Mapping[str, str] = field(default_factory=dict)
    health: str | None = None
    metrics: str | None = None


@dataclass(frozen=True)
class Engine:
    """One catalog entry. `custom` has only a name: everything comes from the Service."""

    name: str
    image: str | None = None
    image_cpu: str | None = None
    """Image used when no GPU is assigned (llama.cpp's CPU build)."""
    port: int | None = None
    """Port the engine listens on inside its container."""
    health: str | None = None
    metrics: str | None = None
    model_mount: str | None = None
    """Container path where the model's directory is mounted read-only; None: the engine pulls the model."""
    state_mount: str | None = None
    """Container path of engine state kept on the host (Ollama's model store)."""
    formats: tuple[str, ...] = ()
    """Model formats the engine serves; empty: any."""
    gpu: str = "docker-gpus"
    footprint: int = 0
    """Engine memory overhead in bytes, added to the model's own need."""
    shm_size: int | None = None
    """Shared memory (bytes) the engine's docs ask for in containers."""
    docker: Launch | None = None
    native: tuple[Launch, ...] = ()
    """Process-runtime commands, in order of preference."""
    warmup: Request | None = None
    pull: Request | None = None
    docs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """The model a Service serves, as the renderer needs it."""

    name: str
    host_path: str | None
    """The model file (or snapshot directory when `is_dir`) on the host; None when the engine pulls it."""
    served_name: str | None = None
    """Name clients use in requests; the model's name when absent (Ollama: `name:tag`)."""
    format: str | None = None
    is_dir: bool = False


@dataclass(frozen=True)
class HostFacts:
    """What the renderer needs to know about the host and the GPUs assigned to this replica."""

    python: str = "python3"
    has_gpu: bool = False
    gpu_ids: tuple[str, ...] = ()
    """GPUs assigned to this replica (indexes or UUIDs); empty: none."""
    executables: frozenset[str] | None = None
    """Programs found on the host's PATH; None: unknown (the first native command is used)."""
    python_modules: frozenset[str] | None = None
    """Modules importable by `python`; None: unknown."""
    data_dir: str | None = None
    """The host's data directory, already expanded (absolute)."""


@dataclass(frozen=True)
class RenderedEngine:
    """A concrete engine launch. Engine env is given here; the Service's own `env` is merged by the caller."""

    engine: str
    runtime: str
    image: str | None
    """Container image (docker runtime only)."""
    argv: list[str]
    """docker: the container command (arguments after the image's ENTRYPOINT); empty: the image's default.
    process: the whole command line."""
    port: int | None
    """Where the engine listens: the container port (docker) or the host port (process)."""
    health_path: str | None
    metrics_path: str | None
    warmup: Request | None
    pull: Request | None
    mounts: list[tuple[str, str, bool]]
    """(host_path, container_path, read_only)."""
    gpu: bool
    gpu_ids: tuple[str, ...]
    env: dict[str, str]
    shm_size: int | None = None
    footprint: int = 0

    @property
    def container_port(self) -> int | None:
        """The port inside the container (docker runtime), else None."""
        return self.port if self.runtime == "docker" else None


# ---------------------------------------------------------------------------------------------------------------
# Loading and validating catalog files


def engine_names() -> tuple[str, ...]:
    """Names of the engines in the catalog, from its YAML files."""
    folder = resources.files("aimactl.engines")
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


@functools.cache
def load_engine(name: str) -> Engine:
    """The catalog entry of one engine (cached). Raises EngineError for an unknown engine or a bad file."""
    if name not in engine_names():
        raise EngineError(f"unknown engine {name!r}: use one of {', '.join(engine_names())}")
    resource = resources.files("aimactl.engines") / f"{name}.yaml"
    engine = parse_engine(resource.read_text(encoding="utf-8"), f"{name}.yaml")
    if engine.name != name:
        raise EngineError(f"{name}.yaml: 'name' is {engine.name!r}, expected {name!r}")
    return engine


def load_engine_file(path: str | Path) -> Engine:
    """Load and validate one catalog file from anywhere (tests, a user's own catalog)."""
    return parse_engine(Path(path).read_text(encoding="utf-8"), str(path))


def parse_engine(text: str, where: str) -> Engine:
    """Validate one catalog document strictly (unknown keys are errors) and build its Engine."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise EngineError(f"{where}: not valid YAML: {exc}") from None
    doc = _mapping(data, where, _ENGINE_KEYS)
    name = _text(doc, "name", where, required=True)
    if not re.fullmatch(r"[a-z0-9]+", name or ""):
        raise EngineError(f"{where}: name: use lowercase letters and digits")
    image = _text(doc, "image", where)
    if doc.get("image_cpu") is not None and not image:
        raise EngineError(f"{where}: image_cpu needs image")
    if image and (doc.get("port") is None or doc.get("command") is None):
        raise EngineError(f"{where}: an engine with an image needs 'port' and 'command'")
    health, metrics = _url_path(doc, "health", where), _url_path(doc, "metrics", where)
    docker = _docker_launch(doc, where, health, metrics)
    native = doc.get("native") or []
    if not isinstance(native, list):
        raise EngineError(f"{where}: native: expected a list of commands")
    return Engine(
        name=str(name), image=image, image_cpu=_text(doc, "image_cpu", where), port=_port(doc, where),
        health=health, metrics=metrics, model_mount=_container_path(doc, "model_mount", where),
        state_mount=_container_path(doc, "state_mount", where), formats=_formats(doc, where),
        gpu=_choice(doc, "gpu", GPU_MODES, where), footprint=_size(doc, "footprint", where) or 0,
        shm_size=_size(doc, "shm_size", where), docker=docker,
        native=tuple(_launch(_mapping(n, f"{where}: native[{i}]", _LAUNCH_KEYS), f"{where}: native[{i}]",
                             health, metrics, with_paths=True) for i, n in enumerate(native)),
        warmup=_request(doc.get("warmup"), f"{where}: warmup"), pull=_request(doc.get("pull"), f"{where}: pull"),
        docs=_strings(doc, "docs", where, templates=False),
    )


def _mapping(value: Any, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    """A YAML mapping whose keys are all known; an unknown key is an error with a 'did you mean' hint."""
    if not isinstance(value, dict):
        raise EngineError(f"{where}: expected a mapping")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EngineError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")
    return value


def _text(doc: Mapping[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise EngineError(f"{where}: '{key}' is required")
        return None
    if not isinstance(value, str) or not value:
        raise EngineError(f"{where}: {key}: expected a non-empty string")
    return value


def _url_path(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    value = _text(doc, key, where)
    if value is not None and not value.startswith("/"):
        raise EngineError(f"{where}: {key}: an HTTP path starts with '/'")
    return value


def _container_path(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    value = _text(doc, key, where)
    if value is not None and (not value.startswith("/") or posixpath.normpath(value) != value or value == "/"):
        raise EngineError(f"{where}: {key}: expected a normalised absolute path other than '/'")
    return value


def _port(doc: Mapping[str, Any], where: str) -> int | None:
    value = doc.get("port")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise EngineError(f"{where}: port: expected a number from 1 to 65535")
    return value


def _size(doc: Mapping[str, Any], key: str, where: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    try:
        return units.parse_bytes(value)
    except ValueError as exc:
        raise EngineError(f"{where}: {key}: {exc}") from None


def _choice(doc: Mapping[str, Any], key: str, allowed: Sequence[str], where: str) -> str:
    value = doc.get(key, allowed[0])
    if value not in allowed:
        raise EngineError(f"{where}: {key}: expected one of {', '.join(allowed)}")
    return str(value)


def _formats(doc: Mapping[str, Any], where: str) -> tuple[str, ...]:
    formats = _strings(doc, "formats", where, templates=False)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EngineError(f"{where}: formats: unknown {unknown}; use {', '.join(FORMATS)}")
    return formats


def _check_template(value: str, where: str) -> str:
    """Every `{...}` in a template must be a known placeholder; stray braces are errors."""
    for name in _PLACEHOLDER.findall(value):
        if name not in PLACEHOLDERS:
            raise EngineError(f"{where}: unknown placeholder {{{name}}} in {value!r}; use "
                              + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    if "{" in _PLACEHOLDER.sub("", value) or "}" in _PLACEHOLDER.sub("", value):
        raise EngineError(f"{where}: unbalanced brace in {value!r}")
    return value


def _strings(doc: Mapping[str, Any], key: str, where: str, templates: bool = True) -> tuple[str, ...]:
    value = doc.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EngineError(f"{where}: {key}: expected a list of strings (quote numbers: \"999\")")
    return tuple(_check_template(v, f"{where}: {key}") if templates else v for v in value)


def _env(doc: Mapping[str, Any], where: str) -> dict[str, str]:
    value = doc.get("env") or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise EngineError(f"{where}: env: expected a mapping of names to strings")
    return {k: _check_template(v, f"{where}: env.{k}") for k, v in value.items()}


def _launch(doc: Mapping[str, Any], where: str, health: str | None, metrics: str | None,
            with_paths: bool) -> Launch:
    """A command with its GPU arguments and environment; native ones may override health and metrics."""
    command = _strings(doc, "command", where)
    if with_paths and not command:
        raise EngineError(f"{where}: command: a native command cannot be empty")
    if with_paths:
        health = _url_path(doc, "health", where) if "health" in doc else health
        metrics = _url_path(doc, "metrics", where) if "metrics" in doc else metrics
    return Launch(command, _strings(doc, "gpu_args", where), _strings(doc, "multi_gpu_args", where),
                  _env(doc, where), health, metrics)


def _docker_launch(doc: Mapping[str, Any], where: str, health: str | None, metrics: str | None) -> Launch | None:
    """The container command with its GPU arguments and environment; these keys mean nothing without it."""
    if doc.get("command") is None:
        extra = [k for k in ("gpu_args", "multi_gpu_args", "env") if doc.get(k) is not None]
        if extra:
            raise EngineError(f"{where}: {', '.join(extra)} need 'command'")
        return None
    return _launch(doc, where, health, metrics, with_paths=False)


def _request(value: Any, where: str) -> Request | None:
    if value is None:
        return None
    doc = _mapping(value, where, _REQUEST_KEYS)
    method = _choice(doc, "method", ("POST", "GET"), where)
    path = _url_path(doc, "path", where)
    if path is None:
        raise EngineError(f"{where}: 'path' is required")
    body = doc.get("body") or {}
    if not isinstance(body, dict):
        raise EngineError(f"{where}: body: expected a mapping")
    _walk_strings(body, lambda s: _check_template(s, f"{where}: body"))
    return Request(method, path, body)


def _walk_strings(value: Any, fn: Any) -> Any:
    """Apply `fn` to every string inside nested dicts and lists, returning the rebuilt value."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _walk_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_strings(v, fn) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------
# Rendering


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

    return _PLACEHOLDER.sub(one, template)


def _fill_env(env: Mapping[str, str], values: Mapping[str, str], engine: str) -> dict[str, str]:
    return {k: _fill(v, values, engine) for k, v in env.items()}


def _fill_request(request: Request | None, values: Mapping[str, str], engine: str) -> Request | None:
    if request is None:
        return None
    body = _walk_strings(dict(request.body), lambda s: _fill(s, values, engine))
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
