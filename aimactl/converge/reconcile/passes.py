"""One reconcile pass over one revision of the manifests: observe, plan, choose, apply under the lock, record.

Observation and the first plan run without the lock; only when there is work is the lock taken, the plan made
again under it (so nothing moved in between) and applied. A pass never raises for a host, engine or step
problem: those become waiting changes, failures with backoff, or events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from aimactl.converge.apply import DONE, FAILED, SKIPPED, UNCHANGED, Executor, Reporter, StepResult
from aimactl.converge.reconcile.backoff import (
    Policy,
    Selection,
    desired_hash,
    flaps,
    record_failure,
    record_success,
    select,
)
from aimactl.converge.reconcile.backoff import without as plan_without
from aimactl.converge.reconcile.metrics import Metrics
from aimactl.converge.session import Session, plan_stack, record
from aimactl.core.plan import NOOP, Plan, PlanOptions
from aimactl.core.planfile import to_dict
from aimactl.store.resources import load_states, save_states, take_retry_requests

FLAP_S = 60.0
"""A replica that dies again within this many seconds of being restored counts a failure (crash loop)."""
TRANSIENT_CHECKS = ("host-unreachable", "docker-unavailable")
"""Plan errors that say "cannot reach it now": retried next pass, never counted against the retry budget."""


@dataclass
class PassReport:
    """What one pass saw and did, for the log line (text or JSON) and the tests."""

    number: int
    trigger: list[str]
    source: str = ""
    result: str = "ok"
    """ok | idle | failed | blocked | error | stopped"""
    applied: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    drift: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    stalled: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    """Replicas that had failed and now answer their health check."""
    errors: list[str] = field(default_factory=list)
    revision: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (`reconcile -o json` prints one per line)."""
        return asdict(self)


@dataclass
class Context:
    """What every pass of one loop shares."""

    stack: str
    store: Any
    environ: Mapping[str, str]
    reporter: Reporter
    metrics: Metrics
    stop: threading.Event
    policy: Policy = Policy()
    parallelism: int = 4
    lock_wait: float = 2.0
    allow_empty: bool = False
    healed_at: dict[str, float] = field(default_factory=dict)
    """Address -> when (monotonic) the loop last restored it after drift, to tell a crash loop."""
    reported: dict[str, str] = field(default_factory=dict)
    """Address -> the last drift or error text recorded as an event, so a lasting problem is recorded once."""
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)

    def recently_healed(self) -> set[str]:
        """Addresses restored less than FLAP_S ago."""
        moment = time.monotonic()
        return {a for a, t in self.healed_at.items() if moment - t < FLAP_S}


