"""Facts of SSH hosts through the helper's `probe` over a real sshd, and a plan placing Services across two
SSH hosts by label and GPU memory (the GPUs of each host are NVML values captured from real machines, selected
per host with AIMACTL_FAKE_NVML=edge-1=FILE,edge-2=FILE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aimactl.converge.connections import Connections
from aimactl.converge.observe import observe_facts
from aimactl.core.desired import HostInfo
from tests.fixtures.sshd import SshHost, SshHosts

pytestmark = pytest.mark.ssh
DATA = Path(__file__).parent / "data" / "gpus"
GIB = 2**30


def _info(fleet: SshHosts, host: SshHost, data_dir: Path) -> HostInfo:
    return HostInfo(host.name, f"ssh://{host.user}@{host.address}:{host.port}", host.address, str(data_dir),
                    identity_file=str(fleet.client_key_path), known_hosts=str(fleet.known_hosts_path))


def test_facts_of_an_ssh_host_come_from_its_helper(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-1")
    connections = Connections({host.name: _info(ssh_hosts, host, tmp_path / "data")}, {})
    try:
        facts, why = observe_facts(connections, host.name)
    finally:
        connections.close()
    assert why is None and facts is not None
    assert facts.cpu_count == os.cpu_count() and facts.mem_total and facts.disk_path == str(tmp_path / "data")
    assert facts.source in ("none", "nvml", "nvidia-smi") and (facts.source != "none" or facts.gpu_note)


def test_plan_places_across_ssh_hosts_by_gpu_memory(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    docs = []
    for host in ssh_hosts.hosts[:2]:
        docs.append(f"apiVersion: aima.dev/v1\nkind: Host\nmetadata: {{name: {host.name}}}\n"
                    f"spec: {{address: 'ssh://{host.user}@{host.address}:{host.port}', dataDir: "
                    f"'{tmp_path}/{host.name}', identityFile: '{ssh_hosts.client_key_path}', "
                    f"knownHosts: '{ssh_hosts.known_hosts_path}', labels: {{gpu: 'true'}}}}\n")
    for name, memory in (("small", "6GiB"), ("large", "60GiB")):
        docs.append(f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
                    f"spec: {{engine: custom, runtime: process, command: [sleep, '600'], "
                    f"hostSelector: {{gpu: 'true'}}, resources: {{gpus: 1, gpuMemory: {memory}}}}}\n")
    manifest = tmp_path / "stack.yaml"
    manifest.write_text("---\n".join(docs))
    names = [h.name for h in ssh_hosts.hosts[:2]]
    environ = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1",
               "AIMACTL_FAKE_NVML": f"{names[0]}={DATA / 'h100.json'},{names[1]}={DATA / 'gb10.json'}"}
    done = subprocess.run([sys.executable, "-m", "aimactl", "plan", "-f", str(manifest), "-o", "json"],
                          capture_output=True, text=True, env=environ, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    placements = json.loads(done.stdout)["placements"]
    # 6 GiB fits on the busy H100 host (8.6 GiB free per GPU): binpack fills it; 60 GiB only fits in the GB10's
    # unified memory (RAM minus the OS reserve).
    assert (placements["service/small"]["host"], placements["service/small"]["gpus"]) == (names[0], [["0"]])
    assert (placements["service/large"]["host"], placements["service/large"]["gpus"]) == (names[1], [["0"]])
    hosts = subprocess.run([sys.executable, "-m", "aimactl", "hosts", "-f", str(manifest), "-o", "json"],
                           capture_output=True, text=True, env=environ, timeout=180)
    assert hosts.returncode == 0, hosts.stderr
    by_host = {row["host"]: row["facts"] for row in json.loads(hosts.stdout)}
    assert by_host[names[1]]["gpus"][0]["usable_memory"] == 128501256192 - 16 * GIB
    assert by_host[names[0]]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"


def test_a_native_engine_on_an_ssh_host_uses_what_that_host_has(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    """The host's probe says which engine programs and Python modules it has: with llama-cpp-python in the Host's
    `python` and no `llama-server` there, llama.cpp runs as `python -m llama_cpp.server`, on every interface."""
    import shutil

    host = ssh_hosts.by_name("edge-1")
    assert shutil.which("llama-server") is None, "this test expects a machine without llama-server"
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(
        f"apiVersion: aima.dev/v1\nkind: Host\nmetadata: {{name: {host.name}}}\n"
        f"spec: {{address: 'ssh://{host.user}@{host.address}:{host.port}', dataDir: '{tmp_path}/data', "
        f"python: '{sys.executable}', identityFile: '{ssh_hosts.client_key_path}', "
        f"knownHosts: '{ssh_hosts.known_hosts_path}'}}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Model\nmetadata: {name: tiny}\n"
        "spec: {source: 'https://models.example.com/tiny.gguf'}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: chat}\n"
        f"spec: {{engine: llamacpp, model: tiny, runtime: process, host: {host.name}, port: 9301}}\n")
    environ = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "aimactl", "plan", "-f", str(manifest), "-o", "json"],
                          capture_output=True, text=True, env=environ, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    [chat] = [c for c in json.loads(done.stdout)["changes"] if c["address"].startswith("service.chat")]
    command = chat["desired"]["container"]["command"]
    assert command[:3] == [sys.executable, "-m", "llama_cpp.server"], command
    assert command[command.index("--host") + 1] == "0.0.0.0"
