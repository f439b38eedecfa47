"""The committed JSON Schemas are what the code generates, and examples point editors at them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aimactl.manifest.schema import all_schemas, dumps

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("name", sorted(all_schemas()))
def test_committed_schema_is_fresh(name: str) -> None:
    committed = ROOT / "schemas" / name
    assert committed.exists(), f"schemas/{name} is missing: run `aimactl schema`"
    assert committed.read_text() == dumps(all_schemas()[name]), f"schemas/{name} is stale: run `aimactl schema`"


def test_schema_carries_field_docs_and_forbids_unknown_fields() -> None:
    service = json.loads((ROOT / "schemas" / "service.json").read_text())
    spec = service["$defs"]["ServiceSpec"]
    assert spec["additionalProperties"] is False
    assert "Host port the Service is published on" in spec["properties"]["port"]["description"]
    assert "gpuMemory" in service["$defs"]["Resources"]["properties"]


def test_combined_schema_dispatches_on_kind() -> None:
    combined = json.loads((ROOT / "schemas" / "aimactl.json").read_text())
    assert combined["discriminator"]["propertyName"] == "kind"
    assert set(combined["discriminator"]["mapping"]) == {"Host", "Model", "Service", "App", "Pipeline"}


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_start_with_the_schema_line(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (path.parent / first.split("$schema=", 1)[1]).resolve()
    assert target == (ROOT / "schemas" / "aimactl.json").resolve()
