"""Models on hosts: the helper downloads on the host itself, the index records what is cached, `--verify`
rehashes cached files, and `models ls|gc` read and prune each host's cache through its connector and helper.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from aimactl.converge.connections import Connections
from aimactl.converge.observe import model_index_path
from aimactl.core.models import DesiredModel
from aimactl.core.observed import Observed
from aimactl.hosts.connector import HelperError, HostUnreachable, call_helper
from aimactl.runtimes import RuntimeFailure

HOST_ERRORS = (HelperError, HostUnreachable, RuntimeFailure, OSError)
"""What reaching one host can raise; `models ls|gc` report it for that host and carry on with the others."""


def fetch_model(connections: Connections, want: DesiredModel, on_event: Callable[[dict[str, Any]], None],
                environ: Any = None) -> Any:
    """Download (or copy) one Model into the host's cache and add it to the index; returns the helper's result.

    A checksum mismatch quarantines the file and raises HelperError naming expected and actual digests.
    """
    info = connections.hosts[want.host]
    connector = connections.connector(want.host)
    payload: dict[str, Any] = {"url": want.url, "dest": want.path}
    if want.sha256:
        payload["sha256"] = want.sha256
    if want.size:
        payload["size"] = want.size
    if want.token:
        from aimactl.converge.secrets import read_secret

        # Travels on the helper's stdin only, never in argv; the helper drops it on cross-host redirects.
        payload["headers"] = {"Authorization": f"Bearer {read_secret(want.token, environ)}"}
    result = call_helper(connector, info.python, connections.helper_path(want.host), "fetch", payload, on_event)
    entry = {"name": want.name, "source": want.source, "revision": want.revision, "sha256": result.get("sha256"),
             "size": result.get("size"), "path": want.path,
             "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    update_index(connections, want.host, lambda index: {**index, want.name: entry})
    return result


def update_index(connections: Connections, host: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Read a host's model index, change it and write it back, one update at a time per host: the Models of one
    apply are fetched in parallel, and each must add its entry to what the others wrote (else the last writer
    wins and the other entries are lost)."""
    with connections.host_lock(host):
        _write_index(connections, host, change(_read_index(connections, host)))


def verify_cached(connections: Connections, models: Iterable[DesiredModel], observed: Observed) -> None:
    """`--verify`: rehash, on its host, every cached file the plan would otherwise trust from the index.

    The finding goes into the observed index entry (`verified_sha256`, or `missing`) for the planner to judge;
    a host that cannot be asked keeps its entry as recorded.
    """
    for want in models:
        host = observed.hosts.get(want.host)
        entry = host.models.get(want.name) if host is not None and host.reachable else None
        if host is None or entry is None or not entry.get("path") or want.url is None:
            continue
        info = connections.hosts[want.host]
        try:
            result = call_helper(connections.connector(want.host), info.python, connections.helper_path(want.host),
                                 "verify", {"path": entry["path"]})
        except HelperError as exc:
            if exc.code == "missing":
                host.models[want.name] = {**entry, "missing": True}
            continue  # any other failure: the entry stays as recorded (the fetch itself will say what is wrong)
        except (HostUnreachable, RuntimeFailure, OSError):
            continue
        host.models[want.name] = {**entry, "verified_sha256": result.get("sha256")}


def cached_models(connections: Connections) -> tuple[list[dict[str, Any]], list[str]]:
    """Every Model in every host's cache index, with its host, sorted by host and name; and per-host errors."""
    rows, errors = [], []
    for host in sorted(connections.hosts):
        try:
            index = _read_index(connections, host)
        except HOST_ERRORS as exc:
            errors.append(_host_error(host, exc))
            continue
        for name, entry in sorted(index.items()):
            rows.append({**entry, "name": name, "host": host, "revision": entry.get("revision")})
    return rows, errors


def unreferenced(connections: Connections, referenced: set[str]) -> tuple[list[tuple[str, str, int]], list[str]]:
    """(host, directory, bytes) of cached model directories that no Model in the manifests names, listed by
    each host's helper; and per-host errors."""
    found, errors = [], []
    for host in sorted(connections.hosts):
        try:
            listing = _cache(connections, host, {"action": "list"})
        except HOST_ERRORS as exc:
            errors.append(_host_error(host, exc))
            continue
        found += [(host, e["path"], int(e["size"])) for e in listing["entries"] if e["name"] not in referenced]
    return found, errors


def remove_cached(connections: Connections, host: str, path: str) -> None:
    """Delete one cached model directory on its host (the helper refuses anything outside the cache) and drop
    it from the host's index."""
    name = posixpath.basename(path)
    _cache(connections, host, {"action": "remove", "name": name})
    update_index(connections, host, lambda index: {k: v for k, v in index.items() if k != name})


