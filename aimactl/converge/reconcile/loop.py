"""The reconcile loop: passes on every new revision of the manifests, every interval, and whenever a watcher
says something changed on a host (a container died, a process stopped, the engine came back).

Level-triggered: a pass never trusts what the event said, it observes everything again. The stack lock is held
only while applying; between passes the loop sleeps on a trigger, polling the state DB every couple of seconds
for `aimactl reconcile --retry` requests (one small query).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aimactl.converge.reconcile.backoff import next_due
from aimactl.converge.reconcile.events import DockerEvents, ProcessWatch, Trigger, local_process_fingerprint
from aimactl.converge.reconcile.gitsource import Revision, SourceError
from aimactl.converge.reconcile.passes import Context, PassReport, converge
from aimactl.core.plan import Plan
from aimactl.store.resources import load_states, retry_requests

TICK_S = 2.0
"""How often the sleeping loop looks for `--retry` requests."""
BLOCKED_RETRY_S = 2.0
"""How soon a pass that found the stack locked by someone else is tried again."""


@dataclass
class Settings:
    """How the loop runs."""

    interval: float = 30.0
    once: bool = False
    watch_docker: bool = True


class Reconciler:
    """Keeps one stack converged to its manifest source until `stop` is set."""

    def __init__(self, ctx: Context, source: Any, settings: Settings, log: Callable[[PassReport], None]) -> None:
        self.ctx = ctx
        self.source = source
        self.settings = settings
        self.log = log
        self.trigger = Trigger()
        self.current: Revision | None = None
        self.passes = 0
        self.process_watch = ProcessWatch(self.trigger, ctx.stop)
        self.docker: DockerEvents | None = None

    def request_stop(self, why: str = "stop requested") -> None:
        """Finish the current step, then leave (signal handlers call this)."""
        self.ctx.stop.set()
        self.trigger.fire(why)

    def run(self) -> int:
        """Run passes until stopped (or once); returns the exit code: 0, or 1 when `--once` did not converge."""
        self._start_watchers()
        self.current = self.source.restore()
        next_fetch = 0.0
        reasons = ["start"]
        report = None
        try:
            while not self.ctx.stop.is_set():
                fetch = time.monotonic() >= next_fetch
                if fetch:
                    next_fetch = time.monotonic() + self.settings.interval
                report = self.run_pass(reasons or ["interval"], fetch)
                if self.settings.once:
                    break
                reasons = self._sleep(next_fetch, report)
        finally:
            self._stop_watchers()
        if self.settings.once and report is not None:
            return 0 if report.result in ("ok", "idle") else 1
        return 0

    def _sleep(self, next_fetch: float, report: PassReport) -> list[str]:
        """Wait for a trigger, the interval, the end of a backoff, or a `--retry` request."""
        due = next_due(load_states(self.ctx.store, self.ctx.stack).values(), self.ctx.now())
        until = next_fetch if due is None else min(next_fetch, time.monotonic() + due + 0.05)
        if report.result == "blocked":
            until = min(until, time.monotonic() + BLOCKED_RETRY_S)
        while not self.ctx.stop.is_set():
            left = until - time.monotonic()
            if left <= 0:
                return ["backoff ended" if due is not None else "interval"]
            reasons = self.trigger.wait(min(left, TICK_S))
            if reasons:
                return reasons
            if retry_requests(self.ctx.store, self.ctx.stack):
                return ["retry requested"]
        return ["stop"]

    def run_pass(self, trigger: list[str], fetch: bool = True) -> PassReport:
        """One pass: take every new revision of the source in order, then converge the newest good one."""
        start = time.monotonic()
        self.passes += 1
        report = PassReport(self.passes, list(trigger))
        try:
            applied_new = self._new_revisions(report, fetch)
            if not applied_new and not self.ctx.stop.is_set():
                if self.current is None:
                    report.result = "error"
                    report.errors.append("no valid manifests yet: nothing to converge")
                else:
                    report.source = self.current.label
                    eager = any(t.startswith(("docker: ", "process: ")) for t in trigger)
                    self._watch(converge(self.ctx, self.current.manifests, self.current.label, report, False,
                                         eager))
        except SourceError as exc:
            report.result, report.errors = "error", [*report.errors, str(exc)]
        except Exception as exc:  # noqa: BLE001 - a daemon reports what went wrong and tries again next pass
            if self.ctx.environ.get("AIMACTL_DEBUG"):
                raise
            report.result, report.errors = "error", [*report.errors, f"{type(exc).__name__}: {exc}"]
        report.seconds = time.monotonic() - start
        self.ctx.metrics.observe_pass(report.result, report.seconds)
        self.log(report)
        return report

    def _new_revisions(self, report: PassReport, fetch: bool) -> bool:
        """Apply each new revision of the source in order; a broken one is reported and skipped (the last good
        one keeps running). True when at least one was converged in this pass."""
        converged = False
        for ref in self.source.poll(fetch):
            if self.ctx.stop.is_set():
                break
            revision = self.source.revision(ref)
            if revision is None:
                continue
            if not revision.valid:
                self._reject(revision, report)
                continue
            self.current = revision
            report.source = revision.label
            self._watch(converge(self.ctx, revision.manifests, revision.label, report, True))
            converged = True
        return converged

    def _reject(self, revision: Revision, report: PassReport) -> None:
        errors = revision.errors()
        shown = "; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
        keeps = f"; still running {self.current.label}" if self.current else ""
        message = f"{revision.label} not applied: {shown}{keeps}"
        report.errors.append(message)
        report.result = "error"
        self.ctx.metrics.add("source_errors")
        self.ctx.store.add_event(self.ctx.stack, "source", "error", message)

    def _watch(self, plan: Plan | None) -> None:
        """Poll the native processes of this plan on local hosts (the helper's files, no subprocess)."""
        if plan is None:
            return
        sources: dict[str, Callable[[], Any]] = {}
        for change in plan.changes:
            info = plan.hosts.get(change.host)
            if change.runtime == "process" and info is not None and info.address == "local":
                directory = os.path.join(os.path.expanduser(info.data_dir), "proc")
                sources[f"{change.host}:{directory}"] = functools.partial(local_process_fingerprint, directory)
        self.process_watch.watch(sources)

    def _start_watchers(self) -> None:
        if self.settings.once:
            return
        self.process_watch.start()
        if self.settings.watch_docker:
            from aimactl.runtimes.engine_api import docker_endpoint

            self.docker = DockerEvents(docker_endpoint(self.ctx.environ.get("DOCKER_HOST")), self.ctx.stack,
                                       self.trigger, self.ctx.stop)
            self.docker.start()

    def _stop_watchers(self) -> None:
        self.ctx.stop.set()
        if self.docker is not None:
            self.docker.close()
            self.docker.join(2.0)
        if self.process_watch.is_alive():
            self.process_watch.join(2.0)


def wait_connected(reconciler: Reconciler, timeout: float) -> bool:
    """True once the Docker event stream is connected (tests and benchmarks start killing only then)."""
    docker = reconciler.docker
    return docker is not None and docker.connected.wait(timeout)

