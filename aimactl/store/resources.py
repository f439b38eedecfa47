"""Per-resource reconcile state in the state DB: sync, health, backoff and Stalled (``specs/state.md`` 3.5).

The reconcile loop writes one row per replica address it manages; `get`, `describe` and `watch` read them to
show why a resource is Stalled. Like the rest of the DB this is history about the controller's own work, not
truth about the hosts: deleting the rows only forgets backoff counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aimactl.store.migrations import utc_now

if TYPE_CHECKING:
    from aimactl.store.db import Store

_COLUMNS = ("key", "desired_hash", "sync", "health", "failures", "next_retry_at", "stalled", "reason",
            "retry_requested")


@dataclass
class ResourceState:
    """What the loop remembers about one replica address (``service.chat[0]@local``)."""

    resource: str
    key: str
    desired_hash: str | None = None
    """The manifest's spec hash last seen; a different one means the manifest changed (backoff is reset)."""
    sync: str = "unknown"
    """in-sync | drifted | missing | stalled | pending."""
    health: str = "unknown"
    """healthy | unhealthy: <why> | missing | unknown."""
    failures: int = 0
    next_retry_at: str | None = None
    """ISO time before which the loop does not act on it again (backoff)."""
    stalled: bool = False
    reason: str = ""
    """The last failure, in words."""
    retry_requested: bool = False


def load_states(store: Store, stack: str) -> dict[str, ResourceState]:
    """Every row of ``stack``, by address."""
    rows = store.query("SELECT * FROM resource_states WHERE stack = ?", [stack])
    return {row["resource"]: _state(row) for row in rows}


def save_states(store: Store, stack: str, states: Iterable[ResourceState], forget_others: bool = False) -> None:
    """Upsert the rows (one transaction); with ``forget_others`` drop rows of addresses not given (gone from the
    manifests). A retry requested meanwhile by `aimactl reconcile --retry` is never overwritten."""
    states = list(states)
    now = utc_now()
    with store.transaction() as db:
        for s in states:
            row = {k: v for k, v in asdict(s).items() if k in _COLUMNS}
            row.update(stalled=int(s.stalled), retry_requested=int(s.retry_requested))
            names = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            updates = ", ".join(f"{k} = excluded.{k}" for k in row if k != "retry_requested")
            db.execute(f"INSERT INTO resource_states (stack, resource, updated_at, {names}) VALUES (?, ?, ?, {marks}) "
                       f"ON CONFLICT (stack, resource) DO UPDATE SET updated_at = excluded.updated_at, {updates}, "
                       "retry_requested = MAX(retry_requested, excluded.retry_requested)",
                       [stack, s.resource, now, *row.values()])
        if forget_others:
            keep = [s.resource for s in states]
            marks = ", ".join("?" for _ in keep) or "''"
            db.execute(f"DELETE FROM resource_states WHERE stack = ? AND resource NOT IN ({marks})", [stack, *keep])


def request_retry(store: Store, stack: str, name: str) -> list[str]:
    """Clear the backoff and Stalled state of the resources ``name`` designates (``chat``, ``service/chat``,
    ``service.chat`` or a full address) and flag them so the loop acts at once; returns the addresses."""
    rows = store.query("SELECT resource, key FROM resource_states WHERE stack = ?", [stack])
    hits = [r["resource"] for r in rows if name in _names(r["resource"], r["key"])]
    if not hits:
        return []
    marks = ", ".join("?" for _ in hits)
    with store.transaction() as db:
        db.execute(f"UPDATE resource_states SET stalled = 0, failures = 0, next_retry_at = NULL, retry_requested = 1, "
                   f"updated_at = ? WHERE stack = ? AND resource IN ({marks})", [utc_now(), stack, *hits])
    return hits


def retry_requests(store: Store, stack: str) -> list[str]:
    """Addresses flagged by `--retry` and not yet taken up by the loop (a cheap query, polled every tick)."""
    rows = store.query("SELECT resource FROM resource_states WHERE stack = ? AND retry_requested = 1", [stack])
    return [r["resource"] for r in rows]


def take_retry_requests(store: Store, stack: str) -> list[str]:
    """Return and clear the `--retry` flags of ``stack`` (the loop calls this when it starts a pass)."""
    with store.transaction() as db:
        rows = list(db.query("SELECT resource FROM resource_states WHERE stack = ? AND retry_requested = 1",
                             [stack]))
        db.execute("UPDATE resource_states SET retry_requested = 0 WHERE stack = ? AND retry_requested = 1", [stack])
    return [r["resource"] for r in rows]


def stalled_resources(store: Store, stack: str) -> dict[str, str]:
    """Stalled resources -> their last reason, keyed by address and by ``kind/name`` (for `get`, `watch`)."""
    out: dict[str, str] = {}
    for row in store.query("SELECT resource, key, failures, reason FROM resource_states "
                           "WHERE stack = ? AND stalled = 1 ORDER BY resource", [stack]):
        text = f"Stalled after {row['failures']} failures: {row['reason']}"
        out[row["resource"]] = text
        out.setdefault(row["key"], text)
    return out


def _names(resource: str, key: str) -> set[str]:
    """Every way `--retry` may name a resource."""
    kind, _, name = key.partition("/")
    return {resource, key, f"{kind}.{name}", name}


def _state(row: Mapping[str, Any]) -> ResourceState:
    return ResourceState(row["resource"], row["key"], row["desired_hash"], row["sync"], row["health"],
                         int(row["failures"]), row["next_retry_at"], bool(row["stalled"]), row["reason"],
                         bool(row["retry_requested"]))
