"""The controller's state DB: where it lives, how it is opened, and the history it keeps (revisions, events).

History, not truth: actual state is always read from the hosts. See ``specs/state.md``.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aimactl.store.migrations import StoreError, immediate, insert, latest_version, migrate, utc_now

if TYPE_CHECKING:
    from sqlite_utils import Database

DB_NAME = "aimactl.db"
BUSY_TIMEOUT_S = 5.0
REVISION_KINDS = ("apply", "destroy", "rollback", "reconcile")
REVISION_STATUSES = ("running", "succeeded", "failed", "partial", "interrupted")
_JSON_COLUMNS = ("manifests", "plan", "result")


def _sqlite_utils_database() -> type[Database]:
    """sqlite-utils' Database class; numpy (0.1-0.15 s, only for numpy scalars) is kept out while it loads."""
    from aimactl.imports import without

    with without("numpy"):
        from sqlite_utils import Database
    return Database


class UnknownRevision(StoreError, LookupError):
    """No revision has the given id."""

    code = "unknown-revision"


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory of the state DB: ``$AIMACTL_STATE_DIR``, else ``$XDG_STATE_HOME/aimactl``, else
    ``~/.local/state/aimactl``. Empty values count as unset; a relative ``XDG_STATE_HOME`` is ignored (XDG spec).
    """
    env = os.environ if environ is None else environ
    if env.get("AIMACTL_STATE_DIR"):
        return Path(env["AIMACTL_STATE_DIR"]).expanduser()
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "aimactl"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "state" / "aimactl"


def open_store(state_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Store:
    """Open (creating and migrating as needed) the state DB in ``state_dir`` or the default directory.

    The directory is created with mode 0700 and the DB file with 0600. The connection uses WAL,
    ``synchronous=NORMAL``, a 5 s busy timeout (concurrent processes wait instead of failing) and foreign keys.
    Raises ``SchemaTooNew`` for a DB written by a newer aimactl and ``StoreError`` for a file that is not one.
    """
    Database = _sqlite_utils_database()
    directory = Path(state_dir) if state_dir is not None else default_state_dir(environ)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / DB_NAME
    if not path.exists():
        path.touch(mode=0o600)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        db = Database(conn)
        migrate(db, path=path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"cannot open the state DB {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return Store(db, path, journal_mode=str(journal).lower())


class Store:
    """Handle on the state DB. Every write is one transaction; one Store may be shared between threads."""

    def __init__(self, db: Database, path: Path, journal_mode: str = "wal") -> None:
        self.db = db
        self.path = path
        self.journal_mode = journal_mode
        self._mutex = threading.RLock()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the Store is unusable afterwards."""
        with self._mutex:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One ``BEGIN IMMEDIATE`` write transaction on this Store (nested calls become savepoints)."""
        with self._mutex, immediate(self.db) as db:
            yield db

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict]:
        """Run a read query and return its rows as dicts."""
        with self._mutex:
            return list(self.db.query(sql, params))

    @property
    def schema_version(self) -> int:
        """The highest migration number recorded in the DB."""
        rows = self.query("SELECT MAX(number) AS n FROM migrations")
        return int(rows[0]["n"] or 0)

    @property
    def code_schema_version(self) -> int:
        """The highest migration number this code knows."""
        return latest_version()

    # -- revisions -------------------------------------------------------------------------------------------

    def begin_revision(self, stack: str, kind: str, manifests: Sequence[Mapping[str, str]], plan: Any,
                       source: str | None = None) -> int:
        """Record the start of an apply/destroy/rollback/reconcile (status ``running``) and return its id.

        ``manifests`` is a list of ``{"file", "text"}`` (the manifest texts as read, so a rollback can replay
        them; they hold secret references, never secret values). ``plan`` is anything JSON-able (pydantic
        models and dataclasses are converted). Take the stack lock before calling this.
        """
        _check_choice("kind", kind, REVISION_KINDS)
        files = [_manifest_file(m) for m in manifests]
        row = {"stack": _nonempty("stack", stack), "created_at": utc_now(), "finished_at": None, "kind": kind,
               "status": "running", "manifests": _dumps(files), "plan": _dumps(plan), "result": None,
               "summary": "", "source": source, "user": current_user(), "hostname": current_host(),
               "pid": os.getpid()}
        with self.transaction() as db:
            return insert(db, "revisions", row)

    def finish_revision(self, revision_id: int, status: str, result: Any = None, summary: str = "") -> None:
        """Record how a revision ended (``succeeded``, ``failed``, ``partial`` or ``interrupted``).

        A revision already marked ``interrupted`` may still be finished by its own process (its real outcome
        wins); finishing it twice otherwise raises ``StoreError``; an unknown id raises ``UnknownRevision``.
        """
        _check_choice("status", status, REVISION_STATUSES[1:])
        with self.transaction() as db:
            rows = list(db.query("SELECT status FROM revisions WHERE id = ?", [revision_id]))
            if not rows:
                raise UnknownRevision(f"no revision {revision_id}")
            if rows[0]["status"] not in ("running", "interrupted"):
                raise StoreError(f"revision {revision_id} already finished as {rows[0]['status']}")
            db.execute("UPDATE revisions SET status = ?, result = ?, summary = ?, finished_at = ? WHERE id = ?",
                       [status, _dumps(result), summary, utc_now(), revision_id])

    def revisions(self, stack: str | None, limit: int = 20) -> list[dict]:
        """The newest ``limit`` revisions of ``stack`` (all stacks for None), newest first, JSON decoded."""
        where, params = ("WHERE stack = ?", [stack]) if stack is not None else ("", [])
        rows = self.query(f"SELECT * FROM revisions {where} ORDER BY id DESC LIMIT ?", [*params, int(limit)])
        return [_decode(row) for row in rows]

    def revision(self, revision_id: int) -> dict | None:
        """One revision with its manifests, plan and result decoded, or None when the id is unknown."""
        rows = self.query("SELECT * FROM revisions WHERE id = ?", [revision_id])
        return _decode(rows[0]) if rows else None

    def mark_interrupted(self, stack: str) -> list[int]:
        """Mark ``running`` revisions of ``stack`` whose process is gone as ``interrupted``; returns their ids.

        A running revision is gone when its pid is not alive on this host, or when the stack's lock is no
        longer held by its process (host, pid). Call at the start of each apply, after taking the lock.
        """
        host = current_host()
        with self.transaction() as db:
            locks = list(db.query("SELECT hostname, pid FROM locks WHERE stack = ?", [stack]))
            holder = (locks[0]["hostname"], locks[0]["pid"]) if locks else None
            running = db.query("SELECT id, hostname, pid FROM revisions WHERE stack = ? AND status = 'running'",
                               [stack])
            gone = []
            for rev in list(running):
                dead = rev["hostname"] == host and not pid_alive(rev["pid"])
                if dead or holder != (rev["hostname"], rev["pid"]):
                    gone.append((rev["id"], "its process is gone" if dead else "its process no longer holds the lock"))
            now = utc_now()
            for rev_id, why in gone:
                db.execute("UPDATE revisions SET status = 'interrupted', finished_at = ?, summary = ? WHERE id = ?",
                           [now, f"interrupted: {why}", rev_id])
        return [rev_id for rev_id, _ in gone]

    # -- events ----------------------------------------------------------------------------------------------

    def add_event(self, stack: str, resource: str, kind: str, message: str, revision_id: int | None = None) -> int:
        """Append an event (``created``, ``replaced``, ``deleted``, ``failed``, ``drift``, ``healed``,
        ``stalled`` ...) about ``resource`` (an address such as ``service.chat[0]@local``); returns its id.
        Messages must never contain secret values."""
        row = {"stack": _nonempty("stack", stack), "revision_id": revision_id, "created_at": utc_now(),
               "resource": _nonempty("resource", resource), "kind": _nonempty("kind", kind), "message": message}
        with self.transaction() as db:
            return insert(db, "events", row)

    def events(self, stack: str | None, resource: str | None = None, limit: int = 50,
               after_id: int | None = None) -> list[dict]:
        """The newest ``limit`` events of ``stack`` (all stacks for None), newest first, optionally only those
        about ``resource`` and only those newer than ``after_id`` (for tailing)."""
        clauses, params = [], []
        for column, value, op in (("stack", stack, "="), ("resource", resource, "="), ("id", after_id, ">")):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self.query(f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?", [*params, int(limit)])


# -- process identity ----------------------------------------------------------------------------------------


def current_host() -> str:
    """This machine's hostname, as recorded in revisions and locks."""
    try:
        return os.uname().nodename
    except AttributeError:  # pragma: no cover - not POSIX
        import socket

        return socket.gethostname()


def current_user() -> str:
    """The login name of this process, falling back to the uid when there is no passwd entry."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (a process of another user counts)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


# -- helpers -------------------------------------------------------------------------------------------------


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"revision {what} must be one of {', '.join(choices)}, not {value!r}")


def _nonempty(what: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


def _manifest_file(item: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(item, Mapping) or not isinstance(item.get("file"), str) or not isinstance(item.get("text"), str):
        raise ValueError(f"each manifest must be a mapping with string 'file' and 'text', not {item!r:.80}")
    return {"file": item["file"], "text": item["text"]}


def _json_default(value: Any) -> Any:
    import dataclasses

    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=_json_default, sort_keys=True)


def _decode(row: dict) -> dict:
    for column in _JSON_COLUMNS:
        if row.get(column) is not None:
            row[column] = json.loads(row[column])
    return row
