"""~/.ssh/config is honoured for SSH Hosts: what the manifest says wins, the configuration fills in the rest."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from aimactl.hosts.sshconfig import resolve
from tests.fixtures.sshd import SshHosts

CONFIG = """
Host spark?
  HostName 10.20.0.%h
  User ops
  Port 2200
  IdentityFile ~/.ssh/spark_ed25519
  IdentityFile /keys/second
  UserKnownHostsFile /etc/aimactl/fleet_known_hosts ~/.ssh/other_known_hosts
Host jet
  HostName jet.lan
  ProxyJump bastion.lan
Host lab
  HostName 192.168.1.9
  ProxyCommand nc -q0 %h %p
Host far
  ProxyJump a.lan,b.lan
Host v6
  HostName fd00::9
  ProxyJump bastion.lan
Host badport
  Port twenty
Host *
  User fallback
"""


@pytest.mark.parametrize(("alias", "user", "port", "identity", "want"), [
    # alias, user and port from the address (None: not written), identityFile, expected fields
    ("spark1", None, None, None, {"hostname": "10.20.0.spark1", "user": "ops", "port": 2200,
                                  "known_hosts": "/etc/aimactl/fleet_known_hosts"}),
    ("spark1", "root", 22, "/my/key", {"user": "root", "port": 22, "identity_files": ("/my/key",)}),
    ("elsewhere", None, None, None, {"hostname": "elsewhere", "user": "fallback", "port": 22, "identity_files": (),
                                     "known_hosts": None, "proxy_command": None}),
    ("jet", None, 2222, None, {"hostname": "jet.lan", "port": 2222,
                               "proxy_command": "ssh -W jet.lan:2222 bastion.lan"}),
    ("v6", None, None, None, {"proxy_command": "ssh -W '[fd00::9]:22' bastion.lan"}),
])
def test_the_address_wins_and_the_configuration_fills_in(alias: str, user: str | None, port: int | None,
                                                          identity: str | None, want: dict[str, object]) -> None:
    options = resolve(alias, user, port, identity, CONFIG, local_user="me")
    assert {k: getattr(options, k) for k in want} == want


def test_identity_files_come_from_the_configuration_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    options = resolve("spark2", None, None, None, CONFIG)
    assert options.identity_files == ("/home/op/.ssh/spark_ed25519", "/keys/second")
    assert options.known_hosts_name == "[10.20.0.spark2]:2200"


def test_proxy_command_runs_without_a_shell_with_its_tokens_expanded() -> None:
    options = resolve("lab", None, None, None, CONFIG)
    assert shlex.split(options.proxy_command or "") == ["nc", "-q0", "192.168.1.9", "22"]


@pytest.mark.parametrize("alias", ["$(touch /tmp/pwned)", "a;b", "a b", "`id`", "-oProxyCommand=x", "-e", "a'b"])
def test_only_plain_host_names_reach_a_proxy_command(alias: str) -> None:
    with pytest.raises(ValueError, match="is not a plain host name"):
        resolve(alias, None, None, None, CONFIG)


def test_without_a_configuration_openssh_defaults_apply() -> None:
    options = resolve("edge", None, None, None, None, local_user="me")
    assert (options.hostname, options.user, options.port, options.proxy_command) == ("edge", "me", 22, None)
    assert options.known_hosts_name == "edge"


@pytest.mark.parametrize(("alias", "message"), [
    ("far", "ProxyJump a.lan,b.lan for host far has several hops"),
    ("badport", "Port 'twenty' for host badport is not a number"),
])
def test_what_cannot_be_honoured_is_a_clear_error(alias: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(alias, None, None, None, CONFIG)


# -- on real sshd hosts: `ssh://ALIAS` reaches the host that ~/.ssh/config names ---------------------------------


def _hosts_command(tmp_path: Path, address: str, config: str, extra: str = "") -> subprocess.CompletedProcess[str]:
    """`aimactl hosts -o json` for one Host at `address`, with `config` as the operator's ~/.ssh/config."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "config").write_text(config)
    manifest = tmp_path / "hosts.yaml"
    manifest.write_text("apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: edge}\nspec:\n"
                        f"  address: '{address}'\n  dataDir: '{tmp_path}/data'\n  python: '{sys.executable}'\n{extra}")
    environ = {**os.environ, "HOME": str(home), "AIMACTL_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "aimactl", "hosts", "-f", str(manifest), "-o", "json"],
                          capture_output=True, text=True, env=environ, timeout=120)


def test_an_alias_from_ssh_config_reaches_its_host(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    host = ssh_hosts.by_name("edge-1")
    config = (f"Host fleet-a\n  HostName {host.address}\n  Port {host.port}\n  User {host.user}\n"
              f"  IdentityFile {ssh_hosts.client_key_path}\n  UserKnownHostsFile {ssh_hosts.known_hosts_path}\n")
    done = _hosts_command(tmp_path, "ssh://fleet-a", config)
    assert done.returncode == 0, done.stdout + done.stderr
    [edge] = json.loads(done.stdout)
    assert edge["host"] == "edge" and edge["error"] is None and edge["facts"]["cpu_count"] == os.cpu_count()


def test_proxy_command_is_used_and_the_key_is_checked_under_the_hostname(ssh_hosts: SshHosts, tmp_path: Path) -> None:
    # The HostName cannot be resolved: only the ProxyCommand (busybox nc to edge-1) reaches the host, and its key
    # must be known under that HostName, as OpenSSH checks it.
    host = ssh_hosts.by_name("edge-1")
    known = tmp_path / "known_hosts"
    known.write_text(f"[edge-behind-proxy.invalid]:{host.port} {host.host_public_key}\n")
    config = (f"Host lab\n  HostName edge-behind-proxy.invalid\n  Port {host.port}\n  User {host.user}\n"
              f"  ProxyCommand busybox nc {host.address} %p\n")
    done = _hosts_command(tmp_path, "ssh://lab", config,
                          f"  identityFile: {ssh_hosts.client_key_path}\n  knownHosts: {known}\n")
    assert done.returncode == 0, done.stdout + done.stderr
    known.write_text(f"[{host.address}]:{host.port} {host.host_public_key}\n")  # known under another name only
    refused = _hosts_command(tmp_path, "ssh://lab", config,
                             f"  identityFile: {ssh_hosts.client_key_path}\n  knownHosts: {known}\n")
    assert "unknown host key" in refused.stdout + refused.stderr


def test_a_proxy_jump_of_several_hops_is_a_clear_error(tmp_path: Path) -> None:
    done = _hosts_command(tmp_path, "ssh://far", "Host far\n  ProxyJump a.invalid,b.invalid\n")
    assert "host edge" in done.stdout + done.stderr and "has several hops" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
