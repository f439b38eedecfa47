"""Ollama models (`ollama://name:tag`) as a user sees them in plan and apply: pulled through the Ollama Service's
API once it is healthy (before its warmup), observed with GET /api/tags, failing with Ollama's own words.

The real Ollama image cannot be pulled here: tests/data/ollama/fake_ollama.py is a real HTTP server speaking
those endpoints (GET /, /api/tags, streamed POST /api/pull, POST /api/generate), run by the process runtime as
the Service's command, so everything between aimactl and the engine is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aimactl.models.ollama import OllamaError, canonical, parse_pull_line, parse_tags
from tests.fixtures import free_port

FAKE = Path(__file__).parent / "data" / "ollama" / "fake_ollama.py"


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "NO_COLOR": "1", "COLUMNS": "200",
           "DOCKER_HOST": f"unix://{tmp}/no-docker.sock"}
    return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _manifest(tmp: Path, port: int, source: str) -> Path:
    path = tmp / "ollama.yaml"
    path.write_text(
        "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\n"
        f"spec: {{address: local, dataDir: '{tmp}/data', python: '{sys.executable}'}}\n---\n"
        f"apiVersion: aima.dev/v1\nkind: Model\nmetadata: {{name: qwen}}\nspec: {{source: '{source}'}}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: ol}\nspec:\n  engine: ollama\n  model: qwen\n"
        f"  runtime: process\n  port: {port}\n  command: ['{sys.executable}', '{FAKE}']\n"
        "  env: {FAKE_OLLAMA_LIBRARY: 'qwen2.5:0.5b'}\n  health: {startupTimeout: 30s, interval: 1s}\n")
    return path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    manifest = _manifest(tmp_path, port, "ollama://qwen2.5:0.5b")
    yield manifest, port
    _run(tmp_path, "destroy", "-f", str(manifest), "--auto-approve")


def _model(tmp: Path, manifest: Path) -> dict:
    planned = _run(tmp, "plan", "-f", str(manifest), "-o", "json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    [change] = [c for c in json.loads(planned.stdout)["changes"] if c["address"] == "model.qwen@local"]
    return dict(change)


def test_ollama_model_is_planned_pulled_after_the_service_is_healthy_and_then_present(
        tmp_path: Path, stack: tuple[Path, int]) -> None:
    manifest, _ = stack
    first = _run(tmp_path, "plan", "-f", str(manifest))
    assert ("# model.qwen@local will be created: pulled through the Ollama API of service.ol[0]@local once it is "
            "ready") in first.stdout, first.stdout

    applied = _run(tmp_path, "apply", "-f", str(manifest), "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    out = applied.stdout
    # The pull's progress shows while the Service starts (its warmup needs the model), then the model step says so.
    assert "service.ol[0]@local: 0.0 MiB of 3.0 MiB" in out, out
    assert "model.qwen@local: done" in out and "qwen2.5:0.5b pulled by service.ol[0]@local as it started" in out
    assert out.index("service.ol[0]@local: done") < out.index("model.qwen@local: done")

    present = _model(tmp_path, manifest)
    assert (present["actions"], present["reason"]) == (["no-op"], "present in the Ollama of service.ol[0]@local")
    assert _run(tmp_path, "plan", "-f", str(manifest), "--detailed-exitcode").returncode == 0

    # The model disappears from Ollama (someone ran `ollama rm`): GET /api/tags shows it, apply pulls it again.
    (tmp_path / "data" / "models" / "qwen" / "ollama" / "models" / "models.json").write_text("[]")
    missing = _model(tmp_path, manifest)
    assert (missing["actions"], missing["reason"]) == (["create"], "not pulled yet in the Ollama of "
                                                                   "service.ol[0]@local")
    again = _run(tmp_path, "apply", "-f", str(manifest), "--auto-approve")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "pulled qwen2.5:0.5b through the Ollama API of service.ol[0]@local" in again.stdout
    assert "model.qwen@local: 0.0 MiB of 3.0 MiB" in again.stdout
    assert _model(tmp_path, manifest)["actions"] == ["no-op"]


def test_a_model_ollama_cannot_pull_fails_the_service_with_ollamas_words(tmp_path: Path) -> None:
    port = free_port()
    manifest = _manifest(tmp_path, port, "ollama://no-such-model:7b")
    try:
        applied = _run(tmp_path, "apply", "-f", str(manifest), "--auto-approve")
        assert applied.returncode == 1, applied.stdout
        assert ("service.ol[0]@local: failed after" in applied.stdout
                and "pull of no-such-model:7b failed: pull model manifest: file does not exist" in applied.stdout)
        assert "model.qwen@local: skipped" in applied.stdout and "dependency service/ol failed" in applied.stdout
    finally:
        _run(tmp_path, "destroy", "-f", str(manifest), "--auto-approve")


def test_tags_and_pull_lines_parse_as_ollama_writes_them() -> None:
    tags = ('{"models":[{"name":"deepseek-r1:latest","model":"deepseek-r1:latest","modified_at":'
            '"2025-05-10T08:06:48.639712648-07:00","size":4683075271,"digest":"0a8c2669","details":{"format":"gguf"}},'
            '{"name":"hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M","model":"hf.co/bartowski/Qwen2.5-0.5B-'
            'Instruct-GGUF:Q4_K_M"}]}')
    names = parse_tags(tags)
    assert canonical("deepseek-r1") in names and canonical("library/deepseek-r1:latest") in names
    assert canonical("hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M") in names
    assert canonical("deepseek-r1:7b") not in names
    with pytest.raises(OllamaError, match="is this an Ollama server"):
        parse_tags('{"data": []}')
    progress = parse_pull_line(b'{"status":"pulling 8eeb52dfb3bb","digest":"sha256:8eeb","total":2142590208,'
                               b'"completed":241970}\n')
    assert progress is not None and (progress.completed, progress.total) == (241970, 2142590208)
    assert parse_pull_line('{"status":"success"}') == parse_pull_line('{"status":"success"}\n')
    assert parse_pull_line('{"status":"success"}').success  # type: ignore[union-attr]
    failed = parse_pull_line('{"error":"pull model manifest: file does not exist"}')
    assert failed is not None and failed.error == "pull model manifest: file does not exist"
    assert parse_pull_line("\n") is None


def test_a_saved_plan_pulls_the_same_way(tmp_path: Path, stack: tuple[Path, int]) -> None:
    manifest, _ = stack
    saved = tmp_path / "plan.json"
    assert _run(tmp_path, "plan", "-f", str(manifest), "--out", str(saved)).returncode == 0
    applied = _run(tmp_path, "apply", str(saved))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "qwen2.5:0.5b pulled by service.ol[0]@local as it started" in applied.stdout
    assert _model(tmp_path, manifest)["reason"] == "present in the Ollama of service.ol[0]@local"
