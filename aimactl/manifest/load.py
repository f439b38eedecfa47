"""Load manifests: YAML text with positions -> rendered -> validated kind objects, collecting every error.

The loader never stops at the first problem: each document is checked on its own, and a broken file does not
hide the errors of the next one. Positions come from ruamel.yaml's round-trip loader so that every error can
name `file:line:column`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from aimactl.manifest import yamlio
from aimactl.manifest.errors import ManifestError
from aimactl.manifest.kinds import API_VERSION, KINDS, check_name
from aimactl.manifest.render import TemplateProblem, TemplateRef, is_template, render_string

locate = yamlio.locate
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Resource:
    """One validated manifest document and where it came from."""

    kind: str
    name: str
    doc: Any
    file: str
    line: int
    refs: list[tuple[TemplateRef, tuple[str | int, ...]]] = field(default_factory=list)
    """Deferred template references and the field path holding each."""
    node: Any = None
    """The YAML node of the document, to locate later (semantic) errors."""
    template_context: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """`vars` (and `env` when allowed) used at load time; deferred templates are rendered with them later."""
    base_dir: str = "."
    """Absolute directory of the manifest file: relative paths in it (volumes, secrets, models) start here."""

    @property
    def spec(self) -> Any:
        """The kind's spec object."""
        return self.doc.spec

    @property
    def key(self) -> str:
        """`kind/name` in lower case, as CLI addresses print it."""
        return f"{self.kind.lower()}/{self.name}"

    def locate(self, path: Iterable[str | int], key: bool = True) -> yamlio.Position:
        """Line and column of a field path inside this document (of its key, or of its value)."""
        return locate(self.node, list(path), key=key)


@dataclass
class LoadResult:
    """Every resource that validated and every error found."""

    resources: list[Resource] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)
    """Every file read, as {file, text}: revisions keep them so that a rollback can replay them."""
    broken: set[str] = field(default_factory=set)
    """Names of documents that failed to load: references to them are not reported as dangling too."""


def discover(paths: Iterable[str]) -> tuple[list[str], list[ManifestError]]:
    """Expand `-f` arguments: files as given, directories to their sorted *.yaml/*.yml, `-` for stdin."""
    files: list[str] = []
    errors: list[ManifestError] = []
    for raw in paths:
        if raw == "-":
            if "-" not in files:  # stdin can be read once
                files.append("-")
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
            if not found:
                errors.append(ManifestError("no-manifests", "directory holds no *.yaml or *.yml files", raw))
            files.extend(found)
        elif path.is_file():
            files.append(raw)
        else:
            errors.append(ManifestError("file-not-found", "no such file or directory", raw))
    return files, errors


class _Renderer:
    """Renders every template string of one document, remembering deferred references and errors."""

    def __init__(self, context: Mapping[str, Any]):
        self.context = context
        self.refs: list[tuple[TemplateRef, tuple[str | int, ...]]] = []
        self.problems: list[tuple[list[str | int], TemplateProblem]] = []

    def walk(self, value: Any, path: list[str | int]) -> Any:
        if isinstance(value, dict):
            return {k: self.walk(v, [*path, k]) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v, [*path, i]) for i, v in enumerate(value)]
        if isinstance(value, str) and is_template(value):
            try:
                rendered, refs = render_string(value, self.context)
            except TemplateProblem as problem:
                self.problems.append((path, problem))
                return value
            self.refs.extend((ref, tuple(path)) for ref in refs)
            return rendered
        return value


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The YAML keys allowed at the object that holds the unknown field at `loc`."""
    current: Any = model
    for part in loc[:-1]:
        fields = {(f.alias or n): f for n, f in current.model_fields.items()}
        if part not in fields:
            continue
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        current = nested[0]
    return [f.alias or n for n, f in current.model_fields.items()]


def split_loc(data: Any, loc: tuple[Any, ...], missing: bool = False) -> tuple[list[str | int], bool]:
    """The parts of a pydantic error location that are fields of the document, and whether a union tag was met.

    pydantic inserts union member names (`str`, `SecretValue`, `function-after[...]`) into locations; walking
    the document itself tells real keys (even capitalised env names) from those tags. The last part of a
    `missing` error is the absent field's name.
    """
    path: list[str | int] = []
    node, tagged = data, False
    for i, part in enumerate(loc):
        if isinstance(node, Mapping) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif missing and i == len(loc) - 1:
            path.append(part)
        else:
            tagged = True
    return path, tagged


_BASIC_TYPE_ERRORS = {"string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type", "model_type"}


def _pydantic_errors(exc: ValidationError, model: type[BaseModel], data: Any, node: Any,
                     file: str) -> list[ManifestError]:
    """Turn pydantic's errors into ManifestErrors with positions, field paths and hints.

    For a union (`str | SecretValue`) pydantic reports every member's failure; a bare "should be a valid
    string" is dropped when another member explains the same field in more detail.
    """
    raw = exc.errors(include_url=False)
    split = [split_loc(data, tuple(e["loc"]), e["type"] == "missing") for e in raw]
    detailed = {tuple(path) for (path, _), e in zip(split, raw) if e["type"] not in _BASIC_TYPE_ERRORS}
    out = []
    merged: dict[tuple[str | int, ...], list[str]] = {}
    for err, (fields, tagged) in zip(raw, split):
        if tagged and err["type"] in _BASIC_TYPE_ERRORS:
            merged.setdefault(tuple(fields), []).append(err["msg"].removeprefix("Input should be "))
    for err, (fields, tagged) in zip(raw, split):
        covered = any(d[:len(fields)] == tuple(fields) for d in detailed)
        if tagged and err["type"] in _BASIC_TYPE_ERRORS:
            alternatives = merged.pop(tuple(fields), None)
            if covered or not alternatives:
                continue
            err = {**err, "msg": "Input should be " + " or ".join(dict.fromkeys(alternatives))}
        path = ".".join(str(p) for p in fields)
        # Unknown and missing fields point at the key; a bad value points at the value itself.
        line, col = locate(node, list(fields), key=err["type"] in ("extra_forbidden", "missing"))
        message, code = err["msg"], "invalid-value"
        if err["type"] == "extra_forbidden":
            code = "unknown-field"
            hint = _did_you_mean(str(fields[-1]), _allowed_fields(model, tuple(err["loc"])))
            message = f"unknown field {fields[-1]!r}{hint}"
        elif err["type"] == "missing":
            code = "missing-field"
            message = f"required field {fields[-1]!r} is missing"
        elif err["type"] == "literal_error":
            message = f"{err['input']!r} is not allowed: {err['msg'][len('Input should be '):]}"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        out.append(ManifestError(code, message, file, line, col, path))
    return out


def _check_header(data: Mapping[str, Any], node: Any, file: str) -> list[ManifestError]:
    """Check apiVersion, kind and metadata.name before the kind's own validation runs."""
    errors = []
    if data.get("apiVersion") != API_VERSION:
        line, col = locate(node, ["apiVersion"], key=False)
        errors.append(ManifestError("bad-api-version", f"apiVersion must be {API_VERSION!r}, got "
                                    f"{data.get('apiVersion')!r}", file, line, col, "apiVersion"))
    kind = data.get("kind")
    if kind not in KINDS:
        line, col = locate(node, ["kind"], key=False)
        hint = _did_you_mean(str(kind), KINDS)
        errors.append(ManifestError("unknown-kind", f"unknown kind {kind!r}{hint}; valid kinds: "
                                    + ", ".join(KINDS), file, line, col, "kind"))
    metadata = data.get("metadata")
    if not isinstance(metadata, Mapping) or "name" not in metadata:
        line, col = locate(node, ["metadata"])
        errors.append(ManifestError("missing-field", "metadata.name is required", file, line, col,
                                    "metadata.name"))
    else:
        try:
            check_name(metadata["name"])
        except ValueError as exc:
            line, col = locate(node, ["metadata", "name"], key=False)
            errors.append(ManifestError("invalid-name", str(exc), file, line, col, "metadata.name"))
    return errors


