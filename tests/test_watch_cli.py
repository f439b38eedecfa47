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
