"""SSH hosts: the connector protocol over one paramiko connection per host, with strict host key checking.

One `SshConnector` holds one SSH transport for the length of a command (commands, SFTP and the Docker socket
forwarder all open channels on it) and sends keepalives. Host keys are checked against a known_hosts file like
OpenSSH's `StrictHostKeyChecking yes`; `accept_new` behaves as `accept-new` (an unknown key is recorded, a
changed key is never accepted). Commands are argv lists joined with `shlex.quote` per argument, because the
remote side of an exec channel is a shell. paramiko is imported only when a connection is made.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from aimactl.hosts import sshconfig
from aimactl.hosts.connector import Completed, HostUnreachable, at_home
from aimactl.hosts.hostkeys import HostKeyError, UnknownKeyPolicy, fingerprint

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 15
ADDRESS_RE = re.compile(r"ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/@]+)(?::(?P<port>\d{1,5}))?")


def address_parts(address: str) -> tuple[str | None, str, int | None]:
    """`ssh://user@host:port` as (user, host, port), None for what the address leaves out; ValueError when
    malformed."""
    match = ADDRESS_RE.fullmatch(address)
    if not match:
        raise ValueError(f"{address!r} is not an ssh://user@host[:port] address")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{address!r}: port {port} is out of range")
    return match["user"], match["host"].strip("[]"), port


def import_paramiko() -> Any:
    """paramiko, imported on first use. paramiko imports `invoke` (0.2-0.5 s: unittest.mock and more) only to run
    `Match exec` lines of an ssh_config, which aimactl does not follow: it is kept out while paramiko loads (later
    imports of invoke still work), and the import waits while another thread hides paramiko (the Docker SDK's)."""
    from aimactl.imports import without

    with without("invoke"):
        import paramiko
    return paramiko


def command_line(argv: Sequence[str]) -> str:
    """One shell-safe command line: every argument quoted on its own, so no value is ever interpreted."""
    if not argv:
        raise ValueError("empty command")
    return " ".join(shlex.quote(str(arg)) for arg in argv)


class SshConnector:
    """One SSH host reached through one reused paramiko connection (opened on first use, thread-safe)."""

    def __init__(self, name: str, address: str, identity_file: str | None = None, known_hosts: str | None = None,
                 accept_new: bool = False, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.name = name
        self.address = address
        self.identity_file = os.path.expanduser(identity_file) if identity_file else None
        # The address's host may be an alias of ~/.ssh/config: its HostName, User, Port, IdentityFile,
        # UserKnownHostsFile and ProxyCommand/ProxyJump fill in what the manifest leaves out.
        try:
            user, alias, port = address_parts(address)
            options = sshconfig.resolve(alias, user, port, self.identity_file, sshconfig.read_config())
        except ValueError as exc:
            raise HostUnreachable(f"host {name} ({address}) is unreachable: {exc}") from None
        self.target = options
        self.identity_files = options.identity_files
        self.proxy_command = options.proxy_command
        self.known_hosts = os.path.expanduser(known_hosts or options.known_hosts or DEFAULT_KNOWN_HOSTS)
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._sftp: Any = None
        self._home: str | None = None
        self._lock = threading.RLock()
        self._sftp_lock = threading.Lock()
        # Channels opened on this connection, by kind ("exec", "sftp"): each costs the host a login-shell start
        # (sshd runs the user's shell for every exec and subsystem), so observation keeps them to one exec.
        self.opened = {"exec": 0, "sftp": 0}

    # -- the connection ---------------------------------------------------------------------------------------

    def transport(self) -> Any:
        """The live paramiko Transport, connecting (or reconnecting after a drop) when needed."""
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                self._drop()
            self._client = self._connect()
            transport = self._client.get_transport()
            transport.set_keepalive(KEEPALIVE_S)
            _tcp_keepalive(transport.sock)
            return transport

    def alive(self) -> bool:
        """Whether the connection is open and active (nothing is connected by asking)."""
        with self._lock:
            transport = self._client.get_transport() if self._client is not None else None
            return transport is not None and transport.is_active()

    def server_key(self) -> Any:
        """The host key the open connection was made with, or None when not connected."""
        with self._lock:
            return self._client.get_transport().get_remote_server_key() if self.alive() else None

    def _connect(self) -> Any:
        """Open and authenticate the connection; every failure becomes HostUnreachable naming host and reason."""
        import logging

        paramiko = import_paramiko()
        # Failures are reported as one line each; paramiko's own log would add tracebacks on stderr.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            try:
                client.load_host_keys(self.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise self._unreachable(f"cannot read known_hosts file {self.known_hosts}: {exc}") from None
        client.set_missing_host_key_policy(cast(Any, UnknownKeyPolicy(self)))  # duck-typed: paramiko is lazy
        target = self.target
        started = time.monotonic()
        try:
            sock = paramiko.ProxyCommand(self.proxy_command) if self.proxy_command else None
            client.connect(target.hostname, port=target.port, username=target.user,
                           key_filename=list(self.identity_files) or None, timeout=self.connect_timeout,
                           banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout, allow_agent=True,
                           look_for_keys=not self.identity_files, sock=sock)
        except HostKeyError:
            client.close()
            raise
        except BaseException as exc:
            client.close()
            raise self._connect_error(exc, time.monotonic() - started) from None
        return client

    def _connect_error(self, exc: BaseException, elapsed: float) -> HostUnreachable:
        """A connection failure as one line: timeout, refused, authentication, changed host key ..."""
        paramiko = import_paramiko()

        if isinstance(exc, paramiko.BadHostKeyException):
            return HostKeyError(
                f"host {self.name} ({self.where()}): the host key CHANGED: known_hosts {self.known_hosts} has "
                f"{fingerprint(exc.expected_key)}, the host offers {fingerprint(exc.key)}. Refusing to connect: "
                "this may be an attack, or the host was reinstalled. If you are sure, remove the old line "
                f"(ssh-keygen -R '{self.target.known_hosts_name}' -f {self.known_hosts}) and accept the new key.")
        if isinstance(exc, paramiko.PasswordRequiredException):
            reason = f"identity file {self._identities()} is encrypted: load it into ssh-agent"
        elif isinstance(exc, paramiko.AuthenticationException):
            keys = f"identity file {self._identities()}" if self.identity_files else "ssh-agent and ~/.ssh/id_* keys"
            reason = f"authentication failed as {self.target.user} (tried {keys})"
        elif isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            causes = list(exc.errors.values())
            refused = causes and all(isinstance(c, ConnectionRefusedError) for c in causes)
            reason = "connection refused" if refused else "cannot connect: " + "; ".join(map(str, causes))
        elif isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(exc, (socket.timeout, TimeoutError)):
            reason = f"connection timed out after {self.connect_timeout:g} s"
        elif isinstance(exc, socket.gaierror):
            reason = f"cannot resolve {self.target.hostname}: {exc.strerror}"
        elif isinstance(exc, FileNotFoundError):
            reason = f"identity file {self._identities()} not found"
        elif isinstance(exc, (OSError, EOFError, paramiko.SSHException)) and elapsed >= self.connect_timeout * 0.9:
            reason = f"connection timed out after {self.connect_timeout:g} s (no SSH handshake)"
        elif isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
            reason = f"SSH handshake failed: {exc or type(exc).__name__}"
        else:
            raise exc
        return self._unreachable(reason)

    def where(self) -> str:
        """`user@host:port` as connected (and whether through a ProxyCommand), for messages."""
        via = " through its ProxyCommand" if self.proxy_command else ""
        return f"{self.target.user}@{self.target.hostname}:{self.target.port}{via}"

    def _identities(self) -> str:
        return ", ".join(self.identity_files)

    def _unreachable(self, reason: str) -> HostUnreachable:
        return HostUnreachable(f"host {self.name} ({self.where()}) is unreachable: {reason}")

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._sftp = None

    # -- the connector protocol -------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], stdin: bytes = b"",
            timeout: float | None = None) -> tuple[Iterator[str], Callable[[], Completed]]:
        """Start `argv` on the host (each argument shell-quoted); stdout lines stream while it runs."""
        channel = self.exec(argv, timeout)
        try:
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
        except OSError as exc:
            channel.close()
            raise self._unreachable(f"lost the connection while sending input: {exc}") from None
        stdout, stderr = channel.makefile("rb"), channel.makefile_stderr("rb")

        def lines() -> Iterator[str]:
            try:
                for raw in stdout:
                    yield raw.decode("utf-8", "replace")
            except TimeoutError:
                channel.close()
                raise self._unreachable(f"{argv[0]} gave no output for {timeout:g} s") from None

        def wait() -> Completed:
            if not channel.status_event.wait(timeout):
                channel.close()
                raise self._unreachable(f"{argv[0]} did not finish within {timeout:g} s")
            code = channel.recv_exit_status()
            err = stderr.read().decode("utf-8", "replace")
            channel.close()
            return Completed(code, err if code != -1 else err + "\nthe SSH connection closed before the end")

        return lines(), wait

    def exec(self, argv: Sequence[str], timeout: float | None = None) -> Any:
        """Open a channel running `argv` (quoted) and return it: for byte streams such as the Docker socket."""
        paramiko = import_paramiko()

        line = command_line(argv)
        for attempt in (1, 2):
            transport = self.transport()
            try:
                channel = transport.open_session(timeout=self.connect_timeout)
                channel.settimeout(timeout)
                channel.exec_command(line)
                self._count("exec")
                return channel
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if attempt == 2 or transport.is_active():
                    raise self._unreachable(f"cannot start a command: {exc}") from None
        raise AssertionError("unreachable")

    def put(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """Write atomically over SFTP: a temporary file beside the target, then a POSIX rename."""
        target = self.expand(path)
        tmp = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}.{uuid.uuid4().hex[:8]}")
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                self._makedirs(sftp, posixpath.dirname(target))
                with sftp.open(tmp, "wb") as handle:
                    handle.set_pipelined(True)
                    handle.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, target)
            except OSError as exc:
                try:
                    sftp.remove(tmp)
                except OSError:
                    pass
                raise OSError(exc.errno, f"host {self.name}: cannot write {target}: {exc.strerror or exc}") from None

    def get(self, path: str) -> bytes:
        """Read a file over SFTP; a missing file raises FileNotFoundError."""
        with self._sftp_lock:
            with self._sftp_client().open(self.expand(path), "rb") as handle:
                handle.prefetch()
                data: bytes = handle.read()
                return data

    def exists(self, path: str) -> bool:
        """Whether `path` exists on the host (one SFTP stat)."""
        with self._sftp_lock:
            try:
                self._sftp_client().stat(self.expand(path))
            except FileNotFoundError:
                return False
            return True

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        with self._lock:
            self._drop()

    # -- paths ------------------------------------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        with self._lock:
            self.opened[kind] += 1

    @property
    def knows_home(self) -> bool:
        """Whether the home is known already (`expand` then asks the host nothing)."""
        return self._home is not None

    def learn_home(self, home: str) -> None:
        """Take the home directory from an answer of the host's helper, sparing the SFTP question of `home`."""
        if self._home is None and home.startswith("/"):
            self._home = home

    def home(self) -> str:
        """The login user's home directory on the host (asked once per connection, unless already learned)."""
        if self._home is None:
            with self._sftp_lock:
                self._home = str(self._sftp_client().normalize("."))
        return self._home

    def expand(self, path: str) -> str:
        """`~` and `~/...` resolved against the remote home; other paths unchanged."""
        return at_home(path, self.home()) if path[:2] in ("~", "~/") else path

    def _sftp_client(self) -> Any:
        """The connection's SFTP session (callers hold `_sftp_lock`)."""
        transport = self.transport()
        if self._sftp is None or self._sftp.sock.closed or not transport.is_active():
            paramiko = import_paramiko()

            try:
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise self._unreachable(f"cannot open SFTP: {exc}") from None
            self._count("sftp")
        return self._sftp

    @staticmethod
    def _makedirs(sftp: Any, directory: str) -> None:
        """mkdir -p over SFTP (directories created 0700: they hold caches and process state)."""
        missing = []
        while directory not in ("", "/"):
            try:
                sftp.stat(directory)
                break
            except FileNotFoundError:
                missing.append(directory)
                directory = posixpath.dirname(directory)
        for path in reversed(missing):
            try:
                sftp.mkdir(path, 0o700)
            except OSError:
                sftp.stat(path)  # created meanwhile by another thread or command: fine; otherwise raise


def _tcp_keepalive(sock: Any) -> None:
    """Let the kernel notice a host that vanished without closing (power loss, partition) within about 30 s:
    paramiko's keepalives ask for no reply, so without this a read from a dead host would wait forever."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", KEEPALIVE_S), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a proxy): paramiko's keepalive alone
