"""Numbered schema migrations for the state DB, plus the error types and the write transaction they share.

A migration is ``(number, name, apply)`` where ``apply`` is SQL text (one or more statements) or a function
taking the ``sqlite_utils.Database``. Migrations run in ascending order, each in its own ``BEGIN IMMEDIATE``
transaction that also records it in the ``migrations`` table, so a crash leaves the DB at a whole number.
Applied migrations are never edited: a schema change is a new migration appended to ``MIGRATIONS``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from aimactl import __version__

if TYPE_CHECKING:
    from sqlite_utils import Database


class StoreError(Exception):
    """Base class of every error raised by ``aimactl.store``; ``code`` is a stable machine-readable name."""

    code = "store-error"


class SchemaTooNew(StoreError):
    """The DB was written by a newer aimactl whose schema this code does not know."""

    code = "state-schema-too-new"


class Migration(NamedTuple):
    """One schema step: ``apply`` is SQL text or a function of the ``sqlite_utils.Database``."""

    number: int
    name: str
    apply: str | Callable[[Database], None]


INITIAL_SCHEMA = """
CREATE TABLE revisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stack       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    manifests   TEXT NOT NULL DEFAULT '[]',
    plan        TEXT,
    result      TEXT,
    summary     TEXT NOT NULL DEFAULT '',
    source      TEXT,
    user        TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    pid         INTEGER NOT NULL
);
CREATE INDEX revisions_by_stack ON revisions (stack, id);
CREATE INDEX revisions_running ON revisions (stack) WHERE status = 'running';

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stack       TEXT NOT NULL,
    revision_id INTEGER REFERENCES revisions (id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL,
    resource    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_stack ON events (stack, id);
CREATE INDEX events_by_resource ON events (stack, resource, id);
CREATE INDEX events_by_revision ON events (revision_id);

CREATE TABLE locks (
    stack       TEXT PRIMARY KEY,
    lock_id     TEXT NOT NULL UNIQUE,
    holder      TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    hostname    TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    operation   TEXT NOT NULL
);
"""

RESOURCE_STATES = """
CREATE TABLE resource_states (
    stack           TEXT NOT NULL,
    resource        TEXT NOT NULL,
    key             TEXT NOT NULL,
    desired_hash    TEXT,
    sync            TEXT NOT NULL DEFAULT 'unknown',
    health          TEXT NOT NULL DEFAULT 'unknown',
    failures        INTEGER NOT NULL DEFAULT 0,
    next_retry_at   TEXT,
    stalled         INTEGER NOT NULL DEFAULT 0,
    reason          TEXT NOT NULL DEFAULT '',
    retry_requested INTEGER NOT NULL DEFAULT 0,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (stack, resource)
);
CREATE INDEX resource_states_by_key ON resource_states (stack, key);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "revisions, events and locks", INITIAL_SCHEMA),
    Migration(2, "reconcile state per resource: sync, health, backoff, stalled", RESOURCE_STATES),
)

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS migrations (
    number          INTEGER PRIMARY KEY,
    name            TEXT NOT NULL,
    applied_at      TEXT NOT NULL,
    aimactl_version TEXT NOT NULL
)
"""


def utc_now() -> str:
    """The current time as fixed-width ISO 8601 UTC text (sorts as it compares)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@contextmanager
def immediate(db: Database) -> Iterator[Database]:
    """Run the block in one ``BEGIN IMMEDIATE`` write transaction (a savepoint when one is already open).

    IMMEDIATE takes the write lock up front, so two processes never deadlock upgrading a read to a write; a
    writer that finds the DB busy waits up to the connection's busy timeout. The block commits as a whole or
    not at all, also under ``kill -9``.
    """
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def insert(db: Database, table: str, row: dict[str, Any]) -> int:
    """Insert ``row`` into ``table`` (joining the open transaction, if any) and return its rowid."""
    return int(db.table(table).insert(row).last_pk or 0)


def latest_version(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """The schema number this code writes: the highest migration number known."""
    return max((m.number for m in migrations), default=0)


def applied_migrations(db: Database) -> list[dict]:
    """Rows of the ``migrations`` table in order, empty for a DB that was never migrated."""
    if "migrations" not in db.table_names():
        return []
    return list(db.query("SELECT number, name, applied_at, aimactl_version FROM migrations ORDER BY number"))


def migrate(db: Database, migrations: Sequence[Migration] = MIGRATIONS, path: Path | str | None = None) -> list[int]:
    """Bring ``db`` up to the newest of ``migrations``; returns the numbers applied now (empty when current).

    Safe to call from several processes at once: each step re-reads what is applied inside its own write
    transaction. Raises ``SchemaTooNew`` when the DB records a migration newer than every known one.
    """
    _check_sequence(migrations)
    known = latest_version(migrations)
    done = {row["number"]: row for row in applied_migrations(db)}
    _refuse_future(done, known, path)
    pending = [m for m in migrations if m.number not in done]
    if not pending:
        return []
    with immediate(db):
        db.execute(_MIGRATIONS_TABLE)
    applied_now = []
    for migration in pending:
        with immediate(db):
            done = {row["number"]: row for row in applied_migrations(db)}
            _refuse_future(done, known, path)
            if migration.number in done:
                continue
            _run(db, migration)
            insert(db, "migrations", {"number": migration.number, "name": migration.name,
                                     "applied_at": utc_now(), "aimactl_version": __version__})
        applied_now.append(migration.number)
    return applied_now


def _check_sequence(migrations: Sequence[Migration]) -> None:
    numbers = [m.number for m in migrations]
    if numbers != sorted(set(numbers)) or any(n < 1 for n in numbers):
        raise ValueError(f"migration numbers must be positive, unique and ascending: {numbers}")


def _refuse_future(done: dict[int, dict], known: int, path: Path | str | None) -> None:
    newer = [row for number, row in sorted(done.items()) if number > known]
    if not newer:
        return
    top = newer[-1]
    where = f" {path}" if path else ""
    raise SchemaTooNew(
        f"state DB{where} has schema version {top['number']} ({top['name']!r}, written by aimactl "
        f"{top['aimactl_version']}) but this aimactl {__version__} knows only up to version {known}; "
        "upgrade aimactl, or point AIMACTL_STATE_DIR at another directory"
    )


def _run(db: Database, migration: Migration) -> None:
    if callable(migration.apply):
        migration.apply(db)
        return
    for statement in sql_statements(migration.apply):
        db.conn.execute(statement)


def sql_statements(sql: str) -> Iterator[str]:
    """Split SQL text into complete statements (``executescript`` would commit the open transaction)."""
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip().strip(";").strip():
                yield buffer
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
