"""The per-host lock on a real SSH host: a second controller is refused with the holder named (or waits), a stale
lock is taken over, and apply releases what it took."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from aimactl.converge.connections import Connections
from aimactl.core.desired import HostInfo
from aimactl.hosts.hostlock import HostLockHeld, HostLocks, host_locks
from tests.fixtures.sshd import SshHost, SshHosts

pytestmark = pytest.mark.ssh


def _info(fleet: SshHosts, host: SshHost, data_dir: Path) -> HostInfo:
    return HostInfo(host.name, f"ssh://{host.user}@{host.address}:{host.port}", host.address, str(data_dir),
                    identity_file=str(fleet.client_key_path), known_hosts=str(fleet.known_hosts_path))


def test_a_held_lock_names_its_holder_and_a_stale_one_is_taken_over(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-1")
    first = Connections({host.name: _info(ssh_hosts, host, tmp_path)}, {})
    second = Connections({host.name: _info(ssh_hosts, host, tmp_path)}, {})
    try:
        with host_locks(first, [host.name], "alice@ops-1 (apply of stack web)"):
            record = json.loads((tmp_path / "lock").read_text())
            assert record["holder"] == "alice@ops-1 (apply of stack web)" and record["pid"] == os.getpid()
            assert record["acquired"] and record["expiry"] > record["acquired"]
            with pytest.raises(HostLockHeld, match=r"host edge-1 is locked by another controller: held by "
                                                   r"alice@ops-1 \(apply of stack web\) \(pid \d+ on .+\) since"):
                with host_locks(second, [host.name], "bob@ops-2 (apply of stack web)"):
                    pass
            assert json.loads((tmp_path / "lock").read_text())["holder"].startswith("alice")  # still alice's
        assert not (tmp_path / "lock").exists()  # released on leaving the block

        expired = {"holder": "crashed@ops-3", "token": "old", "pid": 1, "hostname": "ops-3",
                   "acquired": "2020-01-01T00:00:00Z", "expiry": "2020-01-01T00:05:00Z", "expires_at": 1577837100}
        (tmp_path / "lock").write_text(json.dumps(expired))
        locks = HostLocks(second, "bob@ops-2 (apply of stack web)")
        locks.acquire(host.name)
        assert json.loads((tmp_path / "lock").read_text())["holder"] == "bob@ops-2 (apply of stack web)"
        locks.release()
    finally:
        first.close()
        second.close()


def test_renewal_keeps_the_lock_past_its_first_expiry(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-2")
    mine = Connections({host.name: _info(ssh_hosts, host, tmp_path)}, {})
    other = Connections({host.name: _info(ssh_hosts, host, tmp_path)}, {})
    try:
        with host_locks(mine, [host.name], "long apply", ttl=3):
            time.sleep(5)  # past the first expiry: renewed every second
            with pytest.raises(HostLockHeld, match="held by long apply"):
                HostLocks(other, "impatient").acquire(host.name)
    finally:
        mine.close()
        other.close()


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "NO_COLOR": "1",
           "DOCKER_HOST": f"unix://{tmp}/no-docker.sock"}
    return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_apply_is_refused_while_another_controller_holds_the_host(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-2")
    data = tmp_path / "edge-2"
    stack = "l" + uuid.uuid4().hex[:8]
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(
        f"apiVersion: aima.dev/v1\nkind: Host\nmetadata: {{name: edge-2}}\nspec:\n"
        f"  address: ssh://{host.user}@{host.address}:{host.port}\n  identityFile: {ssh_hosts.client_key_path}\n"
        f"  knownHosts: {ssh_hosts.known_hosts_path}\n  dataDir: {data}\n---\n"
        "apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: idle}\nspec:\n  host: edge-2\n"
        "  engine: custom\n  runtime: process\n  command: [sleep, '300']\n")
    other = Connections({host.name: _info(ssh_hosts, host, data)}, {})
    locks = HostLocks(other, "carol@ops-9 (apply of stack other)")
    locks.acquire(host.name)
    try:
        refused = _cli(tmp_path, "apply", "-f", str(manifest), "--stack", stack, "--auto-approve")
        out = refused.stdout + refused.stderr
        assert refused.returncode == 1, out
        assert "host edge-2 is locked by another controller" in out and "carol@ops-9" in out
        assert "Traceback" not in out
        assert not list((data / "proc").glob("*.pid"))  # nothing was started

        threading.Timer(2.0, locks.release).start()  # the other controller finishes while this one waits
        waited = _cli(tmp_path, "apply", "-f", str(manifest), "--stack", stack, "--auto-approve",
                      "--lock-timeout", "30s")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert len(list((data / "proc").glob("*.pid"))) == 1
        assert not (data / "lock").exists()
    finally:
        locks.release()
        _cli(tmp_path, "destroy", "-f", str(manifest), "--stack", stack, "--auto-approve")
        other.close()



def test_the_lock_is_read_and_written_under_the_guard(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    """While another controller is between reading and writing the lock (it holds the guard), a second one waits
    and then sees what the first wrote, so two controllers can never both take a free host."""
    import fcntl

    host = ssh_hosts.by_name("edge-1")
    connections = Connections({host.name: _info(ssh_hosts, host, tmp_path)}, {})
    try:
        connections.helper_path(host.name)
        outcome: list[str] = []

        def contender() -> None:
            try:
                HostLocks(connections, "second").acquire(host.name)
                outcome.append("acquired")
            except HostLockHeld as exc:
                outcome.append(str(exc))

        with open(tmp_path / "lock.guard", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # the first controller, mid-way
            thread = threading.Thread(target=contender)
            thread.start()
            time.sleep(3)
            assert outcome == [] and not (tmp_path / "lock").exists()  # the second waits on the guard
            live = {"holder": "first", "token": "t1", "pid": 7, "hostname": "ops-1", "acquired": "now",
                    "expiry": "later", "expires_at": time.time() + 300}
            (tmp_path / "lock").write_text(json.dumps(live))
        thread.join(30)
        assert len(outcome) == 1 and "held by first (pid 7 on ops-1)" in outcome[0]
    finally:
        connections.close()


def test_a_connection_lost_while_releasing_leaves_the_lock_to_expire(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    """The host's connection closes before its helper answers `unlock` (here the interpreter kills its own sshd
    session): the run ends as it would have, the lock stays on the host until its expiry."""
    host = ssh_hosts.by_name("edge-1")
    connections = Connections({host.name: _info(ssh_hosts, host, tmp_path)}, {})
    cutter = tmp_path / "python-that-cuts-the-connection"
    cutter.write_text("#!/bin/sh\nkill -9 $PPID\nsleep 5\n")
    cutter.chmod(0o755)
    try:
        locks = HostLocks(connections, "alice@ops-1 (apply of stack web)")
        locks.acquire(host.name)
        connections.hosts[host.name] = dataclasses.replace(connections.hosts[host.name], python=str(cutter))
        locks.release()  # raised HelperError (no-answer) out of apply before
        assert json.loads((tmp_path / "lock").read_text())["holder"].startswith("alice")
    finally:
        connections.close()
