"""Per-stack lock in the state DB, so that two applies (or an apply and a reconcile loop) never race.

A lock row names its holder (user@host, pid, host), its operation and an expiry. Taking it is one
``BEGIN IMMEDIATE`` transaction: read the row, and insert ours if there is none or the existing one is stale.

Stale means either:

- expired: ``expires_at`` is in the past (a holder that works longer than its TTL must ``refresh()``), or
- orphaned: the holder's hostname is this machine's hostname and its pid is not alive (or is a zombie).

A stale lock is taken over automatically, recording a ``lock-taken-over`` event and setting ``Lock.took_over``.
A holder on another host is judged by its expiry only: its pid means nothing here. A lock held by a live
holder can be broken only explicitly: ``force_unlock(store, lock_id)`` (``aimactl unlock <lock_id> --force``).
The lock is not re-entrant: a second ``acquire`` of the same stack in the same process waits like any other.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from aimactl.store.db import current_host, current_user, pid_alive
from aimactl.store.migrations import StoreError, insert

if TYPE_CHECKING:
    from sqlite_utils import Database

    from aimactl.store.db import Store

DEFAULT_TTL = timedelta(minutes=30)
LOCK_RESOURCE = "lock"


class LockHeld(StoreError):
    """The stack's lock is held by a live holder; the attributes describe that holder."""

    code = "lock-held"

    def __init__(self, stack: str, info: dict[str, Any]) -> None:
        self.stack = stack
        self.info = dict(info)
        self.lock_id: str = info["lock_id"]
        self.holder: str = info["holder"]
        self.pid: int = info["pid"]
        self.hostname: str = info["hostname"]
        self.acquired_at: str = info["acquired_at"]
        self.expires_at: str = info["expires_at"]
        self.operation: str = info["operation"]
        super().__init__(
            f"stack {stack!r} is locked by {self.holder} (pid {self.pid} on {self.hostname}) for "
            f"{self.operation!r} since {self.acquired_at}, until {self.expires_at}; lock id {self.lock_id}. "
            f"Wait for it to finish, or if that process is gone, break the lock with: "
            f"aimactl unlock {self.lock_id} --force"
        )


class LockLost(StoreError):
    """Our lock was broken (force unlock) or taken over after it expired: stop writing to the hosts."""

    code = "lock-lost"


class Lock:
    """A held stack lock. Use as a context manager, or call ``release()``; call ``refresh()`` in long work."""

    def __init__(self, store: Store, row: dict[str, Any], ttl: timedelta, took_over: dict | None = None) -> None:
        self.store = store
        self.stack: str = row["stack"]
        self.lock_id: str = row["lock_id"]
        self.holder: str = row["holder"]
        self.pid: int = row["pid"]
        self.hostname: str = row["hostname"]
        self.acquired_at: str = row["acquired_at"]
        self.expires_at: str = row["expires_at"]
        self.operation: str = row["operation"]
        self.ttl = ttl
        self.took_over = took_over

    def __repr__(self) -> str:
        return f"<Lock {self.stack!r} {self.lock_id} {self.holder} pid {self.pid} until {self.expires_at}>"

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> bool:
        """Delete this lock (only this lock_id); False when it was already broken or taken over."""
        with self.store.transaction() as db:
            cursor = db.execute("DELETE FROM locks WHERE stack = ? AND lock_id = ?", [self.stack, self.lock_id])
            return cursor.rowcount == 1

    def refresh(self, ttl: timedelta | None = None) -> str:
        """Push the expiry to now + ``ttl`` (default: the acquire TTL) and return it; ``LockLost`` if not ours."""
        expires = _iso(_now() + (ttl if ttl is not None else self.ttl))
        with self.store.transaction() as db:
            cursor = db.execute("UPDATE locks SET expires_at = ? WHERE stack = ? AND lock_id = ?",
                                [expires, self.stack, self.lock_id])
            if cursor.rowcount != 1:
                raise LockLost(f"the lock {self.lock_id} on stack {self.stack!r} was broken or taken over; "
                               "another process may be changing this stack")
        self.expires_at = expires
        return expires


