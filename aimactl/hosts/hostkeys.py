"""Host keys: OpenSSH's `StrictHostKeyChecking yes` (or `accept-new`) against a known_hosts file, for the SSH
connector and for the keeper's kept connections (re-checked before each use)."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from typing import Any

from aimactl.hosts.connector import HostUnreachable


class HostKeyError(HostUnreachable):
    """The host's key is unknown (not accepted) or changed; the message names the host and the fingerprints."""


def fingerprint(key: Any) -> str:
    """OpenSSH's fingerprint of a host key: `SHA256:` and the unpadded base64 of the key blob's digest."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class UnknownKeyPolicy:
    """paramiko's missing-host-key hook: refuse with the fingerprint, or record the key (accept-new)."""

    def __init__(self, connector: Any):
        self.connector = connector

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        """Called by paramiko for a host that has no key in known_hosts."""
        conn = self.connector
        name = conn.target.known_hosts_name
        if not conn.accept_new:
            raise HostKeyError(
                f"host {conn.name} ({conn.where()}): unknown host key {key.get_name()} {fingerprint(key)} "
                f"(not in {conn.known_hosts}). Check the fingerprint on the host (ssh-keygen -lf "
                "/etc/ssh/ssh_host_*_key.pub), then run again with --accept-new-host-keys to record it.")
        record_host_key(conn.known_hosts, name, key)
        client.get_host_keys().add(name, key.get_name(), key)


_RECORD_LOCK = threading.Lock()


def record_host_key(known_hosts: str, name: str, key: Any) -> None:
    """Append `name keytype base64` to known_hosts (created 0600, its directory 0700), as OpenSSH does."""
    directory = os.path.dirname(known_hosts)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    with _RECORD_LOCK:
        fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as handle:
            if handle.tell() > 0:
                with open(known_hosts, "rb") as existing:
                    existing.seek(-1, os.SEEK_END)
                    if existing.read(1) != b"\n":
                        handle.write("\n")
            handle.write(line)


def still_trusted(connector: Any) -> bool:
    """Whether an open connection's host key is still the one its known_hosts file has for that host (True when
    it is not connected: connecting checks the key anyway). A key removed or replaced since is not trusted on."""
    from aimactl.hosts.ssh import import_paramiko

    key = connector.server_key()
    if key is None:
        return True
    paramiko = import_paramiko()
    known = paramiko.HostKeys()
    try:
        known.load(connector.known_hosts)
    except (OSError, paramiko.SSHException):
        return False
    entry = known.lookup(connector.target.known_hosts_name)
    return entry is not None and entry.get(key.get_name()) == key