def _host_error(host: str, exc: Exception) -> str:
    """`host NAME: why`, without naming the host twice when the reason already does."""
    text = str(exc)
    return text if text.startswith(f"host {host} ") else f"host {host}: {text}"


def _cache(connections: Connections, host: str, payload: dict[str, Any]) -> Any:
    """Run the helper's `cache` verb on a host's `<dataDir>/models`."""
    info = connections.hosts[host]
    root = posixpath.join(info.data_dir, "models")
    return call_helper(connections.connector(host), info.python, connections.helper_path(host), "cache",
                       {**payload, "root": root})


def _read_index(connections: Connections, host: str) -> dict[str, Any]:
    """The host's index; a missing index is empty, a host that cannot be reached raises."""
    try:
        data = json.loads(connections.connector(host).get(model_index_path(connections.hosts[host])))
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _write_index(connections: Connections, host: str, index: dict[str, Any]) -> None:
    connections.connector(host).put(json.dumps(index, indent=2, sort_keys=True).encode(),
                                    model_index_path(connections.hosts[host]), 0o644)


# -- models the engine pulls itself (Ollama) ----------------------------------------------------------------------

TAGS_TIMEOUT = 5.0


class PullFailed(Exception):
    """The engine could not pull a model; the message carries the engine's own words."""


def api_url(connections: Connections, want: DesiredModel) -> str:
    """`http://HOST:PORT` of the Service whose engine pulls `want`."""
    return f"http://{connections.hosts[want.host].url_host}:{want.api_port}"


def pulled_models(base_url: str, timeout: float = TAGS_TIMEOUT) -> frozenset[str]:
    """The models an Ollama server has (`GET /api/tags`), by canonical name; raises PullFailed."""
    import urllib.error
    import urllib.request

    from aimactl.models.ollama import OllamaError, parse_tags

    try:
        with urllib.request.urlopen(f"{base_url}/api/tags", timeout=timeout) as response:  # noqa: S310 - ours
            return parse_tags(response.read())
    except (urllib.error.URLError, OSError, OllamaError) as exc:
        raise PullFailed(f"GET {base_url}/api/tags: {getattr(exc, 'reason', exc)}") from None


def observe_pulled(connections: Connections, models: Iterable[DesiredModel], observed: Observed) -> None:
    """For each model an engine pulls, ask that engine (when its Service runs) whether it has the model; the
    answer goes into the observed host's models as `{"present": bool}` for the planner."""
    from aimactl.core.desired import address
    from aimactl.models.ollama import canonical

    for want in models:
        host = observed.hosts.get(want.host)
        if want.service is None or want.api_port is None or host is None or not host.reachable:
            continue
        running = any(c.running and address(c.resource_kind or "", c.resource_name or "", c.replica, want.host)
                      == want.service for c in host.containers)
        if not running:
            continue
        try:
            present = canonical(str(want.pull.body.get("model", ""))) in pulled_models(api_url(connections, want))
        except PullFailed:
            continue  # not answering yet: planned as "pulled once it is ready"
        host.models[want.name] = {"source": want.source, "present": present, "pulled_by": want.service}


def pull_model(base_url: str, request: Any, on_event: Callable[[dict[str, Any]], None],
               timeout: float = 3600.0) -> None:
    """Send the engine's pull request with streaming on and relay its progress; raises PullFailed with the
    engine's error (unknown model, no network ...)."""
    import time
    import urllib.error
    import urllib.request

    from aimactl.models.ollama import OllamaError, error_body, parse_pull_line

    body = {**dict(request.body), "stream": True}
    http = urllib.request.Request(f"{base_url}{request.path}", data=json.dumps(body).encode(), method=request.method,
                                  headers={"Content-Type": "application/json"})
    started, last = time.monotonic(), None
    try:
        with urllib.request.urlopen(http, timeout=timeout) as response:  # noqa: S310 - our own endpoint
            for raw in response:
                line = parse_pull_line(raw)
                if line is None:
                    continue
                if line.error:
                    raise PullFailed(f"pull of {body.get('model')} failed: {line.error}")
                if line.completed is not None:
                    rate = int(line.completed / max(time.monotonic() - started, 1e-6))
                    on_event({"event": "progress", "bytes": line.completed, "total": line.total, "rate": rate,
                              "status": line.status})
                last = line
    except urllib.error.HTTPError as exc:
        raise PullFailed(f"pull of {body.get('model')} failed: HTTP {exc.code}: {error_body(exc.read())}") from None
    except (urllib.error.URLError, OSError, OllamaError) as exc:
        raise PullFailed(f"pull of {body.get('model')} failed: {getattr(exc, 'reason', exc)}") from None
    if last is None or not last.success:
        raise PullFailed(f"pull of {body.get('model')} ended without success (last status: "
                         f"{last.status if last else 'none'})")
