"""Manifests: what the operator declares. Kinds, loading with positions, templating, validation, schemas."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aimactl.manifest.errors import ManifestError, ManifestInvalid
from aimactl.manifest.load import Resource

__all__ = ["ManifestError", "ManifestInvalid", "Resource", "Manifests", "load_manifests"]

KIND_ORDER = ("Host", "Model", "Service", "App", "Pipeline")


@dataclass
class Manifests:
    """The outcome of loading and validating a set of manifests."""

    resources: list[Resource] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when there is not a single error."""
        return not self.errors

    def counts(self) -> dict[str, int]:
        """Resources per kind, in the canonical kind order."""
        counts = Counter(r.kind for r in self.resources)
        return {k: counts[k] for k in KIND_ORDER if counts[k]}

    def summary(self) -> str:
        """`5 resources valid: 1 Host, 1 Model, 2 Service, 1 App`."""
        parts = ", ".join(f"{n} {k}" for k, n in self.counts().items())
        total = len(self.resources)
        return f"{total} resource{'s' if total != 1 else ''} valid" + (f": {parts}" if parts else "")


def load_manifests(paths: Iterable[str], var_args: Iterable[str] = (), var_files: Iterable[str] = (),
                   environ: Mapping[str, str] | None = None, stdin_text: str | None = None) -> Manifests:
    """Load, render and validate manifests; every error of the run is collected.

    `environ` is passed only when the operator allowed `{{ env.X }}` (`--allow-env`).
    """
    from aimactl.manifest.context import build_context
    from aimactl.manifest.load import load
    from aimactl.manifest.validate import validate

    context: Mapping[str, Any]
    context, errors = build_context(var_args, var_files, environ)
    result = load(paths, context, stdin_text)
    errors.extend(result.errors)
    errors.extend(e for e in validate(result.resources)
                  if not (e.code == "dangling-reference" and any(repr(n) in e.message for n in result.broken)))
    return Manifests(result.resources, errors, result.sources)


def load_manifest_texts(sources: Iterable[Mapping[str, str]], var_args: Iterable[str] = (),
                        var_files: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> Manifests:
    """Load manifests from stored {file, text} pairs (a revision's sources), validated as from files."""
    from pathlib import Path

    from aimactl.manifest.context import build_context
    from aimactl.manifest.load import load_text
    from aimactl.manifest.validate import validate

    context, errors = build_context(var_args, var_files, environ)
    resources: list[Resource] = []
    kept = []
    for source in sources:
        part = load_text(source["text"], source["file"], context)
        for resource in part.resources:
            resource.base_dir = str(Path(source["file"]).parent)
            resource.template_context = context
        resources += part.resources
        errors += part.errors
        kept.append({"file": source["file"], "text": source["text"]})
    if not errors:
        errors += validate(resources)
    return Manifests(resources, errors, kept)

