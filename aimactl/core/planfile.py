"""Plan <-> JSON (format_version 1, specs/plan.md): the same form for `plan -o json` and saved plan files.

Secrets appear only as references (`{"secret": "env:NAME"}`) and digests; a saved plan is safe to keep.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aimactl.core.checks import Check
from aimactl.core.containers import ContainerSpec, GpuRequest, Mount, SecretEnv
from aimactl.core.desired import DesiredContainer, HostInfo, Readiness
from aimactl.core.models import DesiredModel
from aimactl.core.observed import PublishedPort
from aimactl.core.placement import placement_from_dict
from aimactl.core.plan import Change, FieldDiff, Plan
from aimactl.core.workloads import Warmup

FORMAT_VERSION = 1


class PlanFileError(ValueError):
    """A plan file that cannot be read: wrong version or damaged."""


def _container_to_dict(spec: ContainerSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["env"] = {k: {"secret": v.source} if isinstance(v, SecretEnv) else v for k, v in spec.env.items()}
    return data


def _container_from_dict(data: dict[str, Any]) -> ContainerSpec:
    env = {k: SecretEnv(v["secret"]) if isinstance(v, dict) else v for k, v in data["env"].items()}
    gpus = GpuRequest(data["gpus"]["count"], tuple(data["gpus"]["device_ids"])) if data.get("gpus") else None
    return ContainerSpec(
        name=data["name"], image=data["image"],
        command=tuple(data["command"]) if data.get("command") is not None else None,
        env=env, ports=tuple(PublishedPort(**p) for p in data["ports"]),
        mounts=tuple(Mount(**m) for m in data["mounts"]), restart=data["restart"], memory=data.get("memory"),
        nano_cpus=data.get("nano_cpus"), gpus=gpus, labels=dict(data["labels"]), shm_size=data.get("shm_size"),
    )


def _desired_to_dict(want: DesiredContainer) -> dict[str, Any]:
    return {"container": _container_to_dict(want.container), "spec_hash": want.spec_hash, "spec": want.spec,
            "key": want.key, "depends_on": list(want.depends_on), "readiness": asdict(want.readiness),
            "runtime": want.runtime}


def _desired_from_dict(change: dict[str, Any]) -> DesiredContainer:
    data = change["desired"]
    return DesiredContainer(change["address"], data["key"], change["kind"], change["name"], change["replica"],
                            change["host"], _container_from_dict(data["container"]), data["spec"], data["spec_hash"],
                            tuple(data["depends_on"]), _readiness(data["readiness"]), data.get("runtime", "docker"))


def _readiness(data: dict[str, Any]) -> Readiness:
    warm, pull = data.get("warmup"), data.get("pull")
    return Readiness(**{**data, "warmup": Warmup(**warm) if warm else None, "pull": Warmup(**pull) if pull else None})


def _model(data: dict[str, Any]) -> DesiredModel:
    return DesiredModel(**{**data, "pull": Warmup(**data["pull"]) if data.get("pull") else None})


def _host_to_dict(host: HostInfo) -> dict[str, Any]:
    data = asdict(host)
    for key in ("executables", "python_modules"):
        data[key] = sorted(data[key]) if data[key] is not None else None
    return {**data, "port_range": list(host.port_range), "labels": dict(host.labels)}


def _host_from_dict(data: dict[str, Any]) -> HostInfo:
    sets = {k: frozenset(data[k]) if data.get(k) is not None else None for k in ("executables", "python_modules")}
    return HostInfo(**{**data, **sets, "port_range": tuple(data["port_range"])})


def change_to_dict(change: Change) -> dict[str, Any]:
    """One change in the JSON form."""
    return {
        "address": change.address, "key": change.key, "kind": change.kind, "name": change.name,
        "replica": change.replica, "host": change.host, "actions": [change.action], "reason": change.reason,
        "diff": [asdict(d) for d in change.diff], "fingerprint": change.fingerprint,
        "container_id": change.container_id, "observed_hash": change.observed_hash,
        "desired": _desired_to_dict(change.desired) if change.desired else None,
        "runtime": change.runtime,
        "model": asdict(change.model) if change.model else None,
    }


def to_dict(plan: Plan) -> dict[str, Any]:
    """The whole plan as JSON-able data."""
    return {
        "format_version": FORMAT_VERSION,
        "stack": plan.stack,
        "changes": [change_to_dict(c) for c in plan.changes],
        "checks": [c.to_dict() for c in plan.checks],
        "summary": plan.summary(),
        "edges": {k: sorted(v) for k, v in sorted(plan.edges.items())},
        "hosts": {name: _host_to_dict(h) for name, h in sorted(plan.hosts.items())},
        "placements": {key: p.to_dict() for key, p in sorted(plan.placements.items())},
        "gpu_fingerprints": plan.gpu_fingerprints,
    }


def from_dict(data: dict[str, Any]) -> Plan:
    """Rebuild a Plan from its JSON form; refuses other format versions."""
    if data.get("format_version") != FORMAT_VERSION:
        raise PlanFileError(f"plan format_version {data.get('format_version')!r} is not {FORMAT_VERSION}")
    try:
        changes = [Change(c["address"], c["key"], c["kind"], c["name"], c["replica"], c["host"], c["actions"][0],
                          c["reason"], [FieldDiff(**d) for d in c["diff"]], c.get("container_id"),
                          c.get("observed_hash"), _desired_from_dict(c) if c.get("desired") else None,
                          c.get("runtime", "docker"), _model(c["model"]) if c.get("model") else None)
                   for c in data["changes"]]
        checks = [Check(**c) for c in data["checks"]]
        edges = {k: set(v) for k, v in data.get("edges", {}).items()}
        hosts = {n: _host_from_dict(h) for n, h in data.get("hosts", {}).items()}
        placements = {k: placement_from_dict(p) for k, p in data.get("placements", {}).items()}
    except (KeyError, TypeError, IndexError) as exc:
        raise PlanFileError(f"plan file is damaged: {exc}") from None
    return Plan(data["stack"], changes, checks, edges, hosts, placements,
                gpu_fingerprints=list(data.get("gpu_fingerprints", [])))
