"""A stack spread over two SSH hosts, driven through the real CLI: a Docker Service on edge-1 (its engine reached
through the SSH-forwarded socket), a process Service and a Model fetched over HTTP on edge-2 (by edge-2's own
helper), then an empty plan and a destroy. Host keys through the CLI: refused, accepted with
--accept-new-host-keys, and a changed key refused."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import free_port, http_get
from tests.fixtures.sshd import SshHost, SshHosts

pytestmark = [pytest.mark.ssh, pytest.mark.docker]
BUSY = "aima-test/busybox:latest"
HTTPD = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 8080 -h /etc & wait"]'
WEIGHTS = b"tiny model weights " * 4096


class Fleet:
    """Two SSH hosts, their data dirs, an isolated state dir, and `aimactl` run as a subprocess."""

    def __init__(self, fleet: SshHosts, engine: object, tmp: Path, known_hosts: Path | None = None):
        self.fleet, self.engine, self.tmp = fleet, engine, tmp
        self.stack = "s" + uuid.uuid4().hex[:8]
        self.data = {h.name: tmp / h.name for h in fleet.hosts}
        # edge-1 uses the private engine; edge-2 has none, so its Service runs as a process (two Hosts sharing
        # one engine: test_two_hosts_reaching_one_docker_engine_keep_to_their_own_containers).
        docker = {"edge-1": engine.socket_path, "edge-2": str(tmp / "no-docker.sock")}  # type: ignore[attr-defined]
        self.hosts = "---\n".join(fleet.host_manifest(h, self.data[h.name], docker[h.name], known_hosts)
                                  for h in fleet.hosts)
        # A keeper of its own (XDG_RUNTIME_DIR): the logins counted are this test's alone.
        (tmp / "run").mkdir(mode=0o700, exist_ok=True)
        self.env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp / "state"), "AIMACTL_STACK": self.stack,
                    "NO_COLOR": "1", "DOCKER_HOST": f"unix://{tmp}/controller-has-no-docker.sock",
                    "XDG_RUNTIME_DIR": str(tmp / "run")}
        self.manifest = tmp / "stack.yaml"

    def write(self, workloads: str) -> Path:
        self.manifest.write_text(self.hosts + "---\n" + workloads)
        return self.manifest

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)


class ModelServer:
    """An HTTP server for the model file that records which sshd each download came through."""

    def __init__(self, root: Path):
        self.clients: list[list[int]] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kw: object) -> None:
                super().__init__(*args, directory=str(root), **kw)  # type: ignore[arg-type]

            def do_GET(self) -> None:  # noqa: N802
                server.clients.append(_ancestors(_peer_pid(self.client_address[1])))
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _peer_pid(port: int) -> int | None:
    """The pid owning the local TCP socket bound to `port` (the downloader), read from /proc."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            inode = fields[9]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def _logins(host: SshHost) -> int:
    """How many SSH logins this host's sshd accepted so far (from its log)."""
    return host.log_path.read_text(errors="replace").count("Accepted publickey")


def _ancestors(pid: int | None) -> list[int]:
    chain = []
    while pid and pid > 1:
        chain.append(pid)
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return chain


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[ModelServer]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.gguf").write_bytes(WEIGHTS)
    server = ModelServer(root)
    yield server
    server.close()


def _workloads(web_port: int, api_port: int, model_url: str) -> str:
    api = ["python3", "-m", "http.server", str(api_port), "--bind", "0.0.0.0", "--directory", "/etc"]
    return (
        f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  host: edge-1\n  engine: custom\n"
        f"  image: {BUSY}\n  command: {HTTPD}\n  containerPort: 8080\n  port: {web_port}\n"
        "  health: {path: /passwd, startupTimeout: 30s}\n---\n"
        f"apiVersion: aima.dev/v1\nkind: Model\nmetadata: {{name: tiny}}\nspec:\n  source: {model_url}\n"
        f"  allowInsecure: true\n  sha256: {hashlib.sha256(WEIGHTS).hexdigest()}\n---\n"
        f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  host: edge-2\n  engine: custom\n"
        f"  runtime: process\n  model: tiny\n  port: {api_port}\n  command: {json.dumps(api)}\n"
        "  health: {path: /hostname, startupTimeout: 30s}\n")


