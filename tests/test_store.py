"""State store tests against real SQLite files: migrations, revisions, events, locks, processes and kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from aimactl.store import (
    MIGRATIONS,
    LockHeld,
    LockLost,
    Migration,
    SchemaTooNew,
    Store,
    StoreError,
    UnknownRevision,
    acquire,
    current_host,
    current_lock,
    default_state_dir,
    force_unlock,
    migrate,
    open_store,
)

ROOT = Path(__file__).parent.parent
MANIFESTS = [{"file": "stack.yaml", "text": "apiVersion: aima.dev/v1\nkind: Service\n"}]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with open_store(tmp_path / "state") as opened:
        yield opened


def _python(code: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=30, **kwargs)


# -- location, pragmas, migrations -------------------------------------------------------------------------------


def test_state_dir_follows_env_then_xdg_then_home(tmp_path: Path) -> None:
    assert default_state_dir({"AIMACTL_STATE_DIR": "/s", "XDG_STATE_HOME": "/x"}) == Path("/s")
    assert default_state_dir({"AIMACTL_STATE_DIR": "", "XDG_STATE_HOME": "/x", "HOME": "/h"}) == Path("/x/aimactl")
    assert default_state_dir({"XDG_STATE_HOME": "relative", "HOME": "/h"}) == Path("/h/.local/state/aimactl")
    with open_store(environ={"HOME": str(tmp_path)}) as opened:
        assert opened.path == tmp_path / ".local/state/aimactl/aimactl.db"


def test_open_creates_private_files_with_wal_and_pragmas(tmp_path: Path) -> None:
    with open_store(environ={"AIMACTL_STATE_DIR": str(tmp_path / "state")}) as opened:
        assert opened.path == tmp_path / "state" / "aimactl.db"
        assert stat.S_IMODE(opened.path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(opened.path.stat().st_mode) == 0o600
        pragmas = {name: next(iter(opened.query(f"PRAGMA {name}")[0].values()))
                   for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
        assert pragmas == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 5000}


def test_migrations_are_applied_recorded_and_reopen_is_idempotent(tmp_path: Path) -> None:
    with open_store(tmp_path) as first:
        rows = first.query("SELECT number, name, applied_at FROM migrations ORDER BY number")
        assert [r["number"] for r in rows] == [m.number for m in MIGRATIONS]
        assert {"revisions", "events", "locks", "migrations"} <= set(first.db.table_names())
        assert first.schema_version == first.code_schema_version == MIGRATIONS[-1].number
    with open_store(tmp_path) as second:
        assert second.query("SELECT number, name, applied_at FROM migrations ORDER BY number") == rows


def test_an_old_db_is_upgraded_in_order(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "aimactl.db").close()  # an empty, never migrated DB
    with open_store(tmp_path) as opened:
        assert opened.schema_version == MIGRATIONS[-1].number
        opened.begin_revision("default", "apply", MANIFESTS, {})
        n = MIGRATIONS[-1].number
        newer = [*MIGRATIONS, Migration(n + 1, "notes table", "CREATE TABLE notes (id INTEGER PRIMARY KEY, t TEXT);"),
                 Migration(n + 2, "a note", lambda db: db["notes"].insert({"t": "hello"}))]
        assert migrate(opened.db, newer) == [n + 1, n + 2]
        assert migrate(opened.db, newer) == []
        assert opened.query("SELECT t FROM notes") == [{"t": "hello"}]
        assert len(opened.revisions("default")) == 1


def test_a_failing_migration_leaves_nothing_half_done(store: Store) -> None:
    n = MIGRATIONS[-1].number

    def broken(db: object) -> None:
        store.db.execute("CREATE TABLE half (x)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        migrate(store.db, [*MIGRATIONS, Migration(n + 1, "broken", broken)])
    assert "half" not in store.db.table_names()
    assert store.schema_version == n


def test_a_db_from_the_future_is_refused(tmp_path: Path) -> None:
    with open_store(tmp_path) as opened:
        opened.db.execute("INSERT INTO migrations VALUES (999, 'from the future', '2099-01-01', '9.9.9')")
    with pytest.raises(SchemaTooNew, match=r"schema version 999 .*9\.9\.9.*upgrade aimactl"):
        open_store(tmp_path)


def test_a_file_that_is_not_a_db_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "aimactl.db").write_bytes(b"not a database, just some bytes" * 100)
    with pytest.raises(StoreError, match="cannot open the state DB"):
        open_store(tmp_path)


# -- revisions and events -----------------------------------------------------------------------------------------


def test_revisions_round_trip(store: Store) -> None:
    first = store.begin_revision("default", "apply", MANIFESTS, {"changes": [{"address": "service.chat[0]@local"}]},
                                 source="git:abc123")
    running = store.revision(first)
    assert running["status"] == "running" and running["finished_at"] is None
    assert running["manifests"] == MANIFESTS and running["source"] == "git:abc123"
    assert (running["hostname"], running["pid"]) == (current_host(), os.getpid())
    store.finish_revision(first, "partial", {"failed": ["app.web[0]@local"]}, "1 of 2 changed")
    second = store.begin_revision("default", "destroy", [], None)
    store.begin_revision("other", "reconcile", [], {})
    done = store.revision(first)
    assert (done["status"], done["result"], done["summary"]) == ("partial", {"failed": ["app.web[0]@local"]},
                                                                  "1 of 2 changed")
    assert done["finished_at"] >= done["created_at"]
    assert [r["id"] for r in store.revisions("default")] == [second, first]
    assert [r["id"] for r in store.revisions("default", limit=1)] == [second]
    assert store.revision(12345) is None
    with pytest.raises(UnknownRevision):
        store.finish_revision(12345, "failed", None, "")
    with pytest.raises(StoreError, match="already finished"):
        store.finish_revision(first, "succeeded", None, "")
    with pytest.raises(ValueError, match="kind"):
        store.begin_revision("default", "deploy", [], {})
    with pytest.raises(ValueError, match="manifest"):
        store.begin_revision("default", "apply", [{"file": "a.yaml"}], {})


def test_events_are_newest_first_and_filtered_by_resource(store: Store) -> None:
    rev = store.begin_revision("default", "apply", MANIFESTS, {})
    ids = [store.add_event("default", "service.chat[0]@local", "created", "started", revision_id=rev),
           store.add_event("default", "app.web[0]@local", "failed", "exit 1"),
           store.add_event("default", "service.chat[0]@local", "drift", "image changed"),
           store.add_event("other", "service.chat[0]@local", "deleted", "pruned")]
    assert [e["id"] for e in store.events("default")] == [ids[2], ids[1], ids[0]]
    chat = store.events("default", resource="service.chat[0]@local")
    assert [(e["kind"], e["revision_id"]) for e in chat] == [("drift", None), ("created", rev)]
    assert [e["id"] for e in store.events("default", limit=1)] == [ids[2]]
    assert [e["id"] for e in store.events("default", after_id=ids[1])] == [ids[2]]
    with pytest.raises(sqlite3.IntegrityError):
        store.add_event("default", "x", "created", "", revision_id=999)


def test_one_store_can_be_shared_between_threads(store: Store) -> None:
    def work(n: int) -> None:
        for i in range(25):
            store.add_event("default", f"service.s{n}[0]@local", "created", str(i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.events("default", limit=1000)) == 100


# -- locks --------------------------------------------------------------------------------------------------------


def test_second_acquire_waits_then_names_the_holder_and_release_lets_it_in(store: Store) -> None:
    held = acquire(store, "default", "apply")
    started = time.monotonic()
    with pytest.raises(LockHeld) as info:
        acquire(store, "default", "destroy", wait=0.5, poll=0.05)
    assert time.monotonic() - started >= 0.5
    err = info.value
    assert (err.lock_id, err.pid, err.hostname, err.operation) == (held.lock_id, os.getpid(), current_host(), "apply")
    assert held.holder in str(err) and f"aimactl unlock {held.lock_id} --force" in str(err)
    assert held.release() is True
    with acquire(store, "default", "destroy", wait=0.5) as second:
        assert current_lock(store, "default")["lock_id"] == second.lock_id
    assert current_lock(store, "default") is None
    assert held.release() is False


def test_an_expired_lock_is_taken_over(store: Store) -> None:
    expired = acquire(store, "default", "apply", ttl=timedelta(0))
    assert current_lock(store, "default")["stale"] is True
    taker = acquire(store, "default", "apply")
    assert taker.took_over["lock_id"] == expired.lock_id and "expired" in taker.took_over["stale_reason"]
    assert store.events("default", resource="lock")[0]["kind"] == "lock-taken-over"
    with pytest.raises(LockLost):
        expired.refresh()
    assert expired.release() is False and current_lock(store, "default")["lock_id"] == taker.lock_id


def test_a_lock_of_a_dead_pid_on_this_host_is_taken_over(store: Store) -> None:
    code = ("import os, sys\nfrom pathlib import Path\nfrom aimactl.store import open_store, acquire\n"
            "print(acquire(open_store(Path(sys.argv[1]).parent), 'default', 'apply').lock_id, flush=True)\n"
            "os._exit(0)\n")
    dead_lock = _python(code, str(store.path)).stdout.strip()
    assert current_lock(store, "default")["stale_reason"].startswith("its holder pid")
    lock = acquire(store, "default", "apply", wait=0)
    assert lock.took_over["lock_id"] == dead_lock


def test_a_live_lock_on_another_host_is_judged_by_expiry_only(store: Store) -> None:
    store.db.execute("INSERT INTO locks VALUES ('default', 'feedc0de', 'ops@edge-1', 999999, 'edge-1', "
                     "'2020-01-01T00:00:00+00:00', '2999-01-01T00:00:00+00:00', 'reconcile')")
    assert current_lock(store, "default")["stale"] is False
    with pytest.raises(LockHeld, match="ops@edge-1 .*pid 999999 on edge-1.*aimactl unlock feedc0de --force"):
        acquire(store, "default", "apply")


def test_refresh_extends_and_force_unlock_breaks(store: Store) -> None:
    lock = acquire(store, "default", "apply", ttl=timedelta(minutes=1))
    before = lock.expires_at
    assert lock.refresh(timedelta(hours=1)) > before
    assert current_lock(store, "default")["expires_at"] == lock.expires_at
    assert force_unlock(store, "no-such-lock") is False
    assert force_unlock(store, lock.lock_id) is True
    assert current_lock(store, "default") is None
    assert store.events("default", resource="lock")[0]["kind"] == "lock-broken"
    with pytest.raises(LockLost, match="broken or taken over"):
        lock.refresh()


def test_mark_interrupted_catches_revisions_of_dead_processes(store: Store) -> None:
    code = ("import os, sys\nfrom pathlib import Path\nfrom aimactl.store import open_store, acquire\n"
            "s = open_store(Path(sys.argv[1]).parent)\nacquire(s, 'default', 'apply')\n"
            "print(s.begin_revision('default', 'apply', [], {}), flush=True)\nos._exit(0)\n")
    orphan = int(_python(code, str(store.path)).stdout)
    assert store.revision(orphan)["status"] == "running"
    with acquire(store, "default", "apply"):
        ours = store.begin_revision("default", "apply", MANIFESTS, {})
        assert store.mark_interrupted("default") == [orphan]
        assert store.revision(ours)["status"] == "running"
        assert store.revision(orphan)["status"] == "interrupted"
        store.finish_revision(ours, "succeeded", {}, "ok")
    assert store.mark_interrupted("default") == []


# -- real processes -----------------------------------------------------------------------------------------------

RACER = r"""
import os, sys, time
from pathlib import Path
from aimactl.store import acquire, open_store
store, log, go = open_store(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3])
Path(f"{go}.ready.{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.002)
for _ in range(6):
    with acquire(store, "race", "apply", wait=10, poll=0.002):
        with log.open("a") as f:
            f.write(f"enter {os.getpid()}\n")
        time.sleep(0.01)
        with log.open("a") as f:
            f.write(f"exit {os.getpid()}\n")
    time.sleep(0.005)  # give the other racer a chance, so that the turns interleave
"""


def test_two_processes_racing_for_the_lock_take_turns(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    log, go = tmp_path / "log", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(log), str(go)], cwd=ROOT)
             for _ in range(2)]
    deadline = time.monotonic() + 20
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    go.touch()
    assert [p.wait(timeout=30) for p in procs] == [0, 0]
    words = log.read_text().split()
    pairs = [tuple(words[i:i + 4]) for i in range(0, len(words), 4)]
    assert len(pairs) == 12
    assert all(a == "enter" and c == "exit" and pid == pid2 for a, pid, c, pid2 in pairs)
    assert {pid for _, pid, _, _ in pairs} == {str(p.pid) for p in procs}


WRITER = r"""
import sys
from pathlib import Path
from aimactl.store import open_store
store = open_store(Path(sys.argv[1]))
manifests = [{"file": "stack.yaml", "text": "x" * 4000}]
i = 0
while True:
    rid = store.begin_revision("kill", "apply", manifests, {"n": i})
    store.add_event("kill", "service.chat[0]@local", "created", f"n={i}", revision_id=rid)
    store.finish_revision(rid, "succeeded", {"n": i}, f"rev {i}")
    print(rid, i, flush=True)
    i += 1
"""


def test_kill_9_while_writing_never_corrupts_the_db(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    committed = [tuple(map(int, proc.stdout.readline().split())) for _ in range(60)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    raw = sqlite3.connect(tmp_path / "aimactl.db")
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with open_store(tmp_path) as reopened:
        for rid, n in committed:
            rev = reopened.revision(rid)
            assert (rev["status"], rev["plan"], rev["result"]) == ("succeeded", {"n": n}, {"n": n})
            assert rev["manifests"][0]["text"] == "x" * 4000
        reopened.mark_interrupted("kill")
        assert reopened.query("SELECT COUNT(*) AS n FROM revisions WHERE status = 'running'") == [{"n": 0}]
        assert reopened.query("PRAGMA foreign_key_check") == []


def test_importing_the_package_does_not_import_sqlite_utils() -> None:
    out = _python("import sys, aimactl.store\nprint('sqlite_utils' in sys.modules)")
    assert out.stdout.strip() == "False"
