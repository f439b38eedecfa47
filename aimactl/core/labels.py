"""The labels that carry aimactl's identity on containers (specs/labels.md). Pure: names and parsing only."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

PREFIX = "dev.aima."
MANAGED = PREFIX + "managed"
STACK = PREFIX + "stack"
KIND = PREFIX + "kind"
NAME = PREFIX + "name"
REPLICA = PREFIX + "replica"
SPEC_HASH = PREFIX + "spec-hash"
SPEC = PREFIX + "spec"
RUNTIME = PREFIX + "runtime"
HOST = PREFIX + "host"
"""The Host (manifest name) a container was created for: two Hosts that reach one Docker engine (two names for
one machine) must not take each other's containers for their own."""


def container_name(stack: str, name: str, replica: int) -> str:
    """`aima-<stack>-<name>-<replica>`: unique per stack, stable across applies."""
    return f"aima-{stack}-{name}-{replica}"


def identity_labels(stack: str, kind: str, name: str, replica: int, spec_hash: str,
                    spec: Mapping[str, Any], runtime: str = "docker", host: str | None = None) -> dict[str, str]:
    """Labels written on every managed container; `spec` must already have its secrets hashed."""
    return {**({HOST: host} if host else {}),
        MANAGED: "true",
        STACK: stack,
        KIND: kind.lower(),
        NAME: name,
        REPLICA: str(replica),
        SPEC_HASH: spec_hash,
        SPEC: json.dumps(spec, sort_keys=True, separators=(",", ":")),
        RUNTIME: runtime,
    }


def stored_spec(labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The applied spec kept in the label, or None when it is missing or unreadable (then replace)."""
    try:
        value = json.loads(labels.get(SPEC, ""))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
