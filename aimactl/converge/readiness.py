"""Readiness: a replica is ready when its health path answers 2xx, or, without one, once it keeps running.

A replica that exits while starting, or is not ready by its startup timeout, fails with the last lines of its
log, because that is where the reason is.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from aimactl.core.desired import Readiness
from aimactl.runtimes import Runtime, RuntimeFailure

LOG_LINES = 20
MAX_POLL = 0.5


class NotReady(Exception):
    """A replica did not become ready; the message carries the reason and the last log lines."""


def _answer(request: urllib.request.Request, timeout: float) -> str | None:
    """Send one request to our own endpoint; None when it answered 2xx, else why not, in a few words."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own endpoint
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        return f"HTTP {exc.code}" + (f": {detail}" if detail and request.get_method() != "GET" else "")
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def probe(url: str, timeout: float = 2.0) -> str | None:
    """GET the health path; None when it answered 2xx."""
    return _answer(urllib.request.Request(url), timeout)


def warmup(url: str, method: str, body: object, timeout: float = 60.0) -> str | None:
    """Send the tiny inference request; None when it answered 2xx."""
    import json

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    return _answer(request, timeout)


def last_logs(runtime: Runtime, container_id: str, lines: int = LOG_LINES) -> str:
    """The last log lines of a container, indented for an error message (empty when there are none)."""
    try:
        text = [line.rstrip("\n") for line in runtime.logs(container_id, tail=lines)]
    except RuntimeFailure:
        return ""
    return ("\n  last log lines:\n" + "\n".join(f"    {line}" for line in text)) if text else ""


def wait_ready(runtime: Runtime, container_id: str, readiness: Readiness, host: str,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
               on_healthy: Callable[[], None] | None = None) -> float:
    """Block until the replica is ready; returns seconds waited. Raises NotReady with the reason and logs.

    `container_id` was just created and started: a restart count above zero means it crashed meanwhile.
    `on_healthy` runs once, when the health path first answers and before the warmup (an engine pulling the
    model the warmup needs); it raises NotReady to fail the replica.
    """
    start = clock()
    deadline = start + readiness.startup_timeout
    running_since: float | None = None
    last_problem = "not probed yet"
    while True:
        _check_still_up(runtime, container_id)
        now = clock()
        if readiness.path and readiness.port:
            last_problem, answered = _http_problem(readiness, host, on_healthy)
            on_healthy = None if answered else on_healthy
            if not last_problem:
                return now - start
        else:
            running_since = now if running_since is None else running_since
            if now - running_since >= readiness.settle:
                return now - start
        if now > deadline:
            raise NotReady(f"not ready after {readiness.startup_timeout:g}s ({last_problem})"
                           + last_logs(runtime, container_id))
        pause = min(readiness.interval, MAX_POLL)
        if running_since is not None:
            # Wake when the settle time is up, not on the next poll tick: a cold apply waits no longer than it must.
            pause = min(pause, max(0.0, running_since + readiness.settle - now))
        sleep(pause)


def _check_still_up(runtime: Runtime, container_id: str) -> None:
    """Raise NotReady (with the last log lines) when the starting replica exited, or crashed and was restarted."""
    seen = runtime.inspect(container_id)
    if not seen.running:
        code = f" with exit code {seen.exit_code}" if seen.exit_code is not None else ""
        raise NotReady(f"container {seen.state}{code} while starting" + last_logs(runtime, container_id))
    if seen.restart_count:
        # Running again only because its restart policy brought it back (the replica was just created):
        # it crashed while starting, however briefly it was seen down.
        raise NotReady(f"container exited while starting and was restarted {seen.restart_count} time(s) by "
                       "its restart policy" + last_logs(runtime, container_id))


def _http_problem(readiness: Readiness, host: str, on_healthy: Callable[[], None] | None) -> tuple[str, bool]:
    """One round of HTTP checks: the health path, then (once it answers) `on_healthy` and the warmup request.
    Returns what is wrong ('' when ready) and whether the health path answered."""
    url = f"http://{host}:{readiness.port}{readiness.path}"
    problem = probe(url)
    if problem:
        return f"GET {url}: {problem}", False
    if on_healthy is not None:
        on_healthy()
    warm = readiness.warmup
    if warm is None:
        return "", True
    target = f"http://{host}:{readiness.port}{warm.path}"
    problem = warmup(target, warm.method, warm.body)
    return (f"warmup {warm.method} {target}: {problem}" if problem else ""), True
