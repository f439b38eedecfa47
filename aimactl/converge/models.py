"""Fetching Models onto hosts: the helper downloads on the host itself; the index records what is cached."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from aimactl.converge.observe import Connections, model_index_path, read_model_index
from aimactl.core.models import DesiredModel
from aimactl.hosts.connector import call_helper


def fetch_model(connections: Connections, want: DesiredModel, on_event: Callable[[dict[str, Any]], None]) -> Any:
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
    result = call_helper(connector, info.python, connections.helper_path(want.host), "fetch", payload, on_event)
    index = read_model_index(connections, want.host)
    index[want.name] = {"name": want.name, "source": want.source, "sha256": result.get("sha256"),
                        "size": result.get("size"), "path": want.path,
                        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    connector.put(json.dumps(index, indent=2, sort_keys=True).encode(), model_index_path(info), 0o644)
    return result
