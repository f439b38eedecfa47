"""The per-host lock: one controller at a time changes a host, whichever machine it runs on.

The lock is a JSON file on the host itself, `<dataDir>/lock` (holder, pid, hostname, acquired, expiry), taken and
released by the helper's `lock` / `unlock` verbs under an flock, so two controllers racing for it cannot both win.
A lock past its expiry is stale (its controller died) and is taken over. While a command holds its locks a
thread renews them, so a long apply (a large model download) keeps them however long it runs.
"""

from __future__ import annotations

import getpass
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from aimactl.hosts.connector import HelperError, call_helper
from aimactl.runtimes import RuntimeFailure

TTL_S = 300.0
RETRY_S = 1.0


class HostLockError(RuntimeFailure):
    """A host's lock could not be taken; the message names the host and why."""


class HostLockHeld(HostLockError):
    """Another controller holds a host's lock; the message names the host and the holder."""


def lock_path(data_dir: str) -> str:
    """Where a host's lock lives: `<dataDir>/lock`."""
    return posixpath.join(data_dir, "lock")


def holder_name(operation: str, stack: str) -> str:
    """Who is asking, as the other controller will read it: `user@machine (apply of stack S)`."""
    return f"{getpass.getuser()}@{socket.gethostname()} ({operation} of stack {stack})"


class HostLocks:
    """The locks one command holds on its hosts (through `Connections`), renewed until released."""

    def __init__(self, connections: Any, holder: str, ttl: float = TTL_S):
        self.connections = connections
        self.holder = holder
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self.held: list[str] = []
        self.take_over: dict[str, str] = {}
        """Host -> the token of a lock whose holder died on this machine (see `_holder_died`)."""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _call(self, host: str, verb: str) -> Any:
        connector = self.connections.connector(host)
        helper = self.connections.helper_path(host)
        info = self.connections.hosts[host]  # dataDir `~` is resolved once the host is connected
        payload = {"path": lock_path(info.data_dir), "token": self.token, "holder": self.holder,
                   "pid": os.getpid(), "hostname": socket.gethostname(), "ttl": self.ttl,
                   "take_over": self.take_over.get(host)}
        return call_helper(connector, info.python, helper, verb, payload, timeout=60)

    def acquire(self, host: str, wait: float = 0.0) -> None:
        """Take the host's lock, retrying for up to `wait` seconds while another controller holds it."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._call(host, "lock")
                self.held.append(host)
                return
            except HelperError as exc:
                if exc.code != "locked":
                    raise HostLockError(f"host {host}: cannot take its lock: {exc.message}") from None
                if host not in self.take_over and self._holder_died(host):
                    continue
                if time.monotonic() >= deadline:
                    raise HostLockHeld(f"host {host} is locked by another controller: {exc.message}") from None
            except RuntimeFailure as exc:
                raise HostLockError(f"host {host}: cannot take its lock: {exc}") from None
            time.sleep(RETRY_S)

    def _holder_died(self, host: str) -> bool:
        """True when the lock on `host` was taken by a controller on this machine whose process is gone (a
        run that lost the host mid-way could not release it): that lock may be taken over at once instead
        of after its expiry."""
        import json

        info = self.connections.hosts[host]
        try:
            current = json.loads(self.connections.connector(host).get(lock_path(info.data_dir)))
            pid, token = int(current["pid"]), str(current["token"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeFailure):
            return False
        if current.get("hostname") != socket.gethostname() or pid == os.getpid() or _alive(pid):
            return False
        self.take_over[host] = token
        return True

    def start_renewing(self) -> None:
        """Renew every held lock each third of its lifetime, in a background thread."""
        def renew() -> None:
            while not self._stop.wait(self.ttl / 3):
                for host in list(self.held):
                    try:
                        self._call(host, "lock")
                    except (RuntimeFailure, HelperError):
                        pass  # the host went away: its steps fail on their own; the lock expires there

        self._renewer = threading.Thread(target=renew, name="host-locks", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Stop renewing and release every held lock (a host that cannot be reached keeps it until expiry)."""
        self._stop.set()
        for host in self.held:
            try:
                self._call(host, "unlock")
            except (RuntimeFailure, HelperError):
                pass  # lost mid-run (its connection closed before the helper answered): it expires there
        self.held.clear()


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (the state store's test: zombies are dead)."""
    from aimactl.store.db import pid_alive

    return pid_alive(pid)


@contextmanager
def host_locks(connections: Any, hosts: Iterable[str], holder: str, wait: float = 0.0,
               ttl: float = TTL_S) -> Iterator[HostLocks]:
    """Hold the lock of every host in `hosts` (in name order, so two controllers never deadlock) for the block.

    Raises HostLockHeld naming the host and the other holder when one cannot be taken within `wait` seconds;
    the locks already taken are released again.
    """
    locks = HostLocks(connections, holder, ttl)
    try:
        for host in sorted(set(hosts)):
            locks.acquire(host, wait)
        locks.start_renewing()
        yield locks
    finally:
        locks.release()
