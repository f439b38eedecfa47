"""A real llama.cpp server (llama-cpp-python) on a tiny generated GGUF, run by the process runtime: the Model is
fetched into the host cache, the Service answers /v1/chat/completions, its death is seen and repaired."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import component_unavailable, free_port

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("llama_cpp") is None:
        component_unavailable("llama-cpp-python is not installed (`make test` builds it into .venv)")
    import make_tiny_gguf

    return make_tiny_gguf.write(tmp_path_factory.mktemp("model") / "tiny.gguf")


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "NO_COLOR": "1",
           "DOCKER_HOST": f"unix://{tmp}/no-docker.sock"}
    return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _chat(port: int) -> dict:
    import urllib.request

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return dict(json.load(response))


def test_llamacpp_process_serves_a_fetched_model(tmp_path: Path, tiny_model: Path) -> None:
    port = free_port()
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(
        "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\n"
        f"spec: {{address: local, dataDir: '{tmp_path}/data', python: '{sys.executable}'}}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Model\nmetadata: {name: tiny}\n"
        f"spec: {{source: 'file://{tiny_model}', format: gguf}}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: chat}\nspec:\n  engine: llamacpp\n"
        f"  model: tiny\n  runtime: process\n  port: {port}\n  health: {{startupTimeout: 2m}}\n")
    first = _run(tmp_path, "apply", "-f", str(manifest), "--auto-approve")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "model.tiny@local will be created: not in the model cache on local" in first.stdout
    cached = tmp_path / "data" / "models" / "tiny" / "tiny.gguf"
    assert cached.read_bytes() == tiny_model.read_bytes()
    answer = _chat(port)
    assert answer["choices"][0]["message"]["role"] == "assistant"

    again = _run(tmp_path, "plan", "-f", str(manifest), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout

    [pid_file] = (tmp_path / "data" / "proc").glob("*.pid")
    os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
    seen = json.loads(_run(tmp_path, "plan", "-f", str(manifest), "-o", "json").stdout)
    [change] = [c for c in seen["changes"] if c["actions"] != ["no-op"]]
    assert change["address"] == "service.chat[0]@local" and change["reason"] == "process exited (-9)"
    assert _run(tmp_path, "apply", "-f", str(manifest), "--auto-approve").returncode == 0
    assert _chat(port)["choices"]
    assert _run(tmp_path, "destroy", "-f", str(manifest), "--auto-approve").returncode == 0
    listed = json.loads(_run(tmp_path, "models", "ls", "-f", str(manifest), "-o", "json").stdout)
    assert [(m["name"], m["host"], m["size"]) for m in listed] == [("tiny", "local", tiny_model.stat().st_size)]
    host_only = tmp_path / "host-only.yaml"
    host_only.write_text(manifest.read_text().split("---")[0])
    collected = _run(tmp_path, "models", "gc", "-f", str(host_only), "--yes")
    assert collected.returncode == 0 and "Removed 1 cached model" in collected.stdout
    assert not cached.exists()
    assert json.loads(_run(tmp_path, "models", "ls", "-f", str(host_only), "-o", "json").stdout) == []
