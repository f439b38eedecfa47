"""Observe hosts: this stack's containers and processes, everything else holding ports, listeners, image ids
and the model cache.

Each host is observed through its runtimes; a host that cannot be reached becomes an unreachable observation
(and a check in the plan), never an exception. A missing Docker engine only matters to Docker workloads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aimactl.core.desired import HostInfo
from aimactl.core.observed import Observed, ObservedHost
from aimactl.helper import helper_location
from aimactl.hosts.connector import Connector, HostUnreachable
from aimactl.runtimes import Runtime, RuntimeFailure
from aimactl.runtimes.docker import DockerRuntime
from aimactl.runtimes.engine_api import DEFAULT_ENDPOINT, docker_endpoint
from aimactl.runtimes.process import ProcessRuntime

if TYPE_CHECKING:
    from aimactl.hosts.forward import SocketForwarder
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

    def __init__(self, hosts: Mapping[str, HostInfo], environ: Mapping[str, str], accept_new_host_keys: bool = False):
        self.hosts = dict(hosts)
        self.environ = environ
        self.accept_new_host_keys = accept_new_host_keys
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
            self.hosts[host] = dataclasses.replace(info, data_dir=connector.expand(info.data_dir),
                                                   python=connector.expand(info.python))
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
        with self._host_lock(host):  # observation reads a host on several threads: check and upload once
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
            with self._host_lock(host):
                self._helpers.pop(host, None)  # deleted since this command (or loop) found it: upload it again
            self.helper_path(host)  # not there yet (first contact, new aimactl, deleted): upload, then again
        connector.learn_home(str(answer.get("home") or ""))
        self.connector(host)  # `~` in dataDir and python resolved from that home: no SFTP
        with self._host_lock(host):
            self._helpers.setdefault(host, helper_location(self.hosts[host].data_dir))  # it has just run
        results: list[dict[str, Any]] = answer["results"]
        return results

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

    def _host_lock(self, host: str) -> threading.RLock:
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
            connector, python, helper = self.ssh(host), info.python, self.helper_path(host)
            seen: list[bool] = []

            def dial() -> Any:
                # A host without the socket is told by its observation batch (else by one SFTP stat), not by a
                # shell and `dial` each time.
                if not seen:
                    known = self._sockets.get(host)
                    if not (connector.exists(remote) if known is None else known):
                        raise OSError(f"cannot connect to {remote}: No such file or directory")
                    seen.append(True)
                return connector.exec([python, helper, "dial", remote])

            forwarder = SocketForwarder(host, dial)
            with self._lock:
                self._forwarders[host] = forwarder
        return str(forwarder.url)

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
        connector = self.connector(host)
        with self._host_lock(host):  # steps and observation run on threads: one runtime (and forwarder) each
            if key not in self._runtimes:
                info = self.hosts[host]
                if kind == "process":
                    state_dir = os.path.join(info.data_dir, "proc")
                    self._runtimes[key] = ProcessRuntime(connector, info.python, self.helper_path(host), state_dir)
                else:
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


def model_index_path(info: HostInfo) -> str:
    """The cache index of a host: `<dataDir>/models/index.json`."""
    return os.path.join(info.data_dir, "models", "index.json")


def read_model_index(connections: Connections, host: str) -> dict[str, Any]:
    """The host's model cache index (empty when there is none yet)."""
    try:
        data = json.loads(connections.connector(host).get(model_index_path(connections.hosts[host])))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def observe_facts(connections: Connections, host: str,
                  probed: Callable[[], Any] | None = None) -> tuple[Any, str | None]:
    """CPU, RAM, disk and GPU facts of a host (None and why when they cannot be read): in-process for the local
    host, the helper's `probe` for others (or `probed`, its answer already read); AIMACTL_FAKE_NVML is honoured
    by aimactl/hosts/facts.py."""
    from aimactl.hosts.connector import HelperError, HostUnreachable, call_helper
    from aimactl.hosts.facts import collect_facts

    info = connections.hosts[host]

    def remote() -> Any:
        if probed is not None:
            return probed()
        return call_helper(connections.connector(host), info.python, connections.helper_path(host), "probe",
                           {"data_dir": info.data_dir}, timeout=60)

    try:
        return collect_facts(host, info.data_dir, connections.environ,
                             None if info.address == "local" else remote), None
    except (RuntimeFailure, HelperError, HostUnreachable, OSError, ValueError) as exc:
        return None, f"cannot read the hardware facts of {host}: {exc}"


def _observe_docker(connections: Connections, host: str, stack: str,
                    images: Iterable[str]) -> tuple[list[Any], list[Any], dict[str, str], str | None]:
    """(this stack's containers, the others, image ids, why the engine cannot be used or None)."""
    try:
        docker = connections.runtime(host, "docker")
        managed, others = docker.observe(stack, host)
        return managed, others, docker.image_ids(images), None
    except RuntimeFailure as exc:
        return [], [], {}, connections.docker_problem(host, exc)


