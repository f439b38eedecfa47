"""The keeper process (see keeper.py): holds SSH connections and a serving helper per host, answers batches.

Each request on the unix socket is one JSON line, `{"op": "batch", "host": {...}, "python", "helper", "calls"}`,
answered by one line: `{"ok": true, "result": <the helper's batch result>}` or `{"ok": false, "error": {"kind",
"code", "message"}}`. Connections are made by `SshConnector`, so host keys, proxies and error messages are those
of a direct connection.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from typing import Any

from aimactl.helper import MISSING, bootstrap_argv
from aimactl.hosts.connector import HostUnreachable, no_answer
from aimactl.hosts.keeper import ANSWER_TIMEOUT_S, MAX_REQUEST
from aimactl.hosts.ssh import HostKeyError, SshConnector, import_paramiko

log = logging.getLogger("aimactl.keeper")
TICK_S = 1.0
ORPHAN_S = 5.0  # a keeper whose connections all died exits this long after its last request


class Served:
    """One helper running `serve` on a kept connection: requests go one at a time, a dead one is restarted."""

    def __init__(self, connector: SshConnector, python: str, helper: str):
        self.connector, self.python, self.helper = connector, python, helper
        self.lock = threading.Lock()
        self.channel: Any = None
        self.reader: Any = None

    def ask(self, params: dict[str, Any]) -> dict[str, Any]:
        """The helper's answer line for one batch, starting (or restarting) the serving helper as needed. A
        helper that ends without answering is answered as the direct path would (`no-answer`, with its exit
        status and stderr); one that had served before gets one fresh start first (the host may have ended it)."""
        line = json.dumps({"verb": "batch", "params": params}).encode() + b"\n"
        with self.lock:
            while True:
                fresh = self.channel is None
                if fresh:
                    self.channel = self.connector.exec(bootstrap_argv(self.python, self.helper, "serve"),
                                                       ANSWER_TIMEOUT_S)
                    self.reader = self.channel.makefile("rb")
                try:
                    self.channel.sendall(line)
                    raw = self.reader.readline()
                except (OSError, EOFError) as exc:
                    self.close()
                    if fresh:
                        raise HostUnreachable(f"host {self.connector.name}: the helper gave no answer: {exc}") \
                            from None
                    continue
                if raw:
                    answer: dict[str, Any] = json.loads(raw)
                    if not answer.get("ok") and (answer.get("error") or {}).get("code") == MISSING:
                        self.close()  # the bootstrap found no helper and exited
                    return answer
                ended = self._ended()
                if fresh:
                    return ended

    def _ended(self) -> dict[str, Any]:
        """The answer for a helper that ended without one: its exit status and the end of its stderr."""
        channel = self.channel
        code = channel.recv_exit_status() if channel.status_event.wait(10) else -1
        err = channel.makefile_stderr("rb").read().decode("utf-8", "replace")
        self.close()
        return {"ok": False, "error": {"code": "no-answer", "message": no_answer(self.connector.name, code, err)}}

    def close(self) -> None:
        """End the serving helper (its stdin closes, it exits)."""
        if self.channel is not None:
            self.channel.close()
        self.channel = self.reader = None


class Keeper:
    """The keeper's state: connections by everything that defines one, serving helpers by connection + helper."""

    def __init__(self, path: str, persist: float):
        self.path = path
        self.persist = persist
        self.lock = threading.Lock()
        self.connectors: dict[tuple[Any, ...], SshConnector] = {}
        self.served: dict[tuple[Any, ...], Served] = {}
        self.busy = 0
        self.last_used = time.monotonic()

    def run(self) -> None:
        """Listen until idle for the persist time, orphaned, or the socket file is gone."""
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        server = self._listen()
        if server is None:
            return
        identity = os.stat(self.path).st_ino
        server.settimeout(TICK_S)
        try:
            while not self._done(identity):
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                with self.lock:
                    self.busy += 1
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()
        finally:
            server.close()
            self._close_all()
            if _inode(self.path) == identity:
                os.unlink(self.path)  # ours still: the next command starts a fresh keeper instead of timing out

    def _listen(self) -> socket.socket | None:
        """Bind the socket (0600); None when another keeper already answers there."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
            return None  # another command started one first
        except OSError:
            pass
        finally:
            probe.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(self.path)
        finally:
            os.umask(old)
        server.listen(64)
        return server

    def _done(self, identity: int) -> bool:
        with self.lock:
            if self.busy:
                return False
            idle = time.monotonic() - self.last_used
            alive = any(c.alive() for c in self.connectors.values())
        replaced = _inode(self.path) != identity
        return replaced or idle > self.persist or (not alive and idle > ORPHAN_S)

    def _serve(self, client: socket.socket) -> None:
        """Answer one request on one client connection."""
        try:
            with client:
                client.settimeout(ANSWER_TIMEOUT_S)
                if not _same_user(client):
                    return
                line = client.makefile("rb").readline(MAX_REQUEST)
                answer = self._answer(line)
                client.sendall(json.dumps(answer).encode() + b"\n")
        except OSError as exc:
            log.warning("a caller went away: %s", exc)
        finally:
            with self.lock:
                self.busy -= 1
                self.last_used = time.monotonic()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if request.get("op") != "batch":
                return _failure("internal", f"unknown request {request.get('op')!r}")
            self.persist = float(request.get("persist", self.persist))  # the latest caller's wish counts
            served = self._served(request["host"], str(request["python"]), str(request["helper"]))
            answer = served.ask({"calls": request["calls"]})
        except HostKeyError as exc:
            return _failure("host-key", str(exc))
        except HostUnreachable as exc:
            return _failure("unreachable", str(exc))
        except Exception as exc:  # a bug here must not end the keeper; the caller goes to the host itself
            log.exception("request failed")
            return _failure("internal", f"{type(exc).__name__}: {exc}")
        if answer.get("ok"):
            return {"ok": True, "result": answer.get("result")}
        error = answer.get("error") or {}
        return _failure("helper", str(error.get("message", "")), str(error.get("code", "error")))

    def _served(self, host: dict[str, Any], python: str, helper: str) -> Served:
        """The serving helper for this host, its connection checked against known_hosts (or made)."""
        fresh = SshConnector(str(host["name"]), str(host["address"]), host.get("identity_file"),
                             host.get("known_hosts"), bool(host.get("accept_new")))
        key = (fresh.name, fresh.address, fresh.target, fresh.known_hosts, fresh.accept_new)
        with self.lock:
            connector = self.connectors.setdefault(key, fresh)
            served = self.served.setdefault((key, python, helper), Served(connector, python, helper))
        if not still_trusted(connector):
            with self.lock:
                for other in self.served.values():
                    if other.connector is connector:
                        other.close()
            connector.close()  # the next use connects afresh, and the host key policy decides
        return served

    def _close_all(self) -> None:
        with self.lock:
            for served in self.served.values():
                served.close()
            for connector in self.connectors.values():
                connector.close()


def still_trusted(connector: SshConnector) -> bool:
    """Whether a kept connection's host key is still the one known_hosts has for that host (True when it is not
    connected: connecting checks the key anyway)."""
    key = connector.server_key()
    if key is None:
        return True
    paramiko = import_paramiko()
    known = paramiko.HostKeys()
    try:
        known.load(connector.known_hosts)
    except (OSError, paramiko.SSHException):
        return False
    entry = known.lookup(connector.target.known_hosts_name)
    return entry is not None and entry.get(key.get_name()) == key


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _same_user(client: socket.socket) -> bool:
    """On Linux, only the keeper's own user may use it (elsewhere the 0700 directory alone keeps others out)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True
    credentials = client.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid == os.getuid()


def _failure(kind: str, message: str, code: str = "") -> dict[str, Any]:
    return {"ok": False, "error": {"kind": kind, "message": message, "code": code}}
