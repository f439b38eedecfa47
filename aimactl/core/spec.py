"""Normalised container specs and their hash: the identity that makes "apply, then plan" always empty.

Two manifests that mean the same container (env in another order, `8080` vs `"8080:8080"`, a defaulted field
written out) normalise to the same dict, hence the same hash. The dict is what the `dev.aima.spec` label
stores, so a later plan can name exactly which field drifted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from aimactl.core.containers import ContainerSpec, GpuRequest, Mount, SecretEnv
from aimactl.core.observed import PublishedPort

# Fields Docker can change on a live container (`docker update`); any other change needs a new container.
IN_PLACE_FIELDS = frozenset({"restart", "resources.memory", "resources.cpus"})


def normalise_image(image: str) -> str:
    """`busybox` -> `busybox:latest`; digests and explicit tags are kept."""
    last = image.rsplit("/", 1)[-1]
    if image.startswith("native:") or "@" in image or ":" in last:  # native: the program a process runs
        return image
    return f"{image}:latest"


def port_text(port: PublishedPort) -> str:
    """`0.0.0.0:8080:80/tcp`: one spelling per published port."""
    return f"{port.host_ip or '0.0.0.0'}:{port.host_port}:{port.container_port}/{port.protocol}"


def mount_text(mount: Mount) -> str:
    """`SOURCE:TARGET:ro|rw`."""
    return f"{mount.source}:{mount.target}:{'ro' if mount.read_only else 'rw'}"


def gpus_value(gpus: GpuRequest | None) -> dict[str, Any] | None:
    """GPU request as plain data, or None."""
    if gpus is None or (not gpus.count and not gpus.device_ids):
        return None
    return {"count": gpus.count, "deviceIds": list(gpus.device_ids)}


def env_value(value: str | SecretEnv, secret_digests: Mapping[str, str]) -> str:
    """Plain values as they are; secrets as `secret:<digest>` so no clear value ever reaches a label."""
    if isinstance(value, SecretEnv):
        return f"secret:{secret_digests.get(value.source, 'unresolved')}"
    return value


def normalise(spec: ContainerSpec, image_id: str | None, secret_digests: Mapping[str, str]) -> dict[str, Any]:
    """The canonical, JSON-able form of a container spec (labels of identity excluded)."""
    out: dict[str, Any] = {
        "image": normalise_image(spec.image),
        "imageId": image_id,
        "command": list(spec.command) if spec.command is not None else None,
        "env": {k: env_value(v, secret_digests) for k, v in sorted(spec.env.items())},
        "ports": sorted(port_text(p) for p in spec.ports),
        "volumes": sorted(mount_text(m) for m in spec.mounts),
        "restart": spec.restart,
        "resources": {
            "memory": spec.memory,
            "cpus": spec.nano_cpus / 1e9 if spec.nano_cpus else None,
            "gpus": gpus_value(spec.gpus),
        },
        "labels": dict(sorted(spec.labels.items())),
    }
    if spec.shm_size is not None:
        # Only when set: containers made before this field existed keep their hash.
        out["resources"]["shm"] = spec.shm_size
    return out


def spec_hash(normalised: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a normalised spec (which includes the resolved image id)."""
    text = json.dumps(normalised, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """`{"resources": {"memory": 1}, "env": {"A": "1"}}` -> `{"resources.memory": 1, "env.A": "1"}`.

    Mappings are walked down to their leaves (an empty mapping has none); lists stay whole.
    """
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Field paths whose values differ, sorted, as (path, before, after)."""
    old, new = flatten(before or {}), flatten(after)
    keys: Iterable[str] = sorted(set(old) | set(new))
    return [(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)]


def forces_replacement(path: str) -> bool:
    """True when a change of this field cannot be applied to the running container."""
    return path not in IN_PLACE_FIELDS
