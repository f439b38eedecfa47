"""JSON Schemas generated from the kinds: one per kind and one for any kind, committed under `schemas/`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from aimactl.manifest.kinds import KINDS

COMBINED = "aimactl"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def kind_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind's documents, keyed by YAML (camelCase) names."""
    schema = KINDS[kind].model_json_schema(by_alias=True, mode="validation")
    return {"$schema": DRAFT, "$id": f"{kind.lower()}.json", **schema}


def combined_schema() -> dict[str, Any]:
    """One schema accepting a document of any kind, chosen by its `kind` field."""
    any_kind: Any = Annotated[Union[tuple(KINDS.values())], Field(discriminator="kind")]  # noqa: UP007
    schema = TypeAdapter(any_kind).json_schema(by_alias=True, mode="validation")
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
