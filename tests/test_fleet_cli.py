"""A fleet with one host down, through the real CLI on the private Docker engine: the reachable host converges,
the unreachable one is left alone, the run exits 1 with a per-host summary; --max-fail-percent stops early."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_apply_docker import BUSY, HTTPD, Stack, free_port

pytestmark = pytest.mark.docker

# Nothing listens on port 1 of the loopback: the connection is refused at once.
DOWN_HOST = "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: edge-down}\nspec: {address: 'ssh://aima@127.0.0.1:1'}\n"
LOCAL_HOST = "apiVersion: aima.dev/v1\nkind: Host\nmetadata: {name: local}\nspec: {address: local}\n"


def _app(name: str, host: str, port: int) -> str:
    return (f"apiVersion: aima.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  image: {BUSY}\n"
            f"  command: {HTTPD}\n  host: {host}\n  ports: [\"127.0.0.1:{port}:8080\"]\n")


@pytest.fixture
def fleet(docker_engine: object, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(docker_engine, tmp_path)
    s.write("---\n".join([LOCAL_HOST, DOWN_HOST, _app("web", "local", free_port()),
                          _app("queue", "edge-down", free_port())]))
    yield s
    s.cleanup()


def _host_row(output: str, host: str) -> list[str]:
    """The cells of one row of the `Hosts` table."""
    table = output[output.index("Hosts"):]
    [line] = [ln for ln in table.splitlines() if f" {host} " in ln]
    return [cell.strip() for cell in line.strip("│┃ ").split("│")]


def test_unreachable_host_is_left_alone_while_the_other_converges(fleet: Stack) -> None:
    planned = fleet.run("plan", "-f", str(fleet.dir), "-o", "json")
    assert planned.returncode == 1, planned.stdout + planned.stderr
    plan = json.loads(planned.stdout)
    assert [c["address"] for c in plan["changes"]] == ["app.web[0]@local"]
    [check] = plan["checks"]
    assert (check["code"], check["severity"], check["host"]) == ("host-unreachable", "error", "edge-down")
    assert check["message"].startswith("host edge-down ") and "unreachable" in check["message"]
    assert "left untouched" in check["message"]

    applied = fleet.run("apply", "-f", str(fleet.dir), "--auto-approve")
    out = applied.stdout + applied.stderr
    assert applied.returncode == 1, out
    assert "app.web[0]@local: done" in out
    assert "queue" not in out.split("Hosts")[0].split("Apply results")[-1]  # nothing was tried on edge-down
    assert _host_row(out, "local")[:5] == ["local", "yes", "1", "0", "0"]
    down = _host_row(out, "edge-down")
    assert down[:5] == ["edge-down", "no", "0", "0", "0"] and "unreachable" in down[5]
    assert [c.name for c in fleet.containers()] == [f"aima-{fleet.name}-web-0"]  # type: ignore[attr-defined]
    assert "Apply failed" in out

    again = fleet.run("apply", "-f", str(fleet.dir), "--auto-approve")
    assert again.returncode == 1, again.stdout
    assert "Error: host edge-down " in again.stdout and "(edge-down, host-unreachable)" in again.stdout
    assert _host_row(again.stdout, "edge-down")[1] == "no"
    assert "No changes on the hosts that could be reached; not reached: edge-down." in again.stdout
    assert "The hosts match the manifests" not in again.stdout

    history = fleet.run("history", "-o", "json")
    assert history.returncode == 0, history.stderr
    assert json.loads(history.stdout)[0]["status"] == "partial"


def test_max_fail_percent_counts_the_unreachable_host(fleet: Stack) -> None:
    stopped = fleet.run("apply", "-f", str(fleet.dir), "--auto-approve", "--max-fail-percent", "40")
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode == 1, out
    assert "app.web[0]@local: skipped" in out
    assert "not started: 1 of 2 hosts failed (edge-down), more than --max-fail-percent 40" in out
    assert _host_row(out, "local")[:5] == ["local", "yes", "0", "0", "1"]
    assert fleet.containers() == []

    # 1 of 2 hosts is exactly 50%: not more than 50, so the reachable host converges.
    allowed = fleet.run("apply", "-f", str(fleet.dir), "--auto-approve", "--max-fail-percent", "50")
    assert allowed.returncode == 1, allowed.stdout
    assert _host_row(allowed.stdout, "local")[:5] == ["local", "yes", "1", "0", "0"]


def test_max_fail_percent_stops_new_steps_after_a_failure_mid_run(docker_engine: object, tmp_path: Path) -> None:
    """`broken` fails in the first wave on local (its container exits); `late` waits for `base` (second wave)
    and is independent of `broken`: with --max-fail-percent 0 it is not started, without it it is created."""
    stack = Stack(docker_engine, tmp_path)
    broken = (f"apiVersion: aima.dev/v1\nkind: App\nmetadata: {{name: broken}}\nspec:\n  image: {BUSY}\n"
              "  command: ['sh', '-c', 'exit 3']\n  restart: 'no'\n")
    base = _app("base", "local", free_port())
    late = _app("late", "local", free_port()) + "  dependsOn: [base]\n"
    stack.write("---\n".join([LOCAL_HOST, broken, base, late]))
    try:
        stopped = stack.run("apply", "-f", str(stack.dir), "--auto-approve", "--max-fail-percent", "0")
        out = stopped.stdout + stopped.stderr
        assert stopped.returncode == 1, out
        assert "app.broken[0]@local: failed" in out and "exit code 3" in out
        assert "app.base[0]@local: done" in out
        assert "app.late[0]@local: skipped" in out
        assert "not started: 1 of 1 hosts failed (local), more than --max-fail-percent 0" in out
        assert f"aima-{stack.name}-late-0" not in [c.name for c in stack.containers()]  # type: ignore[attr-defined]

        carried_on = stack.run("apply", "-f", str(stack.dir), "--auto-approve")
        assert carried_on.returncode == 1, carried_on.stdout
        assert "app.late[0]@local: done" in carried_on.stdout
        assert f"aima-{stack.name}-late-0" in [c.name for c in stack.containers()]  # type: ignore[attr-defined]
    finally:
        stack.cleanup()
