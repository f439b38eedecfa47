"""`aimactl explain`: describe a manifest field from the JSON Schema, in the manner of `kubectl explain`."""

from __future__ import annotations

from typing import Any

from aimactl.manifest.kinds import KINDS
from aimactl.manifest.schema import kind_schema


class ExplainError(ValueError):
    """A field path that does not exist; the message lists what does."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`, list items, map values and the object member of `anyOf` so fields can be walked."""
    if "$ref" in node:
        return _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        return _resolve(node["items"], defs)
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        return _resolve(node["additionalProperties"], defs)
    for member in node.get("anyOf", []):
        resolved = _resolve(member, defs)
        if resolved.get("type") == "object" and "properties" in resolved:
            return resolved
    return node


def type_name(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """A short type for display: `string`, `integer | null`, `[]string`, `map[string]string`, `Resources`."""
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in node:
        return " | ".join(dict.fromkeys(type_name(m, defs) for m in node["anyOf"]))
    if "const" in node:
        return f"{node['const']!r}"
    if "enum" in node:
        return " | ".join(repr(v) for v in node["enum"])
    kind = node.get("type", "any")
    if kind == "array":
        return "[]" + _grouped(type_name(node.get("items", {}), defs))
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map[string]" + _grouped(type_name(node["additionalProperties"], defs))
    return str(kind)


def _grouped(text: str) -> str:
    return f"({text})" if " | " in text else text


def _describe(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if node.get("description"):
        return str(node["description"])
    return str(_resolve(node, defs).get("description", ""))


def _default(node: dict[str, Any]) -> str:
    return f" (default: {node['default']!r})" if "default" in node and node["default"] not in ({}, [], None) else ""


def find(path: str) -> tuple[str, list[str], dict[str, Any], dict[str, Any]]:
    """Walk `service.spec.resources` to (kind, field names, schema node, $defs)."""
    parts = [p for p in path.split(".") if p]
    kinds = {k.lower(): k for k in KINDS}
    if not parts or parts[0].lower() not in kinds:
        raise ExplainError(f"unknown kind {parts[0] if parts else ''!r}; valid kinds: {', '.join(KINDS)}")
    kind = kinds[parts[0].lower()]
    schema = kind_schema(kind)
    defs = schema.get("$defs", {})
    node: dict[str, Any] = schema
    for i, part in enumerate(parts[1:], start=1):
        properties = _resolve(node, defs).get("properties", {})
        if part not in properties:
            where = ".".join(parts[:i])
            raise ExplainError(f"field {part!r} does not exist in {where}; fields: {', '.join(properties) or 'none'}")
        node = properties[part]
    return kind, parts[1:], node, defs


def _field_lines(node: dict[str, Any], defs: dict[str, Any], indent: int, recursive: bool) -> list[str]:
    resolved = _resolve(node, defs)
    required = set(resolved.get("required", []))
    lines = []
    for name, child in resolved.get("properties", {}).items():
        mark = " -required-" if name in required else ""
        lines.append(f"{' ' * indent}{name:<16} <{type_name(child, defs)}>{mark}{_default(child)}")
        if recursive:
            lines.extend(_field_lines(child, defs, indent + 2, recursive))
        else:
            for text in _describe(child, defs).splitlines():
                lines.append(f"{' ' * (indent + 2)}{text.strip()}")
            lines.append("")
    return lines


def explain(path: str, recursive: bool = False) -> str:
    """The text `aimactl explain PATH [--recursive]` prints."""
    kind, fields, node, defs = find(path)
    out = [f"KIND:     {kind}", "VERSION:  aima.dev/v1", ""]
    if fields:
        out += [f"FIELD:    {fields[-1]} <{type_name(node, defs)}>{_default(node)}", ""]
    out += ["DESCRIPTION:"]
    out += [f"    {line.strip()}" for line in (_describe(node, defs) or "(no description)").splitlines()]
    children = _field_lines(node, defs, 2, recursive)
    if children:
        out += ["", "FIELDS:", *children]
    return "\n".join(out).rstrip() + "\n"
