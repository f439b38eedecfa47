"""The engine catalog: one YAML file per inference engine, parsed and checked into Engine objects, and the
types the renderer (aimactl/engines/render.py) fills from them.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aimactl.manifest import units

PLACEHOLDERS = ("model_path", "model_dir", "served_name", "port", "host", "python", "gpu_count", "state_dir")
FORMATS = ("gguf", "safetensors", "pytorch", "onnx", "ollama", "other")
GPU_MODES = ("docker-gpus", "none")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
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
    for name in PLACEHOLDER.findall(value):
        if name not in PLACEHOLDERS:
            raise EngineError(f"{where}: unknown placeholder {{{name}}} in {value!r}; use "
                              + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    if "{" in PLACEHOLDER.sub("", value) or "}" in PLACEHOLDER.sub("", value):
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
    walk_strings(body, lambda s: _check_template(s, f"{where}: body"))
    return Request(method, path, body)


def walk_strings(value: Any, fn: Any) -> Any:
    """Apply `fn` to every string inside nested dicts and lists, returning the rebuilt value."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: walk_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [walk_strings(v, fn) for v in value]
    return value
