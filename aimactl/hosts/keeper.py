"""SSH connections kept between commands: aimactl's ControlPersist.

Observing an SSH host costs a connection (key exchange, authentication), a login shell (sshd runs the user's
shell for every command) and a Python start for the helper, each time `aimactl plan` runs. The keeper is a small
background process of the controller's user that holds each host's connection, and on it one helper running
`serve`, for `AIMACTL_SSH_PERSIST` seconds after its last use (default 60; 0 turns it off). A command then sends
its observation batch to the keeper over a unix socket and gets the answer in one round trip.

What it keeps is what a command would open itself, with the same code (`SshConnector`): strict host keys, the
same errors. A kept connection is re-checked against known_hosts before each use, so a key removed from the file
is not trusted on. The observation and, for a host observed through it, the Docker engine's traffic go through
it; every change the helper makes on a host (processes, downloads, the host lock) is made by the command over its
own connection. The socket lives in a 0700 directory of the user (`$XDG_RUNTIME_DIR/aimactl-UID`, else
the temporary directory), named after this aimactl's code, its interpreter and the user's SSH environment; on
Linux the keeper also checks that each caller is the same user. It exits when it was idle for the persist time,
when none of its connections is alive, or when its socket file is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

PERSIST_ENV = "AIMACTL_SSH_PERSIST"
DEFAULT_PERSIST_S = 60.0
START_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 90.0  # a host's batch answers within 60 s (the direct path's limit), or it is unreachable
MAX_REQUEST = 16 * 1024 * 1024


def persist_seconds(environ: Mapping[str, str]) -> float:
    """How long kept connections stay after their last use: AIMACTL_SSH_PERSIST in seconds (0: not kept)."""
    value = environ.get(PERSIST_ENV, "").strip()
    if not value:
        return DEFAULT_PERSIST_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{PERSIST_ENV}={value!r} is not a number of seconds (0 turns kept connections off)") \
            from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{PERSIST_ENV}={value!r} must be 0 or more seconds")
    return seconds


def socket_path(environ: Mapping[str, str]) -> str | None:
    """Where this aimactl's keeper listens, or None when no private directory can be had (then nothing is
    kept). One keeper per code version, interpreter and SSH environment (HOME, SSH_AUTH_SOCK)."""
    if not hasattr(os, "getuid") or not hasattr(socket, "AF_UNIX") or not hasattr(os, "fork"):
        return None  # not a POSIX controller: every command connects itself
    base = environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    directory = os.path.join(base, f"aimactl-{os.getuid()}")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # someone else's, or open to others: a socket there could be impersonated
    return os.path.join(directory, f"keeper-{_code_digest(environ)}.sock")


def _code_digest(environ: Mapping[str, str]) -> str:
    """A digest of what a keeper must share with its callers: its code, the helper it runs, the interpreter and
    the environment an SSH connection is made in."""
    from aimactl.helper import helper_location

    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("keeper.py", "keeperd.py", "ssh.py", "sshconfig.py", "hostkeys.py", "connector.py", "forward.py"):
        with open(os.path.join(here, name), "rb") as handle:
            digest.update(handle.read())
    # The environment (sys.prefix) and the interpreter behind it: `python` and `python3` are one.
    interpreter = (sys.prefix, os.path.realpath(sys.executable))
    for part in (*interpreter, helper_location("/"), environ.get("HOME", ""), environ.get("SSH_AUTH_SOCK", "")):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def keeper_client(environ: Mapping[str, str], persist: float, accept_new: bool) -> KeeperClient | None:
    """A command's way to this user's keeper; None when connections are not kept (`persist` 0) or no private
    socket directory can be had."""
    path = socket_path(environ) if persist > 0 else None
    return KeeperClient(path, persist, accept_new) if path else None


class KeeperClient:
    """A command's way to the keeper: starts it when none listens, then one request per connection. Failures on
    the host's side are raised as a direct connection raises them; None means "reach the host yourself"."""

    def __init__(self, path: str, persist: float, accept_new: bool = False):
        self.path = path
        self.persist = persist
        self.accept_new = accept_new
        self._start_lock = threading.Lock()

    def batch(self, name: str, info: Any, helper: str, calls: list[dict[str, Any]]) -> Any:
        """The helper's batch answer from the Host `name` (`info`: its address, identity_file, known_hosts and
        python) through the keeper. None when the keeper cannot answer (none could be started, or the helper is
        not on the host yet): the caller then goes to the host itself. HostKeyError, HostUnreachable or
        RuntimeFailure (the helper's error) otherwise, as on a direct connection."""
        client = self._connect()
        if client is None:
            return None
        with client:
            try:
                client.settimeout(ANSWER_TIMEOUT_S)
                client.sendall(self._request("batch", name, info, helper, calls=calls))
                line = client.makefile("rb").readline(MAX_REQUEST)
            except OSError:
                return None
        try:
            answer = json.loads(line)
        except ValueError:
            return None  # the keeper went away mid-answer: ask the host directly
        if answer.get("ok"):
            return answer["result"]
        _raise(answer.get("error") or {})
        return None

    def dial(self, name: str, info: Any, helper: str, remote: str) -> KeptStream | None:
        """A byte stream to the unix socket `remote` on the host (its Docker engine) over the kept connection;
        None when the keeper cannot give one. OSError with the host helper's reason when the socket cannot be
        reached there."""
        client = self._connect()
        if client is None:
            return None
        try:
            client.settimeout(ANSWER_TIMEOUT_S)
            client.sendall(self._request("dial", name, info, helper, remote=remote))
            answer = json.loads(_line(client))
        except (OSError, ValueError):
            client.close()
            return None
        if answer.get("ok"):
            client.settimeout(None)
            return KeptStream(client)
        client.close()
        _raise(answer.get("error") or {})
        return None

    def _request(self, op: str, name: str, info: Any, helper: str, **rest: Any) -> bytes:
        host = {"name": name, "address": info.address, "identity_file": info.identity_file,
                "known_hosts": info.known_hosts, "accept_new": self.accept_new}
        request = {"op": op, "host": host, "python": info.python, "helper": helper, "persist": self.persist, **rest}
        return json.dumps(request).encode() + b"\n"

    def _connect(self) -> socket.socket | None:
        """A connection to the keeper, starting one (once per command) when none answers."""
        client = _dial(self.path)
        if client is not None:
            return client
        with self._start_lock:
            client = _dial(self.path)
            if client is not None:
                return client
            if not _start(self.path, self.persist):
                return None
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                client = _dial(self.path)
                if client is not None:
                    return client
                time.sleep(0.01)
        return None


