"""Native processes on a host, supervised by the host helper's `proc` verb; the same protocol as Docker.

A process is known by its name (`aima-<stack>-<name>-<replica>`) and a small JSON record beside its pidfile that
holds the identity labels (with the applied spec and its hash) and its ports, so the planner sees processes
exactly as it sees containers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from aimactl.core import labels as L
from aimactl.core.containers import ContainerSpec
from aimactl.core.observed import ObservedContainer, PublishedPort
from aimactl.hosts.connector import Connector, HelperError, call_helper
from aimactl.hosts.local import LocalConnector
from aimactl.runtimes import ContainerNotFound, RuntimeFailure


def parse_status(status: Mapping[str, Any]) -> ObservedContainer | None:
    """A helper `proc status` answer as an ObservedContainer (None for an absent process)."""
    if status.get("state") in (None, "absent"):
        return None
    record = status.get("spec") or {}
    ports = tuple(PublishedPort(**p) for p in record.get("ports", []))
    return ObservedContainer(
        id=str(status["name"]), name=str(status["name"]), image=str(record.get("image", "")), image_id="",
        state="running" if status["state"] == "running" else "exited",
        exit_code=status.get("exit_code") if status["state"] != "running" else None,
        started_at=status.get("started_at"), finished_at=status.get("finished_at"),
        labels=dict(record.get("labels", {})), ports=ports)


READ_ONLY_ACTIONS = ("list", "status")
"""`proc` actions that only read pid files and /proc: on the local host they run in this process, since starting
the helper's Python (~0.1 s) would cost more than every plan's other local reads together."""


def _helper_here(verb: str, params: dict[str, Any]) -> Any:
    """Run a helper verb's code in this process (the local host), failures raised as from a helper run."""
    from aimactl.helper import aimahelper

    try:
        return aimahelper.VERBS[verb](params)
    except aimahelper.HelperError as exc:
        raise HelperError(exc.code, exc.message) from None


class ProcessRuntime:
    """Processes of one host, in `state_dir` on that host, started through the helper (never a shell)."""

    def __init__(self, connector: Connector, python: str, helper_path: str, state_dir: str):
        self.connector = connector
        self.python = python
        self.helper_path = helper_path
        self.state_dir = state_dir
        self._pending: dict[str, tuple[ContainerSpec, dict[str, str]]] = {}

    def _proc(self, action: str, **payload: Any) -> Any:
        params = {"action": action, "dir": self.state_dir, **payload}
        try:
            if action in READ_ONLY_ACTIONS and isinstance(self.connector, LocalConnector):
                return _helper_here("proc", params)
            return call_helper(self.connector, self.python, self.helper_path, "proc", params)
        except HelperError as exc:
            name = payload.get("name", "")
            raise RuntimeFailure(f"process {name}: {exc.message}" if name else exc.message) from None

    def observe(self, stack: str, host: str | None = None) -> tuple[list[ObservedContainer], list[ObservedContainer]]:
        """This stack's processes (running or exited); processes never hold others' ports. Each Host has its own
        state dir, so `host` needs no filter here."""
        return self.stack_processes(self._proc("list"), stack), []

    @staticmethod
    def list_params(state_dir: str) -> dict[str, Any]:
        """The helper's `proc` parameters that list every process of `state_dir` (for a batch of helper verbs,
        sent before the runtime, which needs the helper's path, exists)."""
        return {"action": "list", "dir": state_dir}

    @staticmethod
    def stack_processes(listed: Any, stack: str) -> list[ObservedContainer]:
        """This stack's processes from the helper's `proc list` answer."""
        found = [parse_status(s) for s in listed["processes"]]
        return [p for p in found if p is not None and p.labels.get(L.STACK) == stack]

    def image_ids(self, refs: Iterable[str]) -> dict[str, str]:
        """Processes have no images."""
        return {}

    def inspect(self, container_id: str) -> ObservedContainer:
        """One process by name; raises ContainerNotFound when there is none."""
        seen = parse_status(self._proc("status", name=container_id))
        if seen is None:
            raise ContainerNotFound(f"process {container_id} not found")
        return seen

    def create(self, spec: ContainerSpec, env: Mapping[str, str]) -> str:
        """Remember what to start: a process exists only once it runs."""
        if not spec.command:
            raise RuntimeFailure(f"process {spec.name}: no command to run")
        self._pending[spec.name] = (spec, dict(env))
        return spec.name

    def start(self, container_id: str) -> None:
        """Start the process detached, with its record (labels, ports) for later observation."""
        spec, env = self._pending.pop(container_id)
        record = {"labels": spec.labels, "ports": [asdict(p) for p in spec.ports], "image": spec.image}
        self._proc("start", name=spec.name, argv=list(spec.command or ()), env=env, spec=record,
                   spec_hash=spec.labels.get(L.SPEC_HASH, ""))

    def stop(self, container_id: str, timeout: int = 10) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; stopping a stopped process is fine."""
        self._proc("stop", name=container_id, grace=timeout)

    def remove(self, container_id: str) -> None:
        """Stop and forget the process (its log stays for post-mortems)."""
        self._pending.pop(container_id, None)
        self._proc("stop", name=container_id, grace=10, forget=True)

    def update_in_place(self, container_id: str, restart: str, memory: int | None, nano_cpus: int | None) -> None:
        """Processes have nothing Docker-like to update in place."""
        raise RuntimeFailure(f"process {container_id}: cannot be updated in place; replace it")

    def logs(self, container_id: str, tail: int | None = 100, follow: bool = False) -> Iterator[str]:
        """The last lines of the process log (follow is not supported for processes yet)."""
        yield from self._proc("logs", name=container_id, tail=tail or 100)["lines"]

    def close(self) -> None:
        """The connector is shared; nothing to close here."""
