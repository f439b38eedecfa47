"""Observing a converged SSH host costs one exec channel and no SFTP session: the helper's bootstrap finds the
uploaded helper itself, and the batch answers what SFTP used to read (the home for `~`, the model index, whether
the Docker socket exists). Counted on the real connection to a real sshd (SshConnector.opened), with a real
process Service applied by the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aimactl.converge.connections import Connections
from aimactl.converge.observe import observe
from aimactl.core.desired import HostInfo
from aimactl.core.observed import ObservedHost
from aimactl.helper import helper_location
from tests.fixtures.sshd import SshHost, SshHosts

pytestmark = pytest.mark.ssh
PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), sys.executable)


def _info(fleet: SshHosts, host: SshHost, data_dir: str) -> HostInfo:
    return HostInfo(host.name, f"ssh://{host.user}@{host.address}:{host.port}", host.address, data_dir,
                    python=PYTHON, identity_file=str(fleet.client_key_path),
                    known_hosts=str(fleet.known_hosts_path), docker=f"{data_dir}/no-docker.sock")


def _observe(connections: Connections, host: str, stack: str = "nostack") -> tuple[ObservedHost, dict[str, int]]:
    """One observation of `host` (as plan runs it) and the channels it opened on the host's connection."""
    before = dict(connections.ssh(host).opened) if host in connections._connectors else {"exec": 0, "sftp": 0}
    seen = observe(connections, stack, []).hosts[host]
    after = connections.ssh(host).opened
    return seen, {kind: after[kind] - before[kind] for kind in after}


