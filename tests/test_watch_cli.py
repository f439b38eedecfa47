"""`aimactl watch` as a command, without Docker: the GPU section from NVML values captured on real GPUs (the
one accepted fake), JSON output, and clear errors for bad flags and manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GPU_DATA = Path(__file__).parent / "data" / "gpus"


def watch(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1",
               "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", **env}
    return subprocess.run([sys.executable, "-m", "aimactl", "watch", *args], capture_output=True, text=True,
                          env=environ, timeout=60)


@pytest.mark.parametrize("columns", ["80", "200"])
def test_once_shows_the_gpus_and_the_host(tmp_path: Path, columns: str) -> None:
    out = watch(tmp_path, "--once", AIMACTL_FAKE_NVML=str(GPU_DATA / "h100.json"), COLUMNS=columns)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= int(columns)
    gpus = [line for line in lines if "NVIDIA H100 80GB HBM3" in line]
    assert len(gpus) == 2 and "145W/700W" in gpus[0] and "39°C" in gpus[0]
    hosts = lines[lines.index("Hosts") + 1:lines.index("GPUs")]
    # Reachable, but this host has no Docker engine: said in its row, not a traceback.
    assert hosts[0].split()[:2] == ["HOST", "STATUS"] and hosts[1].split()[:3] == ["local", "no", "docker:"]


def test_once_as_json(tmp_path: Path) -> None:
    out = watch(tmp_path, "--once", "-o", "json", AIMACTL_FAKE_NVML=str(GPU_DATA / "gb10.json"))
    assert out.returncode == 0, out.stderr
    frame = json.loads(out.stdout)
    assert frame["stack"] == "default" and frame["manifests"] is False
    [gpu] = frame["gpus"]
    assert (gpu["name"], gpu["temperature_c"], gpu["power_limit_w"]) == ("NVIDIA GB10", 36.0, None)
    assert frame["hosts"][0]["name"] == "local" and frame["hosts"][0]["status"] == "no docker"


def test_bad_flags_and_manifests_are_clear_errors(tmp_path: Path) -> None:
    json_live = watch(tmp_path, "-o", "json")
    assert json_live.returncode == 2 and "add --once" in json_live.stderr
    interval = watch(tmp_path, "--once", "--interval", "soon")
    assert interval.returncode == 2 and "'soon' is not a duration" in interval.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: Bad_Name}\nspec: {engine: custom}\n")
    manifests = watch(tmp_path, "--once", "-f", str(bad))
    assert manifests.returncode == 1 and f"{bad}:" in manifests.stderr and "Traceback" not in manifests.stderr


def test_unreachable_host_and_what_it_should_run(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\nspec: {address: local}\n---\n"
        # Nothing listens on port 1 of the loopback: the SSH connection is refused at once.
        "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: edge-down}\nspec: {address: 'ssh://aima@127.0.0.1:1'}\n"
        "---\napiVersion: aima.dev/v1\nkind: App\nmetadata: {name: queue}\nspec:\n  image: busybox:latest\n"
        "  host: edge-down\n  replicas: 2\n")
    out = watch(tmp_path, "--once", "-f", str(tmp_path / "fleet.yaml"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    [down] = [line for line in lines if line.startswith("edge-down")]
    assert down.split()[1] == "unreachable:" and "connection refused" in down
    [queue] = [line for line in lines if line.startswith("app/queue")]
    assert queue.split()[1:6] == ["edge-down", "Unknown", "unknown", "0", "0/2"]
    assert "host unreachable" in queue


def test_piped_without_once_prints_a_frame_per_interval_until_sigterm(tmp_path: Path) -> None:
    import signal
    import time

    environ = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1",
               "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    proc = subprocess.Popen([sys.executable, "-m", "aimactl", "watch", "--interval", "0.2s"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environ)
    try:
        headers = 0
        deadline = time.monotonic() + 60
        while headers < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            headers += line.startswith("aimactl watch")
        assert headers == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()


def test_an_unusable_state_dir_costs_only_the_events(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("")
    out = watch(tmp_path, "--once", AIMACTL_STATE_DIR=str(not_a_dir / "sub"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2:] == ["Events", "none"] and "local" in out.stdout
