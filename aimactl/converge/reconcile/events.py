"""What wakes the reconcile loop between intervals: Docker events about the stack's containers, and native
processes of the stack that stop.

Both watchers only say "look now" (level-triggered: the pass re-observes everything); they never decide
anything themselves. A Docker engine that goes away is reconnected every second, and its return wakes the loop.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import socket
import threading
from collections.abc import Callable, Hashable, Mapping
from urllib.parse import urlencode

from aimactl.core import labels as L
from aimactl.runtimes import RuntimeFailure

WATCHED_ACTIONS = ("die", "destroy", "oom", "pause", "update", "rename")
"""Container events that can mean drift: it stopped, is gone, was paused, changed or renamed by hand."""
RECONNECT_S = 1.0
PROCESS_POLL_S = 2.0


class Trigger:
    """A wake-up call with the reasons it was raised, shared by the watchers, the signal handler and the loop."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._reasons: list[str] = []

    def fire(self, reason: str) -> None:
        """Ask for a pass now, saying why."""
        with self._cond:
            if reason not in self._reasons:
                self._reasons.append(reason)
            self._cond.notify_all()

    def wait(self, timeout: float) -> list[str]:
        """Block until fired or `timeout` seconds pass; return (and forget) the reasons, empty on timeout."""
        with self._cond:
            if not self._reasons:
                self._cond.wait(max(0.0, timeout))
            reasons, self._reasons = self._reasons, []
        return reasons


def event_filters(stack: str) -> dict[str, list[str]]:
    """The Engine API filter for this stack's container events."""
    return {"type": ["container"], "label": [f"{L.STACK}={stack}", f"{L.MANAGED}=true"],
            "event": list(WATCHED_ACTIONS)}


def describe_event(line: bytes) -> str | None:
    """`docker: die aima-prod-chat-0 (exit 137)` from one line of the event stream; None for other lines."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    action = str(event.get("Action") or event.get("status") or "")
    if action.split(":")[0] not in WATCHED_ACTIONS:
        return None
    code = f" (exit {attributes['exitCode']})" if "exitCode" in attributes else ""
    return f"docker: {action} {attributes.get('name', '?')}{code}"


class DockerEvents(threading.Thread):
    """Follows `GET /events` of one engine (stdlib HTTP over its socket), reconnecting while it is down."""

    def __init__(self, endpoint: str, stack: str, trigger: Trigger, stop: threading.Event) -> None:
        super().__init__(name=f"docker-events {endpoint}", daemon=True)
        self.endpoint = endpoint
        self.stack = stack
        self.trigger = trigger
        self.stop = stop
        self.connected = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        """Follow the stream until stopped; every engine outage ends with a wake-up when it answers again."""
        was_down = False
        while not self.stop.is_set():
            try:
                self._follow(functools.partial(self._back, was_down))
            except (OSError, http.client.HTTPException, RuntimeFailure):
                pass
            self.connected.clear()
            was_down = True
            self.stop.wait(RECONNECT_S)

    def _back(self, was_down: bool) -> None:
        self.connected.set()
        if was_down:
            self.trigger.fire("docker: engine reachable again")

    def _follow(self, on_connect: Callable[[], None]) -> None:
        """One connection: negotiate the API version, then read event lines until the engine closes it."""
        from aimactl.runtimes.engine_api import EngineReader, _connection_factory

        reader = EngineReader(self.endpoint, timeout=5.0)
        try:
            version = str(reader.version().get("ApiVersion") or "")
        finally:
            reader.close()
        query = urlencode({"filters": json.dumps(event_filters(self.stack), separators=(",", ":"))})
        conn = _connection_factory(self.endpoint)(None)
        self._conn = conn
        try:
            conn.request("GET", f"{'/v' + version if version else ''}/events?{query}", headers={"Host": "docker"})
            response = conn.getresponse()
            if response.status != 200:
                raise OSError(f"events: HTTP {response.status}")
            on_connect()
            for line in iter(response.readline, b""):
                what = describe_event(line)
                if what:
                    self.trigger.fire(what)
        finally:
            self._conn = None
            conn.close()

    def close(self) -> None:
        """Unblock the reader (the thread then sees `stop`)."""
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


def local_process_fingerprint(state_dir: str) -> Hashable:
    """What the host helper's files say about the processes in `state_dir`: each pidfile's process alive or
    not, and when each exit record was written. Reads a few small files, no subprocess: cheap every 2 s."""
    seen = []
    try:
        entries = sorted(os.scandir(state_dir), key=lambda e: e.name)
    except OSError:
        return ()
    for entry in entries:
        if entry.name.endswith(".exit"):
            with contextlib.suppress(OSError):
                seen.append((entry.name, entry.stat().st_mtime_ns))
        elif entry.name.endswith(".pid"):
            try:
                with open(entry.path, encoding="utf-8") as handle:
                    pid = int(json.load(handle).get("pid") or 0)
            except (OSError, ValueError, AttributeError):
                pid = 0
            seen.append((entry.name, pid > 0 and os.path.exists(f"/proc/{pid}") and not _zombie(pid)))
    return tuple(seen)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[:1] in (["Z"], ["X"])
    except OSError:
        return True


class ProcessWatch(threading.Thread):
    """Polls the stack's native processes every `interval` seconds and wakes the loop when one changes.

    `sources` maps a label (`local:/path/proc`) to a function returning a fingerprint; the loop sets them after
    each pass with `watch` (only hosts that run process workloads are polled).
    """

    def __init__(self, trigger: Trigger, stop: threading.Event, interval: float = PROCESS_POLL_S) -> None:
        super().__init__(name="process-watch", daemon=True)
        self.trigger = trigger
        self.stop = stop
        self.interval = interval
        self._sources: Mapping[str, Callable[[], Hashable]] = {}
        self._last: dict[str, Hashable] = {}
        self._lock = threading.Lock()

    def watch(self, sources: Mapping[str, Callable[[], Hashable]]) -> None:
        """Poll these from now on, taking their state right now as the baseline: what the pass just did is not
        a change, and a process that dies a moment after is one."""
        baseline = {label: _fingerprint(probe) for label, probe in sources.items()}
        with self._lock:
            self._sources, self._last = dict(sources), baseline

    def run(self) -> None:
        """Poll until stopped."""
        while not self.stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """One round: fire for every source whose fingerprint changed since the previous round."""
        with self._lock:
            for label, probe in self._sources.items():
                now = _fingerprint(probe)
                before, self._last[label] = self._last.get(label), now
                if before is not None and before != now:
                    self.trigger.fire(f"process: a process changed on {label}")


def _fingerprint(probe: Callable[[], Hashable]) -> Hashable:
    try:
        return probe()
    except (OSError, RuntimeFailure) as exc:
        return f"unreachable: {exc}"

