"""Execute a Plan: deletes first (dependents before what they need), then waves in dependency order.

Each step re-checks its target right before acting, so applying the same plan twice, or a plan another apply
overtook, does no harm. A failure skips only the resources that depend on it. `parallelism` bounds the
operations on the Docker engines; readiness waits run beside them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from aimactl.converge.connections import Connections
from aimactl.converge.readiness import NotReady, wait_ready
from aimactl.converge.secrets import SecretUnavailable, resolve_env
from aimactl.core import fleet
from aimactl.core import labels as L
from aimactl.core.graph import waves
from aimactl.core.observed import ObservedContainer
from aimactl.core.plan import CREATE, DELETE, REPLACE, UPDATE, Change, Plan
from aimactl.hosts.connector import HelperError
from aimactl.runtimes import ContainerNotFound, Runtime, RuntimeFailure

DONE, FAILED, SKIPPED, UNCHANGED = "done", "failed", "skipped", "unchanged"


@dataclass
class StepResult:
    """What happened to one change."""

    address: str
    key: str
    action: str
    status: str
    message: str = ""
    seconds: float = 0.0
    host: str = ""


class Reporter(Protocol):
    """Receives progress; the CLI renders it, tests record it."""

    def started(self, change: Change) -> None:
        """A step begins."""

    def finished(self, change: Change, result: StepResult) -> None:
        """A step ended (done, failed, skipped or unchanged)."""

    def progress(self, change: Change, event: dict[str, Any]) -> None:
        """Progress of a long step (a model download: bytes, total, rate)."""


class StepFailed(Exception):
    """A step could not be carried out; the message says why in words."""


class Executor:
    """Runs the changes of one plan against the hosts."""

    def __init__(self, connections: Connections, stack: str, reporter: Reporter, parallelism: int = 4,
                 environ: Mapping[str, str] | None = None, stop_timeout: int = 10,
                 max_fail_percent: int | None = None):
        self.connections = connections
        self.stack = stack
        self.reporter = reporter
        self.slots = threading.Semaphore(max(1, parallelism))
        self.environ = environ
        self.stop_timeout = stop_timeout
        self.failed: set[str] = set()
        self.cancelled = threading.Event()
        self.max_fail_percent = max_fail_percent
        self.failed_hosts: set[str] = set()
        self.total_hosts = 0
        self._hosts_lock = threading.Lock()
        self.pulled: set[str] = set()
        """`model@host` of the models an engine pulled while its Service started (Ollama)."""

    def run(self, plan: Plan) -> list[StepResult]:
        """Apply every actionable change; returns one result per change, in execution order."""
        results: list[StepResult] = []
        # Unreachable hosts count as failed for --max-fail-percent, as Ansible counts them.
        self.failed_hosts = set(plan.unreachable)
        self.total_hosts = len(set(plan.hosts) | {c.host for c in plan.changes} | self.failed_hosts)
        todo = plan.actionable
        deletes = [c for c in todo if c.action == DELETE]
        for group in _delete_waves(deletes, plan.edges):
            results += self._run_wave(group, plan.edges)
        pulls = [c for c in todo if c.action != DELETE and c.model is not None and c.model.url is None]
        others = [c for c in todo if c.action != DELETE and c not in pulls]
        for group in _forward_waves(others, plan.edges):
            results += self._run_wave(group, plan.edges)
        # An engine pulls its own model once its Service runs: after every other step, skipped if it failed.
        keys = {c.address: c.key for c in plan.changes}
        served = {c.key: {keys[c.model.service]} for c in pulls if c.model and c.model.service in keys}
        return results + self._run_wave(pulls, served)

    def _run_wave(self, changes: list[Change], edges: Mapping[str, set[str]]) -> list[StepResult]:
        if not changes:
            return []
        pool = ThreadPoolExecutor(max_workers=len(changes))
        futures = [pool.submit(self._step, c, edges) for c in changes]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            # Ctrl-C: readiness waits stop at once; operations already sent to Docker finish, so every
            # container created so far carries its labels and the next plan accounts for it.
            self.cancelled.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=False)

    def _step(self, change: Change, edges: Mapping[str, set[str]]) -> StepResult:
        blocked = _failed_dependency(change.key, edges, self.failed)
        stop = None if blocked else self._stop_reason()
        if blocked or stop:
            result = StepResult(change.address, change.key, change.action, SKIPPED,
                                stop or f"dependency {blocked} failed", host=change.host)
            self.failed.add(change.key)
            self.reporter.finished(change, result)
            return result
        self.reporter.started(change)
        start = time.monotonic()
        try:
            status, message = self._act(change)
        except (StepFailed, NotReady, RuntimeFailure, SecretUnavailable, HelperError) as exc:
            status, message = FAILED, str(exc)
            self.failed.add(change.key)
            with self._hosts_lock:
                self.failed_hosts.add(change.host)
        result = StepResult(change.address, change.key, change.action, status, message, time.monotonic() - start,
                            change.host)
        self.reporter.finished(change, result)
        return result

    def _stop_reason(self) -> str | None:
        """Why no new step may start (interrupted, or --max-fail-percent exceeded), or None.

        A step first waits for a free operation slot, so that with a bounded --parallelism the steps queued
        behind a failing host see its failure before they start.
        """
        if self.cancelled.is_set():  # Ctrl-C, or SIGTERM to the reconcile loop: finish only what has begun
            return "not started: interrupted"
        if self.max_fail_percent is None:
            return None
        with self.slots, self._hosts_lock:
            failed = set(self.failed_hosts)
        if fleet.over_fail_limit(len(failed), self.total_hosts, self.max_fail_percent):
            return fleet.stop_message(failed, self.total_hosts, self.max_fail_percent)
        return None

    def _act(self, change: Change) -> tuple[str, str]:
        if change.model is not None:
            return self._fetch_model(change) if change.model.url is not None else self._pull_model(change)
        runtime = self.connections.runtime(change.host, change.runtime)
        if change.action == DELETE:
            return self._delete(runtime, change)
        if change.action == UPDATE:
            return self._update(runtime, change)
        if change.action in (CREATE, REPLACE):
            return self._converge(runtime, change)
        return UNCHANGED, "no-op"

    def _current(self, runtime: Runtime, name_or_id: str) -> ObservedContainer | None:
        """Re-check the target right before acting."""
        try:
            return runtime.inspect(name_or_id)
        except ContainerNotFound:
            return None

    def _converge(self, runtime: Runtime, change: Change) -> tuple[str, str]:
        """Create or replace: remove what holds the name (if ours), then create, start and wait for readiness."""
        want = change.desired
        assert want is not None
        current = self._current(runtime, want.container.name)
        if current is not None:
            # Only a container the plan itself named (one recreated by hand without labels) is taken back.
            if (not current.managed or current.stack != self.stack) and current.id != change.container_id:
                raise StepFailed(f"a container named {current.name} exists and is not managed by stack {self.stack}")
            owner = current.labels.get(L.HOST, change.host)
            if owner != change.host:
                raise StepFailed(f"a container named {current.name} exists for host {owner} (the same Docker engine "
                                 f"is reached as {owner} and {change.host}): remove it there first")
            if current.spec_hash == want.spec_hash and current.running and current.id != change.container_id:
                return UNCHANGED, "already converged by another run"
            with self.slots:
                runtime.stop(current.id, self.stop_timeout)
                runtime.remove(current.id)
        env, _ = resolve_env(want.container, self.environ)
        with self.slots:
            container_id = runtime.create(want.container, env)
            try:
                runtime.start(container_id)
            except RuntimeFailure:
                runtime.remove(container_id)
                raise
        waited = wait_ready(runtime, container_id, want.readiness, self.connections.hosts[change.host].url_host,
                            sleep=self._sleep, on_healthy=self._pull_hook(change))
        verb = "created" if change.action == CREATE else "replaced"
        shown = container_id[:12] if change.runtime == "docker" else container_id
        return DONE, f"{verb} [{'id' if change.runtime == 'docker' else 'process'}={shown}], ready after {waited:.1f}s"

    def _fetch_model(self, change: Change) -> tuple[str, str]:
        """Fetch a Model on its host with the helper (resumable, checksummed), then record it in the index."""
        from aimactl.converge.models import fetch_model

        want = change.model
        assert want is not None
        with self.slots:
            result = fetch_model(self.connections, want, lambda event: self.reporter.progress(change, event),
                                 self.environ)
        size = result.get("size", 0)
        return DONE, f"fetched {size / 2**20:.1f} MiB, sha256 {str(result.get('sha256', ''))[:12]}"

    def _pull_hook(self, change: Change) -> Callable[[], None] | None:
        """For an engine that pulls its own model (Ollama): pull it once the engine is healthy, before the
        warmup needs it, showing the engine's progress as this Service's."""
        from aimactl.converge.models import PullFailed, pull_model, pulled_models
        from aimactl.models.ollama import canonical

        want = change.desired
        if want is None or want.readiness.pull is None:
            return None
        request = want.readiness.pull
        base = f"http://{self.connections.hosts[change.host].url_host}:{want.readiness.port}"

        def pull() -> None:
            model = canonical(str(request.body.get("model", "")))
            try:
                if model not in pulled_models(base):
                    pull_model(base, request, lambda event: self.reporter.progress(change, event))
                    self.pulled.add(f"{model}@{change.host}")
            except PullFailed as exc:
                raise NotReady(str(exc)) from None

        return pull

    def _pull_model(self, change: Change) -> tuple[str, str]:
        """Make the Service's engine pull the model (re-checking first: its start may have pulled it already)."""
        from aimactl.converge.models import PullFailed, api_url, pull_model, pulled_models
        from aimactl.models.ollama import canonical

        want = change.model
        assert want is not None and want.pull is not None
        base, model = api_url(self.connections, want), canonical(str(want.pull.body.get("model", "")))
        try:
            if model in pulled_models(base):
                if f"{model}@{change.host}" in self.pulled:
                    return DONE, f"{model} pulled by {want.service} as it started"
                return UNCHANGED, f"{model} already present in the Ollama of {want.service}"
            with self.slots:
                pull_model(base, want.pull, lambda event: self.reporter.progress(change, event))
        except PullFailed as exc:
            raise StepFailed(str(exc)) from None
        return DONE, f"pulled {model} through the Ollama API of {want.service}"

    def _sleep(self, seconds: float) -> None:
        """Sleep between readiness probes, waking up (and giving up) when the apply is interrupted."""
        if self.cancelled.wait(seconds):
            raise StepFailed("interrupted")

    def _update(self, runtime: Runtime, change: Change) -> tuple[str, str]:
        want = change.desired
        assert want is not None and change.container_id
        spec = want.container
        with self.slots:
            runtime.update_in_place(change.container_id, spec.restart, spec.memory, spec.nano_cpus)
        return DONE, "updated in place: " + ", ".join(d.path for d in change.diff)

    def _delete(self, runtime: Runtime, change: Change) -> tuple[str, str]:
        current = self._current(runtime, change.container_id or "")
        if current is None:
            return UNCHANGED, "already gone"
        with self.slots:
            runtime.stop(current.id, self.stop_timeout)
            runtime.remove(current.id)
        return DONE, "deleted"


