"""What the operator's OpenSSH client configuration (`~/.ssh/config`) says about an SSH Host's address.

Fleets are usually named in `~/.ssh/config` (`Host spark1` with its HostName, User, Port, IdentityFile), and
Ansible and pyinfra honour it, so a Host's `ssh://spark1` does too. What the manifest says explicitly wins: the
user and port written in the address, `identityFile` and `knownHosts`; the configuration fills in the rest, then
OpenSSH's defaults (the local user, port 22). `ProxyCommand` is run without a shell (its words as arguments); a
single-hop `ProxyJump` becomes `ssh -W host:port JUMP`. Host keys stay strictly checked, whatever the
configuration says.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
from dataclasses import dataclass

DEFAULT_CONFIG = "~/.ssh/config"
SAFE_NAME = re.compile(r"[A-Za-z0-9._:\[\]][A-Za-z0-9._:\[\]-]*")  # never an option (-x) nor shell syntax


@dataclass(frozen=True)
class SshOptions:
    """How to reach one SSH Host, after its address and the client configuration are combined."""

    hostname: str
    """The host to connect to (and the name its key is known under in known_hosts)."""
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    """Keys to offer (the manifest's `identityFile`, else the configuration's IdentityFile lines)."""
    known_hosts: str | None = None
    """The configuration's UserKnownHostsFile (first file), when the manifest names none."""
    proxy_command: str | None = None
    """A command line whose stdin/stdout reach the host's SSH port: ProxyCommand (`%h`, `%p` expanded), or a
    ProxyJump turned into `ssh -W`. paramiko.ProxyCommand splits it into arguments and runs it without a shell."""

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH uses in known_hosts: `host` on port 22, `[host]:port` otherwise."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def read_config(path: str = DEFAULT_CONFIG) -> str | None:
    """The text of the client configuration, or None when there is none (or it cannot be read)."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def resolve(alias: str, user: str | None, port: int | None, identity_file: str | None, config_text: str | None,
            local_user: str | None = None) -> SshOptions:
    """Combine an address's host (`alias`), its explicit `user` and `port` (None when the address has none) and
    the manifest's `identity_file` with the client configuration's entry for `alias`.

    Raises ValueError for what cannot be honoured (a multi-hop ProxyJump) or an invalid Port.
    """
    if not SAFE_NAME.fullmatch(alias) or (user is not None and not SAFE_NAME.fullmatch(user)):
        # These reach `%h` / `%r` in a ProxyCommand: only plain host and user names (OpenSSH 9.6 refuses the same).
        raise ValueError(f"{user + '@' if user else ''}{alias} is not a plain host name")
    entry = _lookup(alias, config_text)
    config_port = entry.get("port")
    try:
        chosen_port = port if port is not None else int(config_port) if config_port else 22
    except ValueError:
        raise ValueError(f"~/.ssh/config: Port {config_port!r} for host {alias} is not a number") from None
    hostname = str(entry.get("hostname") or alias)
    identities = (identity_file,) if identity_file else tuple(
        os.path.expanduser(path) for path in entry.get("identityfile", []))
    known = str(entry["userknownhostsfile"]).split()[0] if entry.get("userknownhostsfile") else None
    return SshOptions(hostname=hostname, port=chosen_port,
                      user=user or str(entry.get("user") or local_user or getpass.getuser()),
                      identity_files=identities, known_hosts=os.path.expanduser(known) if known else None,
                      proxy_command=_proxy(entry, hostname, chosen_port, alias))


def _lookup(alias: str, config_text: str | None) -> dict[str, object]:
    """The configuration's options for `alias` (first value wins, as in OpenSSH); empty without a configuration."""
    if not config_text:
        return {}
    from aimactl.hosts.ssh import import_paramiko  # without invoke: `Match exec` lines are then refused

    paramiko = import_paramiko()

    try:
        return dict(paramiko.SSHConfig.from_text(config_text).lookup(alias))
    except (paramiko.ConfigParseError, ValueError, TypeError) as exc:
        raise ValueError(f"~/.ssh/config cannot be read for host {alias}: {exc}") from None


def _proxy(entry: dict[str, object], hostname: str, port: int, alias: str) -> str | None:
    """ProxyCommand as configured (`none` disables it), or a single-hop ProxyJump as `ssh -W host:port JUMP`."""
    command = entry.get("proxycommand")
    if command and str(command).lower() != "none":
        return str(command)
    jump = str(entry.get("proxyjump") or "")
    if not jump or jump.lower() == "none":
        return None
    if "," in jump:
        raise ValueError(f"~/.ssh/config: ProxyJump {jump} for host {alias} has several hops; aimactl follows one "
                         "(write a ProxyCommand for more)")
    target = f"[{hostname}]:{port}" if ":" in hostname else f"{hostname}:{port}"
    return shlex.join(["ssh", "-W", target, jump])
