"""YAML parsing with positions, fast: libyaml's C parser composes nodes that keep their marks.

The nodes give every field's line and column, so errors can point at them, and the data is constructed from
the same nodes with YAML 1.2 rules (`no`, `on` stay strings). Without ruamel.yaml.clib the pure-Python
parser is used, with the same results, only slower.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode
from ruamel.yaml.resolver import VersionedResolver

Position = tuple[int | None, int | None]

try:
    from ruamel.yaml.cyaml import CParser

    class _Loader(CParser, SafeConstructor, VersionedResolver):
        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            SafeConstructor.__init__(self, loader=self)
            VersionedResolver.__init__(self, version=(1, 2), loader=self)

except ImportError:  # pragma: no cover - only without ruamel.yaml.clib
    from ruamel.yaml.loader import SafeLoader

    class _Loader(SafeLoader):  # type: ignore[no-redef]
        def __init__(self, stream: str):
            super().__init__(stream, version=(1, 2))


__all__ = ["YAMLError", "documents", "construct", "locate", "describe_error"]


def documents(text: str) -> Iterator[tuple[Node, Any]]:
    """Yield (node, data) for each non-empty document; raises YAMLError on bad syntax or duplicate keys."""
    loader = _Loader(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ruamel warns about YAML 1.1 floats on stderr
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = to_plain(loader.construct_document(node))
            if data is not None:
                yield node, data


def construct(text: str) -> list[Any]:
    """All documents of a text as plain data."""
    return [data for _, data in documents(text)]


def to_plain(value: Any) -> Any:
    """Dates and timestamps become ISO strings: manifests are JSON-shaped."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _mark(node: Node, key: bool) -> Position:
    mark = node.start_mark
    return mark.line + 1, mark.column + 1


def locate(node: Node | None, path: list[str | int], *, key: bool = True) -> Position:
    """Walk a node along a field path; return the position of the deepest field that exists.

    With `key=True` a mapping field points at its key (`replicas:`), otherwise at its value. Path parts that
    are not in the document (pydantic's union tags) are skipped.
    """
    if node is None:
        return None, None
    position = _mark(node, key)
    for part in path:
        if isinstance(node, MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                continue
            position = _mark(match[0] if key else match[1], key)
            node = match[1]
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            position = _mark(node, key)
    return position


def describe_error(exc: YAMLError, text: str) -> tuple[str, str, Position]:
    """(code, message, position) of a YAML error, with plain words for tabs and duplicate keys."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    position: Position = (mark.line + 1, mark.column + 1) if mark else (None, None)
    problem = getattr(exc, "problem", None) or str(exc)
    lines = text.splitlines()
    if mark and mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]:
        return "yaml-tab", "tab character: YAML must be indented with spaces", position
    if "duplicate key" in problem:
        return "duplicate-key", problem, position
    if problem.startswith("could not determine a constructor"):
        return "yaml-syntax", "YAML tags (!!python/..., !custom) are not allowed in manifests", position
    return "yaml-syntax", problem, position
