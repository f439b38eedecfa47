"""JSON Schemas generated from the kinds: one per kind and one for any kind, committed under `schemas/`."""

from __future__ import annotations

import ast
import functools
import inspect
import json
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from aimactl.manifest import kinds
from aimactl.manifest.kinds import KINDS

COMBINED = "aimactl"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _docstrings_by_class() -> dict[str, dict[str, str]]:
    """Class name -> attribute -> the docstring written right under that attribute in kinds.py."""
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(inspect.getsource(kinds)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out.setdefault(node.name, {})
        for field, doc in zip(node.body, node.body[1:]):
            if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)):
                docs[field.target.id] = inspect.cleandoc(doc.value.value)
    return out


@functools.cache
def field_docs() -> dict[str, dict[str, str]]:
    """Model class name -> YAML key -> description, inherited docs included.

    The field docstrings of kinds.py are read here, when a schema is built, instead of by pydantic's
    `use_attribute_docstrings` at import, which inspects every class's source on every command (~60 ms).
    """
    by_class = _docstrings_by_class()
    out: dict[str, dict[str, str]] = {}
    for cls in vars(kinds).values():
        if not (isinstance(cls, type) and issubclass(cls, kinds.Strict)):
            continue
        docs: dict[str, str] = {}
        for base in reversed(cls.__mro__):
            docs.update(by_class.get(base.__name__, {}) if base.__module__ == kinds.__name__ else {})
        out[cls.__name__] = {(info.alias or name): docs[name] for name, info in cls.model_fields.items()
                             if name in docs}
    return out


def _with_docs(schema: dict[str, Any]) -> dict[str, Any]:
    """Put the field docstrings into every definition's properties (declared descriptions win)."""
    docs = field_docs()
    for name, definition in schema.get("$defs", {}).items():
        for key, prop in definition.get("properties", {}).items():
            if key in docs.get(name, {}):
                prop.setdefault("description", docs[name][key])
    return schema


def kind_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind's documents, keyed by YAML (camelCase) names."""
    schema = _with_docs(KINDS[kind].model_json_schema(by_alias=True, mode="validation"))
    return {"$schema": DRAFT, "$id": f"{kind.lower()}.json", **schema}


def combined_schema() -> dict[str, Any]:
    """One schema accepting a document of any kind, chosen by its `kind` field."""
    any_kind: Any = Annotated[Union[tuple(KINDS.values())], Field(discriminator="kind")]  # noqa: UP007
    schema = _with_docs(TypeAdapter(any_kind).json_schema(by_alias=True, mode="validation"))
    return {"$schema": DRAFT, "$id": f"{COMBINED}.json", "title": "aimactl manifest",
            "description": "Any aimactl manifest document (Host, Model, Service, App or Pipeline).", **schema}


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every file under `schemas/`."""
    out = {f"{kind.lower()}.json": kind_schema(kind) for kind in KINDS}
    out[f"{COMBINED}.json"] = combined_schema()
    return out


def dumps(schema: dict[str, Any]) -> str:
    """Stable text of a schema, so that committed files diff cleanly."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