def test_a_stack_over_two_ssh_hosts_applies_then_plans_empty(ssh_hosts: SshHosts, docker_engine: object,
                                                             tmp_path: Path, model_server: ModelServer) -> None:
    fleet = Fleet(ssh_hosts, docker_engine, tmp_path)
    web_port, api_port = free_port(), free_port()
    manifest = fleet.write(_workloads(web_port, api_port, f"{model_server.url}/tiny.gguf"))
    try:
        logins = {h.name: _logins(h) for h in ssh_hosts.hosts}
        applied = fleet.run("apply", "-f", str(manifest), "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        # One SSH connection per host for the whole command (preview plan, plan under the lock, apply, Docker),
        # and one that the keeper opens and keeps for the next commands' observations (hosts/keeper.py).
        assert {h.name: _logins(h) - logins[h.name] for h in ssh_hosts.hosts} == {"edge-1": 2, "edge-2": 2}
        assert b"root:x:0:0" in (http_get(f"http://127.0.0.2:{web_port}/passwd") or b"")  # Docker on edge-1
        assert http_get(f"http://127.0.0.3:{api_port}/hostname") == Path("/etc/hostname").read_bytes()  # edge-2

        client = docker_engine.client()  # type: ignore[attr-defined]
        try:
            [container] = client.containers.list(filters={"label": f"dev.aima.stack={fleet.stack}"})
            assert container.name == f"aima-{fleet.stack}-web-0"
        finally:
            client.close()
        cached = fleet.data["edge-2"] / "models" / "tiny" / "tiny.gguf"
        assert cached.read_bytes() == WEIGHTS
        assert not (fleet.data["edge-1"] / "models").exists()
        # The download came from a process under edge-2's sshd: the host fetched it, not the controller.
        edge2_sshd = ssh_hosts.by_name("edge-2").pid
        assert model_server.clients and all(edge2_sshd in chain for chain in model_server.clients)
        for name in ("edge-1", "edge-2"):
            assert [p.name for p in (fleet.data[name] / "helper").iterdir()][0].startswith("aimahelper-")
        assert not (fleet.data["edge-2"] / "lock").exists()  # released after the apply

        logs = fleet.run("logs", "api", "--filename", str(manifest), "--tail", "20")  # the process's log on edge-2
        assert logs.returncode == 0 and "GET /hostname" in logs.stdout, logs.stdout + logs.stderr
        listed = fleet.run("get", "services", "-f", str(manifest), "-o", "json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        rows = {(r["name"], r["host"], r["state"], r["sync"], r["endpoint"]) for r in json.loads(listed.stdout)}
        assert rows == {("web", "edge-1", "running", "in-sync", f"http://127.0.0.2:{web_port}"),
                        ("api", "edge-2", "running", "in-sync", f"http://127.0.0.3:{api_port}")}

        planned = fleet.run("plan", "-f", str(manifest), "--detailed-exitcode")
        assert planned.returncode == 0, planned.stdout + planned.stderr
        assert "No changes" in planned.stdout or "no changes" in planned.stdout.lower()

        # A saved plan made on one run, applied on another: its hosts are reconnected and re-checked.
        manifest.write_text(manifest.read_text().replace("  runtime: process\n", "  runtime: process\n"
                                                         "  env: {MODE: two}\n"))
        saved = fleet.run("plan", "-f", str(manifest), "--out", str(tmp_path / "plan.json"))
        assert saved.returncode == 0 and "service.api" in saved.stdout, saved.stdout + saved.stderr
        from_file = fleet.run("apply", str(tmp_path / "plan.json"))
        assert from_file.returncode == 0, from_file.stdout + from_file.stderr
        [pid_file] = (fleet.data["edge-2"] / "proc").glob("*.pid")
        pid = json.loads(pid_file.read_text())["pid"]
        assert b"MODE=two" in Path(f"/proc/{pid}/environ").read_bytes()
        assert fleet.run("plan", "-f", str(manifest), "--detailed-exitcode").returncode == 0
    finally:
        destroyed = fleet.run("destroy", "-f", str(manifest), "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert http_get(f"http://127.0.0.3:{api_port}/hostname") is None
    assert http_get(f"http://127.0.0.2:{web_port}/passwd") is None


def test_host_keys_through_the_cli(ssh_hosts: SshHosts, docker_engine: object, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    fleet = Fleet(ssh_hosts, docker_engine, tmp_path, known_hosts=known)
    manifest = fleet.write("apiVersion: aima.dev/v1\nkind: Service\nmetadata: {name: idle}\nspec:\n"
                           "  host: edge-2\n  engine: custom\n  runtime: process\n  command: [sleep, '300']\n")
    refused = fleet.run("plan", "-f", str(manifest))
    assert refused.returncode == 1
    out = refused.stdout + refused.stderr
    for host in ssh_hosts.hosts:
        fp = subprocess.run(["ssh-keygen", "-lf", f"{host.host_key_path}.pub"], capture_output=True, text=True,
                            check=True).stdout.split()[1]
        assert fp in out and "--accept-new-host-keys" in out
    assert "Traceback" not in out and not known.exists()

    accepted = fleet.run("plan", "-f", str(manifest), "--accept-new-host-keys")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert sorted(known.read_text().splitlines()) == sorted(h.known_hosts_entry for h in ssh_hosts.hosts)
    again = fleet.run("plan", "-f", str(manifest))
    assert again.returncode == 0, again.stdout + again.stderr

    edge1 = ssh_hosts.by_name("edge-1")
    impostor = known.read_text().replace(edge1.host_public_key, ssh_hosts.by_name("edge-2").host_public_key)
    known.write_text(impostor)  # edge-1 now "should" present edge-2's key: to aimactl, edge-1's key changed
    changed = fleet.run("plan", "-f", str(manifest), "--accept-new-host-keys")
    out = changed.stdout + changed.stderr
    assert changed.returncode == 1 and "CHANGED" in out and "edge-1" in out and "Traceback" not in out
    assert known.read_text() == impostor


def test_destroy_without_manifests_reaches_the_hosts_the_stack_was_applied_to(
        ssh_hosts: SshHosts, docker_engine: object, tmp_path: Path, model_server: ModelServer) -> None:
    fleet = Fleet(ssh_hosts, docker_engine, tmp_path)
    web_port, api_port = free_port(), free_port()
    manifest = fleet.write(_workloads(web_port, api_port, f"{model_server.url}/tiny.gguf"))
    try:
        applied = fleet.run("apply", "-f", str(manifest), "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        manifest.unlink()  # as Terraform destroys from its state: the stack's last revision names its hosts
        destroyed = fleet.run("destroy", "--auto-approve")
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
        assert "hosts from revision 1: edge-1, edge-2" in destroyed.stderr
        assert http_get(f"http://127.0.0.2:{web_port}/passwd") is None  # the container on edge-1
        assert http_get(f"http://127.0.0.3:{api_port}/hostname") is None  # the process on edge-2
        client = docker_engine.client()  # type: ignore[attr-defined]
        try:
            assert client.containers.list(all=True, filters={"label": f"dev.aima.stack={fleet.stack}"}) == []
        finally:
            client.close()
    finally:
        if manifest.exists():
            fleet.run("destroy", "-f", str(manifest), "--auto-approve")


def test_two_hosts_reaching_one_docker_engine_keep_to_their_own_containers(
        ssh_hosts: SshHosts, docker_engine: object, tmp_path: Path) -> None:
    """Two Hosts (two names for one machine) share one engine: each keeps to the containers labelled for it, so
    neither plans to delete the other's as "moved"."""
    fleet = Fleet(ssh_hosts, docker_engine, tmp_path)
    socket_path = docker_engine.socket_path  # type: ignore[attr-defined]
    hosts = "---\n".join(ssh_hosts.host_manifest(h, tmp_path / h.name, socket_path) for h in ssh_hosts.hosts)
    ports = {"edge-1": free_port(), "edge-2": free_port()}
    apps = "---\n".join(
        f"apiVersion: aima.dev/v1\nkind: App\nmetadata: {{name: web-{n[-1]}}}\nspec:\n  host: {n}\n"
        f"  image: {BUSY}\n  command: {HTTPD}\n  ports: ['{p}:8080']\n" for n, p in ports.items())
    fleet.manifest.write_text(hosts + "---\n" + apps)
    manifest = str(fleet.manifest)
    try:
        applied = fleet.run("apply", "-f", manifest, "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        planned = fleet.run("plan", "-f", manifest, "--detailed-exitcode")
        assert planned.returncode == 0, planned.stdout + planned.stderr
        client = docker_engine.client()  # type: ignore[attr-defined]
        try:
            found = {c.name: c.labels.get("dev.aima.host")
                     for c in client.containers.list(filters={"label": f"dev.aima.stack={fleet.stack}"})}
        finally:
            client.close()
        assert found == {f"aima-{fleet.stack}-web-1-0": "edge-1", f"aima-{fleet.stack}-web-2-0": "edge-2"}
    finally:
        fleet.run("destroy", "-f", manifest, "--auto-approve")
