"""Prometheus metrics of the reconcile loop, served as text format 0.0.4 by `http.server` in a thread.

Counters only grow for the life of the process, as Prometheus expects; `stalled` and the last successful
apply time are gauges.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    """What the loop counts; every update takes the lock (the server thread reads concurrently)."""

    stack: str
    passes: dict[str, int] = field(default_factory=dict)
    """Passes by result: ok, failed, blocked (lock held elsewhere), error (source or planning problem)."""
    pass_seconds_sum: float = 0.0
    pass_seconds_last: float = 0.0
    drift: int = 0
    heals: int = 0
    heal_failures: int = 0
    stalled: int = 0
    last_success: float = 0.0
    source_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe_pass(self, result: str, seconds: float) -> None:
        """One finished pass and how long it took."""
        with self.lock:
            self.passes[result] = self.passes.get(result, 0) + 1
            self.pass_seconds_sum += seconds
            self.pass_seconds_last = seconds

    def add(self, name: str, count: int = 1) -> None:
        """Grow a counter: drift, heals, heal_failures or source_errors."""
        with self.lock:
            setattr(self, name, getattr(self, name) + count)

    def set_stalled(self, count: int) -> None:
        """Resources Stalled now."""
        with self.lock:
            self.stalled = count

    def applied(self, when: float | None = None) -> None:
        """An apply succeeded (the hosts match the manifests)."""
        with self.lock:
            self.last_success = time.time() if when is None else when

    def render(self) -> str:
        """The exposition text."""
        label = f'stack="{_escape(self.stack)}"'
        with self.lock:
            passes = dict(self.passes)
            lines = [
                "# HELP aimactl_reconcile_passes_total Reconcile passes by result.",
                "# TYPE aimactl_reconcile_passes_total counter",
                *(f'aimactl_reconcile_passes_total{{{label},result="{r}"}} {n}' for r, n in sorted(passes.items())),
                "# HELP aimactl_reconcile_pass_duration_seconds Time spent in reconcile passes.",
                "# TYPE aimactl_reconcile_pass_duration_seconds summary",
                f"aimactl_reconcile_pass_duration_seconds_sum{{{label}}} {self.pass_seconds_sum:.6f}",
                f"aimactl_reconcile_pass_duration_seconds_count{{{label}}} {sum(passes.values())}",
                "# HELP aimactl_reconcile_last_pass_duration_seconds Duration of the last pass.",
                "# TYPE aimactl_reconcile_last_pass_duration_seconds gauge",
                f"aimactl_reconcile_last_pass_duration_seconds{{{label}}} {self.pass_seconds_last:.6f}",
                *_counter("drift_total", "Drift found on the hosts (died, removed, changed by hand).", label,
                          self.drift),
                *_counter("heals_total", "Drifted resources restored.", label, self.heals),
                *_counter("heal_failures_total", "Attempts to apply a change that failed.", label,
                          self.heal_failures),
                *_counter("source_errors_total", "Manifest revisions that could not be used.", label,
                          self.source_errors),
                "# HELP aimactl_reconcile_stalled_resources Resources Stalled after their retry budget.",
                "# TYPE aimactl_reconcile_stalled_resources gauge",
                f"aimactl_reconcile_stalled_resources{{{label}}} {self.stalled}",
                "# HELP aimactl_reconcile_last_success_timestamp_seconds When an apply last succeeded (0: never).",
                "# TYPE aimactl_reconcile_last_success_timestamp_seconds gauge",
                f"aimactl_reconcile_last_success_timestamp_seconds{{{label}}} {self.last_success:.3f}",
            ]
        return "\n".join(lines) + "\n"


def _counter(name: str, text: str, label: str, value: int) -> list[str]:
    return [f"# HELP aimactl_reconcile_{name} {text}", f"# TYPE aimactl_reconcile_{name} counter",
            f"aimactl_reconcile_{name}{{{label}}} {value}"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_addr(text: str) -> tuple[str, int]:
    """`127.0.0.1:9464` (or `:9464`, `[::1]:9464`) -> (host, port); ValueError for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-addr {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(metrics: Metrics, addr: str) -> Any:
    """Start serving `/metrics` on `addr` in a daemon thread; returns the server (call `shutdown()`).
    Raises OSError when the address cannot be bound."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            """`/metrics` (or `/`): the exposition text; anything else 404."""
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            """Scrapes are not worth a log line."""

    host, port = parse_addr(addr)
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 1.0}, name="metrics",
                     daemon=True).start()
    return server
