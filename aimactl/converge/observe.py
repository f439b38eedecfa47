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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aimactl.converge.connections import ENGINE_MODULES, ENGINE_PROGRAMS, Connections
from aimactl.core.desired import HostInfo
from aimactl.core.observed import Observed, ObservedHost
from aimactl.hosts.connector import HostUnreachable
from aimactl.runtimes import RuntimeFailure
from aimactl.runtimes.engine_api import DEFAULT_ENDPOINT
from aimactl.runtimes.process import ProcessRuntime


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
    from aimactl.hosts.connector import HelperError, call_helper
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
             {"verb": "proc", "params": ProcessRuntime.list_params(posixpath.join(info.data_dir, "proc"))},
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
    absent = connections.docker_absent(host)
    if absent:  # told by the batch: no need to connect to the host for an engine that is not there
        seen.docker_error = absent
        return seen
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