def _raise(error: dict[str, Any]) -> None:
    """A failure the keeper reported, raised as a direct connection raises it: a refused host key, an unreachable
    host, a helper's error, a socket the host's helper could not reach. Returns for what the caller should try on
    its own: no helper on the host yet (the direct path uploads it), or a fault of the keeper itself."""
    from aimactl.hosts.connector import HostUnreachable
    from aimactl.hosts.hostkeys import HostKeyError
    from aimactl.runtimes import RuntimeFailure

    kind, message = str(error.get("kind", "internal")), str(error.get("message", ""))
    if kind == "host-key":
        raise HostKeyError(message)
    if kind == "unreachable":
        raise HostUnreachable(message)
    if kind == "dial":
        raise OSError(message)
    if kind == "helper" and error.get("code") != "helper-missing":
        raise RuntimeFailure(message)


class KeptStream:
    """A stream from the keeper, shaped as the SSH channel that the socket forwarder pumps (hosts/forward.py)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def fileno(self) -> int:
        """For select()."""
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        """Bytes from the host's socket (b"" at the end)."""
        return self.sock.recv(size)

    def sendall(self, data: bytes) -> None:
        """Bytes to the host's socket."""
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        """No more bytes to the host's socket."""
        self.sock.shutdown(socket.SHUT_WR)

    def recv_exit_status(self) -> int:
        """0: a dial that failed was reported before the stream was handed out."""
        return 0

    def close(self) -> None:
        """End the stream."""
        self.sock.close()


def _line(client: socket.socket) -> bytes:
    """One answer line, read byte by byte: what follows it is the stream's, not a buffer's."""
    data = bytearray()
    while not data.endswith(b"\n"):
        byte = client.recv(1)
        if not byte:
            break
        data += byte
        if len(data) > 65536:
            break
    return bytes(data)


def _dial(path: str) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
    except OSError:
        client.close()
        return None
    return client


def _start(path: str, persist: float) -> bool:
    """Start a keeper in the background, detached from this command (its own session, no inherited streams,
    its errors in keeper.log beside the socket)."""
    log = os.path.join(os.path.dirname(path), "keeper.log")
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as errors:
            starter = subprocess.Popen([sys.executable, "-m", "aimactl.hosts.keeper", path, repr(persist)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                       start_new_session=True, close_fds=True)
        return starter.wait(START_TIMEOUT_S) == 0  # it forks the keeper and returns: no zombie left behind
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv: list[str]) -> int:
    """`python -m aimactl.hosts.keeper SOCKET PERSIST`: fork the keeper into the background and return."""
    path, persist = argv[1], float(argv[2])
    if os.fork() != 0:
        return 0
    from aimactl.hosts.keeperd import Keeper

    try:
        Keeper(path, persist).run()
    finally:
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
