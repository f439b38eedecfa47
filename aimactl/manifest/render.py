"""Sandboxed Jinja2 templating of manifest string values.

Manifests may come from AI agents, so templates are untrusted: they run in an immutable sandbox with
StrictUndefined, no globals, and an AST check that rejects any reach for Python internals before rendering
(manifest/sandbox.py, loaded only when a template is present). `vars` and `env` are rendered at load time.
`services`, `models` (known once the plan places things) and `inputs`, `steps` (known when a Pipeline runs) are
deferred: the string is kept and its references become dependency edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IMMEDIATE_ROOTS = ("vars", "env")
DEFERRED_FIELDS = {"services": ("url", "host", "port"), "models": ("path",), "inputs": None, "steps": None}


class TemplateProblem(Exception):
    """A template that cannot be used; `code` is one of template-syntax, template-unsafe, template-undefined."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TemplateRef:
    """A deferred reference such as `services.chat.url`: root, resource name and attribute."""

    root: str
    name: str
    attr: str | None

    def __str__(self) -> str:
        return ".".join(p for p in (self.root, self.name, self.attr) if p)


def is_template(value: str) -> bool:
    """True when a string holds Jinja2 syntax and must go through the renderer."""
    return "{{" in value or "{%" in value


def render_string(source: str, context: Mapping[str, Any]) -> tuple[str, list[TemplateRef]]:
    """Render one template string now, or keep it when it has deferred references (returned as edges).

    `context` holds `vars` and, only when the operator allowed it, `env`.
    """
    from aimactl.manifest import sandbox

    return sandbox.render_string(source, context)


def render_deferred(source: str, context: Mapping[str, Any]) -> str:
    """Render a kept template once its deferred values (services, models, inputs, steps) are known."""
    from aimactl.manifest import sandbox

    return sandbox.render_deferred(source, context)
