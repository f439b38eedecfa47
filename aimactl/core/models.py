"""Models on hosts: which Model must be in which host's cache, where, and whether it needs fetching.

A Model is fetched onto every host where a Service that uses it runs, by the host itself (the helper's
`fetch`), into `<dataDir>/models/<name>/<file>`; an index beside it records what was fetched. Ollama models are
pulled by the Ollama engine and are not fetched here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aimactl.manifest import units
from aimactl.manifest.load import Resource


@dataclass(frozen=True)
class DesiredModel:
    """One Model in one host's cache."""

    address: str
    key: str
    name: str
    host: str
    source: str
    url: str | None
    """What the helper fetches (`https://...`, `file:///...`); None when the engine pulls it itself."""
    path: str | None
    sha256: str | None = None
    size: int | None = None
    token: str | None = None
    """Secret source (`env:NAME` / `file:PATH`) of an access token, read on the controller at fetch time."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of `hf://` and `modelscope://` sources; None for the others."""
    service: str | None = None
    """Ollama models: the address of the Service replica whose Ollama pulls the model (`service.ol[0]@local`)."""
    api_port: int | None = None
    """Ollama models: the host port of that Service's API."""
    pull: Any = None
    """Ollama models: the engine catalog's pull request (an engines.catalog.Request), model name filled in."""


def model_address(name: str, host: str) -> str:
    """`model.qwen@local`."""
    return f"model.{name}@{host}"


def desired_model(res: Resource, host: str, data_dir: str, hf_endpoint: str | None) -> DesiredModel:
    """Where a Model goes on a host and what to fetch; raises ValueError for an unusable source."""
    from aimactl.models.sources import cache_path, download_url, parse_source

    spec = res.spec
    source = parse_source(spec.source, res.base_dir)
    if source.scheme == "ollama":
        return DesiredModel(model_address(res.name, host), res.key, res.name, host, spec.source, None, None)
    from aimactl.core.desired import secret_source

    url = f"file://{source.path}" if source.scheme == "file" else download_url(source, hf_endpoint)
    size = units.parse_bytes(spec.size) if spec.size is not None else None
    token = secret_source(spec.token, res.base_dir) if spec.token is not None else None
    revision = source.revision if source.scheme in ("hf", "modelscope") else None
    return DesiredModel(model_address(res.name, host), res.key, res.name, host, spec.source, url,
                        cache_path(data_dir, res.name, source), spec.sha256, size, token, revision)


def model_infos(resources: Sequence[Resource], data_dir: str) -> dict[str, Any]:
    """Catalog ModelInfo of every Model for one host (its cache path there), by name."""
    from aimactl.engines.render import model_info
    from aimactl.models.sources import parse_source

    out = {}
    for res in resources:
        if res.kind == "Model":
            try:
                out[res.name] = model_info(res.name, parse_source(res.spec.source, res.base_dir), data_dir)
            except ValueError:
                continue
    return out


def model_reason(want: DesiredModel, entry: Mapping[str, Any] | None) -> tuple[str, str]:
    """(action, reason) for a Model given the host's cache index entry."""
    if entry is None:
        return "create", f"not in the model cache on {want.host}"
    if entry.get("source") != want.source:
        return "replace", "source changed"
    if want.sha256 and entry.get("sha256") != want.sha256:
        return "replace", "sha256 changed"
    if entry.get("path") != want.path:
        return "replace", "cache path changed"
    if entry.get("missing"):
        return "replace", f"the cached file {want.path} is missing on {want.host}"
    found = entry.get("verified_sha256")
    if found is not None and found != entry.get("sha256"):
        return "replace", f"sha256 mismatch: expected {entry.get('sha256')}, found {found}"
    return "no-op", "cached, verified" if found is not None else "cached"


def pull_reason(want: DesiredModel, entry: Mapping[str, Any] | None) -> tuple[str, str]:
    """(action, reason) for a model the engine pulls itself (Ollama), given what its API said (None: not asked,
    because the Service is not running)."""
    if entry is None:
        return "create", f"pulled through the Ollama API of {want.service} once it is ready"
    if not entry.get("present"):
        return "create", f"not pulled yet in the Ollama of {want.service}"
    return "no-op", f"present in the Ollama of {want.service}"
