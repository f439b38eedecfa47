"""The dashboard's effects: a frame source (observe, plan, read the store) and the loops that show frames.

The live loop draws with rich Live on the terminal's alternate screen while a worker thread makes frames, so
that a slow host never delays a key press; keys are read in cbreak mode and the terminal is restored on the
way out, whatever ends the loop (`q`, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from aimactl.core.plan import PlanOptions
from aimactl.manifest import Manifests
from aimactl.watch.model import Dashboard, dashboard

QUIT_KEYS = ("q", "Q")


class FrameSource:
    """Makes one dashboard frame per call: observe and plan as `aimactl plan` does, then read the last events
    and stalled resources from the state store (history only; an unreadable store leaves those empty)."""

    def __init__(self, manifests: Manifests, options: PlanOptions, environ: Mapping[str, str], given: bool,
                 parallelism: int = 4, event_limit: int = 8):
        self.manifests = manifests
        self.options = options
        self.environ = environ
        self.given = given
        self.parallelism = parallelism
        self.event_limit = event_limit
        self._store: Any = None
        self._placed = placed_workloads(manifests)

    def _history(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Last events and stalled resources; the store is opened once and kept for the next frames."""
        from aimactl.store import StoreError, open_store

        try:
            if self._store is None:
                self._store = open_store(environ=self.environ)
            events = self._store.events(self.options.stack, limit=self.event_limit)
        except (StoreError, OSError):  # an unreadable state dir only costs the events, not the frame
            return [], {}
        return events, stalled_resources(self._store, self.options.stack)

    def __call__(self) -> Dashboard:
        """Observe, plan and read history: one frame."""
        from aimactl.converge.session import plan_stack

        session = plan_stack(self.manifests, self.options, self.environ, self.parallelism)
        try:
            events, stalled = self._history()
            taken = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            return dashboard(self.options.stack, taken, session.observed, session.plan if self.given else None,
                             events, stalled, self.event_limit, self._placed)
        finally:
            session.close()

    def close(self) -> None:
        """Close the state store."""
        if self._store is not None:
            self._store.close()
            self._store = None


def placed_workloads(manifests: Manifests) -> list[tuple[str, str, str, int]]:
    """(kind, name, host, replicas) of each Service and App, placed as the planner places them, so that those on
    an unreachable host stay on the dashboard."""
    from aimactl.core.desired import host_infos, place

    resources = manifests.resources
    hosts = host_infos(resources)
    out = []
    for res in resources:
        if res.kind in ("Service", "App"):
            host = place(res, hosts)
            if host is not None:
                out.append((res.kind.lower(), res.name, host, int(getattr(res.spec, "replicas", 1))))
    return out


def stalled_resources(store: Any, stack: str) -> dict[str, str]:
    """Resources the reconcile loop stopped retrying -> its last reason, as `aimactl reconcile` recorded them."""
    import sqlite3

    from aimactl.store.resources import stalled_resources as read

    try:
        return read(store, stack)
    except sqlite3.Error:  # reconcile state is history: without it the rows still show
        return {}


@contextlib.contextmanager
def cbreak_keys(stream: Any) -> Iterator[Callable[[float], str]]:
    """Yield `read(timeout) -> key or ''`. On a terminal, keys arrive one at a time (cbreak: no echo, no
    line buffering, Ctrl-C still interrupts) and the terminal's settings come back on exit; elsewhere
    `read` only waits."""
    try:
        fd = stream.fileno()
        terminal = os.isatty(fd)
    except (AttributeError, OSError, ValueError):
        terminal = False
    if not terminal:
        def wait(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield wait
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 32).decode(errors="replace") if ready else ""

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def safe_frame(source: Callable[[], Dashboard], last: Dashboard | None) -> tuple[Dashboard | None, str]:
    """A new frame, or the last one and why no new one could be made (the dashboard keeps running)."""
    try:
        return source(), ""
    except Exception as exc:  # noqa: BLE001 - a failed observation is shown, never a traceback
        return last, f"{type(exc).__name__}: {exc}"


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_live(source: Callable[[], Dashboard], interval: float, console: Any) -> None:
    """Show a new frame every `interval` seconds until `q`, Ctrl-C or SIGTERM; the terminal is restored."""
    from rich.live import Live
    from rich.text import Text

    from aimactl.watch.render import Frame

    state: dict[str, Any] = {"frame": None, "error": "", "new": False}
    stop, lock = threading.Event(), threading.Lock()

    def work() -> None:
        while not stop.is_set():
            frame, why = safe_frame(source, state["frame"])
            with lock:
                state.update(frame=frame, error=why, new=True)
            stop.wait(interval)

    def view() -> Any:
        footer = f"every {interval:g}s, q quits" + (f"  last refresh failed: {state['error']}" if state["error"]
                                                     else "")
        return Frame(state["frame"], footer) if state["frame"] else Text(f"observing... {state['error']}")

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    threading.Thread(target=work, name="watch-frames", daemon=True).start()
    try:
        with cbreak_keys(sys.stdin) as read, Live(view(), console=console, screen=True, auto_refresh=False) as live:
            size = console.size
            while not any(k in QUIT_KEYS for k in read(0.1)):
                with lock:
                    new, state["new"] = state["new"], False
                if new or console.size != size:
                    size = console.size
                    live.update(view(), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, previous)


def run_lines(source: Callable[[], Dashboard], interval: float, console: Any) -> None:
    """Not a terminal: print a frame every `interval` seconds (for logs) until interrupted."""
    from aimactl.watch.render import Frame

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    last = None
    try:
        while True:
            last, why = safe_frame(source, last)
            if last is not None:
                console.print(Frame(last, f"last refresh failed: {why}" if why else ""))
            else:
                console.print(f"observing failed: {why}", markup=False)
            console.print()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