def _failed_dependency(key: str, edges: Mapping[str, set[str]], failed: set[str]) -> str | None:
    """The first failed resource this one depends on, directly or not."""
    seen, stack = set(), list(edges.get(key, ()))
    while stack:
        dep = stack.pop()
        if dep in failed:
            return dep
        if dep not in seen:
            seen.add(dep)
            stack.extend(edges.get(dep, ()))
    return None


def _key_waves(keys: set[str], edges: Mapping[str, set[str]]) -> list[list[str]]:
    graph = {k: set(edges.get(k, set())) for k in keys}
    for deps in list(graph.values()):
        for dep in deps:
            graph.setdefault(dep, set(edges.get(dep, set())))
    return [[k for k in wave if k in keys] for wave in waves(graph)]


def _forward_waves(changes: list[Change], edges: Mapping[str, set[str]]) -> list[list[Change]]:
    """Creates, updates and replaces: everything a resource needs goes first."""
    by_key: dict[str, list[Change]] = {}
    for change in changes:
        by_key.setdefault(change.key, []).append(change)
    return [[c for k in wave for c in by_key[k]] for wave in _key_waves(set(by_key), edges)]


def _delete_waves(changes: list[Change], edges: Mapping[str, set[str]]) -> list[list[Change]]:
    """Deletes in reverse: what depends on a resource goes before it."""
    return list(reversed(_forward_waves(changes, edges)))

