"""`aimactl watch` against the private Docker engine, driven as a user would: `--once` through a pipe, and the
live view in a real terminal (tmux), quit with `q`, Ctrl-C and SIGTERM, each leaving the terminal as it was."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures import component_unavailable, wait_until

pytestmark = pytest.mark.docker
BUSY = "aima-test/busybox:latest"
# busybox httpd as PID 1 ignores SIGTERM; the trap makes `docker stop` quick.
HTTPD = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 8080 -h /etc & wait"]'


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """A stack name, its manifests and an isolated state dir; `aimactl` runs as a subprocess."""

    def __init__(self, engine: object, tmp: Path):
        self.engine = engine
        self.name = "w" + uuid.uuid4().hex[:8]
        self.dir = tmp / "manifests"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.env = {**os.environ, "DOCKER_HOST": engine.host, "AIMACTL_STATE_DIR": str(tmp / "state"),  # type: ignore[attr-defined]
                    "AIMACTL_STACK": self.name, "NO_COLOR": "1", "COLUMNS": "200"}
        (self.dir / "stack.yaml").write_text(
            f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  engine: custom\n"
            f"  image: {BUSY}\n  command: {HTTPD}\n  containerPort: 8080\n  health: {{path: /passwd, "
            f"startupTimeout: 20s}}\n---\n"
            f"apiVersion: aima.dev/v1\nkind: App\nmetadata: {{name: web}}\nspec:\n  image: {BUSY}\n"
            f"  command: {HTTPD}\n  ports: [\"127.0.0.1:{self.port}:8080\"]\n")

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def apply(self) -> None:
        applied = self.run("apply", "-f", str(self.dir), "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr

    def container(self, name: str) -> object:
        client = self.engine.client()  # type: ignore[attr-defined]
        try:
            return client.containers.get(f"aima-{self.name}-{name}-0")
        finally:
            client.close()

    def cleanup(self) -> None:
        client = self.engine.client()  # type: ignore[attr-defined]
        try:
            for c in client.containers.list(all=True, filters={"label": f"dev.aima.stack={self.name}"}):
                c.remove(force=True)
        finally:
            client.close()


@pytest.fixture
def stack(docker_engine: object, tmp_path: Path):  # noqa: ANN201
    s = Stack(docker_engine, tmp_path)
    yield s
    s.cleanup()


def row(text: str, name: str) -> list[str]:
    """The words of the dashboard line that shows `name` (exactly one)."""
    [line] = [line for line in text.splitlines() if line.split() and line.split()[0] == name]
    return line.split()


def test_watch_once_shows_sync_health_and_endpoint_then_drift(stack: Stack) -> None:
    stack.apply()
    once = stack.run("watch", "--once", "-f", str(stack.dir))
    assert once.returncode == 0, once.stdout + once.stderr
    assert "\x1b[" not in once.stdout  # a pipe gets plain text
    web = row(once.stdout, "app/web")
    assert web[1:6] == ["local", "Synced", "running", "0", "1/1"] and web[6] == f"http://127.0.0.1:{stack.port}"
    api = row(once.stdout, "service/api")
    assert api[1:6] == ["local", "Synced", "running", "0", "1/1"] and api[6].startswith("http://127.0.0.1:")
    events = [line.split() for line in once.stdout.split("Events", 1)[1].splitlines() if line.strip()]
    assert {("app.web[0]@local", "created"), ("service.api[0]@local", "created")} <= {(e[1], e[2]) for e in events}

    stack.container("web").stop(timeout=5)  # type: ignore[attr-defined]
    drifted = stack.run("watch", "--once", "-f", str(stack.dir))
    assert drifted.returncode == 0, drifted.stdout + drifted.stderr
    web = row(drifted.stdout, "app/web")
    assert web[1:6] == ["local", "OutOfSync", "exited", "0", "0/1"]
    assert "replace: container exited (0)" in drifted.stdout
    assert row(drifted.stdout, "service/api")[2:4] == ["Synced", "running"]

    as_json = stack.run("watch", "--once", "-f", str(stack.dir), "-o", "json")
    frame = json.loads(as_json.stdout)
    by_name = {w["name"]: w for w in frame["workloads"]}
    assert (by_name["web"]["sync"], by_name["web"]["health"], by_name["web"]["reason"]) == (
        "OutOfSync", "exited", "replace: container exited (0)")
    assert (by_name["api"]["sync"], by_name["api"]["ready"], frame["hosts"][0]["reachable"]) == ("Synced", 1, True)


class Tmux:
    """A private tmux server (own socket, no config) running one command in a 120x40 terminal."""

    def __init__(self, tmp: Path):
        self.binary = shutil.which("tmux") or component_unavailable("`tmux` is not installed (Debian package tmux)")
        self.socket = f"aima-watch-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp

    def tmux(self, *args: str) -> str:
        out = subprocess.run([self.binary, "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                             text=True, timeout=20)
        return out.stdout

    def start(self, env: dict[str, str], argv: list[str], tag: str) -> None:
        """Run `argv` with `env` in a new session; the terminal settings before and after, and the exit code,
        land in files named after `tag`."""
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.isidentifier())
        script = self.tmp / f"{tag}.sh"
        base = shlex.quote(str(self.tmp / tag))
        # The shell itself must outlive a Ctrl-C sent to the terminal (a trapped signal is reset in the child).
        script.write_text(f"{exports}unset NO_COLOR COLUMNS LINES\ntrap : INT\nstty -g > {base}.before\n"
                          f"{shlex.join(argv)}\necho $? > {base}.rc\nstty -g > {base}.after\n")
        self.tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", tag, f"sh {shlex.quote(str(script))}")

    def screen(self, tag: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", tag)

    def result(self, tag: str) -> tuple[str, str, str]:
        base = self.tmp / tag
        return (base.with_suffix(".rc").read_text().strip(), base.with_suffix(".before").read_text(),
                base.with_suffix(".after").read_text())

    def child_pid(self, tag: str) -> int:
        """The pid of the command the session's shell runs."""
        shell = self.tmux("list-panes", "-t", tag, "-F", "#{pane_pid}").strip()
        for entry in Path("/proc").iterdir():
            try:
                # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after the ")".
                if entry.name.isdigit() and (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == shell:
                    return int(entry.name)
            except (OSError, IndexError):
                continue
        raise AssertionError(f"no child of the tmux pane's shell {shell}")

    def stop(self) -> None:
        self.tmux("kill-server")


def test_live_view_in_a_terminal_quits_on_q_ctrl_c_and_sigterm(stack: Stack, tmp_path: Path) -> None:
    term = Tmux(tmp_path)
    stack.apply()
    argv = [sys.executable, "-m", "aimactl", "watch", "-f", str(stack.dir), "--interval", "0.5s"]
    try:
        for tag, key in (("q", "q"), ("ctrlc", "C-c"), ("term", "SIGTERM")):
            term.start(stack.env, argv, tag)
            shown = wait_until(lambda t=tag: "app/web" in term.screen(t) and "service/api" in term.screen(t), 60)
            screen = term.screen(tag)
            assert shown, screen
            lines = screen.splitlines()
            assert max(len(line) for line in lines) <= 120
            web = row(screen, "app/web")
            assert web[2:4] == ["Synced", "running"] and web[6] == f"http://127.0.0.1:{stack.port}"
            assert "q quits" in screen and "Events" in screen
            time.sleep(0.6)  # a refresh or two: the loop keeps drawing while it waits for keys
            if key == "SIGTERM":
                os.kill(term.child_pid(tag), signal.SIGTERM)
            else:
                term.tmux("send-keys", "-t", tag, key)
            assert wait_until(lambda t=tag: (tmp_path / f"{t}.after").exists(), 15), term.screen(tag)
            time.sleep(0.1)
            rc, before, after = term.result(tag)
            assert rc == "0", (key, rc)
            assert before == after, f"terminal settings not restored after {key}"
    finally:
        term.stop()
