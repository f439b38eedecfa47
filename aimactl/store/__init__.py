"""The controller's state store: history of revisions and events, and the per-stack lock (``specs/state.md``).

History, not truth: actual state is always read from the hosts. ``sqlite_utils`` is imported only when a store
is opened, so importing this package stays cheap.
"""

from aimactl.store.db import (
    REVISION_KINDS,
    REVISION_STATUSES,
    Store,
    UnknownRevision,
    current_host,
    current_user,
    default_state_dir,
    open_store,
    pid_alive,
)
from aimactl.store.locks import DEFAULT_TTL, Lock, LockHeld, LockLost, acquire, current_lock, force_unlock, stale_reason
from aimactl.store.migrations import MIGRATIONS, Migration, SchemaTooNew, StoreError, latest_version, migrate

__all__ = [
    "DEFAULT_TTL",
    "MIGRATIONS",
    "REVISION_KINDS",
    "REVISION_STATUSES",
    "Lock",
    "LockHeld",
    "LockLost",
    "Migration",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "UnknownRevision",
    "acquire",
    "current_host",
    "current_lock",
    "current_user",
    "default_state_dir",
    "force_unlock",
    "latest_version",
    "migrate",
    "open_store",
    "pid_alive",
    "stale_reason",
]
