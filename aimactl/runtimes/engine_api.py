"""A tiny, stdlib-only reader of the Docker Engine API, and pure parsers of what it returns.

Observation must stay fast: importing the Docker SDK costs a third of a second, so reads go through
`http.client` over the engine's unix socket (or `tcp://host:port`). Writes live in `aimactl.runtimes.docker`.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from aimactl.core.observed import ObservedContainer, PublishedPort
from aimactl.runtimes import ContainerNotFound, EngineError, EngineUnavailable

DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"
TIMEOUT_S = 10.0
MAX_IDLE_CONNECTIONS = 8
ALL_ADDRESSES = ("", "0.0.0.0", "::")
"""Host addresses that mean "every address"; PublishedPort.host_ip is '' for them."""
_NO_EXIT_CODE = ("created", "running", "paused")
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)

__all__ = [
    "DEFAULT_ENDPOINT",
    "EngineReader",
    "EngineUnavailable",
    "docker_endpoint",
    "parse_container",
    "parse_container_summary",
]


def docker_endpoint(environ_value: str | None) -> str:
    """The engine to talk to: DOCKER_HOST when set (pass `os.environ.get("DOCKER_HOST")`), else the local socket."""
    value = (environ_value or "").strip()
    return value or DEFAULT_ENDPOINT


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over an AF_UNIX stream socket."""

    def __init__(self, socket_path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        """Connect to the socket file instead of a TCP address."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection_factory(base_url: str) -> Any:
    """Return a callable `(timeout) -> HTTPConnection` that opens new connections to `base_url`.

    An endpoint that cannot be read gives a callable that raises EngineUnavailable, so that the error comes
    with the first request (like an engine that is down), not when the reader is built.
    """
    parts = urlsplit(base_url if "://" in base_url else f"unix://{base_url}")
    if parts.scheme == "unix":
        path = parts.path or parts.netloc
        return lambda timeout: _UnixHTTPConnection(path, timeout)
    if parts.scheme in ("tcp", "http"):
        host, port = parts.hostname or "localhost", parts.port or 2375
        return lambda timeout: http.client.HTTPConnection(host, port, timeout=timeout)
    reason = f"Docker endpoint {base_url!r}: only unix:// and tcp:// endpoints can be read directly (TLS, ssh:// not)"

    def refuse(timeout: float | None) -> http.client.HTTPConnection:
        raise EngineUnavailable(reason)

    return refuse


class EngineReader:
    """Read-only client of one Docker engine: `EngineReader("unix:///var/run/docker.sock")`.

    Thread-safe: requests share a small pool of keep-alive connections. The API version prefix is negotiated
    once from `GET /version`.
    """

    def __init__(self, base_url: str, timeout: float = TIMEOUT_S) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._connect = _connection_factory(base_url)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._version_lock = threading.Lock()
        self._version: dict[str, Any] | None = None
        self._prefix: str | None = None

    def ping(self) -> bool:
        """Return True when the engine answers `GET /_ping` with OK; raise EngineUnavailable otherwise."""
        status, body = self._request("/_ping")
        if status != 200:
            raise EngineUnavailable(f"Docker engine at {self.base_url} answered ping with HTTP {status}")
        return body.strip() == b"OK"

    def version(self) -> dict[str, Any]:
        """The engine's `GET /version` (Version, ApiVersion, Os, Arch ...), fetched once."""
        self._negotiate()
        assert self._version is not None
        return self._version

    def containers(self, filters: Mapping[str, Any] | None = None, all: bool = True) -> list[dict[str, Any]]:
        """`GET /containers/json`: summaries of containers (stopped ones too when `all`), optionally filtered.

        `filters` maps a filter name to a value or a list of values, e.g. `{"label": ["dev.aima.stack=prod"]}`.
        """
        query: dict[str, str] = {"all": "1" if all else "0"}
        if filters:
            query["filters"] = json.dumps(_filter_lists(filters), separators=(",", ":"))
        result = self._get_json("/containers/json", query)
        return list(result or [])

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        """`GET /containers/{id}/json`; raises ContainerNotFound when it does not exist."""
        path = f"/containers/{quote(container_id, safe='')}/json"
        result = self._get_json(path, none_if_missing=True)
        if result is None:
            raise ContainerNotFound(f"container {container_id}: no such container on {self.base_url}", 404)
        return dict(result)

    def inspect_image(self, ref: str) -> dict[str, Any] | None:
        """`GET /images/{ref}/json`, or None when the image is not on the engine."""
        result = self._get_json(f"/images/{quote(ref, safe='/:@')}/json", none_if_missing=True)
        return None if result is None else dict(result)

    def logs(self, container_id: str, tail: int | None = None, follow: bool = False) -> Iterator[tuple[int, bytes]]:
        """`GET /containers/{id}/logs`: (stream, data) frames, stream 1 = stdout, 2 = stderr, 0 = a TTY's output.

        Errors (missing container, engine down) are raised by this call, not while iterating. With `follow`
        the frames keep coming, without a read timeout, until the container stops.
        """
        tty = bool((self.inspect_container(container_id).get("Config") or {}).get("Tty"))
        query = {"stdout": "1", "stderr": "1", "follow": str(int(follow)), "tail": "all" if tail is None else str(tail)}
        path = f"/containers/{quote(container_id, safe='')}/logs?{urlencode(query)}"
        connection = self._connect(None if follow else self.timeout)
        try:
            connection.request("GET", self._negotiate() + path, headers={"Host": "docker"})
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise EngineUnavailable(_unavailable(self.base_url, exc)) from exc
        if response.status != 200:
            message = _error_message(response.read())
            connection.close()
            error = ContainerNotFound if response.status == 404 else EngineError
            raise error(f"container {container_id}: logs: HTTP {response.status}: {message}", response.status)
        return _frames(response, connection, tty)

    def close(self) -> None:
        """Close the idle kept-alive connections (the reader stays usable and reconnects on demand)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _negotiate(self) -> str:
        """Return the `/vX.Y` path prefix, asking the engine for its API version on first use."""
        if self._prefix is None:
            with self._version_lock:
                if self._prefix is None:
                    status, body = self._request("/version")
                    self._version = _decode_json(body, self.base_url) if status == 200 else {}
                    api_version = str(self._version.get("ApiVersion") or "")
                    self._prefix = f"/v{api_version}" if api_version else ""
        return self._prefix

    def _get_json(self, path: str, query: Mapping[str, str] | None = None, none_if_missing: bool = False) -> Any:
        """GET a versioned path and decode its JSON; 404 gives None when `none_if_missing`, else EngineError."""
        full = self._negotiate() + path + (f"?{urlencode(query)}" if query else "")
        status, body = self._request(full)
        if status == 404 and none_if_missing:
            return None
        if status != 200:
            message = _error_message(body)
            raise EngineError(f"Docker engine at {self.base_url}: GET {path}: HTTP {status}: {message}", status)
        return _decode_json(body, self.base_url)

    def _request(self, path: str) -> tuple[int, bytes]:
        """GET `path` on a pooled connection (reconnecting once if a kept-alive one went stale)."""
        for attempt in (1, 2):
            connection, reused = self._acquire()
            try:
                connection.request("GET", path, headers={"Host": "docker", "Accept": "application/json"})
                response = connection.getresponse()
                body = response.read()
            except _STALE_CONNECTION as exc:
                connection.close()
                if reused and attempt == 1:
                    continue
                raise EngineUnavailable(_unavailable(self.base_url, exc)) from exc
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise EngineUnavailable(_unavailable(self.base_url, exc)) from exc
            self._release(connection, keep=not response.will_close)
            return response.status, body
        raise AssertionError("unreachable")

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (reused=True) or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(self.timeout), False

    def _release(self, connection: http.client.HTTPConnection, keep: bool) -> None:
        """Return a connection to the pool, or close it."""
        if keep:
            with self._lock:
                if len(self._idle) < MAX_IDLE_CONNECTIONS:
                    self._idle.append(connection)
                    return
        connection.close()


def _frames(
    response: http.client.HTTPResponse, connection: http.client.HTTPConnection, tty: bool
) -> Iterator[tuple[int, bytes]]:
    """Demultiplex a logs body (8-byte headers: stream, 3 zero bytes, big-endian size) and close at the end."""
    try:
        while True:
            if tty:
                chunk = response.read1(65536)
                if not chunk:
                    return
                yield 0, chunk
                continue
            header = response.read(8)
            if len(header) < 8:
                return
            yield header[0], response.read(int.from_bytes(header[4:8], "big"))
    finally:
        connection.close()


def _unavailable(base_url: str, exc: BaseException) -> str:
    """One line saying why the engine at `base_url` cannot be reached."""
    if isinstance(exc, FileNotFoundError):
        reason = "the socket does not exist (is Docker installed and running?)"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused (is the Docker engine running?)"
    elif isinstance(exc, PermissionError):
        reason = "permission denied (is the user in the docker group?)"
    elif isinstance(exc, (TimeoutError, socket.timeout)):
        reason = "no answer in time"
    else:
        reason = str(exc) or type(exc).__name__
    return f"Docker engine at {base_url} is unavailable: {reason}"


def _filter_lists(filters: Mapping[str, Any]) -> dict[str, list[str]]:
    """Normalise filter values to the list form the engine expects."""
    result: dict[str, list[str]] = {}
    for name, value in filters.items():
        values = [value] if isinstance(value, (str, bool, int)) else list(value)
        result[name] = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return result


def _decode_json(body: bytes, base_url: str) -> Any:
    """Decode a JSON body, or raise EngineError naming the engine."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise EngineError(f"Docker engine at {base_url} sent a body that is not JSON: {body[:80]!r}") from exc


def _error_message(body: bytes) -> str:
    """The engine's explanation in an error body (`{"message": ...}`), or the body itself."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or body.decode("utf-8", "replace").strip() or "no explanation")


# --- pure parsers ---------------------------------------------------------------------------------------------


def parse_container(inspect: Mapping[str, Any]) -> ObservedContainer:
    """Turn a full `GET /containers/{id}/json` into an ObservedContainer."""
    state = inspect.get("State") or {}
    config = inspect.get("Config") or {}
    status = str(state.get("Status") or "unknown")
    exit_code = state.get("ExitCode")
    return ObservedContainer(
        id=str(inspect.get("Id", "")),
        name=str(inspect.get("Name", "")).lstrip("/"),
        image=str(config.get("Image") or ""),
        image_id=str(inspect.get("Image") or ""),
        state=status,
        exit_code=None if status in _NO_EXIT_CODE or exit_code is None else int(exit_code),
        restart_count=int(inspect.get("RestartCount") or 0),
        started_at=_docker_time(state.get("StartedAt")),
        finished_at=_docker_time(state.get("FinishedAt")),
        labels=dict(config.get("Labels") or {}),
        ports=_inspect_ports(inspect),
        health=(state.get("Health") or {}).get("Status"),
        live=_live_in_place_fields(inspect.get("HostConfig") or {}),
    )


def _live_in_place_fields(host_config: Mapping[str, Any]) -> dict[str, Any]:
    """Restart policy, memory and CPU limits as they are now, in the normalised spec's terms."""
    policy = (host_config.get("RestartPolicy") or {}).get("Name") or "no"
    memory = host_config.get("Memory") or None
    nano_cpus = host_config.get("NanoCpus") or None
    return {"restart": policy, "resources.memory": memory,
            "resources.cpus": nano_cpus / 1e9 if nano_cpus else None}


_EXITED = re.compile(r"^Exited \((-?\d+)\)")
_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")


def parse_container_summary(item: Mapping[str, Any]) -> ObservedContainer:
    """Turn one item of `GET /containers/json` into an ObservedContainer.

    Summaries carry no restart count nor times; the exit code and health are read from the human `Status`
    ("Exited (137) 5 seconds ago", "Up 3 minutes (healthy)"). Enough for containers that only matter for the
    ports and names they hold.
    """
    status_text = str(item.get("Status") or "")
    state = str(item.get("State") or "unknown")
    exited = _EXITED.match(status_text)
    health = _HEALTH.search(status_text)
    names = item.get("Names") or [""]
    return ObservedContainer(
        id=str(item.get("Id", "")),
        name=str(names[0]).lstrip("/"),
        image=str(item.get("Image") or ""),
        image_id=str(item.get("ImageID") or ""),
        state=state,
        exit_code=int(exited.group(1)) if exited and state not in _NO_EXIT_CODE else None,
        labels=dict(item.get("Labels") or {}),
        ports=_sorted_ports(
            PublishedPort(_host_ip(p.get("IP")), int(p["PublicPort"]), int(p["PrivatePort"]), p.get("Type", "tcp"))
            for p in item.get("Ports") or []
            if p.get("PublicPort")
        ),
        health=None if health is None else health.group(1).replace("health: ", ""),
    )


def _docker_time(value: Any) -> str | None:
    """A Docker timestamp, or None for its zero time ("0001-01-01T00:00:00Z") and empty values."""
    if not value or str(value).startswith("0001-01-01"):
        return None
    return str(value)


def _host_ip(value: Any) -> str:
    """'' for the addresses that mean "all" (0.0.0.0, ::, empty), else the address."""
    text = str(value or "")
    return "" if text in ALL_ADDRESSES else text


def _bindings(table: Mapping[str, Any] | None) -> list[PublishedPort]:
    """Ports from a `{"8080/tcp": [{"HostIp": ..., "HostPort": ...}]}` table; bindings without a port are skipped."""
    ports = []
    for key, bindings in (table or {}).items():
        number, _, protocol = str(key).partition("/")
        for binding in bindings or []:
            host_port = str(binding.get("HostPort") or "0")
            if host_port.isdigit() and int(host_port) > 0:
                ip = _host_ip(binding.get("HostIp"))
                ports.append(PublishedPort(ip, int(host_port), int(number), protocol or "tcp"))
    return ports


def _inspect_ports(inspect: Mapping[str, Any]) -> tuple[PublishedPort, ...]:
    """Published ports: the live bindings while the container has them, else the requested ones.

    `NetworkSettings.Ports` holds what the engine really bound (dynamic ports resolved) but is empty unless
    the container runs; `HostConfig.PortBindings` keeps what was asked for in every state.
    """
    live = _bindings((inspect.get("NetworkSettings") or {}).get("Ports"))
    if live:
        return _sorted_ports(live)
    return _sorted_ports(_bindings((inspect.get("HostConfig") or {}).get("PortBindings")))


def _sorted_ports(ports: Iterable[PublishedPort]) -> tuple[PublishedPort, ...]:
    """Unique ports in a stable order."""
    return tuple(sorted(set(ports), key=lambda p: (p.host_port, p.protocol, p.container_port, p.host_ip)))
