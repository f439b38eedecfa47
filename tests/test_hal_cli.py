"""`aimactl hosts`, `plan` and `describe` end to end with the NVML seam fed by values captured from real GPUs
(AIMACTL_FAKE_NVML, read only by aimactl/hosts/facts.py): the real CLI, the real helper code, the real local
CPU, RAM and disk; only the GPU answer is a capture (tests/data/gpus/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "gpus"
ROOT = Path(__file__).parent.parent
GIB = 2**30


def _run(tmp: Path, *args: str, fake: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "NO_COLOR": "1", "COLUMNS": "200",
               "DOCKER_HOST": f"unix://{tmp}/no-docker.sock"}
    environ.pop("AIMACTL_FAKE_NVML", None)
    if fake:
        environ["AIMACTL_FAKE_NVML"] = str(DATA / fake)
    return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=environ,
                          timeout=120, cwd=ROOT)


def _host(tmp: Path) -> str:
    return ("apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\n"
            f"spec: {{address: local, dataDir: '{tmp}/data', python: '{sys.executable}'}}\n")


def _worker(name: str, gpus: int, memory: str, port: int) -> str:
    """A native process Service (no Docker needed) asking for GPUs."""
    return (f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
            f"spec: {{engine: custom, runtime: process, command: [sleep, '600'], port: {port}, "
            f"resources: {{gpus: {gpus}, gpuMemory: {memory}}}}}\n")


def _manifest(tmp: Path, *docs: str) -> str:
    path = tmp / "stack.yaml"
    path.write_text("---\n".join([_host(tmp), *docs]))
    return str(path)


def test_hosts_shows_unified_memory_of_a_gb10(tmp_path: Path) -> None:
    text = _run(tmp_path, "hosts", fake="gb10.json")
    assert text.returncode == 0, text.stderr
    assert "NVIDIA GB10" in text.stdout and "unified" in text.stdout and "580.126.09" in text.stdout
    data = json.loads(_run(tmp_path, "hosts", "-o", "json", fake="gb10.json").stdout)
    facts = data[0]["facts"]
    gpu = facts["gpus"][0]
    assert gpu["unified"] and gpu["memory_total"] is None
    assert gpu["usable_memory"] == 128501256192 - 16 * GIB
    assert facts["cpu_count"] == os.cpu_count() and facts["disk_free"] > 0 and facts["cuda_version"] == "13.0"


def test_hosts_without_a_driver_says_so_and_succeeds(tmp_path: Path) -> None:
    done = _run(tmp_path, "hosts", "-o", "json")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)[0]["facts"]
    if facts["source"] == "none":  # this machine: no NVIDIA driver is a normal answer
        assert facts["gpus"] == [] and facts["gpu_note"]


def test_plan_refuses_gpu_memory_that_does_not_fit(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, _worker("big", 1, "20GiB", 9401))
    done = _run(tmp_path, "plan", "-f", manifest, fake="h100.json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "GPU 0 (NVIDIA H100 80GB HBM3) on local: 79.6 GiB usable cannot hold service.big[0] 20.0 GiB " \
           "(declared) with 71.1 GiB already used by others" in done.stdout


def test_plan_refuses_more_gpus_than_the_host_has(tmp_path: Path) -> None:
    done = _run(tmp_path, "plan", "-f", _manifest(tmp_path, _worker("wide", 3, "1GiB", 9402)), fake="rtx4090.json")
    assert done.returncode == 1
    assert "asks for 3 GPU(s) per replica; host local has 2 GPU(s)" in done.stdout


def test_plan_assigns_gpus_and_says_why(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, _worker("small", 1, "4GiB", 9403))
    text = _run(tmp_path, "plan", "-f", manifest, fake="rtx4090.json")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "service.small -> local: on local, the default host (no host or hostSelector); [0] GPU 0 (binpack)" \
        in text.stdout
    assert "needs ~4.0 GiB of GPU memory per replica (declared" in text.stdout
    plan = json.loads(_run(tmp_path, "plan", "-f", manifest, "-o", "json", fake="rtx4090.json").stdout)
    assert plan["placements"]["service/small"]["gpus"] == [["0"]]
    change = next(c for c in plan["changes"] if c["address"] == "service.small[0]@local")
    assert change["desired"]["container"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert change["desired"]["container"]["gpus"]["device_ids"] == ["0"]


def test_plan_estimates_from_the_gguf_header(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_gguf.py"), str(model)], check=True,
                   capture_output=True)
    manifest = _manifest(tmp_path, f"apiVersion: aima.dev/v1\nkind: Model\nmetadata: {{name: tiny}}\n"
                                   f"spec: {{source: 'file://{model}'}}\n",
                         "apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: chat}\n"
                         "spec: {engine: llamacpp, runtime: process, model: tiny, port: 9404, "
                         "resources: {gpus: 1}}\n")
    done = _run(tmp_path, "plan", "-f", manifest, "-o", "json", fake="rtx4090.json")
    assert done.returncode == 0, done.stdout + done.stderr
    estimate = json.loads(done.stdout)["placements"]["service/chat"]["estimate"]
    # 465152 bytes of F32 weights (what the gguf package wrote) x 1.2 + llama.cpp's 256 MiB footprint
    assert estimate["source"] == "from GGUF header"
    assert estimate["bytes"] == int(465152 * 1.2) + 256 * 2**20
    assert "F32" in estimate["detail"]


def test_describe_shows_placement_and_the_estimate_source(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, _worker("small", 1, "6GiB", 9405))
    done = _run(tmp_path, "describe", "service/small", "-f", manifest, fake="h100.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Placement: on local, the default host (no host or hostSelector); [0] GPU 0 (binpack)" in done.stdout
    assert "GPU memory: needs ~6.0 GiB of GPU memory per replica (declared: resources.gpuMemory 6.0 GiB)" \
        in done.stdout


def test_a_saved_plan_is_stale_when_the_gpu_lost_the_room_it_needed(tmp_path: Path) -> None:
    """Planned on a nearly empty RTX 4090 (20 of 24 GiB for this Service); by apply time the GPU reads as the
    busy H100 capture (8.6 GiB free): the saved plan is refused before anything starts."""
    manifest = _manifest(tmp_path, _worker("big", 1, "20GiB", 9406))
    saved = tmp_path / "plan.json"
    planned = _run(tmp_path, "plan", "-f", manifest, "--out", str(saved), fake="rtx4090.json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    (fingerprint,) = json.loads(saved.read_text())["gpu_fingerprints"]
    assert (fingerprint["host"], fingerprint["index"], fingerprint["free"]) == ("local", 0, (24564 - 507) * 2**20)
    applied = _run(tmp_path, "apply", str(saved), "--auto-approve", fake="h100.json")
    assert applied.returncode == 1
    assert "is stale" in applied.stderr and "GPU 0 on local: 14.9 GiB less free memory than when planned" \
        in applied.stderr, applied.stderr
    assert not (tmp_path / "data" / "proc").exists(), "nothing was started"
