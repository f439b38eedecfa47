"""SshConnector against real sshd hosts: quoting, files, host keys (unknown, accept-new, changed), failures,
agent and default keys, the helper upload and the remote home."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import paramiko
import pytest

from aimactl.converge.connections import Connections
from aimactl.core.desired import HostInfo
from aimactl.hosts.connector import HostUnreachable, call_helper
from aimactl.hosts.ssh import HostKeyError, SshConnector, fingerprint
from tests.fixtures.sshd import SshHost, SshHosts

pytestmark = pytest.mark.ssh


def _address(host: SshHost) -> str:
    return f"ssh://{host.user}@{host.address}:{host.port}"


def _connector(fleet: SshHosts, host: SshHost, known_hosts: Path | None = None, **kw: object) -> SshConnector:
    return SshConnector(host.name, _address(host), str(fleet.client_key_path),
                        str(known_hosts or fleet.known_hosts_path), **kw)  # type: ignore[arg-type]


def _ssh_keygen_fingerprint(host: SshHost) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", f"{host.host_key_path}.pub"], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def test_arguments_reach_the_remote_program_verbatim(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-1")
    conn = _connector(ssh_hosts, host)
    try:
        marker = tmp_path / "pwned"
        hostile = [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", "a\nb", "it's \"quoted\"", "*"]
        lines, wait = conn.run(["python3", "-c", "import json,sys; print(json.dumps(sys.argv[1:]))", *hostile])
        import json

        assert json.loads("".join(lines)) == hostile
        assert wait().returncode == 0
        assert not marker.exists()
        lines, wait = conn.run(["cat"], b"line one\nline two\n")
        assert list(lines) == ["line one\n", "line two\n"]
        assert wait().returncode == 0
        lines, wait = conn.run(["sh", "-c", "echo oops >&2; exit 3"])
        assert list(lines) == []
        done = wait()
        assert (done.returncode, done.stderr) == (3, "oops\n")
    finally:
        conn.close()


def test_put_is_atomic_and_get_reads_back_with_home_expanded(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    conn = _connector(ssh_hosts, ssh_hosts.by_name("edge-2"))
    try:
        target = tmp_path / "deep" / "dir" / "file.bin"
        conn.put(b"\x00payload\xff", str(target), 0o640)
        assert target.read_bytes() == b"\x00payload\xff"
        assert target.stat().st_mode & 0o777 == 0o640
        assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # no temporary file left behind
        assert conn.get(str(target)) == b"\x00payload\xff"
        with pytest.raises(FileNotFoundError):
            conn.get(str(tmp_path / "missing"))
        assert conn.home() == os.path.expanduser("~")  # the fixture logs in as this machine's root
        assert conn.expand("~/x/y") == os.path.expanduser("~/x/y")
    finally:
        conn.close()


def test_one_connection_is_reused_for_every_call(ssh_hosts: SshHosts) -> None:
    conn = _connector(ssh_hosts, ssh_hosts.by_name("edge-1"))
    try:
        sources = set()
        for _ in range(3):  # SSH_CONNECTION names the client's port: one TCP connection means one port
            lines, wait = conn.run(["sh", "-c", "echo $SSH_CONNECTION"])
            sources.add("".join(lines).split()[1])
            wait()
        conn.get("/etc/hostname")
        lines, wait = conn.run(["sh", "-c", "echo $SSH_CONNECTION"])
        sources.add("".join(lines).split()[1])
        wait()
        assert len(sources) == 1
        sock = conn.transport().sock  # a host that vanishes without closing is noticed by the kernel
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
    finally:
        conn.close()


def test_unknown_host_key_is_refused_with_its_fingerprint(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-1")
    known = tmp_path / "known_hosts"
    conn = _connector(ssh_hosts, host, known)
    with pytest.raises(HostKeyError) as refused:
        conn.transport()
    message = str(refused.value)
    assert _ssh_keygen_fingerprint(host) in message  # the same SHA256:... that ssh-keygen -l prints
    assert "--accept-new-host-keys" in message and "edge-1" in message
    assert not known.exists()  # nothing recorded without consent


def test_accept_new_records_the_key_and_then_checks_it(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-2")
    known = tmp_path / "ssh" / "known_hosts"
    conn = _connector(ssh_hosts, host, known, accept_new=True)
    try:
        lines, wait = conn.run(["echo", "hi"])
        assert list(lines) == ["hi\n"] and wait().returncode == 0
    finally:
        conn.close()
    assert known.read_text() == f"{host.known_hosts_entry}\n"
    assert known.stat().st_mode & 0o777 == 0o600
    again = _connector(ssh_hosts, host, known)  # strict again: the recorded key now lets it in
    try:
        again.transport()
    finally:
        again.close()


def test_a_changed_host_key_is_never_accepted(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-1")
    impostor = paramiko.Ed25519Key.from_private_key_file(str(ssh_hosts.client_key_path))  # any other ed25519 key
    known = tmp_path / "known_hosts"
    known.write_text(f"[{host.address}]:{host.port} ssh-ed25519 {impostor.get_base64()}\n")
    for accept_new in (False, True):
        conn = _connector(ssh_hosts, host, known, accept_new=accept_new)
        with pytest.raises(HostKeyError) as refused:
            conn.transport()
        message = str(refused.value)
        assert "CHANGED" in message and "edge-1" in message
        assert fingerprint(impostor) in message and _ssh_keygen_fingerprint(host) in message
    assert known.read_text().count("\n") == 1  # the file was not touched


def test_connection_failures_name_the_host_and_reason(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-2")
    host.stop()
    try:
        with pytest.raises(HostUnreachable, match=r"host edge-2 \(root@127\.0\.0\.3:\d+\) is unreachable: "
                                                  r"connection refused"):
            _connector(ssh_hosts, host).transport()
    finally:
        host.start()
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    conn = SshConnector(host.name, _address(host), str(other_key), str(ssh_hosts.known_hosts_path))
    with pytest.raises(HostUnreachable, match="authentication failed as root"):
        conn.transport()
    with pytest.raises(HostUnreachable, match="not found"):
        SshConnector(host.name, _address(host), str(tmp_path / "nope"), str(ssh_hosts.known_hosts_path)).transport()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never greets: a hung host
    try:
        address = f"ssh://root@127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(HostUnreachable, match=r"host hung \(root@127\.0\.0\.1:\d+\) is unreachable: "
                                                  r"connection timed out after 1 s"):
            SshConnector("hung", address, str(ssh_hosts.client_key_path), str(ssh_hosts.known_hosts_path),
                         connect_timeout=1).transport()
    finally:
        silent.close()


def test_agent_and_default_keys_work_without_identity_file(ssh_hosts: SshHosts, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    host = ssh_hosts.by_name("edge-1")
    if not shutil.which("ssh-agent"):
        pytest.skip("ssh-agent is not installed")
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    monkeypatch.setenv("HOME", str(empty_home))  # no default keys: only the agent can log in
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        from tests.fixtures import wait_until

        assert wait_until(sock.exists, 10)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(ssh_hosts.client_key_path)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        conn = SshConnector(host.name, _address(host), None, str(ssh_hosts.known_hosts_path))
        try:
            lines, wait = conn.run(["echo", "agent"])
            assert list(lines) == ["agent\n"]
            wait()
        finally:
            conn.close()
    finally:
        agent.terminate()
        agent.wait()
    monkeypatch.delenv("SSH_AUTH_SOCK")
    (empty_home / ".ssh").mkdir()
    shutil.copy(ssh_hosts.client_key_path, empty_home / ".ssh" / "id_ed25519")
    conn = SshConnector(host.name, _address(host), None, str(ssh_hosts.known_hosts_path))
    try:
        lines, wait = conn.run(["echo", "default"])
        assert list(lines) == ["default\n"]
        wait()
    finally:
        conn.close()


def test_helper_is_uploaded_once_under_the_remote_data_dir(ssh_hosts: SshHosts) -> None:
    host = ssh_hosts.by_name("edge-2")
    name = f"aimactl-test-{uuid.uuid4().hex[:8]}"
    info = HostInfo(host.name, _address(host), host.address, f"~/{name}/data",
                    identity_file=str(ssh_hosts.client_key_path), known_hosts=str(ssh_hosts.known_hosts_path))
    root = Path(os.path.expanduser("~")) / name  # the fixture logs in as this machine's root: same home
    connections = Connections({host.name: info}, {})
    try:
        path = connections.helper_path(host.name)
        assert path.startswith(str(root / "data" / "helper" / "aimahelper-")) and path.endswith(".py")
        assert connections.hosts[host.name].data_dir == str(root / "data")  # `~` resolved on the host
        facts = call_helper(connections.connector(host.name), "python3", path, "probe", {})
        assert facts["helper_version"] >= 1
        mtime = os.stat(path).st_mtime_ns
        connections.close()
        connections = Connections({host.name: info}, {})
        assert connections.helper_path(host.name) == path
        assert os.stat(path).st_mtime_ns == mtime  # already there: not uploaded again
    finally:
        connections.close()
        shutil.rmtree(root, ignore_errors=True)