def load_document(node: Any, data: Any, file: str,
                  context: Mapping[str, Any]) -> tuple[Resource | None, list[ManifestError]]:
    """Validate one YAML document: header, templates, then the kind's pydantic model."""
    if not isinstance(data, Mapping):
        line, col = locate(node, [])
        return None, [ManifestError("not-a-mapping", "a manifest document must be a mapping with apiVersion, "
                                    f"kind, metadata and spec, got {_yaml_type(data)}", file, line, col)]
    errors = _check_header(data, node, file)
    if errors:
        return None, errors
    renderer = _Renderer(context)
    data = renderer.walk(data, [])
    for path, problem in renderer.problems:
        line, col = locate(node, path, key=False)
        errors.append(ManifestError(problem.code, problem.message, file, line, col,
                                    ".".join(str(p) for p in path)))
    model = KINDS[data["kind"]]
    try:
        doc = model.model_validate(data)
    except ValidationError as exc:
        # A field whose template failed is still the raw template; one error about it is enough.
        failed = {e.path for e in errors}
        errors.extend(e for e in _pydantic_errors(exc, model, data, node, file) if e.path not in failed)
    if errors:
        return None, errors
    return Resource(data["kind"], data["metadata"]["name"], doc, file, node.start_mark.line + 1, renderer.refs,
                    node), []


def load_text(text: str, file: str, context: Mapping[str, Any]) -> LoadResult:
    """Load every document of one YAML text; `file` names it in errors."""
    result = LoadResult()
    try:
        parsed = list(yamlio.documents(text))
    except yamlio.YAMLError as exc:
        code, message, (line, col) = yamlio.describe_error(exc, text)
        result.errors.append(ManifestError(code, message, file, line, col))
        return result
    if not parsed:
        result.errors.append(ManifestError("empty-file", "file holds no manifest documents", file, 1, 1))
    for node, data in parsed:
        resource, errors = load_document(node, data, file, context)
        result.errors.extend(errors)
        if resource:
            result.resources.append(resource)
        elif isinstance(data, Mapping) and isinstance(data.get("metadata"), Mapping):
            result.broken.add(str(data["metadata"].get("name")))
    return result


def load(paths: Iterable[str], context: Mapping[str, Any], stdin_text: str | None = None) -> LoadResult:
    """Load files, directories and `-` (stdin, whose text the caller passes) into one result."""
    files, errors = discover(paths)
    result = LoadResult(errors=errors)
    for file in files:
        if file == "-":
            text, name = stdin_text or "", "<stdin>"
        else:
            name = file
            try:
                text = Path(file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                result.errors.append(ManifestError("unreadable", f"cannot read: {exc}", file))
                continue
        part = load_text(text, name, context)
        result.sources.append({"file": name if file == "-" else str(Path(file).resolve()), "text": text})
        base_dir = str((Path.cwd() if file == "-" else Path(file).parent).resolve())
        for resource in part.resources:
            resource.base_dir = base_dir
            resource.template_context = context
        result.resources.extend(part.resources)
        result.errors.extend(part.errors)
        result.broken |= part.broken
    return result


def _yaml_type(node: Any) -> str:
    """The YAML word for a node's type, for messages."""
    if isinstance(node, list):
        return "a list"
    if isinstance(node, str):
        return "a string"
    return "a number" if isinstance(node, (int, float)) else type(node).__name__
