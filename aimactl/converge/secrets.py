"""Secrets on the controller: read `env:NAME` / `file:PATH` sources, digest them, never print or store them.

Only the digest leaves this module for labels, plans and the state DB; the value is read again at the last
moment, when a container is created.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from aimactl.core.containers import ContainerSpec, SecretEnv
from aimactl.core.desired import secret_source
from aimactl.manifest.kinds import SecretValue
from aimactl.manifest.load import Resource


class SecretUnavailable(Exception):
    """A secret source that cannot be read; the message names the source, never a value."""


def read_secret(source: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of `env:NAME` or `file:/abs/path` (a trailing newline in a file is dropped)."""
    kind, _, ref = source.partition(":")
    if kind == "env":
        value = (os.environ if environ is None else environ).get(ref)
        if value is None:
            raise SecretUnavailable(f"environment variable {ref} is not set")
        return value
    if kind == "file":
        try:
            return Path(ref).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise SecretUnavailable(f"cannot read secret file {ref}: {exc.strerror}") from None
    raise SecretUnavailable(f"unknown secret source {source!r}")


def digest(stack: str, source: str, value: str) -> str:
    """A salted sha256 of a secret (salted with stack and source so equal secrets do not look equal)."""
    return hashlib.sha256(f"aimactl-secret\0{stack}\0{source}\0{value}".encode()).hexdigest()[:32]


def digests(stack: str, sources: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Digests of the sources that can be read; unreadable ones are left out (the plan reports them)."""
    out = {}
    for source in sources:
        try:
            out[source] = digest(stack, source, read_secret(source, environ))
        except SecretUnavailable:
            continue
    return out


def resolve_env(spec: ContainerSpec, environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The container's environment with secrets read now, plus the secret values (to scrub from errors)."""
    env, values = {}, []
    for key, value in spec.env.items():
        if isinstance(value, SecretEnv):
            env[key] = read_secret(value.source, environ)
            values.append(env[key])
        else:
            env[key] = value
    return env, values


def secret_sources_in(resources: Iterable[Resource]) -> set[str]:
    """Secret sources named in manifests (Service/App env), before any container spec exists."""
    out = set()
    for res in resources:
        for value in getattr(res.spec, "env", {}).values():
            if isinstance(value, SecretValue):
                out.add(secret_source(value, res.base_dir))
    return out
