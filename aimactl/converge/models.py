"""Fetching Models onto hosts: the helper downloads on the host itself; the index records what is cached."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from aimactl.converge.observe import Connections, model_index_path, read_model_index
from aimactl.core.models import DesiredModel
from aimactl.hosts.connector import call_helper


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
    index[want.name] = {"name": want.name, "source": want.source, "sha256": result.get("sha256"),
                        "size": result.get("size"), "path": want.path,
                        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    connector.put(json.dumps(index, indent=2, sort_keys=True).encode(), model_index_path(info), 0o644)
    return result


def cached_models(connections: Connections) -> list[dict[str, Any]]:
    """Every Model in every host's cache index, with its host, sorted by host and name."""
    rows = []
    for host in sorted(connections.hosts):
        for name, entry in sorted(read_model_index(connections, host).items()):
            rows.append({**entry, "name": name, "host": host})
    return rows


def unreferenced(connections: Connections, referenced: set[str]) -> list[tuple[str, str, int]]:
    """(host, directory, bytes) of cached model directories that no Model in the manifests names."""
    import os

    found = []
    for host, info in sorted(connections.hosts.items()):
        if info.address != "local":
            continue
        root = os.path.join(info.data_dir, "models")
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            path = os.path.join(root, name)
            if name in referenced or not os.path.isdir(path):
                continue
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
            found.append((host, path, size))
    return found


def remove_cached(connections: Connections, host: str, path: str) -> None:
    """Delete one cached model directory and drop it from the host's index."""
    import os
    import shutil

    info = connections.hosts[host]
    if os.path.dirname(path) != os.path.join(info.data_dir, "models"):
        raise ValueError(f"refusing to delete {path}: not a model directory of {host}")
    shutil.rmtree(path)
    index = {k: v for k, v in read_model_index(connections, host).items() if k != os.path.basename(path)}
    connections.connector(host).put(json.dumps(index, indent=2, sort_keys=True).encode(), model_index_path(info),
                                    0o644)
