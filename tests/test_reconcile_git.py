"""`aimactl reconcile --git`: a local bare repository, commits pushed while the loop runs, a broken one among
them. Real git, real Docker engine, the loop as a subprocess."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import free_port, http_get, wait_until
from tests.reconcile_harness import Stack, service

pytestmark = pytest.mark.docker
ADDRESS = "service.web[0]@local"


@pytest.fixture
def stack(docker_engine: object, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(docker_engine, tmp_path)
    yield s
    s.cleanup()


class Repo:
    """A bare repository (the "remote") and a working clone that commits and pushes to it."""

    def __init__(self, tmp: Path) -> None:
        self.bare = tmp / "remote.git"
        self.work = tmp / "work"
        self.git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        self.git("clone", "--quiet", str(self.bare), str(self.work))
        for key, value in (("user.name", "Test"), ("user.email", "test@example.invalid")):
            self.git("-C", str(self.work), "config", key, value)
        self.git("-C", str(self.work), "checkout", "--quiet", "-b", "main")

    @staticmethod
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

    def push(self, text: str, message: str) -> str:
        """Commit `deploy/stack.yaml` with `text` and push it; returns the commit id."""
        (self.work / "deploy").mkdir(exist_ok=True)
        (self.work / "deploy" / "stack.yaml").write_text(text)
        self.git("-C", str(self.work), "add", "deploy/stack.yaml")
        self.git("-C", str(self.work), "commit", "--quiet", "-m", message)
        self.git("-C", str(self.work), "push", "--quiet", "origin", "main")
        return self.git("-C", str(self.work), "rev-parse", "HEAD").strip()


def _env_of(stack: Stack) -> str | None:
    container = stack.container("web")
    if container is None or container.status != "running":
        return None
    return next((e for e in container.attrs["Config"]["Env"] if e.startswith("VERSION=")), None)


def test_commits_applied_in_order_broken_one_reported_last_good_kept(stack: Stack, tmp_path: Path) -> None:
    repo = Repo(tmp_path)
    port = free_port()
    first = repo.push(service("web", port, "  env: {VERSION: one}\n"), "first")
    url = f"file://{repo.bare}"
    loop = stack.loop("--git", url, "--branch", "main", "--path", "deploy", "--interval", "1s")
    try:
        loop.wait_for(lambda r: r["source"].endswith(first) and ADDRESS in r["applied"], 60)
        assert _env_of(stack) == "VERSION=one"

        # Two commits pushed at once: each one is planned and applied, in order.
        second = repo.push(service("web", port, "  env: {VERSION: two}\n"), "second")
        third = repo.push(service("web", port, "  env: {VERSION: three}\n"), "third")
        loop.wait_for(lambda r: r["source"].endswith(third), 60)
        assert wait_until(lambda: _env_of(stack) == "VERSION=three", 10)
        history = stack.run("history", "-o", "json")
        sources = [r["source"] for r in reversed(json.loads(history.stdout))]
        assert sources == [f"git:{url}#main@{c}" for c in (first, second, third)], sources

        # A broken commit: reported with file and line, nothing changes, the last good one keeps running.
        running = stack.container("web").id
        broken = repo.push(service("web", port, "  env: {VERSION: four}\n  replicaz: 2\n"), "broken")
        report = loop.wait_for(lambda r: any(broken in e for e in r["errors"]), 30)
        assert report["result"] == "error"
        [error] = [e for e in report["errors"] if broken in e]
        assert "deploy/stack.yaml:12" in error and "replicaz" in error and f"still running git:{url}" in error
        after = loop.last()
        loop.wait_for(lambda r: r["result"] == "ok", 30, after)  # later passes go on healing the last good one
        assert stack.container("web").id == running and _env_of(stack) == "VERSION=three"
        events = [e for e in stack.events() if e["resource"] == "source"]
        assert len(events) == 1 and events[0]["kind"] == "error" and broken in events[0]["message"]
        assert http_get(f"http://127.0.0.1:{port}/passwd") is not None

        # The next good commit is applied.
        fixed = repo.push(service("web", port, "  env: {VERSION: five}\n"), "fixed")
        loop.wait_for(lambda r: r["source"].endswith(fixed) and ADDRESS in r["applied"], 60)
        assert wait_until(lambda: _env_of(stack) == "VERSION=five", 10)
    finally:
        assert loop.stop() == 0, loop.log()

    # A restarted loop continues after the last applied commit instead of re-applying history.
    again = stack.loop("--git", url, "--path", "deploy", "--once")
    code = again.process.wait(60)
    again.stop()
    assert code == 0, again.log()
    assert again.reports[-1]["applied"] == {} and again.reports[-1]["result"] == "ok", again.log()