def acquire(store: Store, stack: str, operation: str, ttl: timedelta = DEFAULT_TTL, wait: float = 0.0,
            poll: float = 0.2) -> Lock:
    """Take the lock of ``stack`` for ``operation`` (``apply``, ``destroy`` ...), valid for ``ttl``.

    A stale lock (expired, or held by a dead pid on this host) is taken over. While a live holder has it,
    retry every ``poll`` seconds until ``wait`` seconds have passed, then raise ``LockHeld`` naming the holder.
    """
    if ttl < timedelta(0):
        raise ValueError("ttl must not be negative")
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        lock, holder = _try_acquire(store, stack, operation, ttl)
        if lock is not None:
            return lock
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockHeld(stack, holder or {})
        time.sleep(min(max(poll, 0.001), remaining))


def _try_acquire(store: Store, stack: str, operation: str, ttl: timedelta) -> tuple[Lock | None, dict | None]:
    with store.transaction() as db:
        now = _now()
        rows = list(db.query("SELECT * FROM locks WHERE stack = ?", [stack]))
        took_over = None
        if rows:
            reason = stale_reason(rows[0], now)
            if reason is None:
                return None, rows[0]
            took_over = {**rows[0], "stale_reason": reason}
            db.execute("DELETE FROM locks WHERE stack = ?", [stack])
        host = current_host()
        row = {"stack": stack, "lock_id": os.urandom(8).hex(), "holder": f"{current_user()}@{host}",
               "pid": os.getpid(), "hostname": host, "acquired_at": _iso(now), "expires_at": _iso(now + ttl),
               "operation": operation}
        insert(db, "locks", row)
        if took_over is not None:
            message = f"{row['holder']} took over {_describe(took_over)}: {took_over['stale_reason']}"
            _lock_event(db, stack, "lock-taken-over", message)
    return Lock(store, row, ttl, took_over), None


def stale_reason(row: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why the lock ``row`` is stale and may be taken over, or None while its holder may still be working."""
    now = now or _now()
    if datetime.fromisoformat(row["expires_at"]) <= now:
        return f"it expired at {row['expires_at']}"
    if row["hostname"] == current_host() and not pid_alive(int(row["pid"])):
        return f"its holder pid {row['pid']} is not running on {row['hostname']}"
    return None


def current_lock(store: Store, stack: str) -> dict | None:
    """The lock row of ``stack`` plus ``stale`` (bool) and ``stale_reason``, or None when it is unlocked."""
    rows = store.query("SELECT * FROM locks WHERE stack = ?", [stack])
    if not rows:
        return None
    reason = stale_reason(rows[0])
    return {**rows[0], "stale": reason is not None, "stale_reason": reason}


def force_unlock(store: Store, lock_id: str) -> bool:
    """Delete the lock ``lock_id`` whoever holds it (recording a ``lock-broken`` event); False if no such lock."""
    with store.transaction() as db:
        rows = list(db.query("SELECT * FROM locks WHERE lock_id = ?", [lock_id]))
        if not rows:
            return False
        db.execute("DELETE FROM locks WHERE lock_id = ?", [lock_id])
        message = f"{current_user()}@{current_host()} force-unlocked {_describe(rows[0])}"
        _lock_event(db, rows[0]["stack"], "lock-broken", message)
    return True


def _lock_event(db: Database, stack: str, kind: str, message: str) -> None:
    insert(db, "events", {"stack": stack, "revision_id": None, "created_at": _iso(_now()),
                          "resource": LOCK_RESOURCE, "kind": kind, "message": message})


def _describe(row: dict[str, Any]) -> str:
    return f"lock {row['lock_id']} of {row['holder']} (pid {row['pid']}, {row['operation']} since {row['acquired_at']})"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
