"""The keeper process (see keeper.py): holds SSH connections, a serving helper per host and a Docker stream opened
ahead, and answers the commands' requests on its unix socket.

Each request is one JSON line. `{"op": "batch", "host": {...}, "python", "helper", "calls", "persist"}` is answered
by one line: `{"ok": true, "result": <the helper's batch result>}` or `{"ok": false, "error": {"kind", "code",
"message"}}`. `{"op": "dial", "host", "python", "helper", "remote", "persist"}` is answered by `{"ok": true}` and
the connection then carries the bytes of the host's unix socket `remote` (its Docker engine), or by a failure line.
Connections are made by `SshConnector`, so host keys, proxies and error messages are those of a direct connection.
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
from aimactl.hosts.forward import pump
from aimactl.hosts.hostkeys import HostKeyError, still_trusted
from aimactl.hosts.keeper import ANSWER_TIMEOUT_S, MAX_REQUEST
from aimactl.hosts.ssh import SshConnector

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


class DialError(Exception):
    """The host's helper could not connect to the unix socket (its reason, from the helper's stderr)."""


class Dialer:
    """Streams to one unix socket on a host (its Docker engine), each a helper `dial` on the kept connection. One
    is opened ahead for the next caller, so that a command's Docker reads start without a login shell."""

    def __init__(self, connector: SshConnector, python: str, helper: str, remote: str):
        self.connector, self.argv = connector, [python, helper, "dial", remote, "--ready"]
        self.lock = threading.Lock()
        self.spare: Any = None

    def take(self) -> Any:
        """A connected stream (the spare when it is still good, else a new one); the next spare opens behind."""
        with self.lock:
            spare, self.spare = self.spare, None
        if spare is not None and (spare.closed or spare.exit_status_ready() or spare.recv_ready()):
            spare.close()  # the engine or the host ended it while it waited
            spare = None
        channel = spare or self._open()
        threading.Thread(target=self._refill, daemon=True).start()
        return channel

    def _open(self) -> Any:
        """Start `dial --ready` and wait for its `ready` (or its reason for failing)."""
        channel = self.connector.exec(self.argv, ANSWER_TIMEOUT_S)
        errors = channel.makefile_stderr("rb")
        try:
            said = errors.readline()
        except OSError:
            said = b""
        if said.strip() != b"ready":
            reason = (said + errors.read()).decode("utf-8", "replace").strip()
            channel.close()
            raise DialError(reason or f"the helper's dial on {self.connector.name} ended")
        channel.settimeout(None)
        return channel

    def _refill(self) -> None:
        try:
            channel = self._open()
        except Exception:  # the next take opens its own and reports why
            return
        with self.lock:
            if self.spare is None:
                self.spare, channel = channel, None
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Close the spare."""
        with self.lock:
            if self.spare is not None:
                self.spare.close()
            self.spare = None


class Keeper:
    """The keeper's state: connections by everything that defines one, serving helpers by connection + helper."""

    def __init__(self, path: str, persist: float):
        self.path = path
        self.persist = persist
        self.lock = threading.Lock()
        self.connectors: dict[tuple[Any, ...], SshConnector] = {}
        self.served: dict[tuple[Any, ...], Served] = {}
        self.dialers: dict[tuple[Any, ...], Dialer] = {}
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
            if _inode(self.path) == identity:
                os.unlink(self.path)  # ours still: the next command starts a fresh keeper at once
            server.close()
            self._close_all()

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
                request = _request(line)
                if request.get("op") == "dial":
                    self._stream(client, request)
                    return
                answer = self._answer(request)
                client.sendall(json.dumps(answer).encode() + b"\n")
        except OSError as exc:
            log.warning("a caller went away: %s", exc)
        finally:
            with self.lock:
                self.busy -= 1
                self.last_used = time.monotonic()

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """One batch through the host's serving helper, as an answer line."""
        try:
            if request.get("op") != "batch":
                return _failure("internal", f"unknown request {request.get('op')!r}")
            self.persist = float(request.get("persist", self.persist))  # the latest caller's wish counts
            key, connector = self._connection(request["host"])
            python, helper = str(request["python"]), str(request["helper"])
            with self.lock:
                served = self.served.setdefault((key, python, helper), Served(connector, python, helper))
            answer = served.ask({"calls": request["calls"]})
        except Exception as exc:
            return _failed(exc)
        if answer.get("ok"):
            return {"ok": True, "result": answer.get("result")}
        error = answer.get("error") or {}
        return _failure("helper", str(error.get("message", "")), str(error.get("code", "error")))

    def _stream(self, client: socket.socket, request: dict[str, Any]) -> None:
        """A unix socket on the host (its Docker engine) as the rest of this client connection: one answer line,
        then the bytes both ways until either side ends."""
        try:
            self.persist = float(request.get("persist", self.persist))
            key, connector = self._connection(request["host"])
            python, helper, remote = str(request["python"]), str(request["helper"]), str(request["remote"])
            with self.lock:
                dialer = self.dialers.setdefault((key, python, helper, remote),
                                                 Dialer(connector, python, helper, remote))
            channel = dialer.take()
        except DialError as exc:
            client.sendall(json.dumps(_failure("dial", str(exc))).encode() + b"\n")
            return
        except Exception as exc:
            client.sendall(json.dumps(_failed(exc)).encode() + b"\n")
            return
        try:
            client.sendall(b'{"ok": true}\n')
            client.settimeout(None)
            pump(client, channel)
        finally:
            channel.close()

    def _connection(self, host: dict[str, Any]) -> tuple[tuple[Any, ...], SshConnector]:
        """The kept connection for this Host (made on first use), checked against known_hosts before it is used
        again: a key no longer there closes it, and reconnecting applies the host key policy."""
        fresh = SshConnector(str(host["name"]), str(host["address"]), host.get("identity_file"),
                             host.get("known_hosts"), bool(host.get("accept_new")))
        key = (fresh.name, fresh.address, fresh.target, fresh.known_hosts, fresh.accept_new)
        with self.lock:
            connector = self.connectors.setdefault(key, fresh)
        if not still_trusted(connector):
            with self.lock:
                for user in [*self.served.values(), *self.dialers.values()]:
                    if user.connector is connector:
                        user.close()
            connector.close()
        return key, connector

    def _close_all(self) -> None:
        with self.lock:
            for closable in [*self.served.values(), *self.dialers.values(), *self.connectors.values()]:
                try:
                    closable.close()
                except Exception:  # a connection that broke meanwhile: nothing left to close
                    log.debug("closing failed", exc_info=True)


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


def _request(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        return {}
    return request if isinstance(request, dict) else {}


def _failed(exc: Exception) -> dict[str, Any]:
    """An exception as an answer line: a refused key, an unreachable host, or (a bug) internal."""
    if isinstance(exc, HostKeyError):
        return _failure("host-key", str(exc))
    if isinstance(exc, HostUnreachable):
        return _failure("unreachable", str(exc))
    log.exception("request failed")  # the caller goes to the host itself
    return _failure("internal", f"{type(exc).__name__}: {exc}")


def _failure(kind: str, message: str, code: str = "") -> dict[str, Any]:
    return {"ok": False, "error": {"kind": kind, "message": message, "code": code}}