def _blocked(plan: Plan) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Plan errors split three ways: transient ones per address (a host that cannot be reached is listed as
    `host NAME`: retried next pass), lasting ones per address, global ones."""
    transient: dict[str, str] = {}
    lasting: dict[str, str] = {}
    overall: list[str] = []
    for check in plan.errors:
        targets = [c.address for c in plan.changes if c.address == check.address
                   or (not check.address and check.host and c.host == check.host)]
        if not check.address and not check.host:
            overall.append(f"{check.code}: {check.message}")
        for address in targets:
            (transient if check.code in TRANSIENT_CHECKS else lasting)[address] = f"{check.code}: {check.message}"
    for host, why in plan.unreachable.items():
        transient[f"host {host}"] = f"unreachable ({why}); its resources are left alone, retrying next pass"
    return transient, lasting, overall


def _event_once(ctx: Context, resource: str, kind: str, message: str, revision: int | None = None) -> None:
    """Record an event unless the same text was the last one recorded for this resource."""
    if ctx.reported.get(resource) == f"{kind}:{message}":
        return
    ctx.reported[resource] = f"{kind}:{message}"
    ctx.store.add_event(ctx.stack, resource, kind, message, revision)


def _plan(ctx: Context, manifests: Any) -> Session:
    options = PlanOptions(ctx.stack, allow_empty=ctx.allow_empty)
    return plan_stack(manifests, options, ctx.environ, ctx.parallelism)


def _choose(ctx: Context, session: Session, self_heal: Mapping[str, bool], report: PassReport,
            retried: Collection[str] = (), count: bool = True) -> Selection:
    """Select the work of this pass; lasting plan errors (a port taken, an image missing) count as failed
    attempts when due, and only when `count` (the plan made under the lock)."""
    transient, lasting, overall = _blocked(session.plan)
    states = load_states(ctx.store, ctx.stack)
    unhealthy = {}
    for change in session.plan.changes:
        state = states.get(change.address)
        suspect = state is not None and (state.failures or state.stalled) or change.address in retried
        if change.action == NOOP and change.desired is not None and suspect:
            health = _health(change, session, {})
            if health == "healthy":
                report.recovered.append(change.address)
            else:
                unhealthy[change.address] = health.removeprefix("unhealthy: ")
    recent = ctx.recently_healed()
    sel = select(session.plan, states, self_heal, ctx.now(), transient, unhealthy, recent)
    for change in flaps(sel.work, sel.drift, sel.states, recent) if count else []:
        state, address = sel.states[change.address], change.address
        reason = f"keeps failing: {sel.drift[address]} ({time.monotonic() - ctx.healed_at[address]:.0f}s after " \
                 "it was restored)"
        if state.failures == 0:  # the first quick death is restored at once, the next ones back off
            state.failures, state.reason = 1, reason
            continue
        sel.work.remove(change)
        del sel.drift[address]
        _fail(ctx, sel, address, desired_hash(change), reason, report)
    report.errors += [e for e in overall if e not in report.errors]
    if overall:
        sel.waiting.update({c.address: "; ".join(overall) for c in sel.work})
        sel.work = []
    for change in [c for c in sel.work if c.address in lasting and count]:
        sel.work.remove(change)
        _fail(ctx, sel, change.address, desired_hash(change), lasting[change.address], report)
    report.waiting.update(sel.waiting)
    report.waiting.update({k: v for k, v in transient.items() if k.startswith("host ")})
    return sel


def _fail(ctx: Context, sel: Selection, address: str, wanted: str | None, reason: str, report: PassReport,
          revision: int | None = None) -> None:
    state = sel.states[address]
    report.failed[address] = reason
    ctx.metrics.add("heal_failures")
    if record_failure(state, wanted, reason, ctx.now(), ctx.policy):
        report.stalled.append(address)
        ctx.store.add_event(ctx.stack, address, "stalled", f"Stalled after {state.failures} failures: {reason}",
                            revision)
    else:
        _event_once(ctx, address, "failed", f"attempt {state.failures} of {ctx.policy.budget} failed, next in "
                    f"{ctx.policy.delay(state.failures):g}s: {reason}", revision)


def apply_selection(ctx: Context, session: Session, sel: Selection, source: str) -> tuple[int, list[StepResult]]:
    """Apply the selected changes as one `reconcile` revision (the caller holds the lock)."""
    plan = plan_without(session.plan, sel.work)
    ctx.store.mark_interrupted(ctx.stack)
    revision = ctx.store.begin_revision(ctx.stack, "reconcile", session.sources, to_dict(plan), source=source)
    for address, text in sel.drift.items():
        ctx.store.add_event(ctx.stack, address, "drift", f"drifted: {text}", revision)
    executor = Executor(session.connections, ctx.stack, ctx.reporter, ctx.parallelism, ctx.environ)
    executor.cancelled = ctx.stop  # SIGTERM: readiness waits give up, Docker calls in flight complete
    try:
        results = executor.run(plan)
    except BaseException:
        ctx.store.finish_revision(revision, "interrupted", None, "interrupted")
        raise
    bad = sum(r.status in (FAILED, SKIPPED) for r in results)
    good = sum(r.status in (DONE, UNCHANGED) for r in results)
    status = "succeeded" if not bad else "failed" if not good else "partial"
    status = "interrupted" if ctx.stop.is_set() and bad else status
    record(ctx.store, ctx.stack, revision, results)
    summary = ", ".join(f"{sum(r.status == s for r in results)} {s}" for s in (DONE, UNCHANGED, FAILED, SKIPPED))
    ctx.store.finish_revision(revision, status, [asdict(r) for r in results], summary)
    return revision, results


def _settle(ctx: Context, sel: Selection, session: Session, results: list[StepResult], revision: int,
            report: PassReport) -> None:
    """Per-resource bookkeeping after an apply: success resets backoff, failure counts against the budget."""
    wanted = {c.address: desired_hash(c) for c in session.plan.changes}
    for r in results:
        if r.address not in sel.states:
            continue
        if r.status in (DONE, UNCHANGED):
            state = sel.states[r.address]
            record_success(state, wanted.get(r.address), flapping=state.failures > 0 and r.address in sel.drift)
            report.applied[r.address] = r.message
            if r.address in sel.drift:
                ctx.healed_at[r.address] = time.monotonic()
                ctx.metrics.add("heals")
                ctx.store.add_event(ctx.stack, r.address, "healed", f"healed: {r.message}", revision)
            ctx.reported.pop(r.address, None)
        elif r.status == FAILED and not ctx.stop.is_set():
            _fail(ctx, sel, r.address, wanted.get(r.address), r.message, report, revision)
        elif r.status == SKIPPED:
            report.waiting[r.address] = r.message


def converge(ctx: Context, manifests: Any, source: str, report: PassReport, new_revision: bool,
             eager: bool = False) -> Plan | None:
    """Plan the manifests against the hosts and apply what is due; returns the plan (None when the lock was
    held by someone else: try again soon).

    A pass first plans without the lock and takes it only when there is work, so that the periodic passes never
    make a manual apply wait. When a watcher reported damage (`eager`), work is almost certain: the lock is taken
    at once and the hosts observed once, which shortens the time to heal.
    """
    from aimactl.store import LockHeld, acquire

    self_heal = {r.key: bool(r.spec.self_heal) for r in manifests.resources if r.kind in ("Service", "App")}
    retried = take_retry_requests(ctx.store, ctx.stack)
    if retried:
        report.trigger.append("retry requested: " + ", ".join(retried))
    if not (eager or new_revision):
        session = _plan(ctx, manifests)
        try:
            sel = _choose(ctx, session, self_heal, report, retried, count=False)
            if not sel.work:
                _finish(ctx, sel, session, report)
                return session.plan
        finally:
            session.close()
    try:
        lock = acquire(ctx.store, ctx.stack, "reconcile", wait=ctx.lock_wait)
    except LockHeld as exc:
        report.result = "blocked"
        report.errors.append(f"stack locked by {exc.holder} (pid {exc.pid}) for {exc.operation}; retrying")
        return None
    with lock:
        session = _plan(ctx, manifests)
        try:
            report.waiting.clear()
            report.recovered.clear()
            sel = _choose(ctx, session, self_heal, report, retried)
            if (sel.work or new_revision) and not _apply(ctx, session, sel, source, report):
                return session.plan
        finally:
            session.close()
    _finish(ctx, sel, session, report)
    return session.plan


def _apply(ctx: Context, session: Session, sel: Selection, source: str, report: PassReport) -> bool:
    """Apply the selection (the caller holds the stack lock) and settle each replica's state; False when an
    SSH host's own lock is held by another controller (the pass is `blocked`, retried soon)."""
    from aimactl.hosts.hostlock import HostLockError, holder_name, host_locks

    try:
        # SSH hosts are locked on the host too, against controllers on other machines (as `apply` does).
        with host_locks(session.connections, _ssh_hosts(session, sel), holder_name("reconcile", ctx.stack)):
            revision, results = apply_selection(ctx, session, sel, source)
    except HostLockError as exc:
        report.result = "blocked"
        report.errors.append(f"{exc}; retrying")
        return False
    report.drift = dict(sel.drift)
    ctx.metrics.add("drift", len(sel.drift))
    report.revision = revision
    _settle(ctx, sel, session, results, revision, report)
    return True


