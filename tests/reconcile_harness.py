"""A real `aimactl reconcile` subprocess with its JSON pass reports collected, for the reconcile tests and bench."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUSY = "aima-test/busybox:latest"
# busybox httpd as PID 1 ignores SIGTERM; the trap makes `docker stop` quick.
HTTPD = '["sh", "-c", "trap \'exit 0\' TERM; httpd -f -p 8080 -h /etc & wait"]'


def service(name: str, port: int, extra: str = "", command: str = HTTPD, health: str = "/passwd",
            startup: str = "20s") -> str:
    """A custom busybox httpd Service on a fixed host port, ready when `health` answers."""
    return (f"apiVersion: aima.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  engine: custom\n"
            f"  image: {BUSY}\n  command: {command}\n  containerPort: 8080\n  port: {port}\n"
            f"  health: {{path: {health}, startupTimeout: {startup}, interval: 1s}}\n{extra}")


class Loop:
    """`aimactl reconcile ... -o json` in its own process; `reports` fills as passes end."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.reports: list[dict[str, Any]] = []
        self.other: list[str] = []
        self.process = subprocess.Popen([sys.executable, "-m", "aimactl", "reconcile", "-o", "json", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.reports.append(json.loads(line))
            except ValueError:
                self.other.append(line)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, after: int = 0) -> dict[str, Any]:
        """The first report (numbered above `after`) matching `predicate`; fails with the log after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for report in list(self.reports):
                if report["number"] > after and predicate(report):
                    return report
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no matching pass within {timeout}s; passes: {self.log()}")

    def last(self) -> int:
        """The number of the newest pass so far."""
        return self.reports[-1]["number"] if self.reports else 0

    def log(self) -> str:
        """Everything the loop printed, for assertion messages."""
        return "\n".join(json.dumps(r) for r in self.reports[-12:]) + "".join(self.other[-20:])

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(5)


class Stack:
    """A stack name, a manifest directory and an isolated state dir against the private Docker engine."""

    def __init__(self, engine: Any, tmp: Path) -> None:
        self.engine = engine
        self.name = "r" + uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.dir = tmp / "manifests"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = tmp / "state"
        self.env = {**os.environ, "DOCKER_HOST": engine.host, "AIMACTL_STATE_DIR": str(self.state),
                    "AIMACTL_STACK": self.name, "NO_COLOR": "1"}

    def write(self, text: str) -> None:
        """Replace the stack's manifest file."""
        (self.dir / "stack.yaml").write_text(text)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run another aimactl command on this stack."""
        return subprocess.run([sys.executable, "-m", "aimactl", *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def loop(self, *args: str) -> Loop:
        """Start `aimactl reconcile` on this stack."""
        return Loop(self.env, *args)

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The docker CLI against the private engine, as an operator would type it."""
        return subprocess.run(["docker", "-H", self.engine.host, *args], capture_output=True, text=True, timeout=60)

    def container(self, name: str) -> Any:
        """The container of replica 0 of `name`, or None."""
        client = self.engine.client()
        try:
            found = client.containers.list(all=True, filters={"name": f"^aima-{self.name}-{name}-0$"})
            return found[0] if found else None
        finally:
            client.close()

    def events(self) -> list[dict[str, Any]]:
        """The stack's events, oldest first, straight from the state DB."""
        with sqlite3.connect(self.state / "aimactl.db") as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM events WHERE stack = ? ORDER BY id", [self.name]).fetchall()
        return [dict(r) for r in rows]

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """Rows of a read query on the state DB (none before the loop created it)."""
        if not (self.state / "aimactl.db").exists():
            return []
        with sqlite3.connect(self.state / "aimactl.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql, params).fetchall()]

    def cleanup(self) -> None:
        """Remove every container of the stack."""
        client = self.engine.client()
        try:
            for c in client.containers.list(all=True, filters={"label": f"dev.aima.stack={self.name}"}):
                c.remove(force=True)
        finally:
            client.close()
