"""The CLI as people and agents use it: through typer's runner and as a real `aimactl` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aimactl import __version__
from aimactl.cli.app import app

ROOT = Path(__file__).parent.parent
BAD = ROOT / "tests" / "cases" / "manifests" / "bad"
AIMACTL = [sys.executable, "-m", "aimactl"]
runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run aimactl as a real process, the way a shell or a CI job does."""
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([*AIMACTL, *args], input=stdin, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60)


def test_help_lists_every_verb_with_one_line() -> None:
    result = run("--help")
    assert result.returncode == 0
    commands = result.stdout.split("Commands:")[1].strip().splitlines()
    verbs = [line.split()[0] for line in commands]
    assert {"validate", "schema", "explain", "version"} <= set(verbs)
    assert all(len(line.split(None, 1)) == 2 for line in commands), "every verb has a one-line description"


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"aimactl {__version__}"


def test_validate_summary_counts_kinds() -> None:
    result = run("validate", "-f", "examples/quickstart")
    assert result.returncode == 0, result.stderr
    assert "5 resources valid: 1 Host, 1 Model, 1 Service, 1 App, 1 Pipeline" in result.stdout


def test_validate_reports_every_error_with_position_and_exit_1() -> None:
    result = run("validate", "-f", str(BAD / "many-errors.yaml"), "-f", str(BAD / "tabs.yaml"))
    assert result.returncode == 1
    expected = "many-errors.yaml:9:3: unknown-field: spec.imag: unknown field 'imag' (did you mean 'image'?)"
    assert expected in result.stderr
    assert "tabs.yaml:5:1: yaml-tab" in result.stderr
    assert "4 errors found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_validate_json_for_agents() -> None:
    result = run("validate", "-f", str(BAD / "unknown-field.yaml"), "-f", "examples/quickstart", "-o", "json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["valid"] is False
    assert {r["name"] for r in data["resources"]} >= {"chat", "tiny-llama", "summarize"}
    [error] = data["errors"]
    assert error == {"code": "unknown-field", "message": "unknown field 'resorces' (did you mean 'resources'?)",
                     "file": str(BAD / "unknown-field.yaml"), "line": 8, "column": 3, "path": "spec.resorces"}


def test_validate_reads_stdin_and_vars(tmp_path: Path) -> None:
    manifest = "apiVersion: aima.dev/v1\nkind: App\nmetadata: {name: web}\nspec: {image: 'x:{{ vars.tag }}'}\n"
    assert run("validate", "-f", "-", stdin=manifest).returncode == 1
    assert run("validate", "-f", "-", "--var", "tag=1", stdin=manifest).returncode == 0
    var_file = tmp_path / "vars.yaml"
    var_file.write_text("tag: '2.0'\n")
    ok = run("validate", "-f", "-", "--var-file", str(var_file), stdin=manifest)
    assert ok.returncode == 0 and "1 resource valid: 1 App" in ok.stdout


def test_allow_env_opens_env_to_templates() -> None:
    manifest = "apiVersion: aima.dev/v1\nkind: App\nmetadata: {name: web}\nspec: {image: '{{ env.AIMA_IMG }}'}\n"
    env = {**os.environ, "AIMA_IMG": "busybox"}
    denied = subprocess.run([*AIMACTL, "validate", "-f", "-"], input=manifest, text=True, capture_output=True, env=env)
    assert denied.returncode == 1 and "--allow-env" in denied.stderr
    allowed = subprocess.run([*AIMACTL, "validate", "-f", "-", "--allow-env"], input=manifest, text=True,
                             capture_output=True, env=env)
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.parametrize("args", [
    ["validate", "-f", "/nonexistent/stack.yaml"],
    ["validate", "-f", "tests"],
    ["validate", "-f", "README.md", "--var", "not an assignment"],
    ["explain", "service.spec.nothing"],
    ["explain", "gadget"],
])
def test_bad_input_is_one_clear_error_never_a_traceback(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip()


def test_binary_garbage_is_reported_not_crashed(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)))
    result = run("validate", "-f", str(garbage))
    assert result.returncode == 1
    assert "garbage.yaml" in result.stderr and "Traceback" not in result.stderr


def test_explain_resources_like_kubectl() -> None:
    result = runner.invoke(app, ["explain", "service.spec.resources"])
    assert result.exit_code == 0
    assert "KIND:     Service" in result.stdout
    assert "FIELD:    resources <Resources>" in result.stdout
    for field in ("gpus", "gpuMemory", "memory", "cpus"):
        assert f"\n  {field} " in result.stdout
    assert "GPU memory the workload needs" in result.stdout


def test_explain_recursive_shows_nested_fields() -> None:
    flat = runner.invoke(app, ["explain", "service.spec"]).stdout
    deep = runner.invoke(app, ["explain", "service.spec", "--recursive"]).stdout
    assert "    startupTimeout" in deep and "    startupTimeout" not in flat
    assert "engine" in deep and "-required-" in deep


def test_schema_check_passes_on_the_committed_schemas() -> None:
    result = run("schema", "--check")
    assert result.returncode == 0, result.stderr


def test_schema_writes_every_kind(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "aimactl.json", "app.json", "host.json", "model.json", "pipeline.json", "service.json"]
    stale = runner.invoke(app, ["schema", "--out", str(tmp_path / "empty"), "--check"])
    assert stale.exit_code == 1
