"""`aimactl watch` over a fleet of real sshd hosts: each host's facts come through its SSH connection, and a
host that goes away shows as unreachable, then comes back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.ssh


def host_rows(text: str) -> dict[str, list[str]]:
    section = text.split("Hosts", 1)[1].split("Services and Apps", 1)[0]
    return {line.split()[0]: line.split() for line in section.splitlines()[2:] if line.strip()}


def test_fleet_hosts_reachable_then_one_down_then_back(ssh_hosts: object, tmp_path: Path) -> None:
    data_dir = f"~/aimactl-watch-{uuid.uuid4().hex[:8]}/data"
    (tmp_path / "fleet.yaml").write_text("---\n".join(ssh_hosts.host_manifest(h, data_dir)
                                                      for h in ssh_hosts.hosts))  # type: ignore[attr-defined]
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1", "COLUMNS": "200"}

    def watch() -> dict[str, list[str]]:
        out = subprocess.run([sys.executable, "-m", "aimactl", "watch", "--once", "-f", str(tmp_path)],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return host_rows(out.stdout)

    edge2 = ssh_hosts.by_name("edge-2")  # type: ignore[attr-defined]
    try:
        rows = watch()
        assert sorted(rows) == ["edge-1", "edge-2"]
        cores = f"{os.cpu_count()} cores"
        for name in ("edge-1", "edge-2"):
            # Reachable over SSH (these hosts have no Docker engine of their own); CPUs and RAM read by the
            # helper on the host, through that connection.
            assert rows[name][1] in ("reachable", "no"), rows[name]
            assert cores in " ".join(rows[name]) and rows[name][-1].endswith("G") and "/" in rows[name][-1], rows[name]
        edge2.stop()
        rows = watch()
        assert rows["edge-2"][1] == "unreachable:" and rows["edge-1"][1] != "unreachable:"
        edge2.start()
        assert watch()["edge-2"][1] != "unreachable:"
    finally:
        if not edge2.is_running():
            edge2.start()
        # The fixture's hosts log in as this machine's user: `~` is this home.
        shutil.rmtree(os.path.expanduser(data_dir.rsplit("/", 1)[0]), ignore_errors=True)