def _remote_batch(connections: Connections, host: str) -> tuple[dict[str, Any], ...]:
    """An SSH host's observation in one helper run there (one exec, no SFTP once the helper is there): `probe`,
    `proc list`, the model cache index and whether the Docker socket exists, each answered as
    {"ok": true, "result": ...} or {"ok": false, "error": {...}}. Paths may keep `~`: the helper resolves them."""
    info = connections.hosts[host]
    socket = (info.docker or DEFAULT_ENDPOINT).removeprefix("unix://")
    calls = [{"verb": "probe", "params": {"data_dir": info.data_dir, "engine_programs": list(ENGINE_PROGRAMS),
                                          "engine_modules": list(ENGINE_MODULES)}},
             # ProcessRuntime.list_params, for the runtime's state dir (the runtime itself needs the helper path)
             {"verb": "proc", "params": {"action": "list", "dir": posixpath.join(info.data_dir, "proc")}},
             {"verb": "stat", "params": {"path": model_index_path(info), "read": True}},
             {"verb": "stat", "params": {"path": socket}}]
    probe, listed, index, docker = connections.helper_batch(host, calls)
    if docker.get("ok") and "://" not in socket:
        connections.learn_socket(host, bool(docker["result"]["exists"]))
    return probe, listed, index


def _model_index(connections: Connections, host: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The model cache index from the batch's `stat` answer (read over SFTP only if the helper could not)."""
    if not answer.get("ok"):
        return read_model_index(connections, host)
    try:
        data = json.loads(answer["result"]["text"] or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _learn_engines(connections: Connections, host: str, probe: dict[str, Any]) -> None:
    """Record which native engines an SSH host can run (from its probe), as resolve_hosts does for the local one,
    so that the plan picks a native command the host has (llama-server, else python -m llama_cpp.server)."""
    engines = (probe.get("result") or {}).get("engines") if probe.get("ok") else None
    if isinstance(engines, dict):
        connections.hosts[host] = dataclasses.replace(
            connections.hosts[host], executables=frozenset(engines.get("programs") or ()),
            python_modules=frozenset(engines.get("modules") or ()))


def _answer(outcome: dict[str, Any]) -> Any:
    """The result of one batched verb, or its failure raised as the lone verb's would be."""
    from aimactl.hosts.connector import HelperError

    if outcome.get("ok"):
        return outcome["result"]
    error = outcome.get("error") or {}
    raise HelperError(str(error.get("code", "error")), str(error.get("message", "unknown error")))


def _observe_remote(connections: Connections, stack: str, host: str, images: Iterable[str]) -> ObservedHost:
    """An SSH host's observation: one helper batch (processes, facts, model index, Docker socket), then its
    Docker engine through the forwarded socket when the socket is there (the batch said whether)."""
    from aimactl.hosts.connector import HelperError
    from aimactl.runtimes.process import ProcessRuntime

    seen = ObservedHost(host, address=connections.hosts[host].url_host)
    try:
        probe, listed, index = _remote_batch(connections, host)
        seen.containers = ProcessRuntime.stack_processes(_answer(listed), stack)
    except HelperError as exc:
        seen.reachable, seen.error = False, exc.message
        return seen
    except RuntimeFailure as exc:
        seen.reachable, seen.error = False, str(exc)
        return seen
    seen.facts, seen.facts_error = observe_facts(connections, host, lambda: _answer(probe))
    _learn_engines(connections, host, probe)
    seen.models = _model_index(connections, host, index)
    managed, seen.others, seen.image_ids, seen.docker_error = _observe_docker(connections, host, stack, images)
    seen.containers += managed
    return seen


def observe_host(connections: Connections, stack: str, host: str, images: Iterable[str]) -> ObservedHost:
    """One host's observation; an unreachable host says why, a missing Docker engine only blocks Docker."""
    info = connections.hosts[host]
    if info.address != "local":
        return _observe_remote(connections, stack, host, images)
    seen = ObservedHost(host, address=info.url_host)
    # The processes, the facts and the Docker engine are read at once rather than one after the other.
    with ThreadPoolExecutor(max_workers=2) as pool:
        facts = pool.submit(observe_facts, connections, host)
        docker = pool.submit(_observe_docker, connections, host, stack, images)
        try:
            # A host that never ran a process has no state dir: no need to start the helper to learn that.
            if os.path.isdir(os.path.join(info.data_dir, "proc")):
                seen.containers, _ = connections.runtime(host, "process").observe(stack)
            seen.models = read_model_index(connections, host)
        except RuntimeFailure as exc:
            seen.reachable, seen.error = False, str(exc)
            return seen
        seen.facts, seen.facts_error = facts.result()
        managed, seen.others, seen.image_ids, seen.docker_error = docker.result()
    seen.containers += managed
    from aimactl.hosts.procnet import local_listeners

    seen.listeners = local_listeners()
    return seen


def observe(connections: Connections, stack: str, images: Iterable[str], parallelism: int = 4) -> Observed:
    """Observe every host in parallel (bounded)."""
    images = sorted(set(images))
    hosts = sorted(connections.hosts)
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(hosts)))) as pool:
        results = list(pool.map(lambda h: observe_host(connections, stack, h, images), hosts))
    return Observed({h.name: h for h in results})
