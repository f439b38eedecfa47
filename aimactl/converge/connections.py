"""How a command reaches its hosts: one connector per host (local, or one reused SSH connection), the helper
uploaded once, and the runtimes (Docker through the engine's socket, forwarded for SSH hosts; native processes
through the helper) built on them.

`Connections` lives for one command (or one reconcile pass); the SSH connections of an apply's preview plan are
parked for the plan that runs under the lock, so each host sees one login per command.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aimactl.core.desired import HostInfo
from aimactl.helper import helper_location
from aimactl.hosts.connector import Connector, HostUnreachable, at_home
from aimactl.runtimes import Runtime, RuntimeFailure
from aimactl.runtimes.docker import DockerRuntime
from aimactl.runtimes.engine_api import DEFAULT_ENDPOINT, docker_endpoint
from aimactl.runtimes.process import ProcessRuntime

if TYPE_CHECKING:
    from aimactl.hosts.forward import SocketForwarder
    from aimactl.hosts.keeper import KeeperClient
    from aimactl.hosts.ssh import SshConnector


ENGINE_PROGRAMS = ("llama-server", "vllm", "ollama", "text-generation-launcher")
ENGINE_MODULES = ("llama_cpp", "vllm", "sglang")


def _python_modules(python: str) -> frozenset[str] | None:
    """Which engine modules the host's python can import (one short subprocess, no shell)."""
    import subprocess

    code = "import importlib.util,sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    try:
        out = subprocess.run([python, "-c", code, *ENGINE_MODULES], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return frozenset(out.stdout.split()) if out.returncode == 0 else None


def resolve_hosts(hosts: Mapping[str, HostInfo], engine_facts: bool = True) -> dict[str, HostInfo]:
    """Host facts for planning: `~` in data dirs expanded and, when native engines are wanted (`engine_facts`),
    which engine programs and modules the local host has (a subprocess, so only then)."""
    import shutil

    out = {}
    for name, info in hosts.items():
        if info.address == "local":
            info = dataclasses.replace(info, data_dir=os.path.expanduser(info.data_dir))
            if engine_facts:
                programs = frozenset(p for p in ENGINE_PROGRAMS if shutil.which(p))
                info = dataclasses.replace(info, executables=programs,
                                           python_modules=_python_modules(os.path.expanduser(info.python)))
        out[name] = info
    return out


# SSH connections handed from one Connections to the next of the same command (apply plans twice: a preview,
# then under the stack lock), so that a command connects once per host. Keyed by all that defines a connection.
_PARKED: dict[tuple[Any, ...], tuple[SshConnector, str | None]] = {}
_PARKED_LOCK = threading.Lock()


def _close_parked() -> None:
    with _PARKED_LOCK:
        for connector, _ in _PARKED.values():
            connector.close()
        _PARKED.clear()


class Connections:
    """One connector and one set of runtimes per host for the length of a command.

    SSH hosts get one `SshConnector` each (one connection, opened on first use), the helper uploaded once under
    `<dataDir>/helper/` and their Docker engine forwarded to a private local socket. `~` in an SSH host's dataDir
    is resolved against the remote home when the host is first reached, in `hosts` too.
    """

    def __init__(self, hosts: Mapping[str, HostInfo], environ: Mapping[str, str], accept_new_host_keys: bool = False,
                 persist: float = 0.0):
        self.hosts = dict(hosts)
        self.environ = environ
        self.accept_new_host_keys = accept_new_host_keys
        self.persist = persist  # > 0: observe SSH hosts through the keeper's kept connections (hosts/keeper.py)
        self._keeper: KeeperClient | None = None
        self._homes: dict[str, str] = {}  # SSH hosts' home directories, told by their helpers
        self._kept: set[str] = set()  # SSH hosts observed through the keeper
        self._runtimes: dict[tuple[str, str], Any] = {}
        self._connectors: dict[str, SshConnector] = {}
        self._helpers: dict[str, str] = {}
        self._parked_helpers: dict[str, str] = {}
        self._sockets: dict[str, bool] = {}  # whether an SSH host's Docker socket exists, told by its batch
        self._forwarders: dict[str, SocketForwarder] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.RLock] = {}

    def connector(self, host: str) -> Connector:
        """How the host is reached: the local connector, or the host's SSH connection (connected here, so a
        host that cannot be reached raises HostUnreachable naming it and the reason)."""
        if self.hosts[host].address == "local":
            from aimactl.hosts.local import LocalConnector

            return LocalConnector()
        connector = self._ssh_connector(host)
        info = self.hosts[host]
        if info.data_dir.startswith("~") or info.python.startswith("~/"):
            # One SFTP question unless the host's helper already told the home (observation's batch does).
            self._at_home(host, connector.home())
        helper = self._parked_helpers.pop(host, None)
        if helper and posixpath.dirname(posixpath.dirname(helper)) == self.hosts[host].data_dir:
            self._helpers.setdefault(host, helper)  # uploaded (or found) earlier in this command
        return connector

    def _ssh_connector(self, host: str) -> SshConnector:
        """An SSH host's connection (the one parked by this command's previous Connections, or a new one),
        connected; `~` in the host's paths is left as it is."""
        info = self.hosts[host]
        with self._lock:
            if host not in self._connectors:
                from aimactl.hosts.ssh import SshConnector

                with _PARKED_LOCK:
                    parked, helper = _PARKED.pop(self._ssh_key(host), (None, None))
                self._connectors[host] = parked or SshConnector(host, info.address, info.identity_file,
                                                                info.known_hosts, self.accept_new_host_keys)
                if host in self._homes:
                    self._connectors[host].learn_home(self._homes[host])
                if helper:
                    self._parked_helpers[host] = helper
            connector = self._connectors[host]
        connector.transport()
        return connector

    def _ssh_key(self, host: str) -> tuple[Any, ...]:
        info = self.hosts[host]
        return host, info.address, info.identity_file, info.known_hosts, self.accept_new_host_keys

    def ssh(self, host: str) -> SshConnector:
        """The SSH connection of an SSH host (connected)."""
        self.connector(host)
        return self._connectors[host]

    def helper_path(self, host: str) -> str:
        """Where the helper script is on the host: the packaged file locally; on an SSH host
        `<dataDir>/helper/aimahelper-<sha256[:12]>.py`, uploaded once per command unless already there."""
        from aimactl.helper import helper_file, helper_source

        if self.hosts[host].address == "local":
            return helper_file()
        connector = self.ssh(host)
        with self.host_lock(host):  # observation reads a host on several threads: check and upload once
            if host not in self._helpers:
                path = helper_location(self.hosts[host].data_dir)
                if not connector.exists(path):
                    try:
                        connector.put(helper_source().encode(), path, 0o644)
                    except OSError as exc:
                        raise RuntimeFailure(str(exc)) from None
                self._helpers[host] = path
            return self._helpers[host]

    def helper_batch(self, host: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The helper's `batch` on an SSH host as ONE exec channel: run through the bootstrap, which finds the
        helper itself (`~` resolved there), so a converged host costs no SFTP. Only a host without this helper
        gets it uploaded (SFTP) before a second try. Paths in `calls` may keep `~`: the helper resolves them,
        and the home it reports resolves `~` in `hosts` here. Returns the answers, one per call."""
        from aimactl.helper import MISSING, Bootstrapped
        from aimactl.hosts.connector import HelperError, call_helper

        kept = self._kept_batch(host, calls)
        if kept is not None:
            return kept
        connector = self._ssh_connector(host)
        if self.hosts[host].python.startswith("~/"):
            self.connector(host)  # the interpreter is argv[0]: its `~` must be resolved before (SFTP)
        for attempt in (1, 2):
            info = self.hosts[host]
            path = self._helpers.get(host) or helper_location(info.data_dir)
            try:
                answer = call_helper(Bootstrapped(connector), info.python, path, "batch", {"calls": calls},
                                     timeout=60)
                break
            except HelperError as exc:
                if exc.code != MISSING or attempt == 2:
                    self._resolve_quietly(host)
                    raise RuntimeFailure(exc.message) from None
            with self.host_lock(host):
                self._helpers.pop(host, None)  # deleted since this command (or loop) found it: upload it again
            self.helper_path(host)  # not there yet (first contact, new aimactl, deleted): upload, then again
        connector.learn_home(str(answer.get("home") or ""))
        self.connector(host)  # `~` in dataDir and python resolved from that home: no SFTP
        with self.host_lock(host):
            self._helpers.setdefault(host, helper_location(self.hosts[host].data_dir))  # it has just run
        results: list[dict[str, Any]] = answer["results"]
        return results

    def _kept_batch(self, host: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The batch through the keeper's kept connection and serving helper, or None when it cannot answer (no
        keeper, or the helper is not on the host yet): the caller then reaches the host itself. An unreachable
        host or a refused host key is reported as the direct connection would."""
        keeper, info = self._keeper_client(), self.hosts[host]
        if keeper is None or info.python.startswith("~/"):
            return None
        answer = keeper.batch(host, info, self._helpers.get(host) or helper_location(info.data_dir), calls)
        if answer is None:
            return None
        home = str(answer.get("home") or "")
        if home.startswith("/"):
            self._homes[host] = home
            self._at_home(host, home)
            self._kept.add(host)  # its helper is there: Docker reads may go through the keeper too
        results: list[dict[str, Any]] = answer["results"]
        return results

    def _at_home(self, host: str, home: str) -> None:
        """`~` in an SSH host's dataDir and python resolved against its home."""
        info = self.hosts[host]
        self.hosts[host] = dataclasses.replace(info, data_dir=at_home(info.data_dir, home),
                                               python=at_home(info.python, home))

    def _keeper_client(self) -> KeeperClient | None:
        """The way to this user's keeper (None when connections are not kept or no private socket can be had)."""
        with self._lock:
            if self._keeper is None and self.persist > 0:
                from aimactl.hosts.keeper import keeper_client

                self._keeper = keeper_client(self.environ, self.persist, self.accept_new_host_keys)
                self.persist = self.persist if self._keeper else 0.0
            return self._keeper

    def _resolve_quietly(self, host: str) -> None:
        """Resolve `~` in a host's paths over SFTP when its helper could not answer (no python there, say): the
        plan still names that host's paths as they are there."""
        try:
            self.connector(host)
        except (RuntimeFailure, OSError):
            pass

    def learn_socket(self, host: str, exists: bool) -> None:
        """Record whether an SSH host's Docker socket exists (from its batch): its forwarder then dials without
        asking over SFTP first."""
        self._sockets[host] = exists

    def docker_absent(self, host: str) -> str | None:
        """Why an SSH host's Docker engine cannot be used when its batch said the socket is not there (the same
        words as a failed dial), else None."""
        if self._sockets.get(host) is not False:
            return None
        remote = (self.hosts[host].docker or DEFAULT_ENDPOINT).removeprefix("unix://")
        return f"Docker engine at {remote} on host {host} is unavailable: {_no_socket(remote)}"

    def host_lock(self, host: str) -> threading.RLock:
        """This command's lock for one host: what several threads must do once, or one at a time, there (the
        helper upload, a runtime, an update of the host's model index)."""
        with self._lock:
            return self._host_locks.setdefault(host, threading.RLock())

    def docker_url(self, host: str) -> str:
        """The Docker endpoint for a host's runtime: DOCKER_HOST or the host's `docker:` locally; for an SSH host
        a private local socket forwarded over its SSH connection to `docker:` (default /var/run/docker.sock)."""
        info = self.hosts[host]
        if info.address == "local":
            if info.docker:
                return info.docker if "://" in info.docker else f"unix://{info.docker}"
            return docker_endpoint(self.environ.get("DOCKER_HOST"))
        with self._lock:
            forwarder = self._forwarders.get(host)
        if forwarder is None:
            from aimactl.hosts.forward import SocketForwarder

            remote = (info.docker or DEFAULT_ENDPOINT).removeprefix("unix://")
            if "://" in remote:
                raise RuntimeFailure(f"host {host}: docker endpoint {info.docker!r} must be a unix socket path "
                                     "on that host (it is reached over SSH)")
            dial = self._kept_dialer(host, remote) if host in self._kept else self._direct_dialer(host, remote)
            forwarder = SocketForwarder(host, dial)
            with self._lock:
                self._forwarders[host] = forwarder
        return str(forwarder.url)

    def _direct_dialer(self, host: str, remote: str) -> Callable[[], Any]:
        """Streams to the host's Docker socket over this command's connection (the helper's `dial`)."""
        connector, python, helper = self.ssh(host), self.hosts[host].python, self.helper_path(host)
        seen: list[bool] = []

        def dial() -> Any:
            # A host without the socket is told by its observation batch (else by one SFTP stat), not by a
            # shell and `dial` each time.
            if not seen:
                known = self._sockets.get(host)
                if not (connector.exists(remote) if known is None else known):
                    raise OSError(_no_socket(remote))
                seen.append(True)
            return connector.exec([python, helper, "dial", remote])

        return dial

    def _kept_dialer(self, host: str, remote: str) -> Callable[[], Any]:
        """Streams to the Docker socket of a host observed through the keeper, through the keeper too (no login
        on the host); when the keeper cannot give one, over this command's own connection."""

        def dial() -> Any:
            keeper, info = self._keeper_client(), self.hosts[host]
            stream = keeper.dial(host, info, helper_location(info.data_dir), remote) if keeper else None
            if stream is not None:
                return stream
            return self.ssh(host).exec([info.python, self.helper_path(host), "dial", remote])

        return dial

    def docker_problem(self, host: str, exc: Exception) -> str:
        """Why a host's Docker engine cannot be used, naming the socket on the host rather than the private
        forwarded one, with the reason the host's helper gave."""
        forwarder = self._forwarders.get(host)
        if forwarder is None or isinstance(exc, HostUnreachable):
            return str(exc)
        remote = (self.hosts[host].docker or DEFAULT_ENDPOINT).removeprefix("unix://")
        return f"Docker engine at {remote} on host {host} is unavailable: {forwarder.last_error or exc}"

    def runtime(self, host: str, kind: str = "docker") -> Runtime:
        """The Docker or process runtime of a host."""
        key = (host, kind)
        if key in self._runtimes:
            known: Runtime = self._runtimes[key]
            return known
        with self.host_lock(host):  # steps and observation run on threads: one runtime (and forwarder) each
            if key not in self._runtimes:
                if kind == "process":
                    connector = self.connector(host)  # `~` in the host's paths resolved from here on
                    info = self.hosts[host]
                    state_dir = os.path.join(info.data_dir, "proc")
                    self._runtimes[key] = ProcessRuntime(connector, info.python, self.helper_path(host), state_dir)
                else:  # no connection of its own: the socket is forwarded (through the keeper for a kept host)
                    self._runtimes[key] = DockerRuntime(self.docker_url(host))
            runtime: Runtime = self._runtimes[key]
            return runtime

    def close(self, keep_connections: bool = False) -> None:
        """Close every runtime, forwarder and connection; `keep_connections` hands the SSH connections to the
        next Connections of this command instead (closed when the process exits if none takes them)."""
        for runtime in self._runtimes.values():
            runtime.close()
        self._runtimes.clear()
        for forwarder in self._forwarders.values():
            forwarder.close()
        self._forwarders.clear()
        for host, connector in self._connectors.items():
            if keep_connections:
                with _PARKED_LOCK:
                    if not _PARKED:
                        import atexit

                        atexit.register(_close_parked)
                    _PARKED[self._ssh_key(host)] = (connector, self._helpers.get(host))
            else:
                connector.close()
        self._connectors.clear()
        self._helpers.clear()


def _no_socket(remote: str) -> str:
    return f"cannot connect to {remote}: No such file or directory"