@pytest.fixture
def stack(ssh_hosts: SshHosts, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A process Service (`sleep`) applied on edge-1 by the CLI: (stack name, data dir, manifest)."""
    host, data, name = ssh_hosts.by_name("edge-1"), tmp_path / "data", "s" + uuid.uuid4().hex[:8]
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(ssh_hosts.host_manifest(host, data, f"{data}/no-docker.sock", extra=f"  python: {PYTHON}\n")
                        + "---\napiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: nap}\nspec:\n"
                        f"  host: {host.name}\n  engine: custom\n  runtime: process\n  command: [sleep, '3600']\n")
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "AIMACTL_STACK": name, "NO_COLOR": "1",
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aimactl", *args, "-f", str(manifest)], env=env,
                              capture_output=True, text=True, timeout=180)

    applied = cli("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    planned = cli("plan", "--detailed-exitcode")
    assert planned.returncode == 0, planned.stdout + planned.stderr  # converged: nothing to do
    yield name, data, manifest
    cli("destroy", "--auto-approve")


def test_a_converged_ssh_host_is_observed_with_one_exec_and_no_sftp(ssh_hosts: SshHosts,
                                                                     stack: tuple[str, Path, Path]) -> None:
    name, data, _ = stack
    host = ssh_hosts.by_name("edge-1")
    (data / "models").mkdir(exist_ok=True)
    (data / "models" / "index.json").write_text(json.dumps({"tiny": {"path": "/x", "size": 3}}))
    connections = Connections({host.name: _info(ssh_hosts, host, str(data))}, {})
    try:
        seen, opened = _observe(connections, host.name, name)
        assert opened == {"exec": 1, "sftp": 0}
        assert seen.reachable and [c.name for c in seen.containers] == [f"aima-{name}-nap-0"]
        assert seen.containers[0].state == "running"
        assert seen.models == {"tiny": {"path": "/x", "size": 3}}  # the index, read by the helper
        assert seen.facts is not None and seen.facts.disk_path == str(data)
        assert "no-docker.sock" in (seen.docker_error or "")  # told by the batch: no dial, no SFTP stat
        assert connections.helper_path(host.name) == helper_location(str(data))  # known: no SFTP either
        assert connections.ssh(host.name).opened == {"exec": 1, "sftp": 0}
    finally:
        connections.close()


def test_a_parked_connection_is_reused_by_the_next_plan_of_the_command(ssh_hosts: SshHosts,
                                                                        stack: tuple[str, Path, Path]) -> None:
    name, data, _ = stack
    host = ssh_hosts.by_name("edge-1")
    first = Connections({host.name: _info(ssh_hosts, host, str(data))}, {})
    _observe(first, host.name, name)
    connector = first.ssh(host.name)
    first.close(keep_connections=True)  # apply's preview plan hands its connections to the locked plan
    second = Connections({host.name: _info(ssh_hosts, host, str(data))}, {})
    try:
        before = dict(connector.opened)
        seen = observe(second, name, []).hosts[host.name]
        assert second.ssh(host.name) is connector  # no second connection
        assert connector.opened == {"exec": before["exec"] + 1, "sftp": before["sftp"]}
        assert seen.reachable and len(seen.containers) == 1
    finally:
        second.close()


def test_a_deleted_helper_is_uploaded_again_and_the_observation_still_works(ssh_hosts: SshHosts,
                                                                             stack: tuple[str, Path, Path]) -> None:
    name, data, _ = stack
    host = ssh_hosts.by_name("edge-1")
    shutil.rmtree(data / "helper")
    connections = Connections({host.name: _info(ssh_hosts, host, str(data))}, {})
    try:
        seen, opened = _observe(connections, host.name, name)
        assert opened == {"exec": 2, "sftp": 1}  # told missing, uploaded, asked again
        assert seen.reachable and [c.state for c in seen.containers] == ["running"]
        assert os.path.isfile(helper_location(str(data)))
    finally:
        connections.close()
    connections = Connections({host.name: _info(ssh_hosts, host, str(data))}, {})
    try:
        assert _observe(connections, host.name, name)[1] == {"exec": 1, "sftp": 0}
        shutil.rmtree(data / "helper")  # deleted while a long-lived command (the reconcile loop) holds on
        seen, opened = _observe(connections, host.name, name)
        assert seen.reachable and opened == {"exec": 2, "sftp": 1}
        assert os.path.isfile(helper_location(str(data)))
    finally:
        connections.close()


def test_tilde_in_data_dir_is_resolved_from_the_batch_without_sftp(ssh_hosts: SshHosts) -> None:
    host = ssh_hosts.by_name("edge-2")
    name = f"aimactl-test-{uuid.uuid4().hex[:8]}"
    root = Path(os.path.expanduser("~")) / name  # the fixture logs in as this machine's root: same home
    info = _info(ssh_hosts, host, f"~/{name}/data")
    try:
        connections = Connections({host.name: info}, {})
        try:  # first contact: the helper is uploaded (SFTP resolves `~` for the upload)
            seen, opened = _observe(connections, host.name)
            assert seen.reachable and opened == {"exec": 2, "sftp": 1}
        finally:
            connections.close()
        (root / "data" / "models").mkdir(parents=True)
        (root / "data" / "models" / "index.json").write_text('{"m": {"size": 1}}')
        connections = Connections({host.name: info}, {})
        try:
            seen, opened = _observe(connections, host.name)
            assert opened == {"exec": 1, "sftp": 0}
            assert connections.hosts[host.name].data_dir == str(root / "data")  # resolved for apply, locks ...
            assert seen.facts is not None and seen.facts.disk_path == str(root / "data")
            assert seen.models == {"m": {"size": 1}}
            assert connections.helper_path(host.name) == helper_location(str(root / "data"))
            assert connections.ssh(host.name).expand("~/x") == str(root.parent / "x")  # the learned home
            assert connections.ssh(host.name).opened == {"exec": 1, "sftp": 0}
            # Later steps use the resolved paths: a model index written over SFTP lands under the real home.
            connections.ssh(host.name).put(b"{}", f"~/{name}/data/models/other.json")
            assert (root / "data" / "models" / "other.json").read_bytes() == b"{}"
        finally:
            connections.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
