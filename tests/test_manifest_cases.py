"""Table-driven manifest cases: every bad file states the errors it must produce, every good file validates.

A bad case starts with one or more lines `# expect: CODE LINE:COLUMN message fragment`; the run must report
each of them (the same code at that position, with that text in the message) and nothing with a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aimactl.manifest import load_manifests

CASES = Path(__file__).parent / "cases" / "manifests"
EXPECT = re.compile(r"^# expect: (?P<code>[a-z-]+) (?P<line>\d+):(?P<col>\d+) (?P<text>.+)$", re.MULTILINE)


def _bad_cases() -> list[Path]:
    return sorted((CASES / "bad").glob("*.yaml"))


@pytest.mark.parametrize("path", _bad_cases(), ids=lambda p: p.stem)
def test_bad_manifest_reports_file_line_and_message(path: Path) -> None:
    expected = [m.groupdict() for m in EXPECT.finditer(path.read_text())]
    assert expected, f"{path.name} has no '# expect:' line"
    result = load_manifests([str(path)])
    assert not result.valid
    got = [(e.code, e.line, e.column, e.message, e.file) for e in result.errors]
    for want in expected:
        matches = [g for g in got if g[0] == want["code"] and g[1] == int(want["line"])
                   and g[2] == int(want["col"]) and want["text"] in g[3]]
        assert matches, f"expected {want} in {got}"
    assert all(g[4] == str(path) for g in got)


def test_all_errors_of_a_run_are_reported_across_files() -> None:
    names = ["many-errors.yaml", "tabs.yaml", "dangling-model.yaml"]
    result = load_manifests([str(CASES / "bad" / n) for n in names])
    got = sorted((Path(e.file).name, e.code) for e in result.errors)
    assert got == [("dangling-model.yaml", "dangling-reference"), ("many-errors.yaml", "invalid-name"),
                   ("many-errors.yaml", "unknown-field"), ("many-errors.yaml", "unknown-kind"),
                   ("tabs.yaml", "yaml-tab")]


@pytest.mark.parametrize("path", sorted((CASES / "good").glob("*.yaml")), ids=lambda p: p.stem)
def test_good_manifest_validates(path: Path) -> None:
    text = path.read_text()
    var_args = re.findall(r"^# var: (\S+)$", text, re.MULTILINE)
    result = load_manifests([str(path)], var_args=var_args)
    assert result.errors == []
    summary = re.search(r"^# summary: (.+)$", text, re.MULTILINE)
    assert summary and result.summary() == summary.group(1)


@pytest.mark.parametrize("example", ["quickstart", "gpu-stack"])
def test_examples_validate(example: str) -> None:
    result = load_manifests([str(Path(__file__).parent.parent / "examples" / example)])
    assert result.errors == []
    assert result.resources
