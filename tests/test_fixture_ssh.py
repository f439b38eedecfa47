"""Prove the sshd fixture: strict host-key checking, key login, commands and SFTP on distinct hosts."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import paramiko
import pytest

from tests.fixtures.sshd import SshHost, SshHosts

pytestmark = pytest.mark.ssh


def _strict_client(known_hosts: Path) -> paramiko.SSHClient:
    """Return an SSH client that accepts only the host keys listed in `known_hosts`."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _connect(client: paramiko.SSHClient, host: SshHost, client_key: Path) -> paramiko.SSHClient:
    """Log `client` in to `host` as its user with `client_key` only (no agent, no default keys)."""
    client.connect(
        host.address,
        port=host.port,
        username=host.user,
        pkey=paramiko.Ed25519Key.from_private_key_file(str(client_key)),
        allow_agent=False,
        look_for_keys=False,
        timeout=10,
    )
    return client


def _run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    """Run `command` over SSH and return its exit status and standard output."""
    _, stdout, _ = client.exec_command(command, timeout=30)
    output = stdout.read().decode()
    return stdout.channel.recv_exit_status(), output


def test_each_host_runs_commands_with_strict_host_keys(ssh_hosts: SshHosts) -> None:
    for host in ssh_hosts.hosts:
        with contextlib.closing(_strict_client(ssh_hosts.known_hosts_path)) as client:
            _connect(client, host, ssh_hosts.client_key_path)
            assert _run(client, "python3 -c 'print(42)'") == (0, "42\n")
            with contextlib.closing(client.open_sftp()) as sftp:
                assert sftp.stat(str(ssh_hosts.known_hosts_path)).st_size > 0


def test_unknown_host_keys_are_rejected_and_hosts_differ(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    for host in ssh_hosts.hosts:
        with contextlib.closing(_strict_client(empty_known_hosts)) as client:
            with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
                _connect(client, host, ssh_hosts.client_key_path)
    known = paramiko.HostKeys(str(ssh_hosts.known_hosts_path))
    fingerprints = {known.lookup(f"[{h.address}]:{h.port}")["ssh-ed25519"].get_fingerprint() for h in ssh_hosts.hosts}
    assert len(fingerprints) == len(ssh_hosts.hosts)


def test_a_host_can_be_stopped_and_brought_back(ssh_hosts: SshHosts) -> None:
    host = ssh_hosts.by_name("edge-2")
    host.stop()
    try:
        assert host.pid is None
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host.address, host.port), timeout=2).close()
    finally:
        host.start()
    assert host.pid is not None
    with contextlib.closing(_strict_client(ssh_hosts.known_hosts_path)) as client:
        _connect(client, host, ssh_hosts.client_key_path)
        assert _run(client, "echo back") == (0, "back\n")
