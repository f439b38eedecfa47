"""Models on hosts: the helper downloads on the host itself, the index records what is cached, `--verify`
rehashes cached files, and `models ls|gc` read and prune each host's cache through its connector and helper.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from aimactl.converge.observe import Connections, model_index_path, read_model_index
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
    index = read_model_index(connections, want.host)
    index[want.name] = {"name": want.name, "source": want.source, "revision": want.revision,
                        "sha256": result.get("sha256"), "size": result.get("size"), "path": want.path,
                        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_index(connections, want.host, index)
    return result


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
            if exc.code != "missing":
                raise
            host.models[want.name] = {**entry, "missing": True}
            continue
        host.models[want.name] = {**entry, "verified_sha256": result.get("sha256")}


def cached_models(connections: Connections) -> tuple[list[dict[str, Any]], list[str]]:
    """Every Model in every host's cache index, with its host, sorted by host and name; and per-host errors."""
    rows, errors = [], []
    for host in sorted(connections.hosts):
        try:
            index = _read_index(connections, host)
        except HOST_ERRORS as exc:
            errors.append(f"host {host}: {exc}")
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
            errors.append(f"host {host}: {exc}")
            continue
        found += [(host, e["path"], int(e["size"])) for e in listing["entries"] if e["name"] not in referenced]
    return found, errors


def remove_cached(connections: Connections, host: str, path: str) -> None:
    """Delete one cached model directory on its host (the helper refuses anything outside the cache) and drop
    it from the host's index."""
    name = posixpath.basename(path)
    _cache(connections, host, {"action": "remove", "name": name})
    index = {k: v for k, v in _read_index(connections, host).items() if k != name}
    _write_index(connections, host, index)


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