def _ssh_hosts(session: Session, sel: Selection) -> set[str]:
    """The reachable SSH hosts the selected work changes."""
    hosts = session.connections.hosts
    return {c.host for c in sel.work if c.host in hosts and hosts[c.host].address != "local"
            and c.host not in session.plan.unreachable}


def _health(change: Any, session: Session, applied: Mapping[str, str]) -> str:
    """Health apart from sync: a replica answers its health path (or runs, without one)."""
    from aimactl.converge.readiness import probe

    if change.address in applied:
        return "healthy"
    want = change.desired
    if want is None:
        return "healthy" if change.action == NOOP else "missing"
    host = session.observed.hosts.get(change.host)
    seen = next((c for c in (host.containers if host else []) if c.id == change.container_id), None)
    if seen is None:
        return "missing"
    if not seen.running:
        return f"unhealthy: {seen.state}" + (f" ({seen.exit_code})" if seen.exit_code is not None else "")
    if not (want.readiness.path and want.readiness.port):
        return "healthy"
    where = session.plan.hosts[change.host].url_host if change.host in session.plan.hosts else "127.0.0.1"
    problem = probe(f"http://{where}:{want.readiness.port}{want.readiness.path}", timeout=1.0)
    return f"unhealthy: {problem}" if problem else "healthy"


def _finish(ctx: Context, sel: Selection, session: Session, report: PassReport) -> None:
    """Report selfHeal: false drift once, store every state of this plan (forgetting addresses gone from it)."""
    plan = session.plan
    for address in report.recovered:
        ctx.store.add_event(ctx.stack, address, "recovered", "ready again: its health check answers")
    for address, text in sel.report_only.items():
        _event_once(ctx, address, "drift", f"drifted (selfHeal: false, left alone): {text}")
        report.drift[address] = f"left alone (selfHeal: false): {text}"
    addresses = {c.address for c in plan.changes}
    for change in plan.changes:
        if change.address in sel.states and change.action != "delete":
            sel.states[change.address].health = _health(change, session, report.applied)
    save_states(ctx.store, ctx.stack, [s for a, s in sel.states.items() if a in addresses], forget_others=True)
    stalled = sum(s.stalled for a, s in sel.states.items() if a in addresses)
    ctx.metrics.set_stalled(stalled)
    if report.result == "ok":
        if report.failed or report.errors:
            report.result = "failed"
        elif report.waiting:
            report.result = "waiting"
        else:
            ctx.metrics.applied()
