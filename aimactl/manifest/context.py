"""The template context: `vars` from `--var` / `--var-file`, and `env` only when the operator allows it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aimactl.manifest.errors import ManifestError


def parse_var(text: str) -> tuple[str, str]:
    """Split `--var key=value`; the key must be a plain identifier so templates can read `vars.key`."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError(f"--var {text!r}: use --var NAME=VALUE with NAME a plain identifier")
    return key, value


def read_var_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON mapping of variables."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8"))
    except (OSError, YAMLError) as exc:
        raise ValueError(f"--var-file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"--var-file {path}: must hold a mapping of NAME: VALUE")
    return dict(data)


def build_context(var_args: Iterable[str] = (), var_files: Iterable[str] = (),
                  environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[ManifestError]]:
    """Variables from files first, then `--var` (which win); `env` only when `environ` is given."""
    variables: dict[str, Any] = {}
    errors = []
    for path in var_files:
        try:
            variables.update(read_var_file(path))
        except ValueError as exc:
            errors.append(ManifestError("bad-variable", str(exc), path))
    for text in var_args:
        try:
            key, value = parse_var(text)
            variables[key] = value
        except ValueError as exc:
            errors.append(ManifestError("bad-variable", str(exc), "<command line>"))
    context: dict[str, Any] = {"vars": variables}
    if environ is not None:
        context["env"] = dict(environ)
    return context, errors
