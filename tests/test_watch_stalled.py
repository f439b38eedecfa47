"""A resource the reconcile loop gave up on shows as Stalled, with the loop's reason, in `aimactl watch`: the
reconcile state is read from the real state DB (SQLite) that `aimactl reconcile` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aimactl.store import open_store
from aimactl.store.resources import ResourceState, save_states

APP = "apiVersion: aima.dev/v1\nkind: App\nmetadata: {name: web}\nspec:\n  image: busybox:latest\n"


def test_stalled_resource_shows_the_loops_reason(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(APP)
    env = {**os.environ, "AIMACTL_STATE_DIR": str(tmp_path / "state"), "AIMACTL_STACK": "edge", "NO_COLOR": "1",
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "COLUMNS": "200"}

    def watch(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "aimactl", "watch", "--once", "-f", str(tmp_path), *args],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    [before] = json.loads(watch("-o", "json"))["workloads"]
    assert (before["name"], before["sync"], before["health"]) == ("web", "OutOfSync", "missing")

    with open_store(tmp_path / "state") as store:
        save_states(store, "edge", [ResourceState("app.web[0]@local", "app/web", sync="stalled", failures=5,
                                                  stalled=True, reason="image 'busybox:latest' is not on host local")])
    [after] = json.loads(watch("-o", "json"))["workloads"]
    assert (after["sync"], after["reason"]) == ("Stalled", "Stalled after 5 failures: image 'busybox:latest' is "
                                                           "not on host local")
    row = next(line for line in watch().splitlines() if line.startswith("app/web"))
    assert row.split()[2:4] == ["Stalled", "missing"] and "Stalled after 5 failures" in row
